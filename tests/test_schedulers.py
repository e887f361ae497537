"""Unit tests for utils.optim: the two warm-up schedules and every registered optimizer."""
from __future__ import annotations

import io
import math
import re
import warnings

import pytest
import torch

import utils.optim  # noqa: F401  (registers the optimizers and schedulers)
from utils.errors import ConfigError
from utils.optim import WarmupCosineLR, WarmupMultiStepLR
from utils.registry import OPTIMIZERS, SCHEDULERS


def _optimizer(lr: float = 0.1, groups: int = 1) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr)


def _lr_per_epoch(scheduler, epochs: int, group: int = 0) -> list[float]:
    """The lr in force during epochs 0..epochs-1, stepping the scheduler after each epoch."""
    optimizer = scheduler.optimizer
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[group]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


# --- WarmupMultiStepLR -------------------------------------------------------------------------------


def test_warmup_multistep_recipe():
    scheduler = WarmupMultiStepLR(_optimizer(0.1), milestones=[160, 180], gamma=0.1, warmup_epochs=5)
    lrs = _lr_per_epoch(scheduler, 200)
    for e, lr in enumerate(lrs):
        if e < 5:
            expected = 0.1 * (e + 1) / 5
        elif e < 160:
            expected = 0.1
        elif e < 180:
            expected = 0.01
        else:
            expected = 0.001
        assert lr == pytest.approx(expected, rel=1e-12), e
    # spot checks written out
    assert lrs[0] == pytest.approx(0.02) and lrs[4] == pytest.approx(0.1)
    assert lrs[159] == pytest.approx(0.1) and lrs[160] == pytest.approx(0.01)
    assert lrs[179] == pytest.approx(0.01) and lrs[180] == pytest.approx(0.001) and lrs[199] == pytest.approx(0.001)
    assert scheduler.get_last_lr() == [pytest.approx(0.001)]


def test_warmup_multistep_factor_and_initial_lr():
    optimizer = _optimizer(0.1)
    scheduler = WarmupMultiStepLR(optimizer, milestones=[3, 6], gamma=0.5, warmup_epochs=2)
    # constructing takes the initial step: the lr is factor(0) straight away
    assert scheduler.last_epoch == 0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert [scheduler.factor(e) for e in range(8)] == pytest.approx([0.5, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25])


def test_warmup_multistep_without_warmup_and_per_group_base_lr():
    scheduler = WarmupMultiStepLR(_optimizer(0.1, groups=2), milestones=[2], gamma=0.1, warmup_epochs=0)
    assert _lr_per_epoch(scheduler, 4, group=0) == pytest.approx([0.1, 0.1, 0.01, 0.01])
    scheduler = WarmupMultiStepLR(_optimizer(0.1, groups=2), milestones=[2], gamma=0.1, warmup_epochs=0)
    assert _lr_per_epoch(scheduler, 4, group=1) == pytest.approx([0.2, 0.2, 0.02, 0.02])


def test_warmup_multistep_milestone_inside_warmup_still_warms_up_linearly():
    scheduler = WarmupMultiStepLR(_optimizer(1.0), milestones=[1], gamma=0.1, warmup_epochs=4)
    assert _lr_per_epoch(scheduler, 6) == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.1, 0.1])


@pytest.mark.parametrize("kwargs, message", [
    ({"milestones": [180, 160]}, "milestones must be non-negative increasing integers, got [180, 160]"),
    ({"milestones": [-1, 5]}, "milestones must be non-negative increasing integers, got [-1, 5]"),
    ({"milestones": [160.0]}, "milestones must be non-negative increasing integers, got [160.0]"),
    ({"milestones": [10], "warmup_epochs": -1}, "warmup_epochs must be >= 0, got -1"),
    ({"milestones": [10], "gamma": 0.0}, "gamma must be > 0, got 0.0"),
    ({"milestones": [10], "gamma": -0.1}, "gamma must be > 0, got -0.1"),
])
def test_warmup_multistep_invalid(kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        WarmupMultiStepLR(_optimizer(), **kwargs)
    assert str(excinfo.value) == message


# --- WarmupCosineLR ----------------------------------------------------------------------------------


def test_warmup_cosine_values():
    scheduler = WarmupCosineLR(_optimizer(0.1), total_epochs=10, warmup_epochs=2, eta_min=0.001)
    lrs = _lr_per_epoch(scheduler, 13)
    # warm-up: 0.1 * 1/2, 0.1 * 2/2
    assert lrs[0] == pytest.approx(0.05)
    assert lrs[1] == pytest.approx(0.1)
    # cosine over the 8 remaining epochs, progress (e - 2) / 8
    assert lrs[2] == pytest.approx(0.1)
    assert lrs[4] == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.sqrt(0.5)))  # progress 1/4
    assert lrs[6] == pytest.approx(0.001 + 0.099 * 0.5)  # progress 1/2
    assert lrs[8] == pytest.approx(0.001 + 0.099 * 0.5 * (1 - math.sqrt(0.5)))  # progress 3/4
    assert lrs[10] == pytest.approx(0.001)  # eta_min at total_epochs
    assert lrs[11] == pytest.approx(0.001) and lrs[12] == pytest.approx(0.001)  # and stays there
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_warmup_cosine_warmup_is_linear():
    scheduler = WarmupCosineLR(_optimizer(0.3), total_epochs=20, warmup_epochs=6)
    lrs = _lr_per_epoch(scheduler, 7)
    assert lrs[:6] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.25, 0.3])
    steps = [b - a for a, b in zip(lrs[:6], lrs[1:6])]
    assert steps == pytest.approx([0.05] * 5)
    assert lrs[6] == pytest.approx(0.3)


def test_warmup_cosine_without_warmup_is_mislas_cosine():
    base, eta_min, total = 0.2, 0.0, 8
    scheduler = WarmupCosineLR(_optimizer(base), total_epochs=total)
    lrs = _lr_per_epoch(scheduler, total + 1)
    assert lrs[0] == pytest.approx(base)
    assert lrs[2] == pytest.approx(0.2 * 0.5 * (1 + math.sqrt(0.5)))  # cos(pi/4)
    assert lrs[4] == pytest.approx(0.1)
    assert lrs[8] == pytest.approx(eta_min, abs=1e-15)


@pytest.mark.parametrize("kwargs, message", [
    ({"total_epochs": 0}, "total_epochs must be >= 1, got 0"),
    ({"total_epochs": 10, "warmup_epochs": 10}, "warmup_epochs must be in [0, total_epochs), got 10"),
    ({"total_epochs": 10, "warmup_epochs": -1}, "warmup_epochs must be in [0, total_epochs), got -1"),
    ({"total_epochs": 10, "eta_min": -0.1}, "eta_min must be >= 0, got -0.1"),
])
def test_warmup_cosine_invalid(kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        WarmupCosineLR(_optimizer(), **kwargs)
    assert str(excinfo.value) == message


# --- state_dict round trip ---------------------------------------------------------------------------


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("make", [
    lambda opt: WarmupMultiStepLR(opt, milestones=[6, 9], gamma=0.1, warmup_epochs=3),
    lambda opt: WarmupCosineLR(opt, total_epochs=12, warmup_epochs=2, eta_min=0.01),
], ids=["multistep", "cosine"])
def test_state_dict_roundtrip_and_resume(make):
    optimizer = _optimizer(0.1)
    scheduler = make(optimizer)
    _lr_per_epoch(scheduler, 5)
    opt_state, sched_state = _roundtrip(optimizer.state_dict()), _roundtrip(scheduler.state_dict())
    assert sched_state == scheduler.state_dict()
    assert sched_state["last_epoch"] == 5

    resumed_optimizer = _optimizer(0.1)
    resumed = make(resumed_optimizer)
    resumed_optimizer.load_state_dict(opt_state)
    resumed.load_state_dict(sched_state)
    assert resumed.last_epoch == 5
    assert resumed.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    assert _lr_per_epoch(resumed, 10) == pytest.approx(_lr_per_epoch(scheduler, 10), rel=1e-12)


def test_state_dict_holds_the_schedule_settings():
    scheduler = WarmupMultiStepLR(_optimizer(), milestones=[6, 9], gamma=0.5, warmup_epochs=3)
    other = WarmupMultiStepLR(_optimizer(), milestones=[1], gamma=0.9, warmup_epochs=0)
    other.load_state_dict(_roundtrip(scheduler.state_dict()))
    assert (other.milestones, other.gamma, other.warmup_epochs) == ([6, 9], 0.5, 3)


# --- through the registry ----------------------------------------------------------------------------


def test_schedulers_registered_and_built_from_json():
    assert SCHEDULERS.get("WarmupMultiStepLR") is WarmupMultiStepLR
    assert SCHEDULERS.get("WarmupCosineLR") is WarmupCosineLR
    assert "LambdaLR" not in SCHEDULERS and "SequentialLR" not in SCHEDULERS
    optimizer = _optimizer(0.1)
    scheduler = SCHEDULERS.build({"type": "WarmupCosineLR", "args": {"warmup_epochs": 1}}, ("lr_scheduler",),
                                 optional={"total_epochs": 4}, optimizer=optimizer)
    assert scheduler.total_epochs == 4
    scheduler = SCHEDULERS.build({"type": "WarmupMultiStepLR", "args": {"milestones": [160, 180]}},
                                 ("lr_scheduler",), optional={"total_epochs": 200}, optimizer=_optimizer(0.1))
    assert scheduler.milestones == [160, 180] and scheduler.warmup_epochs == 5


def test_scheduler_value_errors_become_config_errors():
    with pytest.raises(ConfigError, match=r'^config\["lr_scheduler"\] \(WarmupMultiStepLR\): milestones must be '
                                          r"non-negative increasing integers, got \[180, 160\]$"):
        SCHEDULERS.build({"type": "WarmupMultiStepLR", "args": {"milestones": [180, 160]}}, ("lr_scheduler",),
                         optimizer=_optimizer())
    with pytest.raises(ConfigError, match=r'^config\["lr_scheduler"\]\["args"\]\["milestones"\]: '
                                          r"WarmupMultiStepLR expects a list, got int 160$"):
        SCHEDULERS.build({"type": "WarmupMultiStepLR", "args": {"milestones": 160}}, ("lr_scheduler",),
                         optimizer=_optimizer())


# --- optimizers --------------------------------------------------------------------------------------

ARGS = {name: {} for name in OPTIMIZERS.names()}  # every optimizer's defaults are enough
ARGS["SGD"] = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}  # the usual recipe


def test_all_torch_optimizers_are_registered():
    expected = {n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
                and issubclass(getattr(torch.optim, n), torch.optim.Optimizer) and n != "Optimizer"}
    assert set(OPTIMIZERS.names()) == expected
    assert {"SGD", "Adam", "AdamW"} <= expected


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_builds_and_steps(name):
    target = torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]])
    weight = torch.nn.Parameter(torch.zeros(2, 3))  # 2-D: Muon only takes matrices

    def loss_fn():
        return ((weight - target) ** 2).sum()

    optimizer = OPTIMIZERS.build({"type": name, "args": ARGS[name]}, ("optimizer",), params=[weight])
    assert isinstance(optimizer, OPTIMIZERS.get(name))
    before = loss_fn().item()

    def closure():
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        if name == "SparseAdam":  # SparseAdam only takes sparse gradients (e.g. nn.Embedding(sparse=True))
            weight.grad = weight.grad.to_sparse()
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. Muon on a small matrix
        if name == "LBFGS":
            optimizer.step(closure)  # LBFGS re-evaluates the loss itself
        else:
            closure()
            optimizer.step()
    after = loss_fn().item()
    assert not torch.equal(weight.detach(), torch.zeros(2, 3)), name
    assert after < before, (name, before, after)


def test_optimizer_argument_errors_are_config_errors():
    weight = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match=re.escape('config["optimizer"]["args"]["momentun"]: SGD has no argument '
                                                    "'momentun'. Did you mean 'momentum'?")):
        OPTIMIZERS.build({"type": "SGD", "args": {"momentun": 0.9}}, ("optimizer",), params=[weight])
    with pytest.raises(ConfigError, match=re.escape('config["optimizer"] (SGD): Invalid learning rate: -0.1')):
        OPTIMIZERS.build({"type": "SGD", "args": {"lr": -0.1}}, ("optimizer",), params=[weight])
    with pytest.raises(ConfigError, match=re.escape('config["optimizer"]["args"]["betas"]: Adam expects a list, '
                                                    "got float 0.9")):
        OPTIMIZERS.build({"type": "Adam", "args": {"betas": 0.9}}, ("optimizer",), params=[weight])
    with pytest.raises(ConfigError, match=r"'?params'? is set by the framework for SGD; remove it from the config$"):
        OPTIMIZERS.build({"type": "SGD", "args": {"params": []}}, ("optimizer",), params=[weight])


def test_string_learning_rate_is_a_config_error():
    weight = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match=re.escape('config["optimizer"]["args"]["lr"]: SGD expects a number')):
        OPTIMIZERS.build({"type": "SGD", "args": {"lr": "0.1"}}, ("optimizer",), params=[weight])

