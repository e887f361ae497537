"""Evaluation of 1D NMR denoising against a reference spectrum, plus two classical baselines (numpy/scipy only).

All spectra are real-valued frequency-domain 1-D float arrays of length ``L`` on one common amplitude scale (the
reference's units). The reference is the noise-free spectrum in simulations, otherwise a pseudo-ground truth.

Definitions (the documented contract of :func:`spectrum_metrics`):

Masks and threshold (derived from the REFERENCE, so every method is scored on the same points):
    * ``sigma_input`` = 1.4826 * MAD of the noisy input over the baseline mask (robust noise of the input).
    * threshold ``h = max(min_rel_height * max(reference), threshold_sigma * sigma_input)``.
    * peak mask = points where ``reference > h``, dilated by ``ceil(2 * median FWHM)`` points each side, the median
      FWHM (points) taken over the reference peaks picked at ``h``.
    * baseline mask = the complement, eroded by 5 points (the array ends are not eroded: they are no peak).
    * ``h`` needs ``sigma_input``, which needs the baseline, which needs ``h``: they are iterated to a fixed point
      (at most 10 rounds), starting from the MAD of the whole input. ``peak_mask``/``baseline_mask`` may be given
      instead; ``sigma_input`` is then taken on the given baseline.

Noise and SNR:
    * noise ``sigma(y)`` = RMS of ``y - median(y)`` over the baseline mask (a standard deviation about the median).
      It is ``None`` when the baseline is empty or ``sigma <= 1e-12 * max|y|``: a perfectly flat baseline has an
      undefined SNR, so no value (not ``inf``) is reported.
    * ``snr_in``, ``snr_out``: max/sigma convention (VnmrJ ``dsn``, Xiamen papers), ``max(y) / sigma(y)``, for the
      noisy input and the output; ``snr_gain = snr_out / snr_in``. This is twice Bruker's ``sino``.
    * ``snr_p95_in``, ``snr_p95_out``, ``snr_p95_gain``: the project plan's definition
      ``(P95(y on peak mask) - median(y on baseline)) / sigma(y)``.
    * Both SNRs are inflated without limit by a method that flattens the baseline: read them together with the
      reference-based errors below, never alone.

Peaks (same absolute threshold ``h`` for reference and output, so methods are comparable):
    * picked by :func:`pick_peaks` (``find_peaks`` with ``height = prominence = h``, ``distance = 3``); sub-point
      position from a parabola through the top 3 points. Positions are in ppm when ``ppm`` is given (tolerance
      ``tolerance_ppm``), else in points (tolerance ``tolerance_points``).
    * one-to-one Hungarian matching within the tolerance (:func:`match_peaks`).
    * ``peak_precision``, ``peak_recall``, ``peak_f1`` in 0..1, 0 when there is no true positive; ``None`` (all
      peak and integral keys) when the reference has no peak.
    * ``peak_shift``: mean |position difference| of matched peaks, in ppm when ``ppm`` is given, else in points.
    * per matched pair: ``height_rel_err`` = mean ``|y_out[p_out] / ref[p_ref] - 1|`` (raw sample values, i.e.
      heights above a local baseline of 0), ``height_ratio`` = mean ``y_out[p_out] / ref[p_ref]`` (signed bias);
      ``fwhm_rel_err`` = mean ``|FWHM_out / FWHM_ref - 1|`` and ``fwhm_ratio`` = mean ``FWHM_out / FWHM_ref``, with
      ``scipy.signal.peak_widths(rel_height=0.5)`` at each peak (width at half PROMINENCE: biased for overlapped
      peaks, where a line-shape fit would be needed).
    * integrals over windows centred on EVERY reference peak (matched or not, so erasing a peak is penalised),
      ``position ± windows_fwhm * FWHM_ref``, overlapping windows merged into one segment, the same segments for
      every method: ``integral_rel_err`` = mean over segments of ``|sum_W y_out - sum_W ref| / |sum_W ref|``,
      ``integral_ratio`` = mean ``sum_W y_out / sum_W ref``. A Lorentzian has only 84% of its area within
      ±2 FWHM, so a method that broadens lines (em) also loses window integral at the default ``windows_fwhm``.
    * ``n_peaks_ref``, ``n_peaks_out``, ``n_matched``: the counts, as floats.

Reference-based errors (relative to ``max|ref|``):
    * ``l1`` = mean ``|y - ref|`` / max|ref|, ``l2`` = sqrt(mean ``(y - ref)**2``) / max|ref| over the whole spectrum;
      ``l2_peak`` and ``l2_baseline``: the same ``l2`` restricted to the peak and baseline masks.

Every value is a float or ``None`` (undefined), never NaN.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# SciPy's ndimage, optimize and signal are imported in the functions that use them: together they take seconds to
# import, and only the NMR evaluation calls them

MAD_TO_SIGMA = 1.4826  # sigma = 1.4826 * MAD for Gaussian noise
BASELINE_ERODE = 5  # points kept clear between the peak mask and the baseline
FLAT_RELATIVE = 1e-12  # sigma below this fraction of max|y| counts as a perfectly flat baseline

METRIC_KEYS = (
    "snr_in", "snr_out", "snr_gain", "snr_p95_in", "snr_p95_out", "snr_p95_gain",
    "peak_precision", "peak_recall", "peak_f1", "peak_shift",
    "height_rel_err", "height_ratio", "fwhm_rel_err", "fwhm_ratio", "integral_rel_err", "integral_ratio",
    "l1", "l2", "l2_peak", "l2_baseline", "n_peaks_ref", "n_peaks_out", "n_matched",
)
_PEAK_KEYS = ("peak_precision", "peak_recall", "peak_f1", "peak_shift", "height_rel_err", "height_ratio",
              "fwhm_rel_err", "fwhm_ratio")


# ----------------------------------------------------------------------------------------------- classical baselines
def savgol_denoise(x: np.ndarray, window: int = 11, order: int = 3) -> np.ndarray:
    """Savitzky-Golay smoothing along the last axis, ``(..., L) -> (..., L)`` (``scipy.signal.savgol_filter``)."""
    from scipy.signal import savgol_filter

    return savgol_filter(np.asarray(x, dtype=float), window, order, axis=-1)


def exponential_apodisation(x: np.ndarray, lb_points: float) -> np.ndarray:
    """Matched exponential filter (em) applied to REAL spectra, ``(..., L) -> (..., L)``.

    A Lorentzian of FWHM ``w`` points comes out as a Lorentzian of FWHM ``w + lb_points`` at the same position with
    the same area (sum over points). The textbook route is: complex spectrum from the Hilbert transform, inverse FFT
    to the FID, multiply by ``exp(-pi * lb * t)`` for ``t >= 0``, FFT back, real part. Taking the real part at the
    end makes that identical to multiplying the inverse FFT of the REAL spectrum (which holds the FID at positive
    times and its mirror conjugate at negative times) by the two-sided window ``exp(-pi * lb * |t|)``; that is done
    here, which removes every FID-ordering and sign convention, so it works whichever way ppm runs. With sample
    index ``n`` (signed, ``-L/2..L/2``) the time is ``t = n / L`` in units of 1/point, so the window is
    ``exp(-pi * lb_points * |n| / L)``, whose Fourier transform is a unit-area Lorentzian of FWHM ``lb_points``.
    Exact when the spectrum was zero-filled at least 2x (the FID and its mirror do not overlap), otherwise the late
    FID points are damped as if they were early ones.
    """
    x = np.asarray(x, dtype=float)
    length = x.shape[-1]
    n = np.fft.fftfreq(length) * length  # signed sample index 0, 1, ..., -1
    window = np.exp(-np.pi * float(lb_points) * np.abs(n) / length)
    return np.fft.fft(np.fft.ifft(x, axis=-1) * window, axis=-1).real


def matched_linewidth(reference: np.ndarray, peaks: np.ndarray) -> float:
    """Median FWHM (points) of the reference at ``peaks`` (``peak_widths``, rel_height 0.5); 0.0 without peaks."""
    from scipy.signal import peak_widths

    peaks = np.asarray(peaks, dtype=int)
    if peaks.size == 0:
        return 0.0
    return float(np.median(peak_widths(np.asarray(reference, dtype=float), peaks, rel_height=0.5)[0]))


# ------------------------------------------------------------------------------------------------- peaks, matching
def pick_peaks(y, threshold: float, min_distance: int = 3) -> np.ndarray:
    """Indices (int, ascending) of peaks with height and prominence above ``threshold``, ``min_distance`` apart."""
    from scipy.signal import find_peaks

    peaks, _ = find_peaks(np.asarray(y, dtype=float), height=threshold, prominence=threshold,
                          distance=max(int(min_distance), 1))
    return peaks


def refine_positions(y: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Sub-point positions (points, float) of ``peaks``: vertex of the parabola through the top 3 points.

    The offset is clipped to ±0.5 point; peaks on the array ends, or without a concave top, keep their index.
    """
    y = np.asarray(y, dtype=float)
    pos = np.asarray(peaks, dtype=float).copy()
    inner = (peaks > 0) & (peaks < y.size - 1)
    i = np.asarray(peaks)[inner]
    left, mid, right = y[i - 1], y[i], y[i + 1]
    curvature = left - 2 * mid + right
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(curvature < 0, 0.5 * (left - right) / curvature, 0.0)
    pos[inner] += np.clip(offset, -0.5, 0.5)
    return pos


def match_peaks(pred_pos, ref_pos, tolerance) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to reference positions within ``tolerance`` (Hungarian).

    Returns ``(pred_idx, ref_idx)``, int arrays of equal length indexing ``pred_pos`` and ``ref_pos``, ordered by
    ``pred_idx``. The number of matches within tolerance is maximised first, then their total distance minimised:
    pairs beyond the tolerance cost more than any set of valid pairs, so they never displace a valid one.
    """
    from scipy.optimize import linear_sum_assignment

    pred = np.asarray(pred_pos, dtype=float).ravel()
    ref = np.asarray(ref_pos, dtype=float).ravel()
    empty = np.zeros(0, dtype=int)
    if pred.size == 0 or ref.size == 0:
        return empty, empty.copy()
    cost = np.abs(np.subtract.outer(pred, ref))
    valid = cost <= tolerance
    forbidden = (min(pred.size, ref.size) + 1) * max(float(tolerance), 0.0) + 1.0
    rows, cols = linear_sum_assignment(np.where(valid, cost, forbidden))
    keep = valid[rows, cols]
    return rows[keep].astype(int), cols[keep].astype(int)


# -------------------------------------------------------------------------------------------------- masks and noise
def _mad_sigma(y: np.ndarray, mask: np.ndarray) -> float | None:
    """1.4826 * MAD of ``y`` over ``mask``; None when the mask is empty."""
    values = y[mask]
    if values.size == 0:
        return None
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def _threshold(reference: np.ndarray, sigma_input: float | None, threshold_sigma: float,
               min_rel_height: float) -> float:
    floor = min_rel_height * float(np.max(reference))
    return floor if sigma_input is None else max(floor, threshold_sigma * sigma_input)


def _masks_at(reference: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Peak mask (reference above threshold, dilated by 2 median FWHM) and baseline mask (complement, eroded)."""
    from scipy.ndimage import binary_dilation, binary_erosion

    half = int(np.ceil(2.0 * matched_linewidth(reference, pick_peaks(reference, threshold))))
    peak = reference > threshold
    if half > 0:
        peak = binary_dilation(peak, structure=np.ones(2 * half + 1, dtype=bool))
    # border_value=1: the array ends are not peaks, so they are not eroded away
    baseline = binary_erosion(~peak, structure=np.ones(2 * BASELINE_ERODE + 1, dtype=bool), border_value=1)
    return peak, baseline


def reference_masks(*, reference: np.ndarray, noisy_input: np.ndarray, threshold_sigma: float = 5.0,
                    min_rel_height: float = 0.02) -> tuple[np.ndarray, np.ndarray, float, float | None]:
    """Peak mask, baseline mask (bool, ``(L,)``), peak threshold and ``sigma_input`` as in the module docstring.

    ``sigma_input`` (MAD of the noisy input on the baseline) and the threshold depend on each other: iterated to a
    fixed point, starting from the MAD of the whole input (at most 10 rounds; ends early once the threshold repeats).
    """
    reference = np.asarray(reference, dtype=float)
    noisy_input = np.asarray(noisy_input, dtype=float)
    sigma = _mad_sigma(noisy_input, np.ones(noisy_input.shape, dtype=bool))
    threshold = _threshold(reference, sigma, threshold_sigma, min_rel_height)
    for _ in range(10):
        peak, baseline = _masks_at(reference, threshold)
        sigma = _mad_sigma(noisy_input, baseline)
        updated = _threshold(reference, sigma, threshold_sigma, min_rel_height)
        if updated == threshold:
            break
        threshold = updated
    return peak, baseline, threshold, sigma


def _noise(y: np.ndarray, baseline: np.ndarray) -> tuple[float, float] | None:
    """(median, sigma) of ``y`` on the baseline, sigma = RMS about the median; None if empty or flat."""
    values = y[baseline]
    if values.size == 0:
        return None
    median = float(np.median(values))
    sigma = float(np.sqrt(np.mean((values - median) ** 2)))
    if sigma <= FLAT_RELATIVE * float(np.max(np.abs(y))):
        return None
    return median, sigma


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return float(a / b)


def _snr(y: np.ndarray, peak: np.ndarray, baseline: np.ndarray) -> tuple[float | None, float | None]:
    """(max/sigma SNR, P95 SNR) of ``y`` on the given masks; None where undefined."""
    noise = _noise(y, baseline)
    if noise is None:
        return None, None
    median, sigma = noise
    p95 = (float(np.percentile(y[peak], 95)) - median) / sigma if peak.any() else None
    return float(np.max(y)) / sigma, p95


# ------------------------------------------------------------------------------------------------ evaluation context
@dataclass(frozen=True)
class _Context:
    """Everything derived from the reference and the noisy input, shared by every method scored against them."""

    reference: np.ndarray
    ppm: np.ndarray | None
    tolerance: float
    threshold: float
    peak_mask: np.ndarray
    baseline_mask: np.ndarray
    ref_peaks: np.ndarray  # int indices
    ref_pos: np.ndarray  # sub-point positions, ppm or points
    ref_fwhm: np.ndarray  # points
    segments: list[tuple[int, int]]  # integration windows [start, stop) in points
    ref_integrals: np.ndarray
    snr_in: float | None
    snr_p95_in: float | None


def _as_spectrum(x, name: str, length: int | None = None) -> np.ndarray:
    y = np.asarray(x, dtype=float)
    if y.ndim != 1 or (length is not None and y.size != length):
        raise ValueError(f"{name} must be a 1-D array of length {length or 'L'}, got shape {y.shape}")
    return y


def _positions(y: np.ndarray, peaks: np.ndarray, ppm: np.ndarray | None) -> np.ndarray:
    """Sub-point peak positions, converted to ppm by linear interpolation of the axis when it is given."""
    pos = refine_positions(y, peaks)
    return pos if ppm is None else np.interp(pos, np.arange(ppm.size), ppm)


def _segments(centres: np.ndarray, fwhm: np.ndarray, windows_fwhm: float, length: int) -> list[tuple[int, int]]:
    """Windows ``centre ± windows_fwhm * fwhm`` (points) as [start, stop) index ranges, overlapping ones merged."""
    spans = sorted((max(int(np.ceil(c - windows_fwhm * w)), 0), min(int(np.floor(c + windows_fwhm * w)) + 1, length))
                   for c, w in zip(centres, fwhm))
    merged: list[list[int]] = []
    for start, stop in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(start, stop) for start, stop in merged]


def _prepare(*, reference, noisy_input, ppm=None, tolerance_ppm: float = 0.01, tolerance_points: float = 3.0,
             threshold_sigma: float = 5.0, min_rel_height: float = 0.02, windows_fwhm: float = 2.0,
             peak_mask=None, baseline_mask=None) -> _Context:
    from scipy.signal import peak_widths

    reference = _as_spectrum(reference, "reference")
    length = reference.size
    noisy_input = _as_spectrum(noisy_input, "noisy_input", length)
    ppm = None if ppm is None else _as_spectrum(ppm, "ppm", length)
    if peak_mask is None or baseline_mask is None:
        derived_peak, derived_baseline, threshold, _ = reference_masks(
            reference=reference, noisy_input=noisy_input, threshold_sigma=threshold_sigma,
            min_rel_height=min_rel_height)
        peak_mask = derived_peak if peak_mask is None else peak_mask
        baseline_mask = derived_baseline if baseline_mask is None else baseline_mask
    peak_mask = _as_spectrum(peak_mask, "peak_mask", length).astype(bool)
    baseline_mask = _as_spectrum(baseline_mask, "baseline_mask", length).astype(bool)
    # the threshold always follows the baseline actually used, given or derived
    threshold = _threshold(reference, _mad_sigma(noisy_input, baseline_mask), threshold_sigma, min_rel_height)
    ref_peaks = pick_peaks(reference, threshold)
    ref_fwhm = peak_widths(reference, ref_peaks, rel_height=0.5)[0] if ref_peaks.size else np.zeros(0)
    segments = _segments(refine_positions(reference, ref_peaks), ref_fwhm, windows_fwhm, length)
    snr_in, snr_p95_in = _snr(noisy_input, peak_mask, baseline_mask)
    return _Context(
        reference=reference, ppm=ppm, tolerance=tolerance_points if ppm is None else tolerance_ppm,
        threshold=threshold, peak_mask=peak_mask, baseline_mask=baseline_mask, ref_peaks=ref_peaks,
        ref_pos=_positions(reference, ref_peaks, ppm), ref_fwhm=ref_fwhm, segments=segments,
        ref_integrals=np.array([reference[a:b].sum() for a, b in segments]), snr_in=snr_in, snr_p95_in=snr_p95_in,
    )


# ---------------------------------------------------------------------------------------------------------- scoring
def _mean(values) -> float | None:
    values = np.asarray(values, dtype=float)
    return float(values.mean()) if values.size else None


def _snr_metrics(y: np.ndarray, ctx: _Context) -> dict[str, float | None]:
    snr_out, snr_p95_out = _snr(y, ctx.peak_mask, ctx.baseline_mask)
    return {"snr_in": ctx.snr_in, "snr_out": snr_out, "snr_gain": _ratio(snr_out, ctx.snr_in),
            "snr_p95_in": ctx.snr_p95_in, "snr_p95_out": snr_p95_out,
            "snr_p95_gain": _ratio(snr_p95_out, ctx.snr_p95_in)}


def _peak_metrics(y: np.ndarray, ctx: _Context) -> dict[str, float | None]:
    """Detection (precision/recall/F1, shift) and per-matched-pair height and FWHM errors."""
    from scipy.signal import peak_widths

    out_peaks = pick_peaks(y, ctx.threshold)
    n_ref, n_out = ctx.ref_peaks.size, out_peaks.size
    pred_idx, ref_idx = match_peaks(_positions(y, out_peaks, ctx.ppm), ctx.ref_pos, ctx.tolerance)
    tp = pred_idx.size
    row: dict[str, float | None] = dict.fromkeys(_PEAK_KEYS)
    row.update(n_peaks_ref=float(n_ref), n_peaks_out=float(n_out), n_matched=float(tp))
    if n_ref == 0:
        return row
    precision, recall = (tp / n_out if n_out else 0.0), tp / n_ref
    row.update(peak_precision=precision, peak_recall=recall,
               peak_f1=2 * precision * recall / (precision + recall) if tp else 0.0)
    if tp == 0:
        return row
    out_pos = _positions(y, out_peaks[pred_idx], ctx.ppm)
    heights = y[out_peaks[pred_idx]] / ctx.reference[ctx.ref_peaks[ref_idx]]
    widths = peak_widths(y, out_peaks[pred_idx], rel_height=0.5)[0] / ctx.ref_fwhm[ref_idx]
    row.update(peak_shift=_mean(np.abs(out_pos - ctx.ref_pos[ref_idx])),
               height_rel_err=_mean(np.abs(heights - 1)), height_ratio=_mean(heights),
               fwhm_rel_err=_mean(np.abs(widths - 1)), fwhm_ratio=_mean(widths))
    return row


def _integral_metrics(y: np.ndarray, ctx: _Context) -> dict[str, float | None]:
    """Window integrals around every reference peak (segments with a zero reference integral are skipped)."""
    keep = ctx.ref_integrals != 0
    if not keep.any():
        return {"integral_rel_err": None, "integral_ratio": None}
    ratios = np.array([y[a:b].sum() for a, b in ctx.segments])[keep] / ctx.ref_integrals[keep]
    return {"integral_rel_err": _mean(np.abs(ratios - 1)), "integral_ratio": _mean(ratios)}


def _error_metrics(y: np.ndarray, ctx: _Context) -> dict[str, float | None]:
    scale = float(np.max(np.abs(ctx.reference)))
    if scale == 0:
        return dict.fromkeys(("l1", "l2", "l2_peak", "l2_baseline"))
    diff = y - ctx.reference

    def rms(mask: np.ndarray) -> float | None:
        return float(np.sqrt(np.mean(diff[mask] ** 2)) / scale) if mask.any() else None

    return {"l1": float(np.mean(np.abs(diff)) / scale), "l2": rms(np.ones(diff.shape, dtype=bool)),
            "l2_peak": rms(ctx.peak_mask), "l2_baseline": rms(ctx.baseline_mask)}


def _score(output, ctx: _Context) -> dict[str, float | None]:
    y = _as_spectrum(output, "output", ctx.reference.size)
    row = {**_snr_metrics(y, ctx), **_peak_metrics(y, ctx), **_integral_metrics(y, ctx), **_error_metrics(y, ctx)}
    return {key: row[key] for key in METRIC_KEYS}


# ------------------------------------------------------------------------------------------------------- public API
def spectrum_metrics(*, output, reference, noisy_input, ppm=None, tolerance_ppm: float = 0.01,
                     tolerance_points: float = 3.0, threshold_sigma: float = 5.0, min_rel_height: float = 0.02,
                     windows_fwhm: float = 2.0, peak_mask=None, baseline_mask=None) -> dict[str, float | None]:
    """All metrics of one output spectrum ``(L,)`` against ``reference`` ``(L,)`` (see the module docstring).

    Keyword-only: the three spectra have the same shape and dtype, so a positional swap would run and score the
    wrong thing (scoring against the noisy input once made model selection pick the least-denoised epoch).

    ``noisy_input`` ``(L,)`` is the method's input: it sets ``snr_in`` and the noise-based peak threshold. ``ppm``
    ``(L,)``, in either direction, switches positions and ``peak_shift`` to ppm. ``peak_mask``/``baseline_mask``
    (bool ``(L,)``) override the derived masks. Returns ``METRIC_KEYS`` -> float or None.
    """
    ctx = _prepare(reference=reference, noisy_input=noisy_input, ppm=ppm, tolerance_ppm=tolerance_ppm,
                   tolerance_points=tolerance_points, threshold_sigma=threshold_sigma, min_rel_height=min_rel_height,
                   windows_fwhm=windows_fwhm, peak_mask=peak_mask, baseline_mask=baseline_mask)
    return _score(output, ctx)


def evaluate_methods(*, noisy_input, reference, outputs: dict[str, np.ndarray], ppm=None,
                     **kwargs) -> dict[str, dict[str, float | None]]:
    """:func:`spectrum_metrics` per method, every method on the same masks, threshold and integration windows.

    Keyword-only, like :func:`spectrum_metrics`.

    ``outputs`` maps method name -> output ``(L,)``. Unless already present, adds the rows ``"input"`` (no
    denoising), ``"savgol"`` (:func:`savgol_denoise`, kwargs ``savgol_window``=11, ``savgol_order``=3) and
    ``"apodisation"`` (:func:`exponential_apodisation` at the matched ``lb`` = median FWHM of the reference peaks).
    Baseline rows come first, then ``outputs`` in their order. Other kwargs go to :func:`spectrum_metrics`.
    """
    window, order = kwargs.pop("savgol_window", 11), kwargs.pop("savgol_order", 3)
    ctx = _prepare(reference=reference, noisy_input=noisy_input, ppm=ppm, **kwargs)
    noisy = _as_spectrum(noisy_input, "noisy_input")
    baselines = {
        "input": lambda: noisy,
        "savgol": lambda: savgol_denoise(noisy, window, order),
        "apodisation": lambda: exponential_apodisation(noisy, matched_linewidth(ctx.reference, ctx.ref_peaks)),
    }
    methods = {name: make() for name, make in baselines.items() if name not in outputs}
    methods.update(outputs)
    return {name: _score(y, ctx) for name, y in methods.items()}


def mean_metrics(rows: list[dict]) -> dict[str, float | None]:
    """Mean over spectra per key (keys in first-seen order), ignoring None; None where every value is None."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    means: dict[str, float | None] = {}
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None]
        means[key] = float(np.mean(values)) if values else None
    return means
