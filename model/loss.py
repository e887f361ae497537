"""Losses. Each is called as ``loss(output, target)`` with logits ``(N, C)`` and labels ``(N,)``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.registry import LOSSES


@LOSSES.register()
class CrossEntropy(nn.Module):
    """Softmax cross-entropy (the "Softmax" baseline of the long-tailed literature), mean over the batch.

    ``label_smoothing`` is the uniform smoothing of torch's ``cross_entropy``. ``forward`` takes an optional
    per-sample ``weight`` (B,) that scales each sample's loss (mixup's label shares).
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None:
            return F.cross_entropy(output.float(), target, label_smoothing=self.label_smoothing)
        per_sample = F.cross_entropy(output.float(), target, label_smoothing=self.label_smoothing, reduction="none")
        return (per_sample * weight).mean()
