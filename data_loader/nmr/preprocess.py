"""Batched preprocessing of real-valued 1D spectra ``(B, L)`` (torch, any device): masks, noise, alignment,
rescaling. Every function takes and returns tensors and leaves its inputs unmodified.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy.signal import savgol_coeffs

MAD_TO_SIGMA = 1.4826  # sigma = 1.4826 * MAD for Gaussian noise


def savgol_smooth(spectra: torch.Tensor, window: int = 11, order: int = 3) -> torch.Tensor:
    """Savitzky-Golay smoothing along the last axis (reflect padding), ``(B, L) -> (B, L)``."""
    if window % 2 == 0 or window <= order:
        raise ValueError(f"window must be odd and larger than order, got window {window}, order {order}")
    kernel = torch.as_tensor(savgol_coeffs(window, order), dtype=spectra.dtype, device=spectra.device)
    padded = F.pad(spectra[:, None], (window // 2, window // 2), mode="reflect")
    return F.conv1d(padded, kernel.flip(0)[None, None])[:, 0]


def pack_masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The ``mask`` points of each row of ``values`` ``(N, L)``, packed to the left, NaN after: ``(N, W)`` with
    W the largest count of a row. Statistics over the masked points then run on W columns instead of L, and the
    NaN padding is what ``nanmedian``/``nanquantile`` skip."""
    counts = mask.sum(1)
    width = int(counts.max()) if counts.numel() else 0
    rows, cols = mask.nonzero(as_tuple=True)
    slot = torch.arange(rows.numel(), device=mask.device) - (counts.cumsum(0) - counts)[rows]
    index = torch.zeros(mask.shape[0], width, dtype=torch.long, device=mask.device)
    index[rows, slot] = cols
    valid = torch.arange(width, device=mask.device)[None] < counts[:, None]
    return torch.where(valid, values.gather(1, index), torch.full((), float("nan"), dtype=values.dtype,
                                                                   device=values.device))


def median_and_mad(values: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Median and median absolute deviation per row (over ``mask`` where given)."""
    if mask is None:
        median = values.median(dim=1, keepdim=True).values
        return median[:, 0], (values - median).abs().median(dim=1).values
    return _nan_mad(pack_masked(values, mask))


def _nan_mad(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Median and MAD per row of a NaN-padded ``(N, W)`` tensor."""
    median = packed.nanmedian(dim=1, keepdim=True).values
    return median[:, 0], (packed - median).abs().nanmedian(dim=1).values


def peak_mask(spectra: torch.Tensor, alpha: float = 5.0, window: int = 11, order: int = 3,
              dilate: int = 5) -> torch.Tensor:
    """Points belonging to peaks, ``(B, L)`` bool: the Savitzky-Golay-smoothed spectrum exceeds its median by
    more than ``alpha`` times the MAD-based noise level of the raw spectrum, dilated by ``dilate`` points."""
    smooth = savgol_smooth(spectra, window, order)
    median, mad = median_and_mad(spectra)
    noise = MAD_TO_SIGMA * mad
    # the smoothed spectrum has less noise: compare against the noise it keeps, plus the raw median
    gain = float(torch.as_tensor(savgol_coeffs(window, order)).pow(2).sum().sqrt())
    mask = (smooth - median[:, None]) > alpha * noise[:, None] * gain
    if dilate:
        mask = F.max_pool1d(mask[:, None].float(), 2 * dilate + 1, stride=1, padding=dilate)[:, 0] > 0
    return mask


def baseline_mask(peaks: torch.Tensor, erode: int = 5) -> torch.Tensor:
    """Points safely away from peaks: the complement of ``peaks`` eroded by ``erode`` points."""
    free = (~peaks).float()[:, None]
    return (-F.max_pool1d(-free, 2 * erode + 1, stride=1, padding=erode))[:, 0] > 0


def robust_sigma(spectra: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Noise standard deviation per spectrum, ``1.4826 * MAD`` over ``mask`` (default: baseline points)."""
    if mask is None:
        mask = baseline_mask(peak_mask(spectra))
    return MAD_TO_SIGMA * median_and_mad(spectra, mask)[1]


def _working_dtype(spectra: torch.Tensor) -> torch.dtype:
    """float64 for float64 input; float32 otherwise (phases of at most a few hundred radians keep ~1e-5
    precision in float32, far below the 0.01-point level that matters, at half the cost)."""
    return torch.float64 if spectra.dtype == torch.float64 else torch.float32


def fourier_shift(spectra: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each spectrum by ``shift`` points (fractional allowed; positive moves content to higher index),
    by a phase ramp in the Fourier domain (circular). ``spectra (B, L)``, ``shift (B,)``."""
    length, work = spectra.shape[-1], _working_dtype(spectra)
    freq = torch.fft.rfftfreq(length, device=spectra.device, dtype=work)
    phase = -2 * math.pi * freq[None] * shift.to(work)[:, None]
    ramp = torch.complex(torch.cos(phase), torch.sin(phase))   # several times faster than exp of a complex
    return torch.fft.irfft(torch.fft.rfft(spectra.to(work)) * ramp, n=length).to(spectra.dtype)


def estimate_shift(spectra: torch.Tensor, reference: torch.Tensor, search: int | None = None,
                   iterations: int = 3) -> torch.Tensor:
    """Sub-point shift ``(B,)`` that aligns each spectrum to ``reference`` (``(L,)`` or ``(B, L)``): shifting the
    spectrum by minus the estimate aligns it.

    Integer part from the FFT cross-correlation maximum (within ``search`` points), then Newton steps on the
    continuous (Fourier-interpolated) cross-correlation c(τ) = Σ_f X(f)·conj(R(f))·exp(2πifτ). Its maximum is
    also the least-squares optimum of a circular Fourier shift, since shifting keeps the norm; derivatives
    come in closed form, so each step costs one pass over the spectrum; from the integer lag, 2–3 steps converge.
    """
    work = _working_dtype(spectra)
    reference = reference.expand_as(spectra).to(work)
    x = spectra.to(work)
    length = x.shape[-1]
    cross = torch.fft.rfft(x) * torch.fft.rfft(reference).conj()                      # (B, F)
    corr = torch.fft.irfft(cross, n=length)
    lags = torch.arange(length, device=x.device)
    lags = torch.where(lags > length // 2, lags - length, lags)
    if search is not None:
        corr = torch.where(lags.abs()[None] <= search, corr, torch.full_like(corr, -math.inf))
    tau = lags[corr.argmax(dim=1)].to(work)
    omega = 2 * math.pi * torch.fft.rfftfreq(length, device=x.device, dtype=work)
    # rfft keeps half the spectrum: interior frequencies stand for two conjugate terms
    count = torch.full_like(omega, 2.0)
    count[0] = 1
    if length % 2 == 0:
        count[-1] = 1
    # with z = cross·count·exp(iωτ): c'(τ) = -Σ ω·Im z and c''(τ) = -Σ ω²·Re z; written out in real arithmetic
    # (cos and sin of ωτ) because a complex exp costs several times as much
    weighted = cross * count
    re, im = weighted.real, weighted.imag
    for _ in range(iterations):
        angle = omega[None] * tau[:, None]
        cos, sin = torch.cos(angle), torch.sin(angle)
        slope = -((re * sin + im * cos) * omega).sum(1)
        curvature = -((re * cos - im * sin) * omega ** 2).sum(1)
        step = torch.where(curvature < 0, -slope / curvature, torch.zeros_like(slope))
        tau = tau + step.clamp(-0.5, 0.5)
    return tau.to(spectra.dtype)


def align(spectra: torch.Tensor, reference: torch.Tensor,
          search: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectra shifted onto ``reference`` and the shifts that were removed, ``((B, L), (B,))``."""
    shift = estimate_shift(spectra, reference, search)
    return fourier_shift(spectra, -shift), shift


def anchor_positions(reference: torch.Tensor, anchors: int, window: int) -> torch.Tensor:
    """Centres ``(B, anchors)`` of the strongest peaks of each reference ``(B, L)`` (Savitzky–Golay smoothed),
    at least ``window`` points apart, sorted by position."""
    smooth = savgol_smooth(reference)
    index = torch.arange(reference.shape[-1], device=reference.device)
    found = []
    for _ in range(anchors):
        centre = smooth.argmax(dim=1)
        found.append(centre)
        near = (index[None] - centre[:, None]).abs() < window
        smooth = torch.where(near, torch.full_like(smooth, -math.inf), smooth)
    return torch.stack(found, dim=1).sort(dim=1).values


def _windows(spectra: torch.Tensor, centres: torch.Tensor, window: int) -> torch.Tensor:
    """Hann-tapered segments ``(B, A, window)`` of ``spectra (B, L)`` around ``centres (B, A)`` (kept inside)."""
    length = spectra.shape[-1]
    start = (centres - window // 2).clamp(0, max(length - window, 0))
    index = start[..., None] + torch.arange(window, device=spectra.device)
    taper = torch.hann_window(window, periodic=False, dtype=spectra.dtype, device=spectra.device)
    return spectra.gather(1, index.flatten(1)).view(*centres.shape, window) * taper


def local_shifts(spectra: torch.Tensor, reference: torch.Tensor, centres: torch.Tensor, window: int = 64,
                 search: int = 4) -> torch.Tensor:
    """Shift ``(B, A)`` of each spectrum relative to ``reference`` within the windows around ``centres``."""
    batch, count = centres.shape
    segments = _windows(spectra, centres, window).reshape(batch * count, window)
    targets = _windows(reference.expand_as(spectra), centres, window).reshape(batch * count, window)
    return estimate_shift(segments, targets, search=search).view(batch, count)


def apply_local_shifts(spectra: torch.Tensor, centres: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move each spectrum by a shift that varies smoothly along it: ``shifts (B, A)`` at ``centres (B, A)``
    (sorted), linearly interpolated between anchors and constant beyond them.

    Built as a partition of unity of exact Fourier shifts (hat weights between neighbouring anchors), so
    the noise is not smoothed the way interpolating the samples would smooth it.
    """
    length = spectra.shape[-1]
    grid = torch.arange(length, device=spectra.device, dtype=torch.float64)[None].expand(len(spectra), -1)
    pos = centres.double()
    weights = []
    for a in range(pos.shape[1]):
        left = pos[:, a - 1:a] if a > 0 else None
        right = pos[:, a + 1:a + 2] if a + 1 < pos.shape[1] else None
        here = pos[:, a:a + 1]
        rise = torch.ones_like(grid) if left is None else ((grid - left) / (here - left).clamp_min(1)).clamp(0, 1)
        fall = torch.ones_like(grid) if right is None else ((right - grid) / (right - here).clamp_min(1)).clamp(0, 1)
        weights.append(torch.where(grid <= here, rise, fall))
    weight = torch.stack(weights, dim=1)                                                   # (B, A, L)
    weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-12)
    moved = fourier_shift(spectra.repeat_interleave(pos.shape[1], 0), shifts.flatten()).view(*weight.shape)
    return (weight.to(spectra.dtype) * moved).sum(1)


def robust_scale(spectra: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, iterations: int = 4,
                 tukey: float = 4.685) -> torch.Tensor:
    """Scale ``s`` per spectrum ``(B,)`` with ``s * spectrum ≈ reference`` on ``mask`` points.

    Starts from the median of the point ratios ``reference / spectrum`` where the spectrum stands clear of
    its noise (robust to a few bad points), then iteratively reweighted least squares with Tukey's bisquare
    weights (residuals beyond ``tukey`` robust sigmas get weight 0), so an artefact in one level cannot pull
    the scale (4 reweighting steps: the estimate has settled by then). The regression is
    ``spectrum ≈ reference / s``: the noisy spectrum is the response, not the
    regressor, because noise in a regressor biases a least-squares slope towards zero (8% at peak SNR 12).
    The reference should be the cleaner of the two (the top or fused level), and ``mask`` should be chosen
    on it: a mask chosen on the noisy spectrum picks the points where its noise is positive and biases the
    scale (by 2% at peak SNR 12).
    """
    noise = MAD_TO_SIGMA * median_and_mad(spectra)[1].double()
    # only the mask points take part: pack them once (N, W) and iterate on those
    x = pack_masked(spectra, mask).double()
    y = pack_masked(reference.expand_as(spectra), mask).double()
    on_mask = ~x.isnan()
    x, y = x.nan_to_num(), y.nan_to_num()
    strong = on_mask & (x.abs() > 3 * noise[:, None])
    strong = torch.where(strong.any(1, keepdim=True), strong, on_mask)
    nan = torch.full((), float("nan"), dtype=x.dtype, device=x.device)
    ratio = torch.where(strong, y / torch.where(x == 0, torch.ones_like(x), x), nan)
    inverse = 1 / ratio.nanmedian(dim=1).values
    for _ in range(iterations):
        residual = x - inverse[:, None] * y
        sigma = MAD_TO_SIGMA * _nan_mad(torch.where(on_mask, residual, nan))[1].clamp_min(1e-30)
        u = residual / (tukey * sigma[:, None])
        w = on_mask * torch.where(u.abs() < 1, (1 - u ** 2) ** 2, torch.zeros_like(u))
        inverse = (w * x * y).sum(1) / (w * y * y).sum(1).clamp_min(1e-30)
    return (1 / inverse).to(spectra.dtype)
