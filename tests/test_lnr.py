"""MixupTrainer and LNRTrainer on tiny real runs: stage 1 -> stage 2, flips, resume, frozen backbone."""
from __future__ import annotations

import copy

import pytest
import torch
from fixtures import run_training as run

import train
from parse_config import ConfigParser
from utils.checkpoint import load_checkpoint


@pytest.fixture
def stage1(tiny_config):
    config = copy.deepcopy(tiny_config)
    config["name"] = "stage1"
    config["trainer"] = {"type": "MixupTrainer", "args": {**tiny_config["trainer"]["args"], "alpha": 1.0,
                                                         "remix": True}}
    trainer, parsed = run(config, "s1")
    return parsed.model_dir / "model_best.pth"


def stage2_config(tiny_config, stage1_ckpt, **trainer_args):
    config = copy.deepcopy(tiny_config)
    config["name"] = "stage2"
    config["init_from"] = str(stage1_ckpt)
    config["arch"]["args"]["lws"] = True
    config["loss"] = {"type": "LabelAwareSmoothing", "args": {"smooth_head": 0.3, "smooth_tail": 0.0}}
    config["lr_scheduler"] = {"type": "WarmupCosineLR", "args": {}}
    # a low threshold so that the tiny run flips some labels
    args = {"epochs": 2, "lr_factor": 0.2, "shift_bn": True, "flip": True, "flip_threshold": 0.5, "flip_passes": 2}
    args.update(trainer_args)
    config["trainer"] = {"type": "LNRTrainer", "args": {**tiny_config["trainer"]["args"], **args}}
    return config


def test_stage2_freezes_the_backbone_and_flips_towards_rarer_classes(tiny_config, stage1):
    trainer, parsed = run(stage2_config(tiny_config, stage1), "s2")
    before = load_checkpoint(stage1)["model"]
    after = load_checkpoint(parsed.model_dir / "latest.pth")["model"]
    convs = [k for k in before if k.startswith("backbone") and k.endswith("conv1.weight")]
    assert convs and all(torch.equal(before[k], after[k]) for k in convs)
    bn_means = [k for k in before if k.endswith("running_mean")]
    assert any(not torch.equal(before[k], after[k]) for k in bn_means)  # shifted BN re-estimated statistics
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert "lws.scale" in after and not torch.equal(after["lws.scale"], torch.ones_like(after["lws.scale"]))

    flipped = load_checkpoint(parsed.model_dir / "latest.pth")["trainer_state"]["flipped"]
    labels = torch.as_tensor(trainer.data_loader.dataset.targets)
    counts = torch.as_tensor(trainer.cls_num_list)
    changed = flipped >= 0
    assert int(changed.sum()) > 0
    assert (counts[flipped[changed]] < counts[labels[changed]]).all()


def test_flips_identical_after_resume(tiny_config, stage1):
    straight = stage2_config(tiny_config, stage1, epochs=3)
    straight["lr_scheduler"]["args"]["total_epochs"] = 3  # the same schedule for the split run
    run(straight, "straight")
    split = stage2_config(tiny_config, stage1, epochs=2)
    split["lr_scheduler"]["args"]["total_epochs"] = 3
    _, parsed = run(split, "split")
    resumed = load_checkpoint(parsed.model_dir / "latest.pth")["config"]
    resumed["trainer"]["args"]["epochs"] = 3
    run(resumed, None, resume=parsed.model_dir / "latest.pth")
    a = load_checkpoint(parsed.model_dir.parent / "straight" / "latest.pth")
    b = load_checkpoint(parsed.model_dir / "latest.pth")
    assert torch.equal(a["trainer_state"]["flipped"], b["trainer_state"]["flipped"])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_flip_false_is_plain_mislas(tiny_config, stage1):
    _, parsed = run(stage2_config(tiny_config, stage1, flip=False), "mislas")
    assert load_checkpoint(parsed.model_dir / "latest.pth")["trainer_state"] == {}


def test_released_flip_mode_runs_in_train_mode(tiny_config, stage1):
    trainer, _ = run(stage2_config(tiny_config, stage1, flip_mode="released", epochs=1), "released")
    assert trainer.flipped is not None and trainer.flip_summary["total"] == int((trainer.flipped >= 0).sum())


def test_threshold_defaults_by_class_count(tiny_config, stage1):
    config = stage2_config(tiny_config, stage1)
    del config["trainer"]["args"]["flip_threshold"]
    trainer = train.build_trainer(ConfigParser(config))
    assert trainer.flip_threshold == 7.5  # 10 classes, as the released code


def test_optimizer_groups_use_lr_factor(tiny_config, stage1):
    trainer = train.build_trainer(ConfigParser(stage2_config(tiny_config, stage1, lr_factor=0.2)))
    lrs = [group["initial_lr"] for group in trainer.optimizer.param_groups]
    assert lrs == pytest.approx([0.05 * 0.2, 0.05])
    trainable = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in trainable for p in trainer.raw_model.backbone.parameters())


def test_stage2_says_initialised_once_and_evaluation_says_nothing_of_flips(tiny_config, stage1, tmp_path, capsys):
    """Issue 17.14: 'Initialised from ...' was printed twice, and test.py on a stage-2 checkpoint said 'Restored 0
    LNR label flips from the checkpoint', as if it resumed a run."""
    import test as test_cli

    _, parsed = run(stage2_config(tiny_config, stage1, epochs=1), "once")
    printed = capsys.readouterr().out
    assert printed.count("Initialised from") == 1
    assert (parsed.log_dir / "train.log").read_text().count("Initialised from") == 1
    test_cli.main(["-r", str(parsed.model_dir / "latest.pth"), "-d", "cpu"])
    evaluated = capsys.readouterr().out
    assert "flips" not in evaluated and "Restored" not in evaluated and "accuracy" in evaluated
    resumed_config = stage2_config(tiny_config, stage1, epochs=2)
    run(resumed_config, None, resume=parsed.model_dir / "latest.pth")
    assert "Continuing with the run's" in capsys.readouterr().out  # said when training continues
