"""Simulated 1D NMR acquisition ladders: the embedded default data set, generated in one vectorised pass.

Each sample is a clean ¹H-like spectrum (first-order multiplets of Voigt lines) acquired at levels
k = 0..K. Every level is the same clean FID plus independent complex white noise of standard deviation
σ_k = σ_0·T^-k (separate acquisitions, so the Noise2Noise condition holds), processed like real data
(exponential apodisation, 2× zero filling, FFT, small phase error), given a small baseline error, shifted
by a fraction of a point and scaled by a random normalisation factor. The clean spectrum is kept, in the
units and frame of level 0, for evaluation.

Conventions: real spectra of ``length`` points with ppm decreasing along the index (NMR plots run from
high to low ppm); σ_0 is set per sample so that level 0 has ``max(clean) / σ = snr`` in the processed
spectrum (the max/σ convention of VnmrJ ``dsn``; Bruker's ``sino`` would be half of it).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from data_loader.nmr.preprocess import fourier_shift


@dataclass
class SimulationSettings:
    """What a simulated ladder looks like. Frequencies in Hz, widths are FWHM in Hz, angles in degrees.

    ``snr`` is a ``[low, high]`` range of level-0 max/σ drawn log-uniformly per sample.
    """

    length: int = 2048              # points of the real spectrum (the FID has length / 2: 2× zero filling)
    levels: int = 4                 # K + 1
    snr_ratio: float = 2.0          # T: SNR gain per level
    snr: tuple[float, float] = (5.0, 30.0)
    sw_hz: float = 2000.0           # spectral width
    obs_mhz: float = 400.0          # spectrometer frequency (ppm = Hz / MHz)
    carrier_ppm: float = 4.75
    multiplets: tuple[int, int] = (2, 8)
    linewidth_hz: tuple[float, float] = (1.5, 6.0)    # Lorentzian FWHM
    gaussian_hz: tuple[float, float] = (0.0, 3.0)     # Gaussian FWHM (Voigt lines when > 0)
    coupling_hz: tuple[float, float] = (3.0, 15.0)
    max_couplings: int = 2          # coupling partners per multiplet (each to 1..3 equivalent nuclei)
    intensity: tuple[float, float] = (0.2, 3.0)       # protons per multiplet (integral)
    lb_hz: float = 0.3              # processing apodisation applied to every level
    phase_deg: float = 1.0          # per-level zero-order phase error, uniform in ±phase_deg
    baseline: float = 0.002         # per-level baseline error amplitude relative to max(clean)
    shift_points: float = 0.5       # per-level shift, uniform in ±shift_points (level 0 is the frame: 0)
    scale_range: tuple[float, float] = (0.5, 2.0)     # per-level normalisation factor, log-uniform

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
        if problems:
            raise ValueError("; ".join(problems))

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
    multiplet is a first-order pattern (doublet, triplet, quartet, doublet of triplets...).
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
    """Complex FIDs ``(n, length / 2)``: per multiplet a damped exponential with Voigt decay (Lorentzian ×
    Gaussian), modulated by ``cos(π J t)^m`` for each coupling to ``m`` equivalent nuclei, which is exactly the
    binomial first-order splitting. A multiplet of area ``a`` starts at amplitude ``a``, so its integral in the
    spectrum is proportional to ``a`` whatever its width.
    """
    td = settings.length // 2
    t = torch.arange(td, dtype=torch.float64, device=centre.device) / settings.sw_hz
    decay = -math.pi * lorentz[..., None] * t - (math.pi * gauss[..., None] * t) ** 2 / (4 * math.log(2))
    envelope = area[..., None] * torch.exp(decay)
    split = torch.cos(math.pi * j[..., None] * t).pow(nuclei[..., None]).prod(dim=2)       # (n, P, td)
    rotation = torch.exp(torch.complex(torch.zeros_like(decay), 2 * math.pi * centre[..., None] * t))
    return (envelope * split * rotation).sum(1)


def process(settings: SimulationSettings, fid: torch.Tensor, phase_deg: torch.Tensor | None = None) -> torch.Tensor:
    """Real spectra ``(..., length)`` from FIDs ``(..., length / 2)``: apodisation, zero filling, FFT, phase.

    The first point is halved (the usual DC correction) and the result reversed so ppm decreases along the
    index; ``phase_deg`` ``(...,)`` is a zero-order phase error.
    """
    td = fid.shape[-1]
    t = torch.arange(td, dtype=torch.float64, device=fid.device) / settings.sw_hz
    data = fid * torch.exp(-math.pi * settings.lb_hz * t)
    data = torch.cat([data[..., :1] / 2, data[..., 1:]], dim=-1)
    spectrum = torch.fft.fftshift(torch.fft.fft(data, n=settings.length), dim=-1)
    if phase_deg is not None:
        spectrum = spectrum * torch.exp(1j * torch.deg2rad(phase_deg))[..., None]
    return spectrum.real.flip(-1)


def noise_gain(settings: SimulationSettings) -> float:
    """Standard deviation of the processed spectrum's real part per unit complex-noise σ in the FID.

    Each real spectrum point is a weighted sum of the FID noise: var = Σ w_n² σ² (the apodisation
    weights w_n, the first point halved).
    """
    td = settings.length // 2
    w = torch.exp(-math.pi * settings.lb_hz * torch.arange(td, dtype=torch.float64) / settings.sw_hz)
    w[0] /= 2
    return float(w.pow(2).sum().sqrt())


def simulate_ladders(settings: SimulationSettings, n: int, seed: int, device="cpu",
                     snr: float | None = None) -> dict[str, torch.Tensor]:
    """``n`` simulated ladders. Returns float32 tensors on ``device``:

    - ``spectra`` ``(n, K+1, length)``: levels by rising SNR, each with its own noise, phase, baseline, shift
      and normalisation;
    - ``clean`` ``(n, length)``: the noise-free, error-free spectrum in level 0's units and frame;
    - ``sigma`` ``(n, K+1)``: each level's true noise standard deviation in its own units;
    - ``ppm`` ``(length,)``.

    ``snr`` fixes every sample's level-0 max/σ (held-out evaluation); otherwise it is drawn from
    ``settings.snr``. The same ``seed`` gives the same ladders on the same device.
    """
    s = settings
    generator = torch.Generator(device=device).manual_seed(seed)
    levels = s.levels
    clean_fid = fid_from_multiplets(s, *random_multiplets(s, n, generator, device))
    clean = process(s, clean_fid)                                                            # (n, L)
    peak = clean.amax(-1)
    target = (torch.full((n,), float(snr), dtype=torch.float64, device=device) if snr is not None
              else _log_uniform(generator, (n,), *s.snr, device))
    sigma0 = peak / (target * noise_gain(s))
    sigma_fid = sigma0[:, None] * s.snr_ratio ** -torch.arange(levels, device=device, dtype=torch.float64)
    td = s.length // 2
    noise = torch.complex(torch.randn(n, levels, td, generator=generator, device=device, dtype=torch.float64),
                          torch.randn(n, levels, td, generator=generator, device=device, dtype=torch.float64))
    phase = _uniform(generator, (n, levels), -s.phase_deg, s.phase_deg, device)
    spectra = process(s, clean_fid[:, None] + sigma_fid[..., None] * noise, phase)           # (n, K+1, L)
    spectra = spectra + s.baseline * peak[:, None, None] * _baseline_errors(n, levels, s.length, generator, device)
    shift = _uniform(generator, (n, levels), -s.shift_points, s.shift_points, device)
    shift[:, 0] = 0
    spectra = fourier_shift(spectra.flatten(0, 1), shift.flatten()).view(n, levels, s.length)
    scale = _log_uniform(generator, (n, levels), *s.scale_range, device)
    spectra = spectra * scale[..., None]
    sigma = sigma_fid * noise_gain(s) * scale
    return {"spectra": spectra.float(), "clean": (clean * scale[:, :1]).float(), "sigma": sigma.float(),
            "ppm": s.ppm().float().to(device)}


def _baseline_errors(n: int, levels: int, length: int, generator, device) -> torch.Tensor:
    """Smooth baseline distortions ``(n, levels, length)`` of unit scale: a random quadratic plus a broad hump."""
    x = torch.linspace(-1, 1, length, dtype=torch.float64, device=device)
    coef = _uniform(generator, (n, levels, 3), -1, 1, device)
    poly = coef[..., :1] + coef[..., 1:2] * x + coef[..., 2:] * (x ** 2 - 1 / 3)
    centre = _uniform(generator, (n, levels, 1), -0.8, 0.8, device)
    width = _uniform(generator, (n, levels, 1), 0.1, 0.4, device)
    height = _uniform(generator, (n, levels, 1), -1, 1, device)
    return poly + height * torch.exp(-((x - centre) / width) ** 2)
