"""Writing files and directories outside checkpoints: atomic text files, run directories, the run lock.

Every failure raises :class:`~utils.errors.StorageError` naming the path, the cause in words (the disk is full,
the file system is read-only, ...) and what to do, so the command-line scripts print one ``error:`` line; a text
file is written to a temporary file next to it and renamed over it, so a full disk never leaves an empty or
half-written file behind.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from utils.errors import StorageError

REASONS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.EROFS: "the file system is read-only", errno.ENOTDIR: "a part of the path is a file, not a directory",
           errno.EISDIR: "it is a directory", errno.EEXIST: "a file of that name is in the way"}


def os_reason(err: OSError) -> str:
    """What an OSError means, in words: ``"the disk is full"`` for ENOSPC, ..., else its strerror."""
    return REASONS.get(err.errno, err.strerror or str(err))


def first_file_in_path(path: Path) -> Path | None:
    """The first existing component of ``path`` (from the root down) that is not a directory, or None."""
    for parent in reversed([path, *path.parents]):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def make_dirs(path: Path, what: str = "directory") -> None:
    """``mkdir -p path``; a file in the way, a read-only mount or missing permission is one clear StorageError."""
    blocker = first_file_in_path(path)
    if blocker is not None:
        raise StorageError(f"cannot create the {what} {path}: {blocker} is a file, not a directory; move it away "
                           "or choose another trainer.args.save_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create the {what} {path}: {os_reason(err)} ({type(err).__name__}). Choose a "
                           "writable trainer.args.save_dir") from err


def atomic_write_text(path: str | Path, text: str, what: str = "file") -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory, fsync and rename.

    On failure nothing is left at ``path`` (a previous file there is unchanged) and no temporary file remains.
    """
    path = Path(path)
    if path.is_dir():
        raise StorageError(f"cannot write the {what} {path}: it is a directory; give a file name such as "
                           f"{path / 'out.json'}")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise StorageError(f"could not write the {what} {path}: {os_reason(err)} ({type(err).__name__}: "
                           f"{err.strerror or err}); nothing was written there. Free space or fix permissions and "
                           "run again") from err
    return path


class RunLock:
    """An advisory ``fcntl.flock`` on the run directory itself, held while a run trains in it.

    A second process (another ``train.py -r latest.pth`` of the same run, or a new run given the same
    ``--run-id``) fails to take it and is told the holder's pid (from ``/proc/locks``). The lock disappears with
    the process however it ends (a kill included), so nothing stale is ever left to block a later resume, and no
    file is added to the run directory. File systems that refuse locks on directories (some network mounts) get
    a ``.lock`` file in the directory instead.
    """

    FALLBACK = ".lock"

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise StorageError(f"the run directory {self.directory} is in use by another training process "
                                   f"(pid {self._holder()}); wait for it to end or stop it, or train into another "
                                   "--run-id") from None
            self._acquire_file(err)
            return
        self._fd = fd

    def _acquire_file(self, cause: OSError) -> None:
        import fcntl

        path = self.directory / self.FALLBACK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StorageError(f"cannot lock the run directory {self.directory}: {os_reason(cause)}; and cannot "
                               f"create {path}: {os_reason(err)}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StorageError(f"the run directory {self.directory} is in use by another training process (pid "
                               f"{holder}, holding {path}); wait for it to end or stop it, or train into another "
                               "--run-id") from err
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _holder(self) -> str:
        """The pid holding a flock on the directory, from /proc/locks (Linux); "unknown" elsewhere."""
        try:
            stat = os.stat(self.directory)
            wanted = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
            with open("/proc/locks", encoding="ascii") as locks:
                for line in locks:
                    fields = line.split()
                    if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                        return fields[4]
        except (OSError, ValueError):
            pass
        return "unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
