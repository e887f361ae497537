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
    """SADE's three complementary objectives, scalarised as PRL does.

    With prior π (training class frequencies), logits z and the rank-reversed prior π̄, the objectives are
    L1 = CE(z, y) (forward / head), L2 = CE(z + log π, y) (Balanced Softmax, uniform) and
    L3 = CE(z + log π - tau log π̄, y) (inverse-prior, backward). With more than three experts objective j
    interpolates: ``log π - tau_j log π̄`` with ``tau_j`` from 0 (L2) to ``tau`` (the last), the first staying
    plain.

    ``forward(expert_logits (N, E, C), target (N,), preference (E,) or None, weights (E,) or None) -> scalar``.

    ``objective`` says what each objective scores:

    - ``"experts"``: objective j scores expert j's own logits z_j (SADE; PRL's released trainer). The
      preference scalarises the experts' losses. Each loss involves only its own head, so the weighted losses
      share one minimiser: a hypernetwork learns heads that ignore the preference, and under the smooth
      Tchebycheff at mu 0.1 (nearly a max) each batch trains only the expert of the largest weighted loss.
    - ``"aggregate"``: objective j scores the aggregate prediction ``sum_k w_k z_k`` (``weights``: the
      model's aggregation under this batch's preference, the preference itself or the mean), the objectives are
      scalarised by the preference, and SADE's per-expert sum is added with factor ``expert_term`` (0.25; that
      sum does not depend on the preference and pulls every generated head to one optimum: at 1.0 the toy
      set's heads for (1,0,0) and (0,0,1) end more alike, see the README). Every
      expert gets gradient from every batch, and the heads generated for a preference must make the aggregate
      good for that preference's mix of objectives: a real trade-off for the hypernetwork to learn.

    The default (``None``) is ``"experts"`` with ``scalarization: "sum"`` (SADE) and ``"aggregate"`` with a
    preference scalarisation (PRL); see the README for the measurement that chose it.

    ``scalarization``: ``"sum"`` (SADE), ``"linear"`` (``E sum_j p_j L_j``) or ``"stch"`` (smooth
    Tchebycheff, weighted by the preference; ``weighted`` false is the released code's form, which ignores it).
    """

    def __init__(self, cls_num_list: Sequence[int], tau: float = 2.0,
                 scalarization: Literal["sum", "linear", "stch"] = "stch", mu: float = 0.1, weighted: bool = True,
                 ideal: float = 0.0, objective: Literal["experts", "aggregate"] | None = None,
                 expert_term: float = 0.25):
        super().__init__()
        if not mu > 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        if objective is None:
            objective = "experts" if scalarization == "sum" else "aggregate"
        if objective not in ("experts", "aggregate"):
            raise ValueError(f'objective must be "experts" or "aggregate", got {objective!r}')
        if not expert_term >= 0:
            raise ValueError(f"expert_term must be >= 0, got {expert_term}")
        prior = torch.as_tensor(cls_num_list, dtype=torch.float64)
        if (prior <= 0).any():
            raise ValueError("every class needs at least one training image for the log prior")
        prior = prior / prior.sum()
        self.register_buffer("log_prior", prior.log().float())
        self.register_buffer("log_inverse_prior", inverse_prior(prior).log().float())
        self.tau, self.scalarization, self.mu, self.weighted, self.ideal = tau, scalarization, mu, weighted, ideal
        self.objective, self.expert_term = objective, expert_term

    def adjustments(self, num_experts: int) -> torch.Tensor:
        """Logit adjustment of each objective, ``(E, C)``."""
        rows = [torch.zeros_like(self.log_prior)]
        for j in range(1, num_experts):
            tau_j = self.tau * (j - 1) / max(num_experts - 2, 1)
            rows.append(self.log_prior - tau_j * self.log_inverse_prior)
        return torch.stack(rows)

    def expert_losses(self, expert_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-expert cross-entropies ``(E,)``: objective j on expert j's logits (SADE's terms)."""
        adjusted = expert_logits.float() + self.adjustments(expert_logits.shape[1])[None]
        return torch.stack([F.cross_entropy(adjusted[:, j], target) for j in range(adjusted.shape[1])])

    def aggregate_losses(self, expert_logits: torch.Tensor, target: torch.Tensor,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
        """Every objective on the aggregate ``sum_k w_k z_k`` (the mean without ``weights``), ``(E,)``."""
        num = expert_logits.shape[1]
        if weights is None:
            weights = torch.full((num,), 1.0 / num, device=expert_logits.device)
        aggregate = torch.einsum("nec,e->nc", expert_logits.float(), weights.float())
        adjusted = aggregate[:, None] + self.adjustments(num)[None]  # (N, E, C): objective j's logits
        return torch.stack([F.cross_entropy(adjusted[:, j], target) for j in range(num)])

    def forward(self, expert_logits: torch.Tensor, target: torch.Tensor, preference: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        if self.objective == "experts":
            return scalarize(self.expert_losses(expert_logits, target), preference, self.scalarization, self.mu,
                             self.weighted, self.ideal)
        scalar = scalarize(self.aggregate_losses(expert_logits, target, weights), preference, self.scalarization,
                           self.mu, self.weighted, self.ideal)
        if self.expert_term:
            scalar = scalar + self.expert_term * self.expert_losses(expert_logits, target).sum()
        return scalar
