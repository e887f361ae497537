"""Optimizers and learning-rate schedules available to configs.

Every ``torch.optim`` optimizer and every epoch-wise ``torch.optim.lr_scheduler`` schedule that can be
described in JSON is registered under its torch name. Two schedules of the long-tailed literature are
added: ``WarmupMultiStepLR`` (SADE's ``CustomLR``, MiSLAS's CIFAR recipe) and ``WarmupCosineLR``.
Schedulers are stepped once per epoch, after the training epoch.
"""
from __future__ import annotations

import bisect
import inspect
import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from utils.registry import OPTIMIZERS, SCHEDULERS

for _name in dir(torch.optim):
    _obj = getattr(torch.optim, _name)
    if inspect.isclass(_obj) and issubclass(_obj, torch.optim.Optimizer) and _obj is not torch.optim.Optimizer:
        OPTIMIZERS.register(_obj, name=_name)

# LambdaLR and friends take Python callables and the chaining ones take other schedulers:
# neither can be written in a JSON config.
_NOT_FROM_JSON = {"LRScheduler", "_LRScheduler", "LambdaLR", "MultiplicativeLR", "SequentialLR",
                  "ChainedScheduler"}
for _name in dir(torch.optim.lr_scheduler):
    _obj = getattr(torch.optim.lr_scheduler, _name)
    if (inspect.isclass(_obj) and _name not in _NOT_FROM_JSON and not _name.startswith("_")
            and (issubclass(_obj, LRScheduler) or _name == "ReduceLROnPlateau")):
        SCHEDULERS.register(_obj, name=_name)


@SCHEDULERS.register()
class WarmupMultiStepLR(LRScheduler):
    """Linear warm-up for ``warmup_epochs``, then ×``gamma`` at each milestone (SADE/MiSLAS CIFAR recipe).

    With 0-based epoch ``e`` the factor is ``(e + 1) / warmup_epochs`` while ``e < warmup_epochs``, then
    ``gamma ** (number of milestones <= e)``. For milestones [160, 180] that is the papers' "×0.1 after
    epoch 160, ×0.01 after epoch 180" with 1-based epochs.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 warmup_epochs: int = 5, last_epoch: int = -1):
        milestones = list(milestones)
        if milestones != sorted(milestones) or any(not isinstance(m, int) or m < 0 for m in milestones):
            raise ValueError(f"milestones must be non-negative increasing integers, got {milestones}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.milestones, self.gamma, self.warmup_epochs = milestones, gamma, warmup_epochs
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / self.warmup_epochs
        return self.gamma ** bisect.bisect_right(self.milestones, epoch)

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


@SCHEDULERS.register()
class WarmupCosineLR(LRScheduler):
    """Linear warm-up for ``warmup_epochs``, then cosine decay to ``eta_min`` at ``total_epochs``.

    ``total_epochs`` defaults to the trainer's ``epochs``. With ``warmup_epochs = 0`` this is MiSLAS's
    per-epoch cosine ``lr_e = eta_min + (lr - eta_min)(1 + cos(pi e / E)) / 2``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_epochs: int, warmup_epochs: int = 0,
                 eta_min: float = 0.0, last_epoch: int = -1):
        if total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1, got {total_epochs}")
        if not 0 <= warmup_epochs < total_epochs:
            raise ValueError(f"warmup_epochs must be in [0, total_epochs), got {warmup_epochs}")
        if eta_min < 0:
            raise ValueError(f"eta_min must be >= 0, got {eta_min}")
        self.total_epochs, self.warmup_epochs, self.eta_min = total_epochs, warmup_epochs, eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        e = self.last_epoch
        if e < self.warmup_epochs:
            return [base * (e + 1) / self.warmup_epochs for base in self.base_lrs]
        progress = min((e - self.warmup_epochs) / (self.total_epochs - self.warmup_epochs), 1.0)
        return [self.eta_min + (base - self.eta_min) * 0.5 * (1 + math.cos(math.pi * progress))
                for base in self.base_lrs]
