"""DDP end to end (issue 7): ``torchrun --standalone --nproc_per_node 2 train.py`` on CPU with gloo, for
ClassifierTrainer (with and without validation) and NMRDenoiseTrainer.

Each run trains two short epochs (so the second epoch exercises the samplers' ``set_epoch``, fresh simulated
ladders, phase B and overwriting checkpoints) and then tests, as ``train.py`` does. Checked: exit 0; one run
directory with one set of files (``config.json``, ``latest.pth``, ``model_best.pth`` when monitored, one
``train.log``); each epoch logged once; the checkpoint records world_size 2; the ranks end training with identical
weights (parameters and buffers, equal to ``latest.pth``) and identical epoch logs; both ranks' final tests use the
same weights and report the same result; and the validation and test results reduced over the two shards equal one
process scoring the whole sets with the same weights (the NMR sets have odd sizes, so the evaluation shards differ
in length and each spectrum must be counted once).

Each rank's weights and results come from the plugin tests/ddp_plugin.py, the framework's supported way to add
code (README, "Add your own plugin"): trainer subclasses that save them after ``train()`` and ``test()``. Nothing
in the framework knows about this test.
"""
from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import torch
from fixtures import rank_states, torchrun

import train
from parse_config import ConfigParser
from tests.test_nmr_trainer import TINY_NMR
from utils.checkpoint import load_checkpoint


def classifier_config(tiny_config: dict, validation: bool) -> dict:
    config = copy.deepcopy(tiny_config)
    config["trainer"]["args"].update(epochs=2, test_after_training=True)
    if not validation:  # nothing evaluated between the epochs: BatchNorm statistics must still agree
        config["data_loader"]["args"]["validation"] = "none"
        config["trainer"]["args"]["monitor"] = "off"
    return config


def nmr_config() -> dict:
    config = copy.deepcopy(TINY_NMR)
    # odd validation and test sizes: shards of unequal length, every spectrum scored once over the ranks
    config["data_loader"]["args"].update(n_train=24, n_valid=7, n_test=5, fresh_each_epoch=True)
    config["lr_scheduler"]["args"]["warmup_epochs"] = 0
    config["trainer"]["args"].update(epochs=2, phase_a_epochs=1, test_after_training=True)
    return config


def launch(config: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``torchrun --standalone --nproc_per_node 2 train.py`` on ``config`` with ddp_plugin's trainer."""
    config = copy.deepcopy(config)
    config["plugins"] = ["ddp_plugin"]
    config["trainer"]["type"] = "RankWeights" + config["trainer"]["type"]
    config["trainer"]["args"].update(save_dir=str(tmp_path / "saved"), tensorboard=False, progress_bar=False)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return torchrun("train.py", "-c", str(path), "--run-id", "ddp",
                    "--set", f"trainer.args.weights_dir={tmp_path / 'ranks'}")


def assert_same_weights(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), f"{key} differs: {what}"


def assert_close(a, b, where: str = "") -> None:
    """Nested dicts of numbers, None and strings equal, numbers up to float32 rounding (the batches differ)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7, nan_ok=True), where
    else:
        assert a == b, where


def check_run(config: dict, tmp_path: Path, done: subprocess.CompletedProcess) -> tuple[dict, dict, Path]:
    """The checks shared by both trainers. Returns rank 0's ``rank0.pt`` and ``test0.pt`` contents and the
    checkpoint the final test evaluated."""
    name, saved = config["name"], tmp_path / "saved"
    monitored = config["trainer"]["args"].get("monitor", "off") != "off"
    # one run directory with one set of files: rank 1 writes none of its own
    assert [p.name for p in (saved / "models").iterdir()] == [name]
    assert [p.name for p in (saved / "models" / name).iterdir()] == ["ddp"]
    run = saved / "models" / name / "ddp"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "latest.pth"] + (["model_best.pth"] if monitored
                                                                                      else [])
    assert [p.name for p in (saved / "log").iterdir()] == [name]
    assert [p.name for p in (saved / "log" / name).iterdir()] == ["ddp"]
    assert [p.name for p in (saved / "log" / name / "ddp").iterdir()] == ["train.log"]
    # only rank 0 logs: each epoch line and the test report appear once on stdout and in train.log
    log_text = (saved / "log" / name / "ddp" / "train.log").read_text(encoding="utf-8")
    assert "x 2 processes" in log_text
    for line in ("epoch 1/2:", "epoch 2/2:", "Test split"):
        assert done.stdout.count(line) == 1, done.stdout
        assert log_text.count(line) == 1, log_text

    latest = load_checkpoint(run / "latest.pth")
    assert latest["world_size"] == 2 and latest["epoch"] == 2
    # the ranks end training with identical weights (parameters and buffers), which latest.pth holds
    rank0, rank1 = rank_states(tmp_path / "ranks", "rank")
    assert_same_weights(rank0["model"], rank1["model"], "rank 0 vs rank 1 after training")
    assert_same_weights(rank0["model"], latest["model"], "rank 0 vs latest.pth")
    # and agree on every logged value but the time: validation is reduced over the shards, so monitor decisions match
    assert {**rank0["log"], "time_s": None} == {**rank1["log"], "time_s": None}
    # the final test (train.py's test_after_training) ran on both ranks with the same weights and result
    test0, test1 = rank_states(tmp_path / "ranks", "test")
    tested = run / ("model_best.pth" if monitored else "latest.pth")
    assert_same_weights(test0["model"], test1["model"], "rank 0 vs rank 1 in the final test")
    assert_same_weights(test0["model"], load_checkpoint(tested)["model"], f"final test vs {tested.name}")
    assert_close(test0["result"], test1["result"], "test")
    return rank0, test0, tested


def check_against_one_process(config: dict, tmp_path: Path, rank0: dict, test0: dict, tested: Path) -> None:
    """Validation and test results reduced over the 2 shards equal one process scoring the whole sets."""
    config = copy.deepcopy(config)
    config["trainer"]["args"].update(save_dir=str(tmp_path / "single"), tensorboard=False, progress_bar=False)
    trainer = train.build_trainer(ConfigParser(config))
    if trainer.valid_loader is not None:
        trainer.raw_model.load_state_dict(rank0["model"])
        single = {f"val_{k}": v for k, v in trainer.evaluate(trainer.valid_loader).items()}
        assert_close({k: rank0["log"][k] for k in single}, single, "validation")
    trainer.load_weights(tested)
    assert_close(test0["result"], trainer.test(), "test")


def gloo_or_skip() -> None:
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")


@pytest.mark.slow
@pytest.mark.parametrize("validation", [True, False], ids=["validation", "no_validation"])
def test_classifier_trainer_two_cpu_ranks(tmp_path, tiny_config, validation):
    gloo_or_skip()
    config = classifier_config(tiny_config, validation)
    done = launch(config, tmp_path)
    check_against_one_process(config, tmp_path, *check_run(config, tmp_path, done))


@pytest.mark.slow
def test_nmr_denoise_trainer_two_cpu_ranks(tmp_path):
    gloo_or_skip()
    config = nmr_config()
    done = launch(config, tmp_path)
    rank0, test0, tested = check_run(config, tmp_path, done)
    assert rank0["log"]["phase"] == "B"
    assert test0["result"]["n"] == 5 and test0["result"]["baselines"]
    check_against_one_process(config, tmp_path, rank0, test0, tested)
