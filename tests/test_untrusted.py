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
    "lr_scheduler": {"type": "WarmupMultiStepLR", "args": {"milestones": [], "warmup_epochs": 1}},
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


# --- a checkpoint names no code ------------------------------------------------------------------------------------
def marker_plugin(directory: Path, module: str, marker: Path) -> None:
    """A plugin module in ``directory`` that creates ``marker`` when imported (what a hostile plugin does)."""
    (directory / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")


def test_a_checkpoint_cannot_choose_plugins_to_import(tmp_path, monkeypatch):
    """test.py -r / train.py -r / test_training.py -r: the plugins listed in a checkpoint's config are imported only
    when the user names them again; otherwise the error names them and the flag that allows them."""
    import argparse

    import test_training
    from utils.checkpoint import save_checkpoint

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    marker = tmp_path / "imported"
    marker_plugin(tmp_path, "ckpt_chosen_plugin", marker)
    monkeypatch.delitem(sys.modules, "ckpt_chosen_plugin", raising=False)
    config = set_path(TINY, ("plugins",), ["ckpt_chosen_plugin"])
    checkpoint = save_checkpoint({"epoch": 1, "model": {}, "config": config}, tmp_path / "latest.pth")

    def from_args(argv, training):
        parser = ConfigParser.add_arguments(argparse.ArgumentParser(), training=training)
        return ConfigParser.from_args(parser.parse_args(argv))

    expected = (f"{re.escape(str(checkpoint))}: its config needs the plugin\\(s\\) 'ckpt_chosen_plugin', and a "
                "checkpoint cannot choose code to import.*add --plugin ckpt_chosen_plugin")
    for training in (True, False):  # train.py -r, test.py -r / test_all.py -r
        with pytest.raises(ConfigError, match=expected):
            from_args(["-r", str(checkpoint)], training)
    test_time = tmp_path / "tt.json"
    test_time.write_text('{"trainer": {"type": "TestTimeTrainer", "args": {}}}')
    with pytest.raises(ConfigError, match=expected):
        test_training.main(["-c", str(test_time), "-r", str(checkpoint)])
    assert not marker.exists() and "ckpt_chosen_plugin" not in sys.modules
    # named again by the user, it is imported
    from_args(["-r", str(checkpoint), "--plugin", "ckpt_chosen_plugin"], False)
    assert marker.exists()
    sys.modules.pop("ckpt_chosen_plugin", None)


def test_the_working_directory_is_importable_only_while_a_plugin_is_imported(tmp_path, monkeypatch):
    """Stray .py files in the working directory (a tensorflow.py, psutil.py) must not shadow the optional imports
    of installed libraries: nothing is added to sys.path without a plugin, and a plugin's import removes it after."""
    import importlib.util

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "stray_optional_library.py").write_text("raise SystemExit('a stray file ran')\n")
    marker = tmp_path / "imported"
    marker_plugin(tmp_path, "cwd_plugin_module", marker)
    monkeypatch.delitem(sys.modules, "cwd_plugin_module", raising=False)
    ConfigParser(TINY)
    assert str(tmp_path) not in sys.path
    assert importlib.util.find_spec("stray_optional_library") is None
    ConfigParser(set_path(TINY, ("plugins",), ["cwd_plugin_module"]))  # from the working directory, as documented
    assert marker.exists()
    assert str(tmp_path) not in sys.path
    importlib.invalidate_caches()
    assert importlib.util.find_spec("stray_optional_library") is None
    sys.modules.pop("cwd_plugin_module", None)


# --- checkpoints are size-checked and structure-checked on load ---------------------------------------------------
def recompress(source: Path, target: Path) -> Path:
    """``source``'s records, deflated: a small file whose records inflate when read."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            new.writestr(item.filename, old.read(item.filename), compress_type=zipfile.ZIP_DEFLATED)
    return target


def test_checkpoint_records_are_size_checked_before_loading(tmp_path, monkeypatch):
    """A small file that inflates into a large tensor, and a file over the stated limit, are refused before torch
    reads a record; the limit is raised with LTF_MAX_CHECKPOINT_BYTES."""
    from utils import checkpoint as checkpoint_module
    from utils.checkpoint import save_checkpoint

    big = save_checkpoint({"epoch": 1, "model": {"w": torch.zeros(2**23)}}, tmp_path / "big.pth")  # 32 MiB
    bomb = recompress(big, tmp_path / "bomb.pth")
    assert bomb.stat().st_size < 2**20 and torch.load(bomb, weights_only=True)["model"]["w"].numel() == 2**23
    loads = []
    monkeypatch.setattr(checkpoint_module.torch, "load", lambda *a, **k: loads.append(a) or {})
    with pytest.raises(CheckpointError, match=f"refusing to load {re.escape(str(bomb))}: its record '.*' inflates "
                                              "from [0-9,]+ to 33,554,432 bytes"):
        load_checkpoint(bomb)
    monkeypatch.setenv("LTF_MAX_CHECKPOINT_BYTES", str(2**20))
    with pytest.raises(CheckpointError, match=f"refusing to load {re.escape(str(big))}: its records hold [0-9,]+ "
                                              "bytes, more than the limit of 1,048,576 bytes.*LTF_MAX_CHECKPOINT"):
        load_checkpoint(big)
    monkeypatch.setenv("LTF_MAX_CHECKPOINT_BYTES", "lots")
    with pytest.raises(CheckpointError, match="LTF_MAX_CHECKPOINT_BYTES='lots': give a positive number"):
        load_checkpoint(big)
    assert loads == []  # torch.load was never reached
    monkeypatch.undo()
    assert load_checkpoint(big)["model"]["w"].numel() == 2**23


def _tiny_trainer(tmp_path):
    import train

    config = set_path(TINY, ("trainer", "args", "save_dir"), str(tmp_path / "saved"))
    config = set_path(config, ("optimizer", "args", "momentum"), 0.9)
    return config, train.build_trainer(ConfigParser(config, source="c.json"))


def _stepped_state(trainer) -> dict:
    """A real checkpoint state after one optimizer step (so it holds momentum buffers)."""
    for p in trainer.raw_model.parameters():
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return trainer.checkpoint_state(1)


def _doubled_groups(state):
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"] * 2


def _wrong_momentum(state):
    first = next(iter(state["optimizer"]["state"]))
    buffer = state["optimizer"]["state"][first]["momentum_buffer"]
    state["optimizer"]["state"][first]["momentum_buffer"] = torch.zeros(buffer.numel() + 1)


MALFORMED = {  # name -> (mutation of a real checkpoint state, what the message must name)
    "version_string": (lambda s: s.update(version="1"), "'version' entry is '1'"),
    "version_none": (lambda s: s.update(version=None), "'version' entry is None"),
    "no_model": (lambda s: s.pop("model"), "no 'model' entry"),
    "no_rng": (lambda s: s.pop("rng"), "no 'rng' entry"),
    "no_epoch": (lambda s: s.pop("epoch"), "no 'epoch' entry"),
    "no_monitor_best": (lambda s: s.pop("monitor_best"), "no 'monitor_best' entry"),
    "model_list": (lambda s: s.update(model=[torch.zeros(1)]), "'model' entry is list"),
    "model_ints": (lambda s: s.update(model={"conv1.weight": 3}), "'model' entry maps 'conv1.weight' to int"),
    "epoch_string": (lambda s: s.update(epoch="1"), "'epoch' entry is '1'"),
    "rng_garbage": (lambda s: s.update(rng={"python": 1, "numpy": 2, "torch": 3}), "'rng' entry is not a valid"),
    "rng_bad_torch": (lambda s: s["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)), "'rng' entry is not a"),
    "optimizer_list": (lambda s: s.update(optimizer=[1]), "'optimizer' entry is list"),
    "doubled_groups": (_doubled_groups, "optimizer has 2 parameter group"),
    "wrong_momentum": (_wrong_momentum, "optimizer state 'momentum_buffer' of parameter 0 in group 0 has shape"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_checkpoint_is_refused_on_load_naming_file_and_entry(tmp_path, case):
    """Checkpoints that keep the format marker but not the structure train.py writes: refused when resuming (before
    any training), naming the file and the entry; evaluation refuses those without usable weights."""
    _, trainer = _tiny_trainer(tmp_path)
    state = _stepped_state(trainer)
    mutate, expected = MALFORMED[case]
    mutate(state)
    path = tmp_path / "bad.pth"
    torch.save({"format": "ltframework-checkpoint", **state} if "version" in state else
               {"format": "ltframework-checkpoint", "version": 1, **state}, path)
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: .*{re.escape(expected)}"):
        trainer.resume(path)
    if case.startswith(("version", "model", "no_model")):
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: .*{re.escape(expected)}"):
            trainer.load_weights(path)
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            trainer.init_weights_from(str(path))


@pytest.mark.parametrize("config_text, expected", [
    ('"just a string"', "a config must be a JSON object .* got a JSON string"),
    ('[{"trainer": {}}]', "a config must be a JSON object .* got a JSON list"),
])
def test_test_training_refuses_a_config_that_is_not_an_object(tmp_path, config_text, expected):
    import test_training
    from utils.checkpoint import save_checkpoint

    checkpoint = save_checkpoint({"epoch": 1, "model": {}, "config": TINY}, tmp_path / "c.pth")
    path = tmp_path / "tt.json"
    path.write_text(config_text)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {expected}"):
        test_training.main(["-c", str(path), "-r", str(checkpoint)])


def test_test_training_refuses_a_checkpoint_without_a_config(tmp_path):
    import test_training
    from utils.checkpoint import save_checkpoint

    checkpoint = save_checkpoint({"epoch": 1, "model": {}}, tmp_path / "c.pth")
    path = tmp_path / "tt.json"
    path.write_text('{"trainer": {"type": "TestTimeTrainer", "args": {}}}')
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(checkpoint))}: the checkpoint has no 'config' entry"):
        test_training.main(["-c", str(path), "-r", str(checkpoint)])
