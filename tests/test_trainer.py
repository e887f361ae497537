"""BaseTrainer behaviour on real (tiny) runs: exact resume, atomic checkpoints, NaN stop, plugins."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap

import pytest
import torch
from fixtures import assert_same_state, run_training

import train
import utils.checkpoint as checkpoint_module
from utils.checkpoint import load_checkpoint
from utils.errors import CheckpointError, ConfigError, NonFiniteLossError


def test_three_epochs_equal_two_plus_resume_one(tiny_config, tmp_path):
    tiny_config["lr_scheduler"]["args"]["milestones"] = [1]  # the resumed epoch trains at the decayed rate
    straight = dict(tiny_config, trainer={**tiny_config["trainer"],
                                          "args": {**tiny_config["trainer"]["args"], "epochs": 3}})
    run(straight, "straight")
    run(tiny_config, "split")  # 2 epochs
    split_dir = tmp_path / "saved" / "models" / "tiny" / "split"
    after_two = load_checkpoint(split_dir / "latest.pth")
    assert after_two["epoch"] == 2
    resume_config = after_two["config"]
    resume_config["trainer"]["args"]["epochs"] = 3
    run(resume_config, None, resume=split_dir / "latest.pth")

    a = load_checkpoint(tmp_path / "saved" / "models" / "tiny" / "straight" / "latest.pth")
    b = load_checkpoint(split_dir / "latest.pth")
    assert a["epoch"] == b["epoch"] == 3
    for key in ("model", "optimizer", "lr_scheduler", "grad_scaler", "rng"):
        assert_same_state(a[key], b[key], key)
    assert a["monitor_best"] == b["monitor_best"]
    # the run really trained: weights moved away from the epoch-2 checkpoint
    assert not torch.equal(a["model"]["classifier.weight"], after_two["model"]["classifier.weight"])


def test_checkpoint_contents_load_weights_only(tiny_config, tmp_path):
    run(tiny_config, "r")
    run_dir = tmp_path / "saved" / "models" / "tiny" / "r"
    assert {p.name for p in run_dir.iterdir()} == {"config.json", "latest.pth", "model_best.pth"}
    state = torch.load(run_dir / "latest.pth", weights_only=True)
    for key in ("model", "optimizer", "lr_scheduler", "grad_scaler", "rng", "epoch", "monitor_best", "config"):
        assert key in state
    assert state["config"] == json.loads((run_dir / "config.json").read_text())
    assert (tmp_path / "saved" / "log" / "tiny" / "r" / "train.log").read_text().count("epoch 2/2") == 1


def test_periodic_checkpoints(tiny_config, tmp_path):
    tiny_config["trainer"]["args"].update(epochs=4, save_period=2, monitor="off")
    run(tiny_config, "p")
    names = {p.name for p in (tmp_path / "saved" / "models" / "tiny" / "p").iterdir()}
    assert names == {"config.json", "latest.pth", "checkpoint-epoch2.pth", "checkpoint-epoch4.pth"}


def test_early_stop_counts_epochs_without_improvement(tiny_config, tmp_path):
    # monitoring the training loss with "max" never improves after epoch 1
    tiny_config["trainer"]["args"].update(epochs=10, monitor="max neg", early_stop=2)
    tiny_config["optimizer"]["args"]["lr"] = 0.0
    tiny_config["metrics"] = []
    with pytest.raises(ConfigError, match=re.escape('"neg" is not in the epoch log; available: loss')):
        run(tiny_config, "e1")
    tiny_config["trainer"]["args"]["monitor"] = "min val_loss"
    # lr 0 and torch's running BatchNorm average (precise BN would re-estimate the statistics from each epoch's
    # augmented batches, so the loss would jitter): the weights never change and the validation loss only drifts
    # up as the average leaves its (0, 1) start, so it never improves after epoch 1
    tiny_config["trainer"]["args"]["bn_stats"] = "ema"
    trainer = run(tiny_config, "e2")
    state = load_checkpoint(tmp_path / "saved" / "models" / "tiny" / "e2" / "latest.pth")
    assert state["epoch"] == 3 and trainer.not_improved == 2


def test_crash_during_checkpoint_write_keeps_previous(tiny_config, tmp_path, monkeypatch):
    run(tiny_config, "c")
    run_dir = tmp_path / "saved" / "models" / "tiny" / "c"
    before = (run_dir / "latest.pth").read_bytes()
    real_save = torch.save

    def crash_midway(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(1000)  # a half-written file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", crash_midway)
    state = load_checkpoint(run_dir / "latest.pth")
    with pytest.raises(KeyboardInterrupt):
        checkpoint_module.save_checkpoint(state, run_dir / "latest.pth")
    monkeypatch.undo()
    assert (run_dir / "latest.pth").read_bytes() == before
    assert load_checkpoint(run_dir / "latest.pth")["epoch"] == 2
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "latest.pth", "model_best.pth"]


def test_disk_full_gives_clear_error_and_keeps_previous(tiny_config, tmp_path, monkeypatch):
    run(tiny_config, "f")
    run_dir = tmp_path / "saved" / "models" / "tiny" / "f"
    before = (run_dir / "latest.pth").read_bytes()

    def full(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    with pytest.raises(CheckpointError, match="could not write checkpoint .*latest.pth: the disk is full"):
        checkpoint_module.save_checkpoint({"epoch": 9}, run_dir / "latest.pth")
    assert (run_dir / "latest.pth").read_bytes() == before
    assert not [p for p in run_dir.iterdir() if ".tmp-" in p.name]


def test_truncated_or_foreign_checkpoints_give_clear_errors(tiny_config, tmp_path):
    run(tiny_config, "t")
    good = tmp_path / "saved" / "models" / "tiny" / "t" / "latest.pth"
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint of this framework"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"format": "ltframework-checkpoint", "x": Exploit()}, evil)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(evil)
    assert not marker.exists()


PLUGIN = textwrap.dedent('''
    import math
    import torch
    from torch import nn
    from utils.registry import LOSSES, MODELS

    @MODELS.register()
    class TinyLinear(nn.Module):
        """A linear model on flattened images (test plugin)."""
        def __init__(self, num_classes: int, in_features: int = 64):
            super().__init__()
            self.fc = nn.Linear(in_features, num_classes)
        def forward(self, x):
            return self.fc(x.flatten(1))

    @LOSSES.register()
    class NaNAfter(nn.Module):
        """Cross-entropy that turns NaN after `calls` batches (test plugin)."""
        def __init__(self, calls: int):
            super().__init__()
            self.calls, self.seen = calls, 0
        def forward(self, output, target):
            # training batches only (validation runs without gradients): a NaN validation loss is its own check
            self.seen += torch.is_grad_enabled()
            loss = nn.functional.cross_entropy(output, target)
            return loss * math.nan if self.seen > self.calls and torch.is_grad_enabled() else loss
''')


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    name = f"user_plugin_{os.getpid()}_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)
    from utils.registry import LOSSES, MODELS
    MODELS._entries.pop("TinyLinear", None)
    LOSSES._entries.pop("NaNAfter", None)


def test_plugin_named_in_config_is_registered_and_built(tiny_config, tmp_path, plugin_module):
    tiny_config["plugins"] = [plugin_module]
    tiny_config["arch"] = {"type": "TinyLinear", "args": {}}  # num_classes comes from the data
    trainer = run(tiny_config, "plug")
    assert type(trainer.raw_model).__name__ == "TinyLinear"
    assert trainer.raw_model.fc.out_features == 10
    assert (tmp_path / "saved" / "models" / "tiny" / "plug" / "model_best.pth").exists()


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tiny_config, tmp_path, plugin_module):
    tiny_config["plugins"] = [plugin_module]
    tiny_config["loss"] = {"type": "NaNAfter", "args": {"calls": 8}}  # ~6 batches per epoch: NaN in epoch 2
    tiny_config["trainer"]["args"]["epochs"] = 3
    with pytest.raises(NonFiniteLossError, match=r"non-finite \(NaN or Inf\) at epoch 2, batch \d"):
        run(tiny_config, "nan")
    run_dir = tmp_path / "saved" / "models" / "tiny" / "nan"
    state = load_checkpoint(run_dir / "latest.pth")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    log = (tmp_path / "saved" / "log" / "tiny" / "nan" / "train.log").read_text()
    assert "non-finite" in log


def test_failed_validation_creates_no_run_directory(tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_config["arch"]["args"]["num_clases"] = 10
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(tiny_config))
    with pytest.raises(ConfigError):
        train.main(["-c", str(path)])
    tiny_config["arch"]["args"].pop("num_clases")
    tiny_config["optimizer"]["args"]["lr"] = -1.0  # caught by the range check, before anything is built or written
    path.write_text(json.dumps(tiny_config))
    with pytest.raises(ConfigError, match=re.escape('config["optimizer"]["args"]["lr"]: -1.0 is out of range')):
        train.main(["-c", str(path)])
    assert not (tmp_path / "saved").exists()



def run(config: dict, run_id: str | None, resume=None):
    return run_training(config, run_id, resume)[0]


def test_channels_last_changes_the_layout_not_the_step(tiny_config):
    """channels_last (the default) is a memory layout: the first step's loss and gradients are those of the
    plain layout up to summation order (a whole run then drifts apart, as any reordering does). Compared in
    float64: in float32 this tiny untrained ResNet's first-step gradients are ill-conditioned enough that a
    one-thread run's reordering alone moved them by 1% (loss equal to 4e-7), which would hide or fake a bug."""
    from parse_config import ConfigParser

    def first_step(channels_last: bool):
        tiny_config["trainer"]["args"]["channels_last"] = channels_last
        trainer = train.build_trainer(ConfigParser(tiny_config))
        images, labels, index = trainer.to_device(*next(iter(trainer.data_loader)))
        assert images.is_contiguous(memory_format=torch.channels_last) or not channels_last
        trainer.raw_model.double()   # keeps each parameter's memory format
        images = images.double()
        trainer.raw_model.train()
        trainer.training_loss(images, labels, index).backward()
        return trainer.raw_model

    plain, nhwc = first_step(False), first_step(True)
    conv = next(p for p in nhwc.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    for (name, a), b in zip(plain.named_parameters(), nhwc.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-9 * float(a.grad.abs().max()), msg=name)


def test_sync_batchnorm_in_one_process_is_a_noted_no_op(tiny_config):
    tiny_config["trainer"]["args"].update(epochs=1, sync_batchnorm=True)
    trainer, parsed = run_training(tiny_config, "sbn")
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in trainer.raw_model.modules())
    assert "sync_batchnorm: one process" in (parsed.log_dir / "train.log").read_text()


def test_resume_with_another_learning_rate_says_it_keeps_the_checkpoints(tiny_config, tmp_path):
    """The optimizer state restored on resume holds the learning rate: a changed lr is reported, not ignored."""
    tiny_config["trainer"]["args"]["epochs"] = 1
    run(tiny_config, "first")
    latest = tmp_path / "saved" / "models" / "tiny" / "first" / "latest.pth"
    config = load_checkpoint(latest)["config"]
    config["trainer"]["args"]["epochs"] = 2
    config["optimizer"]["args"]["lr"] = 0.5
    _, parsed = run_training(config, None, latest)
    log = (parsed.log_dir / "train.log").read_text()
    assert "config['optimizer'] differs from the checkpoint's" in log and "--init-from" in log


@pytest.mark.slow
def test_compile_trains_the_same_step_and_saves_a_plain_checkpoint(tiny_config, tmp_path):
    """``compile: true`` (torch.compile, inductor on CPU) computes the eager step's loss and gradients, and a
    compiled run's checkpoints hold the plain module's keys, so test.py loads them without compiling."""
    from parse_config import ConfigParser

    def first_step(compile_model: bool):
        tiny_config["trainer"]["args"]["compile"] = compile_model
        trainer = train.build_trainer(ConfigParser(tiny_config))
        images, labels, index = trainer.to_device(*next(iter(trainer.data_loader)))
        trainer.raw_model.train()
        loss = trainer.training_loss(images, labels, index)
        loss.backward()
        return float(loss.detach()), trainer.raw_model

    (eager_loss, eager), (compiled_loss, compiled) = first_step(False), first_step(True)
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4 * float(a.grad.abs().max()), msg=name)

    tiny_config["trainer"]["args"].update(epochs=1, compile=True)
    run(tiny_config, "compiled")
    best = load_checkpoint(tmp_path / "saved" / "models" / "tiny" / "compiled" / "model_best.pth")
    assert not any("_orig_mod" in key for key in best["model"])
    plain = train.build_trainer(ConfigParser(best["config"] | {"trainer": {
        **best["config"]["trainer"], "args": {**best["config"]["trainer"]["args"], "compile": False}}}))
    plain.raw_model.load_state_dict(best["model"])  # strict: every key of the uncompiled model


# --- what a resumed or evaluated run needs ------------------------------------------------------------------------
def test_resume_and_test_do_not_need_the_init_from_checkpoint(tiny_config, tmp_path):
    """--init-from seeds a new run only: once that file is gone the run still resumes and evaluates."""
    from parse_config import ConfigParser
    from utils.checkpoint import save_checkpoint

    initial = tmp_path / "stage1.pth"
    model = train.build_trainer(ConfigParser(tiny_config)).raw_model
    save_checkpoint({"epoch": 1, "model": model.state_dict()}, initial)
    tiny_config["init_from"] = str(initial)
    config = ConfigParser(tiny_config, run_id="b")
    trainer = train.build_trainer(config)
    config.model_dir.mkdir(parents=True)
    latest = save_checkpoint(trainer.checkpoint_state(1), config.model_dir / "latest.pth")
    initial.unlink()
    resumed = train.build_trainer(ConfigParser(tiny_config, resume=latest))  # train.py -r
    resumed.resume(latest)
    assert resumed.start_epoch == 2
    args = argparse.Namespace(resume=str(latest), config=None, overrides=[], plugins=[], device="cpu")
    _, evaluated, state = train.trainer_for_checkpoint(args, "test.py")  # test.py -r
    assert state["epoch"] == 1


# --- monitor keys are checked before training --------------------------------------------------------------------
@pytest.mark.parametrize("monitor, expected", [
    ("max val_acc", '"val_acc" is not in the epoch log; available: .*val_accuracy.*Did you mean "max val_accuracy"'),
    ("min los", '"los" is not in the epoch log.*Did you mean "min loss"'),
])
def test_monitor_key_typo_fails_before_anything_is_written(tiny_config, tmp_path, monitor, expected):
    from parse_config import ConfigParser

    tiny_config["trainer"]["args"]["monitor"] = monitor
    with pytest.raises(ConfigError, match=re.escape('<config>: config["trainer"]["args"]["monitor"]: ') + expected):
        train.build_trainer(ConfigParser(tiny_config, run_id="typo"))
    assert not (tmp_path / "saved").exists()


def test_reduce_on_plateau_without_a_monitor_fails_before_training(tiny_config, tmp_path):
    from parse_config import ConfigParser

    tiny_config["trainer"]["args"]["monitor"] = "off"
    tiny_config["lr_scheduler"] = {"type": "ReduceLROnPlateau", "args": {}}
    with pytest.raises(ConfigError, match=re.escape('config["lr_scheduler"]: ReduceLROnPlateau steps on the monitored '
                                                    'value, but trainer.args.monitor is "off"')):
        train.build_trainer(ConfigParser(tiny_config))
    assert not (tmp_path / "saved").exists()


def test_logged_lr_is_the_rate_the_epoch_trained_with(tiny_config, tmp_path, caplog):
    """WarmupMultiStepLR with milestone 1: epoch 1 trains at the base rate, epoch 2 at a tenth of it."""
    tiny_config["trainer"]["args"].update(epochs=2, test_after_training=False)
    tiny_config["lr_scheduler"] = {"type": "WarmupMultiStepLR",
                                   "args": {"milestones": [1], "gamma": 0.1, "warmup_epochs": 0}}
    run(tiny_config, "lr")
    log = (tmp_path / "saved" / "log" / "tiny" / "lr" / "train.log").read_text()
    assert "epoch 1/2: " in log and re.search(r"epoch 1/2: .*\blr 0\.05\b", log), log
    assert re.search(r"epoch 2/2: .*\blr 0\.005\b", log), log


def test_model_input_channels_must_match_the_data(tiny_config):
    from parse_config import ConfigParser

    tiny_config["arch"]["args"]["in_channels"] = 3
    with pytest.raises(ConfigError, match=re.escape('config["arch"]["args"]["in_channels"] is 3 but DigitsLT gives '
                                                    "1-channel images; set it to 1")):
        train.build_trainer(ConfigParser(tiny_config))
    del tiny_config["arch"]["args"]["in_channels"]  # ResNet32 defaults to 3
    with pytest.raises(ConfigError, match=r"is 3 but DigitsLT gives 1-channel images; set it to 1 \(ResNet32 "
                                          "defaults to 3\\)"):
        train.build_trainer(ConfigParser(tiny_config))


def test_resume_is_exact_with_dataloader_workers(tiny_config, tmp_path):
    """With worker processes (ImageListLT defaults to 4) the augmentation runs in the workers: they are started with
    each epoch's iterator and seeded from the checkpointed torch generator, so a resumed epoch draws the same shifts."""
    tiny_config["data_loader"]["args"].update(num_workers=2, shift=2)
    tiny_config["trainer"]["args"].update(epochs=2, test_after_training=False)
    run(tiny_config, "whole")
    one = dict(tiny_config, trainer={**tiny_config["trainer"], "args": {**tiny_config["trainer"]["args"], "epochs": 1}})
    run(one, "cut")
    cut = tmp_path / "saved" / "models" / "tiny" / "cut" / "latest.pth"
    run(tiny_config, None, resume=cut)
    whole = load_checkpoint(tmp_path / "saved" / "models" / "tiny" / "whole" / "latest.pth")
    resumed = load_checkpoint(cut)
    assert whole["epoch"] == resumed["epoch"] == 2
    for key in ("model", "optimizer", "rng"):
        assert_same_state(whole[key], resumed[key], key)
