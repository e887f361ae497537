"""Test-time training: adapt a multi-expert checkpoint to each unlabelled test distribution, then score it.

    python test_training.py -c configs/experts/test_time_quickstart_digits.json -r CKPT [--out results.json]
                            [--data_dir DIR] [--set KEY=VALUE ...] [-d cpu]

The test-time config names the ``TestTimeTrainer`` and its optimizer; everything else (model, data,
metrics) comes from the checkpoint's config, its sections overridden by the file where both have them.
``--set`` then changes the merged config (``--set trainer.args.epochs=1``, ``--set data_loader.args.batch_size=64``)
and ``--data_dir`` points the data loader at another directory, as in test.py and test_all.py.
For every split (forward50 ... uniform ... backward50) the expert weights (and, for hypernetwork models,
the preference) are learned without labels by making predictions on two augmented views agree, then the
split is scored. A test set with unequal class counts is split as test_all.py does (from the smallest class)
and the images each split used are printed. It says what is running: the feature pass, one line per split with its
elapsed time, and a progress bar per split on a terminal (stderr); under torchrun the result is one process's. Prints
the table of test_all.py with the learned values at the end; --out
writes {"splits": {name: {"n", "many", "medium", "few", "all", "before_all", "unguarded_all", "accepted", "weights",
"preference"}},
"shot_groups": TEXT, "test_set": {...}, ...}.
"""
from __future__ import annotations

import argparse
import copy

# torch (utils.checkpoint, utils.dist), data_loader and model are imported in main() where they are needed, so that
# -h and argument errors come before they load (seconds)
from parse_config import (
    ConfigParser,
    apply_override,
    checkpoint_plugins,
    deep_merge,
    load_json,
)
from test_all import format_table, shot_settings
from train import build_trainer, with_data_dir
from utils.cli import check_output_path, run_cli, write_json
from utils.errors import ConfigError
from utils.process import launch_rank, resolve_threads


def merged_config(test_time: dict, checkpoint_config: dict) -> dict:
    """The checkpoint's config with the test-time file merged over it. The trainer, optimizer and scheduler come
    from the test-time file alone: training's mean nothing to the adaptation (a test-time file without an
    optimizer is an error, not a silent reuse of the training one)."""
    base = {k: v for k, v in checkpoint_config.items()
            if k not in ("trainer", "init_from", "optimizer", "lr_scheduler")}
    merged = deep_merge(base, {k: v for k, v in test_time.items() if k != "trainer"})
    merged["trainer"] = trainer = copy.deepcopy(test_time["trainer"])
    if isinstance(trainer, dict):  # otherwise ConfigParser names the bad value
        if trainer.get("args") is None:  # "args": null means no arguments, as everywhere in a config
            trainer["args"] = {}
        if isinstance(trainer["args"], dict):
            trainer["args"].setdefault("tensorboard", False)
    return merged


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ConfigParser.add_arguments(parser, training=False)  # -c, -r, -d, --set, --plugin as in test.py / test_all.py
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--data_dir", help="adapt and evaluate on this data directory instead of the config's")
    args = parser.parse_args(argv)
    if not args.config or not args.resume:
        raise ConfigError("test_training.py needs a test-time config and a multi-expert checkpoint: -c "
                          "configs/experts/test_time_<dataset>.json -r saved/models/<name>/<run_id>/model_best.pth")
    if args.out:
        check_output_path(args.out)
    test_time = load_json(args.config)
    if "trainer" not in test_time:
        raise ConfigError(f'{args.config}: config["trainer"]: missing; a test-time config needs a "trainer" section '
                          "naming TestTimeTrainer")
    from utils.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(args.resume, require=("model", "config"))
    named = args.plugins + [p for p in test_time.get("plugins") or [] if isinstance(p, str)]
    checkpoint_plugins(checkpoint["config"], named, args.resume)
    config_dict = merged_config(test_time, checkpoint["config"])
    if args.device and isinstance(config_dict["trainer"], dict) and isinstance(config_dict["trainer"]["args"], dict):
        config_dict["trainer"]["args"]["device"] = args.device
    for assignment in args.overrides:
        apply_override(config_dict, assignment)
    if args.plugins:
        config_dict["plugins"] = list(config_dict.get("plugins", [])) + [
            p for p in args.plugins if p not in config_dict.get("plugins", [])]
    threads_note = resolve_threads(config_dict, args.threads)  # --threads, else the checkpoint's count
    config = ConfigParser(config_dict, source=f"{args.resume} + {args.config}")
    if threads_note and launch_rank() == 0:
        print(threads_note)
    config.apply_threads()
    config = with_data_dir(config, args.data_dir, "test_training.py", required=True)
    trainer = build_trainer(config)
    trainer.load_weights(args.resume)
    if not hasattr(trainer, "adapt_all"):
        raise ConfigError(f'{args.config}: config["trainer"]["type"] must be a test-time trainer such as '
                          f"TestTimeTrainer, got {config['trainer']['type']}")
    shot_args = shot_settings(config)
    splits = trainer.adapt_all(shot_args)
    from data_loader.test_agnostic import format_split_report
    from model.metric import describe_shot_groups
    from utils.dist import is_main_process

    if not is_main_process():  # under torchrun every rank holds the same results: rank 0 reports
        return
    shot_groups = describe_shot_groups(trainer.cls_num_list, shot_args)
    print(f"{config.name}: {args.resume}, test-time training ({trainer.protocol}, {trainer.epochs} epochs, "
          f"stop below weight {trainer.min_weight}); labels used only for scoring")
    print(format_split_report(trainer.test_set))
    print(format_table(splits, shot_groups))
    # "unguarded": the adaptation before the guard; "kept": the guard refused it and the model's own combination
    # was scored
    print(f"{'split':<12}{'before':>17}{'adapted':>10}{'unguarded':>11}  weights / preference")
    for name, r in splits.items():
        print(f"{name:<12}{r['before_all']:>17.2f}{r['all']:>10.2f}{r['unguarded_all']:>11.2f}  {r['weights']}"
              + (f" / {r['preference']}" if r["preference"] is not None else "")
              + ("" if r["accepted"] else "  (kept: the guard refused the adaptation)"))
    if args.out:
        write_json(args.out, {"splits": splits, "checkpoint": str(args.resume), "config": args.config,
                              "shot_groups": shot_groups, "test_set": trainer.test_set})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
