"""Rebalancing samplers: class frequencies, runs, determinism, DDP shards, registry errors."""
from __future__ import annotations

import math

import pytest
import torch

from data_loader.samplers import (
    ClassAwareSampler,
    ClassBalancedSampler,
    ClassPowerSampler,
    SquareRootSampler,
    shard,
)
from utils import dist
from utils.errors import ConfigError
from utils.registry import SAMPLERS

COUNTS = [400, 120, 40, 10, 3]  # long-tailed, imbalance ratio 133
# interleaved so that a class's samples are not one contiguous block of indices
TARGETS = [c for _, c in sorted((i * 7919 % 1009, c) for c, n in enumerate(COUNTS) for i in range(n))]
ALL_SAMPLERS = [ClassAwareSampler, ClassBalancedSampler, SquareRootSampler]


def class_frequencies(indices) -> torch.Tensor:
    labels = torch.as_tensor(TARGETS)[torch.as_tensor(list(indices))]
    return torch.bincount(labels, minlength=len(COUNTS)).double() / len(labels)


def simulate_ddp(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "world_size", lambda: world)
    monkeypatch.setattr(dist, "rank", lambda: rank)


def test_class_aware_visits_classes_equally_in_runs():
    sampler = ClassAwareSampler(TARGETS, num_samples_cls=4, num_samples=4000)
    order = list(sampler)
    assert len(order) == len(sampler) == 4000 and all(0 <= i < len(TARGETS) for i in order)
    # 1000 visits = 200 full cycles over the 5 classes: exactly equal, not just on average
    assert class_frequencies(order).tolist() == [0.2] * 5
    labels = [TARGETS[i] for i in order]
    assert all(len(set(labels[k:k + 4])) == 1 for k in range(0, 4000, 4))  # runs of 4 of one class
    visits = labels[::4]
    assert all(sorted(visits[k:k + 5]) == [0, 1, 2, 3, 4] for k in range(0, 1000, 5))  # a shuffled class cycle
    assert visits[:5] != visits[5:10] or visits[5:10] != visits[10:15]  # ... reshuffled, not a fixed order
    # within a class: its own shuffled cycle, every sample once before any repeats
    class0 = [i for i in order if TARGETS[i] == 0]
    assert len(set(class0[:400])) == 400 and set(class0[:400]) == {i for i, t in enumerate(TARGETS) if t == 0}
    assert class0[:400] != sorted(class0[:400])


def test_class_aware_default_epoch_is_the_dataset_size_and_truncates_runs():
    sampler = ClassAwareSampler(TARGETS)
    assert len(sampler) == len(list(sampler)) == len(TARGETS)  # MiSLAS: ceil(N / batch) batches
    odd = list(ClassAwareSampler(TARGETS, num_samples_cls=4, num_samples=10))
    assert len(odd) == 10 and len({TARGETS[i] for i in odd[8:]}) == 1  # a cut-short last run


def test_class_aware_skips_absent_classes():
    targets = [0] * 5 + [2] * 3  # class 1 has no samples
    labels = [targets[i] for i in ClassAwareSampler(targets, num_samples_cls=1, num_samples=100)]
    assert labels.count(0) == labels.count(2) == 50


@pytest.mark.parametrize("sampler, expected", [
    (ClassBalancedSampler(TARGETS, num_samples=40000), [0.2] * 5),
    (SquareRootSampler(TARGETS, num_samples=40000), [math.sqrt(n) / sum(map(math.sqrt, COUNTS)) for n in COUNTS]),
    (ClassPowerSampler(TARGETS, power=1.0, num_samples=40000), [n / sum(COUNTS) for n in COUNTS]),
    (ClassPowerSampler(TARGETS, power=0.0, num_samples=40000), [0.2] * 5),
], ids=["balanced", "sqrt", "power1", "power0"])
def test_power_samplers_match_their_class_distribution(sampler, expected):
    order = list(sampler)
    assert len(order) == 40000 and min(order) >= 0 and max(order) < len(TARGETS)
    # sd of a frequency over 40k draws is <= 0.0025: 0.01 is 4 sd, and far from the instance distribution
    assert torch.allclose(class_frequencies(order), torch.tensor(expected, dtype=torch.float64), atol=0.01)


def test_class_balanced_draws_within_a_class_uniformly():
    order = torch.as_tensor(list(ClassBalancedSampler(TARGETS, num_samples=30000)))
    rare = [i for i, t in enumerate(TARGETS) if t == 4]
    per_sample = torch.bincount(order, minlength=len(TARGETS))[rare].double()
    assert torch.allclose(per_sample / per_sample.sum(), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.03)


@pytest.mark.parametrize("cls", ALL_SAMPLERS)
def test_deterministic_per_seed_and_epoch(cls):
    a, b = cls(TARGETS, seed=3), cls(TARGETS, seed=3)
    assert list(a) == list(b) == list(a)  # iterating twice gives the same epoch
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(cls(TARGETS, seed=4)) != list(cls(TARGETS, seed=3))
    fresh = cls(TARGETS, seed=3)
    fresh.set_epoch(1)  # a resumed run: no state but (seed, epoch)
    assert list(fresh) == list(a)


@pytest.mark.parametrize("cls", ALL_SAMPLERS)
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_shards_partition_the_padded_epoch(monkeypatch, cls, world):
    sampler = cls(TARGETS, num_samples=1001, seed=5)
    sampler.set_epoch(2)
    full = sampler.indices().tolist()
    assert len(full) == 1001
    shards = []
    for rank in range(world):
        simulate_ddp(monkeypatch, rank, world)
        shards.append(sampler.indices().tolist())
        assert list(sampler) == shards[-1]
    per_rank = math.ceil(1001 / world)
    assert all(len(s) == len(sampler) == per_rank for s in shards)  # equal lengths: DDP steps in lockstep
    # position k of the padded sequence goes to rank k % world: disjoint positions covering everything
    interleaved = [shards[k % world][k // world] for k in range(per_rank * world)]
    assert interleaved == full + full[:per_rank * world - 1001]


def test_shard_pads_even_when_ranks_outnumber_samples():
    sequence = torch.tensor([7, 8])
    shards = [shard(sequence, r, 5).tolist() for r in range(5)]
    assert shards == [[7], [8], [7], [8], [7]]
    assert shard(sequence, 0, 1) is sequence


def test_bad_targets_and_arguments_are_value_errors():
    with pytest.raises(ValueError, match="no training samples"):
        ClassBalancedSampler([])
    with pytest.raises(ValueError, match=">= 0"):
        ClassAwareSampler([0, 1, -1])
    with pytest.raises(ValueError, match="integer class labels"):
        SquareRootSampler([0.0, 1.5])
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        ClassAwareSampler(TARGETS, num_samples=0)
    with pytest.raises(ValueError, match="power must be >= 0"):
        ClassPowerSampler(TARGETS, power=-1.0)


def test_accepts_tensor_targets():
    sampler = ClassAwareSampler(torch.as_tensor(TARGETS), num_samples_cls=2, num_samples=10)
    assert list(sampler) == list(ClassAwareSampler(TARGETS, num_samples_cls=2, num_samples=10))


def test_built_through_the_registry_with_clear_errors():
    where = ("data_loader", "args", "sampler")
    sampler = SAMPLERS.build({"type": "ClassAwareSampler", "args": {"num_samples_cls": 2}}, where, targets=TARGETS)
    assert isinstance(sampler, ClassAwareSampler) and sampler.num_samples_cls == 2
    with pytest.raises(ConfigError, match=r'config\["data_loader"\]\["args"\]\["sampler"\]\["args"\]\["num_sample_cls"'
                                          r"\]: ClassAwareSampler has no argument 'num_sample_cls'. "
                                          r"Did you mean 'num_samples_cls'"):
        SAMPLERS.build({"type": "ClassAwareSampler", "args": {"num_sample_cls": 2}}, where, targets=TARGETS)
    with pytest.raises(ConfigError, match=r"sampler.*expects an integer"):
        SAMPLERS.build({"type": "SquareRootSampler", "args": {"num_samples": "all"}}, where, targets=TARGETS)
    with pytest.raises(ConfigError, match=r'\["sampler"\] \(ClassAwareSampler\): num_samples_cls must be >= 1'):
        SAMPLERS.build({"type": "ClassAwareSampler", "args": {"num_samples_cls": 0}}, where, targets=TARGETS)
    with pytest.raises(ConfigError, match="Did you mean 'ClassBalancedSampler'"):
        SAMPLERS.build({"type": "ClassBalanceSampler", "args": {}}, where, targets=TARGETS)


@pytest.mark.parametrize("world", [2, 3, 7])
def test_evaluation_shards_hold_every_sample_once(monkeypatch, world):
    """Evaluation under DDP: no padding, so metrics summed over the ranks count each sample exactly once."""
    from base.base_data_loader import EvalShardSampler
    from data_loader.cifar import EpochPermutationSampler

    for sampler_of in (EvalShardSampler, lambda n: EpochPermutationSampler(n, shuffle=False, pad=False)):
        shards = []
        for rank in range(world):
            simulate_ddp(monkeypatch, rank, world)
            sampler = sampler_of(1001)
            shards.append(list(sampler))
            assert len(sampler) == len(shards[-1])
        assert sorted(i for s in shards for i in s) == list(range(1001))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
