"""The preference hypernetwork of PRL (Zhao et al., NeurIPS 2024).

An MLP maps a preference vector on the simplex (one weight per expert) to the parameters of every
expert's head, so one trained model holds a continuum of experts whose head/tail trade-off is chosen by
the preference at inference.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class PreferenceHypernet(nn.Module):
    """Preference ``(E,)`` (or one per expert, ``(E, E)``) -> per-expert head parameters.

    ``mode="classifier"``: each expert's cosine-classifier matrix ``(D, C)`` (the released CIFAR/ImageNet
    model). With ``rank`` r the matrix is ``U(p) @ V``, ``U (D, r)`` generated and ``V (r, C)`` learned, so a
    1,000-class head needs ``128 * E * D * r`` generator weights instead of ``128 * E * D * C`` (5.9e8 for
    ImageNet-LT as released). ``mode="adapter"``: a square adapter ``(D, D)`` + bias per expert, applied as
    ``relu(f @ A + b)`` before an ordinary classifier (the released iNaturalist variant); with ``rank`` the
    adapter is ``U(p) @ V`` likewise (a full 1536 x 1536 adapter for 3 experts needs 9e8 generator weights).

    ``residual`` (classifier mode; default true): expert j's matrix is a learned cosine classifier ``B_j`` (unit
    columns at start, as ``NormedLinear``) plus an offset generated from the preference that is zero at the
    default preference. Without it (``residual`` false, the released form) ``W_j(p) = G_j(p)``, ``G`` the MLP
    above: the gradient of a normalised classifier is orthogonal to ``W``, so the norm grows, and it grows along
    what every preference shares (the last layer's bias, the component of the ReLU features common to all
    ``p``); within ten toy steps the MLP's features for (1,0,0) and (0,0,1) have cosine 1.0000 and norm x140,
    and ``G(p)`` is one vector times a preference-dependent scale that the cosine classifier normalises away
    (head cosine 0.99999 between (1,0,0) and (0,0,1) on the toy set of tests/test_experts.py).

    ``offset`` says how the residual offset is bounded:

    - ``"relative"`` (default): ``W_j(p) = normalize(B_j) + rho / sqrt(D) * tanh(G_j(p) - G_j(uniform))``,
      columns normalised, ``rho`` = ``offset_bound`` (1.0). Subtracting before the ``tanh`` cancels what every
      preference shares, and the bound is relative to the unit column whatever ``|B_j|`` grows to (with
      ``rank`` the bound applies to ``U`` and the offset is ``U @ V``).
    - ``"tanh"``: ``W_j(p) = B_j + tanh(G_j(p)) - tanh(G_j(uniform))`` (the form of the previous release).
      On CIFAR-10-LT the MLP's features still collapse onto one direction whose norm grows (cosine 0.9999
      between (1,0,0) and uniform, norm 96-150 after 20 epochs), so ``G(p)`` is a scaled copy of ``G(uniform)``;
      97-99% of the entries pass +-2, both ``tanh`` saturate to the same signs and the offsets shrink to
      0.03-0.16 of ``|B_j|``: with the experts averaged the heads for (1,0,0) and (0,0,1) end at cosine 0.996
      and few-shot accuracy does not move (14.3 / 14.7).

    Also measured and rejected: ``tanh(G(p) - G(uniform))`` unscaled (entries up to 1 against B's 1/sqrt(D):
    the offset saturates to one sign pattern larger than ``B_j``, per-expert loss 1.56x SADE's at epoch 10),
    ``normalize(B_j)`` plus the unscaled ``tanh`` offset (entries of ``G`` in the thousands by epoch 3), no bound
    at all (experts averaged: head cosine 0.837, but per-expert loss 3.0x SADE's), and a LayerNorm on the MLP's
    features (on the toy set the normalised features still share one direction: head cosine 0.99999).

    The learnable default: the MLP sees ``h(p) = normalize(2^tanh(w) * p)`` with ``w`` learned (zero at
    start, so ``h(p) = p``); with no preference given the input is ``h(uniform)``, the learned default
    preference. Training and inference use the same ``h`` (the released code multiplies a learned ray into
    the sampled one too). Each scale stays in [1/2, 2]: with ``softplus(w)`` (unbounded) training drove one
    scale to 0 (w -115 within 100 toy steps), which maps every preference with that weight nonzero to the
    same ``h`` (and a vertex to 0/0): a shortcut by which the hypernetwork ignores the preference.
    """

    OFFSET_INIT = 0.05  # residual: |W_j(vertex) - W_j(uniform)| / |B_j| at initialisation (mean over vertices)
    OFFSETS = ("relative", "tanh")

    def __init__(self, num_experts: int, feature_dim: int, num_classes: int, hidden: int = 128,
                 mode: Literal["classifier", "adapter"] = "classifier", rank: int | None = None,
                 residual: bool = True, offset: str = "relative", offset_bound: float = 1.0):
        super().__init__()
        if num_experts < 1 or hidden < 1:
            raise ValueError(f"num_experts and hidden must be >= 1, got {num_experts}, {hidden}")
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be >= 1 or null, got {rank}")
        self.num_experts, self.feature_dim, self.num_classes = num_experts, feature_dim, num_classes
        self.mode, self.rank = mode, rank
        if offset not in self.OFFSETS:
            raise ValueError(f"offset must be one of {', '.join(map(repr, self.OFFSETS))}, got {offset!r}")
        if not (isinstance(offset_bound, (int, float)) and 0 < offset_bound <= 10):
            raise ValueError(f"offset_bound must be in (0, 10], got {offset_bound!r}")
        self.residual = bool(residual) and mode == "classifier"
        self.offset = offset
        if self.residual and offset == "relative":
            # saved with the weights, so a checkpoint of the "tanh" form (which lacks it) is refused by name
            self.register_buffer("offset_bound", torch.tensor(float(offset_bound)))
        self.mlp = nn.Sequential(nn.Linear(num_experts, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden))
        self.preference_scale = nn.Parameter(torch.zeros(num_experts))  # w of h(p), see the class docstring
        if mode == "classifier":
            width = rank if rank is not None else num_classes
            self.head = nn.Linear(hidden, num_experts * feature_dim * width)
            self.low_rank = nn.Parameter(torch.randn(num_experts, rank, num_classes) / rank ** 0.5) if rank else None
            if self.residual:  # B_j: NormedLinear's initialisation (uniform, unit columns)
                self.base = nn.Parameter(F.normalize(torch.empty(num_experts, feature_dim, num_classes)
                                                     .uniform_(-1, 1), dim=1))
        elif mode == "adapter":
            width = rank if rank is not None else feature_dim
            self.head = nn.Linear(hidden, num_experts * (feature_dim * width + feature_dim))
            self.low_rank = nn.Parameter(torch.randn(num_experts, rank, feature_dim) / rank ** 0.5) if rank else None
        else:
            raise ValueError(f'mode must be "classifier" or "adapter", got {mode!r}')
        # torch's default init, as released: the preference path (weights) dominates the constant bias at the
        # start; a small-weight init lets the bias win and the trained network then ignores the preference.
        # Residual: the shared part cancels; the head is scaled so that the offset at a vertex of the simplex is
        # OFFSET_INIT of |B_j| whatever the sizes (torch's default gives 0.11 for D 16, H 32 and 0.21 for D 64,
        # H 128; at 0.11, without the tanh, the toy training of tests/test_experts.py diverged for 3 of 8 seeds).
        # The tanh makes the offset sublinear in the scale, so the scaling is repeated until it settles.
        if self.residual:
            with torch.no_grad():
                for _ in range(4):
                    offsets = torch.stack([self(v) for v in torch.eye(num_experts)]) - self(None)
                    relative = (offsets.flatten(2).norm(dim=2) / self.base.flatten(1).norm(dim=1)).mean()
                    self.head.weight.mul_(self.OFFSET_INIT / relative.clamp_min(1e-12))

    def conditioning(self, preference: torch.Tensor | None) -> torch.Tensor:
        """``h(p)``: the network's input, shape ``(E,)`` or ``(E, E)``."""
        if preference is None:
            preference = torch.full((self.num_experts,), 1.0 / self.num_experts, device=self.preference_scale.device)
        scaled = 2.0 ** torch.tanh(self.preference_scale) * preference  # each weight's scale in [1/2, 2]
        return scaled / scaled.sum(dim=-1, keepdim=True)

    def default_preference(self) -> torch.Tensor:
        return self.conditioning(None).detach()

    def forward(self, preference: torch.Tensor | None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Classifier mode: weights ``(E, D, C)``. Adapter mode: ``(A (E, D, D), b (E, D))``.

        A preference of shape ``(E, E)`` conditions expert j on row j (the released code's per-expert draws).
        """
        h = self.conditioning(preference)
        per_expert = h.dim() == 2
        E, D = self.num_experts, self.feature_dim
        if self.mode == "adapter":
            out = self.head(self.mlp(h))  # (P,) or (E, P)
            width = self.rank if self.rank is not None else D
            out = out.view(*((E,) if per_expert else ()), E, D * width + D)
            out = out.diagonal(dim1=0, dim2=1).T if per_expert else out  # expert j takes its own row
            adapter = out[:, :D * width].view(E, D, width)
            adapter = adapter @ self.low_rank if self.low_rank is not None else adapter
            return adapter, out[:, D * width:]
        if not self.residual:
            return self._generated(h, per_expert)
        uniform = self.conditioning(None)
        if self.offset == "tanh":
            return self.base + self._generated(h, per_expert) - self._generated(uniform, False)
        delta = self._generated(h, per_expert, bounded=False) - self._generated(uniform, False, bounded=False)
        offset = self.offset_bound / D ** 0.5 * torch.tanh(delta)
        offset = offset @ self.low_rank if self.low_rank is not None else offset
        return F.normalize(self.base, dim=1) + offset

    def _generated(self, h: torch.Tensor, per_expert: bool, bounded: bool = True) -> torch.Tensor:
        """``G(h)``: the classifier matrices ``(E, D, C)`` the MLP generates from the conditioning ``h`` (with
        ``rank``, ``U (E, D, r)``, times ``V`` only when ``bounded``); ``tanh`` of it for the "tanh" offset."""
        out = self.head(self.mlp(h))
        out = torch.tanh(out) if self.residual and bounded else out  # the "tanh" offset: see the class docstring
        E, D = self.num_experts, self.feature_dim
        width = self.rank if self.rank is not None else self.num_classes
        out = out.view(*((E,) if per_expert else ()), E, D * width)
        out = out.diagonal(dim1=0, dim2=1).T if per_expert else out
        weights = out.view(E, D, width)
        return weights @ self.low_rank if self.low_rank is not None and bounded else weights


def earlier_form_hint(missing: list[str], unexpected: list[str]) -> str:
    """The setting that builds a hypernetwork checkpoint of an earlier head form, judged from the tensors this
    model has and the checkpoint lacks (``""`` when the mismatch is something else): no ``hypernet.base`` is the
    direct form from before the residual heads, no ``hypernet.offset_bound`` alone the "tanh" offset."""
    forms = ("hypernet.base", "hypernet.offset_bound")
    if not missing or unexpected or not all(name.endswith(forms) for name in missing):
        return ""
    if any(name.endswith("hypernet.base") for name in missing):
        return ("a hypernetwork checkpoint from before the residual generated heads: evaluate it with --set "
                "arch.args.hypernet.residual=false, which builds the released direct form; its learned preference "
                "scale is read through the bounded conditioning, so results can differ slightly from before")
    return ('a hypernetwork checkpoint of the residual heads\' earlier "tanh" offset: evaluate it with --set '
            "arch.args.hypernet.offset=tanh")
