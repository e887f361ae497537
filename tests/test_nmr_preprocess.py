"""NMR preprocessing: alignment, rescaling, noise level, masks (issue 6 acceptance figures)."""
from __future__ import annotations

import pytest
import torch

from data_loader.nmr.preprocess import (
    align,
    baseline_mask,
    estimate_shift,
    fourier_shift,
    peak_mask,
    robust_scale,
    robust_sigma,
    savgol_smooth,
)


def lorentzians(length: int, centres, widths, heights) -> torch.Tensor:
    """Sum of absorption Lorentzians on points 0..length-1 (double precision)."""
    x = torch.arange(length, dtype=torch.float64)[:, None]
    c, w, h = (torch.as_tensor(v, dtype=torch.float64)[None] for v in (centres, widths, heights))
    return (h * (w / 2) ** 2 / ((x - c) ** 2 + (w / 2) ** 2)).sum(1)


@pytest.fixture
def spectrum():
    return lorentzians(2048, [400.3, 700.0, 712.5, 1300.7, 1700.2], [6, 4, 4, 8, 5], [1.0, 0.6, 0.6, 0.8, 0.4])


@pytest.mark.parametrize("shift", [0.37, -2.61, 7.05, -0.08])
def test_alignment_recovers_a_known_subpixel_shift(spectrum, shift):
    generator = torch.Generator().manual_seed(0)
    shifted = fourier_shift(spectrum[None], torch.tensor([shift], dtype=torch.float64))
    noisy = shifted + 0.01 * torch.randn(shifted.shape, generator=generator, dtype=torch.float64)
    estimate = estimate_shift(noisy, spectrum, search=20)
    assert abs(float(estimate[0]) - shift) < 0.05
    aligned, removed = align(noisy, spectrum, search=20)
    assert float((aligned - spectrum).abs().max()) < 0.06


def test_alignment_is_batched(spectrum):
    shifts = torch.tensor([0.5, -1.25, 3.3], dtype=torch.float64)
    batch = fourier_shift(spectrum.expand(3, -1), shifts)
    assert torch.allclose(estimate_shift(batch, spectrum), shifts, atol=0.05)


@pytest.mark.parametrize("scale", [0.37, 1.0, 4.2])
def test_robust_rescaling_recovers_a_known_scale(spectrum, scale):
    generator = torch.Generator().manual_seed(1)
    # peak SNR about 100 at the smallest scale (over 20 seeds the error stays below 1%; at SNR 50 up to 1.5%)
    noisy = spectrum[None] / scale + 0.0025 * torch.randn((1, 2048), generator=generator, dtype=torch.float64)
    noisy[0, 1500:1510] += 0.5  # an artefact the robust weights must discount
    reference_noise = 0.002 * torch.randn((1, 2048), generator=generator, dtype=torch.float64)
    mask = peak_mask(spectrum[None] + reference_noise)  # chosen on the (cleaner) reference
    estimate = robust_scale(noisy, spectrum, mask)
    assert abs(float(estimate[0]) / scale - 1) < 0.01


@pytest.mark.parametrize("sigma", [0.01, 0.3, 5.0])
def test_sigma_on_pure_noise(sigma):
    generator = torch.Generator().manual_seed(2)
    noise = sigma * torch.randn((4, 8192), generator=generator, dtype=torch.float64)
    estimate = robust_sigma(noise)
    assert ((estimate / sigma - 1).abs() < 0.05).all()


def test_sigma_ignores_peaks(spectrum):
    generator = torch.Generator().manual_seed(3)
    noisy = spectrum[None] + 0.01 * torch.randn((1, 2048), generator=generator, dtype=torch.float64)
    assert abs(float(robust_sigma(noisy)[0]) / 0.01 - 1) < 0.05


def test_masks_cover_peaks_and_leave_baseline(spectrum):
    generator = torch.Generator().manual_seed(4)
    noisy = spectrum[None] + 0.01 * torch.randn((1, 2048), generator=generator, dtype=torch.float64)
    peaks = peak_mask(noisy)[0]
    for centre in (400, 700, 712, 1300, 1700):
        assert peaks[centre]
    assert not peaks[:300].any() and not peaks[1000:1200].any()
    base = baseline_mask(peaks[None])[0]
    assert not (base & peaks).any() and base[:300].all()


def test_savgol_keeps_a_polynomial():
    x = torch.linspace(-1, 1, 101, dtype=torch.float64)
    cubic = (2 * x ** 3 - x + 0.5)[None]
    assert torch.allclose(savgol_smooth(cubic, 11, 3)[:, 10:-10], cubic[:, 10:-10], atol=1e-9)


def test_local_alignment_follows_a_shift_that_varies_along_the_spectrum(spectrum):
    """Two regions drift by different sub-point amounts (a non-linear drift): anchor windows recover each."""
    from data_loader.nmr.preprocess import anchor_positions, apply_local_shifts, local_shifts

    reference = spectrum[None].float()
    centres = anchor_positions(reference, anchors=3, window=64)
    assert set(centres[0].tolist()) >= {400, 700}  # the tallest peaks
    drift = torch.tensor([[0.6, -0.4, 0.3]])
    drifted = apply_local_shifts(reference, centres, drift)
    measured = local_shifts(drifted, reference, centres, window=64)
    assert torch.allclose(measured, drift, atol=0.05)
    restored = apply_local_shifts(drifted, centres, -measured)
    assert (restored - reference).abs().max() < 0.02 * reference.max()
    # a single global shift cannot do this: it leaves at least one region misaligned
    global_fix = fourier_shift(drifted, -estimate_shift(drifted, reference))
    assert (global_fix - reference).abs().max() > 5 * (restored - reference).abs().max()


@pytest.mark.parametrize("q", [0.5, 0.95])
def test_prefix_plan_matches_numpy_on_left_packed_rows(q):
    """PrefixPlan (the CPU selection scale_packed uses) gives numpy.quantile of each row's prefix, for counts that
    differ between groups (odd, even, 1 and 0 points), each count shared by a group of rows."""
    import numpy as np

    from data_loader.nmr.preprocess import PrefixPlan

    torch.manual_seed(0)
    counts, group, width = [7, 8, 1, 0, 300], 3, 300
    values = torch.randn(len(counts) * group, width)
    valid = torch.arange(width)[None] < torch.tensor(counts)[:, None]
    plan = PrefixPlan.build(valid, q, group)
    before = values.clone()
    got = plan(values)
    assert torch.equal(values, before)   # the input is not modified
    for g, count in enumerate(counts):
        for row in range(g * group, (g + 1) * group):
            if count == 0:
                assert got[row].isnan()
            else:
                assert got[row].item() == pytest.approx(float(np.quantile(values[row, :count].numpy(), q)), abs=1e-6)
    median, mad = PrefixPlan.build(valid, 0.5, group).median_and_mad(values)
    row = values[0, :counts[0]].numpy()
    assert mad[0].item() == pytest.approx(float(np.median(np.abs(row - np.median(row)))), abs=1e-6)


def test_prepare_ladder_computes_what_the_plain_numpy_loop_computes():
    """The batched preparation against benchmarks/nmr_reference.py (one ladder at a time, float64 NumPy/SciPy,
    written from the description): the same targets, noise levels, scales, SNRs and weights. Run.py's row 5
    compares their speed, so a fast path that changes the result must fail here."""
    import numpy as np

    from benchmarks import nmr_reference
    from data_loader.nmr.fusion import prepare_ladder
    from data_loader.nmr.simulate import SimulationSettings, simulate_ladders

    spectra = simulate_ladders(SimulationSettings(length=2048, levels=4), 3, 7)["spectra"]
    ours = prepare_ladder(spectra)
    for b, ladder in enumerate(spectra.numpy()):
        ref = nmr_reference.prepare_one(ladder)
        scale = np.abs(ref["target"]).max()
        assert np.abs(ours.target[b].double().numpy() - ref["target"]).max() / scale < 1e-5
        for key in ("sigma", "scales", "snr", "weights"):
            assert np.allclose(getattr(ours, key)[b].double().numpy(), ref[key], rtol=1e-4, atol=1e-7), key
        assert np.array_equal(ours.peaks[b].numpy(), ref["peaks"])
