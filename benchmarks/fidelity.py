"""Fidelity benchmark: do the papers' orderings hold when every method's paper config is trained as users run it?

    python benchmarks/fidelity.py [--quick] [--epochs N] [--sets cifar10_like,cifar100_like] [--seed S]
                                  [--work DIR] [--out results.json]

For each generated set (``benchmarks/fidelity_data.py``: procedurally generated gratings x shapes x palettes
in torchvision's CIFAR layout, a balanced training pool that the loaders make long-tailed with the configs'
IR 100, a balanced test split) it trains, through ``train.main`` in-process with the config FILE and ``--set``
overrides exactly as a user would:

- ``softmax``: configs/baselines/cifar{10,100}_ir100_softmax.json
- ``stage1``: configs/lnr/cifar{10,100}_ir100_stage1_mixup.json, then from its ``model_best.pth``
  ``mislas`` (..._stage2_mislas.json) and ``lnr`` (..._stage2_lnr.json)
- ``sade``: configs/experts/cifar{10,100}_ir100_sade.json; ``prl``: configs/experts/cifar{10,100}_ir100_hyper.json

Only the data (``data_dir``, ``download false``, the generated set's size) and the schedule change: ``--epochs N``
sets every config's epochs to ``ceil(E * N / 200)`` (E its own epochs: 200 for stage 1 and the one-stage
methods, 10 for MiSLAS stage 2, 100 for LNR stage 2), but a stage 2 keeps at least ``min(E, 10)`` (it trains only
the classifier, so it is cheap, and one epoch of a few batches would re-learn nothing), and scales the milestones
by the same factor. The warm-up keeps its epochs (at most a quarter of the run): it is there for the first steps,
and the per-epoch warm-up scaled to one epoch would start at the full lr.
Checkpoints are scored with ``test_all.py``'s functions (``trainer_for_checkpoint``, ``evaluate_all``; the
PRL sweep through ``--preference``'s ``configure_inference``) and test-time training with ``test_training.main``
on the SADE checkpoint and configs/experts/test_time_cifar100.json (the CIFAR test-time recipe). Many/medium/few
are the MiSLAS class-index ranges for every method (CIFAR-10: [0,3) [3,7) [7,10); CIFAR-100: [0,36) [36,71)
[71,100)), so the methods are compared on the same classes whatever their configs' metrics say.

Claims (one PASS/FAIL row each, per set):

1. stage 1 at the paper lr does not diverge: no epoch's validation loss above 10x the first epoch's;
2. few-shot accuracy on the uniform split: Softmax < MiSLAS <= LNR;
3. SADE and PRL beat Softmax on backward50 by >= 10 points;
4. PRL's preference sweep (1,0,0) -> (0.5,0.5,0) -> (0,1,0) -> (0,0.5,0.5) -> (0,0,1) moves uniform few-shot
   accuracy monotonically (non-decreasing) without collapsing overall accuracy (every point within 10 points
   of the sweep's best);
5. test-time training (SADE) loses nothing on uniform (>= before - 0.5 points) and gains on backward50.

Runs are resumable: an invocation that is cut short (a session ends, Ctrl-C) leaves its runs' ``latest.pth``; the
next invocation with the same ``--work``, ``--epochs`` and ``--seed`` goes on from there (``train.py -r``) instead
of starting over, and a finished run (its ``done`` marker) is reused, so the full 200-epoch schedule can be
spread over several invocations.

``--quick`` (CI): the smallest set only (10 classes, 150 a class before IR 100, 40 test images a class) and a
short schedule; it asserts nothing itself, it prints the same table (tests/test_fidelity.py runs it and checks
the report's structure). Nothing here is a fixed expectation: every figure comes from the runs.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fidelity_data import write_set  # noqa: E402

SETS = {  # name -> generator arguments
    "cifar10_quick": {"num_classes": 10, "train_per_class": 150, "test_per_class": 40},
    "cifar10_like": {"num_classes": 10, "train_per_class": 500, "test_per_class": 100},
    "cifar100_like": {"num_classes": 100, "train_per_class": 100, "test_per_class": 20},
}
RANGES = {10: [[0, 3], [3, 7], [7, 10]], 100: [[0, 36], [36, 71], [71, 100]]}
SWEEP = [(1, 0, 0), (0.5, 0.5, 0), (0, 1, 0), (0, 0.5, 0.5), (0, 0, 1)]
PAPER_EPOCHS = 200
STAGE2_MIN_EPOCHS = 10
METHODS = ("softmax", "stage1", "mislas", "lnr", "sade", "prl")


def config_paths(num_classes: int) -> dict[str, Path]:
    c = f"cifar{num_classes}_ir100"
    return {"softmax": ROOT / f"configs/baselines/{c}_softmax.json",
            "stage1": ROOT / f"configs/lnr/{c}_stage1_mixup.json",
            "mislas": ROOT / f"configs/lnr/{c}_stage2_mislas.json",
            "lnr": ROOT / f"configs/lnr/{c}_stage2_lnr.json",
            "sade": ROOT / f"configs/experts/{c}_sade.json",
            "prl": ROOT / f"configs/experts/{c}_hyper.json",
            "ttt": ROOT / "configs/experts/test_time_cifar100.json"}


def scaled_epochs(config: dict, epochs: int) -> int:
    """``config``'s epochs on a schedule of ``epochs`` of the papers' 200 (a stage 2 keeps a few)."""
    own = config["trainer"]["args"]["epochs"]
    new = max(1, math.ceil(own * epochs / PAPER_EPOCHS))
    if own < PAPER_EPOCHS:  # a stage 2 (classifier only): cheap, and a one-epoch stage 2 would re-learn nothing
        new = max(new, min(own, STAGE2_MIN_EPOCHS))
    return new


def schedule_overrides(config: dict, epochs: int) -> list[str]:
    """``--set`` values that shorten ``config``'s schedule to ``epochs`` of the papers' 200, proportionally."""
    own, new = config["trainer"]["args"]["epochs"], scaled_epochs(config, epochs)
    sets = [f"trainer.args.epochs={new}"]
    sched = config.get("lr_scheduler") or {}
    args = sched.get("args") or {}
    if "milestones" in args:
        milestones = sorted({min(new - 1, max(1, round(m * new / own))) for m in args["milestones"]})
        sets.append(f"lr_scheduler.args.milestones={json.dumps(milestones)}")
    if args.get("warmup_epochs"):
        # not scaled: the warm-up protects the first steps whatever the schedule's length (scaled to one epoch, the
        # per-epoch warm-up would start at the full lr, i.e. vanish); only a short run shortens it, to a quarter
        warmup = min(args["warmup_epochs"], max(1, new // 4))
        sets.append(f"lr_scheduler.args.warmup_epochs={warmup}")
    if "total_epochs" in args:
        sets.append(f"lr_scheduler.args.total_epochs={new}")
    return sets


class Runner:
    """Trains and scores one set through the public entry points; keeps every figure for the report."""

    def __init__(self, name: str, data_dir: Path, work: Path, num_classes: int, epochs: int, seed: int,
                 device: str, verbose: bool):
        self.name, self.data_dir, self.work, self.num_classes = name, data_dir, work, num_classes
        self.epochs, self.seed, self.device, self.verbose = epochs, seed, device, verbose
        self.paths = config_paths(num_classes)
        self.run_id = f"fidelity_{name}_s{seed}"
        self.notes: dict[str, str] = {}

    def _quiet(self):
        return contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())

    def _run(self, method: str) -> tuple[dict, Path, Path]:
        """``method``'s config and this run's model and log directories (where train.py puts them)."""
        config = json.loads(self.paths[method].read_text())
        saved = self.work / "saved"
        return config, saved / "models" / config["name"] / self.run_id, saved / "log" / config["name"] / self.run_id

    def finished(self, method: str) -> Path | None:
        """``model_best.pth`` of a finished run of ``method`` on this set and seed, else None."""
        _, model_dir, _ = self._run(method)
        return model_dir / "model_best.pth" if (model_dir / "done").exists() else None

    def train(self, method: str, init_from: Path | None = None) -> Path:
        import train

        config, model_dir, log_dir = self._run(method)
        best, latest = model_dir / "model_best.pth", model_dir / "latest.pth"
        if best.exists() and (model_dir / "done").exists():  # a finished run of an earlier invocation
            return best
        if latest.exists() and self._resumable(latest, scaled_epochs(config, self.epochs)):
            # an invocation cut short (a session ends, Ctrl-C): go on from its last finished epoch, so that a
            # full-schedule run can be spread over several invocations
            argv = ["-r", str(latest), "-d", self.device]
        else:
            import shutil

            shutil.rmtree(model_dir, ignore_errors=True)
            shutil.rmtree(log_dir, ignore_errors=True)
            argv = self._fresh_argv(method, config, init_from)
        started = time.perf_counter()
        with self._quiet():
            train.main(argv)
        (model_dir / "done").write_text(f"{time.perf_counter() - started:.1f}\n")
        return best

    def _fresh_argv(self, method: str, config: dict, init_from: Path | None) -> list[str]:
        """train.py's arguments for a new run of ``method``: the config file, this set's data, the scaled schedule."""
        argv = ["-c", str(self.paths[method]), "--run-id", self.run_id, "--seed", str(self.seed), "-d", self.device,
                "--set", f"data_loader.args.data_dir={json.dumps(str(self.data_dir))}",
                "--set", "data_loader.args.download=false",
                "--set", f"trainer.args.save_dir={json.dumps(str(self.work / 'saved'))}",
                "--set", "trainer.args.tensorboard=false", "--set", "trainer.args.progress_bar=false"]
        for value in schedule_overrides(config, self.epochs):
            argv += ["--set", value]
        if init_from is not None:
            argv += ["--init-from", str(init_from)]
        return argv

    def _resumable(self, latest: Path, epochs: int) -> bool:
        """Whether ``latest`` is a checkpoint of this run's own schedule (``epochs``, seed and data), so that going
        on from it gives the run this invocation would train; any other (or unreadable) one is retrained."""
        from utils.checkpoint import load_checkpoint

        try:
            config = load_checkpoint(latest, require=("config",))["config"]
        except Exception:  # noqa: BLE001 (a checkpoint cut mid-write or of another version: train afresh)
            return False
        return (config.get("trainer", {}).get("args", {}).get("epochs") == epochs
                and config.get("seed") == self.seed
                and config.get("data_loader", {}).get("args", {}).get("data_dir") == str(self.data_dir))

    def train_log(self, method: str) -> str:
        log = self._run(method)[2] / "train.log"
        return log.read_text() if log.exists() else ""

    def score(self, checkpoint: Path, preference=None) -> dict:
        """test_all.py on ``checkpoint``: every split's many/medium/few/all (MiSLAS ranges) and per-class accuracy."""
        import torch

        from test_all import evaluate_all
        from train import trainer_for_checkpoint
        from utils.cli import configure_inference

        args = SimpleNamespace(resume=str(checkpoint), config=None, device=self.device, overrides=[], plugins=[],
                               preference=",".join(map(str, preference)) if preference else None, weights=None)
        with self._quiet():
            config, trainer, _ = trainer_for_checkpoint(args, "test_all.py")
            configure_inference(trainer, args)
            loader = config.build_data_loader(training=False, device=trainer.device)
            result = evaluate_all(trainer, loader, None, {"ranges": RANGES[self.num_classes]})
            trainer.close()
        uniform = torch.as_tensor(loader.test_agnostic_splits()["uniform"], dtype=torch.long)
        logits, targets = result["logits"][uniform], result["targets"][uniform]
        correct = (logits.argmax(1) == targets).double()
        per_class = [100 * float(correct[targets == c].mean()) for c in range(self.num_classes)]
        return {"splits": result["splits"], "per_class": per_class}

    def test_time(self, checkpoint: Path) -> dict:
        import test_training

        out = self.work / f"ttt_{self.run_id}.json"
        with self._quiet():
            test_training.main(["-c", str(self.paths["ttt"]), "-r", str(checkpoint), "-d", self.device,
                                "--out", str(out)])
        return json.loads(out.read_text())["splits"]


def _val_losses(log: str) -> list[float]:
    return [float(m) for m in re.findall(r"epoch \d+/\d+: .*?val_loss ([0-9.eE+-]+|nan|inf)", log)]


def run_set(name: str, args, results: dict) -> dict:
    spec = SETS[name]
    data_dir = Path(args.work) / "data" / name
    if not (data_dir / "README.txt").exists():
        write_set(data_dir, spec["num_classes"], spec["train_per_class"], spec["test_per_class"], seed=0)
    runner = Runner(name, data_dir, Path(args.work), spec["num_classes"], args.epochs, args.seed, args.device,
                    args.verbose)
    r: dict = {"set": name, **spec, "epochs": args.epochs, "seed": args.seed, "scores": {}, "errors": {}}
    results[name] = r

    def attempt(key, fn):
        started = time.perf_counter()
        try:
            value = fn()
            print(f"  [{name}] {key}: done in {time.perf_counter() - started:.0f} s", flush=True)
            return value
        except Exception as err:  # a method that fails is reported, the others still run
            r["errors"][key] = f"{type(err).__name__}: {err}"
            print(f"  [{name}] {key}: FAILED ({r['errors'][key][:300]})", flush=True)
            return None

    ckpt = {}
    for method in ("softmax", "stage1", "sade", "prl", "mislas", "lnr"):
        if method not in args.methods:  # trained by another invocation (or not at all): use it if it finished
            ckpt[method] = runner.finished(method)
        elif method in ("mislas", "lnr"):
            if ckpt["stage1"] is not None:
                ckpt[method] = attempt(f"train {method}", lambda m=method: runner.train(m, init_from=ckpt["stage1"]))
        else:
            ckpt[method] = attempt(f"train {method}", lambda m=method: runner.train(m))
    if args.train_only:
        return r
    for method, path in ckpt.items():
        if path is not None:
            score = attempt(f"score {method}", lambda p=path: runner.score(p))
            if score is not None:
                r["scores"][method] = score
    r["stage1_val_loss"] = _val_losses(runner.train_log("stage1"))
    lnr_log = runner.train_log("lnr")
    r["lnr_log"] = [re.sub(r"^.*? INFO ", "", line) for line in lnr_log.splitlines()
                    if "LNR z-scores" in line or "LNR flips" in line]
    if ckpt.get("prl") is not None:
        sweep = {}
        for pref in SWEEP:
            s = attempt(f"PRL preference {pref}", lambda p=pref: runner.score(ckpt["prl"], preference=p))
            if s is not None:
                sweep[",".join(map(str, pref))] = s["splits"]["uniform"]
        r["sweep"] = sweep
    if ckpt.get("sade") is not None:
        r["ttt"] = attempt("test-time training (SADE)", lambda: runner.test_time(ckpt["sade"]))
    r["claims"] = claims(r)
    return r


def claims(r: dict) -> list[tuple[str, str, str]]:
    """(claim, PASS/FAIL/n.a., evidence) rows from one set's figures."""
    rows = []
    s = r["scores"]

    def get(method, split, key):
        try:
            return s[method]["splits"][split][key]
        except KeyError:
            return None

    losses = r.get("stage1_val_loss") or []
    if losses:
        worst = max(losses)
        ok = all(math.isfinite(v) for v in losses) and worst <= 10 * losses[0]
        rows.append(("stage 1 at the paper lr: no val loss > 10x epoch 1", "PASS" if ok else "FAIL",
                     f"epoch 1 {losses[0]:.3g}, max {worst:.3g} (x{worst / max(losses[0], 1e-12):.1f})"))
    else:
        rows.append(("stage 1 at the paper lr: no val loss > 10x epoch 1", "n.a.", "stage 1 did not run"))
    few = {m: get(m, "uniform", "few") for m in ("softmax", "mislas", "lnr")}
    if None not in few.values():
        ok = few["softmax"] < few["mislas"] <= few["lnr"]
        rows.append(("few-shot (uniform): Softmax < MiSLAS <= LNR", "PASS" if ok else "FAIL",
                     f"{few['softmax']:.1f} / {few['mislas']:.1f} / {few['lnr']:.1f}"))
    else:
        rows.append(("few-shot (uniform): Softmax < MiSLAS <= LNR", "n.a.", f"missing: {few}"))
    base = get("softmax", "backward50", "all")
    for method, label in (("sade", "SADE"), ("prl", "PRL")):
        value = get(method, "backward50", "all")
        if base is None or value is None:
            rows.append((f"{label} beats Softmax on backward50 by >= 10", "n.a.", "missing run"))
        else:
            rows.append((f"{label} beats Softmax on backward50 by >= 10", "PASS" if value - base >= 10 else "FAIL",
                         f"{value:.1f} vs {base:.1f} ({value - base:+.1f})"))
    sweep = r.get("sweep") or {}
    if len(sweep) == len(SWEEP):
        fews = [v["few"] for v in sweep.values()]
        alls = [v["all"] for v in sweep.values()]
        monotone = all(b >= a for a, b in zip(fews, fews[1:]))
        kept = min(alls) >= max(alls) - 10
        rows.append(("PRL sweep: few-shot monotone, overall kept (within 10)", "PASS" if monotone and kept else
                     "FAIL", "few " + " -> ".join(f"{v:.1f}" for v in fews) + "; all "
                     + " -> ".join(f"{v:.1f}" for v in alls)))
    else:
        rows.append(("PRL sweep: few-shot monotone, overall kept (within 10)", "n.a.", "PRL did not run"))
    ttt = r.get("ttt")
    if ttt:
        u, b = ttt["uniform"], ttt["backward50"]
        ok = u["all"] >= u["before_all"] - 0.5 and b["all"] > b["before_all"]
        rows.append(("test-time training: uniform kept, backward50 gains", "PASS" if ok else "FAIL",
                     f"uniform {u['before_all']:.1f} -> {u['all']:.1f}; backward50 {b['before_all']:.1f} -> "
                     f"{b['all']:.1f}"))
    else:
        rows.append(("test-time training: uniform kept, backward50 gains", "n.a.", "test-time training did not run"))
    return rows


def report(r: dict) -> str:
    lines = [f"### {r['set']}: {r['num_classes']} classes, {r['train_per_class']} a class before IR 100, "
             f"{r['test_per_class']} test images a class; --epochs {r['epochs']}, seed {r['seed']}", "",
             "| method | uniform all | many | medium | few | forward50 | backward50 |", "|---|---|---|---|---|---|---|"]
    for method, s in r["scores"].items():
        u = s["splits"]["uniform"]
        cells = [u["all"], u["many"], u["medium"], u["few"], s["splits"]["forward50"]["all"],
                 s["splits"]["backward50"]["all"]]
        lines.append(f"| {method} | " + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " |")
    if r["num_classes"] <= 10 and r["scores"]:
        lines += ["", "Per-class accuracy on the uniform split (class 0 the largest):", "",
                  "| method | " + " | ".join(str(c) for c in range(r["num_classes"])) + " |",
                  "|---|" + "---|" * r["num_classes"]]
        for method in ("stage1", "mislas", "lnr", "softmax"):
            if method in r["scores"]:
                lines.append(f"| {method} | " + " | ".join(f"{v:.0f}" for v in r["scores"][method]["per_class"])
                             + " |")
    if r.get("lnr_log"):
        lines += ["", "LNR stage 2 printed:", ""] + [f"    {line}" for line in r["lnr_log"]]
    if r.get("stage1_val_loss"):
        lines += ["", "Stage-1 validation loss by epoch: " + ", ".join(f"{v:.3g}" for v in r["stage1_val_loss"])]
    lines += ["", "| claim | result | evidence |", "|---|---|---|"]
    lines += [f"| {c} | {res} | {ev} |" for c, res, ev in r["claims"]]
    if r["errors"]:
        lines += ["", "Errors:"] + [f"- {k}: {v[:500]}" for k, v in r["errors"].items()]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smallest set and a short schedule (CI)")
    parser.add_argument("--epochs", type=int,
                        help="epochs instead of the papers' 200, every schedule scaled by N/200 (default: 200, "
                             "the papers' own schedule; --quick 16)")
    parser.add_argument("--sets", help=f"comma-separated, of {', '.join(SETS)} (default: the two full sets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default="saved/fidelity", help="generated data, runs and checkpoints")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", help="write every figure as JSON")
    parser.add_argument("--verbose", action="store_true", help="show the training logs")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="methods to train (the others are used where an earlier invocation with the same "
                             "--work finished them): several invocations can train in parallel, then one scores")
    parser.add_argument("--train-only", action="store_true", help="train, do not score (see --methods)")
    args = parser.parse_args(argv)
    args.methods = args.methods.split(",")
    if set(args.methods) - set(METHODS):
        parser.error(f"unknown method(s) {sorted(set(args.methods) - set(METHODS))}; choose from {METHODS}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.epochs is None:
        args.epochs = 16 if args.quick else PAPER_EPOCHS
    names = ["cifar10_quick"] if args.quick else (args.sets.split(",") if args.sets else ["cifar10_like",
                                                                                          "cifar100_like"])
    unknown = [n for n in names if n not in SETS]
    if unknown:
        parser.error(f"unknown set(s) {unknown}; choose from {', '.join(SETS)}")
    os.makedirs(args.work, exist_ok=True)
    started = time.perf_counter()
    results: dict = {}
    for name in names:
        print(f"== {name} ==", flush=True)
        run_set(name, args, results)
    elapsed = time.perf_counter() - started
    if args.train_only:
        return results
    print(f"\n## Fidelity ({'quick' if args.quick else 'full'} mode, {elapsed:.0f} s)\n")
    for r in results.values():
        print(report(r) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps({"elapsed_s": elapsed, "results": results}, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
