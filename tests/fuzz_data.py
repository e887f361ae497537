"""Generated stand-ins for the data every shipped config names, so that a config can be built here as shipped.

``write_all(root)`` writes small CIFAR-10/100 pickles, image-list folders for ImageNet-LT, Places-LT and
iNaturalist 2018 (every class listed, a few tiny images shared by many lines) and a directory of NMR ladders;
``redirect(config, data, tmp)`` points a config at them and at a stage-1 checkpoint for ``init_from``.
Used by tests/test_config_fuzz.py and tests/test_untrusted.py.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
from fixtures import write_cifar
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
    for i in range(20):
        np.savez(root / f"ladder_{i}.npz", spectra=rng.normal(size=(NMR_LEVELS, NMR_POINTS)), ppm=ppm)


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
