"""Procedurally generated CIFAR-shaped image sets for the fidelity benchmark (no download, no bundled data).

    python benchmarks/fidelity_data.py OUT_DIR [--classes 10|100] [--train-per-class N] [--test-per-class M]
                                       [--seed S]

writes ``OUT_DIR/cifar-10-batches-py`` (5 training batches + ``test_batch``) or ``OUT_DIR/cifar-100-python``
(``train``, ``test``, ``meta``) in torchvision's on-disk layout, so the framework's ``CIFAR10LT`` / ``CIFAR100LT``
loaders (and torchvision) read them unchanged, plus ``OUT_DIR/README.txt``.

Like the real CIFAR files, the TRAINING pool is balanced (``N`` images a class): the loaders make it long-tailed
themselves with the paper configs' ``imb_factor`` (``n_i = int(N * imb_factor ** (i / (C - 1)))``, e.g.
``N`` = 500 and IR 100 give 500 down to 5 a class, CIFAR-10-LT's profile scaled by 1/10). The test split is
balanced (``M`` a class).

Each image is 32x32 RGB and is built from class-specific structure with intra-class variation and noise:

- a sinusoidal grating whose orientation (5 levels in [0, 90] degrees, so horizontal flips, the CIFAR
  augmentation, map no class onto another) and spatial frequency (2 levels) are the class's *grating code*;
  per image the orientation is jittered (s.d. 6 degrees), the frequency scaled by U(0.8, 1.25), the phase random;
- a foreground shape (disk, square, triangle, ring, cross, diamond, bar, star, two dots, hollow square) at a
  random position, scale and small rotation, the class's *shape code*;
- a colour palette (background pair and foreground colour, one of 6), a *weak* cue: shared between classes,
  and replaced by a random palette in 30% of the images; every colour is jittered per image;
- per-image contrast and brightness, a random occluding blob in 30% of the images, Gaussian pixel noise.

10 classes: class c has grating code c and shape code 2 * (3c mod 5), so classes c and c + 5 share a shape
and an orientation and differ by the grating's frequency; 100 classes: the 100 (grating, shape)
combinations in a seeded random order. A class is therefore learnable only from the conjunction of grating and
shape under noise: learnable, not trivial. Generation is deterministic in ``seed`` (train and test use
different streams).
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

SIZE = 32
ORIENTATIONS = np.deg2rad([0.0, 22.5, 45.0, 67.5, 90.0])
FREQUENCIES = (2.0, 4.5)  # cycles per image
SHAPES = ("disk", "square", "triangle", "ring", "cross", "diamond", "bar", "star", "dots", "hollow")
PALETTES = np.array([  # (background a, background b, foreground), RGB in [0, 1]
    [[0.15, 0.20, 0.55], [0.55, 0.65, 0.90], [0.95, 0.85, 0.20]],
    [[0.50, 0.10, 0.10], [0.90, 0.55, 0.45], [0.20, 0.85, 0.80]],
    [[0.10, 0.40, 0.15], [0.55, 0.85, 0.50], [0.85, 0.20, 0.70]],
    [[0.35, 0.35, 0.35], [0.80, 0.80, 0.80], [0.90, 0.30, 0.10]],
    [[0.45, 0.30, 0.05], [0.95, 0.80, 0.45], [0.10, 0.30, 0.90]],
    [[0.30, 0.05, 0.40], [0.75, 0.55, 0.90], [0.30, 0.90, 0.20]],
])
PALETTE_NOISE = 0.30  # share of images drawn with a random palette
_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) / (SIZE - 1) * 2 - 1  # [-1, 1]


def class_codes(num_classes: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """``(grating code, shape code, palette)`` of every class; grating code = orientation + 5 * frequency."""
    if num_classes == 10:
        return [(c, 2 * ((3 * c) % 5), c % len(PALETTES)) for c in range(10)]
    if num_classes == 100:
        order = np.random.RandomState(seed + 7).permutation(100)
        return [(int(k) % 10, int(k) // 10, int(k) % len(PALETTES)) for k in order]
    raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")


def _shape_mask(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    x, y = _X - cx, _Y - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y  # shape-aligned coordinates
    d = np.hypot(u, v)
    if shape == "disk":
        return d <= r
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= r * 0.85
    if shape == "triangle":
        return (v <= r * 0.7) & (v >= -r * 0.9 + 1.9 * abs(u))
    if shape == "ring":
        return (d <= r) & (d >= r * 0.55)
    if shape == "cross":
        return ((abs(u) <= r * 0.3) | (abs(v) <= r * 0.3)) & (np.maximum(abs(u), abs(v)) <= r)
    if shape == "diamond":
        return abs(u) + abs(v) <= r
    if shape == "bar":
        return (abs(u) <= r) & (abs(v) <= r * 0.3)
    if shape == "star":
        theta = np.arctan2(v, u)
        return d <= r * (0.55 + 0.45 * np.cos(5 * theta))
    if shape == "dots":
        return (np.hypot(u - r * 0.55, v) <= r * 0.4) | (np.hypot(u + r * 0.55, v) <= r * 0.4)
    if shape == "hollow":
        m = np.maximum(abs(u), abs(v))
        return (m <= r * 0.9) & (m >= r * 0.55)
    raise ValueError(shape)


def render(code: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """One image of a class, float ``(3, 32, 32)`` in [0, 1]."""
    grating, shape, palette = code
    theta = ORIENTATIONS[grating % 5] + rng.normal(0, np.deg2rad(6))
    freq = FREQUENCIES[grating // 5] * rng.uniform(0.8, 1.25)
    phase = rng.uniform(0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(np.pi * freq * (_X * np.cos(theta) + _Y * np.sin(theta)) + phase)
    if rng.random() < PALETTE_NOISE:
        palette = int(rng.integers(len(PALETTES)))
    colours = np.clip(PALETTES[palette] + rng.normal(0, 0.08, (3, 3)), 0, 1)
    image = colours[0][:, None, None] * (1 - wave) + colours[1][:, None, None] * wave
    r = rng.uniform(0.35, 0.6)
    cx, cy = rng.uniform(-0.35, 0.35, 2)
    mask = _shape_mask(SHAPES[shape], cx, cy, r, rng.normal(0, np.deg2rad(12)))
    image = np.where(mask[None], colours[2][:, None, None] * rng.uniform(0.8, 1.0), image)
    if rng.random() < 0.3:  # an occluding blob of a random colour
        bx, by = rng.uniform(-0.9, 0.9, 2)
        blob = np.hypot(_X - bx, _Y - by) <= rng.uniform(0.15, 0.35)
        image = np.where(blob[None], rng.uniform(0, 1, 3)[:, None, None], image)
    image = (image - 0.5) * rng.uniform(0.6, 1.1) + 0.5 + rng.normal(0, 0.06)
    image = image + rng.normal(0, 0.12, image.shape)
    return np.clip(image, 0, 1)


def generate(num_classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced images ``(N, 3072)`` uint8 in CIFAR's row layout (R plane, G plane, B plane) and shuffled labels."""
    codes = class_codes(num_classes)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    data = np.empty((len(labels), 3 * SIZE * SIZE), dtype=np.uint8)
    for i, label in enumerate(labels):
        data[i] = np.round(render(codes[label], rng) * 255).astype(np.uint8).reshape(-1)
    return data, labels


def _dump(path: Path, content: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=4)


def write_set(root: str | Path, num_classes: int = 10, train_per_class: int = 500, test_per_class: int = 100,
              seed: int = 0) -> Path:
    """Write one generated set under ``root`` in torchvision's layout and return the CIFAR folder."""
    root = Path(root)
    train_x, train_y = generate(num_classes, train_per_class, seed=seed * 2 + 1)
    test_x, test_y = generate(num_classes, test_per_class, seed=seed * 2 + 2)
    names = [f"g{g}_{SHAPES[s]}" for g, s, _ in class_codes(num_classes)]
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for i, part in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
            _dump(folder / f"data_batch_{i}", {b"batch_label": f"training batch {i} of 5".encode(),
                                               b"labels": train_y[part].tolist(), b"data": train_x[part]})
        _dump(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": test_y.tolist(),
                                      b"data": test_x})
        _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in names],
                                        b"num_cases_per_batch": len(train_y) // 5, b"num_vis": 3072})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = lambda y: (np.asarray(y) // 5).tolist()  # noqa: E731  (20 groups of 5, as CIFAR-100 has)
        _dump(folder / "train", {b"fine_labels": train_y.tolist(), b"coarse_labels": coarse(train_y),
                                 b"data": train_x})
        _dump(folder / "test", {b"fine_labels": test_y.tolist(), b"coarse_labels": coarse(test_y), b"data": test_x})
        _dump(folder / "meta", {b"fine_label_names": [n.encode() for n in names],
                                b"coarse_label_names": [f"group{i}".encode() for i in range(20)]})
    counts = [int(train_per_class * 0.01 ** (i / (num_classes - 1))) for i in range(num_classes)]
    (root / "README.txt").write_text(
        f"Generated by benchmarks/fidelity_data.py (seed {seed}); procedurally generated images, no real photos.\n"
        f"Layout: {folder.name}/ in torchvision's CIFAR-{num_classes} on-disk format (uint8 rows of 3072 = "
        "R, G, B planes of 32x32).\n"
        f"Classes: {num_classes}; class c = grating code (orientation x frequency) + shape code, palette a weak "
        "shared cue; see the module docstring for the recipe.\n"
        f"Train: BALANCED pool of {train_per_class} images a class ({len(train_y)} images), as the real CIFAR "
        "files; the CIFAR10LT/CIFAR100LT loaders make it long-tailed with imb_factor (IR 100 -> "
        f"{counts[0]} down to {counts[-1]} a class, {sum(counts)} images).\n"
        f"Test: balanced, {test_per_class} images a class ({len(test_y)} images).\n"
        f"Use: --set data_loader.args.data_dir={root} --set data_loader.args.download=false\n"
        f"Class names (label order): {', '.join(names)}\n")
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--classes", type=int, default=10, choices=(10, 100))
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = write_set(args.out, args.classes, args.train_per_class, args.test_per_class, args.seed)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
