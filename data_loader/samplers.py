"""Samplers that rebalance classes, for (re-)learning classifiers on long-tailed data.

Each is registered in ``SAMPLERS``, called as ``cls(targets, **args)`` (``targets``: the label of every
training sample, in dataset order) and yields dataset indices. A data loader builds one from its config
entry ``data_loader.args.sampler = {"type": NAME, "args": {...}}``.

Determinism: the draw for an epoch comes from a ``torch.Generator`` seeded with
``seed * 1_000_003 + epoch`` (``set_epoch`` is called by the trainer at the start of every epoch). Every
DDP rank therefore draws the same sequence, and a resumed run needs no sampler state in the checkpoint.
Under DDP each rank takes the shard ``[rank::world_size]`` of that sequence, padded to a multiple of the
world size by repeating its start, as ``DistributedSampler`` does; ``len(sampler)`` is the per-rank count.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from utils import dist
from utils.registry import SAMPLERS

SEED_STRIDE = 1_000_003  # a prime: (seed, epoch) pairs map to distinct generator seeds for epoch < 1e6


def _as_labels(targets: Sequence[int]) -> torch.Tensor:
    """``targets`` as an int64 tensor ``(N,)``; rejects empty, non-integer, multi-dimensional or negative labels."""
    array = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    if array.ndim != 1:
        raise ValueError(f"sampler targets must be one label per sample (1-D), got shape {array.shape}")
    if array.size == 0:
        raise ValueError("the sampler got no training samples")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"sampler targets must be integer class labels, got dtype {array.dtype}")
    if array.min() < 0:
        raise ValueError(f"sampler targets must be class indices >= 0, got {int(array.min())}")
    return torch.as_tensor(array.astype(np.int64))


def shard(sequence: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s share of ``sequence``: ``padded[rank::world_size]``.

    ``padded`` repeats the start of ``sequence`` until its length is a multiple of ``world_size``, so all
    ranks get ``ceil(len / world_size)`` indices and run the same number of steps (DDP needs that).
    """
    if world_size <= 1:
        return sequence
    total = math.ceil(len(sequence) / world_size) * world_size
    missing = total - len(sequence)
    if missing:
        repeats = math.ceil(missing / len(sequence))  # > 1 only when world_size > len(sequence)
        sequence = torch.cat([sequence, sequence.repeat(repeats)[:missing]])
    return sequence[rank::world_size]


class EpochSeededSampler(Sampler[int]):
    """Base class: subclasses return the whole epoch's index sequence from ``_sequence(generator)``.

    Args:
        targets: label of every training sample, ``(N,)`` integers >= 0.
        num_samples: draws per epoch (over all ranks); default ``N``, so an epoch has as many
            batches as an instance-balanced one.
        seed: the epoch's generator is seeded with ``seed * 1_000_003 + epoch``.
    """

    def __init__(self, targets: Sequence[int], num_samples: int | None = None, seed: int = 0):
        self.targets = _as_labels(targets)
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 or null (= the number of training samples), got {num_samples}")
        self.num_samples = num_samples if num_samples is not None else len(self.targets)
        self.seed, self.epoch = seed, 0
        self.num_classes = int(self.targets.max()) + 1
        self.class_counts = torch.bincount(self.targets, minlength=self.num_classes)
        # indices of each class, in dataset order (the shuffles happen per epoch)
        order = torch.argsort(self.targets, stable=True)
        self.class_indices = list(torch.split(order, self.class_counts.tolist()))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw ``__iter__`` yields (called by the trainer before every epoch)."""
        self.epoch = int(epoch)

    def _sequence(self, generator: torch.Generator) -> torch.Tensor:
        """The epoch's full sequence of dataset indices, int64 ``(num_samples,)``, before sharding."""
        raise NotImplementedError

    def epoch_sequence(self) -> torch.Tensor:
        """The current epoch's sequence over all ranks, int64 ``(num_samples,)``."""
        generator = torch.Generator().manual_seed(self.seed * SEED_STRIDE + self.epoch)
        return self._sequence(generator)

    def indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch, int64 ``(len(self),)``."""
        sequence = self.epoch_sequence()
        if not dist.is_distributed():
            return sequence
        return shard(sequence, dist.rank(), dist.world_size())

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / dist.world_size()) if dist.is_distributed() else self.num_samples


@SAMPLERS.register()
class ClassAwareSampler(EpochSeededSampler):
    """Class-aware sampling (Shen et al., ECCV 2016), as OLTR, Decoupling and MiSLAS stage 2 use it.

    Classes are visited in a shuffled cycle over the classes present (reshuffled each time it is used
    up); each visit takes ``num_samples_cls`` consecutive samples from that class's own shuffled cycle.
    Every class therefore appears equally often (each class ``1 / C`` of the draws, up to one cycle), in
    runs of ``num_samples_cls``, and a class's samples are all used before any repeats.

    ``num_samples`` (default: the number of training samples ``N``) is the epoch length. MiSLAS's sampler
    nominally has ``max_c n_c * C`` draws, but its training loop stops after ``ceil(N / batch_size)``
    iterations; the default reproduces that. Unlike MiSLAS (whose cycles carry over between epochs in
    Python ``random`` state), the cycles restart each epoch from the ``(seed, epoch)`` generator, so DDP
    ranks agree and resuming is exact; the per-epoch class distribution is the same.

    Args:
        targets: label of every training sample, ``(N,)``.
        num_samples_cls: consecutive samples drawn from a class per visit (MiSLAS: 4).
        num_samples: draws per epoch over all ranks; default ``N``.
        seed: base seed of the per-epoch generator.
    """

    def __init__(self, targets: Sequence[int], num_samples_cls: int = 4, num_samples: int | None = None,
                 seed: int = 0):
        if num_samples_cls < 1:
            raise ValueError(f"num_samples_cls must be >= 1, got {num_samples_cls}")
        super().__init__(targets, num_samples, seed)
        self.num_samples_cls = num_samples_cls
        self.present = [c for c, n in enumerate(self.class_counts.tolist()) if n > 0]

    def _sequence(self, generator: torch.Generator) -> torch.Tensor:
        def cycle(items: torch.Tensor) -> Iterator[int]:
            # RandomCycleIter of OLTR/MiSLAS: a fresh permutation each time the items are used up
            while True:
                yield from items[torch.randperm(len(items), generator=generator)].tolist()

        class_cycle = cycle(torch.as_tensor(self.present))
        sample_cycles: dict[int, Iterator[int]] = {}  # created on first visit: the RNG use follows the visits
        out: list[int] = []
        while len(out) < self.num_samples:
            cls = next(class_cycle)
            if cls not in sample_cycles:
                sample_cycles[cls] = cycle(self.class_indices[cls])
            members = sample_cycles[cls]
            out.extend(next(members) for _ in range(self.num_samples_cls))
        return torch.as_tensor(out[:self.num_samples], dtype=torch.long)


@SAMPLERS.register()
class ClassPowerSampler(EpochSeededSampler):
    """Class-frequency power sampling with replacement (Kang et al., ICLR 2020, "Decoupling").

    Class ``c`` is drawn with probability ``p_c = n_c^q / sum_k n_k^q`` and, within it, every sample
    equally likely, so sample ``i`` has probability ``n_{y_i}^(q-1) / sum_k n_k^q``. ``q = 1`` is
    instance-balanced, ``q = 0.5`` square-root, ``q = 0`` class-balanced sampling. Classes without
    samples get probability 0.

    Args:
        targets: label of every training sample, ``(N,)``.
        power: the exponent ``q`` (>= 0).
        num_samples: draws per epoch over all ranks; default ``N``.
        seed: base seed of the per-epoch generator.
    """

    def __init__(self, targets: Sequence[int], power: float, num_samples: int | None = None, seed: int = 0):
        if not power >= 0:
            raise ValueError(f"power must be >= 0 (1 instance-, 0.5 square-root, 0 class-balanced), got {power}")
        super().__init__(targets, num_samples, seed)
        self.power = float(power)
        counts = self.class_counts.double()
        class_prob = torch.where(counts > 0, counts ** self.power, torch.zeros_like(counts))
        class_prob = class_prob / class_prob.sum()
        # per sample: its class's probability split evenly among the class's samples
        self.weights = (class_prob / counts.clamp_min(1))[self.targets]

    def _sequence(self, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)


@SAMPLERS.register()
class ClassBalancedSampler(ClassPowerSampler):
    """Class-balanced sampling with replacement: sample ``i`` drawn with probability ∝ ``1 / n_{y_i}``.

    Every class is equally likely, ``p_c = 1 / C`` (Kang et al., ICLR 2020; the ``q = 0`` case of
    :class:`ClassPowerSampler`).

    Args:
        targets: label of every training sample, ``(N,)``.
        num_samples: draws per epoch over all ranks; default ``N``.
        seed: base seed of the per-epoch generator.
    """

    def __init__(self, targets: Sequence[int], num_samples: int | None = None, seed: int = 0):
        super().__init__(targets, 0.0, num_samples, seed)


@SAMPLERS.register()
class SquareRootSampler(ClassPowerSampler):
    """Square-root sampling with replacement: sample ``i`` drawn with probability ∝ ``n_{y_i}^(-1/2)``.

    Class probability ``p_c = sqrt(n_c) / sum_k sqrt(n_k)`` (Mahajan et al., ECCV 2018; Kang et al.,
    ICLR 2020; the ``q = 0.5`` case of :class:`ClassPowerSampler`).

    Args:
        targets: label of every training sample, ``(N,)``.
        num_samples: draws per epoch over all ranks; default ``N``.
        seed: base seed of the per-epoch generator.
    """

    def __init__(self, targets: Sequence[int], num_samples: int | None = None, seed: int = 0):
        super().__init__(targets, 0.5, num_samples, seed)
