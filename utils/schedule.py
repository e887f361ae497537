"""The config values counted in epochs: rescaling them together (``--epochs N``) and refusing schedules that the
run never reaches.

Schedulers step once per epoch, so their lengths and positions are epochs: ``milestones`` (0-based epoch indices:
milestone ``m`` takes effect from 1-based epoch ``m + 1``), ``warmup_epochs``, ``T_max``, ``step_size``, ...
Trainer arguments named ``*_epochs`` (``phase_a_epochs``) are phase lengths. Reaction windows (``early_stop``,
``save_period``, ``ReduceLROnPlateau``'s ``patience``) are not part of the schedule's shape and keep their values.

:func:`rescale_epochs` sets ``trainer.args.epochs`` and scales each of those values by the same factor, keeping the
constraints between them (warm-up before the first milestone, milestones inside the run, a phase A that leaves
phase B its epochs); :func:`schedule_problems` lists what validation refuses (a milestone past the last epoch, a
warm-up or phase longer than the run), all at once.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from utils.errors import ConfigError, format_path
from utils.registry import SCHEDULERS, TRAINERS, Registry, _parameters

# lr_scheduler arguments counted in epochs, by name (every scheduler that takes one of them): their kind
SCHEDULER_EPOCH_ARGS = {
    "milestones": "milestones",
    "warmup_epochs": "warmup",
    "total_epochs": "length", "epochs": "length",  # WarmupCosineLR's length; OneCycleLR's epochs
    "T_max": "length", "T_0": "length", "step_size": "length", "total_iters": "length", "total_steps": "length",
    "step_size_up": "length", "step_size_down": "length",
}
# trainer arguments other than "epochs" counted in epochs: phase lengths such as phase_a_epochs
_PHASE_ARG = re.compile(r"[A-Za-z0-9_]+_epochs?")
_NOT_EPOCHS = frozenset({"last_epoch"})


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _half_up(value: float) -> int:
    """Round halves up (Python's round() sends 2.5 to 2 and 3.5 to 4)."""
    return math.floor(value + 0.5)


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def _dotted(path: tuple) -> str:
    return ".".join(str(k) for k in path)


def _section(config: Mapping, section: str, registry: Registry) -> tuple[Mapping, dict[str, Any], set[str]] | None:
    """``(args, {parameter: default}, parameter names)`` of a component; None when the section is absent or not well
    formed (validation reports that). A type not registered (yet) contributes its args only, no defaults."""
    spec = config.get(section)
    if not isinstance(spec, Mapping):
        return None
    args = spec.get("args") or {}
    if not isinstance(args, Mapping):
        return None
    kind = spec.get("type")
    params = (_parameters(registry.get(kind)) or {}) if isinstance(kind, str) and kind in registry else {}
    defaults = {name: p.default for name, (p, _) in params.items() if p.default is not p.empty}
    return args, defaults, set(params) | set(args)


def _trainer_phase_args(config: Mapping) -> list[tuple[str, Any, bool]]:
    """``(name, value, from_default)`` of the trainer's epoch-denominated arguments other than ``epochs``."""
    found = _section(config, "trainer", TRAINERS)
    if found is None:
        return []
    args, defaults, names = found
    out = []
    for name in sorted(names | set(args)):
        if name == "epochs" or name in _NOT_EPOCHS or not _PHASE_ARG.fullmatch(name):
            continue
        value, default = (args[name], False) if name in args else (defaults.get(name), True)
        if _is_count(value):
            out.append((name, value, default))
    return out


def _scheduler_args(config: Mapping) -> tuple[dict[str, tuple[Any, bool]], set[str]] | None:
    """``{name: (value, from_default)}`` of the scheduler's epoch-denominated arguments, and its parameter names."""
    found = _section(config, "lr_scheduler", SCHEDULERS)
    if found is None:
        return None
    args, defaults, names = found
    out = {}
    for name in SCHEDULER_EPOCH_ARGS:
        if name in args:
            out[name] = (args[name], False)
        elif name in names and name in defaults:
            out[name] = (defaults[name], True)
    return out, names


def trainer_epochs(config: Mapping) -> Any:
    """The configured ``trainer.args.epochs`` (or the trainer's default), None when there is none."""
    found = _section(config, "trainer", TRAINERS)
    if found is None:
        return None
    args, defaults, _ = found
    return args.get("epochs", defaults.get("epochs"))


# --- validation -----------------------------------------------------------------------------------
def schedule_problems(config: Mapping) -> list[str]:
    """Every epoch-denominated value the run never reaches with ``trainer.args.epochs``, one phrase each (empty
    when the schedule fits). Values of the wrong type are left to the registries' checks."""
    epochs = trainer_epochs(config)
    if not _is_count(epochs) or epochs < 1:
        return []
    problems = []
    for name, value, default in _trainer_phase_args(config):
        if value > epochs:
            problems.append(f"{format_path(('trainer', 'args', name))}: {value}{' (the default)' if default else ''} "
                            "is longer than the run")
    found = _scheduler_args(config)
    if found is None:
        return problems
    values, names = found
    where = ("lr_scheduler", "args")
    milestones = values.get("milestones", (None, False))[0]
    if isinstance(milestones, list) and all(_is_count(m) for m in milestones):
        late = [m for m in milestones if m >= epochs]
        if late:
            which = "that decay never happens" if len(late) == 1 else "those decays never happen"
            problems.append(f"{format_path(where + ('milestones',))}: {milestones} has {', '.join(map(str, late))} "
                            f">= {epochs} (milestones are 0-based epoch indices), so {which}")
    warmup, default = values.get("warmup_epochs", (None, False))
    if _is_count(warmup):
        label = f"{format_path(where + ('warmup_epochs',))}: {warmup}{' (the default)' if default else ''}"
        if "total_epochs" in names:  # warm-up then decay over total_epochs: the warm-up must end before it
            total = values.get("total_epochs", (None, False))[0]
            total = total if _is_count(total) else epochs
            if warmup >= total:
                problems.append(f"{label} is not below the decay's {_epochs(total)}, so the warm-up never ends")
        elif warmup > epochs:
            problems.append(f"{label} is longer than the run, so the warm-up never reaches the full learning rate")
    return problems


def check_schedule(config: Mapping) -> None:
    """Raise one ConfigError naming every value of :func:`schedule_problems`, with the ``--epochs`` fix."""
    problems = schedule_problems(config)
    if problems:
        epochs = trainer_epochs(config)
        raise ConfigError(f"{format_path(('trainer', 'args', 'epochs'))}: a run of {_epochs(epochs)} does not reach "
                          "the whole schedule: " + "; ".join(problems)
                          + f". Give the epoch count as --epochs {epochs} (instead of --set trainer.args.epochs="
                          f"{epochs}) to rescale milestones, warm-up and phase lengths with it, or set these below it")


# --- --epochs N -----------------------------------------------------------------------------------
def _scaled(value: int, factor: float, keep_positive: bool = True) -> int:
    new = _half_up(value * factor)
    return max(new, 1) if keep_positive and value >= 1 else new


def _rescaled_milestones(milestones: list[int], factor: float, low: int, high: int) -> list[int]:
    """``milestones`` scaled by ``factor`` into ``[low, high]`` (0 stays 0), strictly increasing where the interval
    has room for them, otherwise sharing epochs (the decays multiply: the final rate stays the same); none when the
    run has no epoch after its first (``high < 1``)."""
    zeros = [m for m in milestones if m == 0]
    rest = [m for m in milestones if m > 0]
    if high < 1:
        return zeros
    low = min(max(low, 1), high)
    new = [min(max(_half_up(m * factor), low), high) for m in rest]
    if high - low + 1 >= len(new):  # room for distinct epochs: push collisions apart, forwards then backwards
        for i in range(1, len(new)):
            new[i] = max(new[i], new[i - 1] + 1)
        for i in range(len(new) - 1, -1, -1):
            cap = high if i == len(new) - 1 else new[i + 1] - 1
            new[i] = min(new[i], cap)
    return zeros + sorted(new)


def rescale_epochs(config: dict, epochs: int) -> list[tuple[str, Any, Any]]:
    """Set ``trainer.args.epochs`` to ``epochs`` and scale every epoch-denominated value of ``config`` (in place) by
    ``epochs / old epochs``. Returns ``(dotted key path, old value, new value)`` for each value that changed; a value
    taken from a default is written into the config when it changes."""
    if not _is_count(epochs) or not 1 <= epochs <= 100_000:
        raise ConfigError(f"--epochs {epochs!r}: give a whole number of epochs from 1 to 100000, e.g. --epochs 6")
    trainer = config.get("trainer")
    old = trainer_epochs(config)
    if not isinstance(trainer, dict) or not _is_count(old) or old < 1:
        shown = "missing" if old is None else repr(old)
        raise ConfigError(f"--epochs {epochs}: {format_path(('trainer', 'args', 'epochs'))} is {shown}, so there is "
                          "no epoch count to rescale from; set the trainer and its epochs in the config")
    factor = epochs / old
    changes: list[tuple[str, Any, Any]] = []

    def put(path: tuple, before: Any, after: Any, default: bool) -> None:
        if after == before and path != ("trainer", "args", "epochs"):
            return
        node = config
        for key in path[:-1]:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
        node[path[-1]] = after
        if after != before:
            changes.append((_dotted(path), f"{before} (default)" if default else before, after))

    put(("trainer", "args", "epochs"), old, epochs, "epochs" not in (trainer.get("args") or {}))
    for name, value, default in _trainer_phase_args(config):
        new = _scaled(value, factor)
        if value < old and epochs >= 2:  # a phase that left the run more epochs keeps leaving at least one
            new = min(new, epochs - 1)
        put(("trainer", "args", name), value, min(new, epochs), default)
    found = _scheduler_args(config)
    if found is None:
        return changes
    values, names = found
    where = ("lr_scheduler", "args")
    new_values: dict[str, Any] = {}
    for name, (value, default) in values.items():
        if SCHEDULER_EPOCH_ARGS[name] == "length" and _is_count(value):
            new_values[name] = _scaled(value, factor)
            put(where + (name,), value, new_values[name], default)
    milestones = values.get("milestones", (None, False))[0]
    has_milestones = isinstance(milestones, list) and bool(milestones) and all(_is_count(m) for m in milestones)
    warmup, default = values.get("warmup_epochs", (None, False))
    new_warmup = 0
    if _is_count(warmup):
        new_warmup = _scaled(warmup, factor)
        if "total_epochs" in names:  # must end before the decay's last epoch
            total = new_values.get("total_epochs", epochs)
            new_warmup = min(new_warmup, max(total - 1, 0))
        else:
            new_warmup = min(new_warmup, epochs - 1 if has_milestones and epochs >= 2 else epochs)
        put(where + ("warmup_epochs",), warmup, new_warmup, default)
    if has_milestones:
        new = _rescaled_milestones(milestones, factor, low=new_warmup + 1, high=epochs - 1)
        put(where + ("milestones",), milestones, new, values["milestones"][1])
    return changes


def format_changes(epochs: int, changes: list[tuple[str, Any, Any]]) -> str:
    """The line ``--epochs N`` prints: ``--epochs 6: trainer.args.epochs 60 -> 6, lr_scheduler.args...``."""
    return f"--epochs {epochs}: " + (", ".join(f"{path} {old} -> {new}" for path, old, new in changes)
                                     or "nothing to change")
