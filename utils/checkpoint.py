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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises CheckpointError for a missing file, a truncated or corrupt file, a file that would need
    arbitrary code to unpickle, and a file that is not one of this framework's checkpoints.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive; anything else is not ours
        raise CheckpointError(f"{path} is not a checkpoint: it is not a torch.save archive (wrong file, or "
                              "a legacy pickle, which is never loaded because unpickling can run code)")
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
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer version of this framework "
                              f"(format {state['version']} > {VERSION}); upgrade to read it")
    return state


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
