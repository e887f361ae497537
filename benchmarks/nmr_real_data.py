"""Real 1D ¹H FIDs from registry packages turned into denoising ladders in the project's directory format.

    python benchmarks/nmr_real_data.py --source bruker-data-test-1.0.0.tgz --source metabolabpy-0.9.91.tar.gz \\
        --out /work/realdata/pkgfids [--snr 10] [--levels 4] [--snr-ratio 2] [--reference-blocks 256] \\
        [--length 2048] [--hz-per-point 1.0] [--lb-hz 0.3] [--seed 0]

Get the sources once with the registries' own clients (nothing here downloads anything)::

    npm pack bruker-data-test@1.0.0        # MIT, cheminfo: coffee (5 FIDs), strychnine, cyclosporin, aspirin, ...
    npm pack nmredata-data-test@0.4.0      # MIT, cheminfo: menthol, arborinine, caryophyllene oxide, TFM-aniline
    pip download --no-deps --no-binary :all: metabolabpy==0.9.91   # GPLv3: three 600 MHz noesygppr1d FIDs

A source is an npm tarball, an sdist, a zip, or a directory; archives are unpacked into a temporary directory
(nested zips too) and searched for Bruker 1D ¹H experiments (a directory with ``fid`` and ``acqus``, NUC1 = 1H) and
for metabolabpy's pickled ``NmrData`` files (``nmrDataSet.dat``), which are read with a restricted unpickler that
admits only the classes those files hold (every metabolabpy class becomes an inert attribute holder; ``re._compile``
becomes a function returning the pattern string; NumPy's array reconstruction) and refuses everything else.

**What the ladders are.** No package on PyPI, npm or Debian was found to ship repeated acquisitions of one sample
(single-scan FID arrays) apart from nmrpy's ³¹P array, which is reserved for independent checks and is not used here.
The packages ship *summed* high-SNR FIDs (max/σ in the thousands). So the ladders are built the way a spectrometer
would record disjoint blocks of scans of a sample whose true FID is the real one: every block is the real FID plus
independent complex white Gaussian noise, and

* level k (k = 0..K) = the average of ``T^(2k)`` disjoint blocks (1, 4, 16, 64 for K = 3, T = 2), so SNR rises
  by T per level, with level 0 at max/σ = ``--snr`` in its window;
* ``clean`` = the average of ``--reference-blocks`` further blocks, disjoint from every level (an independent
  high-SNR reference, as the average of the remaining scans of a real arrayed experiment would be; σ_ref =
  σ_0 / sqrt(reference_blocks)); ``--reference original`` stores the processed real FID instead.

The signal (line shapes, multiplets, shimming, solvent residue, baseline, the FIDs' own noise) is real; the scan
noise is simulated (white, Gaussian, independent between blocks: what thermal noise is). ``blocks.json`` records the
block counts per level for the equivalent-SNR-gain measurement (``model.nmr_equivalent``).

**Processing** (nmrglue, as ``data_loader.nmr.io``): Bruker digital filter removed without truncation, the FID kept
to ``size / 2`` points with ``size`` = the power of two giving about ``--hz-per-point`` (1 Hz, like the simulator's
2,000 Hz over 2,048 points), exponential apodisation ``--lb-hz`` (0.3 Hz, as the simulator), 2× zero filling, FFT by
:func:`data_loader.nmr.io.process_fid`, phase from ACME automatic phasing of the noise-free real spectrum, applied
unchanged to every level. The spectrum is cut into non-overlapping windows of ``--length`` points; windows that touch
the water region (4.5-5.1 ppm) or whose tallest point is under 50 robust σ of the real spectrum are dropped.

**Repeat pairs** (``--repeats``; :func:`build_repeats`): real noise rather than simulated. Experiments with the same
pulse program, NS, RG, TD, SW, SFO1 and O1 are paired (:func:`repeat_groups`), with ``same_tube`` set only when the
sample-changer position (AUTOPOS), the title and the sample directory agree too. In bruker-data-test 1.0.0 the
coffee data hold two such pairs, zgpsd0 NS=4 RG=4 (``UV1009…/21`` and ``UV1010…/11``) and noesygpps1d.comp NS=64
RG=90.5 (``UV1009…/22`` and ``UV1010…/12``), but each pair is **two tubes** (AUTOPOS 2 and 5, titles "COFFEE 2" and
"COFFEE 5", different sample IDs), not one tube measured twice. (zg30 NS=8 exists in one tube only; the other
zg30 directories hold no FID.) Each pair is processed identically (the ACME phase of the first, applied to both):

* ``pair_<name>.npz``: ``x1``, ``x2``, ``ppm`` (whole spectra), scored by ``benchmarks/nmr_peer.py
  --repeat-pairs`` with the Noise2Noise estimate of ``model.nmr_equivalent`` (unbiased only for true repeats:
  :func:`pair_diagnostics`' ``mismatch``, the RMS of ``(x1 - x2)/√2`` on the signal region over its σ on the
  signal-free regions, is 1 for a true repeat and 64 and 268 for the two coffee pairs, so those N2N figures are
  dominated by the difference between the tubes);
* ``realnoise_snr<snr>/``: ladders of **real signal + real noise**. The noise is ``d = (x1 - x2)/√2`` on the
  signal-free regions ``NOISE_PPM`` (10.5-14.5 and -5 to -0.7 ppm; :func:`pair_noise`): the signals and everything
  the two acquisitions share (baseline, truncation wiggles of the tall lines) cancel, and what is left is real
  receiver noise after real processing, with one acquisition's variance. A window ``S`` of one acquisition's
  spectrum (max/σ about 60,000) gets ``a·d`` added, ``a`` setting level 0's max/σ to ``snr``; level k is
  ``S + a·d/√n_k`` and ``clean = S``. The truth is then known up to S's own noise (1/6,000 of the added noise at
  max/σ 10), so every metric is scored directly against it, without a Noise2Noise term. The raw curve is exact by
  construction (error² ∝ 1/n), so the equivalent gain is ``sqrt(err²(input)/err²(output))``.

  Why not ``x1 + a·d`` scored against ``x2`` (Noise2Noise at low SNR): ``d`` holds ``n2``, so the input's noise
  would correlate with the reference's and ``E||f(x1 + a·d) - x2||²`` gains a cross term (a biased estimate).
  The sound Noise2Noise variant takes ``d`` from *other frequency points* than the window (white receiver noise is
  uncorrelated across frequency beyond the few neighbours that zero filling and apodisation couple), so
  ``x1[W] + a·d[R]`` is independent of ``n2[W]`` and ``||f - x2[W]||² - ||x1[W] - x2[W]||²/2`` stays unbiased; but it
  needs ``x1`` and ``x2`` to hold the same signal, which the coffee pairs do not. Hence the direct-truth ladders.
  Caveats: one noise vector per pair is reused for every window and level (2 independent real noise draws in all:
  8 ladders per SNR, correlated); ``σ`` differs by up to 13 % between the two noise regions (the digital filter's
  edge), so the noise is real but not stationary; for the noesy pair each spectrum's own σ in the "signal-free"
  regions (3.1e5) is 7× ``σ_d`` (4.5e4): a component common to both tubes (truncation wiggles, baseline), not noise.
  For the zgpsd0 pair the two σ agree (736 and 746) with ``σ_d`` (755): equal noise levels, as assumed.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import re
import sys
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nmrglue as ng
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_loader.nmr.io import _guess_udic, _ppm_from_udic, ppm_axis, process_fid  # noqa: E402
from utils.errors import DataError  # noqa: E402

WATER_PPM = (4.5, 5.1)
MIN_PEAK_SIGMA = 50.0
MAD_TO_SIGMA = 1.4826
SKIP_PULPROG = {"pulsecal"}  # pulse calibration: a nutation experiment, not a spectrum
_SEEN: set[str] = set()  # FIDs already read (several archives of nmredata-data-test hold the same experiment)
KNOWN_SOURCES = {
    "bruker-data-test": {"registry": "npm", "licence": "MIT"},
    "nmredata-data-test": {"registry": "npm", "licence": "MIT"},
    "metabolabpy": {"registry": "PyPI", "licence": "GPL-3.0"},
}


@dataclass
class Experiment:
    """One real FID: complex (TD,) with the digital filter removed, and what is needed to process it."""

    name: str
    fid: np.ndarray
    sw_hz: float
    obs_mhz: float
    car_hz: float
    info: dict = field(default_factory=dict)
    udic: dict | None = None


# ---------------------------------------------------------------------------------------------------------------
# unpacking


def _safe_members(names: list[str], where: str) -> None:
    for name in names:
        path = Path(name)
        if path.is_absolute() or ".." in path.parts:
            raise DataError(f"{where}: archive member {name!r} points outside the archive; refusing to unpack it")


def unpack(source: Path, into: Path) -> list[Path]:
    """Directories holding ``source``'s files: the directory itself or the archive unpacked, plus every zip found
    inside it unpacked beside (the npm data packages hold zipped experiment directories)."""
    if source.is_dir():
        roots = [source]
    else:
        target = into / re.sub(r"[^A-Za-z0-9_.-]", "_", source.name)
        target.mkdir(parents=True, exist_ok=True)
        if zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                _safe_members(archive.namelist(), str(source))
                archive.extractall(target)
        elif tarfile.is_tarfile(source):
            with tarfile.open(source) as archive:
                archive.extractall(target, filter="data")  # no links out, no devices, no absolute paths
        else:
            raise DataError(f"{source}: neither a directory, a zip nor a tar archive")
        roots = [target]
    for i, nested in enumerate(sorted(roots[0].rglob("*.zip"))):
        target = into / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', source.name)}.zip{i}" / nested.stem
        with zipfile.ZipFile(nested) as archive:
            _safe_members(archive.namelist(), str(nested))
            archive.extractall(target)
        roots.append(target.parent)
    return roots


def package_of(source: Path) -> dict:
    """Registry, licence and version of a known source from its file name (``unknown`` otherwise)."""
    for name, meta in KNOWN_SOURCES.items():
        match = re.match(rf"{re.escape(name)}-(\d[\w.]*?)(\.tgz|\.tar\.gz|\.zip)?$", source.name)
        if match:
            return {"package": name, "version": match.group(1), **meta}
    return {"package": source.name, "version": "unknown", "registry": "unknown", "licence": "unknown"}


# ---------------------------------------------------------------------------------------------------------------
# Bruker experiment directories


def _seen(fid) -> bool:
    """Whether this FID was read before (content hash); records it otherwise."""
    digest = hashlib.sha1(np.ascontiguousarray(fid).tobytes()).hexdigest()
    if digest in _SEEN:
        return True
    _SEEN.add(digest)
    return False


def _title(directory: Path) -> str:
    """The experiment's ``pdata/1/title`` on one line ('' when absent)."""
    path = directory / "pdata" / "1" / "title"
    return " ".join(path.read_text(errors="replace").split()) if path.is_file() else ""


def bruker_experiments(root: Path, label: str) -> list[Experiment]:
    """Every 1D ¹H Bruker experiment under ``root`` (``fid`` + ``acqus``, no ``ser``)."""
    found = []
    for fid_path in sorted(root.rglob("fid")):
        directory = fid_path.parent
        if not (directory / "acqus").is_file() or (directory / "ser").exists():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dic, data = ng.bruker.read(str(directory))
        acqus = dic["acqus"]
        if (str(acqus.get("NUC1", "")).strip("<>") != "1H" or np.asarray(data).ndim != 1
                or str(acqus.get("PULPROG", "")).strip("<>") in SKIP_PULPROG or _seen(data)):
            continue
        data = ng.bruker.remove_digital_filter(dic, data, truncate=False)
        relative = directory.relative_to(root).parts
        name = "_".join([label, *relative[-2:]])
        info = {"path": str(Path(*relative)), "NS": int(acqus["NS"]), "PULPROG": str(acqus["PULPROG"]).strip("<>"),
                "SFO1": float(acqus["SFO1"]), "TD": int(acqus["TD"]), "SW_h": float(acqus["SW_h"]),
                "SOLVENT": str(acqus.get("SOLVENT", "")).strip("<>"), "RG": float(acqus.get("RG", 0.0)),
                "O1": float(acqus["O1"]), "AUTOPOS": str(acqus.get("AUTOPOS", "")).strip("<> "),
                "sample_dir": relative[-2] if len(relative) > 1 else "", "title": _title(directory)}
        udic = None
        try:
            udic = _guess_udic(ng.bruker, dic, data, str(directory))
        except DataError:
            pass
        found.append(Experiment(name=re.sub(r"[^A-Za-z0-9_.-]", "_", name), fid=np.asarray(data, np.complex128),
                                sw_hz=float(acqus["SW_h"]), obs_mhz=float(acqus["SFO1"]), car_hz=float(acqus["O1"]),
                                info=info, udic=udic))
    return found


# ---------------------------------------------------------------------------------------------------------------
# metabolabpy's pickled NmrData, read without metabolabpy and without admitting any other code


class _Inert:
    """Stand-in for every metabolabpy class: holds the pickled attributes, runs nothing."""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


def _pattern(pattern, flags=0):
    return pattern


class RestrictedUnpickler(pickle.Unpickler):
    """Admits exactly what metabolabpy's ``nmrDataSet.dat`` files hold; anything else is an error."""

    NUMPY = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
             ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if module.startswith("metabolabpy.") and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            return _Inert
        if (module, name) in self.NUMPY:
            if name == "_reconstruct":
                return np._core.multiarray._reconstruct
            return np.ndarray if name == "ndarray" else np.dtype
        if (module, name) == ("re", "_compile"):
            return _pattern
        raise pickle.UnpicklingError(f"refusing {module}.{name}: not a class metabolabpy's NmrData files hold")


def load_restricted(path: Path):
    with open(path, "rb") as handle:
        return RestrictedUnpickler(io.BytesIO(handle.read())).load()


def metabolab_experiments(root: Path, label: str) -> list[Experiment]:
    """The 1D FIDs of metabolabpy's ``*.mlpy`` sample data sets (pickled NmrData with ``.fid`` and ``.acq``)."""
    found = []
    for path in sorted(root.rglob("nmrDataSet.dat")):
        data = load_restricted(path)
        acq = getattr(data, "acq", None)
        fid = np.asarray(getattr(data, "fid", None))
        if acq is None or fid.dtype.kind != "c" or getattr(data, "dim", 1) != 1 or _seen(fid):
            continue
        fid = fid.reshape(-1, fid.shape[-1])[0]
        sw = float(np.atleast_1d(acq.sw_h)[0])
        sfo1 = float(np.atleast_1d(acq.sfo1)[0])
        o1 = float(np.atleast_1d(acq.o1)[0])
        decim, dspfvs = float(np.atleast_1d(acq.decim)[0]), int(np.atleast_1d(acq.dspfvs)[0])
        grpdly = float(np.atleast_1d(getattr(acq, "group_delay", -1) or -1)[0])
        # metabolabpy keeps the FID with the opposite frequency sign to nmrglue's readers (its spectrum is the
        # mirror image about the carrier otherwise: checked against its own processed .spc and .ppm1), and with the
        # digital filter still in (the FID's maximum sits at the group delay)
        fid = ng.bruker.rm_dig_filter(np.conj(fid), decim, dspfvs, grpdly, truncate_grpdly=False)
        ppm1 = np.asarray(getattr(data, "ppm1", []), dtype=np.float64)
        if ppm1.ndim == 1 and len(ppm1) > 1:  # its referenced axis: the carrier sits at point N/2 as in ppm_axis
            o1 = float(ppm1[len(ppm1) // 2]) * sfo1
        relative = path.parent.relative_to(root).parts
        title = str(getattr(data, "title", "")).replace("\n", " ").strip()
        info = {"path": str(Path(*relative)), "NS": int(np.atleast_1d(getattr(acq, "transients", 0))[0]),
                "PULPROG": str(getattr(acq, "pul_prog_name", "")).strip("<>"), "SFO1": sfo1, "TD": 2 * len(fid),
                "SW_h": sw, "title": title}
        name = "_".join([label, *[p.replace(".mlpy", "") for p in relative[-3:]]])
        found.append(Experiment(name=re.sub(r"[^A-Za-z0-9_.-]", "_", name), fid=fid.astype(np.complex128),
                                sw_hz=sw, obs_mhz=sfo1, car_hz=o1, info=info))
    return found


# ---------------------------------------------------------------------------------------------------------------
# ladders


def _robust_sigma(values: np.ndarray) -> float:
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def processing_size(sw_hz: float, hz_per_point: float) -> int:
    """Power of two closest (in log) to ``sw / hz_per_point``: the real spectrum's length."""
    return int(2 ** round(np.log2(sw_hz / hz_per_point)))


def noise_unit_sigma(size: int, sw_hz: float, lb_hz: float, p0: float, p1: float, rng, draws: int = 16) -> float:
    """σ of the processed real spectrum per unit complex-noise σ (real and imaginary each N(0, 1)) in the FID."""
    values = []
    for _ in range(draws):
        noise = rng.standard_normal(size // 2) + 1j * rng.standard_normal(size // 2)
        values.append(np.std(process_fid(noise, sw_hz, size, lb_hz, p0, p1)))
    return float(np.sqrt(np.mean(np.square(values))))


def window_starts(ppm: np.ndarray, length: int) -> list[int]:
    """Starts of non-overlapping windows of ``length`` points tiling the spectrum outwards from the water region:
    downfield of it from its edge towards high ppm, upfield of it from its edge towards low ppm (ppm decreases with
    the index), so no window straddles the water line and the regions next to it are kept whole."""
    size = len(ppm)
    upfield = int(np.searchsorted(-ppm, -WATER_PPM[0]))          # first index with ppm <= 4.5
    downfield_end = int(np.searchsorted(-ppm, -WATER_PPM[1]))    # first index with ppm <= 5.1: windows end here
    starts = list(range(upfield, size - length + 1, length))
    starts += list(range(downfield_end - length, -1, -length))
    return sorted(starts)


def ladders_for(exp: Experiment, *, length: int, levels: int, snr_ratio: float, snr: float, reference_blocks: int,
                reference: str, hz_per_point: float, lb_hz: float, rng) -> list[dict]:
    """The ladders of one experiment: one per kept window. Each is a dict of arrays plus metadata."""
    size = processing_size(exp.sw_hz, hz_per_point)
    keep = min(size // 2, len(exp.fid))
    fid = exp.fid[:keep]
    complex_spec = ng.proc_base.fft_positive(ng.proc_base.zf_size(
        ng.proc_base.em(fid, lb=lb_hz / exp.sw_hz), size))
    _, (p0, p1) = ng.proc_autophase.autops(complex_spec, "acme", p0=0.0, p1=0.0, disp=False, return_phases=True)
    clean = process_fid(fid, exp.sw_hz, size, lb_hz, p0, p1)
    if np.sum(clean) < 0:  # ACME can land 180 degrees off: spectra are absorptive-positive
        p0 += 180.0
        clean = -clean
    if exp.udic is not None:
        udic = {**exp.udic, 0: {**exp.udic[0], "size": size}}
        ppm = _ppm_from_udic(udic, exp.name)
    else:
        ppm = ppm_axis(size, exp.sw_hz, exp.obs_mhz, exp.car_hz)
    unit = noise_unit_sigma(size, exp.sw_hz, lb_hz, p0, p1, rng)
    sigma_clean = _robust_sigma(clean)
    blocks = [int(round(snr_ratio ** (2 * k))) for k in range(levels)]
    out = []
    for w, start in enumerate(window_starts(ppm, length)):
        window = slice(start, start + length)
        lo, hi = ppm[window].min(), ppm[window].max()
        peak = float(clean[window].max())
        if peak < MIN_PEAK_SIGMA * sigma_clean:
            continue
        sigma_fid = peak / (snr * unit)  # one block's complex-noise σ in the FID
        total = sum(blocks) + reference_blocks

        def averaged(n_blocks: int, sigma: float, points: slice) -> np.ndarray:
            # the mean of n independent blocks' noise is one draw at σ / sqrt(n): exact, and cheaper than n draws
            noise = sigma / np.sqrt(n_blocks) * (rng.standard_normal(keep) + 1j * rng.standard_normal(keep))
            return process_fid(fid + noise, exp.sw_hz, size, lb_hz, p0, p1)[points]

        spectra = np.stack([averaged(n, sigma_fid, window) for n in blocks])
        ref = averaged(reference_blocks, sigma_fid, window) if reference == "blocks" else clean[window]
        sigma0 = sigma_fid * unit
        out.append({
            "name": f"{exp.name}_w{w}",
            "arrays": {"spectra": spectra, "ppm": ppm[window].copy(), "clean": ref},
            "meta": {**exp.info, "window_ppm": [float(hi), float(lo)], "p0": float(p0), "p1": float(p1),
                     "size": size, "fid_points": keep, "sigma0": sigma0, "snr0": peak / sigma0,
                     "blocks_per_level": blocks, "reference_blocks": reference_blocks if reference == "blocks" else 0,
                     "total_blocks": total},
        })
    return out


def build(sources: list[Path], out_dir: Path, *, length: int = 2048, levels: int = 4, snr_ratio: float = 2.0,
          snr: float = 10.0, reference_blocks: int = 256, reference: str = "blocks", hz_per_point: float = 1.0,
          lb_hz: float = 0.3, seed: int = 0) -> list[dict]:
    """Write ``out_dir/<name>.npz`` ladders, ``blocks.json`` and ``sources.json``; return the per-ladder metadata."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, packages = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            meta = package_of(source)
            label = meta["package"].replace("-data-test", "").replace("-", "")
            experiments = []
            for root in unpack(source, Path(tmp)):
                experiments += bruker_experiments(root, label) + metabolab_experiments(root, label)
            packages.append({**meta, "source": source.name, "experiments": [e.info | {"name": e.name}
                                                                             for e in experiments]})
            for exp in experiments:
                for ladder in ladders_for(exp, length=length, levels=levels, snr_ratio=snr_ratio, snr=snr,
                                          reference_blocks=reference_blocks, reference=reference,
                                          hz_per_point=hz_per_point, lb_hz=lb_hz, rng=rng):
                    np.savez(out_dir / f"{ladder['name']}.npz", **ladder["arrays"])
                    written.append({"name": ladder["name"], "package": meta["package"], **ladder["meta"]})
    blocks = [int(round(snr_ratio ** (2 * k))) for k in range(levels)]
    settings = {"length": length, "levels": levels, "snr_ratio": snr_ratio, "snr": snr,
                "reference": reference, "reference_blocks": reference_blocks if reference == "blocks" else 0,
                "hz_per_point": hz_per_point, "lb_hz": lb_hz, "seed": seed}
    (out_dir / "blocks.json").write_text(json.dumps({"blocks_per_level": blocks, **settings}, indent=1))
    (out_dir / "sources.json").write_text(json.dumps({"settings": settings, "packages": packages,
                                                      "ladders": written}, indent=1))
    return written


# ---------------------------------------------------------------------------------------------------------------
# repeated acquisitions: real noise (see the section "Repeat pairs" of the module docstring)

REPEAT_KEYS = ("PULPROG", "NS", "RG", "TD", "SW_h", "SFO1", "O1")
NOISE_PPM = ((10.5, 14.5), (-5.0, -0.7))  # signal-free in the coffee spectra (checked: rms = MAD of x1 - x2 there)
SIGNAL_PPM = (0.5, 9.5)


def repeat_groups(experiments: list[Experiment]) -> list[dict]:
    """Pairs of experiments with the same pulse program, NS, RG, TD, SW, SFO1 and O1 (the acquisition repeated),
    each with ``same_tube``: the same sample-changer position, title and sample directory (a true repeat)."""
    groups: dict[tuple, list[Experiment]] = {}
    for exp in experiments:
        if all(key in exp.info for key in REPEAT_KEYS):
            groups.setdefault(tuple(exp.info[key] for key in REPEAT_KEYS), []).append(exp)
    pairs = []
    for members in groups.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                a, b = members[i], members[j]
                same = all(a.info.get(k) == b.info.get(k) for k in ("AUTOPOS", "title", "sample_dir"))
                pairs.append({"a": a, "b": b, "same_tube": same})
    return pairs


def process_pair(a: Experiment, b: Experiment, *, hz_per_point: float = 1.0, lb_hz: float = 0.3):
    """Both FIDs processed identically (the phase is ACME's for ``a``, applied unchanged to ``b``): x1, x2, ppm."""
    size = processing_size(a.sw_hz, hz_per_point)
    keep = min(size // 2, len(a.fid), len(b.fid))
    complex_spec = ng.proc_base.fft_positive(ng.proc_base.zf_size(ng.proc_base.em(a.fid[:keep], lb=lb_hz / a.sw_hz),
                                                                  size))
    _, (p0, p1) = ng.proc_autophase.autops(complex_spec, "acme", p0=0.0, p1=0.0, disp=False, return_phases=True)
    x1 = process_fid(a.fid[:keep], a.sw_hz, size, lb_hz, p0, p1)
    x2 = process_fid(b.fid[:keep], b.sw_hz, size, lb_hz, p0, p1)
    if np.sum(x1) < 0:
        p0, x1, x2 = p0 + 180.0, -x1, -x2
    if a.udic is not None:
        ppm = _ppm_from_udic({**a.udic, 0: {**a.udic[0], "size": size}}, a.name)
    else:
        ppm = ppm_axis(size, a.sw_hz, a.obs_mhz, a.car_hz)
    return x1, x2, ppm, {"p0": float(p0), "p1": float(p1), "size": size, "fid_points": keep}


def noise_regions(ppm: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the signal-free regions ``NOISE_PPM``."""
    return [np.flatnonzero((ppm > lo) & (ppm < hi)) for lo, hi in NOISE_PPM]


def pair_noise(x1: np.ndarray, x2: np.ndarray, ppm: np.ndarray) -> np.ndarray:
    """``d = (x1 - x2) / sqrt(2)`` on the signal-free regions, each region's mean removed, concatenated: real
    receiver noise with one acquisition's statistics (the signal and the shared baseline cancel)."""
    d = (x1 - x2) / np.sqrt(2.0)
    return np.concatenate([d[idx] - d[idx].mean() for idx in noise_regions(ppm)])


def pair_diagnostics(x1: np.ndarray, x2: np.ndarray, ppm: np.ndarray) -> dict:
    """Noise level of each repeat (MAD on the signal-free regions after a 101-point quadratic Savitzky-Golay
    baseline is removed), of ``d``, and ``mismatch``: RMS of ``d`` on the signal region over its σ on the noise
    regions (about 1 for true repeats; much larger when the signals differ)."""
    from scipy.signal import savgol_filter

    idx = np.concatenate(noise_regions(ppm))
    sigma = [_robust_sigma((x - savgol_filter(x, 101, 2))[idx]) for x in (x1, x2)]
    d = pair_noise(x1, x2, ppm)
    sigma_d = _robust_sigma(d)
    signal = (ppm > SIGNAL_PPM[0]) & (ppm < SIGNAL_PPM[1]) & ~((ppm > WATER_PPM[0]) & (ppm < WATER_PPM[1]))
    mismatch = float(np.sqrt(np.mean(((x1 - x2)[signal] / np.sqrt(2.0)) ** 2)) / sigma_d)
    return {"sigma_x1": sigma[0], "sigma_x2": sigma[1], "sigma_d": sigma_d, "rms_d": float(np.std(d)),
            "noise_points": int(len(d)), "max_x1": float(x1.max()), "snr_x1": float(x1.max() / sigma_d),
            "mismatch": mismatch}


def realnoise_ladders(signals: list[tuple[str, np.ndarray, np.ndarray]], noises: list[tuple[str, np.ndarray]], *,
                      length: int, snr: float, blocks: list[int]) -> list[dict]:
    """Ladders of a real high-SNR spectrum window ``S`` plus scaled real noise: level k = ``S + a d / sqrt(n_k)``
    with ``d`` the first ``length`` points of a pair's noise (:func:`pair_noise`) and ``a`` setting level 0's
    max/σ to ``snr``; ``clean`` = ``S``. ``signals``: (name, spectrum, ppm); ``noises``: (name, noise)."""
    out = []
    for name, spectrum, ppm in signals:
        sigma_real = _robust_sigma(spectrum - np.median(spectrum))
        for w, start in enumerate(window_starts(ppm, length)):
            window = slice(start, start + length)
            clean = spectrum[window]
            peak = float(clean.max())
            if peak < MIN_PEAK_SIGMA * sigma_real or (ppm[window].min() > SIGNAL_PPM[1]
                                                      or ppm[window].max() < SIGNAL_PPM[0]):
                continue
            for noise_name, noise in noises:
                if len(noise) < length:
                    raise DataError(f"{noise_name}: {len(noise)} noise points, fewer than the window's {length}")
                d = noise[:length]
                sigma_d = _robust_sigma(d)
                a = peak / (snr * sigma_d)
                spectra = np.stack([clean + a * d / np.sqrt(n) for n in blocks])
                out.append({"name": f"{name}_w{w}_noise_{noise_name}",
                            "arrays": {"spectra": spectra, "ppm": ppm[window].copy(), "clean": clean.copy()},
                            "meta": {"signal": name, "noise": noise_name, "window_ppm": [float(ppm[window].max()),
                                                                                         float(ppm[window].min())],
                                     "scale": float(a), "snr0": peak / (a * sigma_d),
                                     "reference_snr": peak / sigma_d}})
    return out


def build_repeats(sources: list[Path], out_dir: Path, *, snrs=(10.0,), length: int = 2048, levels: int = 4,
                  snr_ratio: float = 2.0, hz_per_point: float = 1.0, lb_hz: float = 0.3) -> dict:
    """Repeat pairs of ``sources`` into ``out_dir``: ``pair_<name>.npz`` (``x1``, ``x2``, ``ppm``: whole spectra,
    identically processed), ``repeats.json`` (acquisition parameters, tubes and :func:`pair_diagnostics`), and per
    SNR a ladder directory ``realnoise_snr<snr>/`` (:func:`realnoise_ladders`, signals = every repeat's spectrum,
    noises = every pair's ``d``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _SEEN.clear()
    experiments = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            label = package_of(source)["package"].replace("-data-test", "").replace("-", "")
            for root in unpack(source, Path(tmp)):
                experiments += bruker_experiments(root, label)
    pairs, signals, noises = [], [], []
    for pair in repeat_groups(experiments):
        a, b = pair["a"], pair["b"]
        x1, x2, ppm, processing = process_pair(a, b, hz_per_point=hz_per_point, lb_hz=lb_hz)
        name = f"{a.name}__{b.info['sample_dir'][:6]}_{Path(b.info['path']).name}"
        np.savez(out_dir / f"pair_{name}.npz", x1=x1, x2=x2, ppm=ppm)
        diag = pair_diagnostics(x1, x2, ppm)
        pairs.append({"name": name, "same_tube": pair["same_tube"], "x1": a.info, "x2": b.info,
                      "processing": processing, **diag})
        signals += [(f"{a.name}", x1, ppm), (f"{b.name}", x2, ppm)]
        noises.append((f"{a.info['PULPROG']}_NS{a.info['NS']}", pair_noise(x1, x2, ppm)))
    blocks = [int(round(snr_ratio ** (2 * k))) for k in range(levels)]
    unique = list({name: (name, x, ppm) for name, x, ppm in signals}.values())
    written = {}
    for snr in snrs:
        directory = out_dir / f"realnoise_snr{snr:g}"
        directory.mkdir(exist_ok=True)
        for old in directory.glob("*.npz"):
            old.unlink()
        ladders = realnoise_ladders(unique, noises, length=length, snr=snr, blocks=blocks)
        for ladder in ladders:
            np.savez(directory / f"{ladder['name']}.npz", **ladder["arrays"])
        (directory / "blocks.json").write_text(json.dumps({"blocks_per_level": blocks, "snr": snr,
                                                           "kind": "real signal + real noise (repeat pairs)"}))
        (directory / "sources.json").write_text(json.dumps([ladder["meta"] | {"name": ladder["name"]}
                                                            for ladder in ladders], indent=1))
        written[directory.name] = len(ladders)
    summary = {"pairs": pairs, "realnoise": written, "settings": {"length": length, "blocks": blocks,
                                                                  "hz_per_point": hz_per_point, "lb_hz": lb_hz,
                                                                  "noise_ppm": NOISE_PPM}}
    (out_dir / "repeats.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", required=True, type=Path,
                        help="npm tarball, sdist, zip or directory holding the FIDs (repeatable)")
    parser.add_argument("--out", required=True, type=Path, help="directory for the ladders")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--snr-ratio", type=float, default=2.0)
    parser.add_argument("--snr", type=float, default=10.0, help="level-0 max/σ in each window")
    parser.add_argument("--reference-blocks", type=int, default=256)
    parser.add_argument("--reference", choices=("blocks", "original"), default="blocks")
    parser.add_argument("--hz-per-point", type=float, default=1.0)
    parser.add_argument("--lb-hz", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clear", action="store_true", help="remove existing *.npz in --out first")
    parser.add_argument("--repeats", action="store_true",
                        help="write repeat pairs and real-noise ladders (build_repeats) instead of block ladders")
    parser.add_argument("--realnoise-snr", action="append", type=float,
                        help="with --repeats: level-0 max/σ of the real-noise ladders (repeatable; default 10)")
    args = parser.parse_args(argv)
    if args.repeats:
        summary = build_repeats(args.source, args.out, snrs=args.realnoise_snr or [10.0], length=args.length,
                                levels=args.levels, snr_ratio=args.snr_ratio, hz_per_point=args.hz_per_point,
                                lb_hz=args.lb_hz)
        for pair in summary["pairs"]:
            print(f"{pair['name']}: {pair['x1']['PULPROG']} NS={pair['x1']['NS']} RG={pair['x1']['RG']} "
                  f"same tube {pair['same_tube']} (AUTOPOS {pair['x1']['AUTOPOS']} / {pair['x2']['AUTOPOS']}); "
                  f"σ {pair['sigma_x1']:.4g} / {pair['sigma_x2']:.4g}, σ_d {pair['sigma_d']:.4g}, "
                  f"max/σ_d {pair['snr_x1']:.0f}, signal mismatch {pair['mismatch']:.1f}× noise")
        print(f"real-noise ladders: {summary['realnoise']} in {args.out}")
        return
    if args.clear and args.out.is_dir():
        for old in args.out.glob("*.npz"):
            old.unlink()
    written = build(args.source, args.out, length=args.length, levels=args.levels, snr_ratio=args.snr_ratio,
                    snr=args.snr, reference_blocks=args.reference_blocks, reference=args.reference,
                    hz_per_point=args.hz_per_point, lb_hz=args.lb_hz, seed=args.seed)
    for row in written:
        print(f"{row['name']}: {row['PULPROG']} NS={row['NS']} {row['SFO1']:.1f} MHz, "
              f"{row['window_ppm'][0]:.2f}..{row['window_ppm'][1]:.2f} ppm, level-0 max/σ {row['snr0']:.1f}")
    print(f"wrote {len(written)} ladders to {args.out}")


if __name__ == "__main__":
    main()
