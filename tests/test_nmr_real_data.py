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
