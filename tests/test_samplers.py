"""Rebalancing samplers: class frequencies, runs, determinism, DDP shards."""
from __future__ import annotations

import pytest
import torch

from data_loader.samplers import ClassAwareSampler, ClassBalancedSampler, SquareRootSampler
from utils import dist
from utils.errors import ConfigError
from utils.registry import SAMPLERS

COUNTS = [400, 120, 40, 10, 3]
TARGETS = [c for c, n in enumerate(COUNTS) for _ in range(n)]


def frequencies(indices) -> torch.Tensor:
    labels = torch.as_tensor(TARGETS)[torch.as_tensor(list(indices))]
    return torch.bincount(labels, minlength=len(COUNTS)).double() / len(labels)


def test_class_aware_visits_classes_equally_in_runs():
    sampler = ClassAwareSampler(TARGETS, num_samples_cls=4, num_samples=4000)
    order = list(sampler)
    assert len(order) == len(sampler) == 4000 and all(0 <= i < len(TARGETS) for i in order)
    assert torch.allclose(frequencies(order), torch.full((5,), 0.2, dtype=torch.float64), atol=0.01)
    labels = [TARGETS[i] for i in order]
    assert all(len(set(labels[k:k + 4])) == 1 for k in range(0, 4000, 4))  # runs of 4 of one class
    rare = [i for i in order if TARGETS[i] == 4]
    assert set(rare) == {i for i, t in enumerate(TARGETS) if t == 4}  # cycles through the class's samples


def test_class_aware_default_epoch_is_the_dataset_size():
    assert len(ClassAwareSampler(TARGETS)) == len(TARGETS)  # MiSLAS: ceil(N / batch) batches


@pytest.mark.parametrize("cls, expected", [
    (ClassBalancedSampler, torch.full((5,), 0.2, dtype=torch.float64)),
    (SquareRootSampler, torch.tensor(COUNTS).double().sqrt() / torch.tensor(COUNTS).double().sqrt().sum()),
])
def test_power_samplers_match_their_class_distribution(cls, expected):
    order = list(cls(TARGETS, num_samples=40000))
    assert torch.allclose(frequencies(order), expected, atol=0.01)


@pytest.mark.parametrize("cls", [ClassAwareSampler, ClassBalancedSampler, SquareRootSampler])
def test_deterministic_per_seed_and_epoch(cls):
    a, b = cls(TARGETS, seed=3), cls(TARGETS, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(cls(TARGETS, seed=4)) != list(cls(TARGETS, seed=3))


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_shards_partition_the_epoch(monkeypatch, world):
    sampler = ClassAwareSampler(TARGETS, num_samples=1001)
    full = sampler.indices().tolist()
    monkeypatch.setattr(dist, "world_size", lambda: world)
    shards = []
    for rank in range(world):
        monkeypatch.setattr(dist, "rank", lambda rank=rank: rank)
        shards.append(sampler.indices().tolist())
    assert all(len(s) == len(sampler) == -(-1001 // world) for s in shards)
    interleaved = [shards[k % world][k // world] for k in range(len(shards[0]) * world)]
    assert interleaved[:1001] == full  # rank r takes positions r, r + world, ... of the same sequence


def test_built_through_the_registry_with_clear_errors():
    sampler = SAMPLERS.build({"type": "ClassAwareSampler", "args": {"num_samples_cls": 2}},
                             ("data_loader", "args", "sampler"), targets=TARGETS)
    assert sampler.num_samples_cls == 2
    with pytest.raises(ConfigError, match=r"has no argument 'num_sample_cls'. Did you mean 'num_samples_cls'"):
        SAMPLERS.build({"type": "ClassAwareSampler", "args": {"num_sample_cls": 2}},
                       ("data_loader", "args", "sampler"), targets=TARGETS)
    with pytest.raises(ConfigError, match="num_samples_cls must be >= 1"):
        SAMPLERS.build({"type": "ClassAwareSampler", "args": {"num_samples_cls": 0}},
                       ("data_loader", "args", "sampler"), targets=TARGETS)
