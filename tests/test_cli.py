"""The command lines a user types, run as subprocesses exactly as the README shows them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_quickstart_then_test_py_writes_design_json(tmp_path):
    trained = cli(str(ROOT / "train.py"), "-c", str(ROOT / "configs/quickstart_digits_lt.json"),
                  "--epochs", "3", "--run-id", "cli", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    for word in ("accuracy", "many", "medium", "few", "ece"):
        assert word in trained.stdout
    best = tmp_path / "saved/models/quickstart_digits_lt/cli/model_best.pth"
    assert best.exists()
    assert (tmp_path / "saved/log/quickstart_digits_lt/cli/train.log").exists()
    assert list((tmp_path / "saved/log/quickstart_digits_lt/cli").glob("events.out.tfevents.*"))

    tested = cli(str(ROOT / "test.py"), "-r", str(best), "--out", "m.json", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    result = json.loads((tmp_path / "m.json").read_text())
    assert set(result) >= {"metrics", "n", "checkpoint"}
    assert result["n"] == 500 and result["checkpoint"] == str(best)
    assert set(result["metrics"]) >= {"accuracy", "top5", "many", "medium", "few", "ece", "mce"}
    assert 0 <= result["metrics"]["accuracy"] <= 100


def test_user_error_is_one_line_and_exit_2(tmp_path):
    done = cli(str(ROOT / "train.py"), "-c", str(ROOT / "configs/quickstart_digits_lt.json"),
               "--set", "arch.type=ResNet23", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "unknown model 'ResNet23' in registry MODELS. Did you mean 'ResNet32'" in done.stderr
    assert not (tmp_path / "saved").exists()


def test_list_shows_registered_names(tmp_path):
    done = cli(str(ROOT / "train.py"), "--list", "models", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ResNet32" in done.stdout and "SGD" not in done.stdout
    every = cli(str(ROOT / "train.py"), "--list", cwd=tmp_path)
    for name in ("DigitsLT", "CrossEntropy", "shot_accuracy", "ClassifierTrainer", "SGD", "WarmupMultiStepLR"):
        assert name in every.stdout


def test_list_with_a_misspelt_kind_suggests_the_close_one():
    import train
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--list modles: unknown kind\. Did you mean 'models'\? Choose from "):
        train.list_registered("modles")
    with pytest.raises(ConfigError, match=r"^--list xyz: unknown kind\. Choose from "):
        train.list_registered("xyz")
    assert "ResNet32" in train.list_registered("model")


def test_entry_points_flush_denormals_in_every_intra_op_thread(tmp_path):
    """run_cli (every entry point) flushes subnormal floats before torch starts its threads: a product that is
    subnormal comes out zero in every chunk of a parallel operation, not only in the main thread's."""
    probe = ("import torch; from utils.cli import run_cli; torch.set_num_threads(2)\n"
             "def main():\n"
             "    x = torch.full((1 << 22,), 1e-30) * 1e-9\n"  # 1e-39 is subnormal in float32
             "    print(int(x.count_nonzero()))\n"
             "run_cli(main)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plain = subprocess.run([sys.executable, "-c", probe.replace("run_cli(main)", "main()")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    if plain.stdout.strip() == "0":
        pytest.skip("this CPU flushes subnormals by default")
    assert done.stdout.strip() == "0"
