"""BaseModel: an ``nn.Module`` whose printout ends with its trainable-parameter count."""
from __future__ import annotations

from torch import nn


class BaseModel(nn.Module):
    """Base class for registered models. Subclasses implement ``forward``."""

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def __str__(self) -> str:
        return f"{super().__str__()}\nTrainable parameters: {self.num_trainable_parameters():,}"
