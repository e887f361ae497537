"""Side by side with a peer package: our U-Net, nmrdenoise's autoencoder and its stationary-wavelet denoiser,
Savitzky-Golay and matched apodisation, on the same spectra, scored with ``model.nmr_metrics``.

    pip install nmrdenoise PyWavelets h5py        # the peer's runtime needs; not a project dependency
    python benchmarks/nmr_peer.py --checkpoint saved/models/<name>/<run>/model_best.pth \\
        [--real-dir /work/realdata/pkgfids] [--n-sim 64] [--sim-snr 10] [--out results.json] [-d cpu]

Without nmrdenoise (or PyWavelets) installed the peer rows are skipped with a message and the rest still runs;
without ``--checkpoint`` the U-Net row is skipped.

Data:

* (a) simulated held-out ladders from ``data_loader.nmr.simulate`` with the simulation settings of
  ``configs/nmr/quickstart_simulated.json`` (first-order ¹H multiplets of Voigt lines, 2,048 points, K+1 = 4
  levels, T = 2) at level-0 max/σ = ``--sim-snr`` (10, as that config's test split), drawn with ``--sim-seed``
  (not a training seed), scored against the noise-free spectrum;
* (b) every ``--real-dir`` of ladders (``*.npz`` with ``spectra``, ``ppm``, ``clean``; see
  ``benchmarks/nmr_real_data.py``), scored against their ``clean`` (an independent high-SNR reference);
* (c) every ``--repeat-pairs`` directory (``nmr_real_data.py --repeats``): its ``realnoise_snr*/`` ladders (real
  signal + real receiver noise, ``clean`` = the real spectrum) scored as (b), and its ``pair_*.npz`` repeat pairs
  scored by Noise2Noise (``model.nmr_equivalent.noise2noise_gain``: x1's windows denoised, x2 in place of a
  reference; unbiased only for true repeats of one tube, which the table header reports with the pairs' signal
  mismatch).

Every method denoises level 0. Rows (``evaluate_methods``, every method on the same masks, threshold and windows):
``input``, ``savgol`` (11 points, cubic), ``apodisation`` (exponential, matched to the reference's median FWHM: it
uses the reference, so it is an oracle linewidth), ``zeros`` (the flat line: the L2 and equivalent gain of erasing
everything, the bar any L2-based figure must clear on sparse spectra at low SNR), ``unet``, ``nmrdenoise_ae``,
``nmrdenoise_swt``.

**Equivalent SNR gain** (``model.nmr_equivalent``): per ladder, the raw levels' L2 to the reference against their
block counts (``blocks.json`` of the directory, else ``T^(2k)``) gives the sqrt(n) curve with its floor; a method's
output L2 on level 0 converts to the number of raw blocks ``n*`` it is worth, and the gain is ``sqrt(n*)``. The
table shows the median over ladders and how many beat the curve's floor (``> floor``: closer to the reference than
any raw average can get; counted, no number). It is given twice: from the L2 over the whole spectrum, and from the
L2 on the peak mask only (``l2_peak``, the mask ``evaluate_methods`` derives from the reference and the input, the
raw curve measured on the same points). On sparse spectra at low SNR the whole-spectrum figure rewards erasing:
the ``zeros`` row shows what a flat line scores. The peak-mask figure does not, since erasing a peak costs its
full height there. Simulated levels carry per-level scale, shift, phase and baseline
errors, so their raw curve is measured on the levels aligned and rescaled by ``data_loader.nmr.fusion``.

**How the peer is called** (read from nmrdenoise 0.3.6's ``core.py``):

* Autoencoder: ``AE_denoise.Autoencoder`` with the shipped state dict, loaded ONCE with ``weights_only=True``
  (``denoise_component`` rebuilds and reloads the model on every call). Its preprocessing is kept: each spectrum is
  divided by max|x| and multiplied back (the output is a tanh, so it cannot exceed ±max|x|). Quirk: the decoder's
  last convolution has no padding, so for lengths L with L mod 8 in {0, 7} the model returns fewer than L points
  (2,046 for 2,048). Here the input is right-padded with 8 edge values and the output cropped to L; the output is
  aligned with the input (offset 0, checked on Lorentzians), so no shift is needed. Batched, in float32.
* Wavelet: ``Desperate().wavelet_denoise(level, data, region_spec)`` with its defaults (``bior2.4``, ``mod``
  thresholding, ``alpha = 0``: values under λ shrink as x⁵/λ⁴, not the docstring's alpha = 1). ``region_spec``
  (1 on peaks) is the project's ``peak_mask`` of the noisy input itself (Savitzky-Golay smoothing above median +
  5 MAD-σ, dilated by 5 points): derived from the input only, never from the reference. ``--swt-level`` (5) is the
  low end of the 5-7 its docstring recommends for >16k-point spectra, as ours have 2,048 points. The input is
  reflect-padded to a multiple of 2^level (``pywt.swt`` needs it) and cropped back. Its λ is σ·sqrt(2 ln N), σ the
  std of the approximation coefficients with the peak points set to 0 (not removed): slightly low.
* Not used: ``LD_net.loadmodel`` replaces ``sys.modules['model']`` (this project's ``model`` package) with a mock
  and unpickles a whole model; it is never called here.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_loader.nmr.fusion import prepare_ladder  # noqa: E402
from data_loader.nmr.io import read_directory  # noqa: E402
from data_loader.nmr.preprocess import peak_mask  # noqa: E402
from data_loader.nmr.simulate import SimulationSettings, simulate_ladders  # noqa: E402
from model.nmr_equivalent import equivalent_gain, relative_l2  # noqa: E402
from model.nmr_metrics import evaluate_methods, mean_metrics, reference_masks  # noqa: E402

AE_CHECKPOINT = "autoencoder_20000_bruker_ver_135_percent_noise_with_noshuffle_v4_rm_spikelets_with_lb_5.pt"
INSTALL = "pip install nmrdenoise PyWavelets h5py"
QUICKSTART = ROOT / "configs" / "nmr" / "quickstart_simulated.json"
COLUMNS = (("l2", "L2", "{:.4f}"), ("snr_gain", "SNR gain", "{:.2f}"), ("peak_f1", "peak F1", "{:.2f}"),
           ("height_ratio", "height ratio", "{:.3f}"), ("height_rel_err", "height err", "{:.1%}"),
           ("integral_ratio", "integral ratio", "{:.3f}"), ("integral_rel_err", "integral err", "{:.1%}"))


def peer_missing() -> str | None:
    """None when nmrdenoise and PyWavelets import, else the reason and the install command."""
    try:
        import nmrdenoise  # noqa: F401
        import pywt  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install of one of its imports
        return f"nmrdenoise rows skipped ({type(exc).__name__}: {exc}); install with: {INSTALL}"
    return None


class NmrdenoiseAE:
    """nmrdenoise's autoencoder, loaded once; ``__call__`` denoises a batch ``(B, L)`` as ``denoise_component``."""

    def __init__(self, device: str = "cpu"):
        from nmrdenoise import AE_denoise

        self.device = torch.device(device)
        self.net = AE_denoise.Autoencoder()
        with resources.as_file(resources.files("nmrdenoise.checkpoints").joinpath(AE_CHECKPOINT)) as path:
            self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.net.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, spectra: np.ndarray, batch: int = 64) -> np.ndarray:
        spectra = np.atleast_2d(np.asarray(spectra, dtype=np.float64))
        length = spectra.shape[1]
        scale = np.abs(spectra).max(axis=1, keepdims=True)
        scale[scale == 0] = 1.0
        padded = np.pad(spectra / scale, ((0, 0), (0, 8)), mode="edge")  # see the module docstring: L-2 quirk
        out = []
        for i in range(0, len(padded), batch):
            x = torch.as_tensor(padded[i:i + batch], dtype=torch.float32, device=self.device)[:, None]
            out.append(self.net(x)[:, 0, :length].double().cpu().numpy())
        result = np.concatenate(out)
        if result.shape[1] != length:
            raise RuntimeError(f"nmrdenoise autoencoder returned {result.shape[1]} points for {length}")
        return result * scale


class NmrdenoiseSWT:
    """nmrdenoise's stationary-wavelet denoiser (DESPERATE) with an input-derived peak mask as ``region_spec``."""

    def __init__(self, level: int = 5):
        from nmrdenoise import Desperate

        self.level = int(level)
        self.peer = Desperate()

    def __call__(self, spectra: np.ndarray) -> np.ndarray:
        spectra = np.atleast_2d(np.asarray(spectra, dtype=np.float64))
        length = spectra.shape[1]
        block = 2 ** self.level
        total = -(-length // block) * block
        regions = peak_mask(torch.as_tensor(spectra)).numpy().astype(np.int64)
        out = np.empty_like(spectra)
        for i, (x, region) in enumerate(zip(spectra, regions)):
            x = np.pad(x, (0, total - length), mode="reflect")
            region = np.pad(region, (0, total - length), mode="reflect")
            final, _, _ = self.peer.wavelet_denoise(self.level, x, region)
            out[i] = np.asarray(final)[:length]
        return out


def zeros(spectra: np.ndarray) -> np.ndarray:
    """The flat line: what erasing everything scores (L2 = RMS(reference) / max, small for a sparse spectrum)."""
    return np.zeros_like(np.atleast_2d(np.asarray(spectra, dtype=np.float64)))


def unet_denoiser(checkpoint: str, device: str | None = None):
    """``(B, L)`` -> ``(B, L)`` with the checkpoint's model, built the way test.py builds it."""
    from parse_config import ConfigParser
    from train import trainer_for_checkpoint

    parser = argparse.ArgumentParser()
    ConfigParser.add_arguments(parser, training=False)
    args = parser.parse_args(["-r", str(checkpoint), *(["-d", device] if device else [])])
    _, trainer, state = trainer_for_checkpoint(args, "benchmarks/nmr_peer.py")

    def denoise(spectra: np.ndarray) -> np.ndarray:
        return trainer.denoise(torch.as_tensor(np.atleast_2d(spectra), dtype=torch.float32)).double().numpy()

    return denoise, state.get("epoch")


# ---------------------------------------------------------------------------------------------------------------
# data


def simulated_set(n: int, snr: float, seed: int) -> dict:
    """Held-out simulated ladders with the quickstart config's simulation settings."""
    config = json.loads(QUICKSTART.read_text())
    settings = SimulationSettings.from_dict(config["data_loader"]["args"].get("simulation"))
    data = simulate_ladders(settings, n, seed=seed, snr=snr)
    spectra = data["spectra"].double()
    prepared = prepare_ladder(spectra).levels.double()  # levels in level-0 units and frame, for the raw curve
    blocks = [round(settings.snr_ratio ** (2 * k)) for k in range(settings.levels)]
    return {"name": f"simulated (max/σ {snr:g}, seed {seed})", "inputs": spectra[:, 0].numpy(),
            "references": data["clean"].double().numpy(), "raw_levels": prepared.numpy(),
            "ppm": data["ppm"].double().numpy(), "blocks": blocks, "names": [f"sim{i}" for i in range(n)]}


def real_set(directory: Path) -> dict:
    """A directory of ladders with ``clean`` references; ``blocks.json`` gives the block counts per level."""
    groups = read_directory(directory)
    missing = [g.name for g in groups if g.clean is None]
    if missing:
        raise SystemExit(f"{directory}: ladders without a 'clean' reference cannot be scored here: {missing[:5]}")
    info = {}
    if (directory / "blocks.json").is_file():
        info = json.loads((directory / "blocks.json").read_text())
    levels = groups[0].spectra.shape[0]
    blocks = info.get("blocks_per_level") or [round(float(info.get("snr_ratio", 2.0)) ** (2 * k))
                                              for k in range(levels)]
    return {"name": f"real: {directory}", "inputs": [g.spectra[0] for g in groups],
            "references": [g.clean for g in groups], "raw_levels": [g.spectra for g in groups],
            "ppm": [g.ppm for g in groups], "blocks": blocks, "names": [g.name for g in groups]}


def repeat_pair_set(directory: Path, length: int = 2048) -> dict:
    """Windows of the repeat pairs ``pair_*.npz`` (``x1``, ``x2``, ``ppm``; ``benchmarks/nmr_real_data.py
    --repeats``) for the Noise2Noise score: input = x1's window, the second repeat x2 in place of a reference."""
    from benchmarks.nmr_real_data import MIN_PEAK_SIGMA, SIGNAL_PPM, pair_noise, window_starts

    info = {}
    if (directory / "repeats.json").is_file():
        info = {p["name"]: p for p in json.loads((directory / "repeats.json").read_text())["pairs"]}
    inputs, seconds, ppms, names, pairs = [], [], [], [], []
    for path in sorted(directory.glob("pair_*.npz")):
        with np.load(path) as arrays:
            x1, x2, ppm = (np.asarray(arrays[k], dtype=np.float64) for k in ("x1", "x2", "ppm"))
        sigma_d = float(np.median(np.abs(pair_noise(x1, x2, ppm))) * 1.4826)
        name = path.stem[len("pair_"):]
        pairs.append({"name": name, "same_tube": info.get(name, {}).get("same_tube"),
                      "mismatch": info.get(name, {}).get("mismatch")})
        for w, start in enumerate(window_starts(ppm, length)):
            window = slice(start, start + length)
            if (x1[window].max() < MIN_PEAK_SIGMA * sigma_d or ppm[window].min() > SIGNAL_PPM[1]
                    or ppm[window].max() < SIGNAL_PPM[0]):
                continue
            inputs.append(x1[window])
            seconds.append(x2[window])
            ppms.append(ppm[window])
            names.append(f"{name}_w{w}")
    if not inputs:
        raise SystemExit(f"{directory}: no pair_*.npz windows with peaks")
    return {"name": f"repeat pairs (Noise2Noise): {directory}", "inputs": inputs, "seconds": seconds, "ppm": ppms,
            "names": names, "pairs": pairs}


def score_pairs(data: dict, methods: dict) -> dict:
    """Noise2Noise equivalent gain (``model.nmr_equivalent.noise2noise_gain``) per window, whole and on the peak
    mask (``reference_masks`` with x2 as the reference): median over windows, and how many came out non-positive."""
    from model.nmr_equivalent import noise2noise_gain
    from model.nmr_metrics import _prepare, exponential_apodisation, matched_linewidth, savgol_denoise

    def apodisation(x1, x2, ppm):  # linewidth matched on the second repeat (an oracle, as in score_set)
        ctx = _prepare(reference=x2, noisy_input=x1, ppm=ppm)
        return exponential_apodisation(x1, matched_linewidth(ctx.reference, ctx.ref_peaks))

    all_methods = {"input": lambda x1, x2, ppm: x1, "savgol": lambda x1, x2, ppm: savgol_denoise(x1, 11, 3),
                   "apodisation": apodisation,
                   **{name: (lambda x1, x2, ppm, fn=fn: fn(x1[None])[0]) for name, fn in methods.items()}}
    result = {}
    for method, fn in all_methods.items():
        rows = {"": [], "_peaks": []}
        errors = []
        for x1, x2, ppm in zip(data["inputs"], data["seconds"], data["ppm"]):
            out = fn(x1, x2, ppm)
            peaks = reference_masks(reference=x2, noisy_input=x1)[0]
            whole = noise2noise_gain(out, x1, x2)
            rows[""].append(whole)
            rows["_peaks"].append(noise2noise_gain(out, x1, x2, peaks) if peaks.any() else None)
            errors.append(math.sqrt(max(whole["err2_output"], 0.0) / whole["points"]) / np.abs(x2).max())
        values = {"l2_n2n": float(np.median(errors))}
        for suffix, found in rows.items():
            found = [g for g in found if g is not None]
            finite = [g["gain"] for g in found if not g["beyond_floor"]]
            values[f"equivalent_gain{suffix}_median"] = float(np.median(finite)) if finite else None
            values[f"equivalent_gain{suffix}_beyond_floor"] = sum(g["beyond_floor"] for g in found)
        result[method] = values
    return {"name": data["name"], "n": len(data["inputs"]), "pairs": data["pairs"], "kind": "noise2noise",
            "methods": result}


def format_pairs(scored: dict) -> str:
    pairs = "; ".join(f"{p['name']} (same tube: {p['same_tube']}, signal mismatch {p['mismatch']:.0f}× noise)"
                      if p["mismatch"] is not None else p["name"] for p in scored["pairs"])
    head = ["method", "L2 (N2N)", "equiv. gain", "≤ 0", "equiv. gain (peaks)", "≤ 0"]
    lines = [f"{scored['name']}: {scored['n']} windows of {pairs}", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for method, v in scored["methods"].items():
        cells = [method, f"{v['l2_n2n']:.2e}"]
        for suffix in ("", "_peaks"):
            gain = v[f"equivalent_gain{suffix}_median"]
            cells += ["n/a" if gain is None else f"{gain:.3g}", f"{v[f'equivalent_gain{suffix}_beyond_floor']}"
                      f"/{scored['n']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# scoring


def score_set(data: dict, methods: dict, gain_mode: str = "fit") -> dict:
    """Mean metrics per method, the equivalent-gain summary, and the run times (s per spectrum)."""
    inputs, references = data["inputs"], data["references"]
    n = len(inputs)
    outputs: dict[str, list] = {}
    seconds: dict[str, float] = {}
    for name, method in methods.items():
        start = time.perf_counter()
        if isinstance(inputs, np.ndarray):
            outputs[name] = list(method(inputs))
        else:  # lengths may differ between real ladders
            outputs[name] = [method(x[None])[0] for x in inputs]
        seconds[name] = (time.perf_counter() - start) / n
    rows: dict[str, list] = {}
    gains: dict[str, dict[str, list]] = {"l2": {}, "l2_peak": {}}
    for i in range(n):
        ppm = data["ppm"] if isinstance(data["ppm"], np.ndarray) else data["ppm"][i]
        scored = evaluate_methods(noisy_input=inputs[i], reference=references[i], ppm=ppm,
                                  outputs={name: out[i] for name, out in outputs.items()})
        # the raw curve on the same points as each error: the whole spectrum (l2) and the peak mask (l2_peak) that
        # evaluate_methods derives from the reference and the input
        peaks = reference_masks(reference=references[i], noisy_input=inputs[i])[0]
        raw = {"l2": [relative_l2(level, references[i]) for level in data["raw_levels"][i]],
               "l2_peak": ([relative_l2(level[peaks], references[i][peaks]) * np.abs(references[i][peaks]).max()
                            / np.abs(references[i]).max() for level in data["raw_levels"][i]] if peaks.any() else None)}
        for method, values in scored.items():
            rows.setdefault(method, []).append(values)
            for key, curve in raw.items():
                gains[key].setdefault(method, []).append(
                    equivalent_gain(values[key], data["blocks"], curve, mode=gain_mode)
                    if values.get(key) and curve is not None else None)
    result = {}
    for method, values in rows.items():
        result[method] = mean_metrics(values)
        for key, suffix in (("l2", ""), ("l2_peak", "_peaks")):
            found = [g for g in gains[key][method] if g is not None]
            finite = [g["gain"] for g in found if not g["beyond_floor"]]
            result[method][f"equivalent_gain{suffix}_median"] = float(np.median(finite)) if finite else None
            result[method][f"equivalent_gain{suffix}_beyond_floor"] = sum(g["beyond_floor"] for g in found)
        result[method]["seconds_per_spectrum"] = seconds.get(method)
    return {"name": data["name"], "n": n, "blocks_per_level": data["blocks"], "gain_mode": gain_mode,
            "methods": result}


def format_table(scored: dict) -> str:
    head = ["method", *[label for _, label, _ in COLUMNS], "equiv. gain", "> floor", "equiv. gain (peaks)", "> floor"]
    lines = [f"{scored['name']}: {scored['n']} spectra, raw blocks per level {scored['blocks_per_level']}",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, values in scored["methods"].items():
        cells = [method]
        for key, _, fmt in COLUMNS:
            cells.append("n/a" if values.get(key) is None else fmt.format(values[key]))
        for suffix in ("", "_peaks"):
            gain = values[f"equivalent_gain{suffix}_median"]
            cells += ["n/a" if gain is None else f"{gain:.2f}",
                      f"{values[f'equivalent_gain{suffix}_beyond_floor']}/{scored['n']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="an NMR denoiser checkpoint (.pth) for the U-Net row")
    parser.add_argument("-d", "--device", help="device for the U-Net (default: the trainer's choice)")
    parser.add_argument("--real-dir", action="append", default=[], type=Path, help="ladders with 'clean' (repeatable)")
    parser.add_argument("--n-sim", type=int, default=64, help="simulated ladders (0: none)")
    parser.add_argument("--sim-snr", type=float, default=10.0)
    parser.add_argument("--sim-seed", type=int, default=20261201)
    parser.add_argument("--swt-level", type=int, default=5)
    parser.add_argument("--gain-mode", choices=("fit", "interp"), default="fit",
                        help="equivalent gain from the fitted sqrt(n) law with floor, or log-log interpolation")
    parser.add_argument("--repeat-pairs", action="append", default=[], type=Path,
                        help="a directory from nmr_real_data.py --repeats: its pair_*.npz scored by Noise2Noise and "
                             "its realnoise_snr*/ ladders (real signal + real noise) scored as --real-dir (repeatable)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)

    methods: dict = {"zeros": zeros}
    notes = []
    if args.checkpoint:
        unet, epoch = unet_denoiser(args.checkpoint, args.device)
        methods["unet"] = unet
        notes.append(f"unet: {args.checkpoint} (epoch {epoch})")
    else:
        notes.append("unet row skipped: no --checkpoint")
    missing = peer_missing()
    if missing:
        notes.append(missing)
    else:
        methods["nmrdenoise_ae"] = NmrdenoiseAE()
        methods["nmrdenoise_swt"] = NmrdenoiseSWT(args.swt_level)
    for note in notes:
        print(note)
    sets = []
    if args.n_sim > 0:
        sets.append(simulated_set(args.n_sim, args.sim_snr, args.sim_seed))
    sets += [real_set(directory) for directory in args.real_dir]
    pair_sets = []
    for directory in args.repeat_pairs:
        sets += [real_set(sub) for sub in sorted(directory.glob("realnoise_snr*")) if sub.is_dir()]
        pair_sets.append(repeat_pair_set(directory))
    if not sets and not pair_sets:
        raise SystemExit("nothing to score: give --n-sim > 0, --real-dir or --repeat-pairs")
    results = []
    for data in pair_sets:
        scored = score_pairs(data, methods)
        results.append(scored)
        print()
        print(format_pairs(scored))
    for data in sets:
        scored = score_set(data, methods, args.gain_mode)
        results.append(scored)
        print()
        print(format_table(scored))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"notes": notes, "checkpoint": args.checkpoint, "sets": results}, indent=1,
                                       default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
