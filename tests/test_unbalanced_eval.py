"""Evaluation on the data users have: a CIFAR-10-format set whose training file is long-tailed already (122
down to 1 image a class, 288 images) and whose test file has 52 to 55 images a class. test_all.py and
test_training.py score all 11 test-agnostic splits on it, drawn from the smallest class, and say so."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures import run_training, write_cifar

from data_loader.cifar import CIFAR10LT
from data_loader.long_tail import long_tailed_counts
from data_loader.test_agnostic import SPLIT_NAMES, describe_splits, format_split_report, formula_splits
from utils.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
TRAIN = long_tailed_counts(122, 10, 1 / 122)  # 122 71 41 24 14 8 4 2 1 1
TEST = [55, 53, 52, 54, 55, 52, 53, 54, 52, 55]


def expected_per_class(n: int, classes: int = 10) -> dict[str, list[int]]:
    """Images of each class in every split when the smallest test class has ``n`` (the formula, written out)."""
    out = {}
    for f in (50, 25, 10, 5, 2):
        forward = [int(n * (1 / f) ** (i / (classes - 1))) for i in range(classes)]
        out[f"forward{f}"], out[f"backward{f}"] = forward, forward[::-1]
    out["uniform"] = [n] * classes
    return out


def labels_with(counts: list[int], seed: int = 3) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def test_unbalanced_test_set_is_split_from_its_smallest_class():
    labels = labels_with(TEST)
    splits = formula_splits(labels, 10)
    assert list(splits) == list(SPLIT_NAMES)
    expected = expected_per_class(52)
    for name, index in splits.items():
        assert len(np.unique(index)) == len(index)
        assert np.bincount(labels[index], minlength=10).tolist() == expected[name], name
    # seeded: the same images every time, and forward50's images of a class are among forward2's
    again = formula_splits(labels, 10)
    assert all(np.array_equal(splits[n], again[n]) for n in splits)
    assert set(splits["forward50"]) <= set(splits["forward2"])
    report = describe_splits(labels, splits, 10)
    assert not report["balanced"] and report["per_class"] == TEST and report["n"] == sum(TEST)
    assert report["splits"]["uniform"] == {"n": 520, "per_class": [52] * 10}
    text = format_split_report(report)
    assert "UNBALANCED: 52 to 55 a class" in text and "uniform uses 520 of the 535 images" in text
    assert "forward50      141 of 535: 52 33 21 14 9 5 3 2 1 1" in text


def test_balanced_test_set_splits_are_unchanged():
    labels = labels_with([50] * 10)
    splits = formula_splits(labels, 10)
    assert np.array_equal(splits["uniform"], np.arange(500))
    assert np.bincount(labels[splits["forward50"]], minlength=10).tolist() == expected_per_class(50)["forward50"]
    report = describe_splits(labels, splits, 10)
    assert report["balanced"] and format_split_report(report) == "test set: 500 images, 50 of each of 10 classes " \
                                                                  "(balanced)"


def test_a_class_without_test_images_is_an_error():
    with pytest.raises(DataError, match=r"no image of class\(es\) \[4\]"):
        formula_splits(labels_with([5, 5, 5, 5, 0, 5]), 6)


def test_a_long_tailed_training_file_is_kept_as_it_is(tmp_path):
    write_cifar(tmp_path, "10", TRAIN, TEST)
    train = CIFAR10LT(data_dir=str(tmp_path), imb_factor=None, batch_size=32)
    assert train.cls_num_list == TRAIN and len(train.dataset) == sum(TRAIN) == 288
    assert np.bincount(train.dataset.targets.numpy(), minlength=10).tolist() == TRAIN
    test = CIFAR10LT(data_dir=str(tmp_path), imb_factor=None, training=False)
    counts = {name: np.bincount(test.test_targets().numpy()[index], minlength=10).tolist()
              for name, index in test.test_agnostic_splits().items()}
    assert counts == expected_per_class(52)


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env=env)
    assert done.returncode == 0, f"{script} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def check_result(result: dict, stdout: str) -> None:
    """11 splits with the images the formula gives from 52 a class, said to be drawn from an unbalanced set."""
    expected = expected_per_class(52)
    assert list(result["splits"]) == list(SPLIT_NAMES)
    for name, scores in result["splits"].items():
        assert scores["n"] == sum(expected[name]), name
        assert result["test_set"]["splits"][name]["per_class"] == expected[name], name
        assert all(scores[k] is not None for k in ("many", "medium", "few", "all")), name  # no group is empty
        assert f"\n{name:<12}{scores['n']:>7}" in stdout, name
    assert result["test_set"]["per_class"] == TEST and result["test_set"]["balanced"] is False
    footnote = "many/medium/few by class index: 0-2 / 3-6 / 7-9 (training images 122-41 / 24-4 / 2-1)"
    assert result["shot_groups"] == footnote and footnote in stdout
    assert "test set: 535 images, UNBALANCED: 52 to 55 a class" in stdout


@pytest.mark.slow
def test_both_clis_score_all_11_splits_on_an_unbalanced_test_set(tmp_path):
    trained_on = tmp_path / "data_on_the_training_machine"
    write_cifar(trained_on, "10", TRAIN, TEST)
    config = {
        "name": "user_cifar10", "seed": 0,
        "arch": {"type": "MultiExpertResNet32", "args": {"num_classes": 10, "width": 4, "hypernet": {"hidden": 8}}},
        "data_loader": {"type": "CIFAR10LT", "args": {"data_dir": str(trained_on), "imb_factor": None,
                                                      "batch_size": 64, "augment": ["crop", "flip"]}},
        "loss": {"type": "DiverseExpertLoss", "args": {"tau": 2.0, "scalarization": "stch", "mu": 1.0}},
        "metrics": [{"type": "accuracy", "args": {}},
                    {"type": "shot_accuracy", "args": dict(CIFAR10LT.shot_groups)}],
        "optimizer": {"type": "SGD", "args": {"lr": 0.05, "momentum": 0.9}},
        "trainer": {"type": "HyperExpertTrainer", "args": {"epochs": 1, "save_dir": str(tmp_path / "saved"),
                                                          "monitor": "max val_accuracy", "tensorboard": False,
                                                          "device": "cpu"}},
    }
    _, parsed = run_training(config, "u")
    best = str(parsed.model_dir / "model_best.pth")
    # the data is elsewhere on the test machine: without --data_dir the checkpoint's directory is missing
    here = tmp_path / "data_here"
    trained_on.rename(here)

    done = run("test_all.py", "-r", best, "--data_dir", str(here), "--out", str(tmp_path / "all.json"), "-d", "cpu")
    check_result(json.loads((tmp_path / "all.json").read_text()), done.stdout)

    done = run("test_training.py", "-c", str(ROOT / "configs/experts/test_time_cifar100.json"), "-r", best,
               "--data_dir", str(here), "--set", "trainer.args.epochs=1", "--out", str(tmp_path / "tt.json"),
               "-d", "cpu")
    result = json.loads((tmp_path / "tt.json").read_text())
    check_result(result, done.stdout)
    assert "transductive, 1 epochs" in done.stdout  # --set reached the test-time trainer
    assert all(len(r["weights"]) == 3 and len(r["preference"]) == 3 for r in result["splits"].values())


def test_data_dir_on_a_loader_without_one_is_refused(tiny_config):
    from parse_config import ConfigParser
    from train import with_data_dir
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match="DigitsLT reads no data directory"):
        with_data_dir(ConfigParser(tiny_config), "/elsewhere", "test_all.py", required=True)
    assert with_data_dir(ConfigParser(tiny_config), "/elsewhere", "test.py").config == ConfigParser(tiny_config).config


def test_cifar_split_lists_replace_the_formula(tmp_path):
    write_cifar(tmp_path, "10", TRAIN, TEST)
    (tmp_path / "uniform.txt").write_text("\n".join(map(str, range(0, 535, 2))) + "\n\n")
    (tmp_path / "forward2.txt").write_text("7\n3\n500\n")
    loader = CIFAR10LT(data_dir=str(tmp_path), imb_factor=None, training=False,
                       split_lists={"uniform": "uniform.txt", "forward2": str(tmp_path / "forward2.txt")})
    splits = loader.test_agnostic_splits()
    assert list(splits) == ["forward2", "uniform"]
    assert splits["forward2"].tolist() == [7, 3, 500] and splits["uniform"].tolist() == list(range(0, 535, 2))
    for text, message in (("1\nx\n", r"forward2.txt, line 2: 'x' is not a test-set position"),
                          ("535\n", r"line 1: position 535 is outside the test set of 535 images"),
                          ("4\n\n4\n", r"line 3: position 4 is listed twice \(first on line 1\)"),
                          ("-1\n", r"'-1' is not a test-set position")):
        (tmp_path / "forward2.txt").write_text(text)
        with pytest.raises(DataError, match=message):
            loader.test_agnostic_splits()


@pytest.mark.parametrize("argv", [["-r", "model_best.pth"], ["-c", "configs/experts/test_time_cifar100.json"]])
def test_test_training_needs_a_config_and_a_checkpoint(argv):
    import test_training
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a test-time config and a multi-expert checkpoint: -c configs/"):
        test_training.main(argv)
