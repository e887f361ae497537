"""Start-up of the commands that should answer at once: before (a chosen commit) against the current tree, in one run.

    python benchmarks/startup.py [--before 87b8581] [--repeats 5] [--out startup.json]

Exports ``--before`` (default 87b8581, the last commit before issue 17's lazy imports) with ``git archive`` into a
temporary directory (nothing is added to the repository, not even a worktree entry, and the directory goes when
the run ends), then runs each command there and in this tree:

* ``train.py --list``
* ``train.py -c BAD.json``, a malformed JSON file (a missing comma), and ``-c`` a config naming an unknown model
  (``ResNet23``), both written to the temporary directory
* ``test.py -h``
* ``python -c "import parse_config; len(MODELS)"``: importing every built-in component, what a training or
  evaluation run loads before its first step (run from the tree's directory; the old tree imported them with
  parse_config, the new one on the registry's first look-up)

Each command runs once in each tree to warm the file cache and write the ``.pyc`` files, then ``--repeats`` times,
before and after alternately so that load on the machine hits both alike. Reported: the median wall time and the
median peak resident memory of the process (``ru_maxrss`` of that child from ``os.wait4``), and before / after
(higher is better). Every run's exit status is checked (0 for --list and -h, 2 for the bad configs). Numbers, not
assertions.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "87b8581"


def commands(tmp: Path) -> list[tuple[str, list[str], int]]:
    """``(label, argv after the interpreter, expected exit status)``."""
    malformed = tmp / "bad.json"
    malformed.write_text('{"name": "bad" "arch": {"type": "ResNet32"}}\n')
    unknown = tmp / "unknown_model.json"
    unknown.write_text(json.dumps({"name": "bad", "arch": {"type": "ResNet23"}, "data_loader": {"type": "DigitsLT"},
                                   "trainer": {"type": "ClassifierTrainer", "args": {"epochs": 1}}}))
    return [("train.py --list", ["train.py", "--list"], 0),
            ("train.py -c BAD.json (malformed)", ["train.py", "-c", str(malformed)], 2),
            ("train.py -c BAD.json (unknown model)", ["train.py", "-c", str(unknown)], 2),
            ("test.py -h", ["test.py", "-h"], 0),
            ("import every component", ["-c", "import parse_config; from utils.registry import MODELS; len(MODELS)"],
             0)]


def export(rev: str, into: Path) -> str:
    """Write the tree of ``rev`` into ``into``; returns the full commit name."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return commit


def run_once(tree: Path, argv: list[str], cwd: Path) -> tuple[float, int, int]:
    """``(wall seconds, peak RSS bytes, exit status)`` of ``python argv`` with ``tree``'s scripts (``-c CODE``: run
    in ``tree``, so that its modules are the ones imported)."""
    script = [str(tree / argv[0]), *argv[1:]] if argv[0].endswith(".py") else argv
    cwd = cwd if argv[0].endswith(".py") else tree
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, *script], cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not every child's maximum
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    return wall, usage.ru_maxrss * 1024, child.returncode  # ru_maxrss is in KiB on Linux


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        torch = importlib.metadata.version("torch")  # not imported: that is what is being measured
    except importlib.metadata.PackageNotFoundError:
        torch = "not installed"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu}, {cores} cores usable, Python {platform.python_version()}, torch {torch}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


def measure(before: str = BEFORE, repeats: int = 5) -> dict:
    with tempfile.TemporaryDirectory(prefix="startup_bench_") as tmp_name:
        tmp = Path(tmp_name)
        old = tmp / "before"
        old.mkdir()
        commit = export(before, old)
        work = tmp / "cwd"  # the commands run from here: a run directory, if one were made, would land here
        work.mkdir()
        trees = {"before": old, "after": ROOT}
        rows = []
        for label, argv, expected in commands(tmp):
            samples: dict[str, list[tuple[float, int]]] = {"before": [], "after": []}
            bad = []
            for tree in trees.values():  # warm-up: file cache, .pyc files
                run_once(tree, argv, work)
            for _ in range(repeats):
                for name, tree in trees.items():
                    wall, rss, code = run_once(tree, argv, work)
                    samples[name].append((wall, rss))
                    if code != expected:
                        bad.append(f"{name} exited {code}, expected {expected}")
            row = {"command": label, "exit_problems": sorted(set(bad))}
            for name in trees:
                row[f"{name}_ms"] = 1000 * statistics.median(w for w, _ in samples[name])
                row[f"{name}_rss_mb"] = statistics.median(r for _, r in samples[name]) / 2**20
            row["time_ratio"] = row["before_ms"] / row["after_ms"]
            row["rss_ratio"] = row["before_rss_mb"] / row["after_rss_mb"]
            rows.append(row)
    return {"before": commit, "repeats": repeats, "machine": machine(), "rows": rows}


def table(result: dict) -> str:
    header = ("command", "before ms", "after ms", "time before/after", "before RSS MB", "after RSS MB",
              "RSS before/after")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in result["rows"]:
        cells = (r["command"], f"{r['before_ms']:.0f}", f"{r['after_ms']:.0f}", f"{r['time_ratio']:.1f}x",
                 f"{r['before_rss_mb']:.0f}", f"{r['after_rss_mb']:.0f}", f"{r['rss_ratio']:.1f}x")
        lines.append("| " + " | ".join(cells) + " |")
    problems = [f"{r['command']}: {p}" for r in result["rows"] for p in r["exit_problems"]]
    return "\n".join(lines + [f"WARNING {p}" for p in problems])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help=f"commit to compare with (default {BEFORE})")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per command and tree (median)")
    parser.add_argument("--out", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    result = measure(args.before, args.repeats)
    print(f"{result['machine']}\nbefore: {result['before'][:10]}, after: this tree ({ROOT}); median of "
          f"{result['repeats']} runs each, interleaved\n")
    print(table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
