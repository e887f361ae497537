"""Shared command-line plumbing: user errors print one clear message (no traceback) and exit 2.

Importing this module imports no torch: ``-h``, argument errors and config errors are answered before it loads.
"""
from __future__ import annotations

import importlib.abc
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, FrameworkError, StorageError
from utils.files import atomic_write_text, first_file_in_path, make_dirs
from utils.process import launch_rank


def flush_denormals() -> None:
    """Flush subnormal floats to zero on the CPU (x86 with SSE3, AArch64), in this thread and the threads it starts.

    A backward pass whose gradients hold subnormal values (below 1.2e-38 in float32) runs an order of magnitude
    slower on x86: a ResNet-32 backward at batch 64 took 1.7-3 s instead of 0.17 s in about half of the steps.
    Threads inherit the mode when they start and keep their own afterwards, so this must run before torch starts
    its intra-op thread pool (the first parallel operation): ``run_cli`` arranges it (see
    :func:`flush_denormals_when_torch_loads`). Values this small carry nothing a network can use; CUDA is not
    affected.
    """
    import torch

    torch.set_flush_denormal(True)


class _FlushDenormalsAfterTorch(importlib.abc.MetaPathFinder):
    """An import hook that finds nothing itself: it lets the other finders find ``torch`` and runs
    :func:`flush_denormals` as soon as torch's ``__init__`` has run, before any other code can use torch."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        hook = self

        def exec_module(module):
            del loader.exec_module  # the loader's own method again: this wrapper runs once
            loader.exec_module(module)
            if hook in sys.meta_path:
                sys.meta_path.remove(hook)
            module.set_flush_denormal(True)

        loader.exec_module = exec_module  # this spec's loader only (finders make one per spec)
        return spec


def flush_denormals_when_torch_loads() -> None:
    """Flush denormals now if torch is imported, else right after it is first imported (see
    :func:`flush_denormals`): the entry points import torch only once their arguments have been checked."""
    if "torch" in sys.modules:
        flush_denormals()
    elif not any(isinstance(f, _FlushDenormalsAfterTorch) for f in sys.meta_path):
        sys.meta_path.insert(0, _FlushDenormalsAfterTorch())


ROOT = Path(__file__).resolve().parents[1]  # the repository: train.py, test.py, configs/

# the checkpoint a Ctrl-C can be resumed from (train.py registers its run's latest.pth), with the launcher
_RESUMABLE: dict[str, Any] = {}


def display_path(path: str | Path) -> str:
    """``path`` as a user can type it from the working directory: relative when it lies below it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def script_command(script: str, *args: str) -> str:
    """The command line running the repository's ``script`` (``train.py``, ``test.py``) from the working
    directory, e.g. ``python test.py -r ...`` in the repository, ``python /path/to/repo/test.py -r ...`` elsewhere."""
    from utils import dist  # torch is loaded by now: only runs that trained or evaluated print commands

    launcher = f"torchrun --nproc_per_node {dist.world_size()}" if dist.is_distributed() else "python"
    return " ".join([launcher, display_path(ROOT / script), *args])


def note_resumable(latest: str | Path) -> None:
    """Tell :func:`run_cli` which checkpoint an interrupted run continues from (its ``latest.pth``)."""
    _RESUMABLE.update(latest=Path(latest), command=script_command("train.py", "-r", display_path(latest)))


def interrupt_message() -> str:
    """What a Ctrl-C prints: the command that resumes the run, or that there is nothing to resume yet."""
    latest = _RESUMABLE.get("latest")
    if latest is None:
        return "interrupted"
    if latest.is_file():
        return f"interrupted; resume the run with: {_RESUMABLE['command']}"
    return (f"interrupted before the first epoch was saved: {display_path(latest)} does not exist yet, so there is "
            "nothing to resume; run the command again")


def run_cli(main: Callable[[], Any]) -> None:
    """Run an entry point's ``main``: denormals flushed, user errors as one line and exit 2, ^C as exit 130."""
    flush_denormals_when_torch_loads()
    try:
        main()
    except FrameworkError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if launch_rank() == 0:  # under torchrun every rank gets the signal: one message
            print(interrupt_message(), file=sys.stderr)
        sys.exit(130)
    finally:
        if "torch" in sys.modules:  # without torch there is no process group to leave
            from utils import dist

            dist.cleanup()


def format_metrics(metrics: dict[str, Any]) -> str:
    """A two-row text table of named values; None prints as '-'."""
    names = list(metrics)
    cells = ["-" if metrics[n] is None else (f"{metrics[n]:.2f}" if isinstance(metrics[n], float) else str(metrics[n]))
             for n in names]
    widths = [max(len(n), len(c)) for n, c in zip(names, cells)]
    head = " | ".join(n.rjust(w) for n, w in zip(names, widths))
    row = " | ".join(c.rjust(w) for c, w in zip(cells, widths))
    return f"{head}\n{'-' * len(head)}\n{row}"


def format_comparison(rows: dict[str, dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A text table with one row per method (e.g. model and baselines) and one column per metric (those of
    ``columns`` that some row has, in that order, when given); 4 significant digits."""
    names = list(dict.fromkeys(k for row in rows.values() for k in row))
    if columns is not None:
        names = [c for c in columns if c in names]
    cell = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    table = [["method", *names]] + [[method, *(cell(row.get(n)) for n in names)] for method, row in rows.items()]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(r, widths)) for r in table]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def format_result(result: dict[str, Any], columns: Sequence[str] | None = None, full: str | None = None) -> str:
    """The table of a trainer's ``test()`` result: with baselines, one row per method (the model first) over
    ``columns`` (the trainer's ``table_columns``), plus a line saying where the other metrics are (``full``: the
    JSON file, or None: that ``--out`` writes them); else the model's metrics in two rows."""
    if not result.get("baselines"):
        return format_metrics(result["metrics"])
    rows = {"model": result["metrics"], **result["baselines"]}
    table = format_comparison(rows, columns)
    shown = sum(1 for c in columns if any(c in row for row in rows.values())) if columns is not None else None
    every = len(dict.fromkeys(k for row in rows.values() for k in row))
    if shown is None or shown == every:
        return table
    where = f"in {full}" if full else "with --out FILE.json"
    return f"{table}\n({shown} of {every} metrics shown; all of them for every method {where})"


def format_inference(settings: dict[str, Any] | None) -> str | None:
    """One line naming the expert weights (and preference) an evaluation used, and where they came from; None
    for a model without experts (``settings`` from the trainer's ``inference_settings()``)."""
    if not settings:
        return None
    vector = lambda values: "[" + ", ".join(f"{v:.4g}" for v in values) + "]"  # noqa: E731
    line = f"Expert weights {vector(settings['weights'])} ({settings['weights_from']})"
    if settings.get("preference") is not None:
        line += f"; preference {vector(settings['preference'])} ({settings['preference_from']})"
    return line


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON; NaN/Inf become null so the file stays valid JSON."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path = Path(path)
    make_dirs(path.parent, "output directory")
    atomic_write_text(path, json.dumps(clean(data), indent=2) + "\n", "output file")


def check_output_path(path: str | Path, option: str = "--out", directory: bool = False) -> None:
    """Refuse an output path that cannot become a file (a directory, a file where its directory belongs) before the
    work that produces it; the write itself is atomic (see :func:`write_json`). With ``directory``: a path that
    cannot become a directory (a file there or above it)."""
    path = Path(path)
    if directory:
        blocker = first_file_in_path(path)
        if blocker is not None:
            raise StorageError(f"{option} {path}: {blocker} is a file; give a directory for the figures")
        return
    if path.is_dir():
        raise StorageError(f"{option} {path}: it is a directory; give a file name, e.g. {option} {path / 'out.json'}")
    blocker = first_file_in_path(path.parent)
    if blocker is not None:
        raise StorageError(f"{option} {path}: {blocker} is a file, not a directory")


def add_figures_argument(parser) -> None:
    """``--figures DIR`` of the evaluation scripts: PNG figures are written only when asked, into DIR."""
    parser.add_argument("--figures", metavar="DIR",
                        help="write the evaluation's figures as PNG files into this directory (created if needed)")


def save_figures(figures: dict[str, Any], directory: str | Path) -> list[Path]:
    """Save ``{tag: figure}`` as ``directory/<tag>.png`` (the directory created); returns the paths written."""
    from utils.plots import save_figure  # matplotlib only when figures are asked for

    make_dirs(Path(directory), "figures directory")
    return [save_figure(figure, Path(directory) / f"{tag}.png") for tag, figure in figures.items()]


def add_inference_arguments(parser) -> None:
    """``--preference`` and ``--weights`` of the evaluation scripts (multi-expert checkpoints)."""
    parser.add_argument("--preference", help="preference vector for hypernetwork experts, e.g. 0.1,0.1,0.8")
    parser.add_argument("--weights", help="expert aggregation weights, e.g. 0.2,0.3,0.5 (default: mean)")


def parse_vector(text: str | None, option: str) -> list[float] | None:
    """``"0.2,0.3,0.5"`` -> ``[0.2, 0.3, 0.5]``; non-negative, not all zero."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as err:
        raise ConfigError(f"{option} {text!r}: expected comma-separated numbers, e.g. {option} 0.2,0.3,0.5") from err
    if any(v < 0 for v in values) or sum(values) <= 0:
        raise ConfigError(f"{option} {text!r}: entries must be non-negative and not all zero")
    return values


def configure_inference(trainer, args) -> list[float] | None:
    """Apply ``--preference`` / ``--weights`` to ``trainer``; returns the preference in use (or None)."""
    return trainer.configure_inference(preference=parse_vector(args.preference, "--preference"),
                                       weights=parse_vector(args.weights, "--weights"))
