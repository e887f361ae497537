"""CIFAR-10-LT and CIFAR-100-LT, held on the training device and augmented there in batches.

The files are torchvision's on-disk format (``cifar-10-batches-py/``, ``cifar-100-python/``), read with
a restricted unpickler rather than torchvision's CIFAR classes: those refuse any file whose md5 differs
from the original, which rules out generated test fixtures and re-packed copies. The unpickler admits only
what the files are made of (a dict; ``data`` a uint8 ``(N, 3072)`` array built by numpy's own reconstruct
from exactly ``N * 3072`` bytes of the file, ``N <= max_images``; labels a list of ints in range) and checks
every declared length against the file before anything is allocated (see :func:`read_cifar_file`).

Protocol (LDAM-DRW / MiSLAS / SADE, see ``reference/lnr.md`` §1.1 and ``reference/experts.md`` §2.3):
the long-tailed training set keeps ``n_i = int(n_max * imb_factor ** (i / (C - 1)))`` images of class
``i``, the first after a per-class shuffle of a generator seeded with 0 (``subsample_per_class``); the
test set is the full balanced 10,000-image CIFAR test split (a test file with unequal class counts is split
for test_all.py from its smallest class, see ``formula_splits``); training images are augmented with
RandomCrop(32, padding=4) + horizontal flip (SADE adds RandomRotation(15)) and every image is normalised
with the CIFAR-10 mean/std, for CIFAR-100 too.
"""
from __future__ import annotations

import io
import math
import pickle
import pickletools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from data_loader.batch_augment import OPS, BatchAugment
from data_loader.long_tail import long_tailed_counts, subsample_per_class
from data_loader.test_agnostic import formula_splits, index_splits
from utils import dist
from utils.errors import DataError
from utils.registry import DATA_LOADERS, SAMPLERS

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # MiSLAS / SADE values, used for CIFAR-100 as well
CIFAR_STD = (0.2023, 0.1994, 0.2010)


# --- reading torchvision's CIFAR files ------------------------------------------------------------
@dataclass(frozen=True)
class CifarLayout:
    """Where torchvision keeps one CIFAR variant and which keys its pickles hold."""

    name: str
    folder: str
    url: str
    md5: str  # of the archive at ``url`` (torchvision's value), checked by download_and_extract_archive
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int


CIFAR10_LAYOUT = CifarLayout(
    name="CIFAR-10", folder="cifar-10-batches-py", url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a", train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",), label_key="labels", num_classes=10)
CIFAR100_LAYOUT = CifarLayout(
    name="CIFAR-100", folder="cifar-100-python", url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85", train_files=("train",), test_files=("test",), label_key="fine_labels",
    num_classes=100)


IMAGE_BYTES = 3 * 32 * 32  # one image's row of 'data'
MAX_IMAGES_PER_FILE = 60_000  # the CIFAR files hold 10,000 (CIFAR-10 batches) or 50,000 / 10,000 (CIFAR-100)
# bytes a file may hold per image: its pixels twice over (Python 3's protocol 2 writes bytes as latin-1 text in
# UTF-8, up to 2 bytes per pixel) plus its label(s) and file name (~40 bytes in the originals)
_FILE_BYTES_PER_IMAGE = 2 * IMAGE_BYTES + 512
# the dtypes a CIFAR pickle may build: uint8 pixels; integer labels of re-packed copies that stored them as arrays
_ARRAY_DTYPES = {"u1": np.dtype(np.uint8), "|u1": np.dtype(np.uint8), "uint8": np.dtype(np.uint8),
                 "i8": np.dtype("<i8"), "<i8": np.dtype("<i8"), "int64": np.dtype("<i8"),
                 "i4": np.dtype("<i4"), "<i4": np.dtype("<i4"), "int32": np.dtype("<i4")}


def _text(value: Any) -> Any:
    """Python 2 strings arrive as bytes (encoding="bytes"); compare them as text."""
    return value.decode("latin1") if isinstance(value, bytes) else value


class _NDArrayToken:
    """What the pickle gets for the global ``numpy.ndarray``: a token for ``_reconstruct``'s first argument.

    It cannot be called, so a pickle cannot allocate an array of any shape with ``ndarray(shape)``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "numpy.ndarray (token)"


_NDARRAY = _NDArrayToken()


class _PendingDtype:
    """A dtype the pickle asked for (``numpy.dtype('u1', 0, 1)``), from the allow-list; BUILD may set only a
    plain dtype's state (no fields, no sub-array), which cannot change what it is."""

    def __init__(self, reader: _RestrictedUnpickler, spec: Any, align: Any = False, copy: Any = True):
        spec = _text(spec)
        if not isinstance(spec, str) or spec not in _ARRAY_DTYPES or align not in (0, False):
            try:
                name = np.dtype(spec).name  # parsing a dtype string allocates no array
            except Exception:
                name = repr(spec)[:40]
            raise DataError(f"{reader.path}: a CIFAR file holds uint8 arrays (pixels) and integer labels only; an "
                            f"array of dtype {name} was refused")
        self.reader, self.dtype = reader, _ARRAY_DTYPES[spec]

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 5 or any(part is not None for part in state[2:5]):
            raise DataError(f"{self.reader.path}: a numpy dtype with fields or a sub-array shape ({state!r:.200}); a "
                            "CIFAR file holds only plain uint8 arrays, so it was refused")
        if _text(state[1]) not in ("|", "<", "="):  # the allow-listed dtypes are little-endian
            raise DataError(f"{self.reader.path}: a numpy dtype with byte order {state[1]!r}; refused")


class _PendingArray:
    """An array being unpickled: numpy's ``_reconstruct`` makes an empty array that BUILD then fills.

    Here nothing is allocated until BUILD supplies shape, dtype and the bytes: the shape must be within bounds and
    the bytes exactly as many as the shape declares, so the array is made from the file's own bytes, never from
    uninitialised memory and never larger than the file.
    """

    def __init__(self, reader: _RestrictedUnpickler):
        self.reader, self.array = reader, None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise DataError(f"{self.reader.path}: sets the contents of one array twice; not a CIFAR file")
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise DataError(f"{self.reader.path}: an array state that numpy does not write ({type(state).__name__}); "
                            "not a CIFAR file")
        _, shape, dtype, fortran, payload = state
        if fortran not in (0, False):
            raise DataError(f"{self.reader.path}: a Fortran-ordered array; a CIFAR file holds C-ordered arrays")
        self.array = self.reader.make_array(payload, dtype, shape)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only what CIFAR files are made of, refusing everything else before anything runs.

    A pickle can call any importable function while it is being read; CIFAR files are plain dicts of bytes,
    lists of ints and uint8 arrays. The few globals they name are replaced by checked stand-ins: numpy's
    ``_reconstruct`` (protocols 2-4) and ``_frombuffer`` (protocol 5) build an array only from bytes that are
    exactly as long as the declared shape, within ``max_images`` rows; ``numpy.dtype`` only from an allow-list;
    ``_codecs.encode`` only latin-1 text (Python 3's protocol-2 spelling of bytes).
    """

    def __init__(self, file, path: Path, max_images: int):
        super().__init__(file, encoding="bytes")  # the files were written by Python 2
        self.path, self.max_images = path, max_images
        self._globals: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _NDARRAY,
                                                     ("numpy", "dtype"): self._dtype,
                                                     ("_codecs", "encode"): self._encode}
        for core in ("numpy.core", "numpy._core"):
            self._globals[(f"{core}.multiarray", "_reconstruct")] = self._reconstruct
            self._globals[(f"{core}.numeric", "_frombuffer")] = self._frombuffer

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._globals[(module, name)]
        except KeyError:
            raise DataError(f"{self.path} contains Python objects ({module}.{name}), which a CIFAR file never "
                            "does; it was refused without running them. Replace it with the original file "
                            "from the CIFAR download") from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.path} refers to external objects (persistent id {pid!r}); not a CIFAR file")

    # --- the stand-ins -----------------------------------------------------------------------------
    def _dtype(self, *args: Any) -> _PendingDtype:
        return _PendingDtype(self, *args)

    def _encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise DataError(f"{self.path}: calls _codecs.encode with {type(text).__name__} and {encoding!r}; a "
                            "CIFAR file only encodes text as latin-1, so it was refused")
        return text.encode("latin1")

    def _reconstruct(self, cls: Any, shape: Any, typecode: Any) -> _PendingArray:
        # numpy pickles every array as _reconstruct(ndarray, (0,), b'b') followed by BUILD with the real state
        if cls is not _NDARRAY or shape != (0,) or _text(typecode) != "b":
            raise DataError(f"{self.path}: calls numpy's _reconstruct with {shape!r:.60} and {typecode!r:.20} "
                            "instead of numpy's own (ndarray, (0,), 'b'); refused (it would allocate an "
                            "uninitialised array)")
        return _PendingArray(self)

    def _frombuffer(self, payload: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        if _text(order) != "C":
            raise DataError(f"{self.path}: an array in {order!r} order; a CIFAR file holds C-ordered arrays")
        return self.make_array(payload, dtype, shape)

    def make_array(self, payload: Any, dtype: Any, shape: Any) -> np.ndarray:
        """An array from ``payload`` after checking that dtype, shape and length agree and are within bounds."""
        if isinstance(dtype, _PendingDtype):
            dtype = dtype.dtype
        elif not isinstance(dtype, np.dtype) or dtype not in _ARRAY_DTYPES.values():
            raise DataError(f"{self.path}: an array whose dtype is {type(dtype).__name__}; not a CIFAR file")
        if (not isinstance(shape, tuple) or not 1 <= len(shape) <= 2
                or not all(type(n) is int and n >= 0 for n in shape)):
            raise DataError(f"{self.path}: an array of shape {shape!r:.100}; a CIFAR file holds uint8 arrays of "
                            f"shape (N, {IMAGE_BYTES})")
        if shape[0] > self.max_images:
            raise DataError(f"{self.path}: an array of shape {shape} declares {shape[0]:,} rows, more than "
                            f"{self.max_images:,} (a CIFAR file holds at most 50,000 images; max_images raises the "
                            "limit); refused before allocating it")
        if not isinstance(payload, (bytes, bytearray)):
            raise DataError(f"{self.path}: an array whose contents are a {type(payload).__name__}, not bytes; "
                            "not a CIFAR file")
        declared = math.prod(shape) * dtype.itemsize
        if declared != len(payload):
            raise DataError(f"{self.path}: an array of shape {shape} and dtype {dtype} needs {declared:,} bytes but "
                            f"the file holds {len(payload):,} for it; the file is truncated or corrupted")
        return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()  # a copy: writable, owns its memory


def _describe(value: Any) -> str:
    """A value's type as a message names it (an unpickled array is an ndarray)."""
    return "ndarray" if isinstance(value, (_PendingArray, np.ndarray)) else type(value).__name__


def _finished_array(value: Any, path: Path, key: str) -> Any:
    """``value`` with an unpickled array replaced by its contents; an array never given contents is an error."""
    if isinstance(value, _PendingArray):
        if value.array is None:
            raise DataError(f"{path}: '{key}' is an array whose contents the file never gives (numpy's reconstruct "
                            "without its state); the file is corrupted or crafted")
        return value.array
    return value


def _labels(value: Any, path: Path, key: str, count: int, num_classes: int) -> np.ndarray:
    """``key``'s labels as int64 ``(count,)``: a list of ints (or an integer array), each in 0..num_classes-1."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or len(value) != count or value.dtype.kind not in "iu":
            raise DataError(f"{path}: '{key}' must be {count} integers (one per image), got {value.dtype} of shape "
                            f"{value.shape}")
        labels = value.astype(np.int64)
    else:
        if not isinstance(value, list) or len(value) != count:
            size = f" of {len(value)}" if isinstance(value, (list, tuple)) else ""
            raise DataError(f"{path}: '{key}' must be {count} integers (one per image), got a "
                            f"{_describe(value)}{size}")
        bad = next((i for i, label in enumerate(value) if type(label) is not int), None)  # bool is not a label
        if bad is not None:
            raise DataError(f"{path}: '{key}' must be {count} integers (one per image), got a "
                            f"{_describe(value[bad])} at index {bad}")
        bad = next((i for i, label in enumerate(value) if not 0 <= label < num_classes), None)
        if bad is not None:  # before the int64 conversion, which would overflow on a huge value
            raise DataError(f"{path}: '{key}' has {value[bad]} at index {bad}, outside 0..{num_classes - 1}")
        return np.asarray(value, dtype=np.int64)
    out = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(out):  # the message shows a value read from the file, never uninitialised memory
        raise DataError(f"{path}: '{key}' has {labels[out[0]]} at index {out[0]}, outside 0..{num_classes - 1}")
    return labels


def read_cifar_file(path: Path, label_key: str, num_classes: int,
                    max_images: int = MAX_IMAGES_PER_FILE) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of one CIFAR pickle, validated.

    Only what the CIFAR files are made of is admitted (see :class:`_RestrictedUnpickler`): a dict (bytes or str
    keys) with ``data``, a uint8 array ``(N, 3072)``, and ``label_key``, N ints in ``0..num_classes-1`` (a list, or
    an integer array in re-packed copies). ``max_images`` bounds N (default 60,000 per file); the file size is
    checked against it before reading, every declared length against the bytes present before anything is
    allocated.

    Raises:
        DataError: naming ``path`` when it is not a valid pickle, holds other globals than numpy arrays,
            declares more than it holds, lacks ``data``/``label_key``, or has wrong shapes, dtypes or labels.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise DataError(f"{path} is missing") from err
    except OSError as err:
        raise DataError(f"{path} cannot be read ({type(err).__name__}: {err})") from err
    limit = max_images * _FILE_BYTES_PER_IMAGE + (1 << 20)
    if size > limit:
        raise DataError(f"{path} has {size:,} bytes, more than a CIFAR file of at most {max_images:,} images can "
                        f"({limit:,}); refused before reading it (max_images raises the limit)")
    try:
        raw = path.read_bytes()
        # every length the pickle declares is checked against the bytes present first: the C unpickler would
        # allocate a declared bytes object (say 143 GiB) before finding that the file ends
        for _ in pickletools.genops(raw):
            pass
        content = _RestrictedUnpickler(io.BytesIO(raw), path, max_images).load()
    except DataError:
        raise
    except Exception as err:  # truncated or corrupted: pickle raises EOFError, UnpicklingError, ValueError, ...
        raise DataError(f"{path} is not a readable CIFAR pickle ({type(err).__name__}: {err}); the file is "
                        "truncated or corrupted. Download and extract the archive again") from err
    if not isinstance(content, dict):
        raise DataError(f"{path} holds a {_describe(content)}, not the dict of a CIFAR batch file")
    # Python 2 pickles read with encoding="bytes" have bytes keys; re-pickled copies may have str keys
    entries = {_text(k): v for k, v in content.items()}
    missing = [key for key in ("data", label_key) if key not in entries]
    if missing:
        raise DataError(f"{path} lacks the key(s) {missing} (found {sorted(map(str, entries))}); a CIFAR file "
                        f"holds 'data' (N x 3072 uint8) and '{label_key}'. Is it the right CIFAR variant?")
    data = _finished_array(entries["data"], path, "data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else _describe(data)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072) (32x32 RGB, channel-major), "
                        f"got {got}")
    labels = _labels(_finished_array(entries[label_key], path, label_key), path, label_key, len(data), num_classes)
    return data.reshape(-1, 3, 32, 32), labels


# --- a loader over an in-memory uint8 tensor --------------------------------------------------------
class EpochPermutationSampler(Sampler[int]):
    """Dataset indices of one epoch for this process: a seeded permutation (or index order), DDP-sharded.

    The permutation comes from a fresh ``torch.Generator`` seeded with ``seed * 1_000_003 + epoch``, so
    every rank draws the same one and a resumed run needs no sampler state. Under DDP rank ``r`` takes
    ``perm[r::world_size]``; with ``pad`` (training) the permutation is first padded to a multiple of the world
    size by repeating its start, as ``DistributedSampler`` does, so all ranks run the same number of steps;
    without (evaluation) every index comes once over the ranks. ``shard`` False: every rank takes the whole
    order (test-time training's views).
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, pad: bool = True, shard: bool = True):
        self.size, self.shuffle, self.seed, self.epoch, self.pad, self.shard = size, shuffle, seed, 0, pad, shard

    def _world(self) -> int:
        return dist.world_size() if self.shard else 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch, int64 ``(len(self),)`` on the CPU."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        world = self._world()
        if world > 1 and self.pad:
            total = math.ceil(self.size / world) * world
            order = order.repeat(math.ceil(total / max(self.size, 1)))[:total]
        if world > 1:
            order = order[dist.rank()::world]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.size / self._world())
        return len(range(dist.rank() if self.shard else 0, self.size, self._world()))


class TensorImageSet(Dataset):
    """A split held as uint8 images ``(N, C, H, W)`` (on the loader's device) and int64 labels.

    ``targets`` is a CPU int64 tensor ``(N,)``. Items are ``(image, label, index)`` with the image
    normalised float32 ``(C, H, W)`` and not augmented, for code that wants a map-style dataset.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, normalize: BatchAugment):
        self.images, self.targets = images, targets.cpu()
        self._labels = targets.to(images.device)
        self._normalize = normalize

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self._normalize(self.images[index:index + 1])[0], int(self.targets[index]), index


class TensorBatchLoader:
    """Iterable of ``(images, labels, index)`` batches over a split held in one uint8 tensor.

    Each batch: ``images`` float32 ``(B, C, H, W)``, augmented and normalised, and ``labels`` int64
    ``(B,)``, both on the split's device; ``index`` int64 ``(B,)`` on the CPU: the positions of the images
    in ``dataset``. The index stays on the CPU because it addresses host-side per-sample state
    (``predict``'s logit table, LNR's probability sums); the trainer moves it when it needs it on the device.

    Args:
        dataset: the split (``len(dataset)`` images, ``dataset.targets``).
        batch_size: images per batch (the last batch may be smaller unless ``drop_last``).
        augment: applied to every batch; ``BatchAugment([])`` only normalises.
        sampler: yields this process's dataset indices for the epoch; it has ``set_epoch``.
        cls_num_list: training images per class of the long-tailed training set.
    """

    def __init__(self, dataset: TensorImageSet, batch_size: int, augment: BatchAugment, sampler: Sampler,
                 drop_last: bool, cls_num_list: list[int], num_classes: int):
        self.dataset, self.batch_size, self.augment = dataset, batch_size, augment
        self.sampler, self.drop_last = sampler, drop_last
        self.cls_num_list, self.num_classes = list(cls_num_list), num_classes

    @property
    def device(self) -> torch.device:
        return self.dataset.images.device

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's sample order (forwarded to the sampler)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> torch.Tensor:
        if isinstance(self.sampler, EpochPermutationSampler):
            order = self.sampler.indices()
        else:
            order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        if len(order) and (int(order.min()) < 0 or int(order.max()) >= len(self.dataset)):
            raise DataError(f"{type(self.sampler).__name__} yielded indices from {int(order.min())} to "
                            f"{int(order.max())}, outside 0..{len(self.dataset) - 1} (a split of {len(self.dataset)} "
                            "images): a sampler must yield positions in the training set it was built for")
        return order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self._order()
        on_device = order.to(self.device)  # once per epoch, not per batch
        images, labels = self.dataset.images, self.dataset._labels
        for b in range(len(self)):
            part = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = on_device[part]
            yield self.augment(images.index_select(0, idx)), labels.index_select(0, idx), order[part]


# --- the registered loaders ------------------------------------------------------------------------
class CIFARLT(TensorBatchLoader):
    """Shared implementation of :class:`CIFAR10LT` and :class:`CIFAR100LT` (the class docstrings there)."""

    layout: ClassVar[CifarLayout]
    # the many/medium/few definition of the dataset family (shot_accuracy args); test_all.py's default
    shot_groups: ClassVar[dict]

    def __init__(self, data_dir: str = "data", imb_factor: float | None = 0.01, batch_size: int = 128,
                 training: bool = True, download: bool = False,
                 validation: Literal["test", "heldout", "none"] = "test", val_per_class: int = 20,
                 augment: Sequence[str] = ("crop", "flip"), rotate_degrees: float = 15.0,
                 mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD, shuffle: bool = True,
                 drop_last: bool = False, sampler: dict | None = None, device: str | torch.device | None = None,
                 augmented_split_scoring: bool = False, seed: int = 0, split_lists: dict | None = None):
        layout = self.layout
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if validation not in ("test", "heldout", "none"):
            raise ValueError(f'validation must be "test", "heldout" or "none", got {validation!r}')
        if validation == "heldout" and val_per_class < 1:
            raise ValueError(f'validation="heldout" needs val_per_class >= 1, got {val_per_class}')
        if isinstance(augment, str):
            raise ValueError(f'augment must be a list of op names such as ["crop", "flip"], got "{augment}"')
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (R, G, B), got {list(mean)} and {list(std)}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if split_lists is not None and not all(isinstance(v, str) for v in split_lists.values()):
            raise ValueError('split_lists maps a split name to a file of test positions, e.g. {"forward50": '
                             f'"forward50.txt"}}, got {split_lists}')
        self.split_lists, self._data_dir = dict(split_lists or {}), Path(data_dir)
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but CUDA is not available")
        self.augment_ops = list(augment)
        train_augment = BatchAugment(augment, mean, std, rotate_degrees=rotate_degrees)  # checks the op names
        self._plain = BatchAugment((), mean, std)
        # SADE's test-time views (TwoCropsTransform): crop, flip, colour jitter, grayscale, blur
        self._view_augment = BatchAugment(("crop", "flip", "color_jitter", "grayscale", "blur"), mean, std)
        self._train_augment = train_augment
        self.validation, self.val_per_class, self.training = validation, val_per_class, training
        self.augmented_split_scoring = augmented_split_scoring
        self._device, self._test_set = device, None
        self.root = self._locate(Path(data_dir), download)  # as given: no ~ or $VAR expansion

        images, labels = self._read(layout.train_files)
        heldout_idx = (subsample_per_class(labels, [val_per_class] * layout.num_classes, seed=0)
                       if validation == "heldout" else np.zeros(0, dtype=np.int64))
        # the held-out images leave the pool BEFORE the long-tailed subsampling, so the largest class keeps
        # n_max = (its pool size) - val_per_class (480 on CIFAR-100) and training stays disjoint from them
        pool = np.setdiff1d(np.arange(len(labels)), heldout_idx)
        pool_counts = np.bincount(labels[pool], minlength=layout.num_classes)
        if pool_counts.min() < 1:
            empty = [int(c) for c in np.flatnonzero(pool_counts < 1)]
            raise DataError(f"{self._files(layout.train_files)[0]}: class(es) {empty[:10]} have no training images"
                            + (f" left after holding back val_per_class={val_per_class}" if len(heldout_idx) else ""))
        if imb_factor is None:  # the files hold a long-tailed training set already (a user's own data): keep it all
            counts, train_idx = [int(n) for n in pool_counts], pool
        else:
            counts = long_tailed_counts(int(pool_counts.min()), layout.num_classes, imb_factor)
            train_idx = pool[subsample_per_class(labels[pool], counts, seed=0)]
        self.cls_num_list, self.num_classes, self.n_max = counts, layout.num_classes, max(counts)
        self._heldout = self._split(images[heldout_idx], labels[heldout_idx]) if len(heldout_idx) else None

        if training:
            dataset = self._split(images[train_idx], labels[train_idx])
            del images  # the full 50,000-image array is no longer needed
            built = None
            if sampler is not None:
                built = SAMPLERS.build(sampler, ("data_loader", "args", "sampler"),
                                       targets=dataset.targets.tolist())
            order = built if built is not None else EpochPermutationSampler(len(dataset), shuffle, seed)
            super().__init__(dataset, batch_size, train_augment, order, drop_last, counts, layout.num_classes)
        else:
            del images
            dataset = self._test_split()
            super().__init__(dataset, batch_size, self._plain, EpochPermutationSampler(len(dataset), False, pad=False),
                             False, counts, layout.num_classes)

    # --- files --------------------------------------------------------------------------------------
    def _locate(self, root: Path, download: bool) -> Path:
        """The folder holding the CIFAR files (``root/<folder>``, or ``root`` itself if it is that folder)."""
        layout = self.layout
        names = layout.train_files + layout.test_files
        if not (root / layout.folder).is_dir() and all((root / n).is_file() for n in names):
            return root
        folder = root / layout.folder
        if download and not all((folder / n).is_file() for n in names):
            self._download(root)
        if not folder.is_dir():
            raise DataError(f"{layout.name}: directory {folder} does not exist. {self._where(root)}")
        for name in names:
            if not (folder / name).is_file():
                raise DataError(f"{layout.name}: file {folder / name} is missing. {self._where(root)}")
        return folder

    def _where(self, root: Path) -> str:
        layout = self.layout
        return (f"The loader reads torchvision's layout: {root / layout.folder}/ with the files "
                f"{', '.join(layout.train_files + layout.test_files)}. Download {layout.url} and extract it "
                f'into {root} (data_loader.args.data_dir), or set "download": true in data_loader.args to '
                "fetch it on a machine with internet access")

    def _download(self, root: Path) -> None:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(self.layout.url, download_root=str(root), md5=self.layout.md5)
        except Exception as err:  # offline, proxy, disk full, bad checksum: say what to do by hand
            raise DataError(f"{self.layout.name}: downloading {self.layout.url} into {root} failed "
                            f"({type(err).__name__}: {err}). Download and extract it by hand on a machine "
                            "with internet access") from err

    def _files(self, names: Sequence[str]) -> list[Path]:
        return [self.root / name for name in names]

    def _read(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [read_cifar_file(path, self.layout.label_key, self.layout.num_classes)
                 for path in self._files(names)]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _split(self, images: np.ndarray, labels: np.ndarray) -> TensorImageSet:
        """Move one split to the device once: uint8 ``(N, 3, 32, 32)`` and int64 labels."""
        pixels = torch.from_numpy(np.ascontiguousarray(images)).to(self._device)
        return TensorImageSet(pixels, torch.from_numpy(labels), self._plain)

    def _test_split(self) -> TensorImageSet:
        """The full balanced test split (read on first use)."""
        if self._test_set is None:
            self._test_set = self._split(*self._read(self.layout.test_files))
        return self._test_set

    # --- evaluation views ---------------------------------------------------------------------------
    def _eval_loader(self, dataset: TensorImageSet, augment: BatchAugment | None = None,
                     pad: bool = False, shard: bool = True) -> TensorBatchLoader:
        """In index order; under DDP each image once over the ranks unless ``pad`` (see EpochPermutationSampler),
        or every image on every rank without ``shard``."""
        return TensorBatchLoader(dataset, self.batch_size, self._plain if augment is None else augment,
                                 EpochPermutationSampler(len(dataset), shuffle=False, pad=pad, shard=shard), False,
                                 self.cls_num_list, self.num_classes)

    def split_validation(self) -> TensorBatchLoader | None:
        """Loader over the validation images (test split or held-out split), unaugmented, in index order."""
        if self.validation == "none":
            return None
        return self._eval_loader(self._test_split() if self.validation == "test" else self._heldout)

    @property
    def validation_source(self) -> str:
        if self.validation == "test":
            return (f"the {self.layout.name} test split ({len(self._test_split())} images): selecting on the test "
                    "set follows the CIFAR-LT papers' protocol (LDAM, MiSLAS, SADE); set "
                    'validation="heldout" for a clean estimate')
        if self.validation == "heldout":
            return (f"held-out balanced split ({self.val_per_class} per class, {len(self._heldout)} images, "
                    "taken from the training pool before long-tailed subsampling; disjoint from train and test)")
        return "none"

    def test_targets(self) -> torch.Tensor:
        """Labels of the full test split in index order, int64 ``(10000,)`` on the CPU."""
        return self._test_split().targets.clone()

    def test_agnostic_splits(self) -> dict[str, np.ndarray]:
        """forward50..uniform..backward50 index sets of the test split: by the CIFAR formula (from the smallest
        class of an unbalanced test file), or the positions listed in ``split_lists``."""
        if self.split_lists:
            return index_splits(len(self._test_split()), {name: self._data_dir / file
                                                          for name, file in self.split_lists.items()})
        return formula_splits(self.test_targets().numpy(), self.num_classes)

    def view_loader(self, indices) -> TensorBatchLoader:
        """Strongly augmented views of test images ``indices`` (in that order) for test-time training: SADE's
        crop + flip + colour jitter (p 0.8) + grayscale (p 0.2) + blur (p 0.2); new draws every iteration."""
        test = self._test_split()
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        subset = TensorImageSet(test.images[index.to(test.images.device)], test.targets[index], self._plain)
        return self._eval_loader(subset, self._view_augment, shard=False)  # see TestTimeTrainer: every rank, all

    def augmented_test_loader(self) -> TensorBatchLoader:
        """The test split in index order WITH the training augmentation (SADE's scoring of non-uniform splits).

        Randomness comes from the default generator of the device, like training augmentation.
        """
        return self._eval_loader(self._test_split(), self._train_augment)


_ARGS_DOC = """
    Args:
        data_dir: directory holding ``{folder}/`` (torchvision's layout), or that folder itself.
        imb_factor: n_min / n_max of the training profile, in (0, 1]; 0.01 is "imbalance ratio 100". ``null``:
            the training files are long-tailed already (your own data in CIFAR's format): every training image
            is kept and ``cls_num_list`` is their class counts. Class-index many/medium/few ranges then assume
            the classes are numbered from the most to the least frequent; the tables print each group's counts.
        batch_size: images per batch.
        training: True for the long-tailed training set, False for the full test set (index order,
            no augmentation; ``cls_num_list`` is still the training counts).
        download: fetch and extract ``{url}`` into ``data_dir`` when the files are missing (needs internet).
        validation: what ``split_validation()`` returns and so which data selects ``model_best.pth``:
            ``"test"`` (default: the test split, the protocol of LDAM/MiSLAS/SADE, which select on test),
            ``"heldout"`` (``val_per_class`` images per class held back from the training pool BEFORE the
            long-tailed subsampling, so the largest class keeps ``n_max = {n_per_class} - val_per_class``) or
            ``"none"``.
        val_per_class: size of the held-out split per class (the first ``val_per_class`` images of every
            class after a seed-0 per-class shuffle of the training file; the same for every run).
        augment: training augmentation, applied in order on the device: any of crop (RandomCrop 32,
            padding 4), flip, rotate (``rotate_degrees``), color_jitter, grayscale, blur; ``[]`` for none.
        rotate_degrees: maximum angle of ``rotate`` (SADE: 15).
        mean, std: per-channel normalisation (default the CIFAR-10 values of MiSLAS/SADE).
        shuffle: a new permutation every epoch, from a generator seeded with ``seed * 1_000_003 + epoch``.
        drop_last: drop the last incomplete training batch.
        sampler: ``{{"type": NAME, "args": {{...}}}}`` of a registered sampler (e.g. class-aware) built with
            the training labels; replaces shuffling.
        device: where the images are kept and augmented; the trainer passes its own device.
        augmented_split_scoring: SADE's released ``test_all_cifar.py`` scores the 10 non-uniform test splits
            on training-augmented images (crop + flip + rotate), uniform on clean ones. False (default):
            every split is scored on clean images; True: ``test_all.py`` scores non-uniform splits on
            ``augmented_test_loader()`` as SADE does.
        seed: seed of the per-epoch sample order (the long-tailed subset itself always uses seed 0).
        split_lists: test-agnostic split name -> file in ``data_dir`` (or a path) listing that split's test images,
            one 0-based position in the test file per line, e.g. ``{{"forward50": "forward50.txt", ...}}``; replaces
            the formula splits (by default drawn from the smallest test class when the test file is unbalanced).

    Batches are ``(images float32 (B, 3, 32, 32), labels int64 (B,), index int64 (B,))``, images and
    labels on ``device``, index on the CPU. Augmentation draws from the device's default generator.
"""


@DATA_LOADERS.register()
class CIFAR10LT(CIFARLT):
    __doc__ = ("Long-tailed CIFAR-10 (10 classes; IR 100: 5,000 -> 50 per class, 12,406 images), augmented on "
               "the device.\n"
               + _ARGS_DOC.format(folder=CIFAR10_LAYOUT.folder, url=CIFAR10_LAYOUT.url, n_per_class=5000))

    layout = CIFAR10_LAYOUT
    # MiSLAS/LNR's ranges (reference/lnr.md 1.5): at IR 100 > 1500 / < 200 training images; counts > 100 / < 20
    # leave "few" empty on CIFAR-10-LT (50 to 5,000 images a class)
    shot_groups = {"ranges": [[0, 3], [3, 7], [7, 10]]}


@DATA_LOADERS.register()
class CIFAR100LT(CIFARLT):
    __doc__ = ("Long-tailed CIFAR-100 (100 classes; IR 100: 500 -> 5 per class, 10,847 images), augmented on "
               "the device.\n"
               + _ARGS_DOC.format(folder=CIFAR100_LAYOUT.folder, url=CIFAR100_LAYOUT.url, n_per_class=500))

    layout = CIFAR100_LAYOUT
    # the > 100 / < 20 groups of IR 100 (35/35/30 classes, SADE/PRL), by index so IR 10 has a "few" group too
    shot_groups = {"ranges": [[0, 35], [35, 70], [70, 100]]}


__all__ = ["CIFAR10LT", "CIFAR100LT", "CIFARLT", "TensorBatchLoader", "EpochPermutationSampler", "OPS",
           "read_cifar_file"]
