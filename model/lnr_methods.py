"""The building blocks of MiSLAS (Zhong et al., CVPR 2021) and LNR (Hu et al., ICML 2025).

- ``las_epsilons`` / ``LabelAwareSmoothing``: per-class label smoothing, larger for frequent classes.
- ``LearnableWeightScaling`` (in ``base.base_model``, a ``lws`` option of the models): a learned per-class
  multiplier of the logits (LWS, Kang et al. 2020).
- ``mixup_batch`` / ``remix_label_weight``: mixup with the rebalanced label rule LNR's code uses
  (Remix, Chou et al. 2020).
- ``flip_rates`` / ``draw_flips``: LNR's asymmetric majority-to-minority label flips.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.registry import LOSSES

Shape = Literal["concave", "linear", "convex", "exp"]


def las_epsilons(cls_num_list: Sequence[int], smooth_head: float, smooth_tail: float, shape: Shape = "concave",
                 power: float | None = None) -> torch.Tensor:
    """Per-class smoothing ε of MiSLAS: ``smooth_head`` for the largest class, ``smooth_tail`` for the smallest.

    With ``t = (n - n_min) / (n_max - n_min)``: concave ``ε_t + (ε_h - ε_t) sin(π t / 2)``, linear
    ``ε_t + (ε_h - ε_t) t``, convex ``ε_h + (ε_h - ε_t) sin(3π/2 + π t / 2)``, exp ``ε_t + (ε_h - ε_t) t^power``.
    Returns a float tensor of shape ``(C,)``.
    """
    n = torch.as_tensor(cls_num_list, dtype=torch.float64)
    span = n.max() - n.min()
    t = (n - n.min()) / span if span > 0 else torch.ones_like(n)
    if shape == "concave":
        eps = smooth_tail + (smooth_head - smooth_tail) * torch.sin(math.pi * t / 2)
    elif shape == "linear":
        eps = smooth_tail + (smooth_head - smooth_tail) * t
    elif shape == "convex":
        eps = smooth_head + (smooth_head - smooth_tail) * torch.sin(1.5 * math.pi + math.pi * t / 2)
    elif shape == "exp":
        if power is None:
            raise ValueError('shape "exp" needs power')
        eps = smooth_tail + (smooth_head - smooth_tail) * t ** power
    else:
        raise ValueError(f"shape must be concave, linear, convex or exp, got {shape!r}")
    return eps.float()


@LOSSES.register()
class LabelAwareSmoothing(nn.Module):
    """Label-aware smoothing (MiSLAS): cross-entropy whose smoothing ε depends on the label's class size.

    Per sample with label y: ``(1 - ε_y) (-log p_y) + ε_y mean_k(-log p_k)``. The mean runs over all K
    classes, the label included, as in the MiSLAS code (the paper spreads ε over the K-1 others; the
    authors call the difference negligible for many classes). ``weight`` (per sample, e.g. the mixup
    share of this label) scales both terms. Returns the batch mean.
    """

    def __init__(self, cls_num_list: Sequence[int], smooth_head: float = 0.4, smooth_tail: float = 0.1,
                 shape: Shape = "concave", power: float | None = None):
        super().__init__()
        for name, value in (("smooth_head", smooth_head), ("smooth_tail", smooth_tail)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        self.register_buffer("epsilon", las_epsilons(cls_num_list, smooth_head, smooth_tail, shape, power))

    def forward(self, output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        log_prob = F.log_softmax(output.float(), dim=1)
        eps = self.epsilon[target]
        nll = -log_prob.gather(1, target[:, None]).squeeze(1)
        smooth = -log_prob.mean(dim=1)
        loss = (1 - eps) * nll + eps * smooth
        if weight is not None:
            loss = loss * weight
        return loss.mean()


def mixup_batch(images: torch.Tensor, alpha: float):
    """Mix each image with a partner from a random in-batch permutation (Zhang et al. 2018; MiSLAS).

    Returns ``(mixed, permutation, lam)`` with one ``lam ~ Beta(alpha, alpha)`` per batch, drawn from numpy's
    global generator as MiSLAS does (its state is in every checkpoint). ``images`` is not modified.
    """
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(images.shape[0], device=images.device)
    return lam * images + (1 - lam) * images[perm], perm, lam


def remix_label_weight(lam: float, y_a: torch.Tensor, y_b: torch.Tensor, cls_num: torch.Tensor, kappa: float = 3.0,
                       tau: float = 0.5) -> torch.Tensor:
    """Share of the loss that goes to ``y_a`` for each pair (the Remix rule in LNR's ``mixup_criterion``).

    Pixels are mixed with ``lam`` regardless. The label share is ``lam``, except: if ``n[y_a] / n[y_b] >= kappa``
    and ``lam < tau`` the label goes wholly to the rarer ``y_b`` (share 0); if ``n[y_a] / n[y_b] <= 1 / kappa`` and
    ``1 - lam < tau`` it goes wholly to the rarer ``y_a`` (share 1). Shape ``(B,)``, float.
    """
    ratio = cls_num[y_a].double() / cls_num[y_b].double()
    share = torch.full(y_a.shape, lam, dtype=torch.float32, device=y_a.device)
    share[(ratio >= kappa) & (lam < tau)] = 0.0
    share[(ratio <= 1 / kappa) & (1 - lam < tau)] = 1.0
    return share


def flip_zscores(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LNR's z-score of every sample's probability of every class, ``(N, C)`` float64, and the number of
    samples each class's statistics come from, ``(C,)``.

    For class k, μ_k and σ_k are the mean and (population, as ``np.std``) standard deviation of ``p_k`` over the
    samples whose label is not k; ``z = (p_k - μ_k) / σ_k``.
    """
    probs = probs.double()
    num_classes = probs.shape[1]
    others = (~F.one_hot(labels, num_classes).bool()).double()
    count = others.sum(0)
    mean = (probs * others).sum(0) / count.clamp_min(1)
    std = ((((probs - mean) ** 2) * others).sum(0) / count.clamp_min(1)).sqrt()
    return (probs - mean) / std.clamp_min(1e-12), count


def flip_priors(labels: torch.Tensor, cls_num_list: Sequence[int]) -> torch.Tensor:
    """LNR's prior weight of moving each sample to each class, ``(N, C)`` float64: with rarity
    ``r_c = 1 - (n_c - n_min) / (n_max - n_min)``, ``max(r_k - r_c, 0)`` (positive only for strictly rarer k)."""
    counts = torch.as_tensor(cls_num_list, dtype=torch.float64)
    span = (counts.max() - counts.min()).clamp_min(1e-12)
    rarity = 1 - (counts - counts.min()) / span
    return (rarity[None, :] - rarity[labels][:, None]).clamp_min(0)


def flip_rates(probs: torch.Tensor, labels: torch.Tensor, cls_num_list: Sequence[int],
               threshold: float) -> torch.Tensor:
    """LNR flip rate of every sample towards every class, shape ``(N, C)``.

    ``probs`` (N, C) are softmax probabilities averaged over augmented passes; ``labels`` (N,) the labels.
    With the z-scores of :func:`flip_zscores` and the priors of :func:`flip_priors`, the rate of moving a
    sample of class c to k is ``tanh(z - threshold) * max(r_k - r_c, 0)``, clipped below at 0: only strictly
    rarer classes, only when z exceeds the threshold.
    """
    z, count = flip_zscores(probs, labels)
    rates = torch.tanh(z - threshold) * flip_priors(labels, cls_num_list)
    rates[:, count < 2] = 0  # fewer than two non-members: no statistics, no flips (as the LNR code)
    return rates.clamp_min(0).float()


def zscore_summary(probs: torch.Tensor, labels: torch.Tensor, cls_num_list: Sequence[int],
                   threshold: float) -> dict:
    """What decides LNR's flips, for the log: the z-scores of the (sample, strictly rarer class) pairs that
    may flip (prior > 0), their quantiles, how many exceed ``threshold``, the expected number of flips
    (sum over samples of P(at least one class fires)) and the largest z towards each class."""
    z, count = flip_zscores(probs, labels)
    prior = flip_priors(labels, cls_num_list)
    eligible = (prior > 0) & (count >= 2)[None, :]
    values = z[eligible]
    rates = (torch.tanh(z - threshold) * prior).clamp_min(0) * eligible
    expected = float((1 - torch.prod(1 - rates.clamp_max(1), dim=1)).sum())
    ordered = values.float().sort().values  # torch.quantile refuses more than 16M values (ImageNet-LT has 1e8)
    quantiles = {f"q{int(q * 100)}": float(ordered[round(q * (len(ordered) - 1))]) if len(ordered) else math.nan
                 for q in (0.5, 0.9, 0.99, 1.0)}
    masked = torch.where(eligible, z, torch.full_like(z, -math.inf))
    best = masked.max(dim=0).values
    return {"pairs": int(values.numel()), "above": int((values > threshold).sum()), "expected_flips": expected,
            "samples_above": int(((masked > threshold).any(dim=1)).sum()), **quantiles,
            "max_z_to_class": {k: float(v) for k, v in enumerate(best.tolist()) if math.isfinite(v)}}


def draw_flips(rates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One Bernoulli draw per (sample, class); among the classes that fire, the highest rate wins.

    Returns the new label of every sample, or -1 where nothing fired, shape ``(N,)``.
    """
    u = torch.rand(rates.shape, generator=generator)
    fired = rates > u
    masked = torch.where(fired, rates, torch.full_like(rates, -1.0))
    best = masked.argmax(dim=1)
    return torch.where(fired.any(dim=1), best, torch.full_like(best, -1))
