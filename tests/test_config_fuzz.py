"""Config fuzzing: mutations of every shipped config end in a ConfigError naming the config path, or build.

Every file under configs/ is read, pointed at generated data (tests/fuzz_data.py: small CIFAR pickles, image
lists naming every class, NMR ladders, a few simulated ladders, a stand-in stage-1 checkpoint) and mutated once:
a key deleted, a value replaced by one of another JSON type, a number pushed out of range (negative, zero,
doubled, fractional, NaN, Infinity), a registered name replaced by an unknown or dangerous one ("os.system",
dotted paths), an unknown key added; and, read from a file as train.py -c does, a key duplicated in one object or
a value nested 100 to 100,000 lists deep (refused by the reader, naming the file), a number made huge (10**30,
2**64, 1e300: refused, or built without allocating it) and a string given a trailing newline. The mutated config
goes through ``ConfigParser`` and ``train.build_trainer`` (no training). Allowed outcomes:

* a ``ConfigError`` whose message names the mutated entry or the component holding it, in the framework's
  ``config["section"]["args"]["key"]`` notation;
* a ``DataError`` / ``CheckpointError`` when the mutation replaced a file path (``data_dir``, ``root``,
  ``init_from``, ...) by another string, naming that string literally;
* a trainer that builds.

Anything else (TypeError, KeyError, an assertion, a crash) fails, and so does any file or directory created in
the working directory, under ``save_dir`` or next to the data. The test-time configs (test_time_*.json) are
mutated and then merged over the training config they adapt, as test_training.py does.

The draws are derandomized so that CI sees the same mutations on every run (2 + 6 per config, and 3 size and
text mutations per config; ``FUZZ_SIZE_EXAMPLES=N`` draws more). For a deep
pass, ``FUZZ_EXAMPLES=300 python -m pytest tests/test_config_fuzz.py -k many`` draws 300 mutations of
every config (about an hour on 2 cores); to explore other draws, remove ``derandomize`` locally and add
``--hypothesis-seed N``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import resource
from pathlib import Path

import pytest
from fuzz_data import redirect, write_all
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test_training
import train
from parse_config import ConfigParser, iter_config_files, load_json
from utils.errors import CheckpointError, ConfigError, DataError, format_path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = list(iter_config_files(ROOT / "configs"))
# the training config each test-time config is merged over (test_training.py takes it from the checkpoint)
TEST_TIME_BASE = {
    "test_time_cifar100.json": "experts/cifar100_ir100_hyper.json",
    "test_time_imagenet_lt.json": "experts/imagenet_lt_resnext50_sade.json",
    "test_time_inat2018.json": "experts/inat2018_resnet50_hyper.json",
    "test_time_places_lt.json": "experts/places_lt_resnet152_sade.json",
    "test_time_quickstart_digits.json": "experts/quickstart_digits_hyper.json",
}
# keys whose string value is a file or directory: another string there is looked up (DataError/CheckpointError)
PATH_KEYS = {"data_dir", "root", "test_dir", "train_list", "val_list", "test_list", "init_from"}

DANGEROUS_NAMES = ["os.system", "subprocess.Popen", "builtins.eval", "__import__", "utils.registry.Registry",
                   "torch.optim.SGD", "model.resnet_cifar.ResNet32", "ResNet32()", ""]
ODD_STRINGS = ["$HOME/x", "~/x", "`touch marker`", "$(touch marker)", "../../etc", " ", "nan", "1e3", "None"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000),
                    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
                    st.sampled_from([math.nan, math.inf, -math.inf]),
                    st.text(max_size=8), st.sampled_from(DANGEROUS_NAMES + ODD_STRINGS))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=4)


def walk(value, path=()):
    """(path, value) of every node below the root, depth first."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield path + (key,), child
            yield from walk(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield path + (index,), child
            yield from walk(child, path + (index,))


def get(config, path):
    for key in path:
        config = config[key]
    return config


def number_variants(value):
    """Out-of-range and wrong-kind variants of a number from a config."""
    variants = [0, -1, -value, value + 1, 2 * value, 1e-9, math.nan, math.inf, -math.inf]
    if isinstance(value, int):
        variants += [value + 0.5, float(value)]  # a fraction where an integer belongs; 10.0 for 10
    return variants


@st.composite
def mutations(draw, config: dict):
    """``(description, path, value, mutated config)``; value is the new value (None for a deletion)."""
    nodes = list(walk(config))
    numbers = [(p, v) for p, v in nodes if isinstance(v, (int, float)) and not isinstance(v, bool)]
    types = [(p, v) for p, v in nodes if p[-1] == "type"]
    dicts = [((), config)] + [(p, v) for p, v in nodes if isinstance(v, dict)]
    kinds = ["delete", "replace", "extra_key"] + ["number"] * bool(numbers) + ["type_name"] * bool(types)
    kind = draw(st.sampled_from(kinds))
    mutated = copy.deepcopy(config)
    if kind == "extra_key":
        path, _ = draw(st.sampled_from(dicts))
        key = draw(st.sampled_from(["extra", "lr_", "nmu_classes", "type_", "__class__", "plugins"]))
        value = draw(JSON_VALUES)
        get(mutated, path)[key] = value
        return f"add key {key!r} = {value!r} at {format_path(path)}", path + (key,), value, mutated
    if kind == "delete":
        path, _ = draw(st.sampled_from(nodes))
        del get(mutated, path[:-1])[path[-1]]
        return f"delete {format_path(path)}", path, None, mutated
    if kind == "number":
        path, old = draw(st.sampled_from(numbers))
        value = draw(st.sampled_from(number_variants(old)))
    elif kind == "type_name":
        path, old = draw(st.sampled_from(types))
        value = draw(st.one_of(st.sampled_from(DANGEROUS_NAMES), st.text(max_size=10),
                               st.just(str(old).lower()), st.just(str(old) + "s"), JSON_VALUES))
    else:
        path, old = draw(st.sampled_from(nodes))
        value = draw(JSON_VALUES.filter(lambda v: type(v) is not type(old)))  # noqa: B023 (drawn right here)
    get(mutated, path[:-1])[path[-1]] = value
    return f"set {format_path(path)} = {value!r} (was {old!r})", path, value, mutated


# --- building -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_data")
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    return {"data": write_all(root / "data"), "checkpoints": checkpoints, "root": root}


def shipped(path: Path, generated: dict) -> tuple[dict, dict | None]:
    """``(config to mutate, training config it merges over or None)``, both pointed at the generated data."""
    config = load_json(path)
    if path.name.startswith("test_time_"):
        base = load_json(ROOT / "configs" / TEST_TIME_BASE[path.name])
        return config, redirect(base, generated["data"], generated["checkpoints"])
    return redirect(config, generated["data"], generated["checkpoints"]), None


def build(config: dict, base: dict | None, source: str):
    """ConfigParser + build_trainer as train.py (or test_training.py for a test-time config) does; trains nothing."""
    if base is not None:
        if "trainer" not in config:  # test_training.main checks this before merging (see test_test_time_*)
            raise ConfigError(f'{source}: config["trainer"]: missing; a test-time config needs a "trainer" section '
                              "naming TestTimeTrainer")
        config = test_training.merged_config(copy.deepcopy(config), copy.deepcopy(base))
    return train.build_trainer(ConfigParser(config, source=source))


def tree(*roots: Path) -> set[str]:
    """Every path below ``roots`` (files and directories)."""
    found = set()
    for root in roots:
        for directory, dirs, files in os.walk(root):
            found.update(os.path.join(directory, name) for name in dirs + files)
    return found


def check_outcome(description: str, path: tuple, value, config: dict, base: dict | None, source: str,
                  watched: tuple[Path, ...], original: dict | None = None) -> str:
    """Build ``config``, ``original`` mutated at ``path``; return "built" or the error type, failing on anything
    not allowed (see the module docstring)."""
    before = tree(*watched)
    try:
        build(config, base, source)
        outcome = "built"
    except ConfigError as err:
        message = str(err)
        named = [format_path(path[:k]) for k in range(len(path), 0, -1)]
        # the entry itself, an entry inside the new value (a NaN in a list), or the component holding it
        assert named[0] in message or any(p + ":" in message or p + " (" in message for p in named), (
            f"{description}: the ConfigError does not name {named[0]} or a component above it:\n{message}")
        assert message.startswith(source), f"{description}: the ConfigError does not name the file:\n{message}"
        outcome = "ConfigError"
    except CheckpointError as err:
        # a changed model no longer fits the stage-1 checkpoint that init_from names: the checkpoint is refused
        changed_model = path[0] == "arch" and config.get("init_from") and str(err).startswith("init_from")
        if not changed_model:
            assert path[-1] == "init_from" and isinstance(value, str), (
                f"{description}: CheckpointError for a mutation that is not init_from:\n{err}")
            assert value.strip() in str(err), f"{description}: the error does not name {value!r}:\n{err}"
        outcome = "CheckpointError"
    except DataError as err:
        if value is None:  # a deletion: the loader's default path is used, if the deletion removed a path
            removed = get(original, path)
            assert path[-1] in PATH_KEYS or (isinstance(removed, dict) and any(
                p[-1] in PATH_KEYS for p, _ in walk(removed))), (
                f"{description}: DataError for a deletion that removed no file path:\n{err}")
        else:
            assert path[-1] in PATH_KEYS and isinstance(value, str), (
                f"{description}: DataError for a mutation that is not a file path:\n{err}")
            assert value.strip() in str(err), f"{description}: the error does not name the path {value!r}:\n{err}"
        outcome = "DataError"
    created = tree(*watched) - before
    assert not created, f"{description}: files created by a build that {outcome}: {sorted(created)[:5]}"
    return outcome


def fuzz(path: Path, generated: dict, tmp_path: Path, monkeypatch, data) -> None:
    monkeypatch.chdir(tmp_path)  # save_dir "saved" and any relative path land here
    config, base = shipped(path, generated)
    description, key_path, value, mutated = data.draw(mutations(config), label="mutation")
    check_outcome(description, key_path, value, mutated, base, str(path), (tmp_path, generated["root"]), config)


IDS = [str(p.relative_to(ROOT / "configs")) for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_every_shipped_config_builds_here_unmutated(path, generated, tmp_path, monkeypatch):
    """The baseline the mutations start from: each config, on the generated data, builds and writes nothing."""
    monkeypatch.chdir(tmp_path)
    config, base = shipped(path, generated)
    assert check_outcome("unmutated", ("name",), None, config, base, str(path), (tmp_path, generated["root"])) \
        == "built"


def over_every_config(examples: int):
    """The decorators of a fuzz test: one test per shipped config, ``examples`` reproducible hypothesis draws each
    (derandomized: a failure reruns the same mutations)."""
    def decorate(test):
        test = given(data=st.data())(test)
        test = settings(max_examples=examples, deadline=None, derandomize=True,
                        suppress_health_check=[HealthCheck.function_scoped_fixture])(test)
        return pytest.mark.parametrize("path", CONFIGS, ids=IDS)(test)
    return decorate


@over_every_config(2)
def test_mutated_config_fails_cleanly_or_builds(path, generated, tmp_path, monkeypatch, data):
    fuzz(path, generated, tmp_path, monkeypatch, data)


@pytest.mark.slow
@over_every_config(int(os.environ.get("FUZZ_EXAMPLES", "6")))
def test_mutated_config_fails_cleanly_or_builds_many(path, generated, tmp_path, monkeypatch, data):
    fuzz(path, generated, tmp_path, monkeypatch, data)


# --- values that must be refused (a build that accepts them would train nonsense or fail later) -------------
BAD_VALUES = [  # (path, value); applied to every config that has the path
    (("optimizer", "args", "lr"), -0.1),
    (("optimizer", "args", "lr"), math.nan),
    (("trainer", "args", "epochs"), 0),
    (("trainer", "args", "epochs"), 2.5),
    (("data_loader", "args", "imb_factor"), 1.5),
    (("data_loader", "args", "imb_factor"), 0),
    (("data_loader", "args", "imb_factor"), -0.01),
    (("data_loader", "args", "imb_factor"), 1e-9),  # in range, but the tail classes would keep no image
    (("data_loader", "args", "batch_size"), 0),
    (("arch", "args", "num_experts"), 0),
    (("arch", "args", "num_classes"), 1),
    (("arch", "args", "num_classes"), -1),
    (("arch", "args", "in_channels"), -1),
    (("arch", "args", "width"), 0),
    (("arch", "args", "hypernet"), {"hiden": 8}),
    (("arch", "args", "hypernet"), {"hidden": "128"}),
    (("lr_scheduler", "args", "warmup_epochs"), -1),
    (("lr_scheduler", "args", "milestones"), [160, [180]]),
    (("metrics", 2, "args", "ranges"), [[0, 3]]),
    (("metrics", 2, "args", "ranges"), [[0, 3], [3, "7"], [7, 10]]),
    (("loss", "args", "weights", "rec"), -1.0),
    (("data_loader", "args", "simulation", "length"), "2048"),
    (("data_loader", "args", "simulation", "snr"), [5.0]),
    (("trainer", "args", "min_weight"), 1.5),
    (("trainer", "args", "snr_ratio"), 1.0),
]
# values the NMR trainer's loss schedule cannot use
NMR_SCHEDULE_VALUES = {("trainer", "args", "curv_final"): -0.05, ("trainer", "args", "peak_weight_final"): 0.5}


def applicable(config: dict, path: tuple) -> bool:
    try:
        get(config, path)
        return True
    except (KeyError, IndexError, TypeError):
        return False


def cost(path: Path) -> tuple:
    """Cheap builds first: digits, CIFAR and simulated NMR before ImageNet-size models."""
    name = str(path)
    return (0 if "digits" in name else 1 if "cifar" in name else 2 if "nmr" in name else 3, name)


def bad_cases() -> list:
    """Each bad value on the cheapest config of every distinct component type that has the entry (each
    constructor that takes it), plus the test-time configs for the sections they hold."""
    cases, seen = [], set()
    for path in sorted(CONFIGS, key=cost):
        config = load_json(path)
        for key_path, value in BAD_VALUES:
            if not applicable(config, key_path) or "type" not in get(config, key_path[:2 if key_path[0] == "metrics"
                                                                              else 1]):
                continue
            component = get(config, key_path[:2] if key_path[0] == "metrics" else key_path[:1])["type"]
            if key_path[0] == "metrics" and component != "shot_accuracy":
                continue
            key = (key_path, repr(value), component, path.name.startswith("test_time_"))
            if key not in seen:
                seen.add(key)
                cases.append(pytest.param(path, key_path, value, id=f"{path.relative_to(ROOT / 'configs')}:"
                                                                   f"{format_path(key_path)}={value!r}"))
    return cases


BAD_CASES = bad_cases()


@pytest.mark.parametrize("path, key_path, value", BAD_CASES)
def test_out_of_range_values_are_config_errors_naming_the_entry(path, key_path, value, generated, tmp_path,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, base = shipped(path, generated)
    get(config, key_path[:-1])[key_path[-1]] = value
    before = tree(tmp_path, generated["root"])
    with pytest.raises(ConfigError) as info:
        build(config, base, str(path))
    message = str(info.value)
    named = [format_path(key_path[:k]) for k in range(len(key_path), 0, -1)]
    assert any(p in message for p in named), message
    assert tree(tmp_path, generated["root"]) == before


@pytest.mark.parametrize("key_path, value", list(NMR_SCHEDULE_VALUES.items()))
def test_nmr_trainer_loss_schedule_values_are_checked(key_path, value, generated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, _ = shipped(ROOT / "configs/nmr/quickstart_simulated.json", generated)
    get(config, key_path[:-1])[key_path[-1]] = value
    with pytest.raises(ConfigError, match=r'config\["trainer"\]'):
        build(config, None, "quickstart_simulated.json")


@pytest.mark.parametrize("name, section", [("quickstart_digits_lt.json", "loss"),
                                           ("experts/quickstart_digits_sade.json", "optimizer"),
                                           ("experts/test_time_quickstart_digits.json", "optimizer")])
def test_a_section_the_trainer_needs_is_named_when_missing(name, section, generated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, base = shipped(ROOT / "configs" / name, generated)
    if section in config:
        del config[section]
    else:  # a test-time config without its optimizer takes none from the training config it is merged over
        del base[section]
    with pytest.raises(ConfigError, match=re.escape(format_path((section,)))):
        build(config, base, name)


def test_model_and_data_must_agree_on_the_number_of_classes(generated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, _ = shipped(ROOT / "configs/baselines/cifar100_ir10_softmax.json", generated)
    config["arch"]["args"]["num_classes"] = 101
    with pytest.raises(ConfigError, match=re.escape('config["arch"]["args"]["num_classes"]: 101, but the data loader '
                                                    "has 100 classes; set it to 100")):
        build(config, None, "c.json")


@pytest.mark.parametrize("preference, message", [([0.5, 0.5], "needs 3 values"),
                                                 ([-1.0, 1.0, 1.0], "non-negative"),
                                                 ([0.0, 0.0, 0.0], "not all zero")])
def test_preference_of_wrong_length_or_sign_is_a_config_error(preference, message, generated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, _ = shipped(ROOT / "configs/experts/quickstart_digits_hyper.json", generated)
    trainer = build(config, None, "hyper.json")
    with pytest.raises(ConfigError, match=f"--preference.*{message}"):
        trainer.configure_inference(preference=preference)
    with pytest.raises(ConfigError, match=f"--weights.*{message}"):
        trainer.configure_inference(weights=preference)


def test_test_time_config_whose_trainer_is_not_an_object_is_a_config_error(generated, tmp_path, monkeypatch):
    """test_training.py merges the test-time config before ConfigParser sees it."""
    monkeypatch.chdir(tmp_path)
    test_time = load_json(ROOT / "configs/experts/test_time_quickstart_digits.json")
    test_time["trainer"] = True
    _, base = shipped(ROOT / "configs/experts/test_time_quickstart_digits.json", generated)
    merged = test_training.merged_config(test_time, base)
    with pytest.raises(ConfigError, match=re.escape('config["trainer"]')):
        ConfigParser(merged)


@pytest.mark.parametrize("name", sorted(TEST_TIME_BASE))
def test_test_time_trainer_args_null_means_no_arguments(name, generated, tmp_path, monkeypatch):
    """``"args": null`` is an empty argument list everywhere, the test-time trainer merged by test_training.py
    included (found by the deep fuzz pass: the merge used to fail with an AttributeError)."""
    monkeypatch.chdir(tmp_path)
    config, base = shipped(ROOT / "configs/experts" / name, generated)
    config["trainer"]["args"] = None
    assert check_outcome("trainer args null", ("trainer", "args"), None, config, base, name,
                         (tmp_path, generated["root"])) == "built"


# --- text-level and size mutations: duplicate keys, trailing newlines, huge values, deep nesting -----------------
HUGE_NUMBERS = [10**12, 10**30, 2**64, 1e38, 1e300, -(10**30)]
SENTINEL = "__fuzz_sentinel__"


def render(config: dict, path: tuple, replacement: str) -> str:
    """``config`` as JSON text with the node at ``path`` written as the raw text ``replacement``."""
    marked = copy.deepcopy(config)
    if path:
        get(marked, path[:-1])[path[-1]] = SENTINEL
        return json.dumps(marked, indent=2).replace(json.dumps(SENTINEL), replacement, 1)
    return replacement


@st.composite
def size_mutations(draw, config: dict):
    """``(kind, description, path, value, mutated config or None, file text or None)``."""
    nodes = list(walk(config))
    numbers = [(p, v) for p, v in nodes if isinstance(v, (int, float)) and not isinstance(v, bool)]
    strings = [(p, v) for p, v in nodes if isinstance(v, str)]
    dicts = [((), config)] + [(p, v) for p, v in nodes if isinstance(v, dict) and v]
    kinds = ["duplicate_key", "deep_nesting"] + ["huge_value"] * bool(numbers) + ["trailing_newline"] * bool(strings)
    kind = draw(st.sampled_from(kinds))
    if kind == "duplicate_key":
        path, node = draw(st.sampled_from(dicts))
        key = draw(st.sampled_from(sorted(node)))
        value = draw(st.sampled_from([node[key], None, 0, 10, "x", [], {}]))  # the same value, or another one
        items = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in node.items()] + [f"{json.dumps(key)}: "
                                                                               f"{json.dumps(value)}"]
        text = render(config, path, "{" + ", ".join(items) + "}")
        return kind, f"duplicate key {key!r} in {format_path(path)}", path + (key,), value, None, text
    if kind == "deep_nesting":
        path, node = draw(st.sampled_from(nodes))
        depth = draw(st.sampled_from([100, 10_000, 100_000]))
        text = render(config, path, "[" * depth + json.dumps(node) + "]" * depth)
        return kind, f"{format_path(path)} nested {depth} lists deep", path, node, None, text
    mutated = copy.deepcopy(config)
    if kind == "huge_value":
        path, old = draw(st.sampled_from(numbers))
        value = draw(st.sampled_from(HUGE_NUMBERS))
    else:
        path, old = draw(st.sampled_from(strings))
        value = old + draw(st.sampled_from(["\n", "\r\n", " \n"]))
    get(mutated, path[:-1])[path[-1]] = value
    return kind, f"set {format_path(path)} = {value!r} (was {old!r})", path, value, mutated, None


@contextlib.contextmanager
def bounded_memory(extra: int = 4 * 2**30):
    """At most ``extra`` bytes of address space more than now: a value that asks for terabytes fails fast here
    instead of taking the machine down (a build that needs it is the bug the test reports)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def fuzz_sizes(path: Path, generated: dict, tmp_path: Path, monkeypatch, data) -> None:
    monkeypatch.chdir(tmp_path)
    config, base = shipped(path, generated)
    kind, description, key_path, value, mutated, text = data.draw(size_mutations(config), label="mutation")
    if text is not None:  # read from a file, as train.py -c does: refused by the reader, naming the file
        target = tmp_path / path.name
        target.write_text(text)
        before = tree(tmp_path, generated["root"])
        with pytest.raises(ConfigError) as info:
            load_json(target)
        message = str(info.value)
        assert message.startswith(str(target)), f"{description}: the error does not name the file:\n{message}"
        expected = f"the key {key_path[-1]!r} appears twice" if kind == "duplicate_key" else "levels deep"
        assert expected in message, f"{description}: {message}"
        target.unlink()
        assert tree(tmp_path, generated["root"]) == before - {str(target)}
        return
    with bounded_memory():
        outcome = check_outcome(description, key_path, value, mutated, base, str(path), (tmp_path, generated["root"]),
                                config)
    if kind == "trailing_newline" and key_path[-1] in ("name", "type"):
        assert outcome == "ConfigError", f"{description}: accepted"


@over_every_config(int(os.environ.get("FUZZ_SIZE_EXAMPLES", "3")))
def test_size_and_text_mutations_fail_cleanly_or_build(path, generated, tmp_path, monkeypatch, data):
    fuzz_sizes(path, generated, tmp_path, monkeypatch, data)
