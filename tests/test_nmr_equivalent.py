"""Equivalent SNR gain (model/nmr_equivalent.py) on generated block data where the answer is known."""
import math

import numpy as np
import pytest

from model.nmr_equivalent import equivalent_blocks, equivalent_gain, fit_raw_curve, relative_l2


def _lorentzians(length=2048, seed=0):
    rng = np.random.default_rng(seed)
    x = np.arange(length)
    clean = np.zeros(length)
    for centre, width, height in zip(rng.uniform(100, length - 100, 12), rng.uniform(2, 6, 12),
                                     rng.uniform(0.2, 1.0, 12)):
        clean += height / (1 + ((x - centre) / (width / 2)) ** 2)
    return clean / clean.max()


def _block_average(clean, sigma, n, rng):
    return clean + sigma / math.sqrt(n) * rng.standard_normal(len(clean))


@pytest.mark.parametrize("mode", ["fit", "interp"])
def test_average_of_nine_blocks_is_worth_gain_three(mode):
    rng = np.random.default_rng(1)
    clean = _lorentzians()
    sigma = 0.1  # one block at max/sigma = 10
    reference = _block_average(clean, sigma, 256, rng)  # the independent reference: 256 other blocks
    ns = [1, 4, 16, 64]
    l2_raw = [relative_l2(_block_average(clean, sigma, n, rng), reference) for n in ns]
    output = _block_average(clean, sigma, 9, rng)  # a "method" as good as averaging 9 disjoint blocks
    result = equivalent_gain(relative_l2(output, reference), ns, l2_raw, mode=mode)
    assert result["gain"] == pytest.approx(3.0, rel=0.10)
    assert not result["beyond_floor"]
    assert result["curve"]["c"] == pytest.approx((sigma / 16) ** 2, rel=0.5)  # the reference's own noise


def test_raw_levels_map_to_their_own_block_counts():
    rng = np.random.default_rng(2)
    clean = _lorentzians(seed=3)
    reference = _block_average(clean, 0.1, 256, rng)
    ns = [1, 4, 16, 64]
    l2_raw = [relative_l2(_block_average(clean, 0.1, n, rng), reference) for n in ns]
    for n, l2 in zip(ns, l2_raw):
        assert equivalent_blocks(l2, ns, l2_raw, mode="interp")[0] == pytest.approx(n, rel=1e-9)
        assert equivalent_blocks(l2, ns, l2_raw, mode="fit")[0] == pytest.approx(n, rel=0.15)


def test_exact_law_recovered_and_floor_reported():
    ns = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    a, c = 0.01, 1e-5
    curve = fit_raw_curve(ns, np.sqrt(a / ns + c))
    assert curve.a == pytest.approx(a, rel=1e-9) and curve.c == pytest.approx(c, rel=1e-6)
    assert curve.blocks_for(curve.at(32.0)) == pytest.approx(32.0, rel=1e-9)
    below = equivalent_gain(math.sqrt(c) * 0.9, ns, np.sqrt(a / ns + c))
    assert below["beyond_floor"] and below["gain"] is None and below["blocks"] is None


def test_input_blocks_and_bad_input():
    ns = np.array([1.0, 4.0, 16.0])
    l2 = np.sqrt(0.01 / ns)
    assert equivalent_gain(math.sqrt(0.01 / 16), ns, l2, input_blocks=4)["gain"] == pytest.approx(2.0, rel=1e-9)
    with pytest.raises(ValueError):
        fit_raw_curve([1.0], [0.1])
    with pytest.raises(ValueError):
        equivalent_gain(0.0, ns, l2)
    with pytest.raises(ValueError):
        equivalent_blocks(0.01, ns, l2, mode="nearest")


def test_noise2noise_estimator_is_unbiased_where_the_truth_is_known():
    """Two repeats of one known truth: the pair-only estimates match the errors to the truth on average, for the raw
    input, for a linear smoother of x1, and on a peak mask; a 9-scan average scores gain 3."""
    from scipy.signal import savgol_filter

    from model.nmr_equivalent import noise2noise_errors, noise2noise_gain

    rng = np.random.default_rng(7)
    truth = _lorentzians(seed=5)
    sigma = 0.1
    mask = truth > 0.05
    est, true, est_peak, true_peak, est_in, true_in = [], [], [], [], [], []
    for _ in range(400):
        x1 = _block_average(truth, sigma, 1, rng)
        x2 = _block_average(truth, sigma, 1, rng)
        out = savgol_filter(x1, 11, 3)
        e = noise2noise_errors(out, x1, x2)
        est.append(e["err2_output"])
        true.append(np.sum((out - truth) ** 2))
        est_in.append(e["err2_input"])
        true_in.append(np.sum((x1 - truth) ** 2))
        ep = noise2noise_errors(out, x1, x2, mask)
        est_peak.append(ep["err2_output"])
        true_peak.append(np.sum((out[mask] - truth[mask]) ** 2))
    assert np.mean(est) == pytest.approx(np.mean(true), rel=0.05)
    assert np.mean(est_in) == pytest.approx(np.mean(true_in), rel=0.02)
    assert np.mean(est_peak) == pytest.approx(np.mean(true_peak), rel=0.10)
    # an output as good as 9 scans averaged, independent of x2: gain 3, blocks 9 (one pair, long spectrum)
    long_truth = np.tile(truth, 16)
    x1, x2 = (_block_average(long_truth, sigma, 1, rng) for _ in range(2))
    nine = _block_average(long_truth, sigma, 9, rng)
    result = noise2noise_gain(nine, x1, x2)
    assert result["gain"] == pytest.approx(3.0, rel=0.10) and not result["beyond_floor"]
    # the truth itself: err2_output ~ 0, reported as beyond the floor or a very large gain
    exact = noise2noise_gain(long_truth, x1, x2)
    assert exact["beyond_floor"] or exact["gain"] > 20


def test_noise2noise_is_biased_when_the_signals_differ():
    """Two tubes are not repeats: a 2 % height change between x1 and x2 inflates the input term on the peaks."""
    from model.nmr_equivalent import noise2noise_errors

    rng = np.random.default_rng(8)
    truth = _lorentzians(seed=6)
    mask = truth > 0.05
    x1 = truth + 1e-3 * rng.standard_normal(truth.size)
    x2 = 1.02 * truth + 1e-3 * rng.standard_normal(truth.size)
    e = noise2noise_errors(x1, x1, x2, mask)
    assert e["err2_input"] > 10 * np.sum((x1[mask] - truth[mask]) ** 2)
    with pytest.raises(ValueError):
        noise2noise_errors(x1, x1, x2[:-1])
