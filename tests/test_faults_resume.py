"""Fault injection (issue 8): SIGKILL a training process at random moments, resume it, and get the same run.

Each kill lands on a real, separate process running ``train.main`` (the code of ``python train.py``). Starting
``python train.py`` costs about 3 s of imports on a 2-core machine, so 20 kills would take over a minute of
imports alone; instead a small fork server imports the framework once and forks one child per command, which
then runs ``train.main(argv)`` exactly as ``train.py`` does and is killed with SIGKILL by the test. The final
resume and the uninterrupted reference of the slow test are real ``python train.py`` processes.

In the fork server, checkpoint writes are slowed down (half the bytes, a pause, the rest, a pause, the
rename), so kills land mid-write: on a half-written temporary file and on a complete one not yet renamed.
"""
from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from fixtures import assert_same_state

from utils.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # same thread count: same float sums

SERVER = textwrap.dedent('''
    import io, json, os, signal, sys, time, traceback
    sys.path.insert(0, sys.argv[1])
    os.chdir(sys.argv[1])
    import torch
    torch.set_num_threads(1)
    import torch.utils.tensorboard  # noqa: F401  (imported once here, not in every child)
    import base.base_trainer
    import train
    import utils.checkpoint as checkpoint

    PAUSE = float(sys.argv[2])

    class SlowTorch:
        """torch for utils.checkpoint, whose save() writes half the bytes, pauses, then writes the rest."""
        def __getattr__(self, name):
            return getattr(torch, name)
        def save(self, obj, handle):
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            data = buffer.getvalue()
            handle.write(data[:len(data) // 2])
            handle.flush()
            time.sleep(PAUSE)
            handle.write(data[len(data) // 2:])

    class SlowOS:
        """os for utils.checkpoint, whose replace() pauses before the atomic rename."""
        def __getattr__(self, name):
            return getattr(os, name)
        def replace(self, src, dst):
            time.sleep(PAUSE)
            os.replace(src, dst)

    checkpoint.torch, checkpoint.os = SlowTorch(), SlowOS()

    def child(command):
        log = os.open(command["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        kill_epoch = command.get("kill_before_latest_of_epoch")
        if kill_epoch is not None:  # a kill exactly between writing model_best.pth and latest.pth
            real = base.base_trainer.save_checkpoint
            def hooked(state, path):
                if os.path.basename(path) == "latest.pth" and state["epoch"] == kill_epoch:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(state, path)
            base.base_trainer.save_checkpoint = hooked
        code = 0
        try:
            train.run_cli(lambda: train.main(command["argv"]))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(command)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "status": os.waitstatus_to_exitcode(status)}), flush=True)
''')


class ForkServer:
    """Runs ``train.main(argv)`` in forked children of one long-lived interpreter (see the module docstring)."""

    def __init__(self, workdir: Path, pause: float = 0.03):
        script = workdir / "fork_server.py"
        script.write_text(SERVER)
        self.log = workdir / "children.log"
        self.proc = subprocess.Popen([sys.executable, str(script), str(ROOT), str(pause)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(workdir / "server.err", "w"), text=True,
                                     env=ENV, cwd=ROOT)
        self.replies: queue.Queue = queue.Queue()
        self._pending = None
        threading.Thread(target=self._read, daemon=True).start()
        self._next(120)  # ready

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.replies.put(json.loads(line))
        self.replies.put(None)

    def _next(self, timeout: float) -> dict:
        try:
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"fork server silent for {timeout} s; children's log:\n{self.tail()}") from None
        if reply is None:
            raise AssertionError(f"fork server died; children's log:\n{self.tail()}")
        return reply

    def start(self, argv: list[str], **options) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(self.log), **options}) + "\n")
        self.proc.stdin.flush()
        self.child = self._next(60)["pid"]
        return self.child

    def finished(self) -> bool:
        """Whether the current child has ended (its status is waiting to be read)."""
        if self._pending is None:
            try:
                self._pending = self.replies.get_nowait()
            except queue.Empty:
                return False
        return True

    def wait(self, timeout: float = 300) -> int:
        """Exit status of the current child: its exit code, or -N when signal N ended it."""
        reply, self._pending = (self._pending, None) if self._pending is not None else (self._next(timeout), None)
        if reply is None:
            raise AssertionError(f"fork server died; children's log:\n{self.tail()}")
        return reply["status"]

    def run(self, argv: list[str], **options) -> int:
        self.start(argv, **options)
        return self.wait()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    fork_server = ForkServer(tmp_path_factory.mktemp("fork_server"))
    yield fork_server
    fork_server.close()


def write_config(tmp_path: Path, epochs: int, monitor: str = "max val_accuracy") -> Path:
    """The digits quickstart cut down: a 4-channel ResNet-32 and 4 batches of 128 per epoch."""
    config = json.loads((ROOT / "configs" / "quickstart_digits_lt.json").read_text())
    config["arch"]["args"]["width"] = 4
    config["data_loader"]["args"].update(batch_size=128, val_per_class=10, test_per_class=10)
    config["lr_scheduler"]["args"]["milestones"] = [epochs * 2 // 3, epochs * 5 // 6]
    config["trainer"]["args"].update(epochs=epochs, save_dir=str(tmp_path / "saved"), monitor=monitor,
                                     test_after_training=False, progress_bar=False, tensorboard=True)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def run_dir(config_path: Path, run_id: str) -> Path:
    config = json.loads(config_path.read_text())
    return Path(config["trainer"]["args"]["save_dir"]) / "models" / config["name"] / run_id


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name) if directory.exists() else []


def poll(condition, timeout: float, interval: float = 0.002) -> bool:
    """Wait until ``condition()`` is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


class Watcher:
    """Counts appearances of temporary checkpoint files (absent -> present) in a run directory."""

    def __init__(self, directory: Path):
        self.directory, self.present, self.appeared = directory, set(), []

    def update(self) -> None:
        now = set(temporaries(self.directory))
        self.appeared += sorted(now - self.present)
        self.present = now

    def count(self, prefix: str = ".") -> int:
        self.update()
        return sum(name.startswith(prefix) for name in self.appeared)


def wait_for_moment(mode: str, rng: random.Random, directory: Path, watcher: Watcher, server: ForkServer) -> None:
    """Return at the moment to kill the child (which is running ``train.main``), per ``mode``."""
    def until(condition, timeout: float = 120) -> bool:
        reached = poll(lambda: condition() or server.finished(), timeout)
        assert not server.finished(), f"the child ended before the {mode} kill:\n{server.tail()}"
        return reached

    if mode == "before-first-checkpoint":
        assert until(lambda: (directory / "config.json").exists()), server.tail()
    elif mode == "startup":  # while it builds and loads, or early in its first epoch
        until(lambda: watcher.count() > 0, rng.uniform(0.0, 0.5))
    elif mode == "mid-write":  # at a random point inside the first or second checkpoint write
        nth = rng.choice([1, 2])
        assert until(lambda: watcher.count() >= nth), server.tail()
        time.sleep(rng.uniform(0.0, 0.05))  # within the write's pauses of 2 x 30 ms
    else:  # anywhere in the epoch after the first save started, but before a second latest.pth lands
        assert until(lambda: watcher.count(".latest") >= 1), server.tail()
        until(lambda: watcher.count(".latest") >= 2, rng.uniform(0.0, 0.5))


def kill_and_reap(server: ForkServer, pid: int, timeout: float = 60) -> int:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it had finished on its own
    return server.wait(timeout)


class Run:
    """The run being killed: its directory, and the command that continues it."""

    def __init__(self, server: ForkServer, config_path: Path):
        self.server, self.config_path, self.restarts = server, config_path, 0
        self.directory = run_dir(config_path, "run0")

    def argv(self) -> list[str]:
        """``-r latest.pth``; or, when a kill came before the first checkpoint, a fresh start from scratch, after
        checking that train.py refuses to reuse the checkpoint-less directory with a message saying so."""
        latest = self.directory / "latest.pth"
        if latest.exists():
            return ["-r", str(latest)]
        if self.directory.exists():
            status = self.server.run(["-c", str(self.config_path), "--run-id", self.directory.name])
            assert status == 2 and "holds no checkpoint" in self.server.tail(5), self.server.tail()
            self.restarts += 1
            self.directory = run_dir(self.config_path, f"run{self.restarts}")
        return ["-c", str(self.config_path), "--run-id", self.directory.name]


def kill_at_random_moments(server: ForkServer, config_path: Path, kills: int, seed: int) -> dict:
    """Start the run, kill it ``kills`` times at random moments (one before its first checkpoint), resuming each
    time with ``-r latest.pth``; returns the run directory and what the kills hit. Each kill lets the run
    progress by at most about one epoch, so the run must have more epochs than ``kills``."""
    rng = random.Random(seed)
    run, mid_write, modes = Run(server, config_path), 0, []
    for k in range(kills):
        argv = run.argv()
        directory = run.directory
        started = time.monotonic()
        pid = server.start(argv)
        mode = "before-first-checkpoint" if k == 0 else rng.choice(["startup", "mid-write", "anywhere"])
        wait_for_moment(mode, rng, directory, Watcher(directory), server)
        status = kill_and_reap(server, pid)
        assert status == -signal.SIGKILL, f"kill {k} ({mode}): child exited with {status}\n{server.tail()}"
        left = temporaries(directory)
        mid_write += bool(left)
        modes.append((mode, round(time.monotonic() - started, 2), left))
        for name in ("latest.pth", "model_best.pth"):
            if (directory / name).exists():  # every checkpoint that exists loads, whenever the kill landed
                load_checkpoint(directory / name)
    return {"run": run, "mid_write": mid_write, "modes": modes}


def assert_same_run(resumed: Path, reference: Path) -> None:
    a, b = load_checkpoint(resumed / "latest.pth"), load_checkpoint(reference / "latest.pth")
    assert a["epoch"] == b["epoch"]
    for key in ("model", "optimizer", "lr_scheduler", "rng", "monitor_best", "not_improved"):
        assert_same_state(a[key], b[key], key)
    best = load_checkpoint(resumed / "model_best.pth")
    assert best["epoch"] <= a["epoch"]
    assert not temporaries(resumed), "temporary files of killed writes were left behind"


@pytest.mark.slow
def test_twenty_random_kills_then_resume_equal_an_uninterrupted_run(server, tmp_path):
    """20 SIGKILLs (one before the first checkpoint, several mid-write); the resumed run is bit-identical."""
    epochs = 24
    config_path = write_config(tmp_path, epochs)
    seed = int(os.environ.get("FAULTS_SEED", "8"))
    outcome = kill_at_random_moments(server, config_path, kills=20, seed=seed)
    run = outcome["run"]
    argv = run.argv()
    done = load_checkpoint(run.directory / "latest.pth")["epoch"] if argv[0] == "-r" else 0
    assert done < epochs, f"the kills left nothing to resume: {outcome['modes']}"
    # the last resume and the reference run are real `python train.py` processes
    for command in (argv, ["-c", str(config_path), "--run-id", "reference"]):
        proc = subprocess.run([sys.executable, "train.py", *command], cwd=ROOT, env=ENV, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert run.restarts >= 1
    assert outcome["mid_write"] >= 3, f"too few kills landed during a checkpoint write (seed {seed}): " \
                                      f"{outcome['modes']}"
    directory = run.directory
    assert_same_run(directory, run_dir(config_path, "reference"))


def test_a_few_kills_then_resume_equal_an_uninterrupted_run(server, tmp_path):
    """The fast version: 3 kills over a 5-epoch run, reference run in the same fork server."""
    config_path = write_config(tmp_path, 5)
    outcome = kill_at_random_moments(server, config_path, kills=3, seed=3)
    run = outcome["run"]
    assert server.run(run.argv()) == 0, server.tail()
    assert server.run(["-c", str(config_path), "--run-id", "reference"]) == 0, server.tail()
    assert_same_run(run.directory, run_dir(config_path, "reference"))


def test_kill_between_best_and_latest_keeps_the_best_weights(server, tmp_path):
    """Killed between the two writes of the best epoch (model_best.pth written, latest.pth not), the resumed run
    repeats that epoch and its model_best.pth is that epoch's weights, as in an uninterrupted run. (Writing
    latest.pth first would resume past the best epoch with monitor_best already set and never write it.)"""
    config_path = write_config(tmp_path, 5, monitor="min loss")  # the training loss falls: the best is late
    assert server.run(["-c", str(config_path), "--run-id", "reference"]) == 0, server.tail()
    reference = run_dir(config_path, "reference")
    best = load_checkpoint(reference / "model_best.pth")
    status = server.run(["-c", str(config_path), "--run-id", "killed"], kill_before_latest_of_epoch=best["epoch"])
    assert status == -signal.SIGKILL, server.tail()
    directory = run_dir(config_path, "killed")
    assert load_checkpoint(directory / "latest.pth")["epoch"] == best["epoch"] - 1
    assert load_checkpoint(directory / "model_best.pth")["epoch"] == best["epoch"]
    assert server.run(["-r", str(directory / "latest.pth")]) == 0, server.tail()
    assert_same_state(load_checkpoint(directory / "model_best.pth")["model"], best["model"], "model_best")


@pytest.mark.slow
def test_fresh_train_py_processes_killed_at_random_moments_resume_exactly(tmp_path):
    """No fork server and no slowed writes: separate ``python train.py`` processes, each SIGKILLed at a random
    moment (during start-up and imports, or at a random point of an epoch after a checkpoint landed), then
    resumed with ``-r latest.pth``; the final weights are those of an uninterrupted ``python train.py``."""
    epochs = 16
    config_path = write_config(tmp_path, epochs)
    directory = run_dir(config_path, "run")
    rng = random.Random(int(os.environ.get("FAULTS_SEED", "8")))
    log = open(tmp_path / "runs.log", "w")
    modes = []

    def spawn(argv):
        return subprocess.Popen([sys.executable, "train.py", *argv], cwd=ROOT, env=ENV, stdout=log,
                                stderr=subprocess.STDOUT)

    def latest_mtime():
        path = directory / "latest.pth"
        return path.stat().st_mtime_ns if path.exists() else None

    def next_checkpoint(proc) -> None:
        seen = latest_mtime()
        assert poll(lambda: latest_mtime() != seen or proc.poll() is not None, 120), "no checkpoint in 120 s"

    # the first process runs until its first checkpoint, so every later start is a resume
    proc = spawn(["-c", str(config_path), "--run-id", "run"])
    next_checkpoint(proc)
    for k, mode in enumerate(["in-epoch", "startup", "in-epoch", "startup", "in-epoch"]):
        if k:
            proc = spawn(["-r", str(directory / "latest.pth")])
        if mode == "startup":
            time.sleep(rng.uniform(0.0, 2.0))  # imports, config, building, loading the checkpoint
        else:  # a random point of an epoch (or its checkpoint write), whatever this machine's epoch takes
            next_checkpoint(proc)
            started = time.monotonic()
            next_checkpoint(proc)
            time.sleep(rng.uniform(0.0, time.monotonic() - started))
        assert proc.poll() is None, f"the run ended before kill {k} ({mode}): {modes}; raise its epochs"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
        modes.append((mode, load_checkpoint(directory / "latest.pth")["epoch"]))
        load_checkpoint(directory / "model_best.pth")  # loadable after every kill
    assert modes[-1][1] < epochs, f"the kills left nothing to resume: {modes}"
    for argv in (["-r", str(directory / "latest.pth")], ["-c", str(config_path), "--run-id", "reference"]):
        assert spawn(argv).wait(300) == 0, (tmp_path / "runs.log").read_text()[-3000:]
    log.close()
    assert_same_run(directory, run_dir(config_path, "reference"))
