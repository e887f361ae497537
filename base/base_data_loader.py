"""BaseDataLoader: a ``DataLoader`` with a seeded train/validation split and a sampler hook.

Datasets return ``(input, label, index)``. The index lets trainers keep per-sample state (LNR's flipped
labels, test-time splits) without a second pass. Under ``torchrun`` the training data is sharded with a
``DistributedSampler`` (the trainer calls ``set_epoch`` so all ranks draw the same permutation) and evaluation
data with an ``EvalShardSampler`` (every sample once).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from torch.utils.data.dataloader import default_collate

from utils import dist


class EvalShardSampler(Sampler[int]):
    """Every index of a ``size``-sample dataset exactly once over all ranks, in order: rank r takes r, r + W, ...

    For evaluation under DDP. Unlike ``DistributedSampler`` nothing is repeated to even out the shards, so sums
    reduced over the ranks count each sample once; the shards may differ in length by one, which is fine
    because evaluation runs no collective per batch (it uses the model outside DDP).
    """

    def __init__(self, size: int):
        self.size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(dist.rank(), self.size, dist.world_size()))

    def __len__(self) -> int:
        return len(range(dist.rank(), self.size, dist.world_size()))


class BaseDataLoader(DataLoader):
    """Loads ``dataset``; optionally holds back ``validation_split`` of it for validation.

    Args:
        validation_split: a fraction in [0, 1) or a count of samples held back, chosen with ``split_seed``.
        sampler: a custom sampler (e.g. class-aware) for the training part; it replaces shuffling.
        pin_memory: page-locked batches, so the trainer's ``non_blocking`` copies to CUDA overlap compute
            (default: when CUDA is present).
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = True,
                 validation_split: float | int = 0.0, num_workers: int = 0,
                 sampler: Sampler | None = None, collate_fn: Callable = default_collate,
                 drop_last: bool = False, pin_memory: bool | None = None, split_seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.full_dataset = dataset
        train_set, self._valid_set = self._split(dataset, validation_split, split_seed)
        self._loader_kwargs = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
                                   pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                                   # workers start with each epoch's iterator, seeded from the torch generator that
                                   # checkpoints save: persistent ones would keep their generators across epochs,
                                   # and a resumed run would restart them in another state
                                   persistent_workers=False)
        if sampler is None and dist.is_distributed():
            sampler = DistributedSampler(train_set, shuffle=shuffle, drop_last=drop_last)
        super().__init__(train_set, sampler=sampler, shuffle=shuffle if sampler is None else None,
                         drop_last=drop_last, **self._loader_kwargs)

    @staticmethod
    def _split(dataset: Dataset, validation_split: float | int, seed: int):
        n = len(dataset)
        if isinstance(validation_split, bool) or validation_split < 0:
            raise ValueError(f"validation_split must be a fraction in [0, 1) or a count, got {validation_split}")
        if validation_split == 0:
            return dataset, None
        n_valid = validation_split if isinstance(validation_split, int) else int(n * validation_split)
        if isinstance(validation_split, float) and validation_split >= 1:
            raise ValueError(f"a fractional validation_split must be below 1, got {validation_split}")
        if n_valid <= 0:  # a fraction of a small set rounds down to nothing held back
            raise ValueError(f"validation_split={validation_split} of {n} samples holds back none for validation "
                             f"(int({n} x {validation_split}) = 0); choose a larger split: a count such as "
                             f"validation_split=1, or a fraction of at least 1/{n} = {math.ceil(1e4 / n) / 1e4:g}; "
                             "0 turns validation off (then trainer.args.monitor must be \"off\")")
        if n_valid >= n:
            raise ValueError(f"validation_split={validation_split} asks for {n_valid} of the {n} samples for "
                             "validation, leaving none for training; choose a smaller split")
        order = np.random.RandomState(seed).permutation(n)
        return Subset(dataset, order[n_valid:].tolist()), Subset(dataset, order[:n_valid].tolist())

    def make_loader(self, dataset: Dataset, shuffle: bool = False, pad: bool = False,
                    shard: bool = True) -> DataLoader:
        """A loader over ``dataset`` with this loader's batch size and workers, sharded under DDP.

        Evaluation shards (``pad`` False) hold every sample once over the ranks; ``pad`` True evens them out by
        repeating samples, as ``DistributedSampler`` does, for loops that step an optimizer in lockstep.
        ``shard`` False: every rank reads the whole dataset in the one-process order (test-time training's views,
        whose forward passes the trainer splits over the ranks itself).
        """
        sampler = None
        if dist.is_distributed() and shard:
            sampler = (DistributedSampler(dataset, shuffle=shuffle, drop_last=False) if pad
                       else EvalShardSampler(len(dataset)))
        return DataLoader(dataset, sampler=sampler, shuffle=shuffle if sampler is None else None,
                          **self._loader_kwargs)

    def split_validation(self) -> DataLoader | None:
        """The validation loader, or None when nothing was held back."""
        return None if self._valid_set is None else self.make_loader(self._valid_set)

    validation_source = "a random validation_split of the training data"


def targets_of(dataset: Dataset) -> Sequence[int]:
    """Labels of every sample of ``dataset`` (``dataset.targets``, through ``Subset`` when needed)."""
    if isinstance(dataset, Subset):
        parent = targets_of(dataset.dataset)
        return [int(parent[i]) for i in dataset.indices]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"{type(dataset).__name__} has no 'targets'; long-tailed datasets must expose their labels")
    return targets.tolist() if isinstance(targets, torch.Tensor) else list(targets)
