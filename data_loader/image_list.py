"""ImageNet-LT, Places-LT and iNaturalist 2018: images on disk named by ``relative/path label`` lists.

The lists are those of OLTR (ImageNet-LT, Places-LT) and of the iNaturalist 2018 challenge, as SADE,
RIDE and MiSLAS ship them in ``data_txt/``; test-agnostic split lists (``*_forward50.txt``, ...) are
LADE's / SADE's. Every line is checked when the loader is built: a malformed line, a label out of range
or (with ``check_files``) a missing image is an error naming the list file and line, never skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from base.base_data_loader import BaseDataLoader
from data_loader.test_agnostic import list_splits
from utils.errors import DataError
from utils.registry import DATA_LOADERS, SAMPLERS

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def read_image_list(path: Path, num_classes: int) -> list[tuple[str, int, int]]:
    """``(relative path, label, line number)`` for every non-empty line of ``path``."""
    if not path.is_file():
        raise DataError(f"image list {path} does not exist. The lists come with the OLTR / SADE / MiSLAS "
                        "releases (data_txt/); put them in data_loader.args.data_dir or name them explicitly")
    entries = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{path}, line {line_no}: expected 'relative/path label', got {line.strip()!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(f"{path}, line {line_no}: label {parts[1]!r} is not an integer") from None
        if not 0 <= label < num_classes:
            raise DataError(f"{path}, line {line_no}: label {label} is outside 0..{num_classes - 1}")
        entries.append((parts[0], label, line_no))
    if not entries:
        raise DataError(f"image list {path} is empty")
    return entries


class ImageListDataset(Dataset):
    """Images named by a list; items are ``(image tensor, label, index)``.

    ``targets`` are the (possibly remapped) labels; an image that cannot be read raises a DataError naming
    it together with its list file and line.
    """

    def __init__(self, root: Path, list_file: Path, entries: list[tuple[str, int, int]], class_map: np.ndarray,
                 transform):
        self.root, self.list_file, self.transform = root, list_file, transform
        self.paths = [path for path, _, _ in entries]
        self.lines = [line for _, _, line in entries]
        self.targets = [int(class_map[label]) for _, label, _ in entries]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.root / self.paths[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DataError(f"cannot read image {path} ({self.list_file}, line {self.lines[index]}): {err}") from err
        return self.transform(image), self.targets[index], index


class ImageListLT(BaseDataLoader):
    """Shared implementation of the file-based long-tailed sets (see the registered classes)."""

    num_classes_default: ClassVar[int]
    list_names: ClassVar[dict[str, str | None]]
    validation_default: ClassVar[str]

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
        if image_size < 1 or resize < image_size:
            raise ValueError(f"need 1 <= image_size <= resize, got image_size {image_size}, resize {resize}")
        self.root = Path(root)
        self.data_dir = Path(data_dir) if data_dir is not None else self.root
        self.num_classes = num_classes or self.num_classes_default
        self.validation = validation or self.validation_default
        given = {"train": train_list, "val": val_list, "test": test_list}
        self.lists = {k: (self.data_dir / (v if v is not None else self.list_names[k]))
                      if (v is not None or self.list_names[k] is not None) else None for k, v in given.items()}
        if self.validation == "val" and self.lists["val"] is None:
            raise ValueError(f'{type(self).__name__} has no validation list; use validation "test" or give val_list')
        self.split_lists = dict(split_lists or {})
        self.check_files = check_files

        train_entries = read_image_list(self.lists["train"], self.num_classes)
        counts = np.bincount([label for _, label, _ in train_entries], minlength=self.num_classes)
        if sort_classes_by_count:  # MiSLAS: class 0 is the most frequent, so index ranges give many/medium/few
            order = np.argsort(-counts, kind="stable")
            self.class_map = np.empty(self.num_classes, dtype=np.int64)
            self.class_map[order] = np.arange(self.num_classes)
        else:
            self.class_map = np.arange(self.num_classes)
        self.cls_num_list = [0] * self.num_classes
        for original, n in enumerate(counts):
            self.cls_num_list[self.class_map[original]] = int(n)
        normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        train_ops = [v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip()]
        if augment == "color_jitter":
            train_ops.append(v2.ColorJitter(0.4, 0.4, 0.4, 0))
        self.train_transform = v2.Compose(train_ops + normalize)
        self.test_transform = v2.Compose([v2.Resize(resize), v2.CenterCrop(image_size)] + normalize)

        built_sampler = None
        if training:
            dataset = self._dataset("train", train_entries, self.train_transform)
            if sampler is not None:
                built_sampler = SAMPLERS.build(sampler, ("data_loader", "args", "sampler"), targets=dataset.targets)
        else:
            dataset, shuffle = self._dataset("test"), False
        super().__init__(dataset, batch_size, shuffle=shuffle, num_workers=num_workers, sampler=built_sampler,
                         pin_memory=pin_memory and torch.cuda.is_available())

    def _dataset(self, split: str, entries=None, transform=None) -> ImageListDataset:
        list_file = self.lists[split]
        entries = entries if entries is not None else read_image_list(list_file, self.num_classes)
        if self.check_files:
            for path, _, line in entries:
                if not (self.root / path).is_file():
                    raise DataError(f"{list_file}, line {line}: image {self.root / path} does not exist "
                                    f"(data_loader.args.root is {self.root})")
        return ImageListDataset(self.root, list_file, entries, self.class_map, transform or self.test_transform)

    def split_validation(self):
        if self.validation == "none":
            return None
        return self.make_loader(self._dataset(self.validation))

    @property
    def validation_source(self) -> str:
        if self.validation == "val":
            return f"the validation list {self.lists['val']}"
        if self.validation == "test":
            return (f"the test list {self.lists['test']}: selecting on test follows this dataset's published "
                    "protocol (SADE / MiSLAS)")
        return "none"

    def test_targets(self) -> torch.Tensor:
        """Labels of the test list in index order, int64."""
        return torch.as_tensor(self.dataset.targets, dtype=torch.long)

    def test_agnostic_splits(self) -> dict[str, np.ndarray]:
        """Index sets of the test list for each split list in ``split_lists`` (forward50 ... backward50)."""
        if not self.split_lists:
            raise DataError(f"{type(self).__name__}: no split_lists configured; name the test-agnostic lists, "
                            'e.g. "split_lists": {"forward50": "ImageNet_LT_forward50.txt", ...}')
        return list_splits(self.dataset.paths, {name: self.data_dir / file for name, file in self.split_lists.items()})


_ARGS = """
    Args:
        root: directory the list paths are relative to. data_dir: where the lists are (default: root).
        train_list, val_list, test_list: list file names in data_dir (defaults: {defaults}).
        split_lists: test-agnostic split name -> list file in data_dir (for test_all.py).
        validation: which list selects the best checkpoint: "val", "test" or "none" (default "{validation}").
        image_size, resize: training crop / test centre crop size and the test resize (224 / 256).
        augment: "standard" (RandomResizedCrop + flip) or "color_jitter" (plus ColorJitter(0.4, 0.4, 0.4),
            as SADE / RIDE train on ImageNet-LT).
        sort_classes_by_count: renumber classes by descending training count (MiSLAS), the same for every
            split; ``class_map[original] = new``.
        sampler: {{"type", "args"}} of a registered sampler for the training set (e.g. class-aware).
        check_files: check at construction that every listed image exists.
        num_classes: number of classes, for a subset of the dataset (default: the full dataset's).
    """


@DATA_LOADERS.register()
class ImageNetLT(ImageListLT):
    __doc__ = ("ImageNet-LT (Liu et al. 2019): 1,000 classes, 115.8k training images (1,280 down to 5 per class), "
               "20 validation and 50 test images per class.\n"
               + _ARGS.format(defaults="ImageNet_LT_train/val/test.txt", validation="val"))
    num_classes_default = 1000
    list_names = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}
    validation_default = "val"


@DATA_LOADERS.register()
class PlacesLT(ImageListLT):
    __doc__ = ("Places-LT (Liu et al. 2019): 365 classes, 62.5k training images (4,980 down to 5 per class), "
               "20 validation and 100 test images per class.\n"
               + _ARGS.format(defaults="Places_LT_train/val/test.txt", validation="val"))
    num_classes_default = 365
    list_names = {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"}
    validation_default = "val"


@DATA_LOADERS.register()
class INaturalist2018(ImageListLT):
    __doc__ = ("iNaturalist 2018: 8,142 species, 437.5k training images; the official validation list (3 per "
               "class) is the test set, and selects the model, as in SADE and MiSLAS.\n"
               + _ARGS.format(defaults="iNaturalist18_train.txt, no val, iNaturalist18_val.txt", validation="test"))
    num_classes_default = 8142
    list_names = {"train": "iNaturalist18_train.txt", "val": None, "test": "iNaturalist18_val.txt"}
    validation_default = "test"
