"""Simulated 1D NMR acquisition ladders: the embedded default data set, generated in one vectorised pass.

Each sample is a clean spectrum (first-order multiplets of Voigt lines; singlets when ``max_couplings`` is 0)
acquired at levels k = 0..K. Every level is the same clean FID plus independent complex white noise of
standard deviation σ_k = σ_0·T^-k drawn **in the time domain** (separate acquisitions — disjoint blocks of
scans — so the Noise2Noise condition holds), processed like real data (exponential apodisation, zero filling,
FFT, phase errors), so apodisation and zero filling correlate the noise along the spectrum as they do in real
spectra. Each level then gets a small baseline error, a shift by a fraction of a point and a random
normalisation factor. The clean spectrum is kept, in the units and frame of level 0, for evaluation.

Options beyond today's defaults (every one off by default, so the defaults reproduce the quickstart exactly):

- ``zero_fill``: spectrum points per FID point. The FID has ``length / zero_fill`` points at the dwell time
  1/``sw_hz``, so the acquisition time is ``length / (zero_fill·sw_hz)`` s; a line whose FID has not decayed
  by then (``lb_hz`` 0, narrow lines, short acquisition) shows sinc wiggles, as truncated real FIDs do.
- ``hz_per_point``: the digital resolution; when set, ``sw_hz`` becomes ``hz_per_point·length``, so a regime
  keeps its line widths *in points* at any length (a short spectrum is a window of a wide one).
- ``phase0_deg``, ``phase1_deg``: residual zero- and first-order phase errors shared by the levels of a ladder
  (the first order across the window, pivot at the centre), on top of the per-level ``phase_deg`` jitter.
- ``baseline_roll``: a baseline roll shared by the levels (a sinusoid of 0.5–4 periods across the window plus a
  cubic), of maximum absolute value ``baseline_roll·max(clean)``, on top of the per-level ``baseline`` error.
- ``drift_hz``, ``drift_linewidth_hz``: per-level drift across the ladder; level k's lines move by k·d Hz and
  broaden by k·b Hz, d and b drawn per ladder uniformly in ±``drift_hz`` and ±``drift_linewidth_hz`` (b is
  kept above −0.9·(narrowest Lorentzian)/K, so no line gets a negative width). Level 0 is the frame: the clean
  spectrum is level 0's lines.
- ``early_noise``, ``early_noise_ms``: non-white receiver noise, correlated along the spectrum. Real receivers add
  excess noise at the start of every FID (receiver recovery after the pulse, acoustic ringing, pulse breakthrough,
  the first points after the digital filter), lasting from tens of µs to a few ms and varying from scan to scan.
  In the time domain the complex noise's variance is σ²·(1 + A·exp(−t/τ)); after processing, the excess is a
  stationary component whose autocorrelation along the spectrum is a Lorentzian of half width at half maximum
  1/(2π·τ) Hz (160 Hz, i.e. 160 points at 1 Hz per point, for τ = 1 ms): slow, baseline-like noise that does not
  look like a peak but biases integrals. Per ladder a fraction f of the processed noise variance is drawn
  uniformly in ``early_noise`` (``[low, high]``, 0 <= low <= high < 1) and τ log-uniformly in ``early_noise_ms``;
  A follows from f exactly. Every level gets its own draw (scan-to-scan noise averages down like the white part,
  so σ_k = σ_0·T^-k still holds), and ``sigma`` and the level-0 max/σ include the excess:
  σ² = σ_fid²·Σ w_n²·(1 + A·exp(−t_n/τ)) exactly (w: the apodisation weights), as the MAD of real noise measures
  it. Off (f = 0) by default.
- ``mixture``: regimes (named presets of :data:`PRESETS` or objects of overrides with an optional ``weight``
  and ``preset``); each ladder draws one, so one data set mixes nuclei, line shapes and processing. This is
  what a general pretrained model trains on.

Conventions: real spectra of ``length`` points with ppm decreasing along the index (NMR plots run from
high to low ppm); σ_0 is set per sample so that level 0 has ``max(clean) / σ = snr`` in the processed
spectrum (the max/σ convention of VnmrJ ``dsn``; Bruker's ``sino`` would be half of it).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from data_loader.nmr.preprocess import fourier_shift

# Named regimes for ``mixture``: overrides of SimulationSettings. Widths are set through ``hz_per_point`` so they
# hold in points at any length; the line counts are meant for windows of about 4,096 points.
PRESETS: dict[str, dict] = {
    # the quickstart's 1H-like multiplets (about 1 Hz per point, lb 0.3 Hz, 2× zero filling)
    "1h": {"hz_per_point": 2000.0 / 2048, "multiplets": (2, 12)},
    # 1H processed without apodisation: narrow lines, the FID truncated by the acquisition time (sinc wiggles)
    "1h_unapodised": {"hz_per_point": 2000.0 / 2048, "multiplets": (2, 12), "lb_hz": 0.0,
                      "linewidth_hz": (0.6, 3.0), "gaussian_hz": (0.0, 1.0)},
    # 1H with lines of 1–3 points at lb 0.3 Hz and 0.5 s acquisition (slight truncation wiggles), as many real
    # spectra processed at about 1 Hz per point are
    "1h_narrow": {"hz_per_point": 2000.0 / 2048, "multiplets": (2, 12), "linewidth_hz": (0.4, 2.0),
                  "gaussian_hz": (0.0, 1.5)},
    # 1H, broad lines and strong apodisation (lb 1–3 Hz correlates the noise over several points)
    "1h_broad": {"hz_per_point": 2000.0 / 2048, "multiplets": (2, 10), "lb_hz": 2.0, "linewidth_hz": (3.0, 12.0),
                 "gaussian_hz": (0.0, 4.0)},
    # 13C{1H}-like: sparse singlets 1–4 points wide (25 kHz over 32,768 points), lb 1 Hz
    "13c": {"hz_per_point": 25000.0 / 32768, "multiplets": (1, 10), "max_couplings": 0, "linewidth_hz": (0.7, 2.5),
            "gaussian_hz": (0.0, 0.8), "lb_hz": 1.0, "intensity": (0.3, 3.0), "obs_mhz": 100.6,
            "carrier_ppm": 100.0},
    # 13C unapodised, 4× zero filling: singlets of about one point with truncation wiggles
    "13c_unapodised": {"hz_per_point": 25000.0 / 32768, "multiplets": (1, 10), "max_couplings": 0,
                       "linewidth_hz": (0.5, 2.0), "gaussian_hz": (0.0, 0.5), "lb_hz": 0.0, "zero_fill": 4,
                       "obs_mhz": 100.6, "carrier_ppm": 100.0},
    # 31P{1H}-like: few singlets over a wide window, narrow to broad (about 2 Hz per point), lb 2 Hz
    "31p": {"hz_per_point": 2.0, "multiplets": (1, 5), "max_couplings": 0, "linewidth_hz": (1.5, 20.0),
            "gaussian_hz": (0.0, 4.0), "lb_hz": 2.0, "obs_mhz": 162.0, "carrier_ppm": 0.0},
}
# what a mixture regime may not change: every ladder of one data set shares them
_SHARED = ("length", "levels", "snr_ratio", "mixture")
# ladders are generated in chunks of at most this many FID values per level set (memory: 16 bytes each)
_CHUNK_VALUES = 2 ** 25


@dataclass
class SimulationSettings:
    """What a simulated ladder looks like. Frequencies in Hz, widths are FWHM in Hz, angles in degrees.

    ``snr`` is a ``[low, high]`` range of level-0 max/σ drawn log-uniformly per sample.
    """

    length: int = 2048              # points of the real spectrum (the FID has length / zero_fill points)
    levels: int = 4                 # K + 1
    snr_ratio: float = 2.0          # T: SNR gain per level
    snr: tuple[float, float] = (5.0, 30.0)
    sw_hz: float = 2000.0           # spectral width (replaced by hz_per_point · length when that is set)
    obs_mhz: float = 400.0          # spectrometer frequency (ppm = Hz / MHz)
    carrier_ppm: float = 4.75
    multiplets: tuple[int, int] = (2, 8)
    linewidth_hz: tuple[float, float] = (1.5, 6.0)    # Lorentzian FWHM
    gaussian_hz: tuple[float, float] = (0.0, 3.0)     # Gaussian FWHM (Voigt lines when > 0)
    coupling_hz: tuple[float, float] = (3.0, 15.0)
    max_couplings: int = 2          # coupling partners per multiplet (each to 1..3 equivalent nuclei); 0: singlets
    intensity: tuple[float, float] = (0.2, 3.0)       # protons per multiplet (integral)
    lb_hz: float = 0.3              # processing apodisation applied to every level (0: none)
    phase_deg: float = 1.0          # per-level zero-order phase error, uniform in ±phase_deg
    baseline: float = 0.002         # per-level baseline error amplitude relative to max(clean)
    shift_points: float = 0.5       # per-level shift, uniform in ±shift_points (level 0 is the frame: 0)
    scale_range: tuple[float, float] = (0.5, 2.0)     # per-level normalisation factor, log-uniform
    zero_fill: int = 2              # spectrum points per FID point (acquisition time length / (zero_fill · sw))
    hz_per_point: float | None = None  # digital resolution: sets sw_hz = hz_per_point · length (null: sw_hz)
    phase0_deg: float = 0.0         # zero-order phase error shared by a ladder's levels, uniform in ±phase0_deg
    phase1_deg: float = 0.0         # first-order phase error across the window (pivot at the centre), shared
    baseline_roll: float = 0.0      # shared baseline roll, max |roll| relative to max(clean)
    drift_hz: float = 0.0           # level k shifted by k·d Hz, d uniform in ±drift_hz per ladder
    drift_linewidth_hz: float = 0.0  # level k broadened by k·b Hz, b uniform in ±drift_linewidth_hz per ladder
    early_noise: tuple[float, float] = (0.0, 0.0)    # fraction of noise variance in excess early-FID noise, per ladder
    early_noise_ms: tuple[float, float] = (0.1, 2.0)  # its decay time τ in ms (HWHM 1/(2πτ) Hz along the spectrum)
    mixture: tuple = ()             # regimes: preset names or {"preset"?, "weight"?, overrides...}; one per ladder

    def __post_init__(self):
        problems = []
        if self.length < 64 or self.length % 2:
            problems.append(f"length must be an even number >= 64, got {self.length}")
        if self.levels < 2:
            problems.append(f"levels must be >= 2 (a ladder), got {self.levels}")
        if not self.snr_ratio > 1:
            problems.append(f"snr_ratio (T) must be > 1, got {self.snr_ratio}")
        for name in ("snr", "multiplets", "linewidth_hz", "gaussian_hz", "coupling_hz", "intensity", "scale_range"):
            low, high = getattr(self, name)
            if low > high or low < 0:
                problems.append(f"{name} must be [low, high] with 0 <= low <= high, got {[low, high]}")
        if self.snr[0] <= 0 or self.linewidth_hz[0] <= 0 or self.scale_range[0] <= 0 or self.multiplets[0] < 1:
            problems.append("snr, linewidth_hz and scale_range must be positive and multiplets at least 1")
        low, high = self.early_noise
        if not 0 <= low <= high < 1:
            problems.append(f"early_noise must be [low, high] with 0 <= low <= high < 1 (a fraction of the noise "
                            f"variance), got {[low, high]}")
        low, high = self.early_noise_ms
        if not 0 < low <= high:
            problems.append(f"early_noise_ms must be [low, high] with 0 < low <= high (ms), got {[low, high]}")
        if self.zero_fill < 1 or self.length % self.zero_fill or self.length // self.zero_fill < 16:
            problems.append(f"zero_fill must be >= 1, divide length ({self.length}) and leave at least 16 FID "
                            f"points, got {self.zero_fill}")
        if self.hz_per_point is not None and not self.hz_per_point > 0:
            problems.append(f"hz_per_point must be > 0 or null, got {self.hz_per_point}")
        if self.max_couplings < 0:
            problems.append(f"max_couplings must be >= 0 (0: singlets), got {self.max_couplings}")
        for name in ("lb_hz", "phase_deg", "baseline", "shift_points", "phase0_deg", "phase1_deg", "baseline_roll",
                     "drift_hz", "drift_linewidth_hz"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise ValueError("; ".join(problems))
        if self.hz_per_point is not None:
            self.sw_hz = self.hz_per_point * self.length
        self.mixture = tuple(self.mixture)
        self._regimes = [self._regime(entry, i) for i, entry in enumerate(self.mixture)]

    def _regime(self, entry, index: int) -> tuple[SimulationSettings, float]:
        """One mixture entry as (settings, weight); a preset name, or overrides with optional preset/weight."""
        where = f"mixture[{index}]"
        if isinstance(entry, str):
            entry = {"preset": entry}
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a preset name ({sorted(PRESETS)}) or an object of overrides, "
                             f"got {entry!r}")
        entry = dict(entry)
        preset, weight = entry.pop("preset", None), entry.pop("weight", 1.0)
        if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
            raise ValueError(f"{where}: unknown preset {preset!r}; valid: {sorted(PRESETS)}")
        if not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"{where}: weight must be a number > 0, got {weight!r}")
        overrides = {**PRESETS.get(preset, {}), **entry}
        shared = sorted(set(overrides) & set(_SHARED))
        if shared:
            raise ValueError(f"{where}: {shared} are shared by every ladder of a data set and set outside mixture")
        base = {k: v for k, v in self.to_dict().items() if k not in ("mixture", "hz_per_point")}
        if "hz_per_point" not in overrides and "sw_hz" not in overrides and self.hz_per_point is not None:
            overrides["hz_per_point"] = self.hz_per_point
        try:
            return SimulationSettings.from_dict({**base, **overrides}), float(weight)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    @property
    def regimes(self) -> list[tuple[SimulationSettings, float]]:
        """The mixture's regimes as (settings, weight); empty without a mixture."""
        return list(self._regimes)

    @property
    def fid_points(self) -> int:
        """Complex FID points per acquisition: ``length / zero_fill``."""
        return self.length // self.zero_fill

    @property
    def acquisition_s(self) -> float:
        """Acquisition time of the FID in seconds: ``fid_points / sw_hz``."""
        return self.fid_points / self.sw_hz

    @classmethod
    def from_dict(cls, values: dict | None) -> SimulationSettings:
        """Settings from a config dict; unknown keys are an error that lists the valid ones."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown simulation setting(s) {unknown}; valid: {sorted(known)}")
        for key, value in values.items():
            if isinstance(value, list):
                values[key] = tuple(value)
        return cls(**values)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def ppm(self) -> torch.Tensor:
        """The ppm axis ``(length,)``, decreasing along the index."""
        # after fftshift, point i holds (i - L/2)·SW/L Hz; the spectrum is then reversed (point L - 1 - i)
        hz = (self.length // 2 - 1 - torch.arange(self.length, dtype=torch.float64)) * self.sw_hz / self.length
        return self.carrier_ppm + hz / self.obs_mhz


def _uniform(generator, shape, low, high, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def _log_uniform(generator, shape, low, high, device) -> torch.Tensor:
    return torch.exp(_uniform(generator, shape, math.log(low), math.log(high), device))


def random_multiplets(settings: SimulationSettings, n: int, generator: torch.Generator, device="cpu"):
    """Multiplets of ``n`` spectra, ``P = settings.multiplets[1]`` slots each (unused slots have area 0).

    Returns ``(n, P)`` tensors of centre offset (Hz), area (protons), Lorentzian and Gaussian FWHM (Hz), and
    ``(n, P, C)`` couplings J (Hz) with the number 0..3 of equivalent nuclei coupled at each (0: none), so a
    multiplet is a first-order pattern (doublet, triplet, quartet, doublet of triplets...); C = 0 gives singlets.
    """
    s = settings
    slots, couplings = s.multiplets[1], s.max_couplings
    count = torch.randint(s.multiplets[0], slots + 1, (n,), generator=generator, device=device)
    present = torch.arange(slots, device=device)[None] < count[:, None]
    centre = _uniform(generator, (n, slots), -0.45 * s.sw_hz, 0.45 * s.sw_hz, device)
    area = _uniform(generator, (n, slots), *s.intensity, device) * present
    lorentz = _uniform(generator, (n, slots), *s.linewidth_hz, device)
    gauss = _uniform(generator, (n, slots), *s.gaussian_hz, device)
    j = _uniform(generator, (n, slots, couplings), *s.coupling_hz, device)
    nuclei = torch.randint(0, 4, (n, slots, couplings), generator=generator, device=device)
    return centre, area, lorentz, gauss, j, nuclei


def fid_from_multiplets(settings: SimulationSettings, centre, area, lorentz, gauss, j, nuclei) -> torch.Tensor:
    """Complex FIDs ``(n, length / zero_fill)``: per multiplet a damped exponential with Voigt decay (Lorentzian
    × Gaussian), modulated by ``cos(π J t)^m`` for each coupling to ``m`` equivalent nuclei, which is exactly the
    binomial first-order splitting. A multiplet of area ``a`` starts at amplitude ``a``, so its integral in the
    spectrum is proportional to ``a`` whatever its width.
    """
    td = settings.fid_points
    t = torch.arange(td, dtype=torch.float64, device=centre.device) / settings.sw_hz
    decay = -math.pi * lorentz[..., None] * t - (math.pi * gauss[..., None] * t) ** 2 / (4 * math.log(2))
    envelope = area[..., None] * torch.exp(decay)
    split = torch.cos(math.pi * j[..., None] * t).pow(nuclei[..., None]).prod(dim=2)       # (n, P, td)
    rotation = torch.exp(torch.complex(torch.zeros_like(decay), 2 * math.pi * centre[..., None] * t))
    return (envelope * split * rotation).sum(1)


def process(settings: SimulationSettings, fid: torch.Tensor, phase_deg: torch.Tensor | None = None,
            phase1_deg: torch.Tensor | None = None) -> torch.Tensor:
    """Real spectra ``(..., length)`` from FIDs ``(..., length / zero_fill)``: apodisation, zero filling, FFT,
    phase.

    The first point is halved (the usual DC correction) and the result reversed so ppm decreases along the
    index; ``phase_deg`` ``(...,)`` is a zero-order phase error, ``phase1_deg`` ``(...,)`` a first-order one:
    point i of the result is rotated by ``phase_deg + phase1_deg·(i/length − 1/2)`` degrees.
    """
    td = fid.shape[-1]
    t = torch.arange(td, dtype=torch.float64, device=fid.device) / settings.sw_hz
    data = fid * torch.exp(-math.pi * settings.lb_hz * t)
    data = torch.cat([data[..., :1] / 2, data[..., 1:]], dim=-1)
    spectrum = torch.fft.fftshift(torch.fft.fft(data, n=settings.length), dim=-1)
    if phase_deg is not None:
        spectrum = spectrum * torch.exp(1j * torch.deg2rad(phase_deg))[..., None]
    if phase1_deg is not None:
        # index j of the unreversed spectrum is point L-1-j of the result
        x = (settings.length - 1 - torch.arange(settings.length, dtype=torch.float64, device=fid.device))
        ramp = torch.deg2rad(phase1_deg)[..., None] * (x / settings.length - 0.5)
        spectrum = spectrum * torch.exp(1j * ramp)
    return spectrum.real.flip(-1)


def noise_gain(settings: SimulationSettings) -> float:
    """Standard deviation of the processed spectrum's real part per unit complex-noise σ in the FID.

    Each real spectrum point is a weighted sum of the FID noise: var = Σ w_n² σ² (the apodisation
    weights w_n, the first point halved).
    """
    td = settings.fid_points
    w = torch.exp(-math.pi * settings.lb_hz * torch.arange(td, dtype=torch.float64) / settings.sw_hz)
    w[0] /= 2
    return float(w.pow(2).sum().sqrt())


def early_noise_profile(settings: SimulationSettings, fraction: torch.Tensor,
                        tau_ms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Amplitude profiles ``(n, td)`` of the FID noise and the processed noise gains ``(n,)`` for excess early-FID
    noise (``early_noise``): a fraction ``fraction`` ``(n,)`` of the processed noise variance in noise that decays
    with time constant ``tau_ms`` ``(n,)``, i.e. correlated along the spectrum with a Lorentzian autocorrelation of
    half width 1/(2π·τ) Hz.

    FID point n (time t_n = n/sw) gets complex noise of variance σ²·(1 + A·exp(−t_n/τ)), and A solves
    A·S1 / (S0 + A·S1) = fraction with S0 = Σ w_n², S1 = Σ w_n²·exp(−t_n/τ) (w: apodisation weights, first point
    halved), so the gain is sqrt(S0 + A·S1) per unit σ, exactly, at every spectrum point.
    """
    td = settings.fid_points
    t = torch.arange(td, dtype=torch.float64, device=fraction.device) / settings.sw_hz
    w2 = torch.exp(-2 * math.pi * settings.lb_hz * t)
    w2[0] /= 4
    decay = torch.exp(-t[None] / (1e-3 * tau_ms[:, None]))                                  # (n, td)
    s0, s1 = w2.sum(), (w2 * decay).sum(-1)
    excess = fraction * s0 / ((1 - fraction) * s1)
    return (1 + excess[:, None] * decay).sqrt(), (s0 + excess * s1).sqrt()


def simulate_ladders(settings: SimulationSettings, n: int, seed: int, device="cpu",
                     snr: float | None = None) -> dict[str, torch.Tensor]:
    """``n`` simulated ladders. Returns tensors on ``device``:

    - ``spectra`` ``(n, K+1, length)`` float32: levels by rising SNR, each with its own noise, phase, baseline,
      shift and normalisation;
    - ``clean`` ``(n, length)`` float32: the noise-free, error-free spectrum in level 0's units and frame;
    - ``sigma`` ``(n, K+1)`` float32: each level's true noise standard deviation in its own units;
    - ``phase0`` ``(n, K+1)`` and ``phase1`` ``(n,)`` float32: the zero- and first-order phase errors (degrees);
    - ``regime`` ``(n,)`` int64: the mixture regime of each ladder (0 without a mixture);
    - ``ppm`` ``(length,)`` float32 (with a mixture, the axis of the base settings: regimes may differ).

    ``snr`` fixes every sample's level-0 max/σ (held-out evaluation); otherwise it is drawn from
    ``settings.snr`` (the regime's, in a mixture). The same ``seed`` gives the same ladders on the same device.
    Large requests are generated in chunks (each with a seed drawn from ``seed``) to bound memory.
    """
    if settings.mixture:
        return _simulate_mixture(settings, n, seed, device, snr)
    chunk = max(1, _CHUNK_VALUES // (settings.levels * settings.fid_points))
    if n <= chunk:
        return _simulate(settings, n, seed, device, snr)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    seeds = torch.randint(0, 2 ** 62, (math.ceil(n / chunk),), generator=generator).tolist()
    parts = [_simulate(settings, min(chunk, n - i * chunk), s, device, snr) for i, s in enumerate(seeds)]
    return _concatenate(parts, settings, device)


def _concatenate(parts: list[dict], settings: SimulationSettings, device) -> dict[str, torch.Tensor]:
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "ppm"}
    out["ppm"] = settings.ppm().float().to(device)
    return out


def _simulate_mixture(settings: SimulationSettings, n: int, seed: int, device, snr) -> dict[str, torch.Tensor]:
    """Each ladder draws a regime (by weight); the regimes are generated in one vectorised pass each."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    regimes = settings.regimes
    weights = torch.tensor([w for _, w in regimes], dtype=torch.float64)
    choice = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=generator)
    seeds = torch.randint(0, 2 ** 62, (len(regimes),), generator=generator).tolist()
    out: dict[str, torch.Tensor] = {}
    for r, ((regime, _), regime_seed) in enumerate(zip(regimes, seeds)):
        rows = torch.nonzero(choice == r)[:, 0]
        if len(rows) == 0:
            continue
        part = simulate_ladders(regime, len(rows), regime_seed, device, snr)
        part["regime"] = torch.full((len(rows),), r, dtype=torch.int64, device=device)
        for key, value in part.items():
            if key == "ppm":
                continue
            if key not in out:
                out[key] = torch.zeros((n, *value.shape[1:]), dtype=value.dtype, device=device)
            out[key][rows.to(device)] = value
    out["ppm"] = settings.ppm().float().to(device)
    return out


def _simulate(settings: SimulationSettings, n: int, seed: int, device, snr) -> dict[str, torch.Tensor]:
    """One vectorised pass of :func:`simulate_ladders` for plain (non-mixture) settings."""
    s = settings
    generator = torch.Generator(device=device).manual_seed(seed)
    levels = s.levels
    multiplets = random_multiplets(s, n, generator, device)
    clean_fid = fid_from_multiplets(s, *multiplets)
    clean = process(s, clean_fid)                                                            # (n, L)
    peak = clean.amax(-1)
    target = (torch.full((n,), float(snr), dtype=torch.float64, device=device) if snr is not None
              else _log_uniform(generator, (n,), *s.snr, device))
    gain = noise_gain(s)
    profile = None
    if s.early_noise[1] > 0:   # drawn only when on, so the defaults keep today's random stream
        fraction = _uniform(generator, (n,), *s.early_noise, device)
        tau = _log_uniform(generator, (n,), *s.early_noise_ms, device)
        profile, gain = early_noise_profile(s, fraction, tau)
        profile, gain = profile[:, None], gain[:, None]                                    # (n, 1, td), (n, 1)
    sigma0 = peak / (target * (gain if profile is None else gain[:, 0]))
    sigma_fid = sigma0[:, None] * s.snr_ratio ** -torch.arange(levels, device=device, dtype=torch.float64)
    td = s.fid_points
    noise = torch.complex(torch.randn(n, levels, td, generator=generator, device=device, dtype=torch.float64),
                          torch.randn(n, levels, td, generator=generator, device=device, dtype=torch.float64))
    if profile is not None:
        noise = noise * profile
    phase = _uniform(generator, (n, levels), -s.phase_deg, s.phase_deg, device)
    # the options below draw only when they are on, so the defaults keep today's random stream (and numbers)
    signal = clean_fid[:, None]                                                              # (n, 1 or K+1, td)
    if s.drift_hz or s.drift_linewidth_hz:
        signal = signal * _drift(s, n, multiplets[2], generator, device)
    if s.phase0_deg:
        phase = phase + _uniform(generator, (n, 1), -s.phase0_deg, s.phase0_deg, device)
    phase1 = _uniform(generator, (n,), -s.phase1_deg, s.phase1_deg, device) if s.phase1_deg else None
    spectra = process(s, signal + sigma_fid[..., None] * noise, phase,
                      None if phase1 is None else phase1[:, None].expand(n, levels))         # (n, K+1, L)
    spectra = spectra + s.baseline * peak[:, None, None] * _baseline_errors(n, levels, s.length, generator, device)
    shift = _uniform(generator, (n, levels), -s.shift_points, s.shift_points, device)
    shift[:, 0] = 0
    if s.baseline_roll:
        spectra = spectra + s.baseline_roll * peak[:, None, None] * _baseline_roll(n, s.length, generator, device)
    spectra = fourier_shift(spectra.flatten(0, 1), shift.flatten()).view(n, levels, s.length)
    scale = _log_uniform(generator, (n, levels), *s.scale_range, device)
    spectra = spectra * scale[..., None]
    sigma = sigma_fid * gain * scale
    return {"spectra": spectra.float(), "clean": (clean * scale[:, :1]).float(), "sigma": sigma.float(),
            "phase0": phase.float(),
            "phase1": (phase1 if phase1 is not None else torch.zeros(n, dtype=torch.float64, device=device)).float(),
            "regime": torch.zeros(n, dtype=torch.int64, device=device), "ppm": s.ppm().float().to(device)}


def _drift(settings: SimulationSettings, n: int, lorentz: torch.Tensor, generator, device) -> torch.Tensor:
    """Per-level FID factors ``(n, K+1, td)`` that move level k's lines by k·d Hz and broaden them by k·b Hz."""
    s, top = settings, settings.levels - 1
    k = torch.arange(s.levels, device=device, dtype=torch.float64)[None, :, None]
    d = _uniform(generator, (n, 1, 1), -s.drift_hz, s.drift_hz, device)
    b = _uniform(generator, (n, 1, 1), -s.drift_linewidth_hz, s.drift_linewidth_hz, device)
    b = torch.maximum(b, -0.9 * lorentz.amin(1)[:, None, None] / top)                   # no negative widths
    t = torch.arange(s.fid_points, dtype=torch.float64, device=device) / s.sw_hz
    return torch.exp(torch.complex(-math.pi * k * b * t, 2 * math.pi * k * d * t))


def _baseline_roll(n: int, length: int, generator, device) -> torch.Tensor:
    """Shared baseline rolls ``(n, 1, length)`` of maximum absolute value 1: a sinusoid of 0.5–4 periods across
    the window plus a random cubic, as left by corrupted first FID points or a mis-set group delay."""
    x = torch.linspace(-1, 1, length, dtype=torch.float64, device=device)
    periods = _uniform(generator, (n, 1), 0.5, 4.0, device)
    offset = _uniform(generator, (n, 1), 0, 2 * math.pi, device)
    coef = _uniform(generator, (n, 4), -1, 1, device)
    cubic = coef[:, :1] + coef[:, 1:2] * x + coef[:, 2:3] * x ** 2 + coef[:, 3:] * x ** 3
    roll = torch.sin(math.pi * periods * x + offset) + 0.5 * cubic
    return (roll / roll.abs().amax(-1, keepdim=True))[:, None]


def _baseline_errors(n: int, levels: int, length: int, generator, device) -> torch.Tensor:
    """Smooth baseline distortions ``(n, levels, length)`` of unit scale: a random quadratic plus a broad hump."""
    x = torch.linspace(-1, 1, length, dtype=torch.float64, device=device)
    coef = _uniform(generator, (n, levels, 3), -1, 1, device)
    poly = coef[..., :1] + coef[..., 1:2] * x + coef[..., 2:] * (x ** 2 - 1 / 3)
    centre = _uniform(generator, (n, levels, 1), -0.8, 0.8, device)
    width = _uniform(generator, (n, levels, 1), 0.1, 0.4, device)
    height = _uniform(generator, (n, levels, 1), -1, 1, device)
    return poly + height * torch.exp(-((x - centre) / width) ** 2)
