"""SADE's diverse-expert loss and PRL's scalarisations of the experts' losses."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from utils.registry import LOSSES


def inverse_prior(prior: torch.Tensor) -> torch.Tensor:
    """The prior with its values re-assigned in reversed rank order (SADE): the rarest class gets the
    largest frequency."""
    order = torch.argsort(prior)  # ascending
    flipped = torch.empty_like(prior)
    flipped[order] = prior[order.flip(0)]
    return flipped


def scalarize(losses: torch.Tensor, preference: torch.Tensor | None, method: str, mu: float = 0.1,
              weighted: bool = True, ideal: float = 0.0) -> torch.Tensor:
    """One loss from the experts' losses ``(E,)``.

    - ``sum``: ``sum_i L_i`` (SADE).
    - ``linear``: ``E * sum_i p_i L_i`` (the preference weights the experts; PRL's ``ls`` solver).
    - ``stch``: smooth Tchebycheff (Lin et al. 2024): ``mu * logsumexp(E p_i (L_i - Z) / mu)``, which tends to
      the weighted Tchebycheff ``max_i E p_i (L_i - Z)`` as ``mu -> 0``. With ``weighted`` false it is the
      released code's ``sum_i L_i + mu * logsumexp(L_i)``, which ignores the preference.
    """
    num = losses.numel()
    if method == "sum":
        return losses.sum()
    if preference is None:
        raise ValueError(f"scalarization {method!r} needs the preference of the forward pass")
    weights = num * preference.to(losses.dtype)
    if method == "linear":
        return (weights * losses).sum()
    if method == "stch":
        if not weighted:
            return losses.sum() + mu * torch.logsumexp(losses, dim=0)
        return mu * torch.logsumexp(weights * (losses - ideal) / mu, dim=0)
    raise ValueError(f'scalarization must be "sum", "linear" or "stch", got {method!r}')


@LOSSES.register()
class DiverseExpertLoss(nn.Module):
    """SADE's three complementary experts, scalarised as PRL does.

    With prior π (training class frequencies) and the experts' logits z1, z2, z3:
    L1 = CE(z1, y) (the forward / head expert), L2 = CE(z2 + log π, y) (Balanced Softmax, the uniform expert),
    L3 = CE(z3 + log π - tau log π̄, y) with π̄ the rank-reversed prior (the backward expert). With more than
    three experts the adjustment of expert j interpolates: ``log π - tau_j log π̄`` with ``tau_j`` from 0 (L2)
    to ``tau`` (the last), the first expert staying plain.

    ``forward(expert_logits (N, E, C), target (N,), preference (E,) or None) -> scalar``. The default
    ``stch`` weighted by the preference is what makes the preference control the head/tail trade-off; the
    released PRL trainer's unweighted form is ``scalarization: "stch", weighted: false`` and SADE is ``"sum"``.
    """

    def __init__(self, cls_num_list: Sequence[int], tau: float = 2.0,
                 scalarization: Literal["sum", "linear", "stch"] = "stch", mu: float = 0.1, weighted: bool = True,
                 ideal: float = 0.0):
        super().__init__()
        if not mu > 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        prior = torch.as_tensor(cls_num_list, dtype=torch.float64)
        if (prior <= 0).any():
            raise ValueError("every class needs at least one training image for the log prior")
        prior = prior / prior.sum()
        self.register_buffer("log_prior", prior.log().float())
        self.register_buffer("log_inverse_prior", inverse_prior(prior).log().float())
        self.tau, self.scalarization, self.mu, self.weighted, self.ideal = tau, scalarization, mu, weighted, ideal

    def adjustments(self, num_experts: int) -> torch.Tensor:
        """Logit adjustment of each expert, ``(E, C)``."""
        rows = [torch.zeros_like(self.log_prior)]
        for j in range(1, num_experts):
            tau_j = self.tau * (j - 1) / max(num_experts - 2, 1)
            rows.append(self.log_prior - tau_j * self.log_inverse_prior)
        return torch.stack(rows)

    def expert_losses(self, expert_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-expert cross-entropies ``(E,)``."""
        adjusted = expert_logits.float() + self.adjustments(expert_logits.shape[1])[None]
        return torch.stack([F.cross_entropy(adjusted[:, j], target) for j in range(adjusted.shape[1])])

    def forward(self, expert_logits: torch.Tensor, target: torch.Tensor,
                preference: torch.Tensor | None = None) -> torch.Tensor:
        return scalarize(self.expert_losses(expert_logits, target), preference, self.scalarization, self.mu,
                         self.weighted, self.ideal)
