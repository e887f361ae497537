"""Reading groups of repeated 1D NMR acquisitions (real frequency-domain spectra) for the denoiser.

A *group* is one sample measured at levels ``k = 0..K`` with SNR rising in ``k`` (level 0 is the noisiest). It is
returned as a :class:`SpectrumGroup` holding a ``(K+1, L)`` float64 array. Nothing is normalised here (preprocessing
lives in ``data_loader.nmr.preprocess``) and nothing is silently dropped, clipped or coerced: every problem raises
``utils.errors.DataError`` naming the file (and the manifest line) and saying how to fix it.

File contract
-------------
* ``NAME.npz``: key ``spectra`` (K+1, L) real numeric array, rows ordered by rising SNR; optional ``ppm`` (L,)
  chemical-shift axis and ``clean`` (L,) noise-free spectrum (simulations only). No other keys. Loaded with
  ``allow_pickle=False``: object arrays are refused, never unpickled. The group is named ``NAME``.
* ``NAME.npy``: a (K+1, L) real numeric array.
* A 1-D ``(L,)`` array (or a single row) is one spectrum: accepted by :func:`read_single` for inference, or by the
  directory/file readers only with ``allow_single=True``.
* ``manifest.json`` / ``manifest.csv``: one line per acquisition, ``group, level, path[, format]``; paths are
  relative to the manifest's directory. Formats: ``bruker`` (experiment directory with ``fid`` + ``acqus``; raw FID,
  digital filter removed and processed with :func:`process_fid`), ``bruker_pdata`` (``pdata/N`` directory, real
  ``1r`` data as processed by TopSpin), ``varian`` (directory with ``fid`` + ``procpar``), ``pipe`` (NMRPipe file;
  time-domain data is processed with :func:`process_fid`, frequency-domain data gives its real part) and ``npy`` (one
  ``(L,)`` spectrum). Each group must list levels ``0..K`` exactly once; levels are written with the ASCII digits
  0-9 only (no sign, no other script's digits, as in the image lists: ``utils.parsing.ascii_int``).

Group names (manifest ``group`` values and the stems of ``NAME.npz`` / ``NAME.npy``) become output file names in
``test.py --save_dir``, so they must follow ``utils.safe_paths.NAME_RULE``: 1-100 ASCII letters, digits, ``.``,
``_``, ``-``, not starting with ``.`` or ``-`` (no path separators, blanks, NUL or newlines). In a directory, every
entry whose suffix is ``.npz`` / ``.npy`` in any letter case (``S5.NPZ`` is read as group ``S5``) is read; one
that is not a readable regular file (a dangling symbolic link, a directory) is an error naming it, never skipped.

Declared sizes are checked before anything is allocated: an array (a .npy file, each .npz member) whose header
declares more than ``MAX_ARRAY_BYTES`` bytes (2 GiB; ``max_bytes=`` overrides) is refused naming the file and the
limit, as is a header whose size disagrees with the bytes the file holds. Vendor header values that define the ppm
axis (Varian ``sw``, ``sfrq``, ``rfl``, ``rfp``; NMRPipe ``FDF2SW``, ``FDF2OBS``, ``FDF2CAR``/``FDF2ORIG``; Bruker
spectral width, frequency and carrier) must be finite, and widths and frequencies > 0.

Levels must be separate acquisitions with independent noise, for example K+1 experiments recorded with rising
numbers of scans, each from its own scans. They must NOT be cumulative sums of the same scans (level 1 = scans
1..2n containing level 0's scans 1..n): the training target assumes the noise of different levels is independent,
and shared scans would let a model learn to reproduce noise.

Spectrum orientation follows the NMR convention: index 0 is the highest chemical shift and ppm decreases with the
index, exactly as :func:`ppm_axis` (and nmrglue's ``unit_conversion.ppm_scale``) says. Raw FIDs are taken in the
convention of nmrglue's Bruker/Varian/NMRPipe readers, where a line at ``+f`` Hz above the carrier is
``exp(+2 pi i f t)``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.errors import DataError
from utils.parsing import ascii_int
from utils.safe_paths import check_name

# nmrglue is imported by the functions that read or process raw instrument data, not here: with the SciPy it
# imports it costs about a second at every start-up, and most commands never read such data

NPZ_KEYS = ("spectra", "ppm", "clean")
FORMATS = ("bruker", "bruker_pdata", "varian", "pipe", "npy")
PIPE_SUFFIXES = (".fid", ".ft", ".ft1")
MANIFEST_NAMES = ("manifest.json", "manifest.csv")
MANIFEST_FIELDS = ("group", "level", "path", "format")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what ends a line for the csv reader (universal newlines)
PROCESSING_DEFAULTS = {"lb_hz": 0.0, "size": None, "p0": 0.0, "p1": 0.0, "autophase": False}
# Bounds on what a data file may make the reader allocate, checked against the declared sizes (the .npy header,
# each .npz member's header) before any data is read. Override per call with ``max_bytes=`` or for the process by
# assigning ``data_loader.nmr.io.MAX_ARRAY_BYTES``.
MAX_ARRAY_BYTES = 2 << 30  # 2 GiB per array: a (K+1, L) float64 ladder is K * L * 8 bytes, ~1 MiB for 16 x 8192
MAX_PROCESSING_SIZE = 1 << 24  # points of a processed spectrum (manifest processing 'size'; 16,777,216)
EXPECTED_FILES = ("*.npz files with key 'spectra' of shape (K+1, L) (optional keys 'ppm', 'clean'), "
                  "*.npy files holding a (K+1, L) array, or a manifest.json / manifest.csv listing group,level,path")


@dataclass
class SpectrumGroup:
    """One sample measured at K+1 SNR levels.

    ``spectra``: (K+1, L) float64, rows ordered by rising SNR (row 0 = noisiest). ``ppm``: (L,) float64 axis when
    known, decreasing with the index. ``clean``: (L,) float64 noise-free spectrum (simulations only).
    ``sources``: the file paths the group came from (one per level for manifest groups), used in messages.
    """

    name: str
    spectra: np.ndarray
    ppm: np.ndarray | None = None
    clean: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        """What to call the group in a message: its first file, or its name."""
        return self.sources[0] if self.sources else self.name


# ---------------------------------------------------------------------------------------------------------------
# array checks


def _real_float(array: np.ndarray, where: str, what: str = "spectra") -> np.ndarray:
    """``array`` as float64, refusing complex, non-numeric and object dtypes (no silent coercion)."""
    if array.dtype.kind == "c":
        raise DataError(f"{where}: {what} are complex ({array.dtype}); the denoiser takes real spectra, "
                        "store the real part (e.g. np.real(spectrum)) of the phased spectrum")
    if array.dtype.kind not in "iuf":
        raise DataError(f"{where}: {what} have non-numeric dtype {array.dtype}; store a float array")
    return np.asarray(array, dtype=np.float64)


def _count_nonfinite(row: np.ndarray) -> str:
    """Human description of the NaN/Inf points of a 1-D array, e.g. '3 NaN and 1 Inf points'."""
    return f"{int(np.isnan(row).sum())} NaN and {int(np.isinf(row).sum())} Inf points"


def _check_finite(spectra: np.ndarray, sources: list[str]) -> None:
    """Raise naming the first level row (and its file) holding NaN or Inf."""
    bad = ~np.isfinite(spectra)
    if not bad.any():
        return
    row = int(np.flatnonzero(bad.any(axis=1))[0])
    where = sources[row] if len(sources) == len(spectra) else ", ".join(sources)
    raise DataError(f"{where}: level row {row} has {_count_nonfinite(spectra[row])} out of {spectra.shape[1]}; "
                    "spectra must be finite, re-export the data without NaN/Inf (check the processing)")


def _check_axis(values: np.ndarray | None, length: int, where: str, key: str) -> np.ndarray | None:
    """Validate an optional (L,) companion array (``ppm`` or ``clean``) and return it as float64."""
    if values is None:
        return None
    values = _real_float(np.asarray(values), where, key)
    if values.shape != (length,):
        raise DataError(f"{where}: '{key}' has shape {values.shape} but the spectra have L={length} points; "
                        f"store '{key}' as a 1-D array of length {length}")
    if not np.isfinite(values).all():
        raise DataError(f"{where}: '{key}' has {_count_nonfinite(values)}; it must be finite")
    if key == "ppm":
        steps = np.diff(values)
        if (steps >= 0).any():
            i = int(np.flatnonzero(steps >= 0)[0])
            how = "increases" if steps[i] > 0 else "does not decrease"
            raise DataError(f"{where}: 'ppm' {how} at index {i} ({values[i]:.6g} -> {values[i + 1]:.6g}); the axis "
                            "must decrease strictly along the index (NMR convention: index 0 is the highest shift). "
                            "Spectra stored from low to high ppm: save spectra[:, ::-1] and ppm[::-1]")
    return values


def _as_levels(array: np.ndarray, where: str, allow_single: bool) -> np.ndarray:
    """Shape a loaded array into (K+1, L): 2-D as is, 1-D as one level only when ``allow_single``."""
    if array.ndim == 1 and allow_single:
        array = array[None]
    if array.ndim != 2:
        hint = " (a single spectrum is accepted only with allow_single=True or read_single)" if array.ndim == 1 else ""
        raise DataError(f"{where}: spectra have shape {array.shape}; expected a 2-D array (K+1, L) with one row "
                        f"per SNR level, noisiest first{hint}")
    if array.shape[1] < 2:
        raise DataError(f"{where}: spectra have shape {array.shape}, fewer than 2 points per spectrum; "
                        "store rows of L >= 2 points (is the array transposed?)")
    if array.shape[0] < 1:
        raise DataError(f"{where}: spectra have no rows; store at least one level")
    return array


def _make_group(name: str, spectra: np.ndarray, sources: list[str], ppm=None, clean=None,
                allow_single: bool = False) -> SpectrumGroup:
    """Validate everything about one group and build it (float64 throughout)."""
    where = ", ".join(sources)
    spectra = _as_levels(_real_float(np.asarray(spectra), where), where, allow_single)
    _check_finite(spectra, sources)
    length = spectra.shape[1]
    return SpectrumGroup(name=name, spectra=spectra, ppm=_check_axis(ppm, length, where, "ppm"),
                         clean=_check_axis(clean, length, where, "clean"), sources=list(sources))


# ---------------------------------------------------------------------------------------------------------------
# .npz / .npy


def _limit(max_bytes: int | None) -> int:
    """The allocation bound in force: ``max_bytes`` when given, else the module's ``MAX_ARRAY_BYTES``."""
    limit = MAX_ARRAY_BYTES if max_bytes is None else max_bytes
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DataError(f"max_bytes must be a positive integer (bytes), got {limit!r}")
    return limit


def _npy_header(handle, where: str, limit: int) -> int:
    """Read the .npy header at ``handle``'s position and return the data bytes it declares (handle left at the data).

    Object dtypes (which would need unpickling) and arrays over ``limit`` bytes are refused here, before any of the
    data is read or allocated.
    """
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise DataError(f"{where}: .npy format version {version[0]}.{version[1]} is not supported (np.save writes "
                            "1.0 or 2.0 for numeric arrays); save it again with np.save")
    except DataError:
        raise
    except Exception as exc:  # short or garbled header: ValueError, EOFError, SyntaxError, zlib.error, ...
        raise DataError(f"{where}: the .npy header cannot be read ({type(exc).__name__}: {exc}); the file is "
                        "truncated or corrupt, save it again with np.save / np.savez") from exc
    if dtype.hasobject:
        raise DataError(f"{where}: holds an object array, which is refused (it would need unpickling); "
                        "store a plain float array")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > limit:
        raise DataError(f"{where}: its header declares a {dtype} array of shape {shape} ({nbytes:,} bytes), over the "
                        f"limit of {limit:,} bytes per array; refused before reading. If the array is real, raise the "
                        "limit (max_bytes=, or data_loader.nmr.io.MAX_ARRAY_BYTES)")
    return nbytes


def _check_npy_file(path: Path, limit: int) -> None:
    """An .npy file's header is sane, under ``limit`` and matches the bytes that follow it."""
    with open(path, "rb") as handle:
        nbytes = _npy_header(handle, str(path), limit)
        held = os.fstat(handle.fileno()).st_size - handle.tell()
    if held != nbytes:
        raise DataError(f"{path}: its header declares {nbytes:,} bytes of data but the file holds {held:,}; the file "
                        "is truncated or corrupt, save it again with np.save")


def _check_npz_member(archive, path: Path, key: str, limit: int) -> None:
    """Member ``key`` of an .npz archive is an .npy array under ``limit`` whose header matches the member's size."""
    member = f"{key}.npy"
    where = f"{path}: '{key}'"
    try:
        info = archive.zip.getinfo(member)
    except KeyError:
        raise DataError(f"{where} is not an .npy array member (raw bytes); save the archive with np.savez") from None
    try:
        with archive.zip.open(member) as handle:
            nbytes = _npy_header(handle, where, limit)
            header = handle.tell()  # ZipExtFile.tell counts uncompressed bytes read
    except DataError:
        raise
    except Exception as exc:  # bad local header, encryption, unknown compression, ...
        raise DataError(f"{where} cannot be read ({type(exc).__name__}: {exc}); the archive is truncated or corrupt, "
                        "save it again with np.savez") from exc
    if info.file_size - header != nbytes:
        raise DataError(f"{where}: its header declares {nbytes:,} bytes of data but the archive member holds "
                        f"{info.file_size - header:,}; the archive is corrupt, save it again with np.savez")


def _load_array(path: Path, key: str | None = None, max_bytes: int | None = None):
    """np.load with pickles refused and declared sizes checked first; every failure is a DataError naming ``path``.

    Without ``key``: the array of an .npy file, or the (still unread) NpzFile of an .npz archive. With ``key``: that
    member of the archive at ``path``.
    """
    limit = _limit(max_bytes)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK\x03\x04"):  # np.load would try to unpickle it
        raise DataError(f"{path}: not a NumPy file (no .npy header or .npz archive: truncated, or another format); "
                        "save it with np.save / np.savez")
    if magic == b"\x93NUMPY":
        _check_npy_file(path, limit)
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated or corrupt: OSError, ValueError, EOFError, zipfile.BadZipFile, ...
        if "allow_pickle" in str(exc):
            raise DataError(f"{path}: holds an object array, which is refused (it would need unpickling); "
                            "store a plain float array") from exc
        raise DataError(f"{path}: cannot be read as a NumPy file ({type(exc).__name__}: {exc}); the file is "
                        "truncated or corrupt, save it again with np.save / np.savez") from exc
    if key is None:
        return loaded
    _check_npz_member(loaded, path, key, limit)
    try:
        return loaded[key]
    except Exception as exc:  # object arrays raise ValueError here with allow_pickle=False; damaged members others
        if "allow_pickle" in str(exc):
            raise DataError(f"{path}: '{key}' is an object array, which is refused (it would need unpickling); "
                            "store a plain float array") from exc
        raise DataError(f"{path}: '{key}' cannot be read ({type(exc).__name__}: {exc}); the archive is truncated "
                        "or corrupt, save it again with np.savez") from exc


def _npz_arrays(path: Path, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, refusing unknown keys and a missing 'spectra'."""
    archive = _load_array(path, max_bytes=max_bytes)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: is a .npy array, not an .npz archive; rename it to .npy or save with np.savez")
    with archive:
        keys = list(archive.files)
        unknown = sorted(set(keys) - set(NPZ_KEYS))
        if unknown:
            raise DataError(f"{path}: unknown key(s) {unknown}; allowed keys are {list(NPZ_KEYS)} "
                            "('spectra' required)")
        if "spectra" not in keys:
            raise DataError(f"{path}: no 'spectra' key (keys: {keys}); save the (K+1, L) array as spectra=...")
        return {key: _load_array(path, key, max_bytes) for key in keys}


def _stem_name(path: Path) -> str:
    """The group name a file gives, ``NAME`` of ``NAME.npz``, checked against NAME_RULE (it names output files)."""
    return check_name(path.stem, str(path), "group name (the file name without its suffix)")


def read_npz(path, *, allow_single: bool = False, max_bytes: int | None = None) -> SpectrumGroup:
    """Read one group from ``NAME.npz`` (keys spectra (K+1, L), optional ppm (L,), clean (L,)); name = ``NAME``.

    ``max_bytes``: bound on each array's declared size (default ``MAX_ARRAY_BYTES``).
    """
    path = Path(path)
    name = _stem_name(path)
    arrays = _npz_arrays(path, max_bytes)
    return _make_group(name, arrays["spectra"], [str(path)], arrays.get("ppm"), arrays.get("clean"), allow_single)


def read_npy(path, *, allow_single: bool = False, max_bytes: int | None = None) -> SpectrumGroup:
    """Read one group from ``NAME.npy`` holding a (K+1, L) array; name = ``NAME``.

    ``max_bytes``: bound on the array's declared size (default ``MAX_ARRAY_BYTES``).
    """
    path = Path(path)
    name = _stem_name(path)
    array = _load_array(path, max_bytes=max_bytes)
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: is an .npz archive, not a .npy array; rename it to .npz")
    return _make_group(name, array, [str(path)], allow_single=allow_single)


def read_single(path, *, max_bytes: int | None = None) -> SpectrumGroup:
    """One spectrum for inference from .npz/.npy: an (L,) array or a single row (1, L) -> group with (1, L).

    The suffix is matched in any letter case (``S5.NPY`` is read like ``S5.npy``).
    """
    path = Path(path)
    readers = {".npz": read_npz, ".npy": read_npy}
    if path.suffix.lower() not in readers:
        raise DataError(f"{path}: unsupported extension '{path.suffix}'; give a .npz (key 'spectra') or .npy file")
    group = readers[path.suffix.lower()](path, allow_single=True, max_bytes=max_bytes)
    if group.spectra.shape[0] != 1:
        raise DataError(f"{path}: holds {group.spectra.shape[0]} spectra; read_single takes one spectrum of shape "
                        "(L,) or (1, L) (use read_npz/read_npy for a group of levels)")
    return group


# ---------------------------------------------------------------------------------------------------------------
# FID processing and axes


def ppm_axis(size, sw_hz, obs_mhz, car_hz) -> np.ndarray:
    """Chemical-shift axis (size,) float64 in ppm, decreasing with the index (NMR convention).

    ``sw_hz``: spectral width in Hz; ``obs_mhz``: observe frequency in MHz; ``car_hz``: carrier (spectrum centre)
    in Hz relative to 0 ppm. Point ``j`` lies at ``car + sw/2 - j*sw/size`` Hz, nmrglue's ``unit_conversion``.
    """
    size, sw_hz, obs_mhz, car_hz = int(size), float(sw_hz), float(obs_mhz), float(car_hz)
    if size < 1 or not sw_hz > 0 or not obs_mhz > 0 or not np.isfinite(car_hz):
        raise DataError(f"ppm_axis needs size >= 1, sw_hz > 0, obs_mhz > 0 and a finite carrier, got size={size}, "
                        f"sw_hz={sw_hz}, obs_mhz={obs_mhz}, car_hz={car_hz}")
    return (car_hz + sw_hz / 2 - np.arange(size) * (sw_hz / size)) / obs_mhz


def default_size(points: int) -> int:
    """Next power of two >= 2 x ``points``: 2x zero filling keeps the real spectrum Hilbert-invertible."""
    return 1 << int(np.ceil(np.log2(2 * max(int(points), 1))))


def process_fid(fid, sw_hz: float, size: int | None = None, lb_hz: float = 0.0, p0: float = 0.0, p1: float = 0.0,
                autophase: bool = False) -> np.ndarray:
    """Complex FID (..., TD) -> real spectrum (..., size) float64, index 0 = highest ppm (matches :func:`ppm_axis`).

    Exponential apodisation of ``lb_hz`` Hz, zero fill to ``size`` points (default :func:`default_size` of TD),
    Fourier transform, phase ``p0``/``p1`` in degrees (nmrglue ``ps`` convention) or, with ``autophase``, ACME
    automatic phasing started from ``p0``/``p1`` (per spectrum). A line ``exp(+2 pi i f t)`` lands at ``+f`` Hz
    above the carrier. Bruker digital-filter removal is the reader's job and must happen before this.
    """
    import nmrglue as ng

    fid = np.asarray(fid)
    if fid.dtype.kind != "c":
        raise DataError(f"process_fid needs a complex (quadrature) FID, got dtype {fid.dtype}; real-only "
                        "(sequential / TPPI) FIDs are not supported")
    if fid.ndim < 1 or fid.shape[-1] < 2 or not np.isfinite(fid).all():
        raise DataError(f"process_fid needs a finite FID with >= 2 points, got shape {fid.shape}")
    if not sw_hz > 0:
        raise DataError(f"process_fid needs a positive spectral width, got sw_hz={sw_hz}")
    size = default_size(fid.shape[-1]) if size is None else int(size)
    if size < fid.shape[-1]:
        raise DataError(f"processing size {size} is smaller than the FID's {fid.shape[-1]} points; "
                        "give size >= TD (it zero fills, it never truncates)")
    data = ng.proc_base.em(fid.astype(np.complex128), lb=float(lb_hz) / float(sw_hz))  # nmrglue: lb in Hz/SW
    # fft_positive (positive exponent) puts +f at low index with the carrier exactly at size/2, as ppm_axis says;
    # it equals nmrglue's fft + rev rolled by one point, so no off-by-one against the ppm axis
    data = ng.proc_base.fft_positive(ng.proc_base.zf_size(data, size))
    if autophase:
        rows = data.reshape(-1, size)
        data = np.stack([ng.proc_autophase.autops(row, "acme", p0=p0, p1=p1, disp=False) for row in rows])
        data = data.reshape(fid.shape[:-1] + (size,))
    else:
        data = ng.proc_base.ps(data, p0=p0, p1=p1)
    return np.ascontiguousarray(data.real, dtype=np.float64)


def _check_processing(processing: dict | None, where: str) -> dict:
    """Processing options merged over the defaults; unknown keys and wrong types are DataErrors."""
    processing = dict(processing or {})
    unknown = sorted(set(processing) - set(PROCESSING_DEFAULTS))
    if unknown:
        raise DataError(f"{where}: unknown processing key(s) {unknown}; valid keys are {list(PROCESSING_DEFAULTS)}")
    merged = {**PROCESSING_DEFAULTS, **processing}
    for key in ("lb_hz", "p0", "p1"):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise DataError(f"{where}: processing '{key}' must be a finite number, got {value!r}")
    size = merged["size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                             or not 2 <= size <= MAX_PROCESSING_SIZE):
        raise DataError(f"{where}: processing 'size' must be an integer from 2 to {MAX_PROCESSING_SIZE:,} "
                        f"(data_loader.nmr.io.MAX_PROCESSING_SIZE) or null (auto), got {size!r}")
    if not isinstance(merged["autophase"], bool):
        raise DataError(f"{where}: processing 'autophase' must be true or false, got {merged['autophase']!r}")
    return merged


# ---------------------------------------------------------------------------------------------------------------
# vendor formats: each reader returns (spectrum (L,) float64, ppm (L,) or None)


def _header_value(value, key: str, where: str, positive: bool) -> float:
    """A header value that defines the ppm axis as a float: finite, and > 0 when ``positive`` (widths, frequencies).

    A zero observe frequency or an infinite reference would give an axis of Inf/NaN (or, in nmrglue's NMRPipe
    reader, silently 1.0); the error names the file (``where`` holds the manifest line) and the key.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: header value {key} = {value!r} is not a number; it defines the ppm axis, use the "
                        "parameter files the spectrometer wrote") from None
    if not math.isfinite(number) or (positive and not number > 0):
        need = "a finite number > 0" if positive else "a finite number"
        raise DataError(f"{where}: header value {key} = {value!r} must be {need} (it defines the ppm axis); use the "
                        "parameter files the spectrometer wrote, or fix the value")
    return number


# which Bruker parameters nmrglue's guess_udic takes each universal-dictionary value from, for messages
_BRUKER_UDIC_KEYS = {"sw": "sw (acqus SW_h, or procs SW_p)", "obs": "obs (procs SF, or acqus SFO1)",
                     "car": "car (acqus SFO1 - procs SF, or acqus O1, or procs OFFSET)"}


def _ppm_from_udic(udic: dict, where: str) -> np.ndarray:
    """ppm axis of the last dimension of an nmrglue universal dictionary (of a Bruker file), values checked."""
    import nmrglue as ng

    axis = udic[udic["ndim"] - 1]
    for key, positive in (("sw", True), ("obs", True), ("car", False)):
        _header_value(axis.get(key), _BRUKER_UDIC_KEYS[key], where, positive)
    return np.asarray(ng.fileiobase.uc_from_udic(udic).ppm_scale(), dtype=np.float64)


def _guess_udic(module, dic, data, where: str, **kwargs) -> dict:
    """``module.guess_udic`` but a failure to find sw/obs/car is an error, not a warning with 999.99 defaults."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        udic = module.guess_udic(dic, data, **kwargs)
    for warning in caught:
        if "Failed to determine udic" in str(warning.message):
            raise DataError(f"{where}: the parameter files lack the spectral width / frequencies ({warning.message}); "
                            "check acqus (SW_h, SFO1, O1, NUC1, AQ_mod) and procs (SF)")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return udic


def _one_dimensional(data: np.ndarray, where: str) -> np.ndarray:
    """Accept 1-D data (or one trace); anything else is a multi-dimensional or arrayed experiment."""
    data = np.asarray(data)
    if data.ndim == 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 1:
        raise DataError(f"{where}: holds data of shape {data.shape}; only 1D experiments are supported "
                        "(list each acquisition as its own manifest line)")
    return data


def _read_bruker(path: Path, where: str, options: dict):
    """Bruker experiment directory: raw FID, digital filter removed, processed with process_fid."""
    import nmrglue as ng

    dic, data = ng.bruker.read(str(path))
    data = _one_dimensional(data, where)
    acqus = dic.get("acqus", {})
    if "DECIM" not in acqus or "DSPFVS" not in acqus:
        raise DataError(f"{where}: acqus lacks DECIM/DSPFVS, needed to remove the digital filter; "
                        "use the experiment directory exactly as the spectrometer wrote it")
    size = options["size"] or default_size(data.shape[-1])  # from the TD before the filter trims a few points
    # truncate=False removes the exact (fractional) group delay; truncating leaves a first-order phase error
    data = ng.bruker.remove_digital_filter(dic, data, truncate=False)
    sw = _header_value(acqus.get("SW_h"), "acqus SW_h", where, positive=True)
    spectrum = _process(data, sw, size, options, where)
    return spectrum, _ppm_from_udic(_guess_udic(ng.bruker, dic, spectrum, where), where)


def _read_bruker_pdata(path: Path, where: str, options: dict):
    """Bruker ``pdata/N`` directory: the real ``1r`` spectrum as processed (processing options do not apply)."""
    import nmrglue as ng

    dic, data = ng.bruker.read_pdata(str(path))
    data = _one_dimensional(data, where)
    udic = _guess_udic(ng.bruker, dic, data, where, strip_fake=True)
    return _real_float(data, where), _ppm_from_udic(udic, where)


def _procpar_float(procpar: dict, key: str, where: str, positive: bool = False) -> float:
    """A numeric procpar parameter, finite (and > 0 when ``positive``), or a DataError naming it."""
    try:
        value = procpar[key]["values"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{where}: procpar lacks a numeric '{key}' (needed for the ppm axis); "
                        "use the procpar the spectrometer wrote") from exc
    return _header_value(value, f"procpar {key}", where, positive)


def _read_varian(path: Path, where: str, options: dict):
    """Varian/Agilent directory with ``fid`` + ``procpar``; referencing from sw, sfrq, rfl, rfp."""
    import nmrglue as ng

    dic, data = ng.varian.read(str(path))
    data = _one_dimensional(data, where)
    procpar = dic["procpar"]
    sw, sfrq = (_procpar_float(procpar, key, where, positive=True) for key in ("sw", "sfrq"))
    rfl, rfp = (_procpar_float(procpar, key, where) for key in ("rfl", "rfp"))
    spectrum = _process(data, sw, options["size"], options, where)
    # VnmrJ: a point x Hz from the spectrum's right edge lies at x - rfl + rfp Hz, so the centre is at:
    car = sw / 2 - rfl + rfp
    return spectrum, ppm_axis(spectrum.shape[-1], sw, sfrq, car)


def _pipe_remove_dmx(dic: dict, data: np.ndarray) -> np.ndarray:
    """Apply NMRPipe's pending digital-oversampling (DMX) correction, which its FT would apply (flag on/auto)."""
    import nmrglue as ng

    delay = float(dic.get("FDDMXVAL", 0.0))
    if delay > 0 and dic.get("FDDMXFLAG", 0.0) >= 0:
        return ng.bruker.rm_dig_filter(data, 0, 0, delay, truncate_grpdly=False)
    return data


def _read_pipe(path: Path, where: str, options: dict):
    """NMRPipe 1D file: time-domain data is processed, frequency-domain data gives its real part."""
    import nmrglue as ng

    dic, data = ng.pipe.read(str(path))
    if int(dic["FDDIMCOUNT"]) != 1:
        raise DataError(f"{where}: NMRPipe file has {int(dic['FDDIMCOUNT'])} dimensions; only 1D is supported")
    data = _one_dimensional(data, where)
    # nmrglue's make_uc would silently take SW = 0 or OBS = 0 as 1.0
    sw = _header_value(dic["FDF2SW"], "FDF2SW", where, positive=True)
    obs = _header_value(dic["FDF2OBS"], "FDF2OBS", where, positive=True)
    if dic["FDF2FTFLAG"] != 0:  # already frequency domain: ORIG-based axis also covers extracted regions
        _header_value(dic["FDF2ORIG"], "FDF2ORIG", where, positive=False)
        return _real_float(data.real, where), np.asarray(ng.pipe.make_uc(dic, data).ppm_scale(), dtype=np.float64)
    if dic["FDF2QUADFLAG"] == 1 or data.dtype.kind != "c":
        raise DataError(f"{where}: real-only time-domain NMRPipe data is not supported; convert with complex "
                        "(-xMODE Complex/DQD) acquisition or give the frequency-domain file")
    data = data.astype(np.complex128)
    if dic["FDF2AQSIGN"] in (1, 2, 16, 17, 18):  # same sign handling as NMRPipe's FT -auto
        data[1::2] *= -1
    if dic["FDF2AQSIGN"] in (16, 17, 18):
        data = np.conj(data)
    data = _pipe_remove_dmx(dic, data)
    spectrum = _process(data, sw, options["size"], options, where)
    car_ppm = _header_value(dic["FDF2CAR"], "FDF2CAR", where, positive=False)
    return spectrum, ppm_axis(spectrum.shape[-1], sw, obs, car_ppm * obs)


def _read_npy_row(path: Path, where: str, options: dict):
    """One spectrum (L,) (or a single row (1, L)) from a .npy file; no axis."""
    array = _load_array(path, max_bytes=options.get("max_bytes"))
    if not isinstance(array, np.ndarray):
        raise DataError(f"{where}: {path} is an .npz archive; format 'npy' needs a .npy file of shape (L,)")
    array = _real_float(array, where)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise DataError(f"{where}: {path} has shape {array.shape}; format 'npy' takes one spectrum of shape (L,)")
    return array, None


def _process(data: np.ndarray, sw_hz: float, size: int | None, options: dict, where: str) -> np.ndarray:
    """process_fid with the manifest's options, errors re-labelled with the file."""
    try:
        return process_fid(data, sw_hz, size, options["lb_hz"], options["p0"], options["p1"], options["autophase"])
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from exc


READERS = {"bruker": _read_bruker, "bruker_pdata": _read_bruker_pdata, "varian": _read_varian,
           "pipe": _read_pipe, "npy": _read_npy_row}


def _infer_format(path: Path, where: str) -> str:
    """The format of a manifest path from what it holds (directories are checked before suffixes)."""
    if path.is_dir():
        names = {child.name for child in path.iterdir()}
        if {"acqus", "fid"} <= names:
            return "bruker"
        if {"procs", "1r"} <= names:
            return "bruker_pdata"
        if "procpar" in names:
            return "varian"
        raise DataError(f"{where}: cannot tell the format of directory {path} (no acqus+fid, procs+1r or procpar); "
                        f"give the 'format' column, one of {list(FORMATS)}")
    if path.suffix.lower() in PIPE_SUFFIXES:
        return "pipe"
    if path.suffix.lower() == ".npy":
        return "npy"
    raise DataError(f"{where}: cannot tell the format of {path} from its name; give the 'format' column, one of "
                    f"{list(FORMATS)} (pipe files end in {', '.join(PIPE_SUFFIXES)})")


# ---------------------------------------------------------------------------------------------------------------
# manifests


@dataclass
class _Entry:
    """One manifest line: ``where`` is 'manifest.csv line 3' / 'manifest.json entry 2' for messages."""

    group: str
    level: int
    path: Path
    format: str | None
    where: str


def _parse_level(value, where: str) -> int:
    """Manifest levels are non-negative integers: JSON ints, or strings of ASCII digits (the CSV spelling; the
    same rule as image-list labels, ``utils.parsing.ascii_int``); nothing is rounded or read from other scripts."""
    level = ascii_int(value) if isinstance(value, str) else value
    if isinstance(level, int) and not isinstance(level, bool) and level >= 0:
        return level
    raise DataError(f"{where}: level {value!r} is not a non-negative integer written with the ASCII digits 0-9; "
                    "levels are 0..K, 0 = noisiest")


def _make_entry(raw: dict, base: Path, where: str) -> _Entry:
    """Validate one manifest record (keys, group, level, path, format) into an _Entry."""
    unknown = sorted(set(raw) - set(MANIFEST_FIELDS))
    missing = [key for key in MANIFEST_FIELDS[:3] if raw.get(key) in (None, "")]
    if unknown or missing:
        raise DataError(f"{where}: " + (f"unknown field(s) {unknown}; " if unknown else "")
                        + (f"missing {missing}; " if missing else "") + f"fields are {list(MANIFEST_FIELDS)} "
                        "(format optional)")
    group, path, fmt = raw["group"], raw["path"], raw.get("format") or None
    if not isinstance(group, str) or not isinstance(path, str):
        raise DataError(f"{where}: 'group' and 'path' must be strings, got {group!r} and {path!r}")
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"{where}: unknown format {fmt!r}; use one of {list(FORMATS)} or leave it empty to infer")
    check_name(group, where, "group name")  # as given: a name with blanks or a newline is refused, not trimmed
    return _Entry(group, _parse_level(raw["level"], where), base / path.strip(), fmt, where)


def _parse_json(path: Path) -> tuple[list[_Entry], dict]:
    """Entries and processing options of a JSON manifest (a list, or {"processing": {...}, "entries": [...]})."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as JSON ({exc})") from exc
    processing = {}
    if isinstance(content, dict):
        unknown = sorted(set(content) - {"processing", "entries"})
        if unknown or "entries" not in content or not isinstance(content.get("processing", {}), dict):
            raise DataError(f"{path}: a manifest object needs 'entries' (a list) and optionally 'processing' "
                            f"(an object); unknown keys: {unknown}")
        processing, content = content.get("processing", {}), content["entries"]
    if not isinstance(content, list):
        raise DataError(f"{path}: expected a list of {{group, level, path[, format]}} objects")
    entries = []
    for index, raw in enumerate(content):
        where = f"{path} entry {index}"
        if not isinstance(raw, dict):
            raise DataError(f"{where}: expected an object {{group, level, path[, format]}}, got {raw!r}")
        entries.append(_make_entry(raw, path.parent, where))
    return entries, processing


def _parse_csv(path: Path) -> list[_Entry]:
    """Entries of a CSV manifest with header ``group,level,path[,format]`` (line numbers count the header)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            if sorted(header) not in (sorted(MANIFEST_FIELDS), sorted(MANIFEST_FIELDS[:3])):
                raise DataError(f"{path} line 1: header is {header}; expected group,level,path[,format]")
            entries = []
            for row in reader:
                # the line the record starts on: line_num is where it ends, after any quoted line breaks
                breaks = sum(len(_LINE_BREAK.findall(value)) for value in row.values() if isinstance(value, str))
                where = f"{path} line {reader.line_num - breaks}"
                if None in row or None in row.values():
                    raise DataError(f"{where}: expected {len(header)} comma-separated fields, as in the header")
                # spaces and tabs around the commas are layout; anything else (a quoted newline) is content
                record = {key.strip(" \t"): value.strip(" \t") for key, value in row.items()}
                entries.append(_make_entry(record, path.parent, where))
            return entries
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from exc


def _check_levels(name: str, entries: list[_Entry], manifest: Path) -> list[_Entry]:
    """Entries of one group sorted by level, which must be 0..K each exactly once."""
    seen: dict[int, _Entry] = {}
    for entry in entries:
        if entry.level in seen:
            raise DataError(f"{manifest}: group {name!r}: level {entry.level} appears twice ({seen[entry.level].where}"
                            f" and {entry.where}); each level must be listed exactly once")
        seen[entry.level] = entry
    # levels 0..K with no gap means the largest is len - 1; else the first gap lies below len (never loop to a
    # huge level such as 10**18 written in the file)
    missing = next((level for level in range(len(seen)) if level not in seen), None)
    if missing is not None:
        present = sorted(seen)
        shown = ", ".join(str(k) for k in present[:20])
        shown += f", ... ({len(present)} in all)" if len(present) > 20 else ""
        raise DataError(f"{manifest}: group {name!r}: level {missing} is missing; levels present: {shown}. "
                        "Levels must be 0..K, each exactly once")
    return [seen[level] for level in range(len(seen))]


def _read_entry(entry: _Entry, options: dict):
    """(spectrum (L,), ppm or None) for one manifest line; reader failures name the line and the resolved path."""
    if not entry.path.exists():
        raise DataError(f"{entry.where}: path not found: {entry.path.resolve()} (paths are relative to the manifest's "
                        "directory)")
    fmt = entry.format or _infer_format(entry.path, entry.where)
    where = f"{entry.where} ({entry.path}, format {fmt})"
    try:
        spectrum, ppm = READERS[fmt](entry.path, where, options)
    except DataError:
        raise
    except Exception as exc:  # nmrglue raises OSError/ValueError/KeyError/... on malformed files
        raise DataError(f"{where}: cannot be read as {fmt} data ({type(exc).__name__}: {exc})") from exc
    spectrum = _real_float(np.asarray(spectrum), where)
    if not np.isfinite(spectrum).all():
        raise DataError(f"{where}: spectrum has {_count_nonfinite(spectrum)}; it must be finite")
    return spectrum, ppm


def _assemble(name: str, entries: list[_Entry], options: dict) -> SpectrumGroup:
    """Read a group's levels, check equal lengths and agreeing ppm axes, and stack them."""
    results = [_read_entry(entry, options) for entry in entries]
    first, ppm0 = entries[0], results[0][1]
    for entry, (spectrum, ppm) in zip(entries[1:], results[1:]):
        if spectrum.shape != results[0][0].shape:
            raise DataError(f"group {name!r}: {entry.where} ({entry.path}) has {spectrum.shape[0]} points but "
                            f"{first.where} ({first.path}) has {results[0][0].shape[0]}; all levels of a group must "
                            "have the same length (same TD and processing size)")
        if ppm0 is not None and ppm is not None:
            step = abs(ppm0[1] - ppm0[0])
            if np.max(np.abs(ppm - ppm0)) > step / 2:
                raise DataError(f"group {name!r}: the ppm axis of {entry.where} ({entry.path}) differs from that of "
                                f"{first.where} ({first.path}) by up to {np.max(np.abs(ppm - ppm0)):.4g} ppm, more "
                                "than half a point; levels must share spectral width, frequency and referencing")
    sources = [str(entry.path) for entry in entries]
    return _make_group(name, np.stack([spectrum for spectrum, _ in results]), sources, ppm0, allow_single=True)


def read_manifest(path, processing: dict | None = None, *, max_bytes: int | None = None) -> list[SpectrumGroup]:
    """Groups described by a manifest.json / manifest.csv, sorted by group name.

    ``processing`` (keys lb_hz, size, p0, p1, autophase) applies to raw FIDs (bruker, varian, time-domain pipe); for
    a JSON manifest it overrides the manifest's own ``processing`` object key by key. ``max_bytes``: bound on the
    declared size of each ``npy`` array (default ``MAX_ARRAY_BYTES``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; expected a .json or .csv file listing group,level,path")
    if path.suffix.lower() == ".json":
        entries, own = _parse_json(path)
    elif path.suffix.lower() == ".csv":
        entries, own = _parse_csv(path), {}
    else:
        raise DataError(f"{path}: a manifest must be .json or .csv")
    options = _check_processing({**_check_processing(own, str(path)), **(processing or {})}, str(path))
    options["max_bytes"] = _limit(max_bytes)  # added after the check: not a key a manifest can set
    if not entries:
        raise DataError(f"{path}: the manifest lists no entries")
    by_group: dict[str, list[_Entry]] = {}
    for entry in entries:
        by_group.setdefault(entry.group, []).append(entry)
    groups = {name: _check_levels(name, items, path) for name, items in by_group.items()}
    return [_assemble(name, groups[name], options) for name in sorted(groups)]


# ---------------------------------------------------------------------------------------------------------------
# directories


def _manifest_in(directory: Path) -> Path | None:
    """The directory's manifest, refusing two of them."""
    found = [directory / name for name in MANIFEST_NAMES if (directory / name).is_file()]
    if len(found) > 1:
        raise DataError(f"{directory}: holds both manifest.json and manifest.csv; keep one")
    return found[0] if found else None


def _referenced_paths(groups: list[SpectrumGroup]) -> set[Path]:
    """Resolved files a manifest points at, so the plain .npy/.npz scan does not read them a second time."""
    return {Path(source).resolve() for group in groups for source in group.sources}


def _check_level_counts(groups: list[SpectrumGroup], levels: int | None, allow_single: bool) -> None:
    """All groups have ``levels`` rows (or, without it, the count most groups have); >= 2 unless allow_single.

    With ``allow_single`` (inference), single spectra may sit beside ladders: they are denoised unscored.
    """
    if allow_single:
        groups = [group for group in groups if group.spectra.shape[0] > 1]
        if not groups:
            return
    counts = [group.spectra.shape[0] for group in groups]
    expected = levels if levels is not None else max(set(counts), key=lambda c: (counts.count(c), c))
    reason = f"levels={levels}" if levels is not None else f"as in {counts.count(expected)} other group(s)"
    for group, count in zip(groups, counts):
        if count != expected:
            missing = f"; level {count} is missing" if count < expected else ""
            raise DataError(f"{', '.join(group.sources)}: group {group.name!r} has {count} levels, expected "
                            f"{expected} ({reason}){missing}. Give every group the same levels 0..K")
        if count < 2 and not allow_single:
            raise DataError(f"{', '.join(group.sources)}: group {group.name!r} has a single level; training needs "
                            "K+1 >= 2 levels per group (pass allow_single=True, or use read_single for inference)")


def _directory_files(directory: Path) -> list[Path]:
    """The ``.npz`` / ``.npy`` entries of ``directory`` (suffix in any letter case), sorted by name.

    An entry with such a suffix that is not a regular file is an error naming it: a dangling symbolic link, a
    directory, a socket. Nothing that looks like data is skipped in silence.
    """
    found = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        if path.suffix.lower() not in (".npz", ".npy"):
            continue
        if path.is_symlink() and not path.exists():
            raise DataError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; restore the target "
                            "or remove the link")
        if not path.is_file():
            raise DataError(f"{path}: named like a data file but it is not a regular file (a directory?); rename or "
                            "remove it")
        found.append(path)
    return found


def read_directory(directory, levels: int | None = None, allow_single: bool = False, *,
                   max_bytes: int | None = None) -> list[SpectrumGroup]:
    """All groups in ``directory`` sorted by name: every ``*.npz`` / ``*.npy`` file (suffix in any case: ``S5.NPZ``
    is group ``S5``) plus the groups of its ``manifest.json`` / ``manifest.csv`` (files the manifest points at are
    not read again as groups).

    Other files (README, ...) are ignored; a ``.npz``/``.npy`` entry that is not a readable regular file (a dangling
    link, a directory) is an error. Every group must have ``levels`` rows when given, else all groups the same
    count; duplicate group names are errors. Group names follow ``NAME_RULE``. ``max_bytes``: bound on each array's
    declared size (default ``MAX_ARRAY_BYTES``).
    """
    directory = Path(directory)
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 1):
        raise DataError(f"levels must be a positive integer (K+1) or None, got {levels!r}")
    if not directory.is_dir():
        raise DataError(f"{directory}: data directory not found; it should hold {EXPECTED_FILES}")
    manifest = _manifest_in(directory)
    groups = read_manifest(manifest, max_bytes=max_bytes) if manifest else []
    taken = _referenced_paths(groups)
    readers = {".npz": read_npz, ".npy": read_npy}
    for path in _directory_files(directory):
        if path.resolve() not in taken:
            groups.append(readers[path.suffix.lower()](path, allow_single=allow_single, max_bytes=max_bytes))
    if not groups:
        raise DataError(f"{directory}: no usable files; expected {EXPECTED_FILES}")
    names: dict[str, SpectrumGroup] = {}
    for group in groups:
        if group.name in names:
            raise DataError(f"group name {group.name!r} is used twice: {', '.join(names[group.name].sources)} and "
                            f"{', '.join(group.sources)}; rename one (names are file stems / manifest group ids)")
        names[group.name] = group
    groups.sort(key=lambda group: group.name)
    _check_level_counts(groups, levels, allow_single)
    return groups
