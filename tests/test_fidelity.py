"""The fidelity benchmark's generated data (benchmarks/fidelity_data.py) and its schedule scaling; the quick mode
end to end (slow)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks.fidelity import ROOT, claims, config_paths, schedule_overrides
from benchmarks.fidelity_data import class_codes, generate, write_set
from data_loader.cifar import CIFAR10LT, CIFAR100LT


def test_generated_sets_load_with_the_paper_long_tail(tmp_path):
    write_set(tmp_path / "c10", 10, train_per_class=100, test_per_class=5)
    loader = CIFAR10LT(data_dir=str(tmp_path / "c10"), imb_factor=0.01)
    assert loader.cls_num_list == [int(100 * 0.01 ** (i / 9)) for i in range(10)]  # 100 down to 1
    test = CIFAR10LT(data_dir=str(tmp_path / "c10"), imb_factor=0.01, training=False)
    assert np.bincount(test.dataset.targets.numpy()).tolist() == [5] * 10
    assert (tmp_path / "c10" / "README.txt").exists()
    write_set(tmp_path / "c100", 100, train_per_class=100, test_per_class=2)
    assert CIFAR100LT(data_dir=str(tmp_path / "c100"), imb_factor=0.01).cls_num_list[-1] == 1


def test_generation_is_deterministic_and_class_specific():
    a, ya = generate(10, 30, seed=3)
    b, yb = generate(10, 30, seed=3)
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert not np.array_equal(a, generate(10, 30, seed=4)[0])
    # class-specific structure: a nearest-class-mean classifier on the raw pixels beats chance by far, but is
    # not perfect (intra-class variation and noise)
    x = a.astype(np.float64) / 255
    test, yt = generate(10, 30, seed=5)
    means = np.stack([x[ya == c].mean(0) for c in range(10)])
    pred = np.argmin(((test[:, None, :] / 255 - means[None]) ** 2).sum(-1), axis=1)
    accuracy = float((pred == yt).mean())
    assert 0.2 < accuracy < 0.95
    assert len(set(class_codes(100))) == 100 and len({c[:2] for c in class_codes(100)}) == 100


def test_schedule_scaling():
    stage1 = json.loads(config_paths(10)["stage1"].read_text())
    assert schedule_overrides(stage1, 30) == ["trainer.args.epochs=30", "lr_scheduler.args.milestones=[24, 27]",
                                              "lr_scheduler.args.warmup_epochs=5"]
    assert schedule_overrides(stage1, 8)[-1] == "lr_scheduler.args.warmup_epochs=2"  # a quarter of a short run
    assert schedule_overrides(stage1, 200) == ["trainer.args.epochs=200", "lr_scheduler.args.milestones=[160, 180]",
                                               "lr_scheduler.args.warmup_epochs=5"]  # the paper's own schedule
    mislas = json.loads(config_paths(10)["mislas"].read_text())
    assert schedule_overrides(mislas, 30) == ["trainer.args.epochs=10"]  # ceil(1.5), but a stage 2 keeps 10
    lnr = json.loads(config_paths(100)["lnr"].read_text())
    assert schedule_overrides(lnr, 30)[0] == "trainer.args.epochs=15"
    assert all(p.exists() for p in [*config_paths(10).values(), *config_paths(100).values()]), ROOT


def test_claims_from_figures():
    def split(all_, few=0.0):
        return {"n": 10, "many": 0.0, "medium": 0.0, "few": few, "all": all_}

    def score(uniform_few, backward):
        return {"splits": {"uniform": split(50, uniform_few), "backward50": split(backward)}, "per_class": []}

    r = {"stage1_val_loss": [2.0, 30.0], "scores": {"softmax": score(1, 20), "mislas": score(5, 25),
                                                    "lnr": score(5, 26), "sade": score(9, 31), "prl": score(9, 29)},
         "sweep": {str(i): split(50 - i, few) for i, few in enumerate([1, 2, 2, 5, 9])},
         "ttt": {"uniform": {"all": 50.0, "before_all": 50.2}, "backward50": {"all": 40.0, "before_all": 39.0}}}
    rows = {c: res for c, res, _ in claims(r)}
    assert list(rows.values()) == ["FAIL", "PASS", "PASS", "FAIL", "PASS", "PASS"]
    r["sweep"]["3"]["few"] = 0.5  # not monotone
    assert [res for _, res, _ in claims(r)][4] == "FAIL"


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
    """A cheaper run of --quick (2 epochs): every method trains and is scored, and each claim gets a row."""
    from benchmarks.fidelity import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # restored: later tests in this process compare numerics computed with the default thread count
        results = main(["--quick", "--epochs", "2", "--work", str(tmp_path), "--out", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)
    r = results["cifar10_quick"]
    assert {"softmax", "stage1", "mislas", "lnr", "sade"} <= set(r["scores"])
    assert not {k for k in r["errors"] if "prl" not in k.lower() and "test-time" not in k}
    assert len(r["claims"]) == 6 and all(res in ("PASS", "FAIL", "n.a.") for _, res, _ in r["claims"])
    assert r["claims"][0][1] == "PASS"  # stage 1 does not diverge
    assert any("LNR z-scores" in line for line in r["lnr_log"])
    assert json.loads((tmp_path / "r.json").read_text())["results"]["cifar10_quick"]["claims"]


@pytest.mark.slow
def test_an_unfinished_run_goes_on_from_its_latest_checkpoint(tmp_path):
    """A run cut short (no ``done`` marker) resumes from latest.pth instead of starting over; a latest.pth of
    another schedule is retrained."""
    from benchmarks.fidelity import Runner

    data = tmp_path / "data"
    write_set(data, 10, train_per_class=100, test_per_class=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = Runner("tiny", data, tmp_path, num_classes=10, epochs=2, seed=0, device="cpu", verbose=False)
        best = runner.train("softmax")
        model_dir = best.parent
        first_log = runner.train_log("softmax")
        assert "epoch 2/2" in first_log
        (model_dir / "done").unlink()  # as if the invocation had been cut after its last checkpoint
        assert runner.train("softmax") == best and (model_dir / "done").exists()
        resumed = runner.train_log("softmax")
        assert resumed.startswith(first_log) and "Checkpoint is at epoch 2 of 2" in resumed[len(first_log):]
        (model_dir / "done").unlink()
        longer = Runner("tiny", data, tmp_path, num_classes=10, epochs=3, seed=0, device="cpu", verbose=False)
        longer.train("softmax")  # another schedule: trained afresh, the old run's log is gone
        assert "epoch 3/3" in longer.train_log("softmax") and "epoch 2/2" not in longer.train_log("softmax")
    finally:
        torch.set_num_threads(threads)
