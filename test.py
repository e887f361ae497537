"""Evaluate a checkpoint on its config's test split.

    python test.py -r saved/models/<name>/<run_id>/model_best.pth [--out metrics.json]
                   [--data_dir DIR] [--save_dir DIR] [--set KEY=VALUE ...] [-d cpu]

Prints a table and, with --out, writes {"metrics": {...}, "n": N, "checkpoint": PATH}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

# nothing imported here loads torch, so -h and argument errors come at once; it loads with the checkpoint
from parse_config import ConfigParser
from train import trainer_for_checkpoint
from utils.cli import (
    add_inference_arguments,
    check_output_path,
    configure_inference,
    format_comparison,
    format_metrics,
    run_cli,
    write_json,
)
from utils.plots import save_figure


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ConfigParser.add_arguments(parser, training=False)
    parser.add_argument("--out", help="write the metrics as JSON to this file")
    parser.add_argument("--data_dir", help="evaluate on this data directory instead of the config's")
    parser.add_argument("--save_dir", help="directory for per-sample outputs (trainers that write them)")
    add_inference_arguments(parser)
    args = parser.parse_args(argv)
    if args.out:
        check_output_path(args.out)  # before the evaluation, not after it
    config, trainer, state = trainer_for_checkpoint(args, "test.py", data_dir=args.data_dir)
    preference = configure_inference(trainer, args)
    result = trainer.test(output_dir=Path(args.save_dir) if args.save_dir else None, data_dir=args.data_dir)
    from utils import dist

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
