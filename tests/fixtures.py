"""Helpers for the tests: in-process training runs, and data files the tests generate (CIFAR pickles in
torchvision's layout; no download)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def make_split(num_classes: int, per_class: int | Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images ``(N, 3072)`` and shuffled labels ``(N,)``, like a CIFAR file: ``per_class`` images of
    every class, or ``per_class[c]`` of class ``c`` (a long-tailed or unbalanced file, as a user's own data)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    return rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), labels


def dump(path: Path, content, protocol: int = 4) -> None:
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=protocol)


def write_cifar(root: Path, variant: str, train_per_class: int | Sequence[int], test_per_class: int | Sequence[int],
                protocol: int = 4) -> dict:
    """Write ``root/cifar-10-batches-py`` (5 train batches) or ``root/cifar-100-python``; return the arrays.

    A per-class count is one number (balanced) or one per class (``write_cifar(root, "10", [122, ..., 1],
    [55, 53, ...])``: a long-tailed training file and a test file with unequal class counts)."""
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


def assert_same_state(a, b, where: str = "state") -> None:
    """Bit-identical nested checkpoint contents (tensors, dicts, lists, plain values); ``where`` names the entry."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def torchrun(script: str, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 <script> <args>`` from the repository root, one thread per rank,
    with tests/ importable so a config's plugins can name ``ddp_plugin``; it must exit 0 within 300 s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, *args]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in {err.timeout} s (a rank waiting on a collective?)\n"
                    f"stdout:\n{err.stdout}\nstderr:\n{err.stderr}")
    assert done.returncode == 0, f"torchrun exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def rank_states(folder: Path, kind: str) -> tuple[dict, dict]:
    """The two ranks' ``<kind><rank>.pt`` files that tests/ddp_plugin.py's trainers wrote into ``folder``."""
    saved = [folder / f"{kind}{r}.pt" for r in (0, 1)]
    assert all(p.exists() for p in saved), sorted(p.name for p in folder.iterdir()) if folder.exists() else folder
    rank0, rank1 = (torch.load(p, weights_only=True) for p in saved)
    assert rank0["world_size"] == rank1["world_size"] == 2
    return rank0, rank1
