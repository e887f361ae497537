"""DigitsLT: scikit-learn's bundled handwritten digits made long-tailed. No download, runs anywhere.

1,797 real 8x8 grey images of 10 digits (about 180 per class). A fixed, seed-0 split puts
``test_per_class`` images of every class in a balanced test set and ``val_per_class`` in a balanced
held-out validation set; the rest form the pool from which the long-tailed training set keeps
``n_i = int(n_max * imb_factor ** (i / 9))`` images of class ``i``.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from base.base_data_loader import BaseDataLoader
from data_loader.long_tail import long_tailed_counts, subsample_per_class
from data_loader.test_agnostic import formula_splits
from utils.registry import DATA_LOADERS, SAMPLERS

_MEAN, _STD = 4.88 / 16, 6.02 / 16  # pixel mean/std of the whole digits set, after scaling to [0, 1]
MAX_SHIFT = 4  # half the 8-pixel side: every shifted image keeps at least a quarter of the digit


class ImageTensorDataset(Dataset):
    """In-memory images ``(N, C, H, W)`` float and labels; items are ``(image, label, index)``.

    With ``shift > 0`` each training image is translated by up to ``shift`` pixels (zero fill), the
    small-image analogue of CIFAR's pad-and-crop; ``contrast`` c scales each image's contrast by a random
    factor in [1 - c, 1 + c] (used for test-time training views).
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, shift: int = 0, contrast: float = 0.0):
        self.images, self.targets, self.shift, self.contrast = images, targets, shift, contrast

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.shift:
            dy, dx = torch.randint(-self.shift, self.shift + 1, (2,)).tolist()
            padded = torch.nn.functional.pad(image, (self.shift,) * 4)
            h, w = image.shape[-2:]
            image = padded[:, self.shift + dy:self.shift + dy + h, self.shift + dx:self.shift + dx + w]
        if self.contrast:  # scale the pixel values around the image mean by a factor in [1 - c, 1 + c]
            factor = 1 + self.contrast * (2 * torch.rand(()) - 1)
            image = (image - image.mean()) * factor + image.mean()
        return image, int(self.targets[index]), index


def _digits_split(test_per_class: int, val_per_class: int, seed: int = 0):
    from sklearn.datasets import load_digits  # bundled with scikit-learn: reads a file, no download

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = (images - _MEAN) / _STD
    targets = np.asarray(digits.target)
    rng = np.random.RandomState(seed)
    test, val, pool = [], [], []
    for cls in range(10):
        idx = np.flatnonzero(targets == cls)
        rng.shuffle(idx)
        test.append(idx[:test_per_class])
        val.append(idx[test_per_class:test_per_class + val_per_class])
        pool.append(idx[test_per_class + val_per_class:])
    return images, torch.as_tensor(targets), np.concatenate(test), np.concatenate(val), np.concatenate(pool)


@DATA_LOADERS.register()
class DigitsLT(BaseDataLoader):
    """Long-tailed scikit-learn digits (10 classes, 8x8 grey, bundled; no download).

    Args:
        batch_size: images per batch.
        imb_factor: n_min / n_max of the training profile, in (0, 1].
        training: True for the long-tailed training set, False for the balanced test set.
        validation: which data ``split_validation()`` returns and so selects the best checkpoint:
            ``"heldout"`` (balanced, ``val_per_class`` images per class, disjoint from train and test),
            ``"test"`` (the test set itself: the CIFAR-LT papers' protocol) or ``"none"``.
        test_per_class, val_per_class: sizes of the balanced test and validation splits.
        n_max: images of the largest class; default: the smallest per-class pool (about 120).
        shift: random translation in pixels for training images (0 disables augmentation).
        sampler: ``{"type": NAME, "args": {...}}`` of a registered sampler (e.g. class-aware) for the
            training set; replaces shuffling.
    """

    # the many/medium/few definition of every digits config, scaled to this small set (114 -> 5 at imb 0.05)
    shot_groups: ClassVar[dict] = {"many_threshold": 60, "few_threshold": 20}

    def __init__(self, batch_size: int = 64, imb_factor: float = 0.1, training: bool = True,
                 validation: Literal["heldout", "test", "none"] = "heldout", test_per_class: int = 50,
                 val_per_class: int = 10, n_max: int | None = None, shift: int = 1, shuffle: bool = True,
                 num_workers: int = 0, sampler: dict | None = None):
        if test_per_class < 1 or val_per_class < 0:
            raise ValueError("test_per_class must be >= 1 and val_per_class >= 0")
        if test_per_class + val_per_class > 150:
            raise ValueError(f"test_per_class + val_per_class = {test_per_class + val_per_class} leaves too "
                             "few training images (each digit class has about 175); keep the sum <= 150")
        if validation == "heldout" and val_per_class == 0:
            raise ValueError('validation="heldout" needs val_per_class > 0')
        if not 0 <= shift <= MAX_SHIFT:
            # a shift of 8 moves an 8x8 image out of its frame: the model would train on blank images
            raise ValueError(f"shift must be in [0, {MAX_SHIFT}] (pixels of an 8x8 image), got {shift}")
        images, targets, test_idx, val_idx, pool_idx = _digits_split(test_per_class, val_per_class)
        pool_sizes = np.bincount(targets[pool_idx].numpy(), minlength=10)
        n_max = int(pool_sizes.min()) if n_max is None else n_max
        if not 1 <= n_max <= pool_sizes.min():
            raise ValueError(f"n_max must be in [1, {pool_sizes.min()}] (the smallest class pool), got {n_max}")
        counts = long_tailed_counts(n_max, 10, imb_factor)
        train_idx = pool_idx[subsample_per_class(targets[pool_idx].numpy(), counts, seed=0)]
        self.cls_num_list = counts
        self.num_classes = 10
        self.channels = 1  # grey 8x8 images: models need in_channels 1
        self.validation = validation
        self._splits = {"test": test_idx, "heldout": val_idx}
        self._images, self._targets = images, targets
        built_sampler = None
        if training:
            dataset = ImageTensorDataset(images[train_idx], targets[train_idx], shift)
            if sampler is not None:
                built_sampler = SAMPLERS.build(sampler, ("data_loader", "args", "sampler"),
                                               targets=targets[train_idx].tolist())
        else:
            dataset, shuffle = ImageTensorDataset(images[test_idx], targets[test_idx]), False
        super().__init__(dataset, batch_size, shuffle=shuffle, num_workers=num_workers, sampler=built_sampler)

    @property
    def validation_source(self) -> str:
        n_val = len(self._splits["heldout"])
        return {"heldout": f"held-out balanced split ({n_val} images, disjoint from train and test)",
                "test": f"test split ({len(self._splits['test'])} images): selecting on test follows the CIFAR-LT "
                        "papers' protocol; set validation=\"heldout\" for a clean estimate",
                "none": "none"}[self.validation]

    def test_targets(self) -> torch.Tensor:
        """Labels of the balanced test set in index order, shape ``(10 * test_per_class,)``."""
        return self._targets[self._splits["test"]].clone()

    def test_agnostic_splits(self) -> dict[str, np.ndarray]:
        """forward50..uniform..backward50 index sets of the test set, by the CIFAR formula."""
        return formula_splits(self.test_targets().numpy(), self.num_classes)

    def view_loader(self, indices) -> torch.utils.data.DataLoader:
        """Augmented views (shift up to 2 pixels, contrast +-30%) of test images ``indices``, in that order;
        every iteration draws new augmentations. For test-time training (under DDP every rank reads every view, in
        the one-process order with the same draws, and the trainer splits the forward passes over the ranks)."""
        idx = self._splits["test"][np.asarray(indices)]
        return self.make_loader(ImageTensorDataset(self._images[idx], self._targets[idx], 2, 0.3), shard=False)

    def split_validation(self):
        if self.validation == "none":
            return None
        idx = self._splits[self.validation]
        return self.make_loader(ImageTensorDataset(self._images[idx], self._targets[idx]))
