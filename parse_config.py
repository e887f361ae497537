"""ConfigParser: load a JSON config, apply command-line overrides, validate it, build from registries.

Construction is pure: it imports the config's ``plugins``, validates every section and computes the run
directories, but writes nothing. :meth:`ConfigParser.prepare_run_dirs` creates the directories and
saves ``config.json`` once everything has been built, so a bad config never leaves a run directory.

Config form (see README): top-level ``name``, optional ``doc``, ``seed``, ``plugins``, ``init_from``,
and components ``{"type": NAME, "args": {...}}``: ``arch``, ``data_loader``, ``loss``, ``metrics``
(a list), ``optimizer``, ``lr_scheduler``, ``trainer``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import difflib
import importlib
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

# Nothing here imports torch: the registries import the built-in components on their first look-up
# (utils.registry.load_builtins), after the checks that need only the JSON and the sources' names, so a bad config
# is reported in a fraction of a second. utils.dist and utils.checkpoint (torch) are imported where they are used.
from utils import registry_index, safe_json
from utils.errors import ConfigError, StorageError, format_path
from utils.files import RunLock, atomic_write_text, first_file_in_path, make_dirs
from utils.process import MAX_THREADS, apply_threads, launch_rank, resolve_threads
from utils.registry import (
    DATA_LOADERS,
    LOSSES,
    METRICS,
    MODELS,
    OPTIMIZERS,
    SCHEDULERS,
    TRAINERS,
    Registry,
    _parameters,
    builtins_loaded,
    load_builtins,
)
from utils.schedule import check_schedule, format_changes, rescale_epochs

TOP_LEVEL_KEYS = {
    "name": "run name; runs are saved under <save_dir>/models/<name>/<run_id>/",
    "doc": "free text: what the config is for, which paper values it uses, which defaults it changes",
    "seed": "integer seed for python, numpy and torch",
    "threads": "CPU threads torch uses (torch.set_num_threads; --threads N); every run records the count it used, "
               "since results on CPU are reproducible for a given count only",
    "plugins": "list of modules imported before building, e.g. [\"my_pkg.my_models\"]",
    "init_from": "checkpoint whose model weights initialise this (new) run, e.g. LNR stage 2 from stage 1",
    "arch": "the model", "data_loader": "the data", "loss": "the training loss",
    "metrics": "list of metrics", "optimizer": "the optimizer", "lr_scheduler": "the learning-rate schedule",
    "trainer": "the trainer and its loop settings (epochs, monitor, save_dir, device, ...)",
}
REQUIRED_KEYS = ("name", "arch", "data_loader", "trainer")

# section -> (registry, names the framework supplies at build time so the config need not set them)
COMPONENTS: dict[str, tuple[Registry, frozenset[str]]] = {
    "arch": (MODELS, frozenset({"num_classes"})),
    "data_loader": (DATA_LOADERS, frozenset({"training", "device"})),
    "loss": (LOSSES, frozenset({"cls_num_list"})),
    "optimizer": (OPTIMIZERS, frozenset({"params"})),
    "lr_scheduler": (SCHEDULERS, frozenset({"optimizer", "total_epochs"})),
    "trainer": (TRAINERS, frozenset({"config"})),
}
METRIC_SUPPLIED = frozenset({"cls_num_list", "num_classes"})
# of those, the ones the framework always passes: a config must not set them
RUNTIME_ONLY = frozenset({"training", "params", "optimizer", "config"})

MAX_SEED = 2**32 - 1
MAX_LR = 100.0
# (key path, low, high, high included, what the value is): numbers outside are refused before anything is built or
# written. A value of another type is left to the registry's type check. "*" matches every index of a list.
RANGES: tuple[tuple[tuple, float, float, bool, str], ...] = (
    (("optimizer", "args", "lr"), 0.0, MAX_LR, True, "the learning rate"),
    (("optimizer", "args", "momentum"), 0.0, 1.0, False, "the momentum"),
    (("optimizer", "args", "dampening"), 0.0, 1.0, True, "the dampening"),
    (("optimizer", "args", "betas", "*"), 0.0, 1.0, False, "an Adam beta"),
    (("optimizer", "args", "weight_decay"), 0.0, 1.0, True, "the weight decay"),
    (("optimizer", "args", "eps"), 0.0, 1.0, True, "eps"),
    (("data_loader", "args", "batch_size"), 1, 2**20, True, "the batch size"),
    (("data_loader", "args", "num_workers"), 0, 256, True, "the number of DataLoader workers"),
    (("trainer", "args", "epochs"), 1, 100_000, True, "the number of epochs"),
)

# fullmatch, not "^...$": "$" also matches before a final newline, so "tiny\n" would pass
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def valid_name(name: Any) -> bool:
    """A run name or run id: letters, digits, "_", "-", "." (it becomes a directory name), no "..", no newline."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None and ".." not in name


@contextlib.contextmanager
def _working_directory_importable():
    """The working directory on ``sys.path`` for the duration of a plugin import only.

    Users may keep plugins next to their configs without setting PYTHONPATH, but the working directory must not
    stay importable: later optional imports of installed libraries (``tensorflow`` from TensorBoard, ``psutil``,
    ``pandas``) would run same-named ``.py`` files lying there.
    """
    cwd = str(Path.cwd())
    if cwd in sys.path or "" in sys.path:  # already importable (python -c, python -m, PYTHONPATH): leave it
        yield
        return
    sys.path.append(cwd)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(cwd)
        importlib.invalidate_caches()


def import_plugins(modules: Any, where: tuple = ("plugins",)) -> None:
    """Import each module named in ``modules`` so that its ``@REGISTRY.register()`` calls run.

    Nothing is added to ``sys.path`` unless a plugin is requested, and then only while importing it.
    """
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(f"{format_path(where)}: expected a list of module names such as "
                          f'["my_pkg.my_models"], got {modules!r}')
    for i, name in enumerate(modules):
        if not _MODULE_RE.fullmatch(name):
            raise ConfigError(f"{format_path(where + (i,))}: '{name}' is not a Python module name; give a "
                              "dotted import path (my_pkg.my_module), not a file path")
    if not modules:
        return
    load_builtins()  # first, so that a name a plugin registers again is reported as the plugin's
    with _working_directory_importable():
        for i, name in enumerate(modules):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as err:
                raise ConfigError(f"{format_path(where + (i,))}: cannot import plugin '{name}' ({err}). Put the "
                                  "module on PYTHONPATH or in the directory you run from") from err


def checkpoint_plugins(checkpoint_config: Mapping, named: Iterable[str], checkpoint: str | Path) -> None:
    """Refuse a checkpoint whose config lists plugins the user did not name again.

    A checkpoint is data: it must not choose modules to import. Its config's ``plugins`` are imported only when
    the user names each of them on the command line (``--plugin``) or in a ``-c`` config.
    """
    listed = checkpoint_config.get("plugins") or []
    if not isinstance(listed, list):
        raise ConfigError(f'{checkpoint}: config["plugins"] in the checkpoint is {type(listed).__name__}, not a list '
                          "of module names")
    named = set(named)
    missing = [p for p in listed if p not in named]
    if missing:
        flags = " ".join(f"--plugin {p}" if isinstance(p, str) else f"--plugin {p!r}" for p in missing)
        raise ConfigError(f"{checkpoint}: its config needs the plugin(s) {', '.join(map(repr, missing))}, and a "
                          "checkpoint cannot choose code to import. If you trust that code, name it yourself: "
                          f"add {flags}")


def _check_finite(value: Any, where: tuple = ()) -> None:
    """Refuse NaN and +-Infinity anywhere: standard JSON has no such numbers (Python's json module reads them) and
    no setting means anything with them; range checks such as ``lr < 0`` let NaN through."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{format_path(where)}: {value} is not a valid config value; give a finite number")
    if isinstance(value, dict):
        for key, child in value.items():
            _check_finite(child, where + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _check_finite(child, where + (index,))


def validate_config(config: Any, schedule: bool = True) -> None:
    """Check every section of ``config``; raise ConfigError naming the first wrong key path.

    With ``schedule`` (a new training run), epoch-denominated values the run never reaches (a milestone past the
    last epoch, a warm-up or phase longer than the run) are refused too, all of them in one message (see
    utils/schedule.py); a resumed run keeps its checkpoint's schedule and an evaluation has none.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"the config must be a JSON object, got {type(config).__name__}")
    _check_finite(config)
    for key in config:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(key, list(TOP_LEVEL_KEYS), n=1, cutoff=0.6)
            if close:
                hint = f" Did you mean '{close[0]}'?"
            else:  # a component's argument put at the top (--set epochs=3): name where that key lives
                elsewhere = [p for p in key_paths(config) if p.endswith(f".{key}")]
                hint = f" Did you mean {' or '.join(elsewhere[:3])}?" if elsewhere else ""
            raise ConfigError(f"{format_path((key,))}: unknown top-level key.{hint} "
                              f"Valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    for key in REQUIRED_KEYS:
        if config.get(key) is None:
            raise ConfigError(f"{format_path((key,))}: {'null' if key in config else 'missing'}; a config needs "
                              f"{', '.join(REQUIRED_KEYS)} ({key}: {TOP_LEVEL_KEYS[key]})")
    name = config["name"]
    if not valid_name(name):
        raise ConfigError(f'{format_path(("name",))}: must be a non-empty name of letters, digits, "_", "-" '
                          f'and "." (it becomes a directory name), got {name!r}')
    if "doc" in config and not isinstance(config["doc"], str):
        raise ConfigError(f'{format_path(("doc",))}: must be a string')
    seed = config.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f'{format_path(("seed",))}: must be an integer in [0, {MAX_SEED}] (numpy seeds are '
                          f"32-bit), got {seed!r}")
    init_from = config.get("init_from")
    if init_from is not None and (not isinstance(init_from, str) or not init_from):
        raise ConfigError(f'{format_path(("init_from",))}: must be a checkpoint path or null, got {init_from!r}')
    threads = config.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or not 1 <= threads <= MAX_THREADS):
        raise ConfigError(f'{format_path(("threads",))}: must be a whole number of CPU threads from 1 to '
                          f"{MAX_THREADS} (or null: torch's default), got {threads!r}; e.g. --threads 1")
    if config.get("plugins", []) == []:  # a plugin may register more names: then only the registries know them
        check_names_from_sources(config)
    import_plugins(config.get("plugins", []))
    for section, (registry, supplied) in COMPONENTS.items():
        if section in config and config[section] is not None:
            registry.check(config[section], (section,), supplied, hidden=supplied & RUNTIME_ONLY)
    metrics = config.get("metrics", [])
    if not isinstance(metrics, list):
        raise ConfigError(f'{format_path(("metrics",))}: must be a list of {{"type": NAME, "args": {{...}}}}, '
                          f"got {type(metrics).__name__}")
    for i, spec in enumerate(metrics):
        METRICS.check(spec, ("metrics", i), METRIC_SUPPLIED)
    if "lr_scheduler" in config and config["lr_scheduler"] is not None and "optimizer" not in config:
        raise ConfigError(f'{format_path(("optimizer",))}: missing; config["lr_scheduler"] needs an optimizer to '
                          "schedule (add an \"optimizer\" section or remove \"lr_scheduler\")")
    check_ranges(config)
    if schedule:
        check_schedule(config)


def check_names_from_sources(config: dict) -> None:
    """Refuse a component ``type`` that no built-in registers, from the names ``utils.registry_index`` reads in the
    sources: before the registries import torch and the components (seconds), with the registries' own message.
    Everything else about a component (its form, its arguments) is checked later, against the imported classes."""
    if builtins_loaded():  # the registries hold every name already and answer at once
        return
    index = registry_index.static_entries()
    if index is None:  # sources this reader does not follow: the registries will say it
        return
    specs = [((section,), config[section], registry) for section, (registry, _) in COMPONENTS.items()
             if config.get(section) is not None]
    if isinstance(config.get("metrics"), list):
        specs += [(("metrics", i), spec, METRICS) for i, spec in enumerate(config["metrics"])]
    for where, spec, registry in specs:
        if isinstance(spec, Mapping) and "type" in spec and set(spec) <= {"type", "args"}:
            # with the names registered in this process so far: a script may register its own class and then name it
            names = set(index[registry.name]) | set(registry.names_so_far())
            if not isinstance(spec["type"], str) or spec["type"] not in names:
                raise registry.unknown(spec["type"], where + ("type",), names)


def _matches(config: Any, pattern: tuple, walked: tuple = ()):
    """``(path, value)`` of every entry of ``config`` that key ``pattern`` ("*": any list index) names."""
    if not pattern:
        yield walked, config
        return
    key, rest = pattern[0], pattern[1:]
    if key == "*":
        if isinstance(config, list):
            for index, child in enumerate(config):
                yield from _matches(child, rest, walked + (index,))
    elif isinstance(config, dict) and key in config:
        yield from _matches(config[key], rest, walked + (key,))


def check_ranges(config: dict) -> None:
    """Refuse numbers outside :data:`RANGES` (a learning rate of 1e300, a batch of 1e30, momentum 1)."""
    for pattern, low, high, high_included, what in RANGES:
        for path, value in _matches(config, pattern):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            inside = low <= value <= high if high_included else low <= value < high
            if not inside:
                interval = f"[{low:g}, {high:g}{']' if high_included else ')'}"
                raise ConfigError(f"{format_path(path)}: {value!r} is out of range; {what} must be in {interval}")


def key_paths(config: Any, prefix: tuple = ()) -> list[str]:
    """Every key path of ``config`` in ``--set`` form (``trainer.args.epochs``, ``metrics.0.type``), depth first."""
    out = []
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        path = prefix + (key,)
        out.append(".".join(map(str, path)))
        out.extend(key_paths(value, path))
    return out


def settable_paths(config: Mapping) -> list[str]:
    """The key paths of ``config`` and the arguments its components accept but do not set (``trainer.args.amp``):
    what a ``--set`` may name."""
    paths = key_paths(config)
    specs = [((section,), config.get(section), COMPONENTS[section][0]) for section in COMPONENTS]
    metrics = config.get("metrics")
    if isinstance(metrics, list):
        specs += [(("metrics", i), spec, METRICS) for i, spec in enumerate(metrics)]
    for where, spec, registry in specs:
        if isinstance(spec, Mapping) and isinstance(spec.get("type"), str) and spec["type"] in registry:
            params = _parameters(registry.get(spec["type"])) or {}
            prefix = ".".join(map(str, where + ("args",)))
            paths += [f"{prefix}.{name}" for name, (p, _) in params.items()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in RUNTIME_ONLY]
    paths += [key for key in TOP_LEVEL_KEYS if key not in config]
    return list(dict.fromkeys(paths))


def suggest_paths(config: Mapping, key_path: str, n: int = 3, exclude: str | None = None) -> list[str]:
    """Key paths of ``config`` that ``key_path`` (which it does not have) may have meant: those ending in the same
    key (``epochs`` -> ``trainer.args.epochs``), then those whose last key or whole path is a close match. Paths at
    or below ``exclude`` (what a ``--set`` added) are left out."""
    exclude = exclude or key_path
    candidates = [p for p in settable_paths(config) if p != exclude and not p.startswith(exclude + ".")]
    leaf = key_path.rsplit(".", 1)[-1]
    leaves = {p.rsplit(".", 1)[-1] for p in candidates}
    close_leaves = set(difflib.get_close_matches(leaf, leaves, n=3, cutoff=0.75))
    found = [p for p in candidates if p.rsplit(".", 1)[-1] == leaf]
    found += [p for p in candidates if p.rsplit(".", 1)[-1] in close_leaves]
    if not found:  # no key of that name or close to it: a close whole path (a misspelt section)
        found = difflib.get_close_matches(key_path, candidates, n=n, cutoff=0.75)
    return list(dict.fromkeys(found))[:n]


def _created_path(config: Any, keys: list[str]) -> tuple | None:
    """The first prefix of ``keys`` that ``config`` does not have (a ``--set`` that adds a key), else None."""
    node = config
    for i, key in enumerate(keys):
        if isinstance(node, dict):
            if key not in node:
                return tuple(keys[:i + 1])
            node = node[key]
        elif isinstance(node, list) and key.lstrip("-").isdigit() and -len(node) <= int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return None


def apply_override(config: dict, assignment: str) -> tuple | None:
    """Apply one ``--set a.b.c=VALUE`` in place. VALUE is parsed as JSON, else kept as a string.

    Returns the key path the assignment added to the config (its first key the config did not have), or None when
    it replaced an existing value; :meth:`ConfigParser.from_args` names close existing keys when that new key is
    refused.
    """
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY.PATH=VALUE, e.g. --set optimizer.args.lr=0.05")
    key_path, raw = assignment.split("=", 1)
    keys: list[Any] = [k for k in key_path.strip().split(".")]
    if not key_path.strip() or any(k == "" for k in keys):
        raise ConfigError(f"--set {assignment!r}: empty key in '{key_path}'")
    created = _created_path(config, keys)
    try:
        value = safe_json.loads(raw, f"--set {key_path}")
    except ConfigError as err:
        if not isinstance(err.__cause__, json.JSONDecodeError):
            raise  # JSON, but a duplicated key, NaN or too deep
        value = raw
    node: Any = config
    walked: list[Any] = []
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
                raise ConfigError(f"--set {key_path}: {format_path(walked)} is a list of {len(node)}; "
                                  f"'{key}' is not a valid index")
            key = int(key)
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {key_path}: {format_path(walked)} is {type(node).__name__} "
                              f"{node!r}, not an object, so it has no key '{key}'")
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]
        walked.append(key)
    return created


def deep_merge(base: dict, update: Mapping) -> dict:
    """``base`` with ``update`` merged in recursively (objects merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_json(path: str | Path) -> dict:
    """Read a JSON config (a JSON object); syntax errors name the file, line and column, and duplicated keys,
    NaN/Infinity and nesting deeper than ``safe_json.MAX_DEPTH`` are refused (see utils/safe_json.py)."""
    if not os.path.lexists(path):
        close = close_config_files(path)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"config file {path} does not exist{hint}")
    config = safe_json.load(path, what="config file")
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config must be a JSON object {{\"name\": ..., \"arch\": ..., ...}}, got a JSON "
                          f"{_json_type(config)}")
    return config


CONFIGS = Path(__file__).resolve().parent / "configs"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (as a user would type it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def close_config_files(path: str | Path, n: int = 3) -> list[str]:
    """JSON files whose names are close to the missing ``path``'s, in its directory or under configs/, best first
    (a file in the same directory counts as a little closer; the same name elsewhere under configs/ beats both)."""
    path = Path(path)
    scored: dict[str, float] = {}
    for files, show, bonus in ((path.parent.glob("*.json"), str, 0.15), (CONFIGS.rglob("*.json"), _shown, 0.0)):
        try:
            files = sorted(files)
        except OSError:  # an unreadable directory: nothing to suggest from it
            continue
        for f in files:
            score = difflib.SequenceMatcher(None, path.stem, f.stem).ratio() + bonus
            if score >= 0.6:
                scored.setdefault(show(f), score)
    if not scored:
        return []
    best = max(scored.values())
    ranked = sorted(scored, key=lambda shown: -scored[shown])
    return [shown for shown in ranked if scored[shown] >= best - 0.1][:n]


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _rescale_for_cli(config: dict, epochs: int, args: argparse.Namespace, source: str) -> None:
    """``--epochs N``: rescale ``config``'s schedule in place and print what changed (rank 0)."""
    if any(a.split("=", 1)[0].strip() == "trainer.args.epochs" for a in args.overrides):
        raise ConfigError(f"--epochs {epochs} and --set trainer.args.epochs both set the epoch count; give only "
                          "--epochs (it rescales the schedule with it)")
    plugins = config.get("plugins") or []
    if isinstance(plugins, list):  # a plugin trainer or scheduler declares its own epoch arguments
        import_plugins([p for p in plugins + list(args.plugins) if isinstance(p, str)])
    try:
        changes = rescale_epochs(config, epochs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    if launch_rank() == 0:
        print(format_changes(epochs, changes))


def _override_hint(message: str, config: dict, created: list[tuple[str, tuple]]) -> str:
    """For a refused config: the key paths a ``--set`` that added a key the error names may have meant (paths of
    ``config`` outside what the ``--set`` added)."""
    for key_path, path in created:
        named = format_path(path) in message or (  # or the parent names the new key: unknown key(s) ['argz']
            len(path) > 1 and f"{format_path(path[:-1])}:" in message and f"'{path[-1]}'" in message)
        if not named:
            continue
        close = [p for p in suggest_paths(config, key_path, exclude=".".join(map(str, path))) if p not in message]
        if close:
            return f" (--set {key_path} added a key the config did not have; did you mean {' or '.join(close)}?)"
    return ""


class ConfigParser:
    """A validated config plus where its run lives.

    Args:
        config: the config dict (copied; never mutated).
        source: where it came from (a file path), prefixed to error messages.
        resume: checkpoint to continue from. The run lives where the checkpoint is: a checkpoint in
            ``<root>/models/<name>/<run>/`` continues in that directory and logs to ``<root>/log/<name>/<run>/``
            (whatever ``save_dir`` the embedded config names); elsewhere, logs go next to the checkpoint.
        run_id: run directory name; default: a timestamp. With ``resume``: branch, i.e. continue from the
            checkpoint in a new run directory ``<root>/models/<name>/<run_id>/`` beside the checkpoint's.
        resume_epoch: the epoch of ``resume`` when the caller has read it (else read when needed).
        evaluation: the config evaluates a checkpoint (test.py, test_all.py) rather than trains: a trainer whose
            evaluation needs no training data then builds none (see ``BaseTrainer.evaluation_needs_training_data``).
    """

    def __init__(self, config: dict, source: str = "<config>", resume: str | Path | None = None,
                 run_id: str | None = None, resume_epoch: int | None = None, evaluation: bool = False):
        self.source = source
        self.evaluation = evaluation
        safe_json.check_depth(config, source)  # before copying: a deep copy of 100,000 levels overflows the stack
        self._config = copy.deepcopy(config)
        try:
            validate_config(self._config, schedule=resume is None)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        self.resume = Path(resume) if resume is not None else None
        self.resume_epoch = resume_epoch
        if run_id is not None and not valid_name(run_id):
            raise ConfigError(f"--run-id {run_id!r}: use letters, digits, '_', '-' and '.' (it becomes a directory "
                              "name), e.g. --run-id lr0.1_seed2")
        self._explicit_run_id = run_id is not None
        self._lock: RunLock | None = None
        if self.resume is not None:
            checkpoint_dir = Path(os.path.abspath(self.resume)).parent
            self.run_id = run_id or checkpoint_dir.name
            if checkpoint_dir.parent.parent.name == "models":  # <root>/models/<name>/<run>/<checkpoint>
                root, name = checkpoint_dir.parents[2], checkpoint_dir.parent.name
                self.model_dir = root / "models" / name / self.run_id
                self.log_dir = root / "log" / name / self.run_id
            else:  # a checkpoint moved out of its run: the run continues (and logs) where it lies
                self.model_dir = checkpoint_dir.parent / self.run_id if run_id else checkpoint_dir
                self.log_dir = self.model_dir
        else:
            self.run_id = run_id or datetime.now().strftime("%m%d_%H%M%S")
            self.model_dir = self.save_root / "models" / self.name / self.run_id
            self.log_dir = self.save_root / "log" / self.name / self.run_id

    @property
    def branches(self) -> bool:
        """Resuming into a new run directory (``-r CKPT --run-id NEW``) rather than continuing the checkpoint's."""
        return self.resume is not None and self._explicit_run_id

    # --- construction from the command line -------------------------------------------------------
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, training: bool = True) -> argparse.ArgumentParser:
        """Add the options shared by train.py and the evaluation scripts to ``parser``."""
        parser.add_argument("-c", "--config", help="JSON config file")
        parser.add_argument("-r", "--resume", help="checkpoint (.pth) to resume from / evaluate")
        parser.add_argument("-d", "--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config value, e.g. --set optimizer.args.lr=0.05 (repeatable)")
        parser.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                            help="import MODULE before building (registers user plugins; repeatable)")
        parser.add_argument("--threads", type=int, metavar="N",
                            help="CPU threads for torch (recorded in the run's config as \"threads\"; default: "
                                 "the config's, else torch's). Results on CPU are reproducible for a given count")
        if training:
            parser.add_argument("--epochs", type=int, metavar="N",
                                help="train N epochs, rescaling milestones, warm-up and phase lengths "
                                     "proportionally (prints what it set)")
            parser.add_argument("--lr", type=float, help="shortcut for --set optimizer.args.lr=LR")
            parser.add_argument("--bs", type=int, help="shortcut for --set data_loader.args.batch_size=BS")
            parser.add_argument("--seed", type=int, help="shortcut for --set seed=SEED")
            parser.add_argument("--run-id", help="run directory name (default: a timestamp)")
            parser.add_argument("--init-from", help="checkpoint whose model weights start this new run")
        return parser

    @classmethod
    def from_args(cls, args: argparse.Namespace, evaluation: bool = False) -> ConfigParser:
        """Build from parsed command-line options (see :meth:`add_arguments`); ``evaluation`` as in the constructor."""
        if not args.config and not args.resume:
            raise ConfigError("give a config with -c CONFIG.json, or a checkpoint to resume with -r CKPT.pth")
        source = args.config or str(args.resume)
        resume_epoch = None
        if args.resume and getattr(args, "epochs", None) is not None:  # before reading the checkpoint
            raise ConfigError(f"--epochs {args.epochs}: a resumed run keeps its checkpoint's schedule (the scheduler "
                              "state holds its milestones); to train it to another epoch count use --set "
                              f"trainer.args.epochs={args.epochs}")
        if args.resume:
            from utils.checkpoint import load_checkpoint
            checkpoint = load_checkpoint(args.resume, require=("config",))
            config = checkpoint["config"]
            resume_epoch = checkpoint.get("epoch")
            named = list(args.plugins)
            if args.config:  # fine-tuning: the file's values win over the checkpoint's
                update = load_json(args.config)
                named += [p for p in update.get("plugins") or [] if isinstance(p, str)]
                checkpoint_plugins(config, named, args.resume)
                config = deep_merge(config, update)
                source = f"{args.resume} + {args.config}"
            else:
                checkpoint_plugins(config, named, args.resume)
        else:
            config = load_json(args.config)
        if not isinstance(config, dict):
            raise ConfigError(f"{source}: the config must be a JSON object")
        shortcuts = [("lr", "optimizer.args.lr"), ("bs", "data_loader.args.batch_size"), ("seed", "seed"),
                     ("init_from", "init_from")]
        for attr, key in shortcuts:
            value = getattr(args, attr, None)
            if value is not None:
                if key.startswith("optimizer") and "optimizer" not in config:
                    raise ConfigError(f'{source}: --lr given but the config has no "optimizer" section')
                apply_override(config, f"{key}={json.dumps(value)}")
        if args.device:
            apply_override(config, f"trainer.args.device={json.dumps(args.device)}")
        epochs = getattr(args, "epochs", None)
        if epochs is not None:
            _rescale_for_cli(config, epochs, args, source)
        created = []
        for assignment in args.overrides:
            path = apply_override(config, assignment)
            if path is not None:
                created.append((assignment.split("=", 1)[0].strip(), path))
        if args.plugins:
            config["plugins"] = list(config.get("plugins", [])) + [p for p in args.plugins
                                                                   if p not in config.get("plugins", [])]
        note = resolve_threads(config, getattr(args, "threads", None))
        try:
            parsed = cls(config, source=source, resume=args.resume, run_id=getattr(args, "run_id", None),
                         resume_epoch=resume_epoch, evaluation=evaluation)
        except ConfigError as err:
            raise ConfigError(f"{err}{_override_hint(str(err), config, created)}") from None
        if note and launch_rank() == 0:
            print(note)
        parsed.apply_threads()
        return parsed

    def apply_threads(self) -> None:
        """Make torch use the config's ``threads`` (see :func:`apply_threads`); without one, record torch's count."""
        if self._config.get("threads") is not None:
            apply_threads(self._config["threads"])
        else:
            import torch

            self._config["threads"] = torch.get_num_threads()

    # --- access -----------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """A deep copy of the validated config (safe to mutate)."""
        return copy.deepcopy(self._config)

    def __getitem__(self, key: str) -> Any:
        return self._config[key]

    def __contains__(self, key: str) -> bool:
        return key in self._config and self._config[key] is not None

    def get(self, key: str, default: Any = None) -> Any:
        value = self._config.get(key, default)
        return default if value is None else value

    @property
    def name(self) -> str:
        return self._config["name"]

    @property
    def seed(self) -> int:
        return self._config.get("seed", 0)

    @property
    def save_root(self) -> Path:
        return Path((self._config["trainer"].get("args") or {}).get("save_dir", "saved"))

    # --- building ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def located(self):
        """Prefix ConfigErrors raised inside with the config's source file."""
        try:
            yield
        except ConfigError as err:
            if str(err).startswith(f"{self.source}:"):
                raise
            raise ConfigError(f"{self.source}: {err}") from err

    def build(self, section: str, *, optional: Mapping[str, Any] | None = None, **runtime: Any) -> Any:
        """Build the component of ``section`` through its registry (see Registry.build)."""
        registry = COMPONENTS[section][0]
        with self.located():
            given = (self._config[section].get("args") or {}).get("num_classes")
            offered = (optional or {}).get("num_classes")
            if offered is not None and given is not None and given != offered:
                # a model with more outputs than the data has classes predicts classes that do not exist; fewer
                # fail only at the first batch with a label out of range
                raise ConfigError(f'{format_path((section, "args", "num_classes"))}: {given}, but the data loader has '
                                  f"{offered} classes; set it to {offered} or remove it (it defaults to the data's)")
            return registry.build(self._config[section], (section,), optional=optional, **runtime)

    def build_metrics(self, optional: Mapping[str, Any] | None = None) -> list:
        with self.located():
            return [METRICS.build(spec, ("metrics", i), optional=optional)
                    for i, spec in enumerate(self._config.get("metrics", []))]

    def build_data_loader(self, training: bool = True, device: Any = None, **overrides: Any):
        """The configured data loader; ``overrides`` replace config args (e.g. ``shuffle=False``).

        ``device`` is passed to loaders that take a ``device`` argument (those that keep their data
        on the training device and augment it there); the config may set it itself.
        """
        spec = copy.deepcopy(self._config["data_loader"])
        spec.setdefault("args", {})
        spec["args"] = {**(spec["args"] or {}), **overrides, "training": training}
        optional = {"device": device} if device is not None else {}
        with self.located():
            return DATA_LOADERS.build(spec, ("data_loader",), optional=optional)

    # --- run directories --------------------------------------------------------------------------
    def prepare_run_dirs(self) -> None:
        """Check, create and lock the run directory, create the log directory and write ``config.json`` (rank 0
        only). Every refusal comes before anything is written; the lock is held until :meth:`release_run_dir`
        (or the end of the process)."""
        from utils import dist
        if not dist.is_main_process():
            return
        self._check_run_dirs()  # before creating anything
        make_dirs(self.model_dir, "run directory")
        self._lock = RunLock(self.model_dir)
        self._lock.acquire()
        try:
            self._check_run_dirs()  # again, holding the lock: another process may have started in between
            make_dirs(self.log_dir, "log directory")
            atomic_write_text(self.model_dir / "config.json", json.dumps(self._config, indent=2) + "\n",
                              "run config")
        except BaseException:
            self.release_run_dir()
            raise

    def release_run_dir(self) -> None:
        """Give up the run directory's lock (the trainer's ``close`` calls this)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _check_run_dirs(self) -> None:
        for directory, what in ((self.model_dir, "run directory"), (self.log_dir, "log directory")):
            blocker = first_file_in_path(directory)
            if blocker is not None:
                raise StorageError(f"cannot use the {what} {directory}: {blocker} is a file, not a directory; move "
                                   "it away or choose another trainer.args.save_dir")
        if self.resume is None or self.branches:
            self._check_new_run_dir()
        else:
            self._check_resume_is_newest()

    def _check_new_run_dir(self) -> None:
        if not self.model_dir.exists() or not any(p.name != RunLock.FALLBACK for p in self.model_dir.iterdir()):
            return
        latest = self.model_dir / "latest.pth"
        if latest.exists():
            raise ConfigError(f"run directory {self.model_dir} already exists and is not empty; choose "
                              f"another --run-id, or continue that run with -r {latest}")
        # a run killed before its first epoch ended: there is nothing to resume from
        raise ConfigError(f"run directory {self.model_dir} already exists and is not empty but holds no "
                          "checkpoint (that run stopped before its first epoch ended, or is still in its first "
                          "epoch); choose another --run-id, or delete the directory to start that run again")

    def _check_resume_is_newest(self) -> None:
        """Continuing from anything but the run's newest state would overwrite newer checkpoints: refuse."""
        latest = self.model_dir / "latest.pth"
        if not latest.is_file() or os.path.samefile(latest, self.resume):
            return
        from utils.checkpoint import load_checkpoint
        newest = load_checkpoint(latest, require=("epoch",))["epoch"]
        mine = self.resume_epoch
        if mine is None:
            mine = load_checkpoint(self.resume, require=("epoch",))["epoch"]
        if newest > mine:
            raise ConfigError(f"{self.resume} is the state after epoch {mine}, but this run's {latest} is at epoch "
                              f"{newest}: continuing in {self.model_dir} would overwrite that newer state. Continue "
                              f"the run with -r {latest}, or branch from epoch {mine} into a new run directory with "
                              f"-r {self.resume} --run-id NEW_ID")


def iter_config_files(root: str | Path = "configs") -> Iterable[Path]:
    """Every JSON config under ``root``, sorted."""
    return sorted(Path(root).rglob("*.json"))
