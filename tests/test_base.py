"""Base classes: data-loader validation split, BaseModel printout, BaseTrainer contract, resume merge."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch.utils.data import TensorDataset

import train
from base.base_data_loader import BaseDataLoader
from base.base_model import BaseModel
from base.base_trainer import BaseTrainer
from parse_config import ConfigParser
from utils.errors import ConfigError


def dataset(n=100):
    return TensorDataset(torch.arange(n).float(), torch.arange(n) % 5, torch.arange(n))


@pytest.mark.parametrize("split, n_valid", [(0.2, 20), (30, 30)])
def test_validation_split_by_fraction_or_count(split, n_valid):
    loader = BaseDataLoader(dataset(), batch_size=7, validation_split=split)
    valid = loader.split_validation()
    train_ids = torch.cat([batch[2] for batch in loader]).tolist()
    valid_ids = torch.cat([batch[2] for batch in valid]).tolist()
    assert len(valid_ids) == n_valid and len(train_ids) == 100 - n_valid
    assert not set(train_ids) & set(valid_ids)
    again = BaseDataLoader(dataset(), batch_size=7, validation_split=split).split_validation()
    assert torch.cat([b[2] for b in again]).tolist() == valid_ids  # seeded: same split every time


def test_no_split_means_no_validation_loader():
    assert BaseDataLoader(dataset(), batch_size=10).split_validation() is None


@pytest.mark.parametrize("split", [1.0, 100, -0.1, True])
def test_bad_validation_split(split):
    with pytest.raises(ValueError, match="validation_split"):
        BaseDataLoader(dataset(), batch_size=10, validation_split=split)


def test_sampler_hook_replaces_shuffling():
    order = list(reversed(range(100)))
    loader = BaseDataLoader(dataset(), batch_size=10, sampler=order)
    assert torch.cat([b[2] for b in loader]).tolist() == order


def test_base_model_reports_trainable_parameters():
    class Net(BaseModel):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 2)
            self.b = torch.nn.Linear(2, 2)
            self.b.requires_grad_(False)

    assert Net().num_trainable_parameters() == 8
    assert str(Net()).endswith("Trainable parameters: 8")


def test_trainer_without_train_epoch_cannot_be_instantiated(tiny_config):
    class Incomplete(BaseTrainer):
        pass

    with pytest.raises(TypeError, match="_train_epoch"):
        Incomplete(ConfigParser(tiny_config), epochs=1)


@pytest.mark.parametrize("monitor", ["max", "best val_accuracy", "max val accuracy"])
def test_bad_monitor_is_a_config_error(tiny_config, monitor):
    tiny_config["trainer"]["args"]["monitor"] = monitor
    with pytest.raises(ConfigError, match=r'monitor must be "off" or "min <key>"'):
        train.build_trainer(ConfigParser(tiny_config))


def test_resume_takes_config_from_checkpoint_and_merges_file(tiny_config, tmp_path):
    parsed = ConfigParser(tiny_config, run_id="base")
    trainer = train.build_trainer(parsed)
    parsed.prepare_run_dirs()
    trainer.train()
    trainer.close()
    latest = parsed.model_dir / "latest.pth"
    finetune = tmp_path / "finetune.json"
    finetune.write_text(json.dumps({"optimizer": {"args": {"lr": 0.001}}}))
    parser = ConfigParser.add_arguments(argparse.ArgumentParser())
    merged = ConfigParser.from_args(parser.parse_args(["-r", str(latest), "-c", str(finetune),
                                                       "--set", "trainer.args.epochs=4"]))
    assert merged["optimizer"]["args"] == {**tiny_config["optimizer"]["args"], "lr": 0.001}
    assert merged["trainer"]["args"]["epochs"] == 4
    assert merged.model_dir == parsed.model_dir.resolve() and merged.run_id == "base"
    resumed = train.build_trainer(merged)
    resumed.resume(latest)
    assert resumed.start_epoch == 3


def test_init_from_starts_a_new_run_with_the_weights(tiny_config, tmp_path):
    first = ConfigParser(tiny_config, run_id="first")
    trainer = train.build_trainer(first)
    first.prepare_run_dirs()
    trainer.train()
    trainer.close()
    tiny_config["init_from"] = str(first.model_dir / "latest.pth")
    second = train.build_trainer(ConfigParser(tiny_config, run_id="second"))
    assert second.start_epoch == 1
    for key, value in trainer.raw_model.state_dict().items():
        assert torch.equal(value, second.raw_model.state_dict()[key]), key
    tiny_config["arch"]["args"]["width"] = 8  # a wider network cannot take those weights
    from utils.errors import CheckpointError
    with pytest.raises(CheckpointError, match="shapes differ for .*conv"):
        train.build_trainer(ConfigParser(tiny_config, run_id="third"))
