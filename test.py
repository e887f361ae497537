"""Evaluate a checkpoint on its config's test split.

    python test.py -r saved/models/<name>/<run_id>/model_best.pth [--out metrics.json]
                   [--data_dir DIR] [--save_dir DIR] [--set KEY=VALUE ...] [-d cpu]

Prints a table and, with --out, writes {"metrics": {...}, "n": N, "checkpoint": PATH}.
"""
from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

from parse_config import ConfigParser
from train import trainer_for_checkpoint
from utils import dist
from utils.checkpoint import load_checkpoint
from utils.cli import (
    add_inference_arguments,
    configure_inference,
    format_comparison,
    format_metrics,
    run_cli,
    write_json,
)
from utils.errors import ConfigError
from utils.plots import save_figure
from utils.registry import DATA_LOADERS


def _loader_reads_data_dir(checkpoint: str | None) -> bool:
    """Whether the checkpoint's data loader takes ``data_dir`` (then --data_dir replaces it in the config;
    otherwise, e.g. for a model trained on simulated spectra, the trainer reads the directory itself)."""
    if not checkpoint:
        return False
    spec = load_checkpoint(checkpoint).get("config", {}).get("data_loader", {})
    try:
        loader = DATA_LOADERS.get(spec.get("type"), ("data_loader", "type"))
    except ConfigError:
        return True  # a loader from a plugin (not imported yet): the config override reports a bad argument
    return "data_dir" in inspect.signature(loader).parameters


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ConfigParser.add_arguments(parser, training=False)
    parser.add_argument("--out", help="write the metrics as JSON to this file")
    parser.add_argument("--data_dir", help="evaluate on this data directory instead of the config's")
    parser.add_argument("--save_dir", help="directory for per-sample outputs (trainers that write them)")
    add_inference_arguments(parser)
    args = parser.parse_args(argv)
    if args.data_dir and _loader_reads_data_dir(args.resume):
        args.overrides.append(f"data_loader.args.data_dir={json.dumps(args.data_dir)}")
    config, trainer, state = trainer_for_checkpoint(args, "test.py")
    preference = configure_inference(trainer, args)
    result = trainer.test(output_dir=Path(args.save_dir) if args.save_dir else None, data_dir=args.data_dir)
    if not dist.is_main_process():
        return
    print(f"{config.name}: {args.resume} (epoch {state.get('epoch')}), test split of {result['n']} samples")
    print(format_metrics(result["metrics"]))
    if result.get("baselines"):
        print(format_comparison({"model": result["metrics"], **result["baselines"]}))
    if args.out:
        write_json(args.out, {"metrics": result["metrics"], "n": result["n"], "checkpoint": str(args.resume),
                              **({"preference": preference} if preference is not None else {}),
                              **{k: v for k, v in result.items() if k not in ("metrics", "n")}})
        print(f"wrote {args.out}")
        for tag, figure in trainer.figures(title=config.name).items():
            print(f"wrote {save_figure(figure, Path(args.out).with_name(f'{Path(args.out).stem}_{tag}.png'))}")


if __name__ == "__main__":
    run_cli(main)
