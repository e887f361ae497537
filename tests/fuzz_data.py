"""Generated stand-ins for the data every shipped config names, and the hostile mutations of data files.

``write_all(root)`` writes small CIFAR-10/100 pickles, image-list folders for ImageNet-LT, Places-LT and
iNaturalist 2018 (every class listed, a few tiny images shared by many lines) and a directory of NMR ladders;
``redirect(config, data, tmp)`` points a config at them and at a stage-1 checkpoint for ``init_from``.
Used by tests/test_config_fuzz.py and tests/test_untrusted.py.

The mutations (used by tests/test_data_fuzz.py): ``NON_ASCII_DIGITS`` and ``digit_spellings()`` (numbers that
``int()`` reads but a data file never holds), ``PATH_LIKE_NAMES`` and ``names()`` (group names that would become
paths: separators, ``..``, blanks, NUL, trailing newlines), ``npy_claiming(shape)`` (an .npy header declaring any
size over a few bytes of data) and ``crafted_cifar(...)`` (a CIFAR pickle calling numpy's array constructors with
any shape, dtype and payload).
"""
from __future__ import annotations

import copy
import io
import json
import pickle
from pathlib import Path

import numpy as np
from fixtures import write_cifar
from hypothesis import strategies as st
from PIL import Image

# default list names of the file-based loaders (data_loader/image_list.py) and their class counts
IMAGE_LISTS = {
    "ImageNetLT": (1000, ("ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt")),
    "PlacesLT": (365, ("Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt")),
    "INaturalist2018": (8142, ("iNaturalist18_train.txt", None, "iNaturalist18_val.txt")),
}
NMR_LEVELS, NMR_POINTS = 4, 256


def write_image_lists(root: Path, num_classes: int, names: tuple) -> None:
    """Lists naming every class (train: 1-3 lines a class, long-tailed; val/test: one a class), 3 shared PNGs."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(images / f"{i}.png")
        paths.append(f"images/{i}.png")
    train, val, test = names
    counts = [max(1, round(3 * 0.3 ** (c / (num_classes - 1)))) for c in range(num_classes)]
    (root / train).write_text("".join(f"{paths[(c + k) % 3]} {c}\n" for c, n in enumerate(counts) for k in range(n)))
    for name in (val, test):
        if name is not None:
            (root / name).write_text("".join(f"{paths[c % 3]} {c}\n" for c in range(num_classes)))


def write_nmr(root: Path) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ppm = np.linspace(10.0, 0.0, NMR_POINTS)
    # one Lorentzian line under noise falling by 2 per level: a noise-only ladder is refused when loaded
    points = np.arange(NMR_POINTS)
    line = 50.0 / (1.0 + ((points - NMR_POINTS / 3) / 2.0) ** 2)
    sigma = 2.0 ** -np.arange(NMR_LEVELS)[:, None]
    for i in range(20):
        spectra = line + sigma * rng.normal(size=(NMR_LEVELS, NMR_POINTS))
        np.savez(root / f"ladder_{i}.npz", spectra=spectra, ppm=ppm)


def write_all(root: Path) -> dict:
    """Every generated data set under ``root``; returns where each is."""
    data = {"cifar": root / "cifar", "nmr": root / "nmr", "lists": {}}
    data["cifar"].mkdir(parents=True)
    write_cifar(data["cifar"], "10", 120, 4)
    write_cifar(data["cifar"], "100", 110, 2)
    for loader, (classes, names) in IMAGE_LISTS.items():
        data["lists"][loader] = root / loader
        write_image_lists(root / loader, classes, names)
    write_nmr(data["nmr"])
    return data


def stage1_checkpoint(arch: dict, config: dict, path: Path) -> str:
    """A checkpoint of ``arch`` without LWS, standing in for the stage-1 run that ``init_from`` names."""
    from utils.checkpoint import save_checkpoint
    from utils.registry import MODELS

    if not path.exists():
        spec = {"type": arch["type"], "args": {k: v for k, v in arch.get("args", {}).items() if k != "lws"}}
        model = MODELS.build(spec, ("arch",))
        save_checkpoint({"epoch": 1, "arch": spec["type"], "model": model.state_dict(), "config": config}, path)
    return str(path)


def redirect(config: dict, data: dict, checkpoints: Path) -> dict:
    """A copy of ``config`` reading the generated data (and a generated stage-1 checkpoint for ``init_from``)."""
    config = copy.deepcopy(config)
    loader = config.get("data_loader") or {}
    args = loader.get("args") or {}
    kind = loader.get("type")
    if kind in ("CIFAR10LT", "CIFAR100LT"):
        args["data_dir"] = str(data["cifar"])
    elif kind in IMAGE_LISTS:
        args["root"] = args["data_dir"] = str(data["lists"][kind])
    elif kind == "NMRDirectory":
        args["data_dir"] = str(data["nmr"])
    elif kind == "NMRSimulated":  # a few simulated ladders instead of thousands: the build is what is tested
        args.update(n_train=8, n_valid=4, n_test=4)
    if config.get("init_from"):
        key = json.dumps(config["arch"], sort_keys=True)
        name = f"stage1_{abs(hash(key)) % 10 ** 12}.pth"
        config["init_from"] = stage1_checkpoint(config["arch"], config, checkpoints / name)
    return config


# --- mutations of data files ----------------------------------------------------------------------------------
# one of each: Arabic-Indic, full-width, Devanagari, NKo, mathematical bold, superscript (isdigit, not decimal)
NON_ASCII_DIGITS = ("\u0661", "\uff12", "\u0967", "\u07c1", "\U0001d7cf", "\u00b9")
PATH_LIKE_NAMES = ("../../x", "/abs/x", "a/b", "..", ".", "", " ", ".hidden", "a\x00b", "x\n", "x\r", "\tx",
                   "a b", "-rf", "x" * 101, "C:\\x", "a\\b", "\u00e9t\u00e9", "\u0661")


def digit_spellings() -> st.SearchStrategy[str]:
    """Texts that spell (or nearly spell) an integer: ASCII and other scripts' digits, signs, blanks, '_', newlines."""
    parts = st.sampled_from(list("0123456789") + list(NON_ASCII_DIGITS) + ["-", "+", " ", "_", "\n", "\t", "x"])
    return st.lists(parts, min_size=0, max_size=6).map("".join) | st.integers(-5, 10 ** 30).map(str)


def names() -> st.SearchStrategy[str]:
    """Group names: the path-like ones above, and joins of path pieces, dots, letters and control characters."""
    pieces = st.sampled_from(["..", "/", "\\", ".", "a", "B", "7", "_", "-", " ", "\n", "\x00", "\u00e9",
                              "\u0661", "sucrose_ns4"])
    return st.sampled_from(PATH_LIKE_NAMES) | st.lists(pieces, min_size=0, max_size=6).map("".join)


def npy_claiming(shape: tuple, dtype: str = "<f8", data: bytes = b"\x00" * 64) -> bytes:
    """An .npy file whose header declares ``shape``/``dtype`` followed by ``data`` (whatever its length)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue() + data


# numpy's own array constructors, as the installed numpy pickles arrays (numpy.core in 1.x, numpy._core in 2.x)
_reconstruct = np.zeros(1, np.uint8).__reduce__()[0]
_frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]


class Reduce:
    """Pickles as ``function(*args)`` (then BUILD with ``state`` when given): any call a crafted pickle can make."""

    def __init__(self, function, args: tuple, state=None):
        self.function, self.args, self.state = function, args, state

    def __reduce__(self):
        return (self.function, self.args) if self.state is None else (self.function, self.args, self.state)


def crafted_array(shape: tuple, dtype: str = "u1", payload: bytes | None = b"", how: str = "build"):
    """A pickled value that asks numpy for an array of ``shape``/``dtype``:

    ``"bare"``: ``_reconstruct(ndarray, shape, 'B')`` with no state (an uninitialised array of any size);
    ``"build"``: numpy's own ``_reconstruct(ndarray, (0,), 'b')`` then BUILD with ``shape`` and ``payload``;
    ``"frombuffer"``: protocol 5's ``_frombuffer(payload, dtype, shape, 'C')``.
    """
    if how == "bare":
        return Reduce(_reconstruct, (np.ndarray, tuple(shape), b"B"))
    if how == "build":
        return Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, tuple(shape), np.dtype(dtype), False, payload))
    return Reduce(_frombuffer, (bytearray(payload), np.dtype(dtype), tuple(shape), "C"))


def crafted_cifar(data, labels, label_key: bytes = b"fine_labels", protocol: int = 2) -> bytes:
    """A CIFAR-like pickle ``{b"data": data, label_key: labels}`` where either may be a :func:`crafted_array`."""
    return pickle.dumps({b"data": data, label_key: labels}, protocol=protocol)
