"""Losses for multi-SNR NMR denoising (§5 of the plan). Spectra are ``(B, L)``; ladders ``(B, n, L)``.

Every term is zero for a perfect prediction: the reconstruction terms when the output equals the target,
the curvature term when the output's baseline is flat, the consistency term when every level is denoised to
the same spectrum, and the residual-ratio term when the residuals (input − output) on the baseline are the
levels' noise, whose norms fall by T per level.

Direction of the ratio: SNR rises with the level index, so level i < j is the noisier one and has the
larger residual, ‖r_i‖/‖r_j‖ ≈ T^(j−i) for norms (T^(2(j−i)) for energies). The plan writes T^−(j−i),
which would push the network to leave more noise in the cleaner level; this module implements the
physically consistent ratio.
"""
from __future__ import annotations

import itertools

import torch

from utils.registry import LOSSES


def peak_weighted_l1(pred: torch.Tensor, target: torch.Tensor, peaks: torch.Tensor,
                     peak_weight: float = 6.0) -> torch.Tensor:
    """Mean of W·|pred − target| with W = ``peak_weight`` on peak points and 1 elsewhere."""
    weight = 1 + (peak_weight - 1) * peaks.to(pred.dtype)
    return (weight * (pred - target).abs()).mean()


def derivative_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |∇pred − ∇target| with ∇y_i = y_(i+1) − y_i: keeps peak shapes (slopes), not just values."""
    return (pred.diff(dim=-1) - target.diff(dim=-1)).abs().mean()


def window_integral_l1(pred: torch.Tensor, target: torch.Tensor, peaks: torch.Tensor, window: int = 9,
                       peak_weight: float = 6.0) -> torch.Tensor:
    """Mean of W·|mean_w(pred) − mean_w(target)| over every run of ``window`` consecutive points (a moving box, the
    local integral divided by ``window``), W = ``peak_weight`` where the box's centre is a peak point, else 1.

    NMR quantification reads window integrals. A pointwise loss lets a model trade an uncertain weak line for a
    flat baseline (the conditional median of a line that may be noise is 0) or fill a narrow line's alternating
    truncation wiggles and negative lobes with a smooth positive shoulder; both change the local integral, and
    this term charges them. ``window`` must be >= 2 and at most the length.
    """
    diff = pred - target
    zero = diff.new_zeros(diff.shape[:-1] + (1,))
    total = torch.cat([zero, diff.cumsum(-1)], dim=-1)
    box = (total[..., window:] - total[..., :-window]) / window                    # (..., L - window + 1)
    centre = peaks[..., window // 2: window // 2 + box.shape[-1]].to(pred.dtype)
    return ((1 + (peak_weight - 1) * centre) * box.abs()).mean()


def baseline_curvature_l1(pred: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Mean |y_(i+1) − 2y_i + y_(i−1)| over baseline points (whose neighbours are also baseline)."""
    curvature = pred[..., 2:] - 2 * pred[..., 1:-1] + pred[..., :-2]
    inside = (baseline[..., 2:] & baseline[..., 1:-1] & baseline[..., :-2]).to(pred.dtype)
    return (curvature.abs() * inside).sum() / inside.sum().clamp_min(1)


def consistency_l1(outputs: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over level pairs i < j of the mean |y_i − y_j| (over ``region`` points when given).

    ``outputs`` ``(B, n, L)``: the denoised levels of each sample, in common units; fewer than 2 levels gives 0.
    """
    n = outputs.shape[1]
    if n < 2:
        return outputs.new_zeros(())
    i, j = zip(*itertools.combinations(range(n), 2))
    diff = (outputs[:, list(i)] - outputs[:, list(j)]).abs()                 # (B, pairs, L)
    if region is None:
        return diff.mean()
    weight = region[:, None].to(diff.dtype)
    return (diff * weight).sum() / (weight.sum() * len(i)).clamp_min(1)


def residual_ratio_loss(inputs: torch.Tensor, outputs: torch.Tensor, levels: list[int] | torch.Tensor,
                        baseline: torch.Tensor, ratio: float, eps: float = 1e-8) -> torch.Tensor:
    """Mean over level pairs i < j of |log(‖r_i‖/‖r_j‖) − (j − i)·log T| with r_k = (x_k − y_k) on the baseline.

    ``inputs``, ``outputs`` ``(B, n, L)`` hold levels ``levels`` (n increasing level indices, in common units);
    ``baseline`` ``(B, L)`` bool. A perfect denoiser leaves each level's noise as its residual, and noise σ_k ∝
    T^−k gives exactly ‖r_i‖/‖r_j‖ = T^(j−i): zero loss. Fewer than 2 levels gives 0.
    """
    levels = torch.as_tensor(levels, dtype=torch.float64)
    n = len(levels)
    if n < 2:
        return outputs.new_zeros(())
    norms = ((inputs - outputs) * baseline[:, None].to(outputs.dtype)).pow(2).sum(-1).add(eps).sqrt()  # (B, n)
    i, j = (list(t) for t in zip(*itertools.combinations(range(n), 2)))
    expected = ((levels[j] - levels[i]) * torch.log(torch.tensor(float(ratio), dtype=torch.float64)))
    return (norms[:, i].log() - norms[:, j].log() - expected.to(norms)).abs().mean()


TERMS = ("rec", "deriv", "curv", "cons", "ratio", "integ")


@LOSSES.register()
class NMRDenoiseLoss:
    """The plan's total loss: rec + λ1·deriv + λ2·curv + λ3·cons + λ4·ratio (§5.4), plus an optional λ5·integ.

    rec: peak-weighted L1 of the level-0 output to the pseudo-ground truth; deriv: first-derivative L1
    to it; curv: second-difference L1 of the level-0 output on the baseline; cons: L1 between the denoised
    levels of one sample (on every point, or only peaks with ``consistency_region: "peaks"``); ratio: the
    residual-ratio constraint with T = the trainer's ``snr_ratio``; integ (not in the plan, off by default): the
    peak-weighted L1 of local integrals over ``integral_window`` points (:func:`window_integral_l1`). The trainer
    may change weights and ``peak_weight`` per phase (it passes them to :meth:`__call__`).

    Args:
        weights: λ per term (keys rec, deriv, curv, cons, ratio, integ); missing keys take the plan's initial
            values 1, 0.5, 0.1, 0.5, 0.2 (integ: 0). A weight of 0 skips the term.
        peak_weight: W on the peak mask in the rec term (1 on the rest; 1 disables peak weighting).
        consistency_region: ``"all"`` (the plan) or ``"peaks"``.
        integral_window: points per local integral of the integ term (default 9: a line of 2 points FWHM
            integrated over ±2 FWHM, the usual integration window and that of ``model.nmr_metrics``).
    """

    DEFAULTS = {"rec": 1.0, "deriv": 0.5, "curv": 0.1, "cons": 0.5, "ratio": 0.2, "integ": 0.0}

    def __init__(self, weights: dict[str, float] | None = None, peak_weight: float = 6.0,
                 consistency_region: str = "all", integral_window: int = 9):
        self.weights = self.merged_weights(weights)
        if isinstance(integral_window, bool) or not isinstance(integral_window, int) or integral_window < 2:
            raise ValueError(f"integral_window must be an integer >= 2 (points per local integral), "
                             f"got {integral_window!r}")
        self.integral_window = integral_window
        if peak_weight < 1:
            raise ValueError(f"peak_weight must be >= 1 (1: no peak weighting), got {peak_weight}")
        if consistency_region not in ("all", "peaks"):
            raise ValueError(f'consistency_region must be "all" or "peaks", got {consistency_region!r}')
        self.peak_weight, self.consistency_region = peak_weight, consistency_region

    @classmethod
    def merged_weights(cls, weights: dict[str, float] | None, base: dict[str, float] | None = None):
        """``base`` (default: the plan's) updated with ``weights``; unknown terms and negative weights are errors."""
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown loss term(s) {unknown}; the terms are {list(TERMS)}")
        negative = [k for k, v in weights.items() if not v >= 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {({k: weights[k] for k in negative})}")
        return {**(base or cls.DEFAULTS), **weights}

    def __call__(self, output: torch.Tensor, target: torch.Tensor, peaks: torch.Tensor, baseline: torch.Tensor,
                 inputs: torch.Tensor | None = None, outputs: torch.Tensor | None = None,
                 levels: list[int] | None = None, snr_ratio: float = 2.0, weights: dict[str, float] | None = None,
                 peak_weight: float | None = None) -> dict[str, torch.Tensor]:
        """The weighted terms and their sum under ``"loss"``.

        ``output``/``target`` ``(B, L)``: denoised level 0 and its pseudo-ground truth; ``inputs``/``outputs``
        ``(B, n, L)``: the levels ``levels`` used by cons and ratio, before and after denoising.
        """
        w = self.weights if weights is None else weights
        peak_weight = self.peak_weight if peak_weight is None else peak_weight
        terms: dict[str, torch.Tensor] = {}
        if w["rec"]:
            terms["rec"] = peak_weighted_l1(output, target, peaks, peak_weight)
        if w["deriv"]:
            terms["deriv"] = derivative_l1(output, target)
        if w["curv"]:
            terms["curv"] = baseline_curvature_l1(output, baseline)
        if w["integ"]:
            window = min(self.integral_window, output.shape[-1])
            terms["integ"] = window_integral_l1(output, target, peaks, window, peak_weight)
        if outputs is not None and w["cons"]:
            region = peaks if self.consistency_region == "peaks" else None
            terms["cons"] = consistency_l1(outputs, region)
        if outputs is not None and inputs is not None and w["ratio"]:
            terms["ratio"] = residual_ratio_loss(inputs, outputs, levels, baseline, snr_ratio)
        total = sum(w[k] * v for k, v in terms.items())
        return {"loss": total if terms else output.sum() * 0, **terms}
