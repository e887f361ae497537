"""The NMR ladder simulator and the pseudo-ground-truth fusion (issue 6)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from data_loader.nmr.fusion import fusion_weights, prepare_ladder
from data_loader.nmr.preprocess import estimate_shift, fourier_shift
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


# --- the options for real data (issue 14): nuclei, windows, processing, phase, baseline, drift, mixtures -------
def dispersion(absorption: torch.Tensor) -> torch.Tensor:
    """The dispersion partner of real spectra ``(..., L)`` made with >= 2× zero filling (Hilbert transform)."""
    length = absorption.shape[-1]
    h = torch.zeros(length, dtype=torch.float64)
    h[0], h[1:length // 2], h[length // 2] = 1, 2, 1
    return torch.fft.fft(torch.fft.ifft(absorption.double()) * h).imag


def fwhm_points(spectrum: torch.Tensor) -> float:
    """Full width at half maximum (points, linearly interpolated) of the tallest line of ``(L,)``."""
    y, top = spectrum.double(), int(spectrum.argmax())
    half = y[top] / 2
    left = top
    while left > 0 and y[left - 1] > half:
        left -= 1
    right = top
    while right < len(y) - 1 and y[right + 1] > half:
        right += 1
    lo = left - 1 + (half - y[left - 1]) / (y[left] - y[left - 1])
    hi = right + (y[right] - half) / (y[right] - y[right + 1])
    return float(hi - lo)


def one_line(**options) -> SimulationSettings:
    return SimulationSettings.from_dict({**PLAIN, "multiplets": [1, 1], "max_couplings": 0, **options})


def test_defaults_reproduce_the_simulator_before_the_options():
    # figures of the simulator as it was before the real-data options (the quickstart's numbers depend on them)
    data = simulate_ladders(SimulationSettings.from_dict({"length": 1024, "levels": 3}), 16, seed=5, snr=10.0)
    assert data["spectra"].double().abs().sum().item() == pytest.approx(595381.8235798433, rel=1e-6)
    assert data["clean"].double().sum().item() == pytest.approx(76744.04124499916, rel=1e-6)
    assert data["spectra"][3, 2, 500].item() == pytest.approx(-3.509723424911499, rel=1e-5)


def test_13c_singlets_are_narrow_sparse_lines_on_a_wide_window_at_32768_points():
    settings = SimulationSettings.from_dict({"length": 32768, "levels": 3, "mixture": ["13c"], **PLAIN})
    regime = settings.regimes[0][0]
    assert regime.sw_hz == pytest.approx(25000.0) and regime.max_couplings == 0
    data = simulate_ladders(settings, 6, seed=0, snr=1e4)
    assert data["spectra"].shape == (6, 3, 32768) and torch.isfinite(data["spectra"]).all()
    widths = [fwhm_points(c) for c in data["clean"]]
    assert all(1.0 <= w <= 5.0 for w in widths), widths
    # sparse: the lines (at most 10) cover a small part of the window
    assert ((data["clean"] > 0.05 * data["clean"].amax(-1, keepdim=True)).double().mean(-1) < 0.01).all()
    noise = (data["spectra"] - data["clean"][:, None]).double().std(-1)
    assert (noise[:, :-1] / noise[:, 1:]).mean().item() == pytest.approx(2.0, rel=0.1)


def test_linewidth_in_points_follows_hz_per_point_at_any_length():
    for length in (1024, 8192):
        s = one_line(length=length, hz_per_point=1.0, linewidth_hz=[3.0, 3.0], gaussian_hz=[0.0, 0.0], lb_hz=1.0)
        clean = simulate_ladders(s, 2, seed=1, snr=1e4)["clean"]
        assert fwhm_points(clean[0]) == pytest.approx(4.0, rel=0.05)   # 3 Hz line + 1 Hz apodisation


def test_unapodised_truncated_fid_gives_sinc_wiggles_and_apodisation_removes_them():
    kwargs = dict(length=4096, hz_per_point=1.0, linewidth_hz=[0.3, 0.3], gaussian_hz=[0.0, 0.0], zero_fill=4)
    truncated = one_line(**kwargs, lb_hz=0.0)
    assert truncated.acquisition_s == pytest.approx(1024 / 4096)   # FID points / sw
    wiggly = simulate_ladders(truncated, 2, seed=2, snr=1e5)["clean"]
    smooth = simulate_ladders(one_line(**kwargs, lb_hz=8.0), 2, seed=2, snr=1e5)["clean"]
    assert (wiggly.amin(-1) / wiggly.amax(-1) < -0.1).all()    # negative side lobes of the truncation sinc
    assert (smooth.amin(-1) / smooth.amax(-1) > -0.01).all()
    # a FID that decays within the acquisition time needs no apodisation: Lorentzian without wiggles
    decayed = simulate_ladders(one_line(**{**kwargs, "linewidth_hz": [20.0, 20.0], "zero_fill": 2}, lb_hz=0.0),
                               2, seed=2, snr=1e5)["clean"]
    assert (decayed.amin(-1) / decayed.amax(-1) > -0.01).all()


def test_phase_errors_show_as_dispersion_of_the_drawn_angle():
    s = one_line(lb_hz=1.0, phase0_deg=30.0, phase1_deg=40.0, multiplets=[1, 1])
    data = simulate_ladders(s, 8, seed=3, snr=1e6)
    assert data["phase0"].abs().max() <= 30.0 and data["phase1"].abs().max() <= 40.0
    assert (data["phase0"][:, 1:] == data["phase0"][:, :1]).all()      # shared by the levels (phase_deg 0)
    for i in range(8):
        clean = data["clean"][i].double()
        fit = torch.stack([clean, dispersion(clean)], 1)
        a, b = torch.linalg.lstsq(fit, data["spectra"][i, 2].double()[:, None]).solution[:, 0]
        where = int(clean.argmax()) / s.length - 0.5
        expected = data["phase0"][i, 2].item() + data["phase1"][i].item() * where
        assert math.degrees(math.atan2(b, a)) == pytest.approx(expected, abs=0.3)
    plain = simulate_ladders(one_line(lb_hz=1.0), 2, seed=3, snr=1e6)
    assert torch.allclose(plain["spectra"][:, 0], plain["clean"], atol=1e-5 * plain["clean"].max().item())


def test_baseline_roll_has_its_amplitude_and_is_shared_by_the_levels():
    data = simulate_ladders(one_line(baseline_roll=0.05, multiplets=[1, 4]), 16, seed=4, snr=1e6)
    error = (data["spectra"] - data["clean"][:, None]).double() / data["clean"].amax(-1).double()[:, None, None]
    assert error.abs().amax(-1).flatten().tolist() == pytest.approx([0.05] * 64, rel=0.01)
    assert (error[:, 1:] - error[:, :1]).abs().max() < 1e-3
    # smooth: a roll, not noise (the second difference is tiny compared with the amplitude)
    assert error.diff(n=2, dim=-1).abs().max() < 1e-3


def test_per_level_drift_moves_and_broadens_levels_linearly_in_k():
    options = dict(length=4096, hz_per_point=0.5, linewidth_hz=[4.0, 4.0], gaussian_hz=[0.0, 0.0], lb_hz=0.5)
    moved = simulate_ladders(one_line(**options, drift_hz=1.0), 6, seed=5, snr=1e6)
    clean = moved["clean"].double()
    assert torch.allclose(moved["spectra"][:, 0].double(), clean, atol=1e-4 * clean.max().item())  # level 0: frame
    for ladder in moved["spectra"].double():
        moves = estimate_shift(ladder, ladder[0])          # points
        assert moves[1].abs() <= 1.0 / 0.5 + 0.05          # |d| <= drift_hz
        assert torch.allclose(moves, torch.arange(4) * moves[1], atol=0.05)
    # broadening (without a shift, so each level samples its line at the same sub-point position)
    broadened = simulate_ladders(one_line(**options, drift_linewidth_hz=0.5), 6, seed=5, snr=1e6)
    for ladder in broadened["spectra"].double():
        widths = torch.tensor([fwhm_points(level) for level in ladder])
        step = widths[1] - widths[0]
        assert step.abs() <= 2 * 0.5 + 0.05                # |b| <= drift_linewidth_hz, 2 points per Hz
        assert torch.allclose(widths - widths[0], torch.arange(4) * step, atol=0.15)   # interpolated FWHM


def test_noise_is_processed_like_the_signal_apodisation_correlates_it():
    def lag1(settings):
        data = simulate_ladders(settings, 32, seed=6, snr=10.0)
        noise = (data["spectra"] - data["clean"][:, None]).double()
        a, b = noise[..., :-1].flatten(), noise[..., 1:].flatten()
        return torch.corrcoef(torch.stack([a, b]))[0, 1].item(), data, noise

    plain, data, noise = lag1(SimulationSettings.from_dict({**PLAIN, "lb_hz": 0.0, "zero_fill": 1}))
    assert abs(plain) < 0.02                                              # unapodised, no zero fill: white
    apodised, data, noise = lag1(SimulationSettings.from_dict({**PLAIN, "lb_hz": 5.0, "zero_fill": 2}))
    assert apodised > 0.3
    # sigma (the processed noise's true standard deviation) and T still hold for correlated noise
    assert (noise.std(-1) / data["sigma"]).mean().item() == pytest.approx(1.0, rel=0.05)
    assert (noise.std(-1)[:, :-1] / noise.std(-1)[:, 1:]).mean().item() == pytest.approx(2.0, rel=0.1)


def test_mixture_draws_regimes_by_weight_and_keeps_sigma_and_t():
    mixture = [{"preset": "1h", "weight": 3.0}, {"preset": "31p", "weight": 1.0, "snr": [8.0, 8.0]}]
    settings = SimulationSettings.from_dict({"length": 256, "levels": 3, "snr_ratio": 3.0, "mixture": mixture,
                                             **PLAIN})
    data = simulate_ladders(settings, 1200, seed=7)
    assert (data["regime"] == 0).double().mean().item() == pytest.approx(0.75, abs=0.05)
    noise = (data["spectra"] - data["clean"][:, None]).double().std(-1)
    assert (noise[:, :-1] / noise[:, 1:]).mean().item() == pytest.approx(3.0, rel=0.1)
    snr = data["clean"].double().amax(-1) / noise[:, 0]
    assert snr[data["regime"] == 1].mean().item() == pytest.approx(8.0, rel=0.1)
    again = simulate_ladders(settings, 1200, seed=7)
    assert torch.equal(data["spectra"], again["spectra"])
    with pytest.raises(ValueError, match="unknown preset"):
        SimulationSettings.from_dict({"mixture": ["19f"]})
    with pytest.raises(ValueError, match="shared by every ladder"):
        SimulationSettings.from_dict({"mixture": [{"length": 512}]})
    with pytest.raises(ValueError, match=r"mixture\[0\]: .*zero_fill"):
        SimulationSettings.from_dict({"mixture": [{"zero_fill": 3}]})


def test_large_requests_are_chunked_deterministically(monkeypatch):
    import data_loader.nmr.simulate as simulate
    monkeypatch.setattr(simulate, "_CHUNK_VALUES", 4 * 4 * 1024)   # 4 ladders of 4 levels of 1,024 FID points
    settings = SimulationSettings.from_dict(PLAIN)
    a, b = simulate_ladders(settings, 10, seed=8, snr=10.0), simulate_ladders(settings, 10, seed=8, snr=10.0)
    assert a["spectra"].shape == (10, 4, 2048) and torch.equal(a["spectra"], b["spectra"])
    noise = (a["spectra"] - a["clean"][:, None]).double().std(-1)
    assert (a["clean"].double().amax(-1) / noise[:, 0]).mean().item() == pytest.approx(10.0, rel=0.05)


def _noise_acf(noise: torch.Tensor, lags) -> list[float]:
    """Autocorrelation of zero-mean noise ``(..., L)`` at ``lags`` (about zero, not the sample mean: the excess
    noise is slow, so a per-spectrum mean would remove part of it), averaged over all leading dimensions."""
    power = noise.pow(2).mean()
    return [((noise[..., :-k] * noise[..., k:]).mean() / power).item() if k else 1.0 for k in lags]


def test_early_noise_is_lorentzian_correlated_with_the_stated_half_width_and_exact_sigma():
    # f = 0.4 of the variance in early-FID noise of tau = 4 ms: HWHM 1/(2 pi tau) = 39.8 Hz = 39.8 points here
    fraction, tau = 0.4, 4.0
    hwhm = 1 / (2 * math.pi * tau * 1e-3)
    options = {**PLAIN, "length": 2048, "levels": 3, "hz_per_point": 1.0, "lb_hz": 0.3}
    coloured = SimulationSettings.from_dict({**options, "early_noise": [fraction, fraction],
                                             "early_noise_ms": [tau, tau]})
    data = simulate_ladders(coloured, 96, seed=11, snr=10.0)
    noise = (data["spectra"] - data["clean"][:, None]).double()
    acf = _noise_acf(noise, [5, round(hwhm), 4 * round(hwhm)])
    # the white part is uncorrelated beyond 2 points, so the acf is f / (1 + (k / hwhm)^2)
    for value, lag in zip(acf, [5, round(hwhm), 4 * round(hwhm)]):
        assert value == pytest.approx(fraction / (1 + (lag / hwhm) ** 2), abs=0.04)
    white = simulate_ladders(SimulationSettings.from_dict(options), 96, seed=11, snr=10.0)
    white_noise = (white["spectra"] - white["clean"][:, None]).double()
    assert abs(_noise_acf(white_noise, [round(hwhm)])[0]) < 0.02
    # sigma is the processed noise's true RMS (white + excess), level 0 has the asked max/sigma, and T holds
    rms = noise.pow(2).mean(-1).sqrt()
    assert (rms / data["sigma"]).mean().item() == pytest.approx(1.0, rel=0.03)
    assert (data["clean"].double().amax(-1) / data["sigma"][:, 0].double()).mean().item() == pytest.approx(
        10.0, rel=1e-4)
    assert (data["sigma"][:, :-1] / data["sigma"][:, 1:]).mean().item() == pytest.approx(2.0, rel=1e-4)
    assert (rms[:, :-1] / rms[:, 1:]).mean().item() == pytest.approx(2.0, rel=0.05)
    # every level draws its own excess noise: the levels' noises stay uncorrelated
    corr = torch.corrcoef(torch.stack([noise[:, 0].flatten(), noise[:, 1].flatten()]))[0, 1]
    assert abs(corr) < 0.03


def test_early_noise_fraction_is_drawn_per_ladder_and_sigma_follows_each_draw():
    settings = SimulationSettings.from_dict({**PLAIN, "length": 1024, "levels": 2, "early_noise": [0.0, 0.6],
                                             "early_noise_ms": [0.5, 2.0]})
    data = simulate_ladders(settings, 128, seed=12, snr=10.0)
    noise = (data["spectra"] - data["clean"][:, None]).double()
    rms = noise.pow(2).mean(-1).sqrt()
    # per ladder, the RMS over 1,024 points scatters around sigma, more for the slower excess; on average exact
    assert (rms / data["sigma"]).mean().item() == pytest.approx(1.0, rel=0.03)
    lag = _noise_acf(noise[:, 0], [20])[0]
    # f averages 0.3 (more weight on the larger ones in a power-weighted acf), and with 1.95 Hz per point the
    # half width is 41-163 points, so at 20 points the acf is 0.8-1 times f
    assert 0.2 < lag < 0.4
    spread = torch.tensor([_noise_acf(noise[i, 0], [20])[0] for i in range(len(noise))])
    assert spread.std().item() > 0.08   # different ladders, different fractions
    assert torch.equal(data["spectra"], simulate_ladders(settings, 128, seed=12, snr=10.0)["spectra"])


def test_early_noise_is_off_by_default_and_bad_values_are_reported():
    assert SimulationSettings().early_noise == (0.0, 0.0)
    with pytest.raises(ValueError, match=r"early_noise must be \[low, high\] with 0 <= low <= high < 1"):
        SimulationSettings.from_dict({"early_noise": [0.2, 1.0]})
    with pytest.raises(ValueError, match="early_noise must be"):
        SimulationSettings.from_dict({"early_noise": [0.5, 0.2]})
    with pytest.raises(ValueError, match="early_noise_ms must be"):
        SimulationSettings.from_dict({"early_noise_ms": [0.0, 1.0]})
    with pytest.raises(ValueError, match=r"mixture\[0\]: early_noise must be"):
        SimulationSettings.from_dict({"mixture": [{"preset": "1h", "early_noise": [-0.1, 0.2]}]})


@pytest.mark.parametrize("override, section, message", [
    ("data_loader.args.simulation.early_noise=[0.5, 1.2]", "data_loader",
     'config["data_loader"] (NMRSimulated): simulation: early_noise must be [low, high] with 0 <= low <= high < 1'),
    ('data_loader.args.simulation.early_noise_ms="1 ms"', "data_loader",
     'config["data_loader"] (NMRSimulated): simulation.early_noise_ms must be a list'),
    ('data_loader.args.simulation.mixture=[{"preset": "1h", "early_noise": [0.9, 0.2]}]', "data_loader",
     'config["data_loader"] (NMRSimulated): simulation: mixture[0]: early_noise must be'),
    ("data_loader.args.eval_simulation.early_noise_ms=[0, 1]", "data_loader",
     'config["data_loader"] (NMRSimulated): eval_simulation: early_noise_ms must be [low, high] with 0 < low'),
    ("loss.args.integral_window=1", "loss",
     'config["loss"] (NMRDenoiseLoss): integral_window must be an integer >= 2'),
])
def test_the_real_noise_options_in_a_config_are_errors_that_name_the_config_path(override, section, message):
    import re

    from parse_config import ConfigParser, apply_override, load_json
    from utils.errors import ConfigError

    values = load_json(Path(__file__).resolve().parents[1] / "configs" / "nmr" / "pretrained_general.json")
    apply_override(values, override)
    config = ConfigParser(values, source="pretrained_general.json")
    with pytest.raises(ConfigError, match=re.escape("pretrained_general.json: " + message)):
        config.build_data_loader(training=True) if section == "data_loader" else config.build(section)
