"""Data fuzzing: broken CIFAR pickles, image lists, images and NMR files end in a DataError naming the file.

Complements tests/test_cifar.py, tests/test_image_list.py and tests/test_nmr_io.py (which hold the first case
of each kind): here every truncation point, random bytes, foreign pickles, labels that int() would coerce, files
that are not UTF-8, images that are empty or cut short, NMR arrays of the wrong dtype or rank, non-monotone ppm
axes, manifests with wrong level values and groups of different lengths. Nothing may be dropped or coerced:
each case is an error (DataError, or ConfigError for an argument) whose message names the file (and the line
for lists and manifests).

The draws are derandomized (25 per test, the same in every CI run); ``FUZZ_EXAMPLES=2000 python -m pytest
tests/test_data_fuzz.py`` is a deep pass.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fuzz_data import crafted_array, crafted_cifar, digit_spellings, names, npy_claiming
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from data_loader.cifar import read_cifar_file
from data_loader.image_list import ImageListDataset, read_image_list
from data_loader.nmr.dataset import LadderDataset
from data_loader.nmr.io import read_directory, read_manifest, read_npy, read_npz, read_single
from utils.errors import DataError
from utils.registry import DATA_LOADERS

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "25")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- CIFAR pickles (read_cifar_file) ----------------------------------------------------------------------------
def cifar_bytes(n: int = 6, protocol: int = 2) -> bytes:
    rng = np.random.default_rng(0)
    content = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": list(range(n))}
    return pickle.dumps(content, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@FUZZ
@given(cut=st.floats(0.0, 0.999))
def test_every_truncation_of_a_cifar_pickle_names_the_file(tmp_path, protocol, cut):
    whole = cifar_bytes(protocol=protocol)
    path = tmp_path / "train"
    path.write_bytes(whole[:int(cut * len(whole))])
    with pytest.raises(DataError, match=f"^{path}"):
        read_cifar_file(path, "fine_labels", 100)


@FUZZ
@given(junk=st.binary(max_size=200))
def test_random_bytes_are_not_a_cifar_file(tmp_path, junk):
    path = tmp_path / "train"
    path.write_bytes(junk)
    with pytest.raises(DataError, match=f"^{path}"):
        read_cifar_file(path, "fine_labels", 100)


@pytest.mark.parametrize("content, expected", [
    ("a string", "holds a str"),
    (None, "holds a NoneType"),
    (np.zeros((2, 3072), np.uint8), "holds a ndarray"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0.0, 1.0]}, "must be 2 integers"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [True, False]}, "must be 2 integers"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": ["0", "1"]}, "must be 2 integers"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [[0], [1]]}, "must be 2 integers"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, -1]}, "outside 0..99"),
    ({b"data": np.zeros((2, 3072), np.int64), b"fine_labels": [0, 1]}, "uint8.*int64"),
    ({b"data": np.zeros((2, 3, 32, 32), np.uint8), b"fine_labels": [0, 1]}, r"shape \(N, 3072\)"),
    ({b"data": [[0] * 3072] * 2, b"fine_labels": [0, 1]}, "got list"),
    ({b"data": b"\x00" * 3072 * 2, b"fine_labels": [0, 1]}, "got bytes"),
])
def test_foreign_pickles_are_refused_with_the_file_named(tmp_path, content, expected):
    path = tmp_path / "test"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(DataError, match=f"^{path}.*{expected}"):
        read_cifar_file(path, "fine_labels", 100)


@pytest.mark.parametrize("payload", [b"", b"\x80\x05", b"PK\x03\x04" + b"\x00" * 30, b'{"data": []}'])
def test_empty_zip_and_json_files_are_not_cifar_pickles(tmp_path, payload):
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=f"^{path} is not a readable CIFAR pickle"):
        read_cifar_file(path, "labels", 10)


# --- image lists and images (data_loader/image_list.py) ---------------------------------------------------------
@pytest.mark.parametrize("label", ["1.0", "1_0", "+1", "0x1", "\u0661", "1e0", "01"])
def test_labels_int_would_coerce_are_refused_with_file_and_line(tmp_path, label):
    """int() reads "1_0" as 10, "+1" and Arabic-Indic "١" as 1: a list label must be plain ASCII digits."""
    path = tmp_path / "list.txt"
    path.write_text(f"a.png 0\nb.png {label}\n", encoding="utf-8")
    if label == "01":  # a leading zero is still the number the digits say: accepted as 1
        assert [e.label for e in read_image_list(path, 10)] == [0, 1]
        return
    with pytest.raises(DataError, match=f"^{path}, line 2: label .* is not an integer"):
        read_image_list(path, 10)


def test_list_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"a.png 0\nb\xff\xfe.png 1\n")
    with pytest.raises(DataError, match=f"^{path}, line 2: not UTF-8 text"):
        read_image_list(path, 10)


@FUZZ
@given(lines=st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\x0b\x0c\x1c\x1d\x1e"
                                                                                   "\x85\u2028\u2029"),
                                  max_size=12), min_size=1, max_size=5))
def test_any_list_either_parses_exactly_or_names_file_and_line(tmp_path, lines):
    """Every accepted line is 'path label' with label the same digits; every refusal names a line or the file."""
    path = tmp_path / "list.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        entries = read_image_list(path, 1000)
    except DataError as err:
        assert str(err).startswith(f"{path}, line ") or str(err) == f"image list {path} is empty"
        return
    for entry in entries:
        fields = lines[entry.line - 1].split()
        assert fields == [entry.path, fields[1]] and re.fullmatch("[0-9]+", fields[1]) and int(fields[1]) == entry.label


def write_png(path, size=(8, 8)):
    Image.fromarray(np.zeros(size + (3,), dtype=np.uint8)).save(path)


@pytest.mark.parametrize("make", ["empty", "text", "truncated_png", "truncated_jpeg", "directory"])
def test_unreadable_image_names_image_list_and_line(tmp_path, make):
    write_png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    if make == "empty":
        bad.write_bytes(b"")
    elif make == "text":
        bad.write_text("not an image")
    elif make == "truncated_png":
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
        bad.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    elif make == "truncated_jpeg":
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
        bad.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    else:
        bad.mkdir()
    list_file = tmp_path / "list.txt"
    list_file.write_text("good.png 0\nbad.png 1\n")
    dataset = ImageListDataset(tmp_path, list_file, read_image_list(list_file, 2), np.arange(2), lambda image: image)
    assert dataset[0][1] == 0
    with pytest.raises(DataError, match=f"cannot read image {tmp_path / 'bad.png'} \\({list_file}, line 2\\)"):
        dataset[1]


def test_directory_named_in_a_list_is_not_an_image(tmp_path):
    write_png(tmp_path / "good.png")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "train.txt").write_text("good.png 0\nfolder.png 1\n")
    (tmp_path / "test.txt").write_text("good.png 0\n")
    with pytest.raises(DataError, match=r"train.txt, line 2: image .*folder.png does not exist"):
        DATA_LOADERS.build({"type": "ImageNetLT", "args": {
            "root": str(tmp_path), "train_list": "train.txt", "test_list": "test.txt", "validation": "none",
            "num_classes": 2, "num_workers": 0}}, ("data_loader",), training=True)


# --- NMR files (data_loader/nmr/io.py) --------------------------------------------------------------------------
LADDER = np.random.default_rng(0).normal(size=(3, 32))
PPM = np.linspace(10.0, 0.0, 32)


@pytest.mark.parametrize("spectra, expected", [
    (LADDER.astype(bool), "non-numeric dtype bool"),
    (LADDER.astype(str), "non-numeric dtype <U"),
    (np.zeros((3, 32), dtype="datetime64[s]"), "non-numeric dtype datetime64"),
    (np.zeros((3, 32), dtype=[("a", float)]), "non-numeric dtype"),
    (np.zeros((2, 3, 32)), r"shape \(2, 3, 32\); expected a 2-D array"),
    (np.float64(1.0), r"shape \(\); expected a 2-D array"),
    (np.zeros((0, 32)), "no rows"),
    (np.zeros((3, 0)), "fewer than 2 points"),
])
@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_nmr_array_of_wrong_dtype_or_rank_names_the_file(tmp_path, spectra, expected, suffix):
    path = tmp_path / f"sample{suffix}"
    if suffix == ".npz":
        np.savez(path, spectra=spectra)
    else:
        np.save(path, spectra)
    with pytest.raises(DataError, match=f"^{path}: .*{expected}"):
        (read_npz if suffix == ".npz" else read_npy)(path)


@pytest.mark.parametrize("ppm, expected", [
    (PPM[::-1], "increases at index 0"),
    (np.r_[PPM[:10], PPM[10], PPM[11:]].copy(), None),  # control: strictly decreasing is fine
    (np.r_[PPM[:10], PPM[9], PPM[11:]], "does not decrease at index 9"),
    (np.r_[PPM[:16], PPM[20], PPM[17:]], "increases at index 16"),
    (np.where(np.arange(32) == 5, np.nan, PPM), "NaN"),
    (np.where(np.arange(32) == 5, np.inf, PPM), "Inf"),
    (PPM.astype(complex), "complex"),
    (PPM[:, None], r"shape \(32, 1\)"),
])
def test_nmr_ppm_axis_must_be_finite_and_strictly_decreasing(tmp_path, ppm, expected):
    path = tmp_path / "sample.npz"
    np.savez(path, spectra=LADDER, ppm=ppm)
    if expected is None:
        np.testing.assert_array_equal(read_npz(path).ppm, ppm)
        return
    with pytest.raises(DataError, match=f"^{path}: .*{expected}"):
        read_npz(path)


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
@FUZZ
@given(cut=st.floats(0.0, 0.999))
def test_every_truncation_of_an_nmr_file_names_it(tmp_path, suffix, cut):
    buffer = io.BytesIO()
    if suffix == ".npz":
        np.savez(buffer, spectra=LADDER, ppm=PPM)
    else:
        np.save(buffer, LADDER)
    path = tmp_path / f"sample{suffix}"
    path.write_bytes(buffer.getvalue()[:int(cut * len(buffer.getvalue()))])
    with pytest.raises(DataError, match=f"^{path}: "):
        (read_npz if suffix == ".npz" else read_npy)(path)


@FUZZ
@given(junk=st.binary(max_size=100))
def test_random_bytes_are_not_an_nmr_file_and_not_called_pickles(tmp_path, junk):
    path = tmp_path / "sample.npy"
    path.write_bytes(junk)
    with pytest.raises(DataError, match=f"^{path}: ") as info:
        read_npy(path)
    if not junk.startswith(b"\x93NUMPY"):
        assert "object array" not in str(info.value)  # random bytes are not "an object array"


def test_groups_of_different_lengths_in_a_directory_name_both_files(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 32)))
    np.save(tmp_path / "b.npy", np.zeros((3, 40)))
    groups = read_directory(tmp_path)
    with pytest.raises(DataError, match=r"a\.npy has \(3, 32\).*b\.npy has \(3, 40\)"):
        LadderDataset.from_groups(groups, str(tmp_path))


def test_groups_with_different_ppm_axes_are_not_stacked_under_one(tmp_path):
    """The dataset keeps one ppm axis for all ladders; a second, different one must not be dropped silently."""
    np.savez(tmp_path / "a.npz", spectra=LADDER, ppm=PPM)
    np.savez(tmp_path / "b.npz", spectra=LADDER, ppm=PPM - 0.5)
    groups = read_directory(tmp_path)
    with pytest.raises(DataError, match=r"ppm axis of .*b\.npz differs from that of .*a\.npz"):
        LadderDataset.from_groups(groups, str(tmp_path))
    np.savez(tmp_path / "b.npz", spectra=LADDER)  # no axis at all next to one with an axis: also refused
    with pytest.raises(DataError, match=r"b\.npz.*no ppm axis.*a\.npz"):
        LadderDataset.from_groups(read_directory(tmp_path), str(tmp_path))


def test_single_spectrum_with_nan_is_refused_for_inference(tmp_path):
    spectrum = np.ones(32)
    spectrum[3] = np.nan
    np.save(tmp_path / "one.npy", spectrum)
    with pytest.raises(DataError, match=r"one\.npy: level row 0 has 1 NaN"):
        read_single(tmp_path / "one.npy")


@pytest.mark.parametrize("entry, expected", [
    ({"group": "G", "level": True, "path": "b.npy"}, "level True is not a non-negative integer"),
    ({"group": "G", "level": 1.0, "path": "b.npy"}, "level 1.0 is not a non-negative integer"),
    ({"group": "G", "level": -1, "path": "b.npy"}, "level -1 is not a non-negative integer"),
    ({"group": "G", "level": "1", "path": "b.npy"}, None),  # control: "1" is the CSV spelling of 1
    ({"group": 7, "level": 1, "path": "b.npy"}, "'group' and 'path' must be strings"),
    ({"group": "G", "level": 1}, r"missing \['path'\]"),
    ({"group": "G", "level": 1, "path": "b.npy", "scans": 4}, r"unknown field\(s\) \['scans'\]"),
    ({"group": "G", "level": 2, "path": "b.npy"}, "level 1 is missing"),
])
def test_manifest_entries_are_checked_and_named(tmp_path, entry, expected):
    np.save(tmp_path / "a.npy", np.ones(16))
    np.save(tmp_path / "b.npy", np.ones(16))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"group": "G", "level": 0, "path": "a.npy"}, entry]))
    if expected is None:
        assert read_manifest(manifest)[0].spectra.shape == (2, 16)
        return
    with pytest.raises(DataError, match=f"^{manifest}(:| entry 1:) .*{expected}"):
        read_manifest(manifest)


@pytest.mark.parametrize("row, expected", [
    ("G,1,b.npy,,extra", "expected 4 comma-separated fields"),
    ("G,1", "expected 4 comma-separated fields"),
    ("G,x,b.npy,", "level 'x' is not a non-negative integer"),
    ("G, 1 ,nothere.npy,", r"path not found: .*nothere\.npy"),
])
def test_csv_manifest_lines_name_the_line(tmp_path, row, expected):
    np.save(tmp_path / "a.npy", np.ones(16))
    np.save(tmp_path / "b.npy", np.ones(16))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("group,level,path,format\nG,0,a.npy,\n" + row + "\n")
    with pytest.raises(DataError, match=f"^{manifest} line 3: .*{expected}"):
        read_manifest(manifest)


# --- issue 16 mutations: non-ASCII digits, path-like names, trailing newlines, huge declared sizes ---------------
@FUZZ
@given(level=digit_spellings())
def test_manifest_levels_and_list_labels_accept_the_same_spellings(tmp_path, level):
    """One rule (utils.parsing.ascii_int) in both readers: a level is accepted iff the same text is a list label."""
    as_label = None  # blanks and line breaks separate a list's fields: no label holds one, and no level may
    if level.split() == [level]:
        listing = tmp_path / "list.txt"
        listing.write_text(f"a.png {level}\n", encoding="utf-8")
        try:
            [entry] = read_image_list(listing, 10 ** 19)
            as_label = entry.label
        except DataError as err:
            assert str(err).startswith(f"{listing}, line 1: ")
    np.save(tmp_path / "a.npy", np.ones(16))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"group": "G", "level": level, "path": "a.npy"}]))
    try:
        read_manifest(manifest)
        as_level = 0
    except DataError as err:
        present = re.search(r"levels present: (\d+)\.", str(err))  # read as level N > 0: level 0 is missing
        refused = (f"{manifest} entry 0: level {level!r} is not a non-negative integer",
                   f"{manifest} entry 0: missing ['level']")  # an empty level
        assert present or str(err).startswith(refused)
        as_level = int(present.group(1)) if present else None
    assert as_level == as_label, level


@FUZZ
@given(name=names())
def test_any_manifest_group_name_is_refused_or_a_file_name_inside_save_dir(tmp_path, name):
    np.save(tmp_path / "a.npy", np.ones(16))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"group": name, "level": 0, "path": "a.npy"}]))
    try:
        [group] = read_manifest(manifest)
    except DataError as err:
        if name == "":
            assert str(err).startswith(f"{manifest} entry 0: missing ['group']")
        else:
            assert str(err).startswith(f"{manifest} entry 0: group name ") and "names are 1-100" in str(err)
        return
    out = (tmp_path / "save").resolve()
    assert group.name == name and (out / f"{name}.npz").resolve().parent == out and not name.startswith(".")
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}", name)


@FUZZ
@given(stem=names().filter(lambda s: s not in ("", ".", "..") and "/" not in s and "\x00" not in s
                           and len(s.encode()) < 200))
def test_any_file_stem_is_refused_naming_the_file_or_a_plain_name(tmp_path, stem):
    """File names may hold blanks, newlines, leading dots; the group name they give must still be plain."""
    directory = Path(tempfile.mkdtemp(dir=tmp_path))  # tmp_path is shared by the examples
    path = directory / f"{stem}.npy"
    np.save(path, np.ones((2, 8)))
    try:
        [group] = read_directory(directory)
    except DataError as err:
        assert str(err).startswith(f"{path}: group name ") and "is refused" in str(err)
        return
    assert group.name == path.stem and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}", group.name)


@FUZZ
@given(shape=st.lists(st.integers(0, 2 ** 40), min_size=0, max_size=3).map(tuple),
       dtype=st.sampled_from(["<f8", "<f4", "<i8", "|u1", "<c16"]), held=st.integers(0, 4096))
def test_declared_npy_sizes_are_checked_before_anything_is_allocated(tmp_path, shape, dtype, held):
    """Whatever size a header declares, the reader allocates at most what the file holds (traced by tracemalloc)."""
    import tracemalloc

    path = tmp_path / "sample.npy"
    path.write_bytes(npy_claiming(shape, dtype, b"\x00" * held))
    tracemalloc.start()
    try:
        read_npy(path, allow_single=True)
    except DataError as err:
        assert str(err).startswith(f"{path}: ")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes allocated for a {held}-byte file declaring {shape} {dtype}"


@pytest.mark.parametrize("how", ["bare", "build", "frombuffer"])
@pytest.mark.parametrize("protocol", [2, 5])
@FUZZ
@given(rows=st.integers(0, 10 ** 9), width=st.sampled_from([3072, 1024, 1]), held=st.integers(0, 3 * 3072),
       dtype=st.sampled_from(["u1", "<i8", "<f4"]))
def test_crafted_cifar_arrays_never_exceed_the_file(tmp_path, how, protocol, rows, width, held, dtype):
    """Any shape, dtype and payload through numpy's constructors: refused, or images made of the file's own bytes."""
    import tracemalloc

    payload = bytes(range(256)) * (held // 256) + bytes(held % 256)
    path = tmp_path / "train"
    path.write_bytes(crafted_cifar(crafted_array((rows, width), dtype, payload, how), [0] * min(rows, 3), b"labels",
                                   protocol))
    tracemalloc.start()
    try:
        images, labels = read_cifar_file(path, "labels", 10)
    except DataError as err:
        assert str(err).startswith(f"{path}")
        return
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 16 << 20, f"{peak} bytes allocated for a {path.stat().st_size}-byte file"
    assert images.tobytes() == payload and len(labels) == len(images) == rows
