"""ConfigParser: validation, overrides, resume merging, no disk writes before prepare_run_dirs."""
from __future__ import annotations

import argparse
import json
import re

import pytest

from parse_config import ConfigParser, apply_override, deep_merge, load_json
from utils.errors import ConfigError
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
