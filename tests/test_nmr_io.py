"""NMR file reading: .npz/.npy groups, directories, manifests over Bruker / Varian / NMRPipe files, FID processing."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import nmrglue as ng
import numpy as np
import pytest

from data_loader.nmr.io import (
    SpectrumGroup,
    process_fid,
    read_directory,
    read_manifest,
    read_npy,
    read_npz,
    read_single,
)
from data_loader.nmr.io import ppm_axis as make_ppm_axis
from utils.errors import DataError

TD, SW, OBS, CAR_PPM, OFFSET_HZ = 512, 5000.0, 500.13, 4.7, 400.0  # complex points, Hz, MHz, ppm, Hz
SIZE = 1024  # default processing size for TD=512 (next power of two >= 2 TD)
LINE_PPM = CAR_PPM + OFFSET_HZ / OBS
NOISE_SD = (0.3, 0.05)  # level 0 (noisiest), level 1


def simulate_fid(noise_sd: float, seed: int, td: int = TD) -> np.ndarray:
    """One damped line at +OFFSET_HZ above the carrier (exp(+2 pi i f t) convention) plus complex white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(td) / SW
    noise = rng.normal(0, noise_sd, td) + 1j * rng.normal(0, noise_sd, td)
    return np.exp(2j * np.pi * OFFSET_HZ * t - t / 0.05) + noise


def axis_udic(size: int, time: bool) -> dict:
    """nmrglue universal dictionary for the simulated 1H axis: complex FID, or real spectrum."""
    udic = ng.fileiobase.create_blank_udic(1)
    udic[0].update(size=size, complex=time, sw=SW, obs=OBS, car=CAR_PPM * OBS, label="1H", time=time, freq=not time)
    return udic


def write_bruker(directory: Path, fid: np.ndarray, grpdly: float = 67.985) -> None:
    """Bruker experiment directory (acqus, pulseprogram, fid as float64, pdata/1/procs) with a digital filter delay."""
    dic = ng.bruker.create_dic(axis_udic(len(fid), time=True))
    dic["acqus"].update(SW_h=SW, SFO1=OBS + CAR_PPM * OBS * 1e-6, O1=CAR_PPM * OBS, BF1=OBS, NUC1="1H", DECIM=1680,
                        DSPFVS=20, GRPDLY=grpdly, BYTORDA=0, DTYPA=2)
    dic["procs"] = {"_comments": [], "_coreheader": ["##TITLE= test"], "SF": OBS, "SI": SIZE, "SW_p": SW}
    directory.mkdir(parents=True)
    # the spectrometer's filter delays the signal by GRPDLY points; undo what remove_digital_filter will do
    ng.bruker.write(str(directory), dic, ng.proc_base.fsh2(fid, -grpdly), write_procs=True, pdata_folder=1)


def write_pipe(path: Path, fid: np.ndarray) -> None:
    """Time-domain 1D NMRPipe file."""
    ng.pipe.write(str(path), ng.pipe.create_dic(axis_udic(len(fid), time=True)), fid.astype(np.complex64))


def write_varian(directory: Path, fid: np.ndarray) -> None:
    """Varian directory (fid + procpar); rfl = sw/2, rfp = carrier puts the carrier at the centre."""
    dic = ng.varian.create_dic(axis_udic(len(fid), time=True))
    for key, value in {"sw": SW, "sfrq": OBS, "rfl": SW / 2, "rfp": CAR_PPM * OBS}.items():
        dic["procpar"][key] = ng.varian.create_pdic_param(key, [repr(value)])
    directory.mkdir(parents=True)
    ng.varian.write(str(directory), dic, fid.astype(np.complex64))


def write_bruker_pdata(directory: Path, spectrum: np.ndarray) -> None:
    """Bruker pdata/1 directory holding a real 1r spectrum (float64) and procs referencing index 0."""
    offset = float(make_ppm_axis(len(spectrum), SW, OBS, CAR_PPM * OBS)[0])
    dic = {"procs": {"_comments": [], "_coreheader": ["##TITLE= test"], "SF": OBS, "SI": len(spectrum), "SW_p": SW,
                     "XDIM": len(spectrum), "OFFSET": offset, "NC_proc": 0, "AXNUC": "1H", "DTYPP": 2,
                     "BYTORDP": 0, "MC2": 0}}
    ng.bruker.write_pdata(str(directory), dic, spectrum, scale_data=True, write_procs=True, pdata_folder=1,
                          isfloat=True)


WRITERS = {"bruker": (write_bruker, "exp{level}"), "pipe": (write_pipe, "lvl{level}.fid"),
           "varian": (write_varian, "lvl{level}.fid")}


def write_ladder(root: Path, fmt: str, group: str = "g") -> list[dict]:
    """Write levels 0 and 1 of one group in ``fmt`` under ``root/group``; manifest entries relative to root."""
    writer, pattern = WRITERS[fmt]
    entries = []
    for level, sd in enumerate(NOISE_SD):
        rel = f"{group}/{pattern.format(level=level)}"
        (root / group).mkdir(exist_ok=True)
        writer(root / rel, simulate_fid(sd, seed=level + 10 * len(group)))
        entries.append({"group": group, "level": level, "path": rel})
    return entries


def write_csv(path: Path, entries: list[dict], with_format: bool = False) -> None:
    """CSV manifest with header group,level,path[,format]."""
    header = "group,level,path" + (",format" if with_format else "")
    lines = [header] + [",".join(str(entry.get(key, "")) for key in header.split(",")) for entry in entries]
    path.write_text("\n".join(lines) + "\n")


def check_simulated_group(group: SpectrumGroup) -> None:
    """Shape (2, SIZE), peak at LINE_PPM within one point, level 0 noisier than level 1."""
    assert group.spectra.shape == (2, SIZE) and group.spectra.dtype == np.float64
    assert group.ppm.shape == (SIZE,) and np.all(np.diff(group.ppm) < 0)
    step = abs(group.ppm[1] - group.ppm[0])
    np.testing.assert_allclose(group.ppm, make_ppm_axis(SIZE, SW, OBS, CAR_PPM * OBS), atol=step / 2)
    expected = int(np.argmin(np.abs(group.ppm - LINE_PPM)))
    assert abs(int(np.argmax(group.spectra[1])) - expected) <= 1
    far = np.abs(np.arange(SIZE) - expected) > 150  # baseline region away from the line
    noise = group.spectra[:, far].std(axis=1)
    assert noise[0] > 2 * noise[1]


# ---------------------------------------------------------------------------------------------------------------
# .npz / .npy / read_single


def test_npz_round_trip_with_ppm_and_clean(tmp_path):
    spectra, ppm, clean = np.random.default_rng(0).normal(size=(3, 64)), np.linspace(10, 0, 64), np.ones(64)
    np.savez(tmp_path / "s1.npz", spectra=spectra.astype(np.float32), ppm=ppm, clean=clean)
    group = read_npz(tmp_path / "s1.npz")
    assert group.name == "s1" and group.sources == [str(tmp_path / "s1.npz")]
    assert group.spectra.dtype == np.float64 and group.spectra.shape == (3, 64)
    np.testing.assert_allclose(group.spectra, spectra.astype(np.float32))
    np.testing.assert_array_equal(group.ppm, ppm)
    np.testing.assert_array_equal(group.clean, clean)


def test_npy_and_directory_sorted(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "c.npy", rng.normal(size=(4, 32)))
    np.savez(tmp_path / "a.npz", spectra=rng.normal(size=(4, 48)))
    np.save(tmp_path / "b.npy", rng.integers(0, 9, size=(4, 16)))
    (tmp_path / "README.txt").write_text("not a spectrum")
    assert read_npy(tmp_path / "c.npy").spectra.shape == (4, 32)
    groups = read_directory(tmp_path, levels=4)
    assert [g.name for g in groups] == ["a", "b", "c"]
    assert [g.spectra.shape for g in groups] == [(4, 48), (4, 16), (4, 32)]
    assert all(g.spectra.dtype == np.float64 for g in groups)


def test_read_single_shapes(tmp_path):
    np.save(tmp_path / "one.npy", np.arange(10.0))
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 10)))
    assert read_single(tmp_path / "one.npy").spectra.shape == (1, 10)
    with pytest.raises(DataError, match="cube.npy"):
        read_single(tmp_path / "cube.npy")
    with pytest.raises(DataError, match="one.npy.*allow_single"):
        read_npy(tmp_path / "one.npy")


def _nan(path):
    spectra = np.zeros((3, 20))
    spectra[1, [2, 5]] = np.nan
    np.savez(path.with_suffix(".npz"), spectra=spectra)
    return path.with_suffix(".npz"), "level row 1 has 2 NaN"


def _inf(path):
    spectra = np.zeros((3, 20))
    spectra[2, 0] = np.inf
    np.save(path.with_suffix(".npy"), spectra)
    return path.with_suffix(".npy"), "level row 2 has 0 NaN and 1 Inf"


def _complex(path):
    np.savez(path.with_suffix(".npz"), spectra=np.zeros((2, 20), dtype=complex))
    return path.with_suffix(".npz"), "real part"


def _object_npy(path):
    np.save(path.with_suffix(".npy"), np.array([np.zeros(3), np.zeros(4)], dtype=object), allow_pickle=True)
    return path.with_suffix(".npy"), "object array"


def _object_npz(path):
    np.savez(path.with_suffix(".npz"), spectra=np.array([np.zeros(3), np.zeros(4)], dtype=object))
    return path.with_suffix(".npz"), "object array"


def _ppm_length(path):
    np.savez(path.with_suffix(".npz"), spectra=np.zeros((2, 20)), ppm=np.zeros(19))
    return path.with_suffix(".npz"), "'ppm' has shape \\(19,\\)"


def _unknown_key(path):
    np.savez(path.with_suffix(".npz"), spectra=np.zeros((2, 20)), noise=np.zeros(20))
    return path.with_suffix(".npz"), "unknown key.*'noise'.*allowed keys"


def _one_point(path):
    np.save(path.with_suffix(".npy"), np.zeros((3, 1)))
    return path.with_suffix(".npy"), "fewer than 2 points"


@pytest.mark.parametrize("make", [_nan, _inf, _complex, _object_npy, _object_npz, _ppm_length, _unknown_key,
                                  _one_point])
def test_bad_file_names_the_file(tmp_path, make):
    path, pattern = make(tmp_path / "bad_sample")
    reader = read_npz if path.suffix == ".npz" else read_npy
    with pytest.raises(DataError, match=pattern) as info:
        reader(path)
    assert "bad_sample" in str(info.value)
    with pytest.raises(DataError, match="bad_sample"):
        read_directory(tmp_path)


def test_ragged_levels(tmp_path):
    np.savez(tmp_path / "full.npz", spectra=np.zeros((4, 8)))
    np.savez(tmp_path / "short.npz", spectra=np.zeros((3, 8)))
    with pytest.raises(DataError, match=r"short\.npz.*3 levels, expected 4 \(levels=4\)"):
        read_directory(tmp_path, levels=4)
    with pytest.raises(DataError, match=r"full\.npz.*4 levels, expected 3"):
        read_directory(tmp_path, levels=3)
    np.savez(tmp_path / "full2.npz", spectra=np.zeros((4, 8)))
    with pytest.raises(DataError, match=r"short\.npz.*3 levels, expected 4.*level 3 is missing"):
        read_directory(tmp_path)


def test_directory_errors(tmp_path):
    with pytest.raises(DataError, match="not found.*npz"):
        read_directory(tmp_path / "nowhere")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DataError, match=f"{tmp_path.name}: no usable files.*spectra.*manifest"):
        read_directory(tmp_path)
    np.savez(tmp_path / "dup.npz", spectra=np.zeros((2, 8)))
    np.save(tmp_path / "dup.npy", np.zeros((2, 8)))
    with pytest.raises(DataError, match=r"'dup' is used twice.*dup\.np"):
        read_directory(tmp_path)


def test_single_level_groups_need_allow_single(tmp_path):
    np.save(tmp_path / "one.npy", np.ones(8))
    with pytest.raises(DataError, match="one.npy"):
        read_directory(tmp_path)
    assert read_directory(tmp_path, allow_single=True)[0].spectra.shape == (1, 8)


# ---------------------------------------------------------------------------------------------------------------
# FID processing


def test_process_fid_line_lands_where_ppm_axis_says():
    t = np.arange(TD) / SW
    for offset in (-1234.0, 0.0, OFFSET_HZ):
        spectrum = process_fid(np.exp(2j * np.pi * offset * t - t / 0.05), SW)
        ppm = make_ppm_axis(len(spectrum), SW, OBS, CAR_PPM * OBS)
        assert spectrum.shape == (SIZE,) and spectrum.dtype == np.float64
        assert int(np.argmax(spectrum)) == int(np.argmin(np.abs(ppm - (CAR_PPM + offset / OBS))))
    uc = ng.fileiobase.uc_from_udic(axis_udic(SIZE, time=False))
    np.testing.assert_allclose(make_ppm_axis(SIZE, SW, OBS, CAR_PPM * OBS), uc.ppm_scale())


def test_process_fid_options():
    fid = simulate_fid(0.1, seed=3)
    plain, broadened = process_fid(fid, SW), process_fid(fid, SW, lb_hz=5.0)
    assert broadened.max() < plain.max()  # em broadens the line
    assert process_fid(fid, SW, size=4096).shape == (4096,)
    dephased = fid * np.exp(1j * np.deg2rad(60))
    assert process_fid(dephased, SW, p0=-60).max() == pytest.approx(plain.max())
    autophased = process_fid(dephased, SW, autophase=True)
    assert autophased.max() == pytest.approx(plain.max(), rel=0.05)
    with pytest.raises(DataError, match="complex"):
        process_fid(fid.real, SW)
    with pytest.raises(DataError, match="smaller than"):
        process_fid(fid, SW, size=256)


# ---------------------------------------------------------------------------------------------------------------
# manifests over vendor formats


@pytest.mark.parametrize("fmt", ["bruker", "pipe", "varian"])
def test_json_manifest_reads_vendor_format(tmp_path, fmt):
    entries = write_ladder(tmp_path, fmt)
    (tmp_path / "manifest.json").write_text(json.dumps(entries))
    [group] = read_manifest(tmp_path / "manifest.json")
    assert group.name == "g" and len(group.sources) == 2
    check_simulated_group(group)


def test_csv_manifest_mixed_formats_and_directory(tmp_path):
    entries = write_ladder(tmp_path, "bruker", "gb") + write_ladder(tmp_path, "varian", "gvv")
    entries += [dict(entry, format="pipe") for entry in write_ladder(tmp_path, "pipe", "gp")]
    write_csv(tmp_path / "manifest.csv", entries, with_format=True)
    groups = read_manifest(tmp_path / "manifest.csv")
    assert [g.name for g in groups] == ["gb", "gp", "gvv"]
    for group in groups:
        check_simulated_group(group)
    np.savez(tmp_path / "extra.npz", spectra=np.zeros((2, 16)))
    assert [g.name for g in read_directory(tmp_path, levels=2)] == ["extra", "gb", "gp", "gvv"]


def test_manifest_processing_and_frequency_domain_files(tmp_path):
    spectrum = process_fid(simulate_fid(0.05, seed=4), SW)
    pipe_dic = ng.pipe.create_dic(axis_udic(SIZE, time=False))
    ng.pipe.write(str(tmp_path / "lvl0.ft1"), pipe_dic, (spectrum + 0.1).astype(np.float32))
    write_bruker_pdata(tmp_path / "proc", spectrum)
    entries = [{"group": "f", "level": 0, "path": "lvl0.ft1"}, {"group": "f", "level": 1, "path": "proc/pdata/1"}]
    (tmp_path / "manifest.json").write_text(json.dumps({"processing": {"lb_hz": 1.0}, "entries": entries}))
    [group] = read_manifest(tmp_path / "manifest.json", processing={"size": 2048})
    assert group.spectra.shape == (2, SIZE)
    np.testing.assert_allclose(group.spectra[1], spectrum, atol=1e-6 * spectrum.max())
    np.testing.assert_allclose(group.ppm, make_ppm_axis(SIZE, SW, OBS, CAR_PPM * OBS), atol=1e-6)


def test_manifest_levels_in_directory_are_not_read_twice(tmp_path):
    np.save(tmp_path / "s_0.npy", np.ones(16))
    np.save(tmp_path / "s_1.npy", np.ones(16))
    write_csv(tmp_path / "manifest.csv", [{"group": "s", "level": k, "path": f"s_{k}.npy"} for k in (0, 1)])
    [group] = read_directory(tmp_path)
    assert group.name == "s" and group.spectra.shape == (2, 16)


# ---------------------------------------------------------------------------------------------------------------
# manifest errors


def npy_manifest(tmp_path: Path, rows: list[tuple], lengths: dict | None = None) -> Path:
    """CSV manifest over small .npy files; rows are (group, level, path[, format])."""
    for row in rows:
        target = tmp_path / row[2]
        if not target.exists() and target.suffix == ".npy" and "missing" not in target.name:
            np.save(target, np.ones((lengths or {}).get(row[2], 16)))
    lines = ["group,level,path,format"] + [",".join(map(str, row + ("",) * (4 - len(row)))) for row in rows]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "manifest.csv"


def test_manifest_missing_level(tmp_path):
    manifest = npy_manifest(tmp_path, [("G", 0, "a.npy"), ("G", 1, "b.npy"), ("G", 3, "c.npy")])
    with pytest.raises(DataError, match=r"manifest\.csv: group 'G': level 2 is missing; levels present: 0, 1, 3"):
        read_manifest(manifest)


def test_manifest_duplicate_level(tmp_path):
    manifest = npy_manifest(tmp_path, [("G", 0, "a.npy"), ("G", 1, "b.npy"), ("G", 1, "c.npy")])
    with pytest.raises(DataError, match=r"group 'G': level 1 appears twice .*line 3 and .*line 4"):
        read_manifest(manifest)


def test_manifest_missing_file(tmp_path):
    manifest = npy_manifest(tmp_path, [("G", 0, "a.npy"), ("G", 1, "missing.npy")])
    with pytest.raises(DataError, match=r"manifest\.csv line 3: path not found: .*missing\.npy"):
        read_manifest(manifest)


def test_manifest_unknown_format_and_bad_level(tmp_path):
    manifest = npy_manifest(tmp_path, [("G", 0, "a.npy", "jcamp"), ("G", 1, "b.npy")])
    with pytest.raises(DataError, match=r"manifest\.csv line 2: unknown format 'jcamp'"):
        read_manifest(manifest)
    manifest = npy_manifest(tmp_path, [("G", 0, "a.npy"), ("G", "1.5", "b.npy")])
    with pytest.raises(DataError, match=r"line 3: level '1.5' is not a non-negative integer"):
        read_manifest(manifest)
    (tmp_path / "m.json").write_text(json.dumps([{"group": "G", "level": 0, "path": "a.npy", "format": "nope"}]))
    with pytest.raises(DataError, match=r"m\.json entry 0: unknown format 'nope'"):
        read_manifest(tmp_path / "m.json")


def test_manifest_unknown_processing_key(tmp_path):
    manifest = npy_manifest(tmp_path, [("G", 0, "a.npy"), ("G", 1, "b.npy")])
    with pytest.raises(DataError, match=r"unknown processing key\(s\) \['lb'\]; valid keys are .*lb_hz"):
        read_manifest(manifest, processing={"lb": 1.0})
    (tmp_path / "m.json").write_text(json.dumps({"processing": {"zf": 2}, "entries": []}))
    with pytest.raises(DataError, match=r"m\.json: unknown processing key\(s\) \['zf'\]"):
        read_manifest(tmp_path / "m.json")


def test_manifest_lengths_differ_within_group(tmp_path):
    manifest = npy_manifest(tmp_path, [("G", 0, "short.npy"), ("G", 1, "long.npy")], {"short.npy": 16, "long.npy": 20})
    with pytest.raises(DataError, match=r"long\.npy.*20 points.*short\.npy.*16"):
        read_manifest(manifest)


# ---------------------------------------------------------------------------------------------------------------
# hardening (issue 16): group names, directory entries, level spellings, header values, declared sizes


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "", " ", ".hidden", "a\x00b", "x\n", "a/b", "..", "x" * 101])
@pytest.mark.parametrize("kind", ["json", "csv"])
def test_manifest_group_names_that_are_not_plain_file_names_are_refused(tmp_path, name, kind):
    """A group name becomes <save_dir>/<name>.npz: '../../x' and '/abs/x' wrote outside it, '' a hidden '.npz'."""
    np.save(tmp_path / "a.npy", np.ones(16))
    np.save(tmp_path / "b.npy", np.ones(16))
    rows = [{"group": name, "level": 0, "path": "a.npy"}, {"group": name, "level": 1, "path": "b.npy"}]
    if kind == "json":
        manifest, where = tmp_path / "manifest.json", "entry 0"
        manifest.write_text(json.dumps(rows))
    else:
        manifest, where = tmp_path / "manifest.csv", "line 2"
        with manifest.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["group", "level", "path"])
            writer.writerows([[row["group"], row["level"], row["path"]] for row in rows])
    # an empty group (a blank CSV field: spaces around commas are layout) is the 'missing group' error
    blank = name == "" or (kind == "csv" and name.strip(" \t") == "")
    expected = r"missing \['group'\]" if blank else "group name .* is refused .*names are 1-100 characters"
    with pytest.raises(DataError, match=f"^{manifest} {where}: {expected}"):
        read_manifest(manifest)


def test_real_group_names_are_accepted(tmp_path):
    for name in ("sucrose_ns4", "Glc-2024.01", "_tmp", "7"):
        np.save(tmp_path / f"{name}.npy", np.ones((2, 8)))
    assert [g.name for g in read_directory(tmp_path)] == ["7", "Glc-2024.01", "_tmp", "sucrose_ns4"]


@pytest.mark.parametrize("stem", [".hidden", "a b", "x\n", "-rf", "\u00e9t\u00e9"])
def test_file_stems_that_are_not_plain_names_are_refused_naming_the_file(tmp_path, stem):
    np.save(tmp_path / "good.npy", np.ones((2, 8)))
    bad = tmp_path / f"{stem}.npy"
    np.save(bad, np.ones((2, 8)))
    with pytest.raises(DataError, match=f"^{re.escape(str(bad))}: group name .* is refused"):
        read_directory(tmp_path)
    with pytest.raises(DataError, match="is refused"):
        read_npy(bad)


def test_dangling_link_named_like_data_is_an_error_naming_it(tmp_path):
    np.save(tmp_path / "s1.npy", np.ones((2, 8)))
    (tmp_path / "s9.npz").symlink_to(tmp_path / "gone.npz")
    with pytest.raises(DataError, match=r"s9\.npz: a symbolic link to .*gone\.npz, which does not exist"):
        read_directory(tmp_path)


def test_directory_named_like_data_is_an_error_naming_it(tmp_path):
    np.save(tmp_path / "s1.npy", np.ones((2, 8)))
    (tmp_path / "s2.npz").mkdir()
    with pytest.raises(DataError, match=r"s2\.npz: named like a data file but it is not a regular file"):
        read_directory(tmp_path)


def test_upper_case_suffixes_are_read_not_skipped(tmp_path):
    np.save(tmp_path / "s1.npy", np.ones((2, 8)))
    (tmp_path / "S5.NPZ").write_bytes(_npz_bytes(spectra=np.zeros((2, 8))))
    (tmp_path / "S6.Npy").write_bytes(_npy_bytes(np.zeros((2, 8))))
    assert [g.name for g in read_directory(tmp_path)] == ["S5", "S6", "s1"]
    assert read_single(_single(tmp_path / "ONE.NPY")).spectra.shape == (1, 8)


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _single(path: Path) -> Path:
    path.write_bytes(_npy_bytes(np.ones(8)))
    return path


@pytest.mark.parametrize("level", ["\u0661", "\uff12", "\u0967", "\U0001d7cf", "1\n", "+1", "1_0", "9" * 5000])
@pytest.mark.parametrize("kind", ["json", "csv"])
def test_levels_are_ascii_digits_only_as_in_image_lists(tmp_path, level, kind):
    """'١' (Arabic-Indic one) and '２' (full-width two) were read as levels 1 and 2; 5000 digits crashed int()."""
    np.save(tmp_path / "a.npy", np.ones(16))
    np.save(tmp_path / "b.npy", np.ones(16))
    if kind == "json":
        manifest, where = tmp_path / "manifest.json", "entry 1"
        manifest.write_text(json.dumps([{"group": "G", "level": 0, "path": "a.npy"},
                                        {"group": "G", "level": level, "path": "b.npy"}]))
    else:
        if "\n" in level:
            level = f'"{level}"'
        manifest, where = tmp_path / "manifest.csv", "line 3"
        manifest.write_text(f"group,level,path\nG,0,a.npy\nG,{level},b.npy\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"^{manifest} {where}: level .* is not a non-negative integer written with "
                                        "the ASCII digits"):
        read_manifest(manifest)


def test_a_huge_level_is_a_missing_level_found_at_once(tmp_path):
    """Level 10**18 made the gap search count to 10**18; the first gap lies below the number of levels."""
    import signal

    def stop(*_):
        raise TimeoutError("the level check did not finish in 10 s")

    np.save(tmp_path / "a.npy", np.ones(16))
    np.save(tmp_path / "b.npy", np.ones(16))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"group": "G", "level": 0, "path": "a.npy"},
                                    {"group": "G", "level": 10 ** 18, "path": "b.npy"}]))
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(10)
    try:
        with pytest.raises(DataError, match=f"^{manifest}: group 'G': level 1 is missing"):
            read_manifest(manifest)
    finally:
        signal.alarm(0)


def _varian_ladder(tmp_path: Path, key: str, value: str) -> Path:
    entries = write_ladder(tmp_path, "varian")
    dic, data = ng.varian.read(str(tmp_path / "g/lvl1.fid"))
    dic["procpar"][key]["values"] = [value]
    ng.varian.write_procpar(str(tmp_path / "g/lvl1.fid/procpar"), dic["procpar"], overwrite=True)
    write_csv(tmp_path / "manifest.csv", entries)
    return tmp_path / "manifest.csv"


@pytest.mark.parametrize("key, value", [("sfrq", "0"), ("sfrq", "-500"), ("sw", "0"), ("sw", "nan"),
                                        ("rfl", "1e999"), ("rfp", "-inf"), ("sfrq", "abc")])
def test_varian_header_values_of_the_ppm_axis_name_file_key_and_line(tmp_path, key, value):
    manifest = _varian_ladder(tmp_path, key, value)
    with pytest.raises(DataError, match=f"^{manifest} line 3 \\(.*lvl1.fid, format varian\\): header value procpar "
                                        f"{key} = '{re.escape(value)}'"):
        read_manifest(manifest)


def _pipe_ladder(tmp_path: Path, key: str, value: float, time: bool = True) -> Path:
    if time:
        entries = write_ladder(tmp_path, "pipe")
        path = tmp_path / "g/lvl1.fid"
    else:
        spectrum = process_fid(simulate_fid(0.05, seed=4), SW)
        entries = []
        for level in (0, 1):
            ng.pipe.write(str(tmp_path / f"lvl{level}.ft1"), ng.pipe.create_dic(axis_udic(SIZE, time=False)),
                          spectrum.astype(np.float32))
            entries.append({"group": "g", "level": level, "path": f"lvl{level}.ft1"})
        path = tmp_path / "lvl1.ft1"
    dic, data = ng.pipe.read(str(path))
    dic[key] = value
    ng.pipe.write(str(path), dic, data, overwrite=True)
    (tmp_path / "manifest.json").write_text(json.dumps(entries))
    return tmp_path / "manifest.json"


@pytest.mark.parametrize("key, value, time", [("FDF2OBS", 0.0, True), ("FDF2OBS", float("nan"), True),
                                              ("FDF2SW", 0.0, True), ("FDF2CAR", float("inf"), True),
                                              ("FDF2OBS", 0.0, False), ("FDF2SW", 0.0, False),
                                              ("FDF2ORIG", float("nan"), False)])
def test_nmrpipe_header_values_of_the_ppm_axis_name_file_key_and_entry(tmp_path, key, value, time):
    """FDF2OBS = 0 in a frequency-domain file was silently taken as 1.0 MHz by nmrglue's make_uc."""
    manifest = _pipe_ladder(tmp_path, key, value, time)
    with pytest.raises(DataError, match=f"^{manifest} entry 1 \\(.*lvl1.ft?1?.*format pipe\\): header value {key} = "):
        read_manifest(manifest)


def test_bruker_observe_frequency_zero_names_file_and_line(tmp_path):
    entries = write_ladder(tmp_path, "bruker")
    procs = tmp_path / "g/exp1/pdata/1/procs"
    procs.write_text(re.sub(r"##\$SF= .*", "##$SF= 0", procs.read_text()))
    write_csv(tmp_path / "manifest.csv", entries)
    with pytest.raises(DataError, match=r"manifest.csv line 3 \(.*exp1, format bruker\): header value obs "
                                        r"\(procs SF, or acqus SFO1\) = 0"):
        read_manifest(tmp_path / "manifest.csv")


@pytest.mark.parametrize("shape", [(10 ** 12,), (1 << 20, 1 << 20), (3, 2 ** 40)])
def test_npy_declaring_a_huge_array_is_refused_before_reading(tmp_path, shape):
    from fuzz_data import npy_claiming

    path = tmp_path / "big.npy"
    path.write_bytes(npy_claiming(shape))
    with pytest.raises(DataError, match=f"^{path}: its header declares a float64 array of shape .* over the limit "
                                        "of 2,147,483,648 bytes per array; refused before reading"):
        read_npy(path)
    with pytest.raises(DataError, match=f"^{path}: its header declares"):
        read_directory(tmp_path)


def test_npz_member_declaring_a_huge_array_is_refused_before_reading(tmp_path):
    import zipfile

    from fuzz_data import npy_claiming

    path = tmp_path / "big.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("spectra.npy", npy_claiming((10 ** 12,)))
    with pytest.raises(DataError, match=f"^{path}: 'spectra': its header declares a float64 array of shape "
                                        r"\(1000000000000,\) .* over the limit"):
        read_npz(path)


def test_size_limit_is_stated_and_overridable(tmp_path, monkeypatch):
    import data_loader.nmr.io as nmr_io

    np.save(tmp_path / "a.npy", np.ones((3, 32)))  # 768 bytes
    np.savez(tmp_path / "b.npz", spectra=np.ones((3, 32)))
    assert read_npy(tmp_path / "a.npy").spectra.shape == (3, 32)
    with pytest.raises(DataError, match=r"\(768 bytes\), over the limit of 700 bytes"):
        read_npy(tmp_path / "a.npy", max_bytes=700)
    with pytest.raises(DataError, match=r"b\.npz: 'spectra': .*over the limit of 700 bytes"):
        read_npz(tmp_path / "b.npz", max_bytes=700)
    with pytest.raises(DataError, match=r"a\.npy: .*over the limit of 700 bytes"):
        read_directory(tmp_path, max_bytes=700)
    monkeypatch.setattr(nmr_io, "MAX_ARRAY_BYTES", 700)
    with pytest.raises(DataError, match="over the limit of 700 bytes"):
        read_directory(tmp_path)


@pytest.mark.parametrize("extra", [-8, 8])
def test_npy_whose_data_disagrees_with_its_header_is_refused(tmp_path, extra):
    data = _npy_bytes(np.ones((3, 32)))
    path = tmp_path / "a.npy"
    path.write_bytes(data[:extra] if extra < 0 else data + b"\x00" * extra)
    with pytest.raises(DataError, match=f"^{path}: its header declares 768 bytes of data but the file holds "
                                        f"{768 + extra}"):
        read_npy(path)


def test_processing_size_is_bounded(tmp_path):
    manifest = npy_manifest(tmp_path, [("G", 0, "a.npy"), ("G", 1, "b.npy")])
    with pytest.raises(DataError, match="processing 'size' must be an integer from 2 to 16,777,216"):
        read_manifest(manifest, processing={"size": 10 ** 12})
