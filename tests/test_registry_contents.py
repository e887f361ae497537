"""timm-style: every registered component and every shipped config is exercised, so a new plugin or
config is tested the day it is added."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import train
from parse_config import ConfigParser, iter_config_files, load_json
from utils.checkpoint import save_checkpoint
from utils.errors import DataError
from utils.registry import DATA_LOADERS, LOSSES, METRICS, MODELS

ROOT = Path(__file__).resolve().parents[1]
# test-time configs (configs/experts/test_time_*.json) are merged over a checkpoint's config by
# test_training.py; they are checked in tests/test_experts.py
CONFIGS = [p for p in iter_config_files(ROOT / "configs") if not p.name.startswith("test_time_")]

# How to build each registered entry for a smoke test: models get a small image batch, data loaders
# must build without downloads. Entries needing data on disk list their arguments here.
MODEL_INPUTS = {
    "ResNet32": dict(args={"num_classes": 7, "in_channels": 3}, shape=(4, 3, 32, 32)),
    "ResNet50": dict(args={"num_classes": 5}, shape=(2, 3, 64, 64)),
    "ResNeXt50": dict(args={"num_classes": 5}, shape=(2, 3, 64, 64)),
    "ResNet152": dict(args={"num_classes": 5}, shape=(2, 3, 64, 64)),
    "MultiExpertResNet32": dict(args={"num_classes": 7, "hypernet": {"hidden": 16}}, shape=(4, 3, 32, 32)),
    "MultiExpertResNet50": dict(args={"num_classes": 5}, shape=(2, 3, 64, 64)),
    "MultiExpertResNeXt50": dict(args={"num_classes": 5, "hypernet": {"rank": 4}}, shape=(2, 3, 64, 64)),
    "MultiExpertResNet152": dict(args={"num_classes": 5, "hypernet": {"mode": "adapter", "rank": 4}},
                                 shape=(2, 3, 64, 64)),
    # spectrum models map (B, L) to (B, L): "out" gives the expected output shape
    "UNet1D": dict(args={"channels": [8, 16, 16], "kernel_size": 5}, shape=(2, 301), out=(2, 301)),
}
# Losses whose input is not (N, C) logits: how to call them
EXPERT_LOSSES = {"DiverseExpertLoss"}
SPECTRUM_LOSSES = {"NMRDenoiseLoss"}
DATA_LOADER_ARGS = {  # "{cifar}" is replaced by the generated CIFAR directory
    "DigitsLT": {"batch_size": 16},
    "CIFAR10LT": {"data_dir": "{cifar}", "imb_factor": 0.1, "batch_size": 16},
    "CIFAR100LT": {"data_dir": "{cifar}", "imb_factor": 0.1, "batch_size": 16},
}
# Loaders reading image lists need a dataset on disk; tests/test_image_list.py builds them on a generated
# folder. Here, a config using one must fail with a DataError that names the missing path.
FILE_BASED = {"ImageNetLT", "PlacesLT", "INaturalist2018"}
# Loaders of NMR ladders yield (spectra (B, K+1, L), clean (B, L), index); "{nmr}" is a generated directory
SPECTRUM_LOADER_ARGS = {
    "NMRSimulated": {"batch_size": 4, "n_train": 8, "n_valid": 4, "n_test": 4, "simulation": {"length": 128}},
    "NMRDirectory": {"data_dir": "{nmr}", "batch_size": 2, "validation_split": 0},
}


def test_configs_exist():
    assert any(p.name == "quickstart_digits_lt.json" for p in CONFIGS)


def stage1_checkpoint(config: dict, directory: Path) -> str:
    """A checkpoint of the config's model without LWS, standing in for the stage-1 run ``init_from`` names."""
    arch = {"type": config["arch"]["type"], "args": {k: v for k, v in config["arch"]["args"].items() if k != "lws"}}
    model = MODELS.build(arch, ("arch",))
    path = directory / "stage1.pth"
    save_checkpoint({"epoch": 1, "arch": arch["type"], "model": model.state_dict(), "config": config}, path)
    return str(path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_validates_and_builds(path, tmp_path, cifar_root):
    config = load_json(path)
    config["trainer"].setdefault("args", {})["save_dir"] = str(tmp_path / "saved")
    ConfigParser(load_json(path), source=str(path))  # the file as shipped validates
    loader_args = config["data_loader"]["args"]
    if config["data_loader"]["type"] in ("CIFAR10LT", "CIFAR100LT"):
        loader_args["data_dir"] = str(cifar_root["root"])
    if config.get("init_from"):
        config["init_from"] = stage1_checkpoint(config, tmp_path)
    parsed = ConfigParser(config, source=str(path))
    if config["data_loader"]["type"] in FILE_BASED | {"NMRDirectory"}:
        with pytest.raises(DataError, match=re.escape(str(Path(loader_args["data_dir"])))):
            train.build_trainer(parsed)
        # everything but the data still builds
        model = parsed.build("arch")
        optimizer = parsed.build("optimizer", params=list(model.parameters()))
        if "lr_scheduler" in parsed:
            parsed.build("lr_scheduler", optimizer=optimizer,
                         optional={"total_epochs": config["trainer"]["args"]["epochs"]})
    else:
        trainer = train.build_trainer(parsed)
        assert trainer.model is not None
    assert not (tmp_path / "saved").exists()  # building writes nothing


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_runs_forward_and_backward(name):
    spec = MODEL_INPUTS.get(name)
    if spec is None:
        pytest.fail(f"add {name} to MODEL_INPUTS in {__file__} so it is smoke-tested")
    model = MODELS.build({"type": name, "args": spec["args"]}, ("arch",))
    out = model(torch.randn(*spec["shape"]))
    assert out.shape == spec.get("out", (spec["shape"][0], spec["args"].get("num_classes")))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # the trainers' channels_last option (on by default): same outputs in NHWC layout
    if len(spec["shape"]) == 4:
        model.eval()
        x = torch.randn(*spec["shape"])
        with torch.no_grad():
            expected = model(x)
            model.to(memory_format=torch.channels_last)
            got = model(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", DATA_LOADERS.names())
def test_every_data_loader_yields_image_label_index(name, cifar_root, tmp_path):
    if name in FILE_BASED:
        pytest.skip("built on a generated image folder in tests/test_image_list.py")
    if name in SPECTRUM_LOADER_ARGS:
        check_spectrum_loader(name, tmp_path)
        return
    args = DATA_LOADER_ARGS.get(name)
    if args is None:
        pytest.fail(f"add {name} to DATA_LOADER_ARGS in {__file__} so it is smoke-tested")
    args = {k: str(cifar_root["root"]) if v == "{cifar}" else v for k, v in args.items()}
    loader = DATA_LOADERS.build({"type": name, "args": args}, ("data_loader",), training=True)
    images, labels, index = next(iter(loader))
    assert images.dtype == torch.float32 and labels.dtype == torch.int64 and index.dtype == torch.int64
    assert len(loader.cls_num_list) == int(labels.max()) + 1 or len(loader.cls_num_list) > int(labels.max())
    assert sum(loader.cls_num_list) == len(loader.dataset)


def check_spectrum_loader(name: str, tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(3):
        line = 20.0 / (1.0 + ((np.arange(64) - 20) / 2.0) ** 2)  # a noise-only ladder is refused when loaded
        noise = rng.normal(size=(3, 64)) * np.array([[1.0], [0.5], [0.25]])
        np.savez(tmp_path / f"ladder_{i}.npz", spectra=line + noise)
    args = {k: str(tmp_path) if v == "{nmr}" else v for k, v in SPECTRUM_LOADER_ARGS[name].items()}
    loader = DATA_LOADERS.build({"type": name, "args": args}, ("data_loader",), training=True)
    spectra, clean, index = next(iter(loader))
    assert spectra.dtype == torch.float32 and spectra.ndim == 3 and spectra.shape[1] >= 2
    assert clean.shape == (spectra.shape[0], spectra.shape[2]) and index.dtype == torch.int64


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_finite_and_differentiable(name):
    if name in SPECTRUM_LOSSES:  # denoised spectra (B, L) against a target, with peak and baseline masks
        output, target = torch.randn(2, 64, requires_grad=True), torch.randn(2, 64)
        peaks = target > 1
        loss = LOSSES.build({"type": name, "args": {}}, ("loss",))
        value = loss(output, target, peaks, ~peaks)["loss"]
        assert value.ndim == 0 and torch.isfinite(value) and value > 0
        value.backward()
        assert output.grad.abs().sum() > 0
        return
    # expert losses take the experts' logits (N, E, C) and the preference
    shape = (8, 3, 5) if name in EXPERT_LOSSES else (8, 5)
    logits = torch.randn(*shape, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    loss = LOSSES.build({"type": name, "args": {}}, ("loss",), optional={"cls_num_list": [50, 20, 10, 5, 2]})
    value = loss(logits, target, torch.tensor([0.2, 0.3, 0.5])) if name in EXPERT_LOSSES else loss(logits, target)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", METRICS.names())
def test_every_metric_scores_perfect_predictions_well(name):
    target = torch.arange(5).repeat(4)
    logits = torch.nn.functional.one_hot(target, 5).float() * 20
    metric = METRICS.build({"type": name, "args": {}}, ("metrics", 0),
                           optional={"cls_num_list": [200, 150, 50, 10, 5], "num_classes": 5})
    metric.update(logits, target)
    values = metric.compute()
    assert set(values) == set(metric.keys)
    for key, value in values.items():
        if key in ("ece", "mce"):
            assert value < 0.01
        else:
            assert value == pytest.approx(100.0)


def test_run_names_are_unique_and_init_from_names_a_shipped_run():
    """Issue 17.9: the LNR and MiSLAS stage-2 runs of one config shared a run name (only the timestamp told them
    apart). Every shipped config has its own name, and every ``init_from`` points at the output of a shipped config
    (``saved/models/<its name>/<run_id>/...``), which the message for a missing one names (issue 17.12)."""
    names: dict[str, Path] = {}
    for path in CONFIGS:
        name = load_json(path)["name"]
        assert name not in names, f"{path} and {names[name]} share the run name {name!r}"
        names[name] = path
    stage2 = [p for p in CONFIGS if load_json(p).get("init_from")]
    assert len(stage2) >= 20
    for path in stage2:
        parts = Path(load_json(path)["init_from"]).parts
        if parts[0] == "pretrained":  # a shipped checkpoint (the NMR fine-tuning config)
            assert (ROOT / Path(*parts)).is_file(), path
            continue
        assert parts[:2] == ("saved", "models") and parts[2] in names, (path, parts)
        assert not load_json(names[parts[2]]).get("init_from"), f"{path}: init_from names another stage 2"
