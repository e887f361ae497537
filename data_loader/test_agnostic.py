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
    """Splits of a test set by the imbalance formula.

    With ``n`` the test images of the smallest class (every class of a balanced set): forward f keeps
    ``int(n * (1/f) ** (i / (C - 1)))`` images of class i, backward f mirrors it (``(C - 1 - i)``), uniform
    keeps ``n`` of every class (on a balanced set: the whole set). Images are the first after a per-class
    shuffle of a generator seeded with ``seed`` (SADE's ``np.random.seed(0)``), fresh for each split. An
    unbalanced test set (a user's own data: 52 to 55 images a class) is therefore scored on subsets drawn
    from ``n`` images a class; :func:`describe_splits` says how many of each class every split used.

    Raises:
        DataError: a class has no test image (no split could score it).
    """
    targets = np.asarray(targets)
    per_class = np.bincount(targets, minlength=num_classes)
    if per_class.min() < 1:
        empty = [int(c) for c in np.flatnonzero(per_class < 1)]
        raise DataError(f"the test set has no image of class(es) {empty[:10]}{' ...' if len(empty) > 10 else ''} "
                        f"(per-class counts {per_class.min()} to {per_class.max()}); every test-agnostic split "
                        "scores every class, so each class needs at least one test image")
    n = int(per_class.min())
    splits: dict[str, np.ndarray] = {}
    for direction in ("forward", "backward"):
        for f in factors:
            exponents = np.arange(num_classes) / (num_classes - 1)
            if direction == "backward":
                exponents = exponents[::-1]
            counts = [int(n * (1.0 / f) ** e) for e in exponents]
            splits[f"{direction}{f}"] = np.sort(subsample_per_class(targets, counts, seed=seed))
    if per_class.max() == n:
        splits["uniform"] = np.arange(len(targets))
    else:
        splits["uniform"] = np.sort(subsample_per_class(targets, [n] * num_classes, seed=seed))
    return {name: splits[name] for name in _ordered(splits)}


def describe_splits(targets: Sequence[int], splits: Mapping[str, Sequence[int]], num_classes: int) -> dict:
    """What every split scored: ``{"n", "per_class", "balanced", "splits": {name: {"n", "per_class"}}}``.

    ``per_class`` lists the images of each class (of the whole test set, and of each split), so a report can
    say that an unbalanced test set was subsampled and how much of it each split used.
    """
    targets = np.asarray(targets)
    per_class = np.bincount(targets, minlength=num_classes)
    return {"n": int(len(targets)), "per_class": per_class.tolist(),
            "balanced": bool(per_class.min() == per_class.max()),
            "splits": {name: {"n": int(len(index)),
                              "per_class": np.bincount(targets[np.asarray(index, dtype=np.int64)],
                                                       minlength=num_classes).tolist()}
                       for name, index in splits.items()}}


def format_split_report(report: Mapping) -> str:
    """Lines for the CLIs: the test set's class counts and, when it is unbalanced, what each split used."""
    per_class = report["per_class"]
    low, high = min(per_class), max(per_class)
    if report["balanced"]:
        return f"test set: {report['n']} images, {low} of each of {len(per_class)} classes (balanced)"
    lines = [f"test set: {report['n']} images, UNBALANCED: {low} to {high} a class ({_counts(per_class)}); every "
             f"split is drawn from {low} images a class (seed 0), so uniform uses {low * len(per_class)} of the "
             f"{report['n']} images. Images used per split and class:"]
    lines += [f"  {name:<12}{r['n']:>6} of {report['n']}: {_counts(r['per_class'])}"
              for name, r in report["splits"].items()]
    return "\n".join(lines)


def _counts(values: Sequence[int], limit: int = 20) -> str:
    """``"55 54 52 ..."``: every value up to ``limit`` classes, else the first and last few."""
    values = [str(v) for v in values]
    if len(values) > limit:
        values = values[:8] + ["..."] + values[-8:]
    return " ".join(values)


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


def index_splits(n_test: int, split_files: Mapping[str, str | Path]) -> dict[str, np.ndarray]:
    """Splits given as files of test-set positions, for test sets held as arrays (CIFAR's format).

    Each file lists one 0-based position in the test file per line (blank lines are skipped). A line that is
    not an integer, a position outside ``0..n_test - 1`` or one listed twice is an error naming the file and line.
    """
    splits: dict[str, np.ndarray] = {}
    for name, file in split_files.items():
        file = Path(file)
        if not file.is_file():
            raise DataError(f"split list {file} (split '{name}') does not exist")
        indices: list[int] = []
        first_line: dict[int, int] = {}
        for line_no, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            text = line.strip()
            if not text:
                continue
            if not text.isdigit():
                raise DataError(f"{file}, line {line_no}: {text!r} is not a test-set position (one 0-based integer "
                                f"per line, 0..{n_test - 1})")
            index = int(text)
            if index >= n_test:
                raise DataError(f"{file}, line {line_no}: position {index} is outside the test set of {n_test} images "
                                f"(0..{n_test - 1})")
            if index in first_line:
                raise DataError(f"{file}, line {line_no}: position {index} is listed twice (first on line "
                                f"{first_line[index]}); a split scores each image once")
            first_line[index] = line_no
            indices.append(index)
        if not indices:
            raise DataError(f"split list {file} (split '{name}') is empty")
        splits[name] = np.asarray(indices, dtype=np.int64)
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
