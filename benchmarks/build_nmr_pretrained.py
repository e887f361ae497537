"""Build the shipped general pretrained NMR denoiser in one command (CPU, minutes):

    python benchmarks/build_nmr_pretrained.py [--run-id pretrained] [--out pretrained/nmr_unet_general.pth]
                                              [--set KEY=VALUE ...] [-d cpu]

It trains ``configs/nmr/pretrained_general.json`` (``python train.py -c ... --run-id RUN``, which also prints the
test table on held-out 1H ladders), then writes the best checkpoint's weights and config — without the optimizer,
scheduler and RNG state, which only resuming needs — to ``--out``. The result loads wherever a training checkpoint
does: ``python test.py -r pretrained/nmr_unet_general.pth [--data_dir DIR --save_dir OUT]`` and
``python train.py -c configs/nmr/finetune_directory.json --init-from pretrained/nmr_unet_general.pth``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from parse_config import ConfigParser, apply_override, load_json  # noqa: E402
from utils.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

CONFIG = ROOT / "configs" / "nmr" / "pretrained_general.json"
KEPT = ("epoch", "arch", "model", "config", "run_id", "monitor_best", "trainer_state")


def strip_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Copy checkpoint ``source`` to ``target`` with only what evaluation and ``--init-from`` read (``KEPT``)."""
    state = load_checkpoint(source)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint({k: state[k] for k in KEPT if k in state}, target)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-id", default="pretrained", help="run directory under saved/models/<name>/")
    parser.add_argument("--out", default=str(ROOT / "pretrained" / "nmr_unet_general.pth"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed to train.py (repeatable)")
    parser.add_argument("-d", "--device", default="cpu")
    args = parser.parse_args(argv)
    started = time.time()
    train_args = ["-c", str(CONFIG), "--run-id", args.run_id, "-d", args.device]
    for override in args.overrides:
        train_args += ["--set", override]
    train.main(train_args)
    values = load_json(CONFIG)
    for override in args.overrides:        # the run directory depends on name and save_dir, which --set may change
        apply_override(values, override)
    config = ConfigParser(values, source=str(CONFIG), run_id=args.run_id)
    best = config.model_dir / "model_best.pth"
    out = strip_checkpoint(best, args.out)
    print(f"wrote {out} ({out.stat().st_size / 2 ** 20:.2f} MiB) from {best} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
