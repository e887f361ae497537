"""Per-epoch BatchNorm statistics (utils.batchnorm) and the BaseTrainer switch that uses them on small data."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import train
from parse_config import ConfigParser
from utils.batchnorm import EpochBatchNormStats, PreciseBatchNorm, batches_to_forget


def test_running_statistics_are_the_pooled_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    batches = [torch.randn(5, 3, 6, 6) * 3 + 1, torch.randn(2, 3, 6, 6) - 2]  # unequal sizes
    collector = EpochBatchNormStats(model)
    collector.start()
    model.train()
    inputs = []
    hook = model[1].register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))
    for x in batches:
        model(x)
    hook.remove()
    assert collector.finish() == 2
    n = [x.numel() // x.shape[1] for x in inputs]
    means = [x.mean((0, 2, 3)) for x in inputs]
    variances = [x.var((0, 2, 3), unbiased=True) for x in inputs]
    expect_mean = (means[0] * n[0] + means[1] * n[1]) / sum(n)
    expect_var = (variances[0] * n[0] + variances[1] * n[1]) / sum(n)
    assert torch.allclose(model[1].running_mean, expect_mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, expect_var, atol=1e-5)
    # the hooks are gone: a further forward updates the running average the usual way again
    before = model[1].running_mean.clone()
    model(batches[0])
    assert not torch.equal(before, model[1].running_mean)


def test_layers_in_eval_mode_keep_their_statistics():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 3), nn.BatchNorm1d(3))
    model[0].eval()
    frozen = (model[0].running_mean.clone(), model[0].running_var.clone())
    collector = EpochBatchNormStats(model)
    collector.start()
    model[2].train()
    model(torch.randn(8, 3) + 5)
    assert collector.finish() == 1
    assert torch.equal(model[0].running_mean, frozen[0]) and torch.equal(model[0].running_var, frozen[1])


def test_batches_to_forget():
    assert batches_to_forget(0.1) == 44  # 0.9 ** 44 < 0.01 <= 0.9 ** 43
    assert 0.9 ** 44 < 0.01 <= 0.9 ** 43
    assert batches_to_forget(None) == 1


@pytest.mark.parametrize("mode, batches_per_epoch, used", [("auto", "few", True), ("ema", "few", False),
                                                           ("epoch", "few", True), ("auto", "many", False)])
def test_trainer_switch(tiny_config, mode, batches_per_epoch, used):
    config = copy.deepcopy(tiny_config)
    config["trainer"]["args"]["bn_stats"] = mode
    if batches_per_epoch == "many":
        config["data_loader"]["args"]["batch_size"] = 4  # ~100 batches an epoch: the running average forgets
    trainer = train.build_trainer(ConfigParser(config))
    assert (trainer.epoch_bn_stats is not None) is used


def test_small_data_evaluation_uses_precise_statistics_of_the_final_weights(tiny_config):
    """After an epoch of a few batches, the model is evaluated with the statistics of that epoch's training inputs
    passed through the FINAL weights (precise BN), not torch's average (which would still hold 0.9 ** B of the
    initial (0, 1)) nor the statistics of the forwards made while the weights moved."""
    config = ConfigParser(copy.deepcopy(tiny_config), run_id="bn")
    trainer = train.build_trainer(config)
    assert trainer.epoch_bn_stats is not None and len(trainer.data_loader) < 44
    inputs = []
    trainer.raw_model.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()) if m.training else None)
    config.prepare_run_dirs()
    trainer.epochs = 1
    trainer.train()
    trainer.close()
    training = inputs[:len(trainer.data_loader)]  # the epoch's batches (then the replay, then evaluation)
    model = copy.deepcopy(trainer.raw_model).train()
    seen = []
    model.backbone.bn1.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().float()))
    with torch.no_grad():
        for x in training:
            model(x)
    counts = torch.tensor([x.numel() // x.shape[1] for x in seen], dtype=torch.float64)
    means = torch.stack([x.mean((0, 2, 3)) for x in seen]).double()
    variances = torch.stack([x.var((0, 2, 3)) for x in seen]).double()
    bn = trainer.raw_model.backbone.bn1
    assert torch.allclose(bn.running_mean.double(), (means * counts[:, None]).sum(0) / counts.sum(), atol=1e-5)
    assert torch.allclose(bn.running_var.double(), (variances * counts[:, None]).sum(0) / counts.sum(), rtol=1e-4)


def test_precise_batchnorm_replays_only_outermost_training_calls():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model = nn.Sequential(backbone, nn.Flatten())
    precise = PreciseBatchNorm(model)
    precise.start()
    model.train()
    batches = [torch.randn(4, 3, 5, 5), torch.randn(3, 3, 5, 5) + 1]
    for x in batches:
        model(x)  # outermost: model (not backbone, not the BatchNorm layer)
    backbone(batches[0])  # a trainer calling the backbone on its own is recorded too
    with torch.no_grad():
        backbone[0].weight.mul_(2)  # "the last optimizer step"
    assert precise.finish() == 1
    with torch.no_grad():
        outs = [backbone[0](x) for x in [*batches, batches[0]]]
    n = [o.numel() // 4 for o in outs]
    mean = sum(o.mean((0, 2, 3)) * k for o, k in zip(outs, n)) / sum(n)
    assert torch.allclose(backbone[1].running_mean, mean, atol=1e-5)
