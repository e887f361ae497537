"""Batched preprocessing of real-valued 1D spectra ``(B, L)`` (torch, any device): masks, noise, alignment,
rescaling. Every function takes and returns tensors and leaves its inputs unmodified.
"""
from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# scipy.signal is imported where savgol_coeffs is used: importing it takes about a second, and only the NMR paths
# smooth spectra

MAD_TO_SIGMA = 1.4826  # sigma = 1.4826 * MAD for Gaussian noise


def savgol_smooth(spectra: torch.Tensor, window: int = 11, order: int = 3) -> torch.Tensor:
    """Savitzky-Golay smoothing along the last axis (reflect padding), ``(B, L) -> (B, L)``."""
    if window % 2 == 0 or window <= order:
        raise ValueError(f"window must be odd and larger than order, got window {window}, order {order}")
    half, length = window // 2, spectra.shape[-1]
    if length <= half:  # reflect padding needs more points than the half window
        kernel = torch.tensor(_savgol_taps(window, order), dtype=spectra.dtype, device=spectra.device)
        padded = F.pad(spectra[:, None], (half, half), mode="reflect")
        return F.conv1d(padded, kernel.flip(0)[None, None])[:, 0]
    padded = torch.cat([spectra[:, 1:half + 1].flip(1), spectra, spectra[:, -half - 1:-1].flip(1)], 1)
    # one multiply-add per tap over shifted views: several times faster on the CPU than conv1d for one channel
    taps = _savgol_taps(window, order)   # symmetric, so correlation and convolution agree
    smooth = padded[:, :length] * taps[0]
    for j in range(1, window):
        smooth.add_(padded[:, j:j + length], alpha=taps[j])
    return smooth


def pack_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the ``mask`` points of each row of ``mask`` ``(N, L)`` are: ``index (N, W)`` (column of the j-th
    point, left-packed; 0 beyond the row's count) and ``counts (N,)``, W the largest count. Gathering with it
    packs any values sharing the mask (e.g. all levels of a ladder) without searching the mask again."""
    if mask.device.type == "cpu":
        return _pack_index_numpy(mask.numpy())
    counts = mask.sum(1)
    width = int(counts.max()) if counts.numel() else 0
    rows, cols = mask.nonzero(as_tuple=True)
    slot = torch.arange(rows.numel(), device=mask.device) - (counts.cumsum(0) - counts)[rows]
    index = torch.zeros(mask.shape[0], width, dtype=torch.long, device=mask.device)
    index[rows, slot] = cols
    return index, counts


def _pack_index_numpy(mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pack_index` with NumPy's boolean indexing, which packs in row order (about three times faster than
    torch.nonzero and the scatter on the CPU)."""
    counts = mask.sum(1, dtype=np.int64)
    width = int(counts.max()) if counts.size else 0
    index = np.zeros((mask.shape[0], width), dtype=np.int64)
    index[np.arange(width)[None] < counts[:, None]] = np.broadcast_to(np.arange(mask.shape[1]), mask.shape)[mask]
    return torch.from_numpy(index), torch.from_numpy(counts)


def pack_masked(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``mask`` points of each row of ``values`` ``(N, L)`` packed to the left: ``(packed (N, W), valid (N, W))``
    with W the largest count of a row; ``valid`` marks the packed points (the rest is filler to be ignored).
    Statistics over the masked points then run on W columns instead of L."""
    index, counts = pack_index(mask)
    valid = torch.arange(index.shape[1], device=mask.device)[None] < counts[:, None]
    return values.gather(1, index), valid


@functools.lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="nmr-select")


def _select(buffer: torch.Tensor, m: int, nonnegative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m``-th and ``(m+1)``-th smallest value (0-based) of each row of ``buffer`` ``(N, W)``, which is
    overwritten (+inf when a row has no ``m+1``-th). ``nonnegative``: no value but -inf fillers is below 0.

    On the CPU an in-place ``numpy.partition`` with a single kth (NumPy's vectorised introselect) takes about a
    tenth of the time of ``torch.median``/``kthvalue`` on rows of 16,384 points; then the next value is the
    minimum of what lies beyond. Elsewhere one sort per row (fast on a GPU)."""
    width = buffer.shape[1]
    if buffer.device.type == "cpu":
        array = buffer.numpy()
        if nonnegative and array.dtype == np.float32:
            # non-negative floats (and ±inf) order as their bit patterns as int32, and NumPy partitions int32
            # about twice as fast; -inf, negative as int32, stays below them
            array = array.view(np.int32)
        threads = min(torch.get_num_threads(), len(array), 8)
        if threads > 1 and array.size >= 1 << 18:
            # NumPy releases the GIL while it partitions: blocks of rows on as many threads as torch uses
            blocks = np.array_split(np.arange(len(array)), threads)
            list(_pool(threads).map(lambda rows: array[rows[0]:rows[-1] + 1].partition(m, axis=1), blocks))
        else:
            array.partition(m, axis=1)
        beyond = buffer[:, m + 1:].amin(1) if m + 1 < width else torch.full_like(buffer[:, 0], math.inf)
        return buffer[:, m], beyond
    ordered = buffer.sort(dim=1).values
    return ordered[:, m], ordered[:, m + 1] if m + 1 < width else torch.full_like(buffer[:, 0], math.inf)


def quantile(values: torch.Tensor, q: float, mask: torch.Tensor | None = None,
             nonnegative: bool = False) -> torch.Tensor:
    """The ``q`` quantile ``(N,)`` of each row of ``values`` ``(N, W)`` over its ``mask`` points (all without one),
    exactly as ``numpy.quantile`` (``linear`` method: virtual index h = (n-1)·q between the order statistics
    floor(h) and floor(h)+1; q = 0.5 is ``numpy.median``, the mean of the two middle points of an even count).
    NaN where a row has no point. ``values`` must be finite (``nonnegative``: none below 0, for a faster
    selection); it is not modified.

    One selection serves every row at once although the rows' counts differ: the points outside the mask become
    +inf, and each row gets enough extra -inf fillers that its wanted order statistic sits at the same index m
    in every row, so a single-kth selection finds them all.
    """
    n, width = values.shape
    if width == 0:   # no row has a point
        return torch.full((n,), math.nan, dtype=values.dtype, device=values.device)
    counts = torch.full((n,), width, device=values.device) if mask is None else mask.sum(1)
    virtual = (counts.double() - 1) * q
    lower = virtual.floor().clamp_min(0)
    frac = (virtual - lower).to(values.dtype)
    lower = lower.long()
    m = int(lower.max()) if n else 0
    fillers = m - lower
    pad = int(fillers.max()) if n else 0
    buffer = torch.empty(n, width + pad, dtype=values.dtype, device=values.device)
    if mask is None:
        buffer[:, :width] = values
    else:
        torch.where(mask, values, torch.full((), math.inf, dtype=values.dtype, device=values.device),
                    out=buffer[:, :width])
    if pad:
        below = torch.arange(pad, device=values.device)[None] < fillers[:, None]
        buffer[:, width:] = torch.where(below, -math.inf, math.inf)
    kth, beyond = _select(buffer, m, nonnegative)
    result = torch.where(frac > 0, kth + frac * (beyond - kth), kth)
    return torch.where(counts > 0, result, torch.full((), math.nan, dtype=values.dtype, device=values.device))


def median_and_mad(values: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Median and median absolute deviation ``(N,), (N,)`` of each row of ``values`` ``(N, W)`` (over ``mask``
    where given), with ``numpy.median``'s definition; NaN for a row without points."""
    if mask is None and values.device.type == "cpu" and values.numel():
        # every row has all W points: one PrefixPlan group of all rows, so its selections and their finishing
        # run in NumPy without quantile's fillers and masks
        plan = PrefixPlan(*_order_statistics(np.array([values.shape[1]]), 0.5, len(values)), len(values))
        return plan.median_and_mad(values)
    median = quantile(values, 0.5, mask)
    return median, quantile((values - median[:, None]).abs_(), 0.5, mask, nonnegative=True)


@dataclass
class RankPlan:
    """One quantile of the masked points of many rows, read with a single selection, for masks used repeatedly.

    ``penalty`` ``(G, W)``: 0 at the points, +inf elsewhere except for ``m - floor(h)`` of the non-points of each
    row (h = (count-1)·q), which are -inf, so the wanted order statistic of every row sits at column ``m``.
    Adding it to the values replaces :func:`quantile`'s masked select (several times slower on the CPU) by one
    addition. Each mask row serves ``group`` consecutive rows of values (the levels of a ladder).
    """

    penalty: torch.Tensor
    m: int
    frac: torch.Tensor    # (G·group,) interpolation weight towards the next order statistic
    empty: torch.Tensor   # (G·group,) rows without points (NaN)
    group: int

    @classmethod
    def build(cls, mask: torch.Tensor, q: float, group: int = 1) -> RankPlan | None:
        """The plan for ``mask`` ``(G, W)`` (None when a row has too few non-points to hold its fillers: then
        use :func:`quantile`)."""
        width = mask.shape[1]
        if width == 0:
            return None
        counts = mask.sum(1, dtype=torch.int64)
        virtual = (counts.double() - 1) * q
        lower = virtual.floor().clamp_min(0)
        frac = virtual - lower
        lower = lower.long()
        m = int(lower.max()) if len(mask) else 0
        fillers = m - lower
        if bool((fillers > width - counts).any()):
            return None
        rank = (~mask).cumsum(1)                         # 1, 2, ... along the non-points of each row
        low = rank <= fillers[:, None]
        penalty = torch.where(mask, 0.0, torch.where(low, -math.inf, math.inf)).to(torch.float32)
        return cls(penalty, m, frac.repeat_interleave(group), (counts == 0).repeat_interleave(group), group)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """The quantile ``(G·group,)`` of the points of each row of ``values`` ``(G·group, W)`` (finite)."""
        rows, width = values.shape
        buffer = torch.empty_like(values)
        shape = (rows // self.group, self.group, width)
        torch.add(values.view(shape), self.penalty.to(values.dtype)[:, None], out=buffer.view(shape))
        kth, beyond = _select(buffer, self.m)
        frac = self.frac.to(values.dtype)
        result = torch.where(frac > 0, kth + frac * (beyond - kth), kth)
        return torch.where(self.empty, torch.full((), math.nan, dtype=values.dtype, device=values.device), result)

    def median_and_mad(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`median_and_mad` of each row of ``values`` over the plan's mask (a plan built for q = 0.5)."""
        median = self(values)
        return median, self((values - median[:, None]).abs_())


@dataclass
class PrefixPlan:
    """One quantile of the first ``counts[g]`` points of rows of values, for left-packed rows (the layout of
    :func:`pack_masked` and :func:`pack_index`) used repeatedly; a drop-in for :class:`RankPlan` there.

    Each count serves ``group`` consecutive rows (the levels of a ladder). On the CPU every group is selected on
    its own prefix with ``numpy.partition``: no filler values, so less work than :class:`RankPlan`'s single
    selection over the full width, whose runs of ±inf fillers also slow NumPy's introselect about twofold on
    rows of a few thousand points. Elsewhere it is a :class:`RankPlan` (one sort serves every row at once).
    """

    counts: list[int]          # (G,) points of each group's rows
    lower: list[int]           # (G,) floor((count - 1)·q), the order statistic below the quantile
    frac: np.ndarray           # (G·group,) float64 interpolation weight towards the next order statistic
    empty: np.ndarray          # (G·group,) rows without points (NaN)
    group: int
    spans: list[int] | None = None   # (G,) leading columns a group's selection reads (None: its count)

    def __post_init__(self):
        spans = self.counts if self.spans is None else self.spans
        # per group with points: its rows, the columns read, the order statistic and the interpolation weight
        # towards the next one; worked out once so the selections' loop does little more than partition
        self._steps = [(g * self.group, (g + 1) * self.group, span, low, float(self.frac[g * self.group]))
                       for g, (count, span, low) in enumerate(zip(self.counts, spans, self.lower)) if count]

    @classmethod
    def build(cls, valid: torch.Tensor, q: float, group: int = 1) -> PrefixPlan | RankPlan | None:
        """The plan for the left-packed mask ``valid`` ``(G, W)`` (True on a prefix of each row)."""
        if valid.device.type != "cpu":
            return RankPlan.build(valid, q, group)
        return cls(*_order_statistics(valid.sum(1, dtype=torch.int64).numpy(), q, group), group)

    def __call__(self, values: torch.Tensor, nonnegative: bool = False) -> torch.Tensor:
        """The quantile ``(G·group,)`` of the prefix points of each row of ``values`` ``(G·group, W)`` (finite;
        ``nonnegative`` when no value is below 0, which allows a faster selection)."""
        source = values.detach().cpu().numpy()
        buffer, result = np.empty_like(source), np.full(len(source), np.nan, dtype=source.dtype)
        for start, stop, span, low, frac in self._steps:
            result[start:stop] = _select_rows(self._fill(source, buffer, start, stop, span), low, frac, nonnegative)
        return torch.from_numpy(result)

    def median_and_mad(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Median and MAD of each row's points (a plan built for q = 0.5).

        Group by group, so that a group's rows stay in the cache from the copy to the second selection (the
        baseline's 64 rows of 16,384 points, as whole-buffer passes, were about a third slower on a loaded
        machine); the deviations are taken in the partitioned rows themselves: the same points, reordered (and a
        MaskPlan's +inf stay +inf), so no second copy or penalty."""
        source = values.detach().cpu().numpy()
        buffer = np.empty_like(source)
        median, mad = np.full(len(source), np.nan, dtype=source.dtype), np.full(len(source), np.nan, source.dtype)
        for start, stop, span, low, frac in self._steps:
            rows = self._fill(source, buffer, start, stop, span)
            median[start:stop] = _select_rows(rows, low, frac, nonnegative=False)
            np.abs(np.subtract(rows, median[start:stop, None], out=rows), out=rows)
            mad[start:stop] = _select_rows(rows, low, frac, nonnegative=True)
        return torch.from_numpy(median), torch.from_numpy(mad)

    def _fill(self, source: np.ndarray, buffer: np.ndarray, start: int, stop: int, span: int) -> np.ndarray:
        """The rows ``start:stop`` to select on, ``span`` columns: copied from ``source`` into ``buffer``
        (the selection overwrites them)."""
        rows = buffer[start:stop, :span]
        np.copyto(rows, source[start:stop, :span])
        return rows


@dataclass
class MaskPlan(PrefixPlan):
    """:class:`PrefixPlan` for points anywhere in the rows (a mask ``(G, W)``, each row serving ``group`` rows of
    values): adding ``penalty`` (0 on the points, +inf elsewhere) puts the other values above every point, so
    each group's order statistic is still at floor((count - 1)·q) of its full row. No -inf fillers (unlike
    :class:`RankPlan`), so the plan costs two arithmetic passes to build, and the absolute deviations of
    :meth:`median_and_mad` stay non-negative for the faster selection. Elsewhere than on the CPU it is a
    :class:`RankPlan`."""

    penalty: np.ndarray | None = None   # (G, W) float32

    @classmethod
    def build(cls, mask: torch.Tensor, q: float, group: int = 1,
              spans: list[int] | None = None) -> MaskPlan | RankPlan | None:
        """The plan for ``mask`` ``(G, W)``, bool or 0/1 floats (None elsewhere than on the CPU when
        :class:`RankPlan` cannot hold a row's fillers: then use :func:`quantile`); ``spans`` ``(G,)``: how many
        leading columns of each row can hold points (default all W)."""
        if mask.device.type != "cpu":
            return RankPlan.build(mask.bool(), q, group)
        on = as_float(mask)
        counts = on.sum(1).long().numpy()                # exact: sums of 0/1 below 2^24
        # 0/0 cannot occur: 1 - on is 0 where on is 1; float arithmetic, several times faster than torch.where
        # on bool masks on the CPU
        penalty = ((1 - on) / on).numpy()
        return cls(*_order_statistics(counts, q, group), group, spans or [mask.shape[1]] * len(mask), penalty)

    def _fill(self, source: np.ndarray, buffer: np.ndarray, start: int, stop: int, span: int) -> np.ndarray:
        rows = buffer[start:stop, :span]
        np.add(source[start:stop, :span], self.penalty[start // self.group, :span], out=rows)
        return rows


def _select_rows(rows: np.ndarray, low: int, frac: float, nonnegative: bool) -> np.ndarray:
    """The quantile of each of ``rows`` ``(n, w)`` (partitioned in place) between its ``low``-th smallest value
    and the next, ``frac`` of the way (numpy.quantile's linear rule).

    Non-negative float32 values order as their bit patterns do as int32, and NumPy's partition of int32 is
    vectorised (about twice as fast as for float32 here), so those rows are selected as int32."""
    view = rows.view(np.int32) if nonnegative and rows.dtype == np.float32 else rows
    view.partition(low, axis=1)
    kth = rows[:, low]
    if frac == 0:
        return kth
    beyond = view[:, low + 1:].min(axis=1).view(rows.dtype)    # the next order statistic
    return kth + rows.dtype.type(frac) * (beyond - kth)


def _order_statistics(counts: np.ndarray, q: float, group: int) -> tuple[list[int], list[int], np.ndarray,
                                                                       np.ndarray]:
    """For groups of ``counts`` ``(G,)`` points: the counts, floor(h) with h = (count - 1)·q (the order statistic
    below the quantile), and per row of values (``group`` per count) the interpolation weight h - floor(h) and
    whether the row has no point."""
    virtual = (counts.astype(np.float64) - 1) * q
    lower = np.maximum(np.floor(virtual), 0)
    return (counts.tolist(), lower.astype(np.int64).tolist(), np.repeat(virtual - lower, group),
            np.repeat(counts == 0, group))


def peak_mask(spectra: torch.Tensor, alpha: float = 5.0, window: int = 11, order: int = 3,
              dilate: int = 5) -> torch.Tensor:
    """Points belonging to peaks, ``(B, L)`` bool: the Savitzky-Golay-smoothed spectrum exceeds its median by
    more than ``alpha`` times the MAD-based noise level of the raw spectrum, dilated by ``dilate`` points."""
    return peak_mask_from(spectra, *median_and_mad(spectra), alpha, window, order, dilate)


def peak_mask_from(spectra: torch.Tensor, median: torch.Tensor, mad: torch.Tensor, alpha: float = 5.0,
                   window: int = 11, order: int = 3, dilate: int = 5) -> torch.Tensor:
    """:func:`peak_mask` with the spectra's median and MAD ``(B,)`` already known."""
    smooth = savgol_smooth(spectra, window, order)
    noise = MAD_TO_SIGMA * mad
    # the smoothed spectrum has less noise: compare against the noise it keeps, plus the raw median
    gain = _savgol_gain(window, order)
    # the comparison written as 0/1 floats and then cast: a bool result is several times slower on the CPU
    mask = torch.gt(smooth - median[:, None], alpha * noise[:, None] * gain, out=torch.empty_like(smooth))
    return dilate_mask(mask.bool(), dilate)


@functools.lru_cache(maxsize=8)
def _savgol_taps(window: int, order: int) -> list[float]:
    """The Savitzky-Golay filter's taps, cached: scipy's savgol_coeffs solves a least-squares problem each call
    (about a millisecond, as much as the smoothing of a batch)."""
    from scipy.signal import savgol_coeffs

    return savgol_coeffs(window, order).tolist()


@functools.lru_cache(maxsize=8)
def _savgol_gain(window: int, order: int) -> float:
    """How much a Savitzky-Golay filter keeps of white noise's standard deviation (the norm of its taps)."""
    return float(np.sqrt(np.sum(np.square(_savgol_taps(window, order)))))


def baseline_mask(peaks: torch.Tensor, erode: int = 5) -> torch.Tensor:
    """Points safely away from peaks: the complement of ``peaks`` eroded by ``erode`` points."""
    # the complement's erosion is the complement of the peaks' dilation (both treat the outside as free)
    return ~dilate_mask(peaks, erode)


def dilate_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """``mask`` ``(B, L)`` bool dilated by ``radius`` points (True within ``radius`` of a True; outside is False).

    Runs of doubling length: OR-ing a run with itself shifted by its length doubles it, so a window of w points
    takes about log2(w) ORs of bool tensors (on the CPU several times faster than max_pool1d on floats)."""
    width = 2 * radius + 1
    run = F.pad(mask, (radius, radius))            # run[i]: OR of mask over a window of `span` points from i - radius
    span = 1
    while 2 * span <= width:
        run = run[:, :-span] | run[:, span:]
        span *= 2
    rest = width - span                            # two overlapping runs of `span` points cover the window
    return run[:, :-rest] | run[:, rest:] if rest else run


def as_float(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as 0/1 float32 (a float mask as it is): through uint8, several times faster than a direct
    cast of bool on the CPU."""
    return mask.view(torch.uint8).to(torch.float32) if mask.dtype == torch.bool else mask.to(torch.float32)


def robust_sigma(spectra: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Noise standard deviation per spectrum, ``1.4826 * MAD`` over ``mask`` (default: baseline points)."""
    if mask is None:
        mask = baseline_mask(peak_mask(spectra))
    return MAD_TO_SIGMA * median_and_mad(spectra, mask)[1]


def _working_dtype(spectra: torch.Tensor) -> torch.dtype:
    """float64 for float64 input; float32 otherwise (phases of at most a few hundred radians keep ~1e-5
    precision in float32, far below the 0.01-point level that matters, at half the cost)."""
    return torch.float64 if spectra.dtype == torch.float64 else torch.float32


def fourier_shift(spectra: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each spectrum by ``shift`` points (fractional allowed; positive moves content to higher index),
    by a phase ramp in the Fourier domain (circular). ``spectra (B, L)``, ``shift (B,)``."""
    work = _working_dtype(spectra)
    return shift_transformed(torch.fft.rfft(spectra.to(work)), shift, spectra.shape[-1]).to(spectra.dtype)


def shift_transformed(transform: torch.Tensor, shift: torch.Tensor, length: int) -> torch.Tensor:
    """:func:`fourier_shift` from the spectra's ``rfft`` ``(B, L//2+1)`` (so a caller that has it saves one
    transform): the shifted spectra ``(B, L)`` in the transform's real dtype."""
    return torch.fft.irfft(transform * phase_ramp(shift, length, transform.dtype), n=length)


def phase_ramp(shift: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """exp(-2πi·f·shift) at the rfft frequencies f = k/L, k = 0..L//2, ``(B, L//2+1)`` of complex ``dtype``.

    With k = a·n + j (n ≈ sqrt(F)) the ramp is the outer product of exp(-2πi·a·n·shift/L) and exp(-2πi·j·shift/L):
    2·sqrt(F) sines and cosines per row, in float64, instead of F, and one complex product per frequency.
    The float64 angles also keep the phase exact where float32 would lose ~1e-6 rad at a few tens of radians."""
    bins = length // 2 + 1
    block = math.isqrt(bins - 1) + 1                                                  # block² >= bins
    steps = torch.arange(block, device=shift.device, dtype=torch.float64)
    angle = (-2 * math.pi / length) * shift.double()[:, None] * steps[None]           # (B, block): j·shift
    fine = torch.polar(torch.ones_like(angle), angle).to(dtype)
    coarse = torch.polar(torch.ones_like(angle), angle * block).to(dtype)             # (a·block)·shift
    return (coarse[:, :, None] * fine[:, None, :]).flatten(1)[:, :bins]


@functools.lru_cache(maxsize=16)
def _lag_table(length: int, search: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer lags ``(S,)`` 0..search, -search..-1 (the order of the lags of an inverse FFT, so ties resolve
    alike) and ``(2F, S)`` with ``view_as_real(cross).flatten(1) @ table`` the circular cross-correlation at
    those lags (up to 1/L): rows alternate ``count·cos(ωτ)`` (real parts) and ``-count·sin(ωτ)`` (imaginary
    parts), the interleaved layout of a complex tensor, so the cross spectra need no copy."""
    lags = torch.cat([torch.arange(search + 1), torch.arange(-search, 0)]).to(device)
    omega, count = _frequencies(length, device, torch.float64)
    angle = omega[:, None] * lags[None].double()
    table = torch.stack([count[:, None] * torch.cos(angle), -count[:, None] * torch.sin(angle)], 1)
    return lags, table.flatten(0, 1).to(dtype)


def _frequencies(length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Angular frequencies ω ``(F,)`` of an rfft of ``length`` points and how many conjugate terms each stands
    for (rfft keeps half the spectrum: 2 for interior frequencies, 1 for 0 and, for even L, the Nyquist one)."""
    omega = 2 * math.pi * torch.fft.rfftfreq(length, device=device, dtype=dtype)
    count = torch.full_like(omega, 2.0)
    count[0] = 1
    if length % 2 == 0:
        count[-1] = 1
    return omega, count


def estimate_shift(spectra: torch.Tensor, reference: torch.Tensor, search: int | None = None,
                   iterations: int = 3) -> torch.Tensor:
    """Sub-point shift ``(B,)`` that aligns each spectrum to ``reference`` (``(L,)`` or ``(B, L)``): shifting the
    spectrum by minus the estimate aligns it.

    Integer part from the FFT cross-correlation maximum (within ``search`` points), then Newton steps on the
    continuous (Fourier-interpolated) cross-correlation c(τ) = Σ_f X(f)·conj(R(f))·exp(2πifτ). Its maximum is
    also the least-squares optimum of a circular Fourier shift, since shifting keeps the norm; derivatives
    come in closed form, so each step costs one pass over the spectrum; from the integer lag, 2–3 steps converge.
    """
    work = _working_dtype(spectra)
    cross = torch.fft.rfft(spectra.to(work)) * torch.fft.rfft(reference.to(work)).conj()   # (B, F); R once if (L,)
    return shift_from_cross(cross, spectra.shape[-1], search, iterations).to(spectra.dtype)


def shift_from_cross(cross: torch.Tensor, length: int, search: int | None = None,
                     iterations: int = 3) -> torch.Tensor:
    """:func:`estimate_shift` from the cross spectrum ``X·conj(R)`` ``(B, L//2+1)``: the shift ``(B,)``."""
    work = cross.real.dtype
    few = search is not None and 2 * search + 1 <= min(64, length)
    if few:
        # a few lags: one matrix product with a cached cos/sin table instead of an inverse FFT of every row
        lags, table = _lag_table(length, search, cross.device, work)
        corr = torch.view_as_real(cross.contiguous()).flatten(1) @ table
    else:
        corr = torch.fft.irfft(cross, n=length)
        lags = torch.arange(length, device=cross.device)
        lags = torch.where(lags > length // 2, lags - length, lags)
        if search is not None:
            corr = torch.where(lags.abs()[None] <= search, corr, torch.full_like(corr, -math.inf))
    best = corr.argmax(dim=1)
    tau = lags[best].to(work)
    if iterations == 0:
        return tau
    # Newton steps on δ = τ - τ0 from a Taylor series of c around the integer lag τ0, so that each step costs
    # O(terms) instead of a cos and a sin of every frequency: with a_f = count_f·X_f·conj(R_f)·exp(iω_f·τ0),
    # c(τ0+δ) = Re Σ_f a_f·exp(iω_f·δ) = Σ_n δ^n/n!·m_n with m_n = Re(i^n·Σ_f a_f·ω_f^n), so that
    # c'(τ0+δ) = Σ_n δ^n/n!·m_(n+1) and c''(τ0+δ) = Σ_n δ^n/n!·m_(n+2). The moments are one matrix product with a
    # cached table of (ω/π)^n; |δ| <= iterations/2 bounds how many terms reach 1e-11 of the sum.
    # exp(iω·τ0) = exp(-2πi·f·(-τ0)), the phase ramp of a shift by -τ0 (two small float64 factors per row)
    rotation = phase_ramp(-tau, length, cross.dtype)
    # a_f / count_f = X_f·conj(R_f)·exp(iω_f·τ0): one complex product, which the matrix product reads in its
    # interleaved layout (real and imaginary parts of a frequency side by side; elementwise products on strided
    # real and imaginary views are not vectorised and cost about twice the table's extra zeros)
    rotated = torch.view_as_real(cross * rotation).flatten(1)                        # (B, 2F)
    m = (rotated @ _moment_table(length, iterations, cross.device, work)).double()
    terms = m.shape[1] - 2
    factorial = torch.exp(torch.lgamma(torch.arange(terms, dtype=torch.float64, device=cross.device) + 1))
    delta = torch.zeros_like(tau, dtype=torch.float64)
    for _ in range(iterations):
        series = (math.pi * delta[:, None]) ** torch.arange(terms, device=cross.device) / factorial  # (πδ)^n/n!
        slope = math.pi * (series * m[:, 1:-1]).sum(1)                                 # c'(τ0+δ)
        curvature = math.pi ** 2 * (series * m[:, 2:]).sum(1)                          # c''(τ0+δ)
        step = torch.where(curvature < 0, -slope / curvature, torch.zeros_like(slope))
        delta = delta + step.clamp(-0.5, 0.5)
    return tau + delta.to(work)


@functools.lru_cache(maxsize=16)
def _power_table(length: int, iterations: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(F, terms + 2)``: count_f·(ω_f/π)^n for n = 0..terms+1 (count_f as in :func:`_frequencies`), with
    ``terms`` enough that (π·|δ|)^n/n! has fallen below 1e-11 at |δ| = iterations/2 (scaled by π so the float32
    entries stay in [0, 2]). The float32 moments carry ~1e-7 relative error, so a finer cut adds nothing: at 3
    iterations this gives 32 columns, a matrix product about a third faster than at 33."""
    reach, terms, term = math.pi * 0.5 * iterations, 1, 1.0
    while term > 1e-11 or terms < reach:
        term *= reach / terms
        terms += 1
    scaled = torch.fft.rfftfreq(length, dtype=torch.float64) * 2   # ω/π in [0, 1]
    _, count = _frequencies(length, torch.device("cpu"), torch.float64)
    table = count[:, None] * scaled[:, None] ** torch.arange(terms + 2, dtype=torch.float64)
    # entries below 1e-30 (low frequencies, high powers) are negligible and would be float32 subnormals, which
    # slow a CPU matrix product several times over where denormals are not flushed
    return table.masked_fill(table < 1e-30, 0).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _moment_table(length: int, iterations: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(2F, terms + 2)`` with ``view_as_real(A).flatten(1) @ table`` the moments m_n = Re(i^n·Σ_f A_f·P_fn)
    of :func:`_power_table`'s P: Re(i^n·A) is Re A, -Im A, -Re A, Im A for n = 0, 1, 2, 3 (mod 4), so the rows
    of real parts (even rows) hold ±P at even n and the rows of imaginary parts (odd rows) ±P at odd n."""
    powers = _power_table(length, iterations, device, dtype)
    n = torch.arange(powers.shape[1], device=device)
    sign = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=dtype, device=device)[n % 4]
    table = torch.zeros(powers.shape[0], 2, powers.shape[1], dtype=dtype, device=device)
    table[:, 0] = torch.where(n % 2 == 0, powers * sign, 0)
    table[:, 1] = torch.where(n % 2 == 1, powers * sign, 0)
    return table.flatten(0, 1)


def align(spectra: torch.Tensor, reference: torch.Tensor,
          search: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectra shifted onto ``reference`` and the shifts that were removed, ``((B, L), (B,))``."""
    shift = estimate_shift(spectra, reference, search)
    return fourier_shift(spectra, -shift), shift


def anchor_positions(reference: torch.Tensor, anchors: int, window: int) -> torch.Tensor:
    """Centres ``(B, anchors)`` of the strongest peaks of each reference ``(B, L)`` (Savitzky–Golay smoothed),
    at least ``window`` points apart, sorted by position."""
    smooth = savgol_smooth(reference)
    index = torch.arange(reference.shape[-1], device=reference.device)
    found = []
    for _ in range(anchors):
        centre = smooth.argmax(dim=1)
        found.append(centre)
        near = (index[None] - centre[:, None]).abs() < window
        smooth = torch.where(near, torch.full_like(smooth, -math.inf), smooth)
    return torch.stack(found, dim=1).sort(dim=1).values


def _windows(spectra: torch.Tensor, centres: torch.Tensor, window: int) -> torch.Tensor:
    """Hann-tapered segments ``(B, A, window)`` of ``spectra (B, L)`` around ``centres (B, A)`` (kept inside)."""
    length = spectra.shape[-1]
    start = (centres - window // 2).clamp(0, max(length - window, 0))
    index = start[..., None] + torch.arange(window, device=spectra.device)
    taper = torch.hann_window(window, periodic=False, dtype=spectra.dtype, device=spectra.device)
    return spectra.gather(1, index.flatten(1)).view(*centres.shape, window) * taper


def local_shifts(spectra: torch.Tensor, reference: torch.Tensor, centres: torch.Tensor, window: int = 64,
                 search: int = 4) -> torch.Tensor:
    """Shift ``(B, A)`` of each spectrum relative to ``reference`` within the windows around ``centres``."""
    batch, count = centres.shape
    segments = _windows(spectra, centres, window).reshape(batch * count, window)
    targets = _windows(reference.expand_as(spectra), centres, window).reshape(batch * count, window)
    return estimate_shift(segments, targets, search=search).view(batch, count)


def apply_local_shifts(spectra: torch.Tensor, centres: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move each spectrum by a shift that varies smoothly along it: ``shifts (B, A)`` at ``centres (B, A)``
    (sorted), linearly interpolated between anchors and constant beyond them.

    Built as a partition of unity of exact Fourier shifts (hat weights between neighbouring anchors), so
    the noise is not smoothed the way interpolating the samples would smooth it.
    """
    length = spectra.shape[-1]
    grid = torch.arange(length, device=spectra.device, dtype=torch.float64)[None].expand(len(spectra), -1)
    pos = centres.double()
    weights = []
    for a in range(pos.shape[1]):
        left = pos[:, a - 1:a] if a > 0 else None
        right = pos[:, a + 1:a + 2] if a + 1 < pos.shape[1] else None
        here = pos[:, a:a + 1]
        rise = torch.ones_like(grid) if left is None else ((grid - left) / (here - left).clamp_min(1)).clamp(0, 1)
        fall = torch.ones_like(grid) if right is None else ((right - grid) / (right - here).clamp_min(1)).clamp(0, 1)
        weights.append(torch.where(grid <= here, rise, fall))
    weight = torch.stack(weights, dim=1)                                                   # (B, A, L)
    weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-12)
    moved = fourier_shift(spectra.repeat_interleave(pos.shape[1], 0), shifts.flatten()).view(*weight.shape)
    return (weight.to(spectra.dtype) * moved).sum(1)


def robust_scale(spectra: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, iterations: int = 4,
                 tukey: float = 4.685) -> torch.Tensor:
    """Scale ``s`` per spectrum ``(B,)`` with ``s * spectrum ≈ reference`` on ``mask`` points; ``spectra``,
    ``mask`` ``(B, L)``, ``reference`` ``(L,)`` or ``(B, L)``.

    Starts from the median of the point ratios ``reference / spectrum`` where the spectrum stands clear of
    its noise (robust to a few bad points), then iteratively reweighted least squares with Tukey's bisquare
    weights (residuals beyond ``tukey`` robust sigmas get weight 0), so an artefact in one level cannot pull
    the scale (4 reweighting steps: the estimate has settled by then). The regression is
    ``spectrum ≈ reference / s``: the noisy spectrum is the response, not the
    regressor, because noise in a regressor biases a least-squares slope towards zero (8% at peak SNR 12).
    The reference should be the cleaner of the two (the top or fused level), and ``mask`` should be chosen
    on it: a mask chosen on the noisy spectrum picks the points where its noise is positive and biases the
    scale (by 2% at peak SNR 12). A row with no mask point gives NaN.
    """
    noise = MAD_TO_SIGMA * median_and_mad(spectra)[1]
    # only the mask points take part: pack them once (N, W) and iterate on those
    x, valid = pack_masked(spectra, mask)
    y = pack_masked(reference.expand_as(spectra), mask)[0]
    return scale_packed(x, y, valid, noise, iterations, tukey).to(spectra.dtype)


def scale_packed(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, noise: torch.Tensor, iterations: int = 4,
                 tukey: float = 4.685, group: int = 1) -> torch.Tensor:
    """:func:`robust_scale` on packed points: ``x``, ``y`` ``(N, W)`` the spectrum and reference on the mask,
    ``valid`` ``(N / group, W)`` which of them are points, left-packed as :func:`pack_masked` returns them (the
    rest is ignored; one row for ``group`` consecutive rows of ``x``, e.g. the levels of a ladder), ``noise``
    ``(N,)`` the spectrum's noise level (1.4826·MAD over all its points, or over its baseline): points above
    3·noise start the estimate. Returns ``s`` ``(N,)`` float32."""
    # float32 suffices: the residuals are differences of float32 levels, and the sums are pairwise; padding
    # columns are zeroed so that they add nothing to the sums and need no mask there. Masks enter as 0/1 floats:
    # on the CPU, float products are several times faster than masked_fill or where on bool masks
    points = valid.repeat_interleave(group, 0)
    on = as_float(points)
    x, y = x.float() * on, y.float() * on
    plan = PrefixPlan.build(valid, 0.5, group)   # one mask for the 2·iterations medians below
    inverse = 1 / _median_ratio(x, y, on, noise, valid.sum(1).repeat_interleave(group).tolist())
    # two buffers for all the steps: products written into memory already in cache, not fresh allocations
    residual, weight, one = torch.empty_like(x), torch.empty_like(x), torch.ones((), dtype=x.dtype)
    for _ in range(iterations):
        torch.addcmul(x, inverse[:, None], y, value=-1, out=residual)
        mad = plan.median_and_mad(residual)[1] if plan is not None else median_and_mad(residual, points)[1]
        sigma = (MAD_TO_SIGMA * mad).clamp_min(1e-30)
        # Tukey's bisquare (1 - u²)² for |u| < 1, else 0, with u = residual / (tukey·σ): one clamp, no select
        # (dividing, not multiplying by 1/(tukey·σ)²: σ may be 1e-30, a level fitted against itself)
        u = residual.div_((tukey * sigma)[:, None])
        torch.sub(one, torch.mul(u, u, out=weight), out=weight).clamp_min_(0).square_().mul_(y)     # w·y
        numerator = torch.mul(weight, x, out=residual).sum(1)
        inverse = numerator / torch.mul(weight, y, out=residual).sum(1).clamp_min(1e-30)
    found = valid[:, :1].any(1).repeat_interleave(group)     # a left-packed row has points if its first is one
    return torch.where(found, 1 / inverse, math.nan)            # NaN for a row without points


def _median_ratio(x: torch.Tensor, y: torch.Tensor, on: torch.Tensor, noise: torch.Tensor,
                  counts: list[int]) -> torch.Tensor:
    """The IRLS start ``(N,)``: the median of y/x over the points (``on`` ``(N, W)``, 1 on the first ``counts``
    of each row; ``x`` and ``y`` 0 elsewhere) where |x| > 3·``noise`` (``(N,)``); a row without such a point
    takes all its points, and there x = 0 divides by 1 (as the reference does)."""
    # 1 where |x| > 3·noise, else 0 (the padding too: x = 0 there; a NaN noise, no baseline, marks no point),
    # written as floats: a bool result would be several times slower on the CPU
    strong = torch.gt(x.abs(), 3 * noise.float()[:, None], out=torch.empty_like(x))
    none = strong.sum(1) == 0
    if bool(none.any()):
        strong = torch.where(none[:, None], on, strong)
        x = x + (1 - x.sign().abs())                      # x = 0 -> 1, any other x unchanged
    # y/x on the strong points and 0 elsewhere, finite everywhere, so a +inf penalty can mask the rest
    ratio = (y * strong) / (x * strong + (1 - strong))
    if ratio.device.type == "cpu":
        return MaskPlan.build(strong, 0.5, spans=counts)(ratio)   # the strong points lie in the first counts
    return quantile(ratio, 0.5, strong > 0)
