"""Test-agnostic evaluation splits (LADE / SADE / PRL protocol).

A model trained on long-tailed data is scored on test sets whose class distribution is itself
long-tailed forward (like training), uniform, or long-tailed backward (the tail classes most frequent).
Each split is a list of indices into the full test set, so ``test_all.py`` runs the model once and
scores every split from the same logits.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from data_loader.long_tail import subsample_per_class
from utils.errors import DataError

FACTORS = (50, 25, 10, 5, 2)
SPLIT_NAMES = tuple([f"forward{f}" for f in FACTORS] + ["uniform"] + [f"backward{f}" for f in reversed(FACTORS)])


def formula_splits(targets: Sequence[int], num_classes: int, factors: Sequence[int] = FACTORS,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Splits of a balanced test set by the imbalance formula.

    forward f: class i keeps ``int(n * (1/f) ** (i / (C - 1)))`` of its ``n`` test images; backward f
    mirrors it (``(C - 1 - i)``); uniform is the whole set. Images are the first after a per-class
    shuffle of a generator seeded with ``seed`` (SADE's ``np.random.seed(0)``), fresh for each split.
    """
    targets = np.asarray(targets)
    per_class = np.bincount(targets, minlength=num_classes)
    if per_class.min() != per_class.max():
        raise DataError(f"the test-agnostic formula needs a balanced test set; class counts range from "
                        f"{per_class.min()} to {per_class.max()}. Give split lists instead")
    n = int(per_class[0])
    splits: dict[str, np.ndarray] = {}
    for direction in ("forward", "backward"):
        for f in factors:
            exponents = np.arange(num_classes) / (num_classes - 1)
            if direction == "backward":
                exponents = exponents[::-1]
            counts = [int(n * (1.0 / f) ** e) for e in exponents]
            splits[f"{direction}{f}"] = np.sort(subsample_per_class(targets, counts, seed=seed))
    splits["uniform"] = np.arange(len(targets))
    return {name: splits[name] for name in _ordered(splits)}


def list_splits(test_entries: Sequence[str], split_files: Mapping[str, str | Path]) -> dict[str, np.ndarray]:
    """Splits given as image lists (``relative/path label`` per line), as ImageNet-LT/Places-LT/iNat ship.

    Each listed path must be one of ``test_entries`` (the full test list, in loader order); it maps
    to that index. A path that is not in the test list is an error naming the file and line.
    """
    position = {entry: i for i, entry in enumerate(test_entries)}
    splits: dict[str, np.ndarray] = {}
    for name, file in split_files.items():
        file = Path(file)
        if not file.is_file():
            raise DataError(f"split list {file} (split '{name}') does not exist")
        indices = []
        for line_no, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            path = line.split()[0]
            if path not in position:
                raise DataError(f"{file}, line {line_no}: '{path}' is not in the test list, so split '{name}' "
                                "cannot be scored from the test-set logits")
            indices.append(position[path])
        if not indices:
            raise DataError(f"split list {file} (split '{name}') is empty")
        splits[name] = np.asarray(indices)
    return {name: splits[name] for name in _ordered(splits)}


def _ordered(names) -> list[str]:
    """forward (most skewed first), uniform, backward (least skewed first), then any other names."""
    directional = sorted((n for n in names if _split_key(n) is not None), key=_split_key)
    return directional + sorted(n for n in names if _split_key(n) is None)


def _split_key(name: str) -> tuple[int, float] | None:
    if name == "uniform":
        return (1, 0.0)
    for rank, prefix, sign in ((0, "forward", -1.0), (2, "backward", 1.0)):
        factor = name[len(prefix):]
        if name.startswith(prefix) and factor.replace(".", "", 1).isdigit():
            return (rank, sign * float(factor))
    return None
