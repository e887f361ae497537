"""Checkpoint files: atomic writes and safe reads.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so that it loads with
``torch.load(weights_only=True)``: nothing in it can run code when read. Writes go to a temporary
file in the same directory, are flushed to disk, then renamed over the target, so a crash or a full
disk during a write leaves the previous file intact. A temporary file that a killed process could not remove
is deleted by the next successful save into the same directory.
"""
from __future__ import annotations

import errno
import os
import pickle
import random
import socket
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import CheckpointError

FORMAT = "ltframework-checkpoint"
VERSION = 1

# Reading a checkpoint allocates what its records say. torch.save writes each record uncompressed, so a record
# that inflates is crafted (a 1 MB file holding a 1 GiB tensor); the total is bounded too, overridable for
# models larger than this with the environment variable below.
MAX_BYTES_ENV = "LTF_MAX_CHECKPOINT_BYTES"
DEFAULT_MAX_BYTES = 16 * 2**30
MAX_EXPANSION = 2  # a record may hold at most this many times its stored size (plus 64 KiB of slack)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically; raises CheckpointError naming the path on failure.

    Temporary files that a killed process left next to ``path`` (same host, process gone) are removed
    after a successful write, so repeated crashes do not fill the disk with half-written copies.
    """
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, **state}
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{_HOST}-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            writer = _ErrorRecordingWriter(handle)
            try:
                torch.save(state, writer)
            except RuntimeError as err:
                # torch's zip writer swallows an OSError raised by write() (e.g. ENOSPC) and fails later
                # with "unexpected pos ..."; report the real cause
                if writer.error is not None:
                    raise writer.error from err
                raise
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        _discard(tmp)
        reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                  errno.EROFS: "the file system is read-only"}.get(err.errno, err.strerror or str(err))
        raise CheckpointError(f"could not write checkpoint {path}: {reason} ({type(err).__name__}: "
                              f"{err.strerror or err}). The previous checkpoint there, if any, is unchanged; "
                              "free space or fix permissions and resume with -r") from err
    except BaseException:
        _discard(tmp)
        raise
    _remove_stale_temporaries(path.parent)
    return path


def _discard(tmp: Path) -> None:
    """Remove a temporary file after a failed write; never masks the original error (on a read-only file
    system even unlinking a missing file fails with EROFS)."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


_TMP_MARK = ".tmp-"
_HOST = socket.gethostname().replace("/", "_") or "host"


class _ErrorRecordingWriter:
    """The file object handed to torch.save: remembers the first OSError of a write."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.handle.flush()

    def __getattr__(self, name):  # everything else of the file object (fileno, truncate, ...)
        return getattr(self.handle, name)


def _remove_stale_temporaries(directory: Path) -> None:
    """Delete ``.NAME.tmp-HOST-PID`` files of this host whose process no longer exists.

    Files of other hosts (a shared file system) and of live processes are left alone.
    """
    try:
        candidates = [p for p in directory.iterdir() if p.name.startswith(".") and _TMP_MARK in p.name]
    except OSError:
        return
    for candidate in candidates:
        host, _, pid = candidate.name.split(_TMP_MARK, 1)[1].rpartition("-")
        if host != _HOST or not pid.isdigit() or int(pid) == os.getpid() or _process_exists(int(pid)):
            continue
        try:
            candidate.unlink()
        except OSError:
            pass


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists but belongs to someone else
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not allow opening directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def max_checkpoint_bytes() -> int:
    """The most bytes a checkpoint's records may hold in total: ``$LTF_MAX_CHECKPOINT_BYTES`` or 16 GiB."""
    raw = os.environ.get(MAX_BYTES_ENV)
    if raw is None:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 1:
        raise CheckpointError(f"{MAX_BYTES_ENV}={raw!r}: give a positive number of bytes, e.g. "
                              f"{MAX_BYTES_ENV}={32 * 2**30} for 32 GiB")
    return value


def _check_record_sizes(path: Path) -> None:
    """Refuse an archive whose records would inflate or exceed the size limit, before torch reads any."""
    limit = max_checkpoint_bytes()
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read ({type(err).__name__}: "
                              f"{err}). Use another checkpoint of the run, e.g. latest.pth or model_best.pth") from err
    total = 0
    for record in records:
        if record.file_size > MAX_EXPANSION * record.compress_size + 65536:
            raise CheckpointError(f"refusing to load {path}: its record {record.filename!r} inflates from "
                                  f"{record.compress_size:,} to {record.file_size:,} bytes. torch.save stores records "
                                  "uncompressed, so this file was crafted or re-packed; use a checkpoint train.py "
                                  "wrote")
        total += record.file_size
    if total > limit:
        raise CheckpointError(f"refusing to load {path}: its records hold {total:,} bytes, more than the limit of "
                              f"{limit:,} bytes; if you trust the file and it is a model this large, raise the limit "
                              f"with {MAX_BYTES_ENV}={total}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    require: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True`` and check its structure.

    Raises CheckpointError for a missing file, a truncated or corrupt file, records larger than stated in the
    archive or than :func:`max_checkpoint_bytes`, a file that would need arbitrary code to unpickle, a file that is
    not one of this framework's checkpoints, and an entry of the wrong type; ``require`` names the entries the
    caller needs (see :data:`ENTRIES`), each reported by name when missing.
    """
    path = Path(path)
    if path.is_dir():
        present = [name for name in ("model_best.pth", "latest.pth") if (path / name).is_file()]
        present += sorted(p.name for p in path.glob("*.pth") if p.name not in present and p.is_file())
        if present:
            raise CheckpointError(f"{path} is a run directory, not a checkpoint; give one of its checkpoints: "
                                  + " or ".join(str(path / name) for name in present[:3]))
        raise CheckpointError(f"{path} is a directory without checkpoints; give a checkpoint file, e.g. "
                              f"{path / 'model_best.pth'} or {path / 'latest.pth'} of a run")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive; anything else is not ours
        raise CheckpointError(f"{path} is not a checkpoint: it is not a torch.save archive (wrong file, or "
                              "a legacy pickle, which is never loaded because unpickling can run code)")
    _check_record_sizes(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "global" in line.lower()), "")
        raise CheckpointError(f"refusing to load {path}: it holds Python objects that only an unsafe unpickle "
                              f"could rebuild (and that could run code), so it was not written by this "
                              f"framework. {detail}".strip()) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                              "Use another checkpoint of the run, e.g. latest.pth or model_best.pth") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a readable torch file but not a checkpoint of this framework "
                              f"(no '{FORMAT}' marker); train.py writes latest.pth and model_best.pth")
    validate_checkpoint(state, path, require)
    return state


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _weights_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"is {type(value).__name__}, not a dict of parameter names to tensors"
    for key, tensor in value.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            return f"maps {key!r} to {type(tensor).__name__}, not a tensor (it must map parameter names to tensors)"
    return None


def _rng_problem(value: Any) -> str | None:
    """What is wrong with a saved RNG state, tried on private generators (the global ones are not touched)."""
    if not isinstance(value, dict) or not {"python", "numpy", "torch"} <= set(value):
        return "is not the {python, numpy, torch} generator states train.py saves"
    try:
        version, internal, gauss = value["python"]
        random.Random().setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, gauss_np = value["numpy"]
        if not isinstance(keys, torch.Tensor):
            raise TypeError("numpy keys are not a tensor")
        np.random.RandomState().set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
        if not isinstance(value["torch"], torch.Tensor):
            raise TypeError("the torch state is not a tensor")
        torch.Generator().set_state(value["torch"])
        cuda = value.get("cuda", [])
        if not isinstance(cuda, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in cuda):
            raise TypeError("the cuda states are not a list of tensors")
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        return f"is not a valid generator state ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    return None


def _optional_dict(value: Any) -> str | None:
    return None if value is None or isinstance(value, dict) else f"is {type(value).__name__}, not a dict or null"


# entry -> (what is wrong with a value, or None): every entry save_checkpoint's callers write
ENTRIES = {
    "version": lambda v: None if _is_int(v) and 1 <= v else f"is {v!r}, not a format version (an integer >= 1)",
    "epoch": lambda v: None if _is_int(v) and v >= 0 else f"is {v!r}, not an epoch number (an integer >= 0)",
    "model": _weights_problem,
    "config": lambda v: None if isinstance(v, dict) else f"is {type(v).__name__}, not a config (a dict)",
    "rng": _rng_problem,
    "monitor_best": lambda v: None if _is_number(v) else f"is {v!r}, not a number",
    "not_improved": lambda v: None if _is_int(v) and v >= 0 else f"is {v!r}, not a count (an integer >= 0)",
    "world_size": lambda v: None if _is_int(v) and v >= 1 else f"is {v!r}, not a number of processes",
    "arch": lambda v: None if isinstance(v, str) else f"is {v!r}, not a model name",
    "run_id": lambda v: None if isinstance(v, str) else f"is {v!r}, not a run name",
    "optimizer": _optional_dict,
    "lr_scheduler": _optional_dict,
    "grad_scaler": _optional_dict,
    "trainer_state": _optional_dict,
}
# what resuming a run needs (weights, counters, generators, the config); evaluation needs "model" only
RESUME_ENTRIES = ("model", "epoch", "rng", "monitor_best", "config")


def validate_checkpoint(state: dict[str, Any], path: str | Path, require: tuple[str, ...] = ()) -> None:
    """Check the entries of a loaded checkpoint once, on load: each present one has the type train.py writes, each
    ``require``d one is present. Messages name the file and the entry."""
    if "version" not in state:
        raise CheckpointError(f"{path}: the checkpoint has no 'version' entry; it was not written by train.py")
    for key, check in ENTRIES.items():
        if key in state:
            problem = check(state[key])
            if problem:
                raise CheckpointError(f"{path}: the checkpoint's '{key}' entry {problem}; the file was not written "
                                      "by train.py or was altered. Use another checkpoint of the run")
    if state["version"] > VERSION:
        raise CheckpointError(f"{path} was written by a newer version of this framework "
                              f"(format {state['version']} > {VERSION}); upgrade to read it")
    missing = [key for key in require if key not in state]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint has no {', '.join(repr(k) for k in missing)} entr"
                              f"{'y' if len(missing) == 1 else 'ies'}, which this needs "
                              f"({'a run to resume' if 'rng' in missing or 'epoch' in missing else 'to use it'}); "
                              "use latest.pth or model_best.pth of a run train.py wrote")


def rng_state() -> dict[str, Any]:
    """The state of every random generator training uses, as plain tensors and lists."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
