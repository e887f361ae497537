"""Shared fixtures: a tiny digits config that trains in about a second on CPU."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import parse_config  # noqa: E402,F401  (its registries import every built-in component on first look-up)

TINY = {
    "name": "tiny",
    "seed": 0,
    "arch": {"type": "ResNet32", "args": {"num_classes": 10, "in_channels": 1, "width": 4}},
    "data_loader": {"type": "DigitsLT", "args": {"batch_size": 64, "imb_factor": 0.1, "validation": "heldout"}},
    "loss": {"type": "CrossEntropy", "args": {}},
    "metrics": [{"type": "accuracy", "args": {}}, {"type": "top5", "args": {}},
                {"type": "shot_accuracy", "args": {"many_threshold": 60, "few_threshold": 20}},
                {"type": "ece", "args": {}}],
    "optimizer": {"type": "SGD", "args": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}},
    # no milestone: a tiny run is 1 to 4 epochs, and a milestone the run never reaches is refused (tests that need a
    # decay set their own)
    "lr_scheduler": {"type": "WarmupMultiStepLR", "args": {"milestones": [], "gamma": 0.1, "warmup_epochs": 1}},
    "trainer": {"type": "ClassifierTrainer",
                "args": {"epochs": 2, "save_dir": "saved", "monitor": "max val_accuracy", "tensorboard": False}},
}


@pytest.fixture(autouse=True)
def _denormals_back_on():
    """Entry points run in-process (``run_cli``) flush subnormal floats for the whole process, as they should in a
    real run; turn it off again after each test, so that later tests (hypothesis draws subnormal floats and refuses
    to run where they are flushed) do not depend on the order the tests ran in."""
    yield
    if "torch" in sys.modules:
        sys.modules["torch"].set_flush_denormal(False)


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    """Full-size random CIFAR-10 (5,000 / 1,000 per class) and CIFAR-100 (500 / 100) in one directory.

    Written once per session (about 300 MB); ``root`` is what a config's ``data_dir`` points at.
    """
    from fixtures import write_cifar

    root = tmp_path_factory.mktemp("cifar")
    return {"root": root, "10": write_cifar(root, "10", 5000, 1000), "100": write_cifar(root, "100", 500, 100)}


@pytest.fixture
def tiny_config(tmp_path):
    """A fresh copy of the tiny config saving under ``tmp_path/saved``."""
    config = copy.deepcopy(TINY)
    config["trainer"]["args"]["save_dir"] = str(tmp_path / "saved")
    return config
