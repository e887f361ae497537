"""The README shows what the commands print (issue 17.16): its examples run, and the parts of its sample output
that do not depend on training (error messages, the rescaled schedule, table headers, the plugin example) are
compared with what the code prints now."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str = "") -> list[str]:
    """The README's fenced code blocks of ``language`` ("": the untyped ones, sample output)."""
    found, current, kind = [], None, None
    for line in README.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, kind = [], line[3:].strip()
            else:
                if kind == language:
                    found.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return found


def sample_line(start: str) -> str:
    """The first line of a README sample block that starts with ``start``."""
    for block in blocks():
        for line in block.splitlines():
            if line.startswith(start):
                return line
    raise AssertionError(f"no README sample line starts with {start!r}")


def plugin_example() -> str:
    (example,) = [b for b in blocks("python") if "@MODELS.register()" in b]
    return example


def test_the_plugin_example_is_clean_and_lists_itself(tmp_path):
    (tmp_path / "my_models.py").write_text(plugin_example())
    ruff = shutil.which("ruff")
    if ruff is not None:   # requirements-dev installs it; the README promises the example passes `ruff check .`
        linted = subprocess.run([ruff, "check", "--config", str(ROOT / "pyproject.toml"), "my_models.py"],
                                cwd=tmp_path, capture_output=True, text=True)
        assert linted.returncode == 0, linted.stdout
    listed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--list", "models", "--plugin", "my_models"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"TinyMLP\s+Two-layer perceptron on flattened images\.", listed.stdout)


def test_the_config_error_example_is_what_train_py_prints(tmp_path):
    line = sample_line("error: configs/x.json")
    config = json.loads((ROOT / "configs" / "quickstart_digits_lt.json").read_text())
    config["arch"]["args"]["num_clases"] = config["arch"]["args"].pop("num_classes", 10)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.json").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "-c", "configs/x.json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == line


def test_the_rescaled_schedule_example_is_what_epochs_prints(capsys):
    from parse_config import ConfigParser

    line = sample_line("--epochs 6:")
    parser = ConfigParser.add_arguments(argparse.ArgumentParser(), training=True)
    ConfigParser.from_args(parser.parse_args(["-c", str(ROOT / "configs" / "quickstart_digits_lt.json"),
                                              "--epochs", "6", "--threads", "1"]))
    assert line in capsys.readouterr().out.splitlines()


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The digits quickstart's trainer, untrained, and its test result (the table's columns, not its values)."""
    import train
    from parse_config import ConfigParser

    config = json.loads((ROOT / "configs" / "quickstart_digits_lt.json").read_text())
    config["trainer"]["args"].update(save_dir=str(tmp_path_factory.mktemp("saved")), tensorboard=False)
    trainer = train.build_trainer(ConfigParser(config))
    return trainer, trainer.test()


def test_the_quickstart_table_header_is_what_train_py_prints(quickstart):
    from utils.cli import format_metrics

    _, result = quickstart
    names = lambda header: [name.strip() for name in header.split("|")]  # noqa: E731  (widths follow the values)
    assert names(format_metrics(result["metrics"]).splitlines()[0]) == names(sample_line("loss | accuracy"))


def test_the_test_all_table_header_and_footnote_are_what_test_all_prints(quickstart):
    from model.metric import describe_shot_groups
    from parse_config import ConfigParser
    from test_all import format_table, shot_settings

    trainer, _ = quickstart
    assert format_table({}) == sample_line("split             n")
    config = ConfigParser(json.loads((ROOT / "configs" / "quickstart_digits_lt.json").read_text()))
    footnote = describe_shot_groups(trainer.cls_num_list, shot_settings(config))
    assert footnote == sample_line("many/medium/few by training images")
