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


SUBNORMAL_PRODUCT = ("    torch.set_num_threads(2)\n"
                     "    x = torch.full((1 << 22,), 1e-30) * 1e-9\n"  # 1e-39 is subnormal in float32
                     "    print(int(x.count_nonzero()))\n")


@pytest.mark.parametrize("probe", [
    # torch imported before run_cli: it flushes at once
    "import torch; from utils.cli import run_cli\ndef main():\n" + SUBNORMAL_PRODUCT + "run_cli(main)\n",
    # the entry points import torch late (inside main): run_cli's import hook flushes as torch loads
    "from utils.cli import run_cli\ndef main():\n    import torch\n" + SUBNORMAL_PRODUCT + "run_cli(main)\n",
], ids=["torch_first", "torch_inside_main"])
def test_entry_points_flush_denormals_in_every_intra_op_thread(probe):
    """run_cli (every entry point) flushes subnormal floats before torch starts its threads: a product that is
    subnormal comes out zero in every chunk of a parallel operation, not only in the main thread's."""
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plain = subprocess.run([sys.executable, "-c", probe.replace("run_cli(main)", "main()")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    if plain.stdout.strip() == "0":
        pytest.skip("this CPU flushes subnormals by default")
    assert done.stdout.strip() == "0"


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def test_messages_name_real_paths_from_outside_the_repository(tiny_config, tmp_path, monkeypatch, capsys):
    """Issue 17.14, run from a directory that is not the repository: 'Evaluate again with' names the repository's
    test.py and the checkpoint as typed from there; -r RUN_DIR names the checkpoints in it; Ctrl-C names the run's
    latest.pth (or says that nothing was saved yet)."""
    import test as test_cli
    import train
    from trainer.classifier import ClassifierTrainer
    from utils import cli
    from utils.errors import CheckpointError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_RESUMABLE", {})
    tiny_config["trainer"]["args"].update(epochs=1, save_dir="saved")
    train.main(["-c", str(_write(tmp_path, tiny_config)), "--run-id", "out"])
    printed = capsys.readouterr().out
    assert f"Evaluate again with: python {ROOT / 'test.py'} -r saved/models/tiny/out/model_best.pth" in printed
    run_dir = tmp_path / "saved/models/tiny/out"
    with pytest.raises(CheckpointError, match="is a run directory, not a checkpoint") as caught:
        test_cli.main(["-r", str(run_dir)])
    assert f"{run_dir / 'model_best.pth'} or {run_dir / 'latest.pth'}" in str(caught.value)

    def interrupted(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(ClassifierTrainer, "_train_epoch", interrupted)
    for run_id, expected in (("cut", "interrupted before the first epoch was saved: saved/models/tiny/cut/latest.pth "
                                     "does not exist yet"),
                             (None, f"interrupted; resume the run with: python {ROOT / 'train.py'} -r "
                                    "saved/models/tiny/out/latest.pth")):
        argv = ["-c", str(tmp_path / "config.json"), "--run-id", run_id] if run_id else \
            ["-r", str(run_dir / "latest.pth"), "--set", "trainer.args.epochs=2"]
        with pytest.raises(SystemExit) as stopped:
            cli.run_cli(lambda argv=argv: train.main(argv))
        assert stopped.value.code == 130
        assert expected in capsys.readouterr().err


def test_stage_2_before_stage_1_names_init_from_and_the_stage_1_command(tmp_path):
    """Issue 17.12: the missing checkpoint comes from init_from, and stage 1 must run first: the message says so
    with the command (the run name in the path is a shipped config's), before any data is read."""
    done = cli(str(ROOT / "train.py"), "-c", str(ROOT / "configs/lnr/quickstart_digits_stage2.json"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert 'config["init_from"]' in done.stderr and "must have finished first" in done.stderr
    assert (f"python {ROOT / 'train.py'} -c {ROOT / 'configs/lnr/quickstart_digits_stage1.json'} --run-id quickstart"
            in done.stderr)
    assert not (tmp_path / "saved").exists()
    elsewhere = cli(str(ROOT / "train.py"), "-c", str(ROOT / "configs/lnr/quickstart_digits_stage2.json"),
                    "--init-from", "runs/models/nowhere/x/model_best.pth", cwd=tmp_path)
    assert elsewhere.returncode == 2 and "train the run 'nowhere' with --run-id x (save_dir runs)" in elsewhere.stderr


def test_a_validation_split_that_holds_back_nothing_asks_for_a_larger_one():
    """Issue 17.11: 'validation_split=0.1 leaves 6 of 6 samples for training; choose a smaller split' asked for the
    wrong change."""
    from base.base_data_loader import BaseDataLoader

    with pytest.raises(ValueError, match=r"holds back none for validation .*choose a larger split: a count such as "
                                         r"validation_split=1, or a fraction of at least 1/6 = 0\.1667"):
        BaseDataLoader._split(list(range(6)), 0.1, 0)
    with pytest.raises(ValueError, match="asks for 6 of the 6 samples .*leaving none for training; choose a smaller"):
        BaseDataLoader._split(list(range(6)), 6, 0)
