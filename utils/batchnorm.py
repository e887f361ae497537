"""BatchNorm running statistics for epochs too short for the running average to follow the weights.

``nn.BatchNorm*`` keeps ``running = (1 - m) running + m batch`` (m = 0.1): the statistics used at evaluation
are an exponential average whose window is about 1 / m = 10 batches and which still holds ``(1 - m)^B`` of
what it was before an epoch of B batches. On CIFAR-LT (85-97 batches an epoch) that is nothing (3e-5). On a
few hundred images (3 batches of 128) it is 73%: the statistics evaluated after an epoch are mostly those
of weights several epochs (and, early on, several large-lr warm-up steps) old, or of the initial (0, 1), and
a deep network normalised with them is far off scale. That is why MiSLAS stage 1 at lr 0.1 "diverged" on
small data (validation loss 1,311 at epoch 4) while its training loss, computed with batch statistics, fell.

:class:`EpochBatchNormStats` replaces the exponential average, for one epoch, by the pooled statistics of that
epoch's own training batches (the "precise BN" estimate of Wu & Johnson 2021, taken on the fly): the mean of
the per-batch means and of the per-batch unbiased variances of every BatchNorm input, weighted by batch
size, exactly as the training forwards saw them (mixed images in mixup training, class-balanced batches in
MiSLAS stage 2). Only layers that ran in training mode are touched (a frozen, eval-mode backbone keeps its
statistics). ``BaseTrainer(bn_stats="auto")`` uses it for epochs of fewer batches than the average needs to
forget the previous epoch to 1% (``(1 - m)^B > 0.01``: B < 44 at m = 0.1), so the papers' runs on the full
datasets are unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import nn

FORGET_TOLERANCE = 0.01  # "auto": an epoch must shrink the previous epoch's share of the average below this


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def batches_to_forget(momentum: float | None, tolerance: float = FORGET_TOLERANCE) -> int:
    """Batches after which an exponential average with ``momentum`` keeps less than ``tolerance`` of its start."""
    if momentum is None or momentum >= 1:  # cumulative average (None) is handled by torch itself; 1 keeps nothing
        return 1
    return math.ceil(math.log(tolerance) / math.log(1 - momentum))


class EpochBatchNormStats:
    """Collect the statistics of one epoch's training batches and make them the running statistics.

    ``start()`` before the epoch registers forward pre-hooks; ``finish()`` after it writes, for every layer
    that ran in training mode, ``running_mean`` = batch-size-weighted mean of the batch means and
    ``running_var`` = that of the unbiased batch variances, and removes the hooks. ``num_batches_tracked``
    keeps counting as torch does.
    """

    def __init__(self, model: nn.Module):
        self.layers = batchnorm_layers(model)
        self._handles: list = []
        self._sums: dict[int, list] = {}

    def __bool__(self) -> bool:
        return bool(self.layers)

    def start(self) -> None:
        self.finish(write=False)
        self._sums = {}
        self._handles = [layer.register_forward_pre_hook(self._collect) for layer in self.layers]

    @torch.no_grad()
    def _collect(self, module: nn.Module, inputs) -> None:
        if not module.training:
            return
        x = inputs[0].detach().float()
        dims = [d for d in range(x.dim()) if d != 1]
        n = x.numel() // x.shape[1]
        if n < 2:  # torch itself refuses to train BatchNorm on one value per channel
            return
        var, mean = torch.var_mean(x, dim=dims, correction=1)
        entry = self._sums.setdefault(id(module), [torch.zeros_like(mean), torch.zeros_like(var), 0])
        entry[0] += mean * n
        entry[1] += var * n
        entry[2] += n

    @torch.no_grad()
    def finish(self, write: bool = True) -> int:
        """Write the collected statistics (unless ``write`` is false) and remove the hooks; returns the number
        of layers written."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        written = 0
        if write:
            for layer in self.layers:
                entry = self._sums.get(id(layer))
                if entry is None or entry[2] == 0:
                    continue
                layer.running_mean.copy_((entry[0] / entry[2]).to(layer.running_mean.dtype))
                layer.running_var.copy_((entry[1] / entry[2]).to(layer.running_var.dtype))
                written += 1
        self._sums = {}
        return written
