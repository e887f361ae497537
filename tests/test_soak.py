"""Soak (issue 8): hundreds of epochs, and many runs, in one process leak neither memory nor file handles.

The usual leak sources are the TensorBoard event writer (a file and a thread per writer) and the log file
handlers of the process-wide logger; both are enabled here.
"""
from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest

import train
import utils.checkpoint as checkpoint_module
from parse_config import ConfigParser
from utils.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> set[str]:
    """Live threads, less tqdm's process-wide monitor (started by the first progress bar, kept by design)."""
    return {t.name for t in threading.enumerate() if t.name != "tqdm_monitor"}


def soak_config(tmp_path: Path, epochs: int) -> dict:
    """The digits quickstart cut to 2 batches of 80 per epoch (n_max 40), validation of 20 images, TensorBoard on."""
    config = json.loads((ROOT / "configs" / "quickstart_digits_lt.json").read_text())
    config["arch"]["args"]["width"] = 4
    config["data_loader"]["args"].update(batch_size=80, n_max=40, val_per_class=2, test_per_class=2)
    config["lr_scheduler"]["args"]["milestones"] = [epochs // 2, epochs * 3 // 4]
    config["trainer"]["args"].update(epochs=epochs, save_dir=str(tmp_path / "saved"), save_period=50,
                                     tensorboard=True, progress_bar=False, test_after_training=True)
    return config


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self")
def test_300_epochs_do_not_grow_memory_or_file_handles(tmp_path):
    """Resident memory stays within 10% of its size after warm-up; open files never exceed the warm-up count."""
    fds_before, threads_before = open_fds(), threads()
    parsed = ConfigParser(soak_config(tmp_path, 300), run_id="soak")
    trainer = train.build_trainer(parsed)
    assert len(trainer.data_loader) == 2
    samples: list[tuple[int, int, int]] = []
    log_epoch = trainer._log_epoch

    def measured(log, improved):
        log_epoch(log, improved)
        samples.append((log["epoch"], rss_kib(), open_fds()))

    trainer._log_epoch = measured  # measure only; the loop itself is untouched
    parsed.prepare_run_dirs()
    trainer.train()
    trainer.test()
    trainer.close()
    assert [s[0] for s in samples] == list(range(1, 301))
    warm = 30
    _, rss_warm, _ = samples[warm - 1]
    rss_peak = max(s[1] for s in samples[warm:])
    assert rss_peak <= 1.10 * rss_warm, f"RSS grew from {rss_warm} KiB (epoch {warm}) to {rss_peak} KiB"
    # TensorBoard opens its event file only while it flushes, so one handle comes and goes; a leak only grows
    fds_warm = max(s[2] for s in samples[warm - 10:warm])
    fds_end = min(s[2] for s in samples[-50:])
    fds_peak = max(s[2] for s in samples[warm:])
    assert fds_end <= fds_warm and fds_peak <= fds_warm + 1, \
        f"open files: {fds_warm} at warm-up, {fds_end}..{fds_peak} later"
    # closing releases the event file, the log file and the writer thread
    assert open_fds() <= fds_before
    assert threads() <= threads_before
    assert len(list((tmp_path / "saved" / "log" / parsed.name / "soak").glob("events.out.tfevents.*"))) == 1


def test_repeated_runs_release_files_and_threads_even_when_they_fail(tmp_path, monkeypatch):
    """train.main in a loop (a sweep, a notebook): each run, finished or failed, leaves nothing open behind."""
    config = soak_config(tmp_path, 2)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    train.main(["-c", str(path), "--run-id", "warmup"])  # first-use imports and caches
    fds, live = open_fds(), threads()
    for i in range(4):
        train.main(["-c", str(path), "--run-id", f"ok{i}"])
        assert (open_fds(), threads()) == (fds, live), f"after run ok{i}"

    def full(file, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "open", full, raising=False)
    for i in range(3):
        with pytest.raises(CheckpointError, match="the disk is full"):
            train.main(["-c", str(path), "--run-id", f"full{i}"])
        assert (open_fds(), threads()) == (fds, live), f"after failed run full{i}"
