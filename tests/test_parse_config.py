"""ConfigParser: validation, overrides, resume merging, no disk writes before prepare_run_dirs."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from parse_config import ConfigParser, apply_override, deep_merge, load_json
from utils.errors import ConfigError, format_path
from utils.registry import MODELS


def parse(argv):
    parser = argparse.ArgumentParser()
    ConfigParser.add_arguments(parser)
    return ConfigParser.from_args(parser.parse_args(argv))


def write(tmp_path, config, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def test_valid_config_builds_nothing_on_disk(tiny_config, tmp_path):
    config = ConfigParser(tiny_config, source="c.json", run_id="r1")
    assert config.model_dir == tmp_path / "saved" / "models" / "tiny" / "r1"
    assert config.log_dir == tmp_path / "saved" / "log" / "tiny" / "r1"
    assert not (tmp_path / "saved").exists()
    config.prepare_run_dirs()
    assert json.loads((config.model_dir / "config.json").read_text()) == tiny_config
    assert config.log_dir.is_dir()


def test_unknown_type_names_path_close_match_and_list(tiny_config):
    tiny_config["arch"]["type"] = "ResNet23"
    with pytest.raises(ConfigError, match=re.escape(
            "c.json: config[\"arch\"][\"type\"]: unknown model 'ResNet23' in registry MODELS. "
            "Did you mean 'ResNet32'") + ".*" + re.escape(f"Registered in MODELS: {', '.join(MODELS.names())}.")):
        ConfigParser(tiny_config, source="c.json")


def test_misspelled_arg_names_path_close_match_and_valid_args(tiny_config):
    tiny_config["arch"]["args"]["num_clases"] = 10
    with pytest.raises(ConfigError, match=re.escape(
            "config[\"arch\"][\"args\"][\"num_clases\"]: ResNet32 has no argument 'num_clases'. "
            "Did you mean 'num_classes'") + r".*Valid arguments: num_classes, in_channels, width"):
        ConfigParser(tiny_config, source="c.json")


def test_misspelled_trainer_arg_is_checked_against_base_trainer(tiny_config):
    tiny_config["trainer"]["args"]["epoch"] = 3
    with pytest.raises(ConfigError, match=re.escape("config[\"trainer\"][\"args\"][\"epoch\"]: ClassifierTrainer "
                                                    "has no argument 'epoch'. Did you mean 'epochs'")):
        ConfigParser(tiny_config)


@pytest.mark.parametrize("path, value, expected", [
    (("trainer", "args", "epochs"), 1.5, "expects an integer"),
    (("trainer", "args", "amp"), "fp32", "expects one of 'auto', 'bf16', 'fp16', 'off'"),
    (("data_loader", "args", "imb_factor"), "0.1", "expects a number"),
    (("trainer", "args", "tensorboard"), 1, "expects true or false"),
])
def test_wrong_json_types_are_rejected(tiny_config, path, value, expected):
    node = tiny_config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=re.escape(expected)):
        ConfigParser(tiny_config)


def test_unknown_top_level_key_is_rejected(tiny_config):
    tiny_config["epochs"] = 3
    with pytest.raises(ConfigError, match=re.escape('config["epochs"]: unknown top-level key')):
        ConfigParser(tiny_config)


@pytest.mark.parametrize("key", ["name", "arch", "data_loader", "trainer"])
def test_required_sections(tiny_config, key):
    del tiny_config[key]
    with pytest.raises(ConfigError, match=re.escape(f'config["{key}"]: missing')):
        ConfigParser(tiny_config)


@pytest.mark.parametrize("name", ["", "../escape", "a/b", 3])
def test_bad_run_names(tiny_config, name):
    tiny_config["name"] = name
    with pytest.raises(ConfigError, match=re.escape('config["name"]')):
        ConfigParser(tiny_config)


def test_metric_entries_are_validated(tiny_config):
    tiny_config["metrics"].append({"type": "acuracy", "args": {}})
    with pytest.raises(ConfigError, match=re.escape("config[\"metrics\"][4][\"type\"]: unknown metric 'acuracy'")):
        ConfigParser(tiny_config)


def test_overrides_parse_json_else_string():
    config = {"a": {"b": 1}, "l": [1, 2]}
    apply_override(config, "a.b=3")
    apply_override(config, "a.c=hello")
    apply_override(config, 'a.d={"x": [1, 2]}')
    apply_override(config, "l.1=5")
    apply_override(config, "a.e=true")
    assert config == {"a": {"b": 3, "c": "hello", "d": {"x": [1, 2]}, "e": True}, "l": [1, 5]}
    with pytest.raises(ConfigError, match="not a valid index"):
        apply_override(config, "l.7=1")
    with pytest.raises(ConfigError, match=re.escape('config["a"]["b"] is int 3, not an object')):
        apply_override(config, "a.b.c=1")
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        apply_override(config, "novalue")


def test_cli_shortcuts_and_set(tiny_config, tmp_path):
    path = write(tmp_path, tiny_config)
    config = parse(["-c", str(path), "--lr", "0.3", "--bs", "16", "--seed", "7", "-d", "cpu",
                    "--set", "trainer.args.epochs=5", "--run-id", "abc"])
    assert config["optimizer"]["args"]["lr"] == 0.3
    assert config["data_loader"]["args"]["batch_size"] == 16
    assert config.seed == 7
    assert config["trainer"]["args"]["device"] == "cpu"
    assert config["trainer"]["args"]["epochs"] == 5
    assert config.run_id == "abc"


def test_set_can_replace_a_whole_section(tiny_config, tmp_path):
    path = write(tmp_path, tiny_config)
    config = parse(["-c", str(path), "--set", 'loss={"type": "CrossEntropy", "args": {"label_smoothing": 0.1}}'])
    assert config["loss"]["args"] == {"label_smoothing": 0.1}


def test_json_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "name": "x",\n  "arch": {,}\n}')
    with pytest.raises(ConfigError, match=re.escape(f"{path}, line 3, column")):
        load_json(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse(["-c", str(tmp_path / "nope.json")])


def test_existing_run_dir_is_not_overwritten(tiny_config):
    ConfigParser(tiny_config, run_id="same").prepare_run_dirs()
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        ConfigParser(tiny_config, run_id="same").prepare_run_dirs()


def test_deep_merge_for_fine_tuning():
    base = {"a": {"b": 1, "c": 2}, "l": [1]}
    assert deep_merge(base, {"a": {"c": 3}, "l": [2]}) == {"a": {"b": 1, "c": 3}, "l": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "l": [1]}


def test_plugin_that_does_not_exist(tiny_config):
    tiny_config["plugins"] = ["no_such_plugin_module_xyz"]
    with pytest.raises(ConfigError, match=re.escape("config[\"plugins\"][0]: cannot import plugin "
                                                    "'no_such_plugin_module_xyz'")):
        ConfigParser(tiny_config)


def test_plugins_must_be_module_names_not_paths(tiny_config):
    tiny_config["plugins"] = ["/tmp/evil.py"]
    with pytest.raises(ConfigError, match="is not a Python module name"):
        ConfigParser(tiny_config)


# --- names, duplicate keys, nesting -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny\n", "tiny\r\n", "\ntiny", "ti\nny"])
def test_names_and_run_ids_with_a_newline_are_refused(tiny_config, name):
    """``$`` also matches before a final newline: names are matched whole."""
    with pytest.raises(ConfigError, match=re.escape('config["name"]: must be a non-empty name')):
        ConfigParser({**tiny_config, "name": name})
    with pytest.raises(ConfigError, match=re.escape(f"--run-id {name!r}: use letters")):
        ConfigParser(tiny_config, run_id=name)


@pytest.mark.parametrize("text, key", [
    ('{"name": "a", "name": "b"}', "name"),
    ('{"name": "a", "optimizer": {"type": "SGD", "args": {"lr": 0.1, "lr": 10}}}', "lr"),
    ('{"metrics": [{"type": "accuracy", "type": "top5"}]}', "type"),
])
def test_duplicate_json_keys_are_refused_naming_key_and_file(tmp_path, text, key):
    path = tmp_path / "dup.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: the key '{key}' appears twice"):
        load_json(path)
    with pytest.raises(ConfigError, match=f"--set optimizer: the key '{key}' appears twice"):
        apply_override({}, f"optimizer={text}")


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deeply_nested_json_is_refused_without_recursion_error(tmp_path, tiny_config, depth):
    path = tmp_path / "deep.json"
    path.write_text('{"name": "x", "doc": ' + "[" * depth + "]" * depth + "}")
    # the outer object is level 1, so the 64th "[" (column 21 + 64) is level 65
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}, line 1, column 85: nested more than 64 levels"):
        load_json(path)
    nested: list = []
    for _ in range(depth):
        nested = [nested]
    with pytest.raises(ConfigError, match=r"^c.json: nested more than 64 levels deep"):
        ConfigParser({**tiny_config, "doc": nested}, source="c.json")  # e.g. a config stored in a checkpoint


def test_safe_json_api_for_manifests(tmp_path):
    """The helper data readers call for manifest.json: their own error type, the file named."""
    from utils import safe_json
    from utils.errors import DataError

    path = tmp_path / "manifest.json"
    path.write_text('{"a": 1, "a": 2}')
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: the key 'a' appears twice"):
        safe_json.load(path, error=DataError, what="manifest")
    path.write_text('{"a": NaN}')
    with pytest.raises(DataError, match="NaN is not valid JSON"):
        safe_json.load(path, error=DataError, what="manifest")
    with pytest.raises(DataError, match="manifest .* does not exist"):
        safe_json.load(tmp_path / "missing.json", error=DataError, what="manifest")
    assert safe_json.loads('{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}


# --- values out of range ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, value, expected", [
    (("optimizer", "args", "lr"), 1e300, "1e+300 is out of range; the learning rate must be in [0, 100]"),
    (("optimizer", "args", "lr"), 1e38, "is out of range; the learning rate"),
    (("optimizer", "args", "momentum"), 1.0, "1.0 is out of range; the momentum must be in [0, 1)"),
    (("optimizer", "args", "momentum"), -0.5, "the momentum must be in [0, 1)"),
    (("data_loader", "args", "batch_size"), 10**30, "is out of range; the batch size must be in [1, 1.04858e+06]"),
    (("seed",), 2**64, "must be an integer in [0, 4294967295]"),
    (("trainer", "args", "epochs"), 10**12, "the number of epochs must be in [1, 100000]"),
])
def test_out_of_range_values_are_refused_at_validation(tiny_config, path, value, expected):
    node = tiny_config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match="^c.json: " + re.escape(format_path(path)) + ": .*" + re.escape(expected)):
        ConfigParser(tiny_config, source="c.json")


@pytest.mark.parametrize("path, value, expected", [
    (("data_loader", "args", "shift"), 1_000_000, "shift must be in [0, 4]"),
    (("data_loader", "args", "shift"), 100, "shift must be in [0, 4]"),
    (("metrics", 3, "args", "n_bins"), 10**12, "n_bins must be in [1, 1000]"),
])
def test_out_of_range_component_values_are_refused_when_building(tiny_config, tmp_path, path, value, expected):
    import train

    node = tiny_config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=re.escape(expected)):
        train.build_trainer(ConfigParser(tiny_config, source="c.json"))
    assert not (tmp_path / "saved").exists()


def test_cli_shortcuts_are_range_checked(tiny_config, tmp_path):
    path = write(tmp_path, tiny_config)
    for flag, value, expected in (("--lr", "1e300", "the learning rate"), ("--seed", "18446744073709551616", "seed"),
                                  ("--bs", str(10**30), "the batch size")):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            parse(["-c", str(path), flag, value])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


# --- where a resumed run lives, and what it may overwrite ---------------------------------------------------------
def fake_checkpoint(path, epoch, config):
    from utils.checkpoint import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint({"epoch": epoch, "model": {}, "config": config}, path)


def test_a_resumed_run_lives_where_its_checkpoint_is(tiny_config, tmp_path):
    """The embedded config's save_dir (where the run was first trained) does not decide where a resumed run logs."""
    tiny_config["trainer"]["args"]["save_dir"] = str(tmp_path / "elsewhere")
    checkpoint = fake_checkpoint(tmp_path / "moved" / "models" / "tiny" / "r1" / "latest.pth", 1, tiny_config)
    config = ConfigParser(tiny_config, resume=checkpoint)
    assert config.model_dir == tmp_path / "moved" / "models" / "tiny" / "r1"
    assert config.log_dir == tmp_path / "moved" / "log" / "tiny" / "r1"
    loose = fake_checkpoint(tmp_path / "loose" / "latest.pth", 1, tiny_config)
    config = ConfigParser(tiny_config, resume=loose)
    assert config.model_dir == config.log_dir == tmp_path / "loose"
    config.prepare_run_dirs()
    config.release_run_dir()
    assert not (tmp_path / "elsewhere").exists()


def test_resuming_from_an_older_checkpoint_does_not_overwrite_newer_state(tiny_config, tmp_path):
    run = tmp_path / "saved" / "models" / "tiny" / "r"
    old = fake_checkpoint(run / "checkpoint-epoch1.pth", 1, tiny_config)
    latest = fake_checkpoint(run / "latest.pth", 4, tiny_config)
    before = latest.read_bytes()
    with pytest.raises(ConfigError, match=re.escape(f"{old} is the state after epoch 1, but this run's {latest} is at "
                                                    f"epoch 4") + ".*" + re.escape(f"-r {latest}") + ".*"
                                          + re.escape(f"-r {old} --run-id NEW_ID")):
        ConfigParser(tiny_config, resume=old).prepare_run_dirs()
    assert latest.read_bytes() == before and sorted(p.name for p in run.iterdir()) == [
        "checkpoint-epoch1.pth", "latest.pth"]
    branch = ConfigParser(tiny_config, resume=old, run_id="from1")  # branching into a new run directory is fine
    assert branch.model_dir == run.parent / "from1" and branch.log_dir == tmp_path / "saved" / "log" / "tiny" / "from1"
    branch.prepare_run_dirs()
    branch.release_run_dir()
    newest = ConfigParser(tiny_config, resume=latest)  # the newest state continues in place
    newest.prepare_run_dirs()
    newest.release_run_dir()


def test_one_run_directory_has_one_training_process(tiny_config, tmp_path):
    import os

    from utils.errors import StorageError

    latest = fake_checkpoint(tmp_path / "saved" / "models" / "tiny" / "r" / "latest.pth", 2, tiny_config)
    first = ConfigParser(tiny_config, resume=latest)
    first.prepare_run_dirs()
    with pytest.raises(StorageError, match=re.escape(f"the run directory {latest.parent} is in use by another "
                                                     f"training process (pid {os.getpid()})")):
        ConfigParser(tiny_config, resume=latest).prepare_run_dirs()
    first.release_run_dir()
    second = ConfigParser(tiny_config, resume=latest)
    second.prepare_run_dirs()
    second.release_run_dir()


# --- --threads (issue 17.3): the count is applied and recorded ------------------------------------------------------
@pytest.fixture
def torch_threads():
    """Restore torch's thread count after a test that changes it (one thread left behind slows and changes the
    numerics of every later test in the process)."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_option_is_applied_and_recorded(tiny_config, tmp_path, torch_threads):
    import torch

    config = parse(["-c", str(write(tmp_path, tiny_config)), "--threads", "1"])
    assert config["threads"] == 1 and torch.get_num_threads() == 1
    config.prepare_run_dirs()
    assert json.loads((config.model_dir / "config.json").read_text())["threads"] == 1
    config.release_run_dir()


def test_without_threads_the_count_in_use_is_recorded(tiny_config, tmp_path, torch_threads):
    import torch

    torch.set_num_threads(1)
    assert parse(["-c", str(write(tmp_path, tiny_config))])["threads"] == 1


def test_the_config_count_is_used_and_lowered_to_the_cpus_available(tiny_config, tmp_path, torch_threads, capsys,
                                                                    monkeypatch):
    import torch

    from utils import process

    monkeypatch.setattr(process, "available_cpus", lambda: 2)
    tiny_config["threads"] = 1
    assert parse(["-c", str(write(tmp_path, tiny_config))])["threads"] == 1 and torch.get_num_threads() == 1
    tiny_config["threads"] = 64  # e.g. a checkpoint written on a larger machine
    assert parse(["-c", str(write(tmp_path, tiny_config))])["threads"] == 2
    assert "the config asks for 64 CPU threads but this process may use 2 CPUs; using 2" in capsys.readouterr().out
    assert parse(["-c", str(write(tmp_path, tiny_config)), "--threads", "3"])["threads"] == 3  # asked for: kept


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2", 10**6])
def test_threads_must_be_a_positive_count(tiny_config, value):
    tiny_config["threads"] = value
    with pytest.raises(ConfigError, match=re.escape('config["threads"]: must be a whole number of CPU threads from 1 '
                                                    f"to 1024 (or null: torch's default), got {value!r}; e.g. "
                                                    "--threads 1")):
        ConfigParser(tiny_config)


def test_every_entry_script_takes_threads(tmp_path, torch_threads):
    """--threads is parsed by each script (each then refuses the missing checkpoint, after argparse accepted it)."""
    import test as test_py
    import test_all
    import test_training

    for main, expected in ((test_py.main, "test.py needs a checkpoint"), (test_all.main, "test_all.py needs a "
                                                                           "checkpoint"),
                           (test_training.main, "test_training.py needs a test-time config")):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            main(["--threads", "1"])


# --- close matches (issue 17.13) ------------------------------------------------------------------------------------
@pytest.mark.parametrize("assignment, expected", [
    ("epochs=3", 'config["epochs"]: unknown top-level key. Did you mean trainer.args.epochs?'),
    ("data_loader.args.lr=0.1", "(--set data_loader.args.lr added a key the config did not have; did you mean "
                                "optimizer.args.lr?)"),
    ("trainer.argz.epochs=3", "did you mean trainer.args.epochs?)"),
    ("trainer.args.epoch=3", "did you mean trainer.args.epochs?)"),
    ("optimiser.args.lr=0.1", "did you mean optimizer.args.lr?)"),
    ("trainer.args.ampp=off", "did you mean trainer.args.amp?)"),  # an argument the config does not set yet
])
def test_unknown_override_path_suggests_existing_paths(tiny_config, tmp_path, assignment, expected):
    with pytest.raises(ConfigError) as info:
        parse(["-c", str(write(tmp_path, tiny_config)), "--set", assignment])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_valid_new_key_gets_no_suggestion(tiny_config, tmp_path):
    config = parse(["-c", str(write(tmp_path, tiny_config)), "--set", "trainer.args.amp=off"])
    assert config["trainer"]["args"]["amp"] == "off"


def test_missing_config_file_suggests_close_names(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError, match=re.escape("config file configs/quickstart_digit_lt.json does not exist; did "
                                                    "you mean configs/quickstart_digits_lt.json?")):
        parse(["-c", "configs/quickstart_digit_lt.json"])
    with pytest.raises(ConfigError, match=re.escape("did you mean configs/nmr/quickstart_simulated.json?")):
        load_json("configs/quickstart_simulated.json")  # in another directory of configs/
    (tmp_path / "my_run.json").write_text("{}")
    with pytest.raises(ConfigError, match=re.escape(f"did you mean {tmp_path / 'my_run.json'}?")):
        load_json(tmp_path / "my_rnu.json")
    with pytest.raises(ConfigError, match=r"nothing_like_it\.json does not exist$"):
        load_json(tmp_path / "nothing_like_it.json")
