"""ImageNet-LT, Places-LT and iNaturalist 2018: images on disk named by ``relative/path label`` lists.

The lists are OLTR's (Liu et al. 2019: ImageNet-LT, Places-LT) and the iNaturalist 2018 challenge's, as
SADE, RIDE, LADE and MiSLAS ship them in their ``data_txt/`` folders; the test-agnostic split lists
(``*_forward50.txt`` ... ``*_backward50.txt``, ``*_uniform.txt``) are LADE's, redistributed by SADE. Every
line is checked when the loader is built: a malformed line, a label out of range or (with ``check_files``)
a missing image is an error naming the list file and line, never skipped.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from base.base_data_loader import BaseDataLoader
from data_loader.test_agnostic import list_splits
from utils.errors import DataError
from utils.parsing import MAX_DIGITS, ascii_int
from utils.registry import DATA_LOADERS, SAMPLERS

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LIST_SOURCES = ("the lists come with SADE (github.com/Vanint/SADE-AgnosticLT, data_txt/) and LADE; the "
                "ImageNet-LT and Places-LT train/val/test lists are those of the OLTR release (Liu et al. 2019), "
                "the iNaturalist 2018 ones those of the challenge")


class ListEntry(NamedTuple):
    """One line of an image list: the image path relative to ``root``, its label and the 1-based line number."""

    path: str
    label: int
    line: int


def read_image_list(path: Path, num_classes: int) -> list[ListEntry]:
    """Parse ``path`` strictly: one ``relative/path label`` per non-empty line, ``0 <= label < num_classes``.

    Raises:
        DataError: the file is missing or empty, or a line is malformed (message: file, line, the fix).
    """
    if not path.is_file():
        raise DataError(f"image list {path} does not exist; {LIST_SOURCES}. Put them in data_loader.args.data_dir "
                        "or name each file with train_list / val_list / test_list")
    entries = []
    with open(path, "rb") as file:
        for line_no, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}, line {line_no}: not UTF-8 text ({err.reason} at byte {err.start}); save "
                                "the list as UTF-8") from None
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{path}, line {line_no}: expected 'relative/path label' (two fields separated by "
                                f"white space), got {line.strip()!r}")
            # plain ASCII digits only (utils.parsing, shared with the NMR manifests): int() would also read
            # "1_0" as 10, "+1" or a non-ASCII digit as 1
            label = ascii_int(parts[1])
            if label is None:
                raise DataError(f"{path}, line {line_no}: label {parts[1]!r} is not an integer (a class index "
                                f"written with 1-{MAX_DIGITS} of the ASCII digits 0-9 only)")
            if not 0 <= label < num_classes:
                raise DataError(f"{path}, line {line_no}: label {label} is outside 0..{num_classes - 1}; "
                                "is this the list of another dataset, or should num_classes be larger?")
            entries.append(ListEntry(parts[0], label, line_no))
    if not entries:
        raise DataError(f"image list {path} is empty")
    return entries


class ImageListDataset(Dataset):
    """Images named by a list; items are ``(image, label, index)``.

    ``image`` is the transform's output (float32 ``(3, H, W)`` for the loaders here), ``label`` the class
    index after ``class_map`` and ``index`` the position in the list. ``targets`` holds every (mapped)
    label, ``paths`` every relative path, in list order. An image that cannot be read raises a
    DataError naming it together with its list file and line.
    """

    def __init__(self, root: Path, list_file: Path, entries: list[ListEntry], class_map: np.ndarray,
                 transform: Callable):
        self.root, self.list_file, self.transform = root, list_file, transform
        self.paths = [entry.path for entry in entries]
        self.lines = [entry.line for entry in entries]
        self.targets = class_map[np.asarray([entry.label for entry in entries], dtype=np.int64)].tolist()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path = self.root / self.paths[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")  # grey, CMYK and palette images all become 3 channels
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            # OSError covers missing, truncated and unidentifiable files; PIL's parsers raise SyntaxError
            # for some corrupt headers. A worker re-raises this in the main process as a DataError.
            raise DataError(f"cannot read image {path} ({self.list_file}, line {self.lines[index]}): "
                            f"{type(err).__name__}: {err}. Replace the file or remove the line") from err
        return self.transform(image), self.targets[index], index


class ImageListLT(BaseDataLoader):
    """Shared implementation of the file-based long-tailed sets; the registered subclasses set the defaults.

    Args:
        root: directory the list paths are relative to.
        data_dir: directory of the list files (default: ``root``).
        train_list, val_list, test_list: list file names (or paths) in ``data_dir``; default: the
            dataset's own names (see the subclass).
        split_lists: test-agnostic split name -> list file in ``data_dir``, e.g.
            ``{"forward50": "ImageNet_LT_forward50.txt", ...}``; used by ``test_agnostic_splits()``.
        batch_size: images per batch.
        training: True: the training list (shuffled or sampled); False: the test list, in order.
        validation: which list ``split_validation()`` returns, and so which selects the best checkpoint:
            ``"val"``, ``"test"`` or ``"none"``; default: the dataset's published protocol.
        num_workers, pin_memory: DataLoader workers; pinned memory (only when CUDA is present).
        image_size: side of the training crop and of the test centre crop.
        resize: shorter side of a test image before the centre crop (>= image_size).
        augment: ``"standard"`` (RandomResizedCrop + horizontal flip) or ``"color_jitter"`` (plus
            ColorJitter(0.4, 0.4, 0.4, 0), as SADE / RIDE train on ImageNet-LT).
        sort_classes_by_count: renumber classes by descending training count (MiSLAS), the same for every
            split; ``class_map[original] = new``. Ties keep the original order (a stable sort).
        sampler: ``{"type", "args"}`` of a registered sampler for the training set (e.g. class-aware),
            built with the (mapped) training labels; it replaces shuffling.
        check_files: check at construction that every image of the lists in use exists.
        shuffle: shuffle the training set each epoch (without a sampler).
        num_classes: number of classes, for a subset of the dataset (default: the full dataset's).

    Attributes:
        cls_num_list: training images per class, in the (possibly remapped) class order; also when
            ``training`` is False (read from the train list, not the images).
        class_map: int64 ``(num_classes,)``, original label -> label used here (identity unless sorted).
        lists: split name -> list file path (None where the dataset has no such list).
    """

    num_classes_default: ClassVar[int]
    # the many/medium/few definition of the dataset family (shot_accuracy args); test_all.py's default
    shot_groups: ClassVar[dict]
    list_names: ClassVar[dict[str, str | None]]
    validation_default: ClassVar[Literal["val", "test", "none"]]

    def __init__(self, root: str, data_dir: str | None = None, train_list: str | None = None,
                 val_list: str | None = None, test_list: str | None = None, split_lists: dict | None = None,
                 batch_size: int = 128, training: bool = True,
                 validation: Literal["val", "test", "none"] | None = None, num_workers: int = 4,
                 pin_memory: bool = True, image_size: int = 224, resize: int = 256,
                 augment: Literal["standard", "color_jitter"] = "standard", sort_classes_by_count: bool = False,
                 sampler: dict | None = None, check_files: bool = True, shuffle: bool = True,
                 num_classes: int | None = None):
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 1 <= image_size <= resize:
            raise ValueError(f"need 1 <= image_size <= resize, got image_size {image_size}, resize {resize}")
        if split_lists is not None and not all(isinstance(v, str) for v in split_lists.values()):
            raise ValueError('split_lists maps a split name to a list file name, e.g. '
                             '{"forward50": "ImageNet_LT_forward50.txt"}')
        self.root = Path(root)
        self.data_dir = Path(data_dir) if data_dir is not None else self.root
        self.num_classes = num_classes or self.num_classes_default
        self.validation = validation or self.validation_default
        self.training = training
        given = {"train": train_list, "val": val_list, "test": test_list}
        self.lists: dict[str, Path | None] = {}
        for split, name in given.items():
            name = name if name is not None else self.list_names[split]
            self.lists[split] = None if name is None else self.data_dir / name
        if self.validation == "val" and self.lists["val"] is None:
            raise ValueError(f'{type(self).__name__} has no validation list: set validation to "test" (this '
                             'dataset\'s published protocol) or "none", or name one with val_list')
        self.split_lists = dict(split_lists or {})
        self.check_files = check_files
        self._entries: dict[str, list[ListEntry]] = {}
        self._datasets: dict[str, ImageListDataset] = {}

        train_entries = self._read("train")
        counts = np.bincount([entry.label for entry in train_entries], minlength=self.num_classes)
        if sort_classes_by_count:
            # MiSLAS: class 0 is the most frequent, so many/medium/few are class-index ranges
            order = np.argsort(-counts, kind="stable")
            self.class_map = np.empty(self.num_classes, dtype=np.int64)
            self.class_map[order] = np.arange(self.num_classes)
        else:
            self.class_map = np.arange(self.num_classes, dtype=np.int64)
        self.cls_num_list = [0] * self.num_classes
        for original, n in enumerate(counts.tolist()):
            self.cls_num_list[int(self.class_map[original])] = n

        # imported here: torchvision's package import brings torch._dynamo (seconds), which only image lists need
        from torchvision.transforms import v2

        normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        train_ops = [v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip()]
        if augment == "color_jitter":
            train_ops.append(v2.ColorJitter(0.4, 0.4, 0.4, 0))
        self.train_transform = v2.Compose(train_ops + normalize)
        self.test_transform = v2.Compose([v2.Resize(resize), v2.CenterCrop(image_size)] + normalize)
        # SADE's test-time views on ImageNet-LT: RandomResizedCrop(scale 0.2-1) + MoCo-v2 style jitter
        self.view_transform = v2.Compose([
            v2.RandomResizedCrop(image_size, scale=(0.2, 1.0)), v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(0.2)] + normalize)

        built_sampler = None
        if training:
            dataset = self._dataset("train")
            if self.validation != "none":
                self._dataset(self.validation)  # read and check it now: a broken list fails before training
            if sampler is not None:
                built_sampler = SAMPLERS.build(sampler, ("data_loader", "args", "sampler"), targets=dataset.targets)
        else:
            dataset, shuffle = self._dataset("test"), False
        super().__init__(dataset, batch_size, shuffle=shuffle, num_workers=num_workers, sampler=built_sampler,
                         pin_memory=pin_memory and torch.cuda.is_available())

    # --- lists ------------------------------------------------------------------------------------
    def _read(self, split: str) -> list[ListEntry]:
        """The parsed entries of ``split``'s list (read once), with every image checked if ``check_files``."""
        if split not in self._entries:
            list_file = self.lists[split]
            entries = read_image_list(list_file, self.num_classes)
            if self.check_files:
                self._check_images(list_file, entries)
            self._entries[split] = entries
        return self._entries[split]

    def _check_images(self, list_file: Path, entries: list[ListEntry]) -> None:
        if not self.root.is_dir():
            raise DataError(f"image root {self.root} (data_loader.args.root) is not a directory; it must hold the "
                            f"images that {list_file} names")
        root = str(self.root)
        for entry in entries:  # os.path is several times faster than pathlib for 400k files
            if not os.path.isfile(os.path.join(root, entry.path)):
                raise DataError(f"{list_file}, line {entry.line}: image {self.root / entry.path} does not exist "
                                f"(data_loader.args.root is {self.root}); fix root or the list, or set "
                                "check_files false to find unreadable images only when they are loaded")

    def _dataset(self, split: str) -> ImageListDataset:
        """``split``'s dataset with the training or the test transform (built once)."""
        if split not in self._datasets:
            transform = self.train_transform if split == "train" else self.test_transform
            self._datasets[split] = ImageListDataset(self.root, self.lists[split], self._read(split),
                                                     self.class_map, transform)
        return self._datasets[split]

    # --- evaluation interface ---------------------------------------------------------------------
    def view_loader(self, indices):
        """Strongly augmented views of test images ``indices`` (in that order), for test-time training; under DDP
        every rank reads all of them (the trainer splits the forward passes over the ranks)."""
        views = ImageListDataset(self.root, self.lists["test"], self._read("test"), self.class_map,
                                 self.view_transform)
        return self.make_loader(torch.utils.data.Subset(views, [int(i) for i in np.asarray(indices)]),
                                shard=False)

    def split_validation(self):
        """The validation loader over the ``validation`` list (test transform, in order), or None."""
        if self.validation == "none":
            return None
        return self.make_loader(self._dataset(self.validation))

    @property
    def validation_source(self) -> str:
        """Which data ``split_validation()`` holds, for the run's report (reads no file)."""
        def size(split: str) -> str:
            return f" ({len(self._entries[split])} images)" if split in self._entries else ""

        if self.validation == "val":
            return f"the validation list {self.lists['val']}{size('val')}"
        if self.validation == "test":
            source = f"the test list {self.lists['test']}{size('test')}"
            if self.lists["val"] is None:
                return source + ": selecting on test is this dataset's published protocol (SADE, MiSLAS)"
            return source + ': selecting on test flatters the result; validation "val" uses the held-out list'
        return "none"

    def test_targets(self) -> torch.Tensor:
        """Labels of the test list in index order (mapped by ``class_map``), int64 ``(N_test,)``."""
        return torch.as_tensor(self._dataset("test").targets, dtype=torch.long)

    def test_agnostic_splits(self) -> dict[str, np.ndarray]:
        """Index sets into the test list, one per ``split_lists`` entry (forward50 ... uniform ... backward50).

        Every path of a split list must be in the test list; it maps to its position there, so the test
        set's logits, computed once, score every split.
        """
        if not self.split_lists:
            raise DataError(f"{type(self).__name__}: no split_lists configured; name the test-agnostic lists in "
                            'data_loader.args.split_lists, e.g. {"forward50": "ImageNet_LT_forward50.txt", ...} '
                            f"(files in data_dir; {LIST_SOURCES})")
        test = self._dataset("test")
        seen: dict[str, int] = {}
        for path, line in zip(test.paths, test.lines):
            if path in seen:  # a split entry would be ambiguous
                raise DataError(f"{test.list_file}, line {line}: {path!r} is listed again (first on line "
                                f"{seen[path]}); a test list must name each image once")
            seen[path] = line
        return list_splits(test.paths, {name: self.data_dir / file for name, file in self.split_lists.items()})


def _doc(summary: str, lists: str, validation: str) -> str:
    return (f"{summary}\n\n    Default lists: {lists}.\n    Default validation: {validation}.\n\n"
            + "\n".join(ImageListLT.__doc__.splitlines()[2:]))


@DATA_LOADERS.register()
class ImageNetLT(ImageListLT):
    __doc__ = _doc("ImageNet-LT (Liu et al. 2019): 1,000 classes, 115.8k training images (1,280 down to 5 per "
                   "class), 20 validation and 50 test images per class.",
                   "ImageNet_LT_train.txt, ImageNet_LT_val.txt, ImageNet_LT_test.txt",
                   '"val" (the held-out validation list)')
    num_classes_default = 1000
    shot_groups = {"many_threshold": 100, "few_threshold": 20}  # OLTR's definition (SADE, PRL report it)
    list_names = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}
    validation_default = "val"


@DATA_LOADERS.register()
class PlacesLT(ImageListLT):
    __doc__ = _doc("Places-LT (Liu et al. 2019): 365 classes, 62.5k training images (4,980 down to 5 per "
                   "class), 20 validation and 100 test images per class.",
                   "Places_LT_train.txt, Places_LT_val.txt, Places_LT_test.txt",
                   '"val" (the held-out validation list)')
    num_classes_default = 365
    shot_groups = {"many_threshold": 100, "few_threshold": 20}  # OLTR's: 131 / 163 / 71 classes
    list_names = {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"}
    validation_default = "val"


@DATA_LOADERS.register()
class INaturalist2018(ImageListLT):
    __doc__ = _doc("iNaturalist 2018: 8,142 species, 437.5k training images; the official validation list (3 "
                   "per class) is the test set and selects the model, as in SADE and MiSLAS.",
                   "iNaturalist18_train.txt, no validation list, iNaturalist18_val.txt as the test list",
                   '"test" (the published protocol; give val_list and validation "val" for a held-out split)')
    num_classes_default = 8142
    shot_groups = {"many_threshold": 100, "few_threshold": 20}  # Kang et al. 2020, SADE
    list_names = {"train": "iNaturalist18_train.txt", "val": None, "test": "iNaturalist18_val.txt"}
    validation_default = "test"
