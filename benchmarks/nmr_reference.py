"""The NMR ladder preparation written plainly, one ladder at a time, with NumPy/SciPy: the reference of run.py's row 5.

It does the work of ``data_loader.nmr.fusion.prepare_ladder`` with its defaults (align on the top level by FFT
cross-correlation within 16 points plus Newton refinement, Savitzky-Golay peak mask on the top level, robust
rescale onto the top level (3 Newton steps and 4 reweighting steps, as ours), MAD noise levels, the plan's SNR,
inverse-variance fusion with a 0.9 cap, level 0 left out of the target), the way a per-spectrum script would: a
Python loop over ladders and levels, float64 NumPy arrays, ``scipy.signal.savgol_filter`` and ``scipy.ndimage``
filters. ``prepare_one`` returns the fused target so run.py can check that both compute the same thing.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d
from scipy.signal import savgol_coeffs, savgol_filter

MAD_TO_SIGMA = 1.4826


def mad(values: np.ndarray) -> tuple[float, float]:
    """Median and median absolute deviation of a 1D array."""
    median = np.median(values)
    return median, np.median(np.abs(values - median))


def estimate_shift(spectrum: np.ndarray, reference: np.ndarray, search: int = 16, iterations: int = 3) -> float:
    """Sub-point shift of ``spectrum`` relative to ``reference``: FFT cross-correlation maximum within ``search``
    points, then Newton steps on the Fourier-interpolated cross-correlation."""
    length = len(spectrum)
    cross = np.fft.rfft(spectrum) * np.conj(np.fft.rfft(reference))
    corr = np.fft.irfft(cross, n=length)
    lags = np.arange(length)
    lags = np.where(lags > length // 2, lags - length, lags)
    corr = np.where(np.abs(lags) <= search, corr, -np.inf)
    tau = float(lags[np.argmax(corr)])
    omega = 2 * np.pi * np.fft.rfftfreq(length)
    count = np.full(len(omega), 2.0)
    count[0] = 1
    if length % 2 == 0:
        count[-1] = 1
    for _ in range(iterations):
        z = cross * np.exp(1j * omega * tau) * count
        slope = np.sum((1j * omega * z).real)
        curvature = np.sum((-(omega ** 2) * z).real)
        step = -slope / curvature if curvature < 0 else 0.0
        tau += min(max(step, -0.5), 0.5)
    return tau


def fourier_shift(spectrum: np.ndarray, shift: float) -> np.ndarray:
    """``spectrum`` moved by ``shift`` points (circular) with a Fourier phase ramp."""
    freq = np.fft.rfftfreq(len(spectrum))
    return np.fft.irfft(np.fft.rfft(spectrum) * np.exp(-2j * np.pi * freq * shift), n=len(spectrum))


def peak_mask(spectrum: np.ndarray, alpha: float = 5.0, window: int = 11, order: int = 3,
              dilate: int = 5) -> np.ndarray:
    """Savitzky-Golay-smoothed spectrum above median + alpha * MAD noise (scaled to the smoothing), dilated."""
    smooth = savgol_filter(spectrum, window, order, mode="mirror")
    median, deviation = mad(spectrum)
    gain = np.sqrt(np.sum(savgol_coeffs(window, order) ** 2))
    mask = smooth - median > alpha * MAD_TO_SIGMA * deviation * gain
    return maximum_filter1d(mask, 2 * dilate + 1, mode="nearest")


def robust_scale(spectrum: np.ndarray, reference: np.ndarray, mask: np.ndarray, noise: float, iterations: int = 4,
                 tukey: float = 4.685) -> float:
    """``s`` with ``s * spectrum ~ reference`` on ``mask``: median of the point ratios where the spectrum exceeds
    3 ``noise``, then IRLS (Tukey bisquare)."""
    strong = mask & (np.abs(spectrum) > 3 * noise)
    if not strong.any():
        strong = mask
    denominator = np.where(spectrum[strong] == 0, 1.0, spectrum[strong])
    inverse = 1 / np.median(reference[strong] / denominator)
    for _ in range(iterations):
        residual = spectrum - inverse * reference
        sigma = max(MAD_TO_SIGMA * mad(residual[mask])[1], 1e-30)
        u = residual / (tukey * sigma)
        w = mask * np.where(np.abs(u) < 1, (1 - u ** 2) ** 2, 0.0)
        inverse = np.sum(w * spectrum * reference) / max(np.sum(w * reference * reference), 1e-30)
    return 1 / inverse


def fusion_weights(sigma: np.ndarray, max_share: float = 0.9) -> np.ndarray:
    """Inverse-variance weights, level 0 excluded, no weight above ``max_share`` (excess spread proportionally)."""
    raw = np.maximum(sigma, 1e-30) ** -2.0
    raw[0] = 0
    weights = raw / raw.sum()
    for _ in range(len(weights)):
        capped = weights >= max_share
        excess = np.sum(np.maximum(weights - max_share, 0))
        free = np.where(capped, 0.0, weights)
        weights = np.where(capped, max_share, weights + excess * free / max(free.sum(), 1e-30))
    return weights


def prepare_one(ladder: np.ndarray, max_shift: int = 16, erode: int = 3) -> dict[str, np.ndarray]:
    """One ladder ``(K+1, L)`` -> aligned/rescaled levels, masks, sigma, SNR, weights and the fused target."""
    levels = ladder.astype(np.float64)
    top = levels[-1]
    shifts = np.array([estimate_shift(level, top, max_shift) for level in levels])
    shifts -= shifts[0]
    aligned = [levels[0]] + [fourier_shift(levels[k], -shifts[k]) for k in range(1, len(levels))]
    top = aligned[-1]
    peaks = peak_mask(top)
    baseline = minimum_filter1d(~peaks, 2 * erode + 1, mode="nearest")
    scales = np.array([robust_scale(level, top, peaks, MAD_TO_SIGMA * mad(level[baseline])[1]) for level in aligned])
    scaled = [level * (scale / scales[0]) for level, scale in zip(aligned, scales)]
    sigma = np.array([MAD_TO_SIGMA * mad(level[baseline])[1] for level in scaled])
    snr = np.array([(np.quantile(level[peaks], 0.95) - np.median(level[baseline])) / max(s, 1e-30)
                    if peaks.any() else 0.0 for level, s in zip(scaled, sigma)])
    weights = fusion_weights(sigma)
    target = sum(w * level for w, level in zip(weights, scaled))
    return {"target": target, "peaks": peaks, "baseline": baseline, "sigma": sigma, "snr": snr,
            "weights": weights, "shifts": shifts, "scales": scales / scales[0]}


def prepare_all(ladders: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The per-spectrum loop: ``prepare_one`` for every ladder of ``(B, K+1, L)``."""
    return [prepare_one(ladder) for ladder in ladders]
