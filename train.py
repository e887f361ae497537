"""Train a model described by a JSON config.

    python train.py -c configs/quickstart_digits_lt.json [--epochs 3] [--threads 1] [--run-id ID]
    python train.py -r saved/models/<name>/<run_id>/latest.pth        # resume the same run
    torchrun --nproc_per_node 2 train.py -c CONFIG                      # DistributedDataParallel
    python train.py --list [models|data_loaders|losses|metrics|trainers|optimizers|schedulers]
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import json

# Start-up imports nothing heavy: -h, --list and a bad config are answered before torch loads (utils/registry.py);
# torch and the components come with the first registry look-up, utils.dist and utils.seed where they are used.
from parse_config import ConfigParser, apply_override, import_plugins
from utils.cli import display_path, format_result, note_resumable, run_cli, script_command
from utils.errors import ConfigError
from utils.registry import DATA_LOADERS, REGISTRIES


def build_trainer(config: ConfigParser):
    """Seed, then build the configured trainer (which builds data, model, loss, ...). Writes nothing."""
    from utils.seed import seed_everything

    trainer_args = config["trainer"].get("args") or {}
    seed_everything(config.seed, deterministic=bool(trainer_args.get("deterministic", False)))
    return config.build("trainer", config=config)


def trainer_for_checkpoint(args, script: str, data_dir: str | None = None, data_dir_required: bool = False):
    """For evaluation scripts: the config stored in checkpoint ``args.resume`` (with ``--set`` overrides),
    its trainer, and the checkpoint's weights loaded. Returns ``(config, trainer, checkpoint)``.

    ``data_dir`` replaces the config's ``data_loader.args.data_dir`` when its loader takes one (so a test
    machine need not have the training data where the config says); other loaders keep their data, and the
    trainer's ``test(data_dir=...)`` decides what the directory means (the NMR denoiser reads it itself), unless
    ``data_dir_required``: then such a loader is an error (see :func:`with_data_dir`).
    """
    if not args.resume:
        raise ConfigError(f"{script} needs a checkpoint: -r saved/models/<name>/<run_id>/model_best.pth")
    if args.config:
        raise ConfigError(f"{script} takes the config from the checkpoint; change values with --set KEY=VALUE")
    args.overrides.append("trainer.args.tensorboard=false")
    config = with_data_dir(ConfigParser.from_args(args, evaluation=True), data_dir, script, required=data_dir_required)
    trainer = build_trainer(config)
    return config, trainer, trainer.load_weights(args.resume)


def with_data_dir(config: ConfigParser, data_dir: str | None, script: str, required: bool = False) -> ConfigParser:
    """``config`` with ``data_loader.args.data_dir`` set to ``data_dir`` (``--data_dir``) when its loader takes one.

    A loader without a ``data_dir`` argument keeps its data; with ``required`` (scripts that only read the data
    through the loader: test_all.py, test_training.py) that is an error rather than a silently ignored option.
    """
    if data_dir is None:
        return config
    loader = DATA_LOADERS.get(config["data_loader"]["type"])
    if "data_dir" not in inspect.signature(loader).parameters:
        if required:
            raise ConfigError(f'{script} --data_dir {data_dir}: {config.source}: config["data_loader"]["type"] '
                              f"{config['data_loader']['type']} reads no data directory (it has no data_dir "
                              "argument); leave --data_dir out")
        return config
    values = config.config
    apply_override(values, f"data_loader.args.data_dir={json.dumps(str(data_dir))}")
    return ConfigParser(values, source=config.source, resume=config.resume, evaluation=config.evaluation)


def list_registered(kind: str, plugins: bool = False) -> str:
    """``--list KIND``: the registered names with the first line of their docs. Without ``plugins`` they come from the
    sources (utils/registry_index.py, no torch import: a fraction of a second); plugins need the real registries."""
    key = kind.lower().rstrip("s") if kind != "all" else "all"
    chosen = {name: reg for name, reg in REGISTRIES.items() if kind == "all" or name.rstrip("s") == key}
    if not chosen:
        close = difflib.get_close_matches(kind.lower(), list(REGISTRIES), n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"--list {kind}: unknown kind.{hint} Choose from {', '.join(REGISTRIES)}")
    from utils.registry_index import static_entries

    index = None if plugins else static_entries()
    lines = []
    for name, registry in chosen.items():
        lines.append(f"{name} ({registry.name}: {registry.contract})")
        rows = sorted(index[registry.name].items()) if index is not None else registry.describe()
        for entry, doc in rows:
            lines.append(f"  {entry:<28} {doc}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ConfigParser.add_arguments(parser, training=True)
    parser.add_argument("--list", nargs="?", const="all", metavar="KIND",
                        help="list registered names with one line of documentation, then exit")
    args = parser.parse_args(argv)
    if args.list:
        import_plugins(args.plugins, where=("--plugin",))
        print(list_registered(args.list, plugins=bool(args.plugins)))
        return
    config = ConfigParser.from_args(args)
    from utils import dist

    trainer = build_trainer(config)
    if config.resume is not None:
        trainer.resume(config.resume)
    config.prepare_run_dirs()
    note_resumable(config.model_dir / "latest.pth")  # what a Ctrl-C tells the user to resume from
    try:
        trainer.train()
        if trainer.test_after_training:
            best = config.model_dir / "model_best.pth"
            if best.exists():
                trainer.load_weights(best)
            which = "model_best.pth" if best.exists() else "the final weights"
            if dist.is_main_process():
                trainer.logger.info(f"Testing {which} on the test split ...")
            result = trainer.test()
            if dist.is_main_process():
                table = format_result(result, trainer.table_columns, "the JSON of test.py --out")
                what = result.get("description")
                trainer.logger.info((f"Test split, {which}: {what[0].lower()}{what[1:]}" if what
                                     else f"Test split ({result['n']} samples), {which}:") + f"\n{table}")
                for tag, figure in trainer.figures(title="test").items():
                    trainer.writer.figure(f"test/{tag}", figure, trainer.last_epoch)
                if best.exists():
                    trainer.logger.info(f"Evaluate again with: {script_command('test.py', '-r', display_path(best))}")
    finally:  # also when training fails (a non-finite loss, a full disk): no open log file or event writer
        trainer.close()


if __name__ == "__main__":
    run_cli(main)
