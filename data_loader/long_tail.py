"""The long-tailed imbalance profile shared by every dataset (Cui et al. 2019; LDAM; MiSLAS; SADE)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def long_tailed_counts(n_max: int, num_classes: int, imb_factor: float) -> list[int]:
    """Images kept per class: ``n_i = int(n_max * imb_factor ** (i / (C - 1)))``, class 0 the largest.

    ``imb_factor`` is n_min / n_max (0.01 is "imbalance ratio 100"); one so small that a class would keep no
    image is a ValueError.
    """
    if not 0 < imb_factor <= 1:
        raise ValueError(f"imb_factor must be in (0, 1] (n_min / n_max, e.g. 0.01 for IR 100), got {imb_factor}")
    if num_classes < 2 or n_max < 1:
        raise ValueError(f"need num_classes >= 2 and n_max >= 1, got {num_classes}, {n_max}")
    counts = [int(n_max * imb_factor ** (i / (num_classes - 1))) for i in range(num_classes)]
    empty = [c for c, n in enumerate(counts) if n < 1]
    if empty:
        raise ValueError(f"imb_factor={imb_factor} with n_max={n_max} images in the largest class leaves "
                         f"{len(empty)} classes ({empty[0]}..{empty[-1]}) with no training images; use "
                         f"imb_factor >= {1 / n_max:.3g}")
    return counts


def subsample_per_class(targets: Sequence[int], counts: Sequence[int], seed: int = 0) -> np.ndarray:
    """Indices keeping ``counts[c]`` samples of each class ``c``, chosen by a per-class shuffle.

    The generator is seeded once and the classes are shuffled in order, as the LDAM/MiSLAS/SADE code
    does with ``np.random.seed(0)``. Returned indices are grouped by class, in class order.
    """
    targets = np.asarray(targets)
    rng = np.random.RandomState(seed)
    keep = []
    for cls, count in enumerate(counts):
        idx = np.flatnonzero(targets == cls)
        if count > len(idx):
            raise ValueError(f"class {cls} has {len(idx)} samples, cannot keep {count}")
        rng.shuffle(idx)
        keep.append(idx[:count])
    return np.concatenate(keep)
