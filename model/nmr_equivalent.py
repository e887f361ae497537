"""Equivalent SNR gain: how many raw scans (blocks) a denoiser's output is worth, measured against a reference.

For a sample recorded as disjoint blocks of scans, the raw average of ``n`` blocks has an error to an independent
reference that falls like ``1/sqrt(n)``, down to the floor set by the reference's own noise (and by anything the
blocks share that the reference lacks):

    l2(n)**2 = a / n + c,        a = (noise of one block)**2,  c >= 0 the floor.

A method's output on a one-block input with error ``l2_out`` is worth ``n*`` blocks where the raw curve reaches the
same error; its *equivalent SNR gain* is ``sqrt(n*)`` (the SNR of a raw average grows as ``sqrt(n)``). Unlike max/σ,
this cannot be inflated by flattening the baseline: any distortion of the peaks counts as error.

Two estimates of ``n*`` from the measured raw curve (``ns``, ``l2_raw``) — e.g. the ladder levels of 1, 4, 16, 64
blocks, scored against the reference built from the remaining blocks:

* ``"fit"``: least squares of ``l2**2`` on ``1/n`` (the sqrt(n) law with a floor), ``n* = a / (l2_out**2 - c)``;
* ``"interp"``: linear interpolation of ``log l2`` in ``log n`` between the measured points, falling back to the
  fit outside the measured range.

When ``l2_out**2 <= c`` the output is closer to the reference than any number of raw blocks could bring the raw
average (it beats the floor): ``n*`` is infinite, reported as ``None`` with ``beyond_floor = True``. All errors
must be on one scale (e.g. ``model.nmr_metrics``' ``l2``, relative to the reference's tallest peak).

**Without a clean reference: Noise2Noise** (:func:`noise2noise_errors`, :func:`noise2noise_gain`). Two independent
acquisitions ``x1 = s + n1``, ``x2 = s + n2`` of one sample (same tube, pulse program, NS, RG) and an output
``f(x1)`` that does not see ``n2``: ``E||f(x1) - x2||² = E||f(x1) - s||² + E||n2||²`` and
``E||x1 - x2||²/2 = E||n2||²`` (equal noise levels), so ``err²(f) = ||f(x1) - x2||² - ||x1 - x2||²/2`` and
``err²(input) = ||x1 - x2||²/2`` are unbiased, on any fixed set of points (the whole spectrum, or the peak mask,
where erasing cannot win). Averaging n scans divides err² by n, so the equivalent gain is
``sqrt(err²(input)/err²(f))`` and ``n = gain²``. A signal difference between x1 and x2 (two tubes) adds
``||s1 - s2||²`` to both terms and biases the estimate (``tests/test_nmr_equivalent.py`` shows both cases).
Lower-SNR inputs from a pair: see ``benchmarks/nmr_real_data.py`` ("Repeat pairs") for why ``x1 + a·(x1 - x2)/√2``
scored against ``x2`` is biased and what is done instead.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class RawCurve:
    """The sqrt(n) law ``l2(n)**2 = a / n + c`` fitted to measured raw averages."""

    ns: tuple[float, ...]
    l2: tuple[float, ...]
    a: float
    c: float

    def at(self, n: float) -> float:
        """The fitted raw-average error after ``n`` blocks."""
        return math.sqrt(self.a / n + self.c)

    def blocks_for(self, l2: float) -> float:
        """``n`` with ``at(n) == l2`` (``inf`` at or below the floor)."""
        excess = l2 * l2 - self.c
        return math.inf if excess <= 0 else self.a / excess


def fit_raw_curve(ns, l2_raw) -> RawCurve:
    """Least-squares fit of ``l2**2 = a / n + c`` with ``a > 0``, ``c >= 0`` (``c = 0`` refit when negative)."""
    ns = np.asarray(ns, dtype=np.float64)
    l2_raw = np.asarray(l2_raw, dtype=np.float64)
    if ns.shape != l2_raw.shape or ns.ndim != 1 or len(ns) < 2:
        raise ValueError(f"need at least two (n, l2) points of equal length, got {ns.shape} and {l2_raw.shape}")
    if (ns <= 0).any() or (l2_raw <= 0).any() or not np.isfinite(l2_raw).all():
        raise ValueError("block counts and errors must be positive and finite")
    if len(np.unique(ns)) < 2:
        raise ValueError("need at least two different block counts")
    x, y = 1.0 / ns, l2_raw ** 2
    # weight each point by 1/y: relative residuals, so the small errors of the large averages count as much
    w = 1.0 / y
    design = np.stack([x, np.ones_like(x)], axis=1)
    a, c = np.linalg.lstsq(design * w[:, None], y * w, rcond=None)[0]
    if c < 0 or a <= 0:
        c = 0.0
        a = float(np.sum(w * w * x * y) / np.sum(w * w * x * x))
    return RawCurve(ns=tuple(ns.tolist()), l2=tuple(l2_raw.tolist()), a=float(a), c=float(c))


def equivalent_blocks(l2_out: float, ns, l2_raw, mode: str = "fit") -> tuple[float, RawCurve]:
    """``n*``: raw blocks whose average has error ``l2_out`` (see the module docstring), and the fitted curve."""
    if mode not in ("fit", "interp"):
        raise ValueError(f"mode must be 'fit' or 'interp', got {mode!r}")
    curve = fit_raw_curve(ns, l2_raw)
    if mode == "interp":
        order = np.argsort(curve.ns)
        log_n = np.log(np.asarray(curve.ns)[order])
        log_l2 = np.log(np.asarray(curve.l2)[order])
        target = math.log(l2_out)
        for i in range(len(log_n) - 1):
            hi, lo = log_l2[i], log_l2[i + 1]
            if min(hi, lo) <= target <= max(hi, lo) and hi != lo:
                t = (target - hi) / (lo - hi)
                return math.exp(log_n[i] + t * (log_n[i + 1] - log_n[i])), curve
    return curve.blocks_for(l2_out), curve


def equivalent_gain(l2_out: float, ns, l2_raw, mode: str = "fit", input_blocks: float = 1.0) -> dict:
    """Equivalent SNR gain of an output made from ``input_blocks`` blocks: ``sqrt(n* / input_blocks)``.

    Returns ``{"gain", "blocks", "beyond_floor", "mode", "curve": {"a", "c", "ns", "l2"}}``; ``gain``/``blocks``
    are None (JSON-safe) when the output beats the raw curve's floor.
    """
    if not (l2_out > 0 and math.isfinite(l2_out)):
        raise ValueError(f"l2_out must be positive and finite, got {l2_out}")
    blocks, curve = equivalent_blocks(l2_out, ns, l2_raw, mode)
    beyond = math.isinf(blocks)
    return {"gain": None if beyond else math.sqrt(blocks / input_blocks), "blocks": None if beyond else blocks,
            "beyond_floor": beyond, "mode": mode, "curve": asdict(curve)}


def relative_l2(y: np.ndarray, reference: np.ndarray) -> float:
    """RMS of ``y - reference`` over max|reference| (``model.nmr_metrics``' ``l2``)."""
    y, reference = np.asarray(y, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.sqrt(np.mean((y - reference) ** 2)) / np.max(np.abs(reference)))


# ---------------------------------------------------------------------------------------------------------------
# Noise2Noise: the error to an unknown truth from two independent acquisitions of one sample


def noise2noise_errors(output, x1, x2, mask=None) -> dict:
    """Unbiased error estimates against the unknown truth ``s`` from two repeats ``x1 = s + n1``, ``x2 = s + n2``.

    Assumptions: ``n1`` and ``n2`` independent, zero mean, with the same variance at every point (same pulse
    program, NS, RG, receiver), the *same* ``s`` in both (same tube, nothing changed between them), and ``output``
    a function of ``x1`` only (so independent of ``n2``). Then, summing over the points of ``mask`` (all if None):

        E||output - x2||^2 = E||output - s||^2 + E||n2||^2,    E||x1 - x2||^2 / 2 = E||n2||^2,

    so ``err2_output = ||output - x2||^2 - ||x1 - x2||^2 / 2`` estimates ``||output - s||^2`` without bias, and
    ``err2_input = ||x1 - x2||^2 / 2`` estimates ``||x1 - s||^2`` (the raw input's error). ``err2_output`` can come
    out negative for an output much closer to ``s`` than the noise of one repeat (its estimator's spread is about
    ``2 sqrt(sum(var(n2) * (output - s)^2))`` plus the spread of the input term).

    Returns ``{"err2_output", "err2_input", "points"}`` (sums, not means).
    """
    output, x1, x2 = (np.asarray(v, dtype=np.float64) for v in (output, x1, x2))
    if not output.shape == x1.shape == x2.shape:
        raise ValueError(f"output, x1 and x2 must have one shape, got {output.shape}, {x1.shape}, {x2.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        output, x1, x2 = output[mask], x1[mask], x2[mask]
    noise = float(np.sum((x1 - x2) ** 2) / 2.0)
    return {"err2_output": float(np.sum((output - x2) ** 2)) - noise, "err2_input": noise, "points": int(x1.size)}


def noise2noise_gain(output, x1, x2, mask=None) -> dict:
    """Equivalent SNR gain from a repeat pair: ``sqrt(err2_input / err2_output)`` (:func:`noise2noise_errors`).

    Averaging ``n`` independent scans divides the error power by ``n``, so the output is worth ``blocks = gain**2``
    acquisitions like ``x1``. ``gain``/``blocks`` are None with ``beyond_floor = True`` when the estimate of
    ``err2_output`` is not positive (an output indistinguishable from the truth at this pair's noise).
    """
    errors = noise2noise_errors(output, x1, x2, mask)
    beyond = errors["err2_output"] <= 0
    gain = None if beyond else math.sqrt(errors["err2_input"] / errors["err2_output"])
    return {**errors, "gain": gain, "blocks": None if beyond else gain * gain, "beyond_floor": beyond}
