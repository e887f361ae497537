"""BaseModel (an ``nn.Module`` whose printout ends with its trainable-parameter count) and
BackboneClassifier, the backbone + linear head layout two-stage methods rely on."""
from __future__ import annotations

import torch
from torch import nn


class BaseModel(nn.Module):
    """Base class for registered models. Subclasses implement ``forward``."""

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def __str__(self) -> str:
        return f"{super().__str__()}\nTrainable parameters: {self.num_trainable_parameters():,}"


class LearnableWeightScaling(nn.Module):
    """``logits * s`` with a learned per-class scale ``s`` of shape ``(1, C)``, initialised to ones (LWS,
    Kang et al. 2020; MiSLAS applies it in training and at test time)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, num_classes))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.scale


class BackboneClassifier(BaseModel):
    """``backbone`` (inputs -> features ``(N, D)``), a linear ``classifier`` and, with ``lws``, a learnable
    per-class logit scale. ``forward(x) = head(backbone(x))``; two-stage methods (cRT, MiSLAS, LNR) freeze
    the backbone and re-learn ``head``. A stage-1 checkpoint without LWS loads into an ``lws`` model: the
    scale keeps its initial ones.
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, lws: bool = False):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(num_features, num_classes)
        self.lws = LearnableWeightScaling(num_classes) if lws else None

    def head(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(features)
        return self.lws(logits) if self.lws is not None else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
