"""Samplers that rebalance classes, for re-learning classifiers on long-tailed data.

Each is called as ``cls(targets, **args)`` (``targets``: the label of every training sample) and yields
dataset indices. The draw for an epoch comes from a generator seeded with ``seed * 1_000_003 + epoch``
(``set_epoch`` is called by the trainer), so every DDP rank draws the same sequence and a resumed run
needs no sampler state; under DDP each rank takes its shard ``[rank::world_size]`` of the sequence, padded
to a multiple of the world size as ``DistributedSampler`` does.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from utils import dist
from utils.registry import SAMPLERS


class EpochSeededSampler(Sampler[int]):
    """Base class: subclasses return the whole epoch's index sequence from ``_sequence(generator)``."""

    def __init__(self, targets: Sequence[int], num_samples: int | None = None, seed: int = 0):
        self.targets = torch.as_tensor(list(targets), dtype=torch.long)
        if self.targets.numel() == 0:
            raise ValueError("the sampler got no training samples")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 or null, got {num_samples}")
        self.num_samples = num_samples if num_samples is not None else len(self.targets)
        self.seed, self.epoch = seed, 0
        self.num_classes = int(self.targets.max()) + 1
        self.class_indices = [torch.nonzero(self.targets == c).flatten() for c in range(self.num_classes)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _sequence(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch, int64 ``(len(self),)``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        sequence = self._sequence(generator)
        world = dist.world_size()
        if world > 1:
            total = math.ceil(len(sequence) / world) * world
            sequence = torch.cat([sequence, sequence[:total - len(sequence)]])[dist.rank()::world]
        return sequence

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / dist.world_size())


@SAMPLERS.register()
class ClassAwareSampler(EpochSeededSampler):
    """Class-aware sampling (Shen et al. 2016), as MiSLAS stage 2 uses it.

    Classes are visited in a shuffled cycle (reshuffled when exhausted); each visit takes
    ``num_samples_cls`` consecutive samples from that class's own shuffled cycle. Every class therefore
    appears equally often. ``num_samples`` (default: the number of training samples) is the epoch length:
    MiSLAS truncates its nominal epoch to ``ceil(N / batch_size)`` batches, which this default reproduces.
    """

    def __init__(self, targets: Sequence[int], num_samples_cls: int = 4, num_samples: int | None = None,
                 seed: int = 0):
        if num_samples_cls < 1:
            raise ValueError(f"num_samples_cls must be >= 1, got {num_samples_cls}")
        super().__init__(targets, num_samples, seed)
        self.num_samples_cls = num_samples_cls
        self.present = [c for c, idx in enumerate(self.class_indices) if len(idx)]

    def _sequence(self, generator: torch.Generator) -> torch.Tensor:
        def cycle(items: torch.Tensor) -> Iterator[int]:
            while True:
                yield from items[torch.randperm(len(items), generator=generator)].tolist()

        class_cycle = cycle(torch.as_tensor(self.present))
        sample_cycles = {c: cycle(self.class_indices[c]) for c in self.present}
        out: list[int] = []
        while len(out) < self.num_samples:
            members = sample_cycles[next(class_cycle)]
            out.extend(next(members) for _ in range(self.num_samples_cls))
        return torch.as_tensor(out[:self.num_samples], dtype=torch.long)


class ClassPowerSampler(EpochSeededSampler):
    """Draw with replacement, class ``c`` with probability proportional to ``n_c ** power``.

    ``power`` 1 is instance-balanced, 0.5 square-root, 0 class-balanced (Kang et al. 2020, "Decoupling").
    """

    def __init__(self, targets: Sequence[int], power: float, num_samples: int | None = None, seed: int = 0):
        super().__init__(targets, num_samples, seed)
        counts = torch.bincount(self.targets, minlength=self.num_classes).double()
        class_weight = torch.where(counts > 0, counts ** power, torch.zeros_like(counts))
        # per sample: the class's share split evenly among its samples
        self.weights = (class_weight / counts.clamp_min(1))[self.targets]

    def _sequence(self, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)


@SAMPLERS.register()
class ClassBalancedSampler(ClassPowerSampler):
    """Every class equally likely (probability of a sample ∝ 1 / n_its_class), with replacement."""

    def __init__(self, targets: Sequence[int], num_samples: int | None = None, seed: int = 0):
        super().__init__(targets, 0.0, num_samples, seed)


@SAMPLERS.register()
class SquareRootSampler(ClassPowerSampler):
    """Class probability ∝ sqrt(n_c) (Mahajan et al. 2018; Kang et al. 2020), with replacement."""

    def __init__(self, targets: Sequence[int], num_samples: int | None = None, seed: int = 0):
        super().__init__(targets, 0.5, num_samples, seed)
