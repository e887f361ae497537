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
