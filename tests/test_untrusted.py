"""Untrusted files: checkpoints and CIFAR pickles that would run code, configs naming code, paths with shell syntax.

Each crafted file is first shown to be dangerous: an ordinary ``pickle.load`` (or ``torch.load(weights_only=False)``)
in a separate process creates a marker file. Then the framework's readers refuse it with a clear error and the
marker is not created. A config can only reach code registered in a registry (or imported through its
``plugins`` key); paths from configs are used literally, never expanded by a shell or by ``~``/``$VAR`` rules.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from fixtures import write_cifar

from data_loader.cifar import read_cifar_file
from parse_config import ConfigParser
from utils.checkpoint import load_checkpoint
from utils.errors import CheckpointError, ConfigError, DataError
from utils.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickles as ``function(*args)``: what an attacker's pickle does."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def crafted_checkpoint(path: Path, marker: Path, kind: str) -> None:
    """A .pth that creates ``marker`` when unpickled: a legacy raw pickle, or a torch.save zip archive."""
    state = {"format": "ltframework-checkpoint", "version": 1, "epoch": 1,
             "model": Payload(os.system, f"touch {marker}"), "config": {"name": "x"}}
    if kind == "raw_pickle":
        path.write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("kind", ["raw_pickle", "torch_zip"])
def test_crafted_checkpoint_would_run_code_but_load_checkpoint_refuses_it(tmp_path, kind):
    path, marker = tmp_path / "crafted.pth", tmp_path / "marker"
    crafted_checkpoint(path, marker, kind)
    # control: an unsafe load in another process runs the payload
    loader = "pickle.load(open(p, 'rb'))" if kind == "raw_pickle" else "torch.load(p, weights_only=False)"
    done = run_python(f"import pickle, torch; p = {str(path)!r}; {loader}", tmp_path)
    assert marker.exists(), done.stderr
    marker.unlink()
    with pytest.raises(CheckpointError, match=f"({re.escape(str(path))} is not a checkpoint.*never loaded because "
                                              f"unpickling can run code|refusing to load {re.escape(str(path))}: .*"
                                              "could run code)"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["raw_pickle", "torch_zip"])
def test_test_py_refuses_a_crafted_checkpoint(tmp_path, kind):
    path, marker = tmp_path / "crafted.pth", tmp_path / "marker"
    crafted_checkpoint(path, marker, kind)
    done = subprocess.run([sys.executable, "test.py", "-r", str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and str(path) in done.stderr and "Traceback" not in done.stderr
    assert "code" in done.stderr  # says why: unpickling it could run code
    assert not marker.exists()


def test_checkpoint_with_a_payload_in_a_nested_archive_member_is_refused(tmp_path):
    """A real checkpoint whose data.pkl was swapped for a malicious one inside the same zip archive."""
    from utils.checkpoint import save_checkpoint

    good = save_checkpoint({"epoch": 1, "model": {"w": torch.zeros(2)}, "config": {"name": "x"}}, tmp_path / "a.pth")
    marker = tmp_path / "marker"
    evil = pickle.dumps({"format": "ltframework-checkpoint", "version": 1, "x": Payload(os.system, f"touch {marker}")},
                        protocol=2)
    swapped = io.BytesIO()
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(swapped, "w") as target:
        for item in source.infolist():
            data = evil if item.filename.endswith("data.pkl") else source.read(item.filename)
            target.writestr(item, data)
    path = tmp_path / "swapped.pth"
    path.write_bytes(swapped.getvalue())
    with pytest.raises(CheckpointError, match=f"refusing to load {path}"):
        load_checkpoint(path)
    assert not marker.exists()


# --- CIFAR pickles ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("function", [os.system, eval, exec, subprocess.getoutput],
                         ids=["os.system", "eval", "exec", "subprocess.getoutput"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle_that_would_run_code_is_refused_before_running_it(tmp_path, function, protocol):
    write_cifar(tmp_path, "100", 2, 1)
    marker = tmp_path / "marker"
    command = f"touch {marker}"
    argument = command if function in (os.system, subprocess.getoutput) else f"__import__('os').system({command!r})"
    path = tmp_path / "cifar-100-python" / "test"
    path.write_bytes(pickle.dumps({b"data": Payload(function, argument), b"fine_labels": [0]}, protocol=protocol))
    done = run_python(f"import pickle; pickle.load(open({str(path)!r}, 'rb'), encoding='bytes')", tmp_path)
    assert marker.exists(), done.stderr  # control: an ordinary unpickler runs it
    marker.unlink()
    with pytest.raises(DataError, match=f"^{path} contains Python objects .*refused without running them"):
        read_cifar_file(path, "fine_labels", 100)
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [("numpy", "load"), ("numpy.core.multiarray", "_reconstruct_x"),
                                          ("numpy.lib.npyio", "load"), ("builtins", "getattr"),
                                          ("_codecs", "decode"), ("torch", "load")])
def test_cifar_unpickler_allows_only_numpy_array_reconstruction(tmp_path, module, name):
    """Lookalikes of the allowed globals (same module, other name; other numpy functions) are refused too."""
    path = tmp_path / "data_batch_1"
    # protocol-2 GLOBAL opcode naming module.name, called with no arguments, then STOP
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")
    with pytest.raises(DataError, match=f"contains Python objects \\({module}.{name}\\)"):
        read_cifar_file(path, "labels", 10)


# --- configs name registered components only ----------------------------------------------------------------------
TINY = {
    "name": "tiny", "arch": {"type": "ResNet32", "args": {"num_classes": 10, "in_channels": 1, "width": 4}},
    "data_loader": {"type": "DigitsLT", "args": {"batch_size": 64}},
    "loss": {"type": "CrossEntropy", "args": {}}, "metrics": [{"type": "accuracy", "args": {}}],
    "optimizer": {"type": "SGD", "args": {"lr": 0.05}},
    "lr_scheduler": {"type": "WarmupMultiStepLR", "args": {"milestones": [2]}},
    "trainer": {"type": "ClassifierTrainer", "args": {"epochs": 1, "save_dir": "saved", "tensorboard": False}},
}


def set_path(config: dict, path: tuple, value) -> dict:
    import copy

    config = copy.deepcopy(config)
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return config


@pytest.mark.parametrize("where", [("arch", "type"), ("data_loader", "type"), ("loss", "type"), ("optimizer", "type"),
                                   ("lr_scheduler", "type"), ("trainer", "type"), ("metrics", 0, "type")])
@pytest.mark.parametrize("name", ["os.system", "subprocess.Popen", "builtins.eval", "torch.optim.SGD",
                                  "model.resnet_cifar.ResNet32", "fuzz_marker_module.Thing", "__import__"])
def test_a_type_is_a_registered_name_never_an_import_path(tmp_path, monkeypatch, where, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    marker = tmp_path / "imported"
    (tmp_path / "fuzz_marker_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nThing = object\n")
    modules = set(sys.modules)
    config = set_path(TINY, where, name)
    with pytest.raises(ConfigError) as info:
        ConfigParser(config, source="c.json")
    message = str(info.value)
    path = 'config["' + '"]["'.join(str(k) for k in where) + '"]'
    assert path.replace('["0"]', "[0]") in message and f"'{name}'" in message and "Registered in" in message
    assert "plugins" in message  # says how a class of one's own is named in a config
    assert not marker.exists() and set(sys.modules) == modules  # nothing was imported


def test_a_sampler_type_is_a_registered_name_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = set_path(TINY, ("data_loader",), {"type": "CIFAR10LT", "args": {
        "data_dir": str(tmp_path), "imb_factor": 1.0,
        "sampler": {"type": "subprocess.Popen", "args": {"args": ["touch", "marker"]}}}})
    write_cifar(tmp_path, "10", 3, 1)
    import train

    with pytest.raises(ConfigError, match=r'config\["data_loader"\]\["args"\]\["sampler"\]\["type"\]: unknown sampler '
                                          r"'subprocess.Popen' in registry SAMPLERS.*Registered in SAMPLERS"):
        train.build_trainer(ConfigParser(config, source="c.json"))
    assert not (tmp_path / "marker").exists()


def test_plugins_is_the_one_way_to_import_code(tmp_path, monkeypatch):
    """Control for the test above: the same module, listed under "plugins", is imported and may register."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))  # the plugin's registration is undone after
    marker = tmp_path / "imported"
    (tmp_path / "fuzz_plugin_models.py").write_text(
        "from utils.registry import MODELS\nfrom model.resnet_cifar import ResNet32\n"
        f"open({str(marker)!r}, 'w').close()\n\n\n@MODELS.register()\n"
        "def FuzzPluginNet(num_classes: int, in_channels: int = 3, width: int = 16):\n"
        "    return ResNet32(num_classes=num_classes, in_channels=in_channels, width=width)\n")
    monkeypatch.delitem(sys.modules, "fuzz_plugin_models", raising=False)
    config = set_path(set_path(TINY, ("arch", "type"), "FuzzPluginNet"), ("plugins",), ["fuzz_plugin_models"])
    ConfigParser(config)
    assert marker.exists()
    sys.modules.pop("fuzz_plugin_models", None)


@pytest.mark.parametrize("plugin", ["os; touch marker", "../evil", "evil.py", "/tmp/evil", "$(touch marker)"])
def test_plugins_must_be_module_names(tmp_path, monkeypatch, plugin):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(ConfigError, match=r'config\["plugins"\]\[0\]: .*(is not a Python module name|cannot import)'):
        ConfigParser(set_path(TINY, ("plugins",), [plugin]))
    assert list(tmp_path.iterdir()) == []


# --- paths are literal ---------------------------------------------------------------------------------------------
ODD_PATHS = ["$HOME/x", "~/x", "`touch marker`", "$(touch marker)", "x; touch marker", "${PWD}/x", "%HOME%/x"]


@pytest.mark.parametrize("data_dir", ODD_PATHS)
@pytest.mark.parametrize("loader", ["CIFAR10LT", "ImageNetLT", "NMRDirectory"])
def test_data_paths_from_configs_are_looked_up_literally(tmp_path, monkeypatch, data_dir, loader):
    import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "x").mkdir(parents=True)  # what "$HOME/x" or "~/x" would expand to: must not be used
    write_cifar(tmp_path / "home" / "x", "10", 3, 1)
    args = {"data_dir": data_dir, "batch_size": 4}
    if loader == "ImageNetLT":
        args.update(root=data_dir, num_workers=0)
    config = set_path(TINY, ("data_loader",), {"type": loader, "args": args})
    if loader == "NMRDirectory":
        config = set_path(config, ("arch",), {"type": "UNet1D", "args": {"channels": [4, 8]}})
        config = set_path(config, ("loss",), {"type": "NMRDenoiseLoss", "args": {}})
        config = set_path(config, ("trainer", "type"), "NMRDenoiseTrainer")
        del config["metrics"]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError) as info:
        train.build_trainer(ConfigParser(config, source="c.json"))
    assert data_dir in str(info.value) and str(tmp_path / "home") not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no marker, no directory


@pytest.mark.parametrize("value", ["~/x.pth", "$HOME/x.pth", "`touch marker`.pth"])
def test_init_from_is_looked_up_literally(tmp_path, monkeypatch, value):
    import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(value)} does not exist"):
        train.build_trainer(ConfigParser(set_path(TINY, ("init_from",), value), source="c.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("save_dir", ["~/runs", "$HOME/runs", "`touch marker`"])
def test_save_dir_is_used_literally(tmp_path, monkeypatch, save_dir):
    monkeypatch.chdir(tmp_path)
    config = ConfigParser(set_path(TINY, ("trainer", "args", "save_dir"), save_dir), run_id="r")
    assert config.model_dir == Path(save_dir) / "models" / "tiny" / "r"
    assert list(tmp_path.iterdir()) == []  # nothing before prepare_run_dirs
    config.prepare_run_dirs()
    assert (tmp_path / save_dir / "models" / "tiny" / "r" / "config.json").is_file()
    assert not (tmp_path / "marker").exists()
