"""Start-up: help, argument errors, config errors and ``--list`` are answered before torch is imported, and what
they say is what the imported registries would say (utils/registry_index.py reads the names from the sources)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from utils import registry_index

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "scipy", "nmrglue", "matplotlib", "tensorboard", "sklearn")

# Runs an entry point as `python SCRIPT ARGS` would (as __main__, its directory first on sys.path, exits caught),
# then reports which heavy modules the run imported.
PROBE = """
import json, os, runpy, sys
sys.argv = {argv!r}
sys.path[0] = os.path.dirname({script!r})
code = 0
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exit:
    code = exit.code
print("\\nPROBE " + json.dumps({{"code": code, "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def run_entry_point(script: str, *args: str, cwd=ROOT) -> tuple[int, list[str], str, str]:
    argv = [script, *args]
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, script=str(ROOT / script), heavy=HEAVY)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    out, _, report = done.stdout.rpartition("\nPROBE ")
    assert report, done.stderr
    result = json.loads(report)
    return result["code"], result["heavy"], out, done.stderr


def config_file(tmp_path, config) -> str:
    path = tmp_path / "c.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return str(path)


GOOD = {"name": "x", "arch": {"type": "ResNet32"}, "data_loader": {"type": "DigitsLT"},
        "trainer": {"type": "ClassifierTrainer"}, "metrics": [{"type": "accuracy"}]}


@pytest.mark.parametrize("script", ["train.py", "test.py", "test_all.py", "test_training.py"])
def test_help_and_argument_errors_import_nothing_heavy(script):
    code, heavy, out, _ = run_entry_point(script, "-h")
    assert code == 0 and "usage:" in out and heavy == []
    code, heavy, _, err = run_entry_point(script, "--no-such-option")
    assert code == 2 and "unrecognized arguments" in err and heavy == []


@pytest.mark.parametrize("config, message", [
    (None, "does not exist"),
    ('{"name": "x",', "line 1"),
    ({**GOOD, "nmae": "y"}, "unknown top-level key. Did you mean 'name'?"),
    ({**GOOD, "arch": {"type": "ResNet23"}}, "unknown model 'ResNet23' in registry MODELS. Did you mean 'ResNet32'"),
    ({**GOOD, "metrics": [{"type": "accuracy"}, {"type": "acuracy"}]},
     'config["metrics"][1]["type"]: unknown metric \'acuracy\''),
    ({**GOOD, "optimizer": {"type": "SGDD"}}, "unknown optimizer 'SGDD' in registry OPTIMIZERS. Did you mean 'SGD'"),
])
def test_config_errors_come_before_torch(tmp_path, config, message):
    path = str(tmp_path / "missing.json") if config is None else config_file(tmp_path, config)
    code, heavy, _, err = run_entry_point("train.py", "-c", path, cwd=tmp_path)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert heavy == []
    assert not (tmp_path / "saved").exists()


def test_list_imports_nothing_heavy_and_equals_the_registries_listing():
    code, heavy, out, err = run_entry_point("train.py", "--list")
    assert code == 0 and heavy == [], err
    real = subprocess.run([sys.executable, "-c", "import train; print(train.list_registered('all', plugins=True))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert real.returncode == 0, real.stderr
    assert out == real.stdout


def test_index_equals_the_imported_registries():
    """Every registry, name by name and doc line by doc line, in a process that imported only the built-ins."""
    index = registry_index.read_entries()  # raises Unreadable (saying where) rather than return None
    dump = ("import json; from utils.registry import REGISTRIES\n"
            "print(json.dumps({r.name: dict(r.describe()) for r in REGISTRIES.values()}))")
    real = subprocess.run([sys.executable, "-c", dump], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert real.returncode == 0, real.stderr
    imported = json.loads(real.stdout)
    assert set(index) == set(imported)
    for registry, entries in imported.items():
        assert index[registry] == entries, registry


def test_registries_import_the_builtins_on_first_look_up():
    probe = ("import sys\nfrom utils.registry import MODELS, OPTIMIZERS\n"
             "import parse_config, train, test, test_all, test_training, utils.cli, utils.plots\n"
             "before = 'torch' in sys.modules\n"
             "print(before, 'ResNet32' in MODELS, 'SGD' in OPTIMIZERS.names(), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["False", "True", "True", "True"], done.stderr


SAME_MESSAGE = """
import json
from parse_config import ConfigParser
from utils import registry_index
from utils.registry import builtins_loaded

def message(config):
    try:
        ConfigParser(config, source="c.json")
    except Exception as err:
        return str(err)

bad = {**GOOD, "arch": {"type": "Resnet32"}, "metrics": [{"type": 5}]}
metric = message({**bad, "arch": {"type": "ResNet32"}})  # before the trainer's missing "epochs", from the sources
from_sources = message(bad)
loaded_by_then = builtins_loaded()
registry_index.static_entries = lambda: None  # as if the sources could not be read: the registries answer
print(json.dumps([metric, from_sources, loaded_by_then, message(bad)]))
"""


def test_unknown_name_message_from_the_sources_is_the_registrys():
    """The same words before the import (from the index) as after it (from the registry), in a fresh process."""
    done = subprocess.run([sys.executable, "-c", f"GOOD = {GOOD!r}\n" + SAME_MESSAGE], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    metric, from_sources, loaded_by_then, from_registry = json.loads(done.stdout)
    assert 'config["metrics"][0]["type"]: the metric type must be a string' in metric
    assert not loaded_by_then
    assert "unknown model 'Resnet32'" in from_sources
    assert from_sources == from_registry


REGISTERED_IN_PROCESS = '''
from torch import nn
from utils.registry import MODELS, builtins_loaded

@MODELS.register()
class MyNet(nn.Module):
    """Mine."""

assert not builtins_loaded()
from parse_config import ConfigParser
for name in ("MyNett", "MyNet"):  # the typo first: refused from the sources, the registries not loaded yet
    try:
        ConfigParser({**GOOD, "arch": {"type": name}}, source="c.json")
    except Exception as err:
        print(err)
    print(builtins_loaded())
'''


def test_a_class_registered_by_the_running_script_passes_the_check_from_the_sources():
    """No plugin, but registered in-process before the config is built (a script, a notebook, a test)."""
    probe = f"GOOD = {GOOD!r}\n" + REGISTERED_IN_PROCESS
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    typo, loaded_after_typo, mine, loaded_after_mine = done.stdout.splitlines()
    assert "unknown model 'MyNett' in registry MODELS. Did you mean 'MyNet'" in typo and loaded_after_typo == "False"
    assert "MyNet" not in mine and loaded_after_mine == "True"  # the trainer's missing "epochs", from the classes


@pytest.mark.parametrize("source, problem", [
    ("from utils.registry import MODELS\nclass A:\n    pass\nMODELS.register(A)\n", "not a lone decorator"),
    ("from utils.registry import MODELS\n@MODELS.register()\nclass A:\n    pass\n", "no docstring of its own"),
    ("from utils.registry import MODELS\nN = 'a'\n@MODELS.register(name=N)\ndef a():\n    pass\n",
     "not a string literal"),
    ("from utils.registry import MODELS\nimport functools\n@functools.cache\n@MODELS.register()\ndef a():\n"
     "    '''Doc.'''\n", "decorators besides the registration"),
    ("from utils.registry import MODELS\ndef f(s):\n    return s.upper()\n@MODELS.register()\nclass A:\n"
     "    __doc__ = f('computed')\n", "computed by code"),
    ("from utils import registry\n@registry.MODELS.register()\ndef a():\n    '''Doc.'''\n", "as a module"),
])
def test_the_reader_gives_up_on_what_it_cannot_follow(tmp_path, source, problem):
    path = tmp_path / "component.py"
    path.write_text(source)
    registries = {"MODELS": registry_index.Registry("MODELS", "model")}
    with pytest.raises(registry_index.Unreadable, match=problem):
        list(registry_index._read_component_module(path, registries))


def test_the_reader_follows_literal_docs_and_name_arguments(tmp_path):
    path = tmp_path / "component.py"
    path.write_text('from utils.registry import MODELS as M\n'
                    'def _doc(summary, rest):\n    return f"{summary}\\n\\n    {rest}" + str(1)\n'
                    '@M.register(name="b")\ndef a():\n    """\n    First line.\n\n    More."""\n'
                    '@M.register()\nclass C:\n    """Ignored: replaced below."""\n'
                    '    __doc__ = _doc("From a call.", "x")\n'
                    '@M.register()\nclass D:\n    __doc__ = ("Leading text.\\n" + "x".upper())\n'
                    '@M.register()\ndef e():\n    pass\n')
    registry = registry_index.Registry("MODELS", "model")
    found = {name: doc for _, name, doc in registry_index._read_component_module(path, {"MODELS": registry})}
    assert found == {"b": "First line.", "C": "From a call.", "D": "Leading text.", "e": ""}
