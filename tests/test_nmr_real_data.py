"""benchmarks/nmr_real_data.py and benchmarks/nmr_peer.py on generated data (nothing is downloaded, no nmrdenoise)."""
import json
import pickle
import sys
import types

import nmrglue as ng
import numpy as np
import pytest

from benchmarks.nmr_peer import format_table, score_set, simulated_set, zeros
from benchmarks.nmr_real_data import RestrictedUnpickler, build, load_restricted, window_starts
from data_loader.nmr.io import read_directory


def _write_bruker(directory, sw=5000.0, obs=400.0, td=8192, seed=0):
    """A Bruker 1D 1H experiment of a few Lorentzian lines written with nmrglue (no digital filter)."""
    rng = np.random.default_rng(seed)
    t = np.arange(td // 2) / sw
    fid = sum(h * np.exp(2j * np.pi * f * t - t / 0.3) for f, h in zip(rng.uniform(-2400, 2400, 12),
                                                                       rng.uniform(0.3, 1.0, 12)))
    udic = {"ndim": 1, 0: {"sw": sw, "complex": True, "obs": obs, "car": 4.7 * obs, "size": td // 2, "label": "1H",
                           "encoding": "direct", "time": True, "freq": False}}
    dic = ng.bruker.create_dic(udic)
    dic["acqus"].update({"NUC1": "<1H>", "SFO1": obs, "BF1": obs, "SW_h": sw, "O1": 4.7 * obs, "NS": 16,
                         "PULPROG": "<zg30>", "DECIM": 1, "DSPFVS": 20, "GRPDLY": 0.0, "TD": td})
    directory.mkdir(parents=True)
    ng.bruker.write(str(directory), dic, (fid * 1e6).astype(np.complex128), overwrite=True)


def test_ladders_from_a_bruker_experiment(tmp_path):
    _write_bruker(tmp_path / "src" / "sample" / "10")
    out = tmp_path / "ladders"
    written = build([tmp_path / "src"], out, length=1024, hz_per_point=1.0, reference_blocks=256, snr=10.0)
    assert written, "no ladder was written"
    groups = read_directory(out)  # the project's own reader accepts them
    blocks = json.loads((out / "blocks.json").read_text())["blocks_per_level"]
    assert blocks == [1, 4, 16, 64]
    for group in groups:
        assert group.spectra.shape == (4, 1024) and group.clean is not None and group.ppm is not None
        assert np.all(np.diff(group.ppm) < 0)
        assert not (group.ppm.max() >= 4.5 and group.ppm.min() <= 5.1)  # no window straddles the water region
        noise = group.spectra - group.clean
        sigma = noise.std(axis=1)
        ratios = sigma[:-1] / sigma[1:]
        assert np.all((ratios > 1.5) & (ratios < 2.6)), ratios  # T = 2 per level (reference noise included)
        assert group.clean.max() / sigma[0] == pytest.approx(10.0, rel=0.25)
        # the reference is independent of the input: its noise does not correlate with level 0's
        ref_noise = group.clean - np.median(group.spectra[1:], axis=0)
        assert abs(np.corrcoef(noise[0], ref_noise)[0, 1]) < 0.2


def test_window_starts_tile_outwards_from_water():
    ppm = np.linspace(12.0, -2.0, 8192)
    starts = window_starts(ppm, 1024)
    for start in starts:
        window = ppm[start:start + 1024]
        assert len(window) == 1024 and (window.min() > 5.1 or window.max() < 4.5 + 1e-9)
    assert len(set(starts)) == len(starts)


def _fake_metabolab_pickle():
    """A pickle naming metabolabpy classes, as nmrDataSet.dat files do, made without metabolabpy."""
    module = types.ModuleType("metabolabpy.nmr.nmrData")

    class NmrData:
        pass

    NmrData.__module__, NmrData.__qualname__ = module.__name__, "NmrData"
    module.NmrData = NmrData
    saved = {name: sys.modules.get(name) for name in ("metabolabpy", "metabolabpy.nmr", module.__name__)}
    sys.modules.update({"metabolabpy": types.ModuleType("metabolabpy"),
                        "metabolabpy.nmr": types.ModuleType("metabolabpy.nmr"), module.__name__: module})
    try:
        data = NmrData()
        data.fid = np.arange(8, dtype=np.complex128).reshape(1, 8)
        data.title = "sample"
        return pickle.dumps(data, protocol=4)
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value


def test_restricted_unpickler_admits_metabolab_data_and_refuses_code(tmp_path):
    path = tmp_path / "nmrDataSet.dat"
    path.write_bytes(_fake_metabolab_pickle())
    data = load_restricted(path)
    assert data.title == "sample" and data.fid.shape == (1, 8)

    class Evil:
        def __reduce__(self):
            import os

            return os.system, ("echo unpickled",)

    import io

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


def test_peer_harness_scores_methods_without_the_peer():
    data = simulated_set(4, snr=10.0, seed=5)
    methods = {"identity": lambda x: np.array(x, dtype=np.float64), "zeros": zeros}
    scored = score_set(data, methods)
    rows = scored["methods"]
    assert {"input", "savgol", "apodisation", "identity"} <= set(rows)
    clean = data["references"]
    expected = np.mean([np.sqrt(np.mean(c ** 2)) / np.abs(c).max() for c in clean])
    assert rows["zeros"]["l2"] == pytest.approx(expected)
    assert rows["identity"]["l2"] == pytest.approx(rows["input"]["l2"])
    assert rows["input"]["equivalent_gain_median"] == pytest.approx(1.0, rel=0.25)
    assert "| identity |" in format_table(scored)


def _write_repeat(directory, noise, seed, scale=1.0, sw=8223.68, obs=400.13, td=16384, autopos="2"):
    """A Bruker 1D 1H experiment: lines between 0.5 and 9.5 ppm (always the same, drawn from seed 0) times
    ``scale``, plus complex white noise of σ ``noise`` drawn from ``seed``; returns the noise-free FID."""
    rng = np.random.default_rng(0)
    t = np.arange(td // 2) / sw
    freqs = (rng.uniform(0.6, 9.4, 10) - 4.7) * obs
    clean = sum(h * np.exp(2j * np.pi * f * t - t / 0.3) for f, h in zip(freqs, rng.uniform(0.3, 1.0, 10)))
    noisy = scale * clean + noise * (np.array([1, 1j]) @ np.random.default_rng(seed).standard_normal((2, td // 2)))
    udic = {"ndim": 1, 0: {"sw": sw, "complex": True, "obs": obs, "car": 4.7 * obs, "size": td // 2, "label": "1H",
                           "encoding": "direct", "time": True, "freq": False}}
    dic = ng.bruker.create_dic(udic)
    dic["acqus"].update({"NUC1": "<1H>", "SFO1": obs, "BF1": obs, "SW_h": sw, "O1": 4.7 * obs, "NS": 4, "RG": 4,
                         "PULPROG": "<zgpsd0>", "DECIM": 1, "DSPFVS": 20, "GRPDLY": 0.0, "TD": td,
                         "AUTOPOS": f"<{autopos}>"})
    directory.mkdir(parents=True)
    ng.bruker.write(str(directory), dic, (noisy * 1e6).astype(np.complex128), overwrite=True)
    return clean * 1e6


def test_repeat_pairs_real_noise_and_noise2noise_on_generated_repeats(tmp_path):
    from scipy.signal import savgol_filter

    from benchmarks.nmr_real_data import (
        _SEEN,
        bruker_experiments,
        pair_diagnostics,
        pair_noise,
        process_pair,
        realnoise_ladders,
        repeat_groups,
    )
    from data_loader.nmr.io import process_fid
    from model.nmr_equivalent import noise2noise_errors

    _SEEN.clear()
    clean_fid = _write_repeat(tmp_path / "tube" / "21", 0.02, seed=1)
    _write_repeat(tmp_path / "tube" / "22", 0.02, seed=2)
    _write_repeat(tmp_path / "other" / "11", 0.02, seed=3, scale=1.05, autopos="5")  # another tube: 5 % more
    experiments = bruker_experiments(tmp_path, "t")
    pairs = {(p["a"].info["path"], p["b"].info["path"]): p for p in repeat_groups(experiments)}
    assert len(pairs) == 3
    same = [p for p in pairs.values() if p["same_tube"]]
    assert len(same) == 1 and {same[0]["a"].info["path"], same[0]["b"].info["path"]} == {"tube/21", "tube/22"}

    x1, x2, ppm, processing = process_pair(same[0]["a"], same[0]["b"])
    diag = pair_diagnostics(x1, x2, ppm)
    assert diag["mismatch"] == pytest.approx(1.0, abs=0.25)  # a true repeat: only noise differs
    assert diag["sigma_x1"] == pytest.approx(diag["sigma_d"], rel=0.2)  # d has one acquisition's noise level
    other = next(p for p in pairs.values() if not p["same_tube"])
    assert pair_diagnostics(*process_pair(other["a"], other["b"])[:3])["mismatch"] > 2  # 5 % of sparse lines

    # Noise2Noise on the true repeat agrees with the error to the known truth
    truth = process_fid(clean_fid[:processing["fid_points"]], same[0]["a"].sw_hz, processing["size"], 0.3,
                        processing["p0"], processing["p1"])
    out = savgol_filter(x1, 11, 3)
    errors = noise2noise_errors(out, x1, x2)
    assert errors["err2_output"] == pytest.approx(np.sum((out - truth) ** 2), rel=0.15)
    assert errors["err2_input"] == pytest.approx(np.sum((x1 - truth) ** 2), rel=0.1)

    # real-signal + real-noise ladders: S + a d / sqrt(n), clean = S, level 0 at the asked max/σ
    d = pair_noise(x1, x2, ppm)
    assert len(d) >= 1024
    ladders = realnoise_ladders([("s", x1, ppm)], [("d", d)], length=1024, snr=10.0, blocks=[1, 4, 16, 64])
    assert ladders
    for ladder in ladders:
        spectra, clean = ladder["arrays"]["spectra"], ladder["arrays"]["clean"]
        noise = spectra - clean
        assert np.allclose(noise[0], 2 * noise[1]) and np.allclose(noise[0], 8 * noise[3])
        assert ladder["meta"]["snr0"] == pytest.approx(10.0, rel=1e-6)
        assert ladder["meta"]["reference_snr"] > 100


def test_build_repeats_and_peer_rows_without_the_peer(tmp_path):
    from benchmarks.nmr_peer import format_pairs, real_set, repeat_pair_set, score_pairs
    from benchmarks.nmr_real_data import _SEEN, build_repeats

    _SEEN.clear()
    _write_repeat(tmp_path / "src" / "tube" / "21", 0.02, seed=1)
    _write_repeat(tmp_path / "src" / "tube" / "22", 0.02, seed=2)
    summary = build_repeats([tmp_path / "src"], tmp_path / "rep", snrs=(10.0,), length=1024)
    assert len(summary["pairs"]) == 1 and summary["pairs"][0]["same_tube"]
    assert summary["realnoise"]["realnoise_snr10"] > 0
    pairs = repeat_pair_set(tmp_path / "rep", length=1024)
    scored = score_pairs(pairs, {"zeros": zeros})
    assert scored["methods"]["input"]["equivalent_gain_median"] == pytest.approx(1.0)
    assert scored["methods"]["zeros"]["equivalent_gain_peaks_median"] < 0.2  # erasing loses on the peaks
    assert "same tube: True" in format_pairs(scored)
    ladders = real_set(tmp_path / "rep" / "realnoise_snr10")
    result = score_set(ladders, {"zeros": zeros})
    assert result["methods"]["input"]["equivalent_gain_median"] == pytest.approx(1.0, rel=1e-3)
