"""Write simulated ladders as a directory of ``.npz`` files that ``NMRDirectory`` and ``test.py --data_dir`` read:

    python benchmarks/write_simulated_ladders.py OUT_DIR [--n 64] [--seed 0] [--snr 10] [--no-clean]
                                                 [--set KEY=VALUE ...]      # SimulationSettings fields (JSON values)

Each file holds ``spectra`` ``(K+1, L)`` float32 by rising SNR, ``ppm`` ``(L,)`` and, unless ``--no-clean``, ``clean``
``(L,)`` (level 0's scale and axis, used only for scoring). Useful to try fine-tuning on a regime the pretrained
model did not see, or to benchmark a denoiser on a fixed set.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_loader.nmr.simulate import SimulationSettings, simulate_ladders  # noqa: E402


def write_ladders(out: str | Path, settings: SimulationSettings, n: int, seed: int, snr: float | None = None,
                  clean: bool = True, prefix: str = "ladder") -> list[Path]:
    """Simulate ``n`` ladders and write ``out/<prefix>_NNNNN.npz``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = simulate_ladders(settings, n, seed, snr=snr)
    ppm = data["ppm"].double().numpy()
    paths = []
    for i in range(n):
        arrays = {"spectra": data["spectra"][i].numpy(), "ppm": ppm}
        if clean:
            arrays["clean"] = data["clean"][i].numpy()
        paths.append(out / f"{prefix}_{i:05d}.npz")
        np.savez(paths[-1], **arrays)
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snr", type=float, default=None, help="level-0 max/σ of every ladder (default: drawn)")
    parser.add_argument("--no-clean", action="store_true", help="leave the clean spectrum out (real-data-like)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    values = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        values[key] = json.loads(value)
    settings = SimulationSettings.from_dict(values)
    paths = write_ladders(args.out, settings, args.n, args.seed, args.snr, clean=not args.no_clean)
    print(f"wrote {len(paths)} ladders of {settings.levels} x {settings.length} points to {args.out}")


if __name__ == "__main__":
    main()
