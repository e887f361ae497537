"""--epochs N (utils/schedule.py): every epoch-denominated value rescaled together, and schedules the run never
reaches refused at validation, all of them in one message."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from parse_config import ConfigParser, iter_config_files, load_json, validate_config
from utils.errors import ConfigError
from utils.registry import SCHEDULERS
from utils.schedule import format_changes, rescale_epochs, schedule_problems

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [p for p in iter_config_files(ROOT / "configs") if not p.name.startswith("test_time_")]
QUICKSTART = ROOT / "configs" / "quickstart_digits_lt.json"
NMR = ROOT / "configs" / "nmr" / "quickstart_simulated.json"
STAGE1 = ROOT / "configs" / "lnr" / "cifar10_ir100_stage1_mixup.json"


def parse(argv):
    parser = argparse.ArgumentParser()
    ConfigParser.add_arguments(parser)
    return ConfigParser.from_args(parser.parse_args(argv))


def lrs(config: dict, epochs: int) -> list[float]:
    """The learning rate each epoch of ``config``'s schedule trains with (stepped once per epoch, as the trainer)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = SCHEDULERS.build(config["lr_scheduler"], ("lr_scheduler",), optional={"total_epochs": epochs},
                                 optimizer=optimizer)
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_schedule_fits_its_run(path):
    config = load_json(path)
    assert schedule_problems(config) == []
    validate_config(config)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
@pytest.mark.parametrize("epochs", [1, 2, 3, 6, 15, 500])
def test_rescaled_schedules_are_valid_for_every_config(path, epochs):
    config = load_json(path)
    old = config["trainer"]["args"]["epochs"]
    changes = rescale_epochs(config, epochs)
    validate_config(config)  # nothing past the end, no warm-up or phase longer than the run
    trainer, sched = config["trainer"]["args"], (config.get("lr_scheduler") or {}).get("args") or {}
    assert trainer["epochs"] == epochs
    assert ("trainer.args.epochs", old, epochs) in changes or old == epochs
    milestones = sched.get("milestones")
    if milestones:
        assert all(1 <= m < epochs for m in milestones) and milestones == sorted(milestones)
        if epochs - 1 - sched.get("warmup_epochs", 0) >= len(milestones):  # room for them: still distinct
            assert len(set(milestones)) == len(milestones)
        assert milestones[0] > sched.get("warmup_epochs", 0) or epochs <= 2
    if "phase_a_epochs" in trainer:
        assert 1 <= trainer["phase_a_epochs"] <= epochs
        assert trainer["phase_a_epochs"] < epochs or epochs == 1  # phase B keeps an epoch
    if sched.get("warmup_epochs"):
        assert sched["warmup_epochs"] < epochs or (epochs == 1 and "milestones" in sched)
    if epochs >= old:  # a longer run: nothing is shortened
        for path_, before, after in changes:
            if isinstance(before, int):
                assert after >= before, path_


def test_quickstart_to_six_epochs():
    config = load_json(QUICKSTART)
    changes = rescale_epochs(config, 6)
    assert format_changes(6, changes) == ("--epochs 6: trainer.args.epochs 60 -> 6, lr_scheduler.args.warmup_epochs "
                                          "2 -> 1, lr_scheduler.args.milestones [45, 55] -> [4, 5]")
    assert config["lr_scheduler"]["args"] == {"milestones": [4, 5], "gamma": 0.1, "warmup_epochs": 1}
    # both decays happen inside the run: epochs 5 and 6 (1-based) train at a tenth and a hundredth
    assert lrs(config, 6) == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.1, 0.01])


def test_paper_schedule_shrinks_with_distinct_milestones_while_there_is_room():
    config = load_json(STAGE1)
    rescale_epochs(config, 20)
    assert config["lr_scheduler"]["args"]["milestones"] == [16, 18]
    assert config["lr_scheduler"]["args"]["warmup_epochs"] == 1  # 0.5 rounds up; a warm-up stays a warm-up
    config = load_json(STAGE1)
    rescale_epochs(config, 6)
    assert config["lr_scheduler"]["args"]["milestones"] == [4, 5]  # 4.8 and 5.4 would both be 5: pushed apart


def test_milestones_share_an_epoch_only_when_the_run_has_no_room():
    config = load_json(QUICKSTART)
    rescale_epochs(config, 3)
    assert config["lr_scheduler"]["args"]["milestones"] == [2, 2]  # after the 1-epoch warm-up, inside the run
    assert lrs(config, 3)[-1] == pytest.approx(0.01)  # both decays still happen: the final rate is the paper's
    config = load_json(QUICKSTART)
    changes = rescale_epochs(config, 1)
    assert config["lr_scheduler"]["args"]["milestones"] == []  # one epoch: no later epoch to decay at
    assert ("lr_scheduler.args.milestones", [45, 55], []) in changes


def test_nmr_phases_and_warm_up_stay_consistent():
    config = load_json(NMR)
    assert format_changes(6, rescale_epochs(config, 6)) == (
        "--epochs 6: trainer.args.epochs 12 -> 6, trainer.args.phase_a_epochs 6 -> 3")
    for epochs, phase_a, warmup in ((3, 2, 1), (2, 1, 1), (1, 1, 0), (24, 12, 2)):
        config = load_json(NMR)
        rescale_epochs(config, epochs)
        assert (config["trainer"]["args"]["phase_a_epochs"], config["lr_scheduler"]["args"]["warmup_epochs"]) == (
            phase_a, warmup), epochs
        validate_config(config)


def test_a_default_counted_in_epochs_is_rescaled_and_written():
    config = load_json(QUICKSTART)
    del config["lr_scheduler"]["args"]["warmup_epochs"]  # WarmupMultiStepLR's default: 5
    changes = rescale_epochs(config, 6)
    assert ("lr_scheduler.args.warmup_epochs", "5 (default)", 1) in changes
    assert config["lr_scheduler"]["args"]["warmup_epochs"] == 1


@pytest.mark.parametrize("scheduler, epochs, expected", [
    ({"type": "CosineAnnealingLR", "args": {"T_max": 90}}, 6, {"T_max": 6}),
    ({"type": "StepLR", "args": {"step_size": 30, "gamma": 0.1}}, 9, {"step_size": 3, "gamma": 0.1}),
    ({"type": "MultiStepLR", "args": {"milestones": [30, 60, 80]}}, 10, {"milestones": [3, 7, 9]}),
    ({"type": "MultiStepLR", "args": {"milestones": [30, 60, 80]}}, 3, {"milestones": [1, 2, 2]}),
    ({"type": "LinearLR", "args": {"start_factor": 0.1}}, 9, {"start_factor": 0.1, "total_iters": 1}),
    ({"type": "WarmupCosineLR", "args": {"warmup_epochs": 10, "total_epochs": 90}}, 9,
     {"warmup_epochs": 1, "total_epochs": 9}),
    ({"type": "OneCycleLR", "args": {"max_lr": 0.1, "total_steps": 90}}, 9, {"max_lr": 0.1, "total_steps": 9}),
    ({"type": "ReduceLROnPlateau", "args": {"patience": 10}}, 9, {"patience": 10}),  # a reaction window: kept
])
def test_torch_schedules_counted_in_epochs(tiny_config, scheduler, epochs, expected):
    tiny_config["trainer"]["args"]["epochs"] = 90
    tiny_config["lr_scheduler"] = scheduler
    rescale_epochs(tiny_config, epochs)
    assert tiny_config["lr_scheduler"]["args"] == expected
    validate_config(tiny_config)


# --- validation: what the run never reaches -----------------------------------------------------------------------
def test_milestones_past_the_last_epoch_are_refused_with_the_fix():
    with pytest.raises(ConfigError) as info:
        parse(["-c", str(QUICKSTART), "--set", "trainer.args.epochs=15"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f'{QUICKSTART}: config["trainer"]["args"]["epochs"]: a run of 15 epochs does not reach '
                              'the whole schedule: config["lr_scheduler"]["args"]["milestones"]: [45, 55] has 45, 55 '
                              '>= 15')
    assert "those decays never happen" in message and "--epochs 15" in message


def test_one_milestone_past_the_end_is_refused_too(tiny_config):
    tiny_config["trainer"]["args"]["epochs"] = 4
    tiny_config["lr_scheduler"]["args"]["milestones"] = [2, 4]
    with pytest.raises(ConfigError, match=re.escape('[2, 4] has 4 >= 4 (milestones are 0-based epoch indices), so '
                                                    "that decay never happens")):
        ConfigParser(tiny_config)
    tiny_config["lr_scheduler"]["args"]["milestones"] = [2, 3]  # 3: the fourth epoch trains decayed
    ConfigParser(tiny_config)


def test_nmr_constraints_are_reported_together_not_one_at_a_time():
    with pytest.raises(ConfigError) as info:
        parse(["-c", str(NMR), "--set", "trainer.args.epochs=1"])
    message = str(info.value)
    assert 'config["trainer"]["args"]["phase_a_epochs"]: 6 is longer than the run' in message
    assert 'config["lr_scheduler"]["args"]["warmup_epochs"]: 1 is not below the decay\'s 1 epoch' in message
    assert "--epochs 1" in message and "\n" not in message
    with pytest.raises(ConfigError, match=re.escape('config["trainer"]["args"]["phase_a_epochs"]: 6 is longer')):
        parse(["-c", str(NMR), "--set", "trainer.args.epochs=3"])


def test_a_default_warm_up_longer_than_the_run_is_named(tiny_config):
    del tiny_config["lr_scheduler"]["args"]["warmup_epochs"]  # default 5
    with pytest.raises(ConfigError, match=re.escape('config["lr_scheduler"]["args"]["warmup_epochs"]: 5 (the default) '
                                                    "is longer than the run")):
        ConfigParser(tiny_config)


def test_a_resumed_run_or_evaluation_keeps_its_checkpoint_schedule(tiny_config, tmp_path):
    """A checkpoint written before this check (or trained with a schedule cut short) must still evaluate and resume:
    its scheduler state, not the config, holds its milestones."""
    tiny_config["lr_scheduler"]["args"]["milestones"] = [45, 55]
    with pytest.raises(ConfigError, match="never happen"):
        ConfigParser(tiny_config)
    ConfigParser(tiny_config, resume=tmp_path / "models" / "tiny" / "r" / "latest.pth")


# --- the command line -----------------------------------------------------------------------------------------------
def test_epochs_option_prints_and_records_the_rescale(tmp_path, capsys):
    config = parse(["-c", str(QUICKSTART), "--epochs", "6",
                    "--set", f"trainer.args.save_dir={json.dumps(str(tmp_path))}"])
    assert capsys.readouterr().out.splitlines() == [
        "--epochs 6: trainer.args.epochs 60 -> 6, lr_scheduler.args.warmup_epochs 2 -> 1, "
        "lr_scheduler.args.milestones [45, 55] -> [4, 5]"]
    assert config["trainer"]["args"]["epochs"] == 6
    assert config["lr_scheduler"]["args"]["milestones"] == [4, 5]
    config.prepare_run_dirs()
    saved = json.loads((config.model_dir / "config.json").read_text())
    assert saved["lr_scheduler"]["args"]["milestones"] == [4, 5] and saved["trainer"]["args"]["epochs"] == 6
    config.release_run_dir()


def test_set_after_epochs_wins(capsys):
    config = parse(["-c", str(QUICKSTART), "--epochs", "10", "--set", "lr_scheduler.args.milestones=[5, 8]"])
    assert config["lr_scheduler"]["args"]["milestones"] == [5, 8]


@pytest.mark.parametrize("argv, expected", [
    (["--epochs", "4", "--set", "trainer.args.epochs=4"], "--epochs 4 and --set trainer.args.epochs both set"),
    (["--epochs", "0"], "--epochs 0: give a whole number of epochs from 1 to 100000"),
    (["--epochs", "-3"], "--epochs -3: give a whole number of epochs"),
])
def test_epochs_option_mistakes(argv, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse(["-c", str(QUICKSTART), *argv])


def test_epochs_option_refuses_a_resumed_run(tmp_path):
    checkpoint = tmp_path / "latest.pth"  # refused before the checkpoint is read
    with pytest.raises(ConfigError, match=re.escape("--epochs 6: a resumed run keeps its checkpoint's schedule")):
        parse(["-r", str(checkpoint), "--epochs", "6"])


def test_epochs_option_without_an_epoch_count_to_scale_from(tiny_config, tmp_path):
    del tiny_config["trainer"]["args"]["epochs"]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_config))
    with pytest.raises(ConfigError, match=re.escape('--epochs 3: config["trainer"]["args"]["epochs"] is missing')):
        parse(["-c", str(path), "--epochs", "3"])
