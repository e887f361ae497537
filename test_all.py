"""Score a checkpoint on every test class distribution (the test-agnostic protocol of LADE/SADE/PRL).

    python test_all.py -r saved/models/<name>/<run_id>/model_best.pth [--out results.json] [--figures DIR]
                       [--data_dir DIR] [--preference a,b,c] [--weights a,b,c] [--set KEY=VALUE ...] [-d cpu]

The model runs once over the full test set; every split (forward50 ... uniform ... backward50) is
scored from those logits by index. A test set whose classes have unequal counts (52 to 55 images) is
scored on splits drawn from the smallest count, and the images each split used are printed. Many/medium/few
use the training class counts (the thresholds or class ranges of the config's shot_accuracy metric, else
the dataset family's definition); the table's footnote names them. A multi-expert model's expert weights
and preference are printed above the table. --out writes {"splits": {name: {"n", "many", "medium", "few", "all"}},
"preference": [...] or null, "weights": [...] or null, "shot_groups": TEXT, "test_set": {"n", "per_class",
"balanced", "splits": {name: {"n", "per_class"}}}}; --figures DIR writes a reliability diagram and a per-class
accuracy plot of the uniform split, DIR/reliability.png and DIR/class_accuracy.png. Nothing else is written.
"""
from __future__ import annotations

import argparse
from typing import Any

# torch, data_loader and model are imported in the functions that use them, so that -h and argument errors come
# before they load (seconds); test_training.py imports this module too
from parse_config import ConfigParser
from train import trainer_for_checkpoint
from utils.cli import (
    add_figures_argument,
    add_inference_arguments,
    check_output_path,
    configure_inference,
    format_inference,
    run_cli,
    save_figures,
    write_json,
)
from utils.errors import ConfigError
from utils.plots import metric_figures
from utils.registry import DATA_LOADERS


def shot_settings(config: ConfigParser) -> dict[str, Any]:
    """many/few thresholds or ranges of the config's shot_accuracy metric; else the data loader's family
    definition (``shot_groups`` of CIFAR10LT, ImageNetLT, ...); else ShotAccuracy's (> 100, < 20)."""
    for spec in config.get("metrics", []):
        if spec.get("type") == "shot_accuracy":
            return dict(spec.get("args") or {})
    loader = DATA_LOADERS.get(config["data_loader"]["type"])
    return dict(getattr(loader, "shot_groups", None) or {})


def evaluate_all(trainer, loader, augmented_loader=None, shot_args: dict | None = None) -> dict[str, Any]:
    """Scores of every test-agnostic split of ``loader`` from one pass of the model.

    With ``augmented_loader`` (SADE's quirk, a switch of the CIFAR loaders) the non-uniform splits are
    scored on one pass over training-augmented test images instead.
    """
    import torch

    from data_loader.test_agnostic import describe_splits
    from model.metric import describe_shot_groups, split_scores

    shot_args = shot_args or {}
    logits, targets = trainer.predict(loader)
    augmented = trainer.predict(augmented_loader)[0] if augmented_loader is not None else None
    splits = loader.test_agnostic_splits()
    results = {}
    for name, index in splits.items():
        index = torch.as_tensor(index, dtype=torch.long)
        source = logits if augmented is None or name == "uniform" else augmented
        results[name] = split_scores(source[index], targets[index], loader.cls_num_list, shot_args)
    # the "uniform" split's logits and labels (the figures): the whole set, or its subsample when unbalanced
    uniform = torch.as_tensor(splits["uniform"], dtype=torch.long) if "uniform" in splits else slice(None)
    return {"splits": results, "logits": logits, "targets": targets,
            "uniform": {"logits": logits[uniform], "targets": targets[uniform]},
            "test_set": describe_splits(targets.numpy(), splits, loader.num_classes),
            "shot_groups": describe_shot_groups(loader.cls_num_list, shot_args)}


def format_table(splits: dict[str, dict[str, Any]], footnote: str | None = None) -> str:
    """test_all's table: one row per split (n, many, medium, few, all); ``footnote`` (the many/medium/few
    definition) goes under it."""
    rows = [f"{'split':<12}{'n':>7}{'many':>9}{'medium':>9}{'few':>9}{'all':>9}"]
    for name, r in splits.items():
        cells = ["-" if r[k] is None else f"{r[k]:.2f}" for k in ("many", "medium", "few", "all")]
        rows.append(f"{name:<12}{r['n']:>7}" + "".join(f"{c:>9}" for c in cells))
    if footnote:
        rows.append(footnote)
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ConfigParser.add_arguments(parser, training=False)
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--data_dir", help="evaluate on this data directory instead of the config's")
    add_inference_arguments(parser)
    add_figures_argument(parser)
    args = parser.parse_args(argv)
    if args.out:
        check_output_path(args.out)
    if args.figures:
        check_output_path(args.figures, "--figures", directory=True)
    config, trainer, _ = trainer_for_checkpoint(args, "test_all.py", data_dir=args.data_dir)
    preference = configure_inference(trainer, args)
    settings = trainer.inference_settings()
    loader = config.build_data_loader(training=False, device=trainer.device)
    if not hasattr(loader, "test_agnostic_splits") or not hasattr(trainer, "predict"):
        raise ConfigError(f"{config.source}: test_all.py needs a classification checkpoint whose data loader "
                          f"defines test-agnostic splits; {config['data_loader']['type']} / "
                          f"{config['trainer']['type']} do not")
    augmented = loader.augmented_test_loader() if getattr(loader, "augmented_split_scoring", False) else None
    print(f"{config.name}: {args.resume}: evaluating on the {len(loader.dataset):,} test images (one pass"
          + (", and one over augmented images" if augmented is not None else "") + ") ...", flush=True)
    if format_inference(settings):
        print(format_inference(settings))
    result = evaluate_all(trainer, loader, augmented, shot_settings(config))
    from data_loader.test_agnostic import format_split_report

    print("Non-uniform splits scored on augmented images (SADE protocol)" if augmented is not None
          else "Deterministic test transform on every split")
    print(format_split_report(result["test_set"]))
    print(format_table(result["splits"], result["shot_groups"]))
    if args.out:
        write_json(args.out, {"splits": result["splits"], "preference": preference,
                              "weights": settings["weights"] if settings else None, "checkpoint": str(args.resume),
                              "shot_groups": result["shot_groups"], "test_set": result["test_set"]})
        print(f"wrote {args.out}")
    if args.figures:
        figures = uniform_figures(result["uniform"], loader.cls_num_list, shot_settings(config), config.name)
        for written in save_figures(figures, args.figures):
            print(f"wrote {written}")


def uniform_figures(predictions: dict, cls_num_list, shot_args: dict, title: str) -> dict:
    from model.metric import CalibrationError, ShotAccuracy

    metrics = [CalibrationError(), ShotAccuracy(cls_num_list, **shot_args)]
    for metric in metrics:
        metric.update(predictions["logits"], predictions["targets"])
    return metric_figures(metrics, cls_num_list, title)


if __name__ == "__main__":
    run_cli(main)
