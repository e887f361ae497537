"""BatchNorm running statistics for epochs too short for the running average to follow the weights.

``nn.BatchNorm*`` keeps ``running = (1 - m) running + m batch`` (m = 0.1): the statistics used at evaluation
are an exponential average whose window is about 1 / m = 10 batches and which still holds ``(1 - m)^B`` of
what it was before an epoch of B batches. On CIFAR-LT (85-97 batches an epoch) that is nothing (3e-5). On a
few hundred images (3 batches of 128) it is 73%: the statistics evaluated after an epoch are mostly those
of weights several epochs (and, early on, several large-lr warm-up steps) old, or of the initial (0, 1), and
a deep network normalised with them is far off scale. That is why MiSLAS stage 1 at lr 0.1 "diverged" on
small data (validation loss 1,311 at epoch 4) while its training loss, computed with batch statistics, fell.

:class:`PreciseBatchNorm` replaces the exponential average, after such an epoch, by "precise BN" statistics
(Wu & Johnson 2021) of the FINAL weights: the epoch's training forward calls (their inputs as the trainer made
them: mixed images in mixup training, class-balanced batches in MiSLAS stage 2, the batch's preference for
hypernetwork experts) are recorded and, after the last optimizer step, replayed without gradients; every
BatchNorm layer that ran in training mode then holds the mean of the per-batch means and of the per-batch
unbiased variances of its inputs, weighted by batch size (:class:`EpochBatchNormStats`). Layers in eval mode
(a frozen backbone) keep their statistics. Pooling the statistics of the training forwards themselves, without
the replay, is not enough: at lr 0.1 the last steps of a 3-batch epoch move the weights so far that the
validation loss still rose 13-27x in the first epochs. ``BaseTrainer(bn_stats="auto")`` uses it for epochs of
fewer batches than the average needs to forget the previous epoch to 1% (``(1 - m)^B > 0.01``: B < 44 at
m = 0.1), so the papers' runs on the full datasets are unchanged.
"""
from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable

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


def _tensors_nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensors_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensors_nbytes(v) for v in value.values())
    return 0


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


class PreciseBatchNorm:
    """Record an epoch's training forward calls; afterwards recompute BatchNorm statistics with the final weights.

    ``start()`` before the epoch; ``finish()`` after the last optimizer step replays the recorded calls (the
    most recent ones within ``max_bytes`` of inputs) under ``no_grad`` and ``context()`` (the trainer's
    autocast), and writes the pooled statistics of the replay into every BatchNorm layer that ran in training
    mode. The calls recorded are the outermost calls of modules that contain a BatchNorm layer in training mode
    (the whole model, or a backbone a trainer calls on its own), with their arguments as given.
    ``num_batches_tracked`` is left as training made it.
    """

    def __init__(self, model: nn.Module, max_bytes: int = 256 * 2 ** 20,
                 context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.model, self.max_bytes, self.context = model, max_bytes, context
        self.layers = batchnorm_layers(model)
        self._candidates = [(m, [b for b in batchnorm_layers(m)]) for m in model.modules()]
        self._candidates = [(m, bns) for m, bns in self._candidates if bns]
        self._handles: list = []
        self._calls: deque = deque()
        self._bytes = 0
        self._active: nn.Module | None = None

    def __bool__(self) -> bool:
        return bool(self.layers)

    def start(self) -> None:
        self._remove_hooks()
        self._calls.clear()
        self._bytes, self._active = 0, None
        for module, bns in self._candidates:
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(bns), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post_hook))

    def _pre_hook(self, bns):
        def hook(module, args, kwargs):
            if self._active is not None or not any(b.training for b in bns):
                return None
            self._active = module
            call = (module, _detached(args), _detached(kwargs))
            self._calls.append(call)
            self._bytes += _tensors_nbytes(call[1]) + _tensors_nbytes(call[2])
            while self._bytes > self.max_bytes and len(self._calls) > 1:
                old = self._calls.popleft()
                self._bytes -= _tensors_nbytes(old[1]) + _tensors_nbytes(old[2])
            return None
        return hook

    def _post_hook(self, module, args, output):
        if module is self._active:
            self._active = None

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def finish(self, write: bool = True) -> int:
        """Replay the recorded calls and write the statistics (unless ``write`` is false); returns the number
        of layers written."""
        self._remove_hooks()
        calls, self._calls, self._bytes, self._active = list(self._calls), deque(), 0, None
        if not write or not calls:
            return 0
        tracked = [layer.num_batches_tracked.clone() for layer in self.layers]
        collector = EpochBatchNormStats(self.model)
        collector.start()
        try:
            with self.context():
                for module, args, kwargs in calls:
                    module(*args, **kwargs)
        finally:
            written = collector.finish()
            for layer, count in zip(self.layers, tracked):
                layer.num_batches_tracked.copy_(count)
        return written
