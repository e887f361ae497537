"""The NMR ladder simulator and the pseudo-ground-truth fusion (issue 6)."""
from __future__ import annotations

import math

import pytest
import torch

from data_loader.nmr.fusion import fusion_weights, prepare_ladder
from data_loader.nmr.preprocess import fourier_shift
from data_loader.nmr.simulate import SimulationSettings, fid_from_multiplets, process, simulate_ladders

PLAIN = dict(phase_deg=0.0, baseline=0.0, shift_points=0.0, scale_range=[1.0, 1.0])


def one_multiplet(settings, centre_hz, nuclei=0, j_hz=0.0, area=1.0, lorentz=2.0):
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    fid = fid_from_multiplets(settings, t(centre_hz), t(area), t(lorentz), t(0.0), t(j_hz)[..., None],
                              torch.tensor([[[nuclei]]]))
    return process(settings, fid)[0]


def test_ladder_shapes_snr_and_noise_ratio():
    settings = SimulationSettings.from_dict({"levels": 4, "snr_ratio": 2.0, **PLAIN})
    data = simulate_ladders(settings, 64, seed=0, snr=10.0)
    assert data["spectra"].shape == (64, 4, settings.length) and data["clean"].shape == (64, settings.length)
    noise = (data["spectra"] - data["clean"][:, None]).double()
    sigma = noise.std(dim=-1)
    snr = data["clean"].double().amax(-1) / sigma[:, 0]
    assert snr.mean().item() == pytest.approx(10.0, rel=0.03)
    assert (sigma[:, :-1] / sigma[:, 1:]).mean().item() == pytest.approx(2.0, rel=0.03)
    assert torch.allclose(sigma.float(), data["sigma"], rtol=0.1)
    # levels are independent acquisitions: their noises are uncorrelated
    corr = torch.corrcoef(torch.stack([noise[:, 0].flatten(), noise[:, 1].flatten()]))[0, 1]
    assert abs(corr) < 0.02


def test_same_seed_same_ladders_and_errors_vary_per_level():
    settings = SimulationSettings()
    a, b = simulate_ladders(settings, 4, seed=3), simulate_ladders(settings, 4, seed=3)
    assert torch.equal(a["spectra"], b["spectra"])
    assert not torch.equal(a["spectra"], simulate_ladders(settings, 4, seed=4)["spectra"])
    # per-level normalisation: the levels' maxima differ by the random scale factors
    peaks = a["spectra"].amax(-1)
    assert (peaks.amax(1) / peaks.amin(1) > 1.2).any()


def test_line_lands_at_its_ppm_and_multiplets_split_by_j():
    s = SimulationSettings(lb_hz=0.0)
    ppm = s.ppm()
    assert ppm[0] > ppm[-1]
    singlet = one_multiplet(s, 200.0)
    expected = s.carrier_ppm + 200.0 / s.obs_mhz
    assert abs(ppm[singlet.argmax()].item() - expected) <= s.sw_hz / s.length / s.obs_mhz
    triplet = one_multiplet(s, 0.0, nuclei=2, j_hz=12.0)
    hz_per_point = s.sw_hz / s.length
    inner = triplet[1:-1]
    tops = torch.nonzero((inner > triplet[:-2]) & (inner > triplet[2:]) & (inner > 0.1 * triplet.max()))
    heights = triplet[tops[:, 0] + 1]
    assert len(tops) == 3
    assert heights[1] / heights[0] == pytest.approx(2.0, rel=0.05)
    assert (tops[1:, 0] - tops[:-1, 0]).double().mean().item() * hz_per_point == pytest.approx(12.0, abs=hz_per_point)


def test_integral_follows_area_not_width():
    s = SimulationSettings(lb_hz=0.0)
    narrow, broad = one_multiplet(s, 0.0, lorentz=1.5), one_multiplet(s, 0.0, lorentz=6.0)
    assert broad.sum().item() == pytest.approx(narrow.sum().item(), rel=0.03)
    assert broad.max() < 0.5 * narrow.max()


def test_bad_settings_are_reported():
    with pytest.raises(ValueError, match="unknown simulation setting"):
        SimulationSettings.from_dict({"lenght": 512})
    with pytest.raises(ValueError, match="snr_ratio"):
        SimulationSettings(snr_ratio=1.0)
    with pytest.raises(ValueError, match="length"):
        SimulationSettings(length=1001)


def test_fusion_weights_rules_and_caps():
    sigma = torch.tensor([[8.0, 4.0, 2.0, 1.0]])
    snr = 10 / sigma
    w = fusion_weights(sigma, snr, "inverse_variance")
    assert w[0, 0] == 0 and torch.allclose(w[0, 1:], torch.tensor([1.0, 4.0, 16.0]) / 21)
    assert torch.allclose(fusion_weights(sigma, snr, "inverse_variance", include_input=True)[0],
                          torch.tensor([1.0, 4.0, 16.0, 64.0]) / 85)
    assert torch.allclose(fusion_weights(sigma, snr, "snr", gamma=1.0)[0, 1:], torch.tensor([2.5, 5.0, 10.0]) / 17.5)
    assert torch.equal(fusion_weights(sigma, snr, "top_only")[0], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    capped = fusion_weights(sigma, snr, "inverse_variance", max_share=0.6)[0]
    assert capped.max().item() == pytest.approx(0.6) and capped.sum().item() == pytest.approx(1.0)
    assert capped[2] / capped[1] == pytest.approx(4.0)   # the rest keep their proportions
    with pytest.raises(ValueError, match="infeasible"):
        fusion_weights(sigma, snr, "inverse_variance", max_share=0.3)


def test_prepared_ladder_recovers_shifts_scales_and_t():
    settings = SimulationSettings.from_dict({"levels": 4, **PLAIN})
    data = simulate_ladders(settings, 32, seed=1, snr=10.0)
    true_shift = torch.tensor([0.0, 0.37, -0.61, 0.22]).repeat(32, 1)
    true_scale = torch.tensor([1.0, 0.5, 2.0, 1.3])
    moved = fourier_shift(data["spectra"].flatten(0, 1), true_shift.flatten()).view_as(data["spectra"])
    moved = moved * true_scale[None, :, None]
    ladder = prepare_ladder(moved)
    assert torch.equal(ladder.levels[:, 0], moved[:, 0])                 # the input is never modified
    # shifts are relative to level 0, whose own estimate carries its noise (about 0.3 points at max/σ 10);
    # between the two cleanest levels (max/σ 40 and 80) they are accurate to a few hundredths of a point
    relative = ladder.shifts[:, 3] - ladder.shifts[:, 2]
    assert (relative - (true_shift[:, 3] - true_shift[:, 2])).abs().mean() < 0.05
    assert (ladder.shifts - true_shift).abs().mean() < 0.3
    assert torch.allclose(ladder.scales.median(0).values, 1 / true_scale, rtol=0.01)
    assert ladder.estimated_ratio().median().item() == pytest.approx(2.0, rel=0.1)
    rms = lambda x: (x - data["clean"]).pow(2).mean(-1).sqrt().mean().item()  # noqa: E731
    assert rms(ladder.target) < rms(ladder.levels[:, -1]) < rms(ladder.levels[:, 0]) / 4
    # inverse-variance fusion beats the plan's SNR weighting and the top level alone
    assert rms(ladder.target) < rms(prepare_ladder(moved, weighting="snr").target)
    assert math.isclose(ladder.weights.sum(1).mean().item(), 1.0, rel_tol=1e-5)


def test_anchor_alignment_keeps_the_input_and_stays_close_to_global():
    data = simulate_ladders(SimulationSettings(length=1024, levels=3), 8, seed=2, snr=20.0)
    plain, local = prepare_ladder(data["spectra"]), prepare_ladder(data["spectra"], anchor_peaks=3)
    assert torch.equal(local.levels[:, 0], data["spectra"][:, 0])
    rms = lambda x: (x - data["clean"]).pow(2).mean(-1).sqrt().mean().item()  # noqa: E731
    assert rms(local.target) < 1.1 * rms(plain.target)  # no damage where the drift is uniform
