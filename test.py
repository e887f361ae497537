"""Evaluate a checkpoint on its config's test split.

    python test.py -r saved/models/<name>/<run_id>/model_best.pth [--out metrics.json] [--figures DIR]
                   [--data_dir DIR] [--save_dir DIR] [--set KEY=VALUE ...] [-d cpu]

Prints what was evaluated, the expert weights and preference of a multi-expert model, and a table (a model
compared with baselines, as the NMR denoiser is: one row per method over a few columns). With --out, writes
{"metrics": {...}, "n": N, "checkpoint": PATH, ...} with every metric; --figures DIR writes the trainer's figures
(reliability diagram and per-class accuracy, or denoised spectra) as PNG files in DIR. Nothing else is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

# nothing imported here loads torch, so -h and argument errors come at once; it loads with the checkpoint
from parse_config import ConfigParser
from train import trainer_for_checkpoint
from utils.cli import (
    add_figures_argument,
    add_inference_arguments,
    check_output_path,
    configure_inference,
    format_inference,
    format_result,
    run_cli,
    save_figures,
    write_json,
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ConfigParser.add_arguments(parser, training=False)
    parser.add_argument("--out", help="write the metrics as JSON to this file")
    parser.add_argument("--data_dir", help="evaluate on this data directory instead of the config's")
    parser.add_argument("--save_dir", help="directory for per-sample outputs (trainers that write them)")
    add_inference_arguments(parser)
    add_figures_argument(parser)
    args = parser.parse_args(argv)
    if args.out:
        check_output_path(args.out)  # before the evaluation, not after it
    if args.figures:
        check_output_path(args.figures, "--figures", directory=True)
    config, trainer, state = trainer_for_checkpoint(args, "test.py", data_dir=args.data_dir)
    from utils import dist

    preference = configure_inference(trainer, args)
    settings = trainer.inference_settings()
    if dist.is_main_process():  # what runs, before the evaluation (which may take minutes)
        print(f"{config.name}: {args.resume} (epoch {state.get('epoch')}): evaluating on "
              + (f"{args.data_dir} ..." if args.data_dir else "the test split ..."), flush=True)
        if format_inference(settings):
            print(format_inference(settings))
    result = trainer.test(output_dir=Path(args.save_dir) if args.save_dir else None, data_dir=args.data_dir)
    if not dist.is_main_process():
        return
    what = result.get("description")  # what was evaluated, in words (the NMR denoiser's files or test ladders)
    print(f"{what}:" if what else f"Test split of {result['n']} samples:")
    print(format_result(result, trainer.table_columns, args.out))
    if args.out:
        write_json(args.out, {"metrics": result["metrics"], "n": result["n"], "checkpoint": str(args.resume),
                              **({"preference": preference} if preference is not None else {}),
                              **({"weights": settings["weights"]} if settings else {}),
                              **{k: v for k, v in result.items() if k not in ("metrics", "n")}})
        print(f"wrote {args.out}")
    if args.figures:
        for written in save_figures(trainer.figures(title=config.name), args.figures):
            print(f"wrote {written}")


if __name__ == "__main__":
    run_cli(main)
