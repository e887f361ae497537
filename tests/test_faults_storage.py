"""Fault injection (issue 8): storage faults while writing checkpoints, and non-finite losses in training.

Storage faults are injected where the operating system would raise them: the file object ``save_checkpoint``
writes through fails part-way (a short write, as on a full disk), ``open``/``fsync``/``rename`` fail with the
errno the kernel gives, and, where the machine allows a private mount namespace, a real tmpfs is filled up or
remounted read-only. Whatever fails, the previous checkpoint must stay byte-identical and loadable, no
temporary file may be left behind, and the message must name the file and the cause.
"""
from __future__ import annotations

import builtins
import copy
import errno
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fixtures import run_training
from torch import nn

import train
import utils.checkpoint as checkpoint_module
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import CheckpointError, NonFiniteLossError
from utils.registry import LOSSES

ROOT = Path(__file__).resolve().parents[1]
REASONS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EACCES: "permission denied", errno.EROFS: "the file system is read-only"}


# --- fault injection helpers ------------------------------------------------------------------------------
class ShortWriteFile:
    """A real file whose writes fail with ``err`` once ``limit`` bytes are on disk (the prefix is written)."""

    def __init__(self, handle, limit: int, err: int):
        self.handle, self.limit, self.err, self.written = handle, limit, err, 0

    def write(self, data) -> int:
        data = bytes(data)
        room = self.limit - self.written
        if len(data) > room:
            self.handle.write(data[:max(room, 0)])
            self.handle.flush()
            self.written = self.limit
            raise OSError(self.err, os.strerror(self.err))
        self.written += len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def faulty_open(limit: int | None, err: int, target: str = "", nth: int = 1):
    """A replacement for ``open`` inside utils.checkpoint: the ``nth`` open for writing of a temporary file of
    ``target`` fails at open (``limit`` None) or after ``limit`` bytes; other opens are untouched."""
    count = {"n": 0}

    def fake(file, mode="r", *args, **kwargs):
        name = Path(file).name
        if "w" in mode and name.startswith(f".{target}"):
            count["n"] += 1
            if count["n"] == nth:
                if limit is None:
                    raise OSError(err, os.strerror(err), str(file))
                return ShortWriteFile(builtins.open(file, mode, *args, **kwargs), limit, err)
        return builtins.open(file, mode, *args, **kwargs)

    fake.count = count
    return fake


def small_state(value: float = 1.0) -> dict:
    return {"epoch": 1, "model": {"w": torch.full((64, 64), value), "b": torch.arange(10.0)}}


def assert_intact(directory: Path, before: dict[str, bytes]) -> None:
    """Every file of ``before`` unchanged and loadable, nothing added (no temporary files)."""
    assert {p.name for p in directory.iterdir()} == set(before), sorted(p.name for p in directory.iterdir())
    for name, content in before.items():
        assert (directory / name).read_bytes() == content, name
        if name.endswith(".pth"):
            load_checkpoint(directory / name)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


# --- save_checkpoint directly ----------------------------------------------------------------------------
@pytest.mark.parametrize("limit, err", [
    (None, errno.EACCES),    # open() refused: read-only directory
    (None, errno.EROFS),     # open() refused: read-only file system
    (0, errno.ENOSPC),       # the very first write fails
    (3000, errno.ENOSPC),    # a short write part-way through torch.save's zip stream
    (3000, errno.EDQUOT),
], ids=["EACCES-open", "EROFS-open", "ENOSPC-first-write", "ENOSPC-mid-write", "EDQUOT-mid-write"])
def test_save_fault_names_path_and_cause_and_keeps_previous(tmp_path, monkeypatch, limit, err):
    """A failing write must not replace the good file, must not leave a temp file, and must say why."""
    path = save_checkpoint(small_state(1.0), tmp_path / "latest.pth")
    before = snapshot(tmp_path)
    monkeypatch.setattr(checkpoint_module, "open", faulty_open(limit, err, "latest.pth"), raising=False)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(small_state(2.0), path)
    message = str(info.value)
    assert f"could not write checkpoint {path}: {REASONS[err]}" in message
    assert "previous checkpoint there, if any, is unchanged" in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == err
    monkeypatch.undo()
    assert_intact(tmp_path, before)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((64, 64), 1.0))


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_fault_after_the_data_is_written_keeps_previous(tmp_path, monkeypatch, where):
    """ENOSPC can surface only at fsync (delayed allocation, NFS); rename can fail (EACCES on a sticky dir)."""
    path = save_checkpoint(small_state(1.0), tmp_path / "model_best.pth")
    before = snapshot(tmp_path)
    code = errno.ENOSPC if where == "fsync" else errno.EACCES
    real = getattr(os, where)

    def failing(*args, **kwargs):
        if where == "fsync" and os.path.isdir(f"/proc/self/fd/{args[0]}"):
            return real(*args, **kwargs)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, where, failing)
    with pytest.raises(CheckpointError, match=re.escape(f"could not write checkpoint {path}: {REASONS[code]}")):
        save_checkpoint(small_state(2.0), path)
    monkeypatch.undo()
    assert_intact(tmp_path, before)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_save_into_read_only_directory(tmp_path):
    """The real thing where permissions bite: a directory without write permission."""
    path = save_checkpoint(small_state(1.0), tmp_path / "latest.pth")
    before = snapshot(tmp_path)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match=re.escape(f"could not write checkpoint {path}: permission denied")):
            save_checkpoint(small_state(2.0), path)
    finally:
        tmp_path.chmod(0o755)
    assert_intact(tmp_path, before)


KERNEL_FAULTS = textwrap.dedent('''
    import json, os, subprocess, sys
    sys.path.insert(0, sys.argv[2])
    import torch
    from utils.checkpoint import load_checkpoint, save_checkpoint
    from utils.errors import CheckpointError
    mnt = sys.argv[1]
    out = {}
    small = {"model": {"w": torch.ones(16, 16)}}
    big = {"model": {"w": torch.randn(256, 1024)}}  # 1 MiB: more than the 512 KiB file system holds
    save_checkpoint(small, f"{mnt}/latest.pth")
    before = open(f"{mnt}/latest.pth", "rb").read()
    for case in ("full", "readonly"):
        if case == "readonly":
            subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
        try:
            save_checkpoint(big, f"{mnt}/latest.pth")
            out[case] = {"error": None}
        except CheckpointError as err:
            out[case] = {"error": str(err), "cause": type(err.__cause__).__name__}
        out[case]["files"] = sorted(os.listdir(mnt))
        out[case]["unchanged"] = open(f"{mnt}/latest.pth", "rb").read() == before
        out[case]["loads"] = torch.equal(load_checkpoint(f"{mnt}/latest.pth")["model"]["w"], torch.ones(16, 16))
    print("RESULT " + json.dumps(out))
''')


def test_real_full_and_read_only_file_system(tmp_path):
    """A real 512 KiB tmpfs in a private mount namespace: the kernel's own ENOSPC and EROFS.

    Skipped where unprivileged user/mount namespaces are not available (the mount dies with the process).
    """
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--user", "--map-root-user", "--mount", "true"],
                                         capture_output=True).returncode != 0:
        pytest.skip("no user/mount namespaces here: cannot mount a private tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "kernel_faults.py"
    script.write_text(KERNEL_FAULTS)
    command = f"mount -t tmpfs -o size=512k tmpfs {mnt} && exec {sys.executable} {script} {mnt} {ROOT}"
    proc = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", command],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    result = json.loads(lines[0][len("RESULT "):])
    path = mnt / "latest.pth"
    for case, reason in (("full", "the disk is full"), ("readonly", "the file system is read-only")):
        got = result[case]
        assert got["error"] is not None and got["error"].startswith(f"could not write checkpoint {path}: {reason}"), got
        assert got["cause"] == "OSError", got  # not torch's "unexpected pos" RuntimeError
        assert got["files"] == ["latest.pth"], got  # no temporary file left on the full disk
        assert got["unchanged"] and got["loads"], got


# --- through a real training run ---------------------------------------------------------------------------
def with_epochs(config: dict, epochs: int, **trainer_args) -> dict:
    config = copy.deepcopy(config)
    config["trainer"]["args"].update(epochs=epochs, test_after_training=False, progress_bar=False, **trainer_args)
    return config


def model_dir(tmp_path: Path, run_id: str) -> Path:
    return tmp_path / "saved" / "models" / "tiny" / run_id


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("target, limit, err", [
    ("latest.pth", 2000, errno.ENOSPC),
    ("latest.pth", None, errno.EACCES),
    ("model_best.pth", 2000, errno.ENOSPC),
])
def test_storage_fault_during_training_stops_with_clear_error(tiny_config, tmp_path, monkeypatch, capsys,
                                                               target, limit, err):
    """Epoch 2's save fails: train.py exits 2 naming the file and the cause; epoch 1's files stay as they were."""
    config = with_epochs(tiny_config, 3, monitor="min loss")  # the training loss falls: every epoch improves
    run_training(with_epochs(config, 1), "ref")  # what epoch 1 leaves on disk
    reference = snapshot(model_dir(tmp_path, "ref"))
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    monkeypatch.setattr(checkpoint_module, "open", faulty_open(limit, err, target, nth=2), raising=False)
    with pytest.raises(SystemExit) as info:
        train.run_cli(lambda: train.main(["-c", str(config_file), "--run-id", "fault"]))
    monkeypatch.undo()
    assert info.value.code == 2
    run_dir = model_dir(tmp_path, "fault")
    stderr = capsys.readouterr().err
    assert f"error: could not write checkpoint {run_dir / target}: {REASONS[err]}" in stderr
    assert "Traceback" not in stderr
    names = {p.name for p in run_dir.iterdir()}
    assert not [n for n in names if ".tmp-" in n], names
    latest = load_checkpoint(run_dir / "latest.pth")
    best = load_checkpoint(run_dir / "model_best.pth")
    # model_best.pth is written first: when it fails nothing of epoch 2 is saved; when latest.pth fails the best
    # of epoch 2 is already there (a resume repeats epoch 2 and writes it again)
    assert latest["epoch"] == 1
    assert best["epoch"] == (2 if target == "latest.pth" else 1)
    assert (run_dir / "model_best.pth").read_bytes() != b""
    assert_same_weights(latest["model"], load_checkpoint(model_dir(tmp_path, "ref") / "latest.pth")["model"])
    if target == "model_best.pth":
        assert_same_weights(best["model"], load_checkpoint(model_dir(tmp_path, "ref") / "model_best.pth")["model"])
    assert set(reference) <= names


# --- numerical faults ---------------------------------------------------------------------------------------
class PoisonedCrossEntropy(nn.Module):
    """Cross-entropy whose training loss is ``value`` (nan or inf) at one batch of one epoch (test plugin)."""

    def __init__(self, batches_per_epoch: int, epoch: int, batch: int, value: str = "nan"):
        super().__init__()
        self.batches_per_epoch, self.epoch, self.batch = batches_per_epoch, epoch, batch
        self.value, self.calls = float(value), 0

    def forward(self, output, target):
        loss = nn.functional.cross_entropy(output, target)
        if not torch.is_grad_enabled():  # validation (the trainer does not switch the criterion to eval mode)
            return loss
        epoch, batch = divmod(self.calls, self.batches_per_epoch)
        self.calls += 1
        return loss * self.value if (epoch + 1, batch) == (self.epoch, self.batch) else loss


@pytest.fixture
def poisoned_loss():
    LOSSES.register(PoisonedCrossEntropy)
    yield "PoisonedCrossEntropy"
    LOSSES._entries.pop("PoisonedCrossEntropy", None)


def batches_per_epoch(config: dict) -> int:
    from parse_config import ConfigParser
    return len(ConfigParser(config).build_data_loader(training=True))


@pytest.mark.parametrize("value, epoch, batch, log_step", [
    ("nan", 2, 3, 1),
    ("inf", 3, 0, 1),
    ("-inf", 2, 4, 100),   # only checked at the end of the epoch: the batch must still be the first bad one
    ("nan", 1, 2, 2),      # in the first epoch: no checkpoint exists yet
])
def test_nonfinite_loss_stops_with_epoch_and_batch(tiny_config, tmp_path, poisoned_loss, value, epoch, batch,
                                                   log_step):
    """The run stops at the poisoned batch; the checkpoint of the epoch before is the one a clean run saves."""
    config = with_epochs(tiny_config, epoch + 1, log_step=log_step)
    n = batches_per_epoch(config)
    assert batch < n
    config["loss"] = {"type": poisoned_loss, "args": {"batches_per_epoch": n, "epoch": epoch, "batch": batch,
                                                      "value": value}}
    with pytest.raises(NonFiniteLossError, match=rf"non-finite \(NaN or Inf\) at epoch {epoch}, batch {batch}\."):
        run_training(config, "bad")
    run_dir = model_dir(tmp_path, "bad")
    log = (tmp_path / "saved" / "log" / "tiny" / "bad" / "train.log").read_text()
    assert f"at epoch {epoch}, batch {batch}" in log
    names = {p.name for p in run_dir.iterdir()}
    assert not [name for name in names if ".tmp-" in name]
    if epoch == 1:
        assert names == {"config.json"}  # nothing was saved, nothing half-saved
        return
    latest = load_checkpoint(run_dir / "latest.pth")
    assert latest["epoch"] == epoch - 1
    assert all(torch.isfinite(v).all() for v in latest["model"].values() if v.is_floating_point())
    run_training(with_epochs(config, epoch - 1, log_step=log_step), "good")
    good = load_checkpoint(model_dir(tmp_path, "good") / "latest.pth")
    assert_same_weights(latest["model"], good["model"])
    assert_same_weights(load_checkpoint(run_dir / "model_best.pth")["model"],
                        load_checkpoint(model_dir(tmp_path, "good") / "model_best.pth")["model"])


def test_learning_rate_of_1e30_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
    """From epoch 3 the scheduler multiplies the rate to 1e30; the weights explode and the run must stop there."""
    config = with_epochs(tiny_config, 4, log_step=1)
    lr = config["optimizer"]["args"]["lr"]
    config["lr_scheduler"] = {"type": "WarmupMultiStepLR",
                              "args": {"milestones": [2], "gamma": 1e30 / lr, "warmup_epochs": 0}}
    with pytest.raises(NonFiniteLossError, match=r"at epoch 3, batch [1-9]\d*\."):
        run_training(config, "lr")
    run_dir = model_dir(tmp_path, "lr")
    latest = load_checkpoint(run_dir / "latest.pth")
    assert latest["epoch"] == 2 and math.isclose(latest["optimizer"]["param_groups"][0]["lr"], 1e30, rel_tol=1e-6)
    assert all(torch.isfinite(v).all() for v in latest["model"].values() if v.is_floating_point())
    good = with_epochs(config, 2, log_step=1)
    good["lr_scheduler"]["args"]["milestones"] = []  # the same rates for 2 epochs; milestone 2 is past their end
    run_training(good, "good")
    assert_same_weights(latest["model"], load_checkpoint(model_dir(tmp_path, "good") / "latest.pth")["model"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bf16 autocast)")
def test_bf16_autocast_gradients_are_finite_on_cuda():
    """bf16 has 8 mantissa bits: normalisations and amplitude divisions must not turn gradients into NaN/Inf."""
    from model.experts import MultiExpertResNet32
    from model.unet1d import UNet1D

    torch.manual_seed(0)
    device = torch.device("cuda")
    experts = MultiExpertResNet32(num_classes=10, in_channels=1, num_experts=3, hypernet={"hidden": 128}).to(device)
    images = torch.randn(32, 1, 8, 8, device=device)
    images[0] = 0  # an all-zero image: zero features through F.normalize
    labels = torch.randint(0, 10, (32,), device=device)
    for preference in ([1.0, 0.0, 0.0], [0.2, 0.3, 0.5], None):
        experts.zero_grad(set_to_none=True)
        pref = torch.tensor(preference, device=device) if preference is not None else None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            per_expert = experts(images, preference=pref, return_experts=True)
            logits = experts(images, preference=pref)
        loss = nn.functional.cross_entropy(logits.float(), labels) + sum(
            nn.functional.cross_entropy(per_expert[:, j].float(), labels) for j in range(per_expert.shape[1]))
        loss.backward()
        assert torch.isfinite(loss), preference
        grads = [p.grad for p in experts.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), preference
        assert any(g.abs().sum() > 0 for g in experts.hypernet.parameters() for g in [g.grad] if g is not None)

    unet = UNet1D(channels=[32, 64, 128, 128]).to(device)
    grid = torch.linspace(0, 1, 1000, device=device)
    clean = torch.stack([torch.exp(-((grid - c) / 0.004) ** 2) for c in (0.2, 0.5, 0.8, 0.3)])
    scales = torch.tensor([1.0, 1e6, 1e-6, 0.0], device=device)[:, None]  # huge, tiny and an all-zero spectrum
    clean = clean * scales
    noisy = clean + 0.05 * scales.clamp_min(1e-6) * torch.randn_like(clean)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = unet(noisy)
    loss = ((out.float() - clean) / scales.clamp_min(1e-6)).abs().mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in unet.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# --- storage faults outside checkpoint writes ---------------------------------------------------------------------
def failing_replace(code):
    def replace(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return replace


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_config_json_on_a_failing_disk_is_one_error_and_no_empty_file(tiny_config, tmp_path, monkeypatch, capsys, code):
    """train.py writes config.json atomically: a full or read-only disk leaves no empty config.json, and says so."""
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps(with_epochs(tiny_config, 1)))
    monkeypatch.setattr(os, "replace", failing_replace(code))
    with pytest.raises(SystemExit) as info:
        train.run_cli(lambda: train.main(["-c", str(config_file), "--run-id", "full"]))
    monkeypatch.undo()
    err = capsys.readouterr().err
    run_dir = model_dir(tmp_path, "full")
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: could not write the run config {run_dir / 'config.json'}: {REASONS[code]}")
    assert list(run_dir.iterdir()) == []  # no config.json, empty or not, and no temporary file


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_run_directory_on_a_read_only_mount_is_one_error(tiny_config, tmp_path, monkeypatch, capsys, code):
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps(with_epochs(tiny_config, 1)))

    def mkdir(self, *args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(SystemExit) as info:
        train.run_cli(lambda: train.main(["-c", str(config_file), "--run-id", "ro"]))
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot create the run directory {model_dir(tmp_path, 'ro')}: {REASONS[code]}")


@pytest.mark.parametrize("blocked", ["save_dir", "run_dir"])
def test_a_file_where_a_directory_belongs_is_one_error(tiny_config, tmp_path, capsys, blocked):
    config = with_epochs(tiny_config, 1)
    if blocked == "save_dir":
        (tmp_path / "saved").write_text("not a directory")
        blocker = tmp_path / "saved"
    else:
        model_dir(tmp_path, "x").parent.mkdir(parents=True)
        model_dir(tmp_path, "x").write_text("not a directory")
        blocker = model_dir(tmp_path, "x")
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps(config))
    with pytest.raises(SystemExit) as info:
        train.run_cli(lambda: train.main(["-c", str(config_file), "--run-id", "x"]))
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{blocker} is a file, not a directory" in err and "trainer.args.save_dir" in err
    assert blocker.read_text() == "not a directory"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One epoch of the tiny config; test.py evaluates its checkpoint."""
    from conftest import TINY

    root = tmp_path_factory.mktemp("trained")
    config = with_epochs(copy.deepcopy(TINY), 1, save_dir=str(root / "saved"))
    run_training(config, "t")
    return root / "saved" / "models" / "tiny" / "t" / "latest.pth"


@pytest.mark.parametrize("where", ["directory", "full", "parent_is_file"])
def test_test_py_out_fault_is_one_error_and_nothing_half_written(trained_run, tmp_path, monkeypatch, capsys, where):
    import test as test_script

    out = tmp_path / "metrics.json"
    if where == "directory":
        out.mkdir()
    elif where == "full":
        monkeypatch.setattr(os, "replace", failing_replace(errno.ENOSPC))
    else:
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "metrics.json"
    with pytest.raises(SystemExit) as info:
        train.run_cli(lambda: test_script.main(["-r", str(trained_run), "-d", "cpu", "--out", str(out)]))
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    expected = {"directory": f"--out {out}: it is a directory", "parent_is_file": f"{tmp_path / 'file'} is a file",
                "full": f"could not write the output file {out}: the disk is full"}[where]
    assert expected in err
    if where == "full":
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # no metrics.json, no temporary file


# --- non-finite validation metrics and weights --------------------------------------------------------------------
class NaNOnEvaluation(nn.Module):
    """Cross-entropy in training, NaN in evaluation (test plugin): a finite training loss, a NaN val_loss."""

    def __init__(self):  # no arguments (nn.Module's own signature would take any)
        super().__init__()

    def forward(self, output, target):
        loss = nn.functional.cross_entropy(output, target)
        return loss if torch.is_grad_enabled() else loss * float("nan")


class InfWeightsAfterEpoch(nn.Module):
    """Cross-entropy that sets one weight to Inf after the last training batch of an epoch (test plugin)."""

    def __init__(self, batches_per_epoch: int):
        super().__init__()
        self.batches_per_epoch, self.calls, self.model = batches_per_epoch, 0, None

    def forward(self, output, target):
        loss = nn.functional.cross_entropy(output, target)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.batches_per_epoch:
                output.register_hook(lambda grad: grad * float("inf"))  # the step makes the weights non-finite
        return loss  # the loss itself stays finite


@pytest.fixture
def nonfinite_losses():
    LOSSES.register(NaNOnEvaluation)
    LOSSES.register(InfWeightsAfterEpoch)
    yield
    LOSSES._entries.pop("NaNOnEvaluation", None)
    LOSSES._entries.pop("InfWeightsAfterEpoch", None)


@pytest.mark.parametrize("case", ["val_loss", "weights"])
def test_nonfinite_validation_or_weights_stop_without_saving(tiny_config, tmp_path, nonfinite_losses, case):
    """A finite training loss is not enough: a NaN val_loss or Inf weights stop the run before latest.pth or
    model_best.pth is written for that epoch."""
    config = with_epochs(tiny_config, 2, log_step=1)
    config["loss"] = ({"type": "NaNOnEvaluation", "args": {}} if case == "val_loss" else
                      {"type": "InfWeightsAfterEpoch", "args": {"batches_per_epoch": batches_per_epoch(config)}})
    expected = r"val_loss nan at epoch 1" if case == "val_loss" else r"weights became non-finite .* in epoch 1"
    with pytest.raises(NonFiniteLossError, match=expected + r".*Training stopped without saving epoch 1"):
        run_training(config, "nf")
    assert {p.name for p in model_dir(tmp_path, "nf").iterdir()} == {"config.json"}
