"""NMR denoising metrics and classical baselines on sums of Lorentzians (L = 2048, white Gaussian noise)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import peak_widths

from model.nmr_metrics import (
    METRIC_KEYS,
    evaluate_methods,
    exponential_apodisation,
    match_peaks,
    matched_linewidth,
    mean_metrics,
    pick_peaks,
    reference_masks,
    savgol_denoise,
    spectrum_metrics,
)

LENGTH = 2048
SIGMA = 0.01
CENTRES = np.array([300.0, 620.0, 900.0, 1200.0, 1500.0, 1800.0])
WIDTHS = np.array([5.0, 4.0, 6.0, 8.0, 5.0, 4.0])
HEIGHTS = np.array([1.0, 0.5, 0.8, 0.3, 0.6, 0.4])


def lorentzians(centres, widths, heights, length: int = LENGTH) -> np.ndarray:
    """Sum of absorption Lorentzians (FWHM ``widths`` points, peak ``heights``) on points 0..length-1."""
    x = np.arange(length, dtype=float)[:, None]
    c, w, h = (np.atleast_1d(np.asarray(v, dtype=float))[None] for v in (centres, widths, heights))
    return (h * (w / 2) ** 2 / ((x - c) ** 2 + (w / 2) ** 2)).sum(1)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return lorentzians(CENTRES, WIDTHS, HEIGHTS)


@pytest.fixture(scope="module")
def noisy(clean) -> np.ndarray:
    return clean + SIGMA * np.random.default_rng(0).normal(size=LENGTH)


def without(index: int) -> np.ndarray:
    keep = np.arange(CENTRES.size) != index
    return lorentzians(CENTRES[keep], WIDTHS[keep], HEIGHTS[keep])


def test_reference_against_itself_is_perfect(clean, noisy):
    row = spectrum_metrics(output=clean, reference=clean, noisy_input=noisy)
    assert set(row) == set(METRIC_KEYS)
    for key in ("l1", "l2", "l2_peak", "l2_baseline", "peak_shift", "height_rel_err", "fwhm_rel_err",
                "integral_rel_err"):
        assert row[key] == pytest.approx(0.0, abs=1e-9), key
    for key in ("peak_precision", "peak_recall", "peak_f1", "height_ratio", "fwhm_ratio", "integral_ratio"):
        assert row[key] == pytest.approx(1.0, abs=1e-9), key
    assert row["n_peaks_ref"] == row["n_matched"] == CENTRES.size
    # the clean baseline is Lorentzian tails, not flat: SNR is finite, only guarded when exactly flat
    assert row["snr_out"] is None or np.isfinite(row["snr_out"])


def test_masks_cover_peaks_and_keep_baseline_clear(clean, noisy):
    peak, baseline, threshold, sigma_input = reference_masks(reference=clean, noisy_input=noisy)
    assert sigma_input == pytest.approx(SIGMA, rel=0.1)
    assert threshold == pytest.approx(max(0.02 * clean.max(), 5 * sigma_input))
    assert peak[CENTRES.astype(int)].all() and not (peak & baseline).any()
    # 2 median FWHM (= 2 * 5 points) each side, then 5 points of gap before the baseline
    assert peak[300 - 9] and not baseline[300 - 14] and baseline[300 - 40]
    assert baseline.sum() > LENGTH // 2


def test_snr_conventions(clean, noisy):
    row = spectrum_metrics(output=noisy, reference=clean, noisy_input=noisy)
    assert row["snr_in"] == pytest.approx(noisy.max() / SIGMA, rel=0.05)
    assert row["snr_out"] == row["snr_in"] and row["snr_gain"] == pytest.approx(1.0)
    # P95 definition, checked by hand on explicit masks
    peak = np.zeros(LENGTH, bool)
    peak[280:320] = True
    baseline = np.zeros(LENGTH, bool)
    baseline[1900:] = True
    row = spectrum_metrics(output=noisy, reference=clean, noisy_input=noisy, peak_mask=peak, baseline_mask=baseline)
    base = noisy[baseline]
    sigma = np.sqrt(np.mean((base - np.median(base)) ** 2))
    assert row["snr_p95_in"] == pytest.approx((np.percentile(noisy[peak], 95) - np.median(base)) / sigma)
    assert row["snr_in"] == pytest.approx(noisy.max() / sigma)


def test_flat_baseline_has_undefined_snr(clean, noisy):
    peak, baseline, _, _ = reference_masks(reference=clean, noisy_input=noisy)
    flattened = np.where(baseline, 0.0, clean)
    row = spectrum_metrics(output=flattened, reference=clean, noisy_input=noisy)
    assert row["snr_out"] is None and row["snr_gain"] is None and row["snr_p95_out"] is None
    assert row["snr_in"] is not None and row["l2_baseline"] > 0


def test_removed_peak_lowers_recall_and_adds_integral_error(clean, noisy):
    row = spectrum_metrics(output=without(3), reference=clean, noisy_input=noisy)
    n = CENTRES.size
    assert row["peak_recall"] == pytest.approx((n - 1) / n)
    assert row["peak_precision"] == pytest.approx(1.0)
    # the erased peak's window integrates to ~0: its relative error is ~1 among n windows
    assert row["integral_rel_err"] == pytest.approx(1 / n, rel=0.1)
    assert row["integral_ratio"] < 1


def test_spurious_peak_lowers_precision(clean, noisy):
    row = spectrum_metrics(output=clean + lorentzians(1000.0, 5.0, 0.5), reference=clean, noisy_input=noisy)
    n = CENTRES.size
    assert row["peak_precision"] == pytest.approx(n / (n + 1))
    assert row["peak_recall"] == pytest.approx(1.0)
    assert row["peak_f1"] == pytest.approx(2 * n / (2 * n + 1))


def test_shift_is_sub_point_and_unmatched_beyond_tolerance(clean, noisy):
    row = spectrum_metrics(output=lorentzians(CENTRES + 1.3, WIDTHS, HEIGHTS), reference=clean, noisy_input=noisy)
    assert row["peak_recall"] == 1.0 and abs(row["peak_shift"] - 1.3) < 0.1
    row = spectrum_metrics(output=lorentzians(CENTRES + 5.0, WIDTHS, HEIGHTS), reference=clean, noisy_input=noisy,
                           tolerance_points=3.0)
    assert row["peak_recall"] == 0.0 and row["peak_f1"] == 0.0 and row["peak_shift"] is None
    assert row["height_ratio"] is None and row["integral_rel_err"] > 0.03


def test_tolerance_in_ppm_when_an_axis_is_given(clean, noisy):
    ppm = 10.0 - 0.001 * np.arange(LENGTH)  # 0.001 ppm per point, running downwards like a real axis
    shifted = lorentzians(CENTRES + 5.0, WIDTHS, HEIGHTS)
    in_ppm = spectrum_metrics(output=shifted, reference=clean, noisy_input=noisy, ppm=ppm, tolerance_ppm=0.01,
                              tolerance_points=3.0)
    assert in_ppm["peak_recall"] == 1.0 and in_ppm["peak_shift"] == pytest.approx(0.005, abs=1e-4)
    in_points = spectrum_metrics(output=shifted, reference=clean, noisy_input=noisy, tolerance_ppm=0.01,
                                 tolerance_points=3.0)
    assert in_points["peak_recall"] == 0.0
    tight = spectrum_metrics(output=shifted, reference=clean, noisy_input=noisy, ppm=ppm, tolerance_ppm=0.003)
    assert tight["peak_recall"] == 0.0


def test_match_peaks_is_one_to_one():
    pred, ref = match_peaks([99.0, 101.5, 300.0], [100.0, 200.0], tolerance=3.0)
    assert pred.tolist() == [0] and ref.tolist() == [0]
    # both predictions are within tolerance of 12, none of 20: the closer one takes it
    pred, ref = match_peaks([10.0, 13.0], [12.0, 20.0], tolerance=3.0)
    assert list(zip(pred.tolist(), ref.tolist())) == [(1, 0)]
    pred, ref = match_peaks([10.0, 14.0], [12.0, 15.0], tolerance=3.0)
    assert list(zip(pred.tolist(), ref.tolist())) == [(0, 0), (1, 1)]
    assert match_peaks([], [1.0], 3.0)[0].size == 0


def test_broadened_prediction_reports_width_and_height(clean, noisy):
    broad = lorentzians(CENTRES, 1.5 * WIDTHS, HEIGHTS / 1.5)  # same area
    row = spectrum_metrics(output=broad, reference=clean, noisy_input=noisy, windows_fwhm=10.0)
    assert row["peak_f1"] == 1.0
    assert row["fwhm_rel_err"] == pytest.approx(0.5, abs=0.05)
    assert row["height_ratio"] == pytest.approx(1 / 1.5, rel=0.03)
    assert row["integral_rel_err"] < 0.03
    # at the default ±2 FWHM windows the heavier Lorentzian tails leak out: broadening costs integral
    assert spectrum_metrics(output=broad, reference=clean, noisy_input=noisy)["integral_ratio"] < 0.95


def test_pick_peaks_and_matched_linewidth(clean):
    peaks = pick_peaks(clean, 0.1)
    assert peaks.tolist() == CENTRES.astype(int).tolist()
    assert pick_peaks(clean, 0.45).size == 4
    assert matched_linewidth(clean, peaks) == pytest.approx(np.median(WIDTHS), rel=0.06)
    assert matched_linewidth(clean, np.array([], dtype=int)) == 0.0


def test_exponential_apodisation_adds_lb_to_the_linewidth():
    line = lorentzians(1000.3, 4.0, 1.0)
    out = exponential_apodisation(line, 4.0)
    top = int(np.argmax(out))
    assert top == 1000
    assert peak_widths(out, [top])[0][0] == pytest.approx(8.0, rel=0.02)
    # the same shape as a true FWHM-8 Lorentzian, at the same position
    expected = lorentzians(1000.3, 8.0, 0.5)
    assert np.abs(out - expected).max() < 0.01
    assert out.sum() == pytest.approx(line.sum(), rel=0.02)
    # symmetric kernel: the direction of the axis does not matter
    np.testing.assert_allclose(exponential_apodisation(line[::-1], 4.0)[::-1], out, atol=1e-12)
    noise = np.random.default_rng(1).normal(size=(2, LENGTH))
    filtered = exponential_apodisation(noise, 4.0)
    assert filtered.shape == noise.shape and filtered.std() < 0.5 * noise.std()
    np.testing.assert_allclose(exponential_apodisation(line, 0.0), line, atol=1e-12)


def test_savgol_keeps_length_and_reduces_noise(clean, noisy):
    smooth = savgol_denoise(noisy)
    assert smooth.shape == noisy.shape
    noise = np.random.default_rng(2).normal(size=LENGTH)
    assert np.std(savgol_denoise(noise)) < 0.7 * np.std(noise)
    # on the spectrum the gain shows on the baseline (narrow peaks lose height, so not over the whole spectrum)
    _, baseline, _, _ = reference_masks(reference=clean, noisy_input=noisy)
    assert np.std((smooth - clean)[baseline]) < 0.7 * np.std((noisy - clean)[baseline])
    assert savgol_denoise(np.stack([noisy, noisy]), 7, 2).shape == (2, LENGTH)


def test_evaluate_methods_rows_share_keys_and_masks(clean, noisy):
    rows = evaluate_methods(noisy_input=noisy, reference=clean, outputs={"model": clean + 0.5 * (noisy - clean)},
                            savgol_window=9)
    assert list(rows) == ["input", "savgol", "apodisation", "model"]
    assert all(list(row) == list(METRIC_KEYS) for row in rows.values())
    assert len({row["snr_in"] for row in rows.values()}) == 1
    assert rows["input"] == spectrum_metrics(output=noisy, reference=clean, noisy_input=noisy)
    assert rows["savgol"] == spectrum_metrics(output=savgol_denoise(noisy, 9, 3), reference=clean, noisy_input=noisy)
    # matched em on Lorentzians: about sqrt(2) in max/sigma SNR, for lines twice as broad and half as high
    apodisation = rows["apodisation"]
    assert apodisation["snr_gain"] == pytest.approx(np.sqrt(2), rel=0.1)
    assert apodisation["fwhm_ratio"] == pytest.approx(2.0, rel=0.05) and apodisation["height_ratio"] < 0.55
    assert rows["model"]["l2"] < rows["input"]["l2"]
    # a method supplied under a baseline's name replaces it
    assert evaluate_methods(noisy_input=noisy, reference=clean, outputs={"input": clean})["input"]["l1"] == 0.0


def test_mean_metrics_ignores_none():
    rows = [{"a": 1.0, "b": None, "c": None}, {"a": 3.0, "b": 2.0, "c": None}]
    assert mean_metrics(rows) == {"a": 2.0, "b": 2.0, "c": None}
    assert mean_metrics([]) == {}


def test_no_reference_peak_gives_none(noisy):
    row = spectrum_metrics(output=noisy, reference=np.zeros(LENGTH), noisy_input=noisy)
    assert row["peak_f1"] is None and row["integral_rel_err"] is None and row["l1"] is None
    with pytest.raises(ValueError):
        spectrum_metrics(output=noisy[:-1], reference=noisy, noisy_input=noisy)
