"""From a ladder of acquisitions to training material: aligned, rescaled levels, masks, noise levels and the
fused pseudo-ground truth (§2 and §3.1 of the plan), batched on any device.

Everything is expressed in the frame and units of level 0, the noisy input the denoiser sees at inference:
each level k is shifted by its offset relative to level 0 and scaled by ``s_k / s_0``, where ``s_k`` maps it
onto the top level on the peak mask. Level 0 itself is never modified.

Fusion assumes the levels carry independent noise (separate acquisitions). Cumulative sums of the same scans
share noise with the input, and a target that shares the input's noise pulls the network towards the
identity; for the same reason the input level is left out of its own target unless ``include_input``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from data_loader.nmr.preprocess import (
    MAD_TO_SIGMA,
    MaskPlan,
    PrefixPlan,
    anchor_positions,
    apply_local_shifts,
    baseline_mask,
    local_shifts,
    median_and_mad,
    pack_index,
    peak_mask_from,
    phase_ramp,
    quantile,
    scale_packed,
    shift_from_cross,
)
from utils.errors import DataError

Weighting = Literal["inverse_variance", "snr", "top_only"]


@dataclass
class Ladder:
    """A prepared batch. ``B`` samples, ``K+1`` levels, ``L`` points; all in level-0 frame and units.

    levels: ``(B, K+1, L)`` aligned and rescaled levels (row 0 is the raw input).
    target: ``(B, L)`` fused pseudo-ground truth.
    peaks, baseline: ``(B, L)`` bool masks, chosen on the top level.
    sigma: ``(B, K+1)`` robust noise standard deviation of each level (1.4826·MAD on the baseline).
    snr: ``(B, K+1)`` the plan's SNR, (P95 on peaks − median on baseline) / σ.
    weights: ``(B, K+1)`` fusion weights (sum 1).
    shifts: ``(B, K+1)`` points each level was shifted by; scales: ``(B, K+1)`` factors applied.
    """

    levels: torch.Tensor
    target: torch.Tensor
    peaks: torch.Tensor
    baseline: torch.Tensor
    sigma: torch.Tensor
    snr: torch.Tensor
    weights: torch.Tensor
    shifts: torch.Tensor
    scales: torch.Tensor

    def estimated_ratio(self) -> torch.Tensor:
        """T̂ per sample ``(B,)``: the median over adjacent levels of σ_k / σ_(k+1)."""
        return (self.sigma[:, :-1] / self.sigma[:, 1:].clamp_min(1e-30)).median(dim=1).values


def fusion_weights(sigma: torch.Tensor, snr: torch.Tensor, weighting: Weighting = "inverse_variance",
                   gamma: float = 1.0, max_share: float = 1.0, include_input: bool = False) -> torch.Tensor:
    """Fusion weights ``(B, K+1)`` summing to 1 per sample.

    ``inverse_variance``: w_k ∝ 1/σ_k², the minimum-variance combination of independent noisy copies of
    one signal. ``snr``: w_k ∝ SNR_k^γ, the plan's choice (SNR_k ∝ T^k gives less weight to the best levels
    than 1/σ² ∝ T^2k does, so the fused target is noisier). ``top_only``: level K alone.
    ``max_share`` caps any one weight at that share of the total; the excess goes to the other levels in
    proportion to their weights (repeated until no weight exceeds the cap), so one level with a
    misestimated σ cannot dominate the target. Level 0 gets weight 0 unless ``include_input``.
    """
    if not 0 < max_share <= 1:
        raise ValueError(f"max_share must be in (0, 1], got {max_share}")
    levels = sigma.shape[1]
    if weighting == "top_only":
        raw = torch.zeros_like(sigma)
        raw[:, -1] = 1
    elif weighting == "inverse_variance":
        # float64: a noise-free level (σ = 0, e.g. simulated) gets 1e60, which float32 would make inf and the
        # weights NaN; so it takes the weight (up to max_share) as the minimum-variance rule says
        raw = sigma.double().clamp_min(1e-30).pow(-2)
    elif weighting == "snr":
        raw = snr.clamp_min(1e-6).pow(gamma)
    else:
        raise ValueError(f"weighting must be inverse_variance, snr or top_only, got {weighting!r}")
    if not include_input and weighting != "top_only":
        raw = raw.clone()
        raw[:, 0] = 0
    weights = (raw / raw.sum(1, keepdim=True)).to(sigma.dtype)
    raw = raw.to(sigma.dtype).clamp_max(torch.finfo(sigma.dtype).max)   # only its sign is used below
    if weighting == "top_only" or max_share >= 1:
        return weights
    usable = int((raw[0] > 0).sum())
    if max_share * usable < 1:
        raise ValueError(f"max_share {max_share} is infeasible with {usable} fused levels: it must be at least "
                         f"1/{usable}")
    for _ in range(levels):
        capped = weights >= max_share
        excess = (weights - max_share).clamp_min(0).sum(1, keepdim=True)
        if not bool(excess.any()):   # nothing above the cap (the usual case after a round): the rest changes nothing
            break
        free = torch.where(capped, torch.zeros_like(weights), weights)
        weights = torch.where(capped, torch.full_like(weights, max_share),
                              weights + excess * free / free.sum(1, keepdim=True).clamp_min(1e-30))
    return weights


def plan_snr(spectra: torch.Tensor, peaks: torch.Tensor, baseline: torch.Tensor,
             sigma: torch.Tensor | None = None) -> torch.Tensor:
    """The plan's SNR per spectrum ``(B,)``: (P95 of the peak points − median of the baseline) / σ.

    σ defaults to the robust 1.4826·MAD on the baseline. Rows without peak points give 0.
    """
    base, mad = median_and_mad(spectra, baseline)
    return _snr(spectra, peaks, base, MAD_TO_SIGMA * mad if sigma is None else sigma)


def _snr(values: torch.Tensor, peaks: torch.Tensor, base: torch.Tensor, sigma: torch.Tensor,
         group: int | None = None) -> torch.Tensor:
    """(P95 of the ``peaks`` points of each row of ``values`` − ``base``) / ``sigma``; 0 for a row without peaks.
    ``values`` may be the full rows with their mask, or, with ``group``, packed rows with their ``valid`` flags
    (one row of flags for ``group`` consecutive rows of values: a :class:`PrefixPlan` selects them)."""
    if group is None:
        p95 = quantile(values, 0.95, peaks)
    else:
        plan = PrefixPlan.build(peaks, 0.95, group)
        p95 = plan(values) if plan is not None else quantile(values, 0.95, peaks.repeat_interleave(group, 0))
    return torch.nan_to_num((p95 - base) / sigma.clamp_min(1e-30), nan=0.0)


class LadderError(DataError):
    """A ladder of a batch that cannot be prepared. ``index`` is its position in the batch and ``problem`` what is
    wrong, worded to follow "this ladder" (``"has no peak above the noise ..."``), so that a caller that knows
    which file the ladder came from can name it: ``DataError(f"{file}: this ladder {err.problem}")``."""

    def __init__(self, index: int, problem: str):
        self.index, self.problem = index, problem
        super().__init__(f"ladder {index} of the batch {problem}")


def ladder_problems(spectra: torch.Tensor, peak_counts: torch.Tensor | None = None, alpha: float = 5.0,
                    need_peaks: bool = True, mad: torch.Tensor | None = None) -> list[tuple[int, str]]:
    """What makes ladders of ``spectra`` ``(B, K+1, L)`` unusable, as ``(index in the batch, problem)`` pairs
    (worded as :class:`LadderError`'s ``problem``), in batch order; empty when all can be prepared.

    A level that is constant (all zeros: an empty or failed acquisition) makes the rescaling divide by zero and
    its noise level 0. A top level with no peak above the noise (``peak_counts`` ``(B,)``: the top level's peak
    points, as :func:`prepare_ladder` finds them; computed here when not given) leaves nothing to rescale the
    levels on (``need_peaks``) and nothing to denoise towards. Costs one min/max pass (none with ``mad``
    ``(B·(K+1),)``, every level's MAD over all its points or any subset, such as the baseline: only a level
    with MAD 0 can be constant, and NaN, a subset without points, proves nothing; and, without ``peak_counts``, a
    peak mask of the top levels), so data loaders can check whole data sets when they load them.
    """
    if mad is not None and not bool(((mad == 0) | mad.isnan()).any()):
        low = constant = torch.zeros(spectra.shape[:2], dtype=torch.bool, device=spectra.device)
    else:
        low, high = torch.aminmax(spectra, dim=-1)                                        # (B, K+1)
        constant = low == high
    if need_peaks and peak_counts is None:
        top = spectra[:, -1].float()
        peak_counts = peak_mask_from(top, *median_and_mad(top), alpha=alpha, dilate=0).sum(1)
    bad = constant.any(1) | (peak_counts == 0) if need_peaks else constant.any(1)
    if not bool(bad.any()):   # the usual case: no per-ladder loop
        return []
    problems = []
    for b in range(len(spectra)):
        flat = torch.nonzero(constant[b]).flatten().tolist()
        if flat:
            k = flat[0]
            problems.append((b, f"has a constant level {k} (every point is {float(low[b, k]):.6g}): an empty or "
                                "failed acquisition; re-export that level or leave the ladder out"))
        elif need_peaks and int(peak_counts[b]) == 0:
            problems.append((b, f"has no peak above the noise: no point of its top level (level "
                                f"{spectra.shape[1] - 1}), Savitzky-Golay smoothed, rises {alpha:g} robust "
                                "standard deviations above its median, so there is nothing to rescale the levels "
                                "on or to denoise towards (a noise-only ladder); leave it out of the data, or "
                                "check that its levels are phased spectra with signal"))
    return problems


def prepare_ladder(spectra: torch.Tensor, weighting: Weighting = "inverse_variance", gamma: float = 1.0,
                   max_share: float = 0.9, include_input: bool = False, align: bool = True,
                   rescale: bool = True, alpha: float = 5.0, dilate: int = 5, erode: int = 3,
                   max_shift: int | None = 16, anchor_peaks: int = 0, anchor_window: int = 64) -> Ladder:
    """Align, rescale, mask and fuse a batch of ladders ``(B, K+1, L)`` (rising SNR); inputs are not modified.

    ``align``: shift every level onto the top one by FFT cross-correlation (sub-point, within ``max_shift``
    points), then express all in level 0's frame; with ``anchor_peaks`` > 0, refine it locally: shifts measured
    in ``anchor_window``-point windows around that many of the top level's strongest peaks, interpolated
    between them (for drifts that differ along the spectrum). ``rescale``: robust least squares on the peak mask
    (the plan's s_k), expressed in level 0's units. The peak mask is chosen on the top level (median +
    ``alpha``·MAD threshold on its Savitzky–Golay smoothing, dilated): the point-wise maximum over levels
    the plan suggests would admit the noise spikes of the noisy levels. The rescaling's noise level (which
    peak points stand clear of the noise) is each level's 1.4826·MAD on the baseline.

    Raises :class:`LadderError` (a ``DataError``) naming the first ladder of the batch that cannot be prepared
    (see :func:`ladder_problems`): one with a constant level, or, with ``rescale``, one whose top level has no
    peak. Without ``rescale`` a ladder without peaks is prepared (its SNRs are 0). A level without noise
    (σ = 0, a noise-free simulation) is prepared: inverse-variance fusion gives it the weight, up to ``max_share``.
    """
    batch, levels, length = spectra.shape
    if levels < 2:
        raise ValueError(f"a ladder needs at least 2 levels, got {levels}")
    x = spectra.float()
    if align:
        x, shifts = _align_global(x, max_shift)
        if anchor_peaks:
            x = _align_anchors(x, anchor_peaks, anchor_window)
            x[:, 0] = spectra[:, 0]
    else:
        shifts = torch.zeros(batch, levels, device=x.device)
    top = x[:, -1]
    flat = x.reshape(batch * levels, length)
    # the top level's median and MAD over all its points choose the peaks
    peaks = peak_mask_from(top, *median_and_mad(top), alpha=alpha, dilate=dilate)
    baseline = baseline_mask(peaks, erode=erode)
    # every level's median and MAD on the baseline, before rescaling: its noise says which peak points stand clear
    # of it when rescaling, and, multiplied by the scale (median(s·x) = s·median(x), MAD(s·x) = |s|·MAD(x)),
    # they are plan_snr's baseline level and robust_sigma's σ of the rescaled level, with no second pass
    plan = MaskPlan.build(baseline, 0.5, levels)
    base, mad = (plan.median_and_mad(flat) if plan is not None
                 else median_and_mad(flat, baseline.repeat_interleave(levels, 0)))
    # the peak points of every level of a ladder, packed once (B·(K+1), W): rescaling and the SNR's P95 use them
    index, counts = pack_index(peaks)
    problems = ladder_problems(spectra, counts, alpha, need_peaks=rescale, mad=mad)
    if problems:
        raise LadderError(*problems[0])
    valid = torch.arange(index.shape[1], device=x.device)[None] < counts[:, None]            # (B, W)
    packed = x.gather(2, index[:, None].expand(batch, levels, -1)).flatten(0, 1)
    if rescale:
        scales = _scales_onto_top(packed.view(batch, levels, -1), valid, (MAD_TO_SIGMA * mad).view(batch, levels))
        scales = scales / scales[:, :1]
        # in place when x is the aligned copy made here; without alignment it may be the caller's tensor
        x = x.mul_(scales[..., None]) if align else x * scales[..., None]
        packed = packed * scales.flatten()[:, None]
        base, mad = base * scales.flatten(), mad * scales.flatten().abs()
    else:
        scales = torch.ones(batch, levels, device=x.device)
    sigma = (MAD_TO_SIGMA * mad).view(batch, levels)
    snr = _snr(packed, valid, base, sigma.flatten(), group=levels).view(batch, levels)
    weights = fusion_weights(sigma, snr, weighting, gamma, max_share, include_input)
    target = torch.bmm(weights[:, None].to(x.dtype), x)[:, 0]   # Σ_k w_k·x_k in one pass, no (B, K+1, L) temporary
    return Ladder(levels=x, target=target, peaks=peaks, baseline=baseline, sigma=sigma, snr=snr,
                  weights=weights, shifts=shifts, scales=scales)


def _scales_onto_top(packed: torch.Tensor, valid: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The plan's s_k ``(B, K+1)`` float32 of every level of ``packed`` ``(B, K+1, W)`` (the peak points, ``valid``
    ``(B, W)``; ``noise`` ``(B, K+1)``) onto the top level.

    The top level's own scale is 1 without the robust fit: its initial median ratio is x/x = 1 and every Tukey
    step then returns Σw·x² / Σw·x² = 1 exactly (the reference's fit gives the same), so only the K lower levels
    are fitted, a quarter less work at K+1 = 4."""
    batch, levels, width = packed.shape
    below = packed[:, :-1].flatten(0, 1)
    top = packed[:, -1:].expand(batch, levels - 1, width).flatten(0, 1)
    scales = torch.ones(batch, levels, device=packed.device)
    scales[:, :-1] = scale_packed(below, top, valid, noise[:, :-1].flatten(), group=levels - 1).view(batch, -1)
    return scales


def _align_global(x: torch.Tensor, max_shift: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every level of ``x`` ``(B, K+1, L)`` moved by its offset to the top level minus level 0's, so level 0 stays
    as it is: the aligned ladders and the shifts ``(B, K+1)`` removed.

    One rfft of every level serves both the cross spectra (the top level's transform is one of them) and the
    phase-ramp shift; the top level's own offset is 0 exactly (its cross spectrum |R|² is real), so it is not
    estimated; level 0 is not transformed back."""
    batch, levels, length = x.shape
    transform = torch.fft.rfft(x, dim=-1)                                                # (B, K+1, F)
    cross = transform[:, :-1] * transform[:, -1:].conj()
    offsets = torch.zeros(batch, levels, dtype=x.dtype, device=x.device)
    offsets[:, :-1] = shift_from_cross(cross.flatten(0, 1), length, max_shift).view(batch, levels - 1)
    shifts = offsets - offsets[:, :1]
    # the product with the phase ramps reads levels 1..K where they are, and writes the contiguous input the
    # inverse transform wants (faster than a copy of them first, or an in-place product on the strided view)
    ramp = phase_ramp(-shifts[:, 1:].flatten(), length, transform.dtype).view(batch, levels - 1, -1)
    aligned = torch.empty_like(x)
    aligned[:, 0] = x[:, 0]
    aligned[:, 1:] = torch.fft.irfft(transform[:, 1:] * ramp, n=length)
    return aligned, shifts


def _align_anchors(x: torch.Tensor, anchors: int, window: int) -> torch.Tensor:
    """Remove what is left of each level's offset to the top level around its strongest peaks, relative to
    level 0 (which stays as it is)."""
    batch, levels, length = x.shape
    window = min(window, length)
    centres = anchor_positions(x[:, -1], anchors, window).repeat_interleave(levels, 0)
    flat = x.reshape(batch * levels, length)
    shifts = local_shifts(flat, x[:, -1].repeat_interleave(levels, 0), centres, window).view(batch, levels, -1)
    relative = (shifts - shifts[:, :1]).flatten(0, 1)
    return apply_local_shifts(flat, centres, -relative).view(batch, levels, length)


__all__ = ["Ladder", "LadderError", "Weighting", "fusion_weights", "ladder_problems", "plan_snr", "prepare_ladder"]
