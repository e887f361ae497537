"""Helpers for the tests: in-process training runs, and data files the tests generate (CIFAR pickles in
torchvision's layout; no download)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def make_split(num_classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images ``(N, 3072)`` and shuffled, balanced labels ``(N,)``, like a CIFAR file."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    return rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), labels


def dump(path: Path, content, protocol: int = 4) -> None:
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=protocol)


def write_cifar(root: Path, variant: str, train_per_class: int, test_per_class: int, protocol: int = 4) -> dict:
    """Write ``root/cifar-10-batches-py`` (5 train batches) or ``root/cifar-100-python``; return the arrays."""
    classes, folder, key = (10, "cifar-10-batches-py", b"labels") if variant == "10" else \
        (100, "cifar-100-python", b"fine_labels")
    (root / folder).mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_split(classes, train_per_class, seed=1)
    test_x, test_y = make_split(classes, test_per_class, seed=2)
    if variant == "10":
        for i, part in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
            dump(root / folder / f"data_batch_{i}",
                 {b"batch_label": b"training batch", b"data": train_x[part], key: train_y[part].tolist()}, protocol)
        dump(root / folder / "test_batch", {b"data": test_x, key: test_y.tolist()}, protocol)
    else:
        dump(root / folder / "train", {b"data": train_x, key: train_y.tolist(),
                                       b"coarse_labels": (train_y // 5).tolist()}, protocol)
        dump(root / folder / "test", {b"data": test_x, key: test_y.tolist()}, protocol)
    return {"root": root, "dir": root / folder, "train": (train_x, train_y), "test": (test_x, test_y)}


def run_training(config: dict, run_id: str | None, resume: Path | None = None):
    """Train like train.py does, in-process; returns ``(trainer, parsed config)``."""
    import train
    from parse_config import ConfigParser

    parsed = ConfigParser(config, run_id=run_id, resume=resume)
    trainer = train.build_trainer(parsed)
    if resume:
        trainer.resume(resume)
    parsed.prepare_run_dirs()
    trainer.train()
    trainer.close()
    return trainer, parsed
