"""Classification metrics, accumulated batch by batch.

A metric keeps running sums as tensors (so they can be summed across DDP ranks), takes
``update(logits, target)`` with ``logits`` of shape ``(N, C)`` and integer ``target`` of shape ``(N,)``,
and ``compute()`` returns a dict of named values in percent. A value that is undefined (an empty
many/medium/few group) is ``None``, never NaN.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from utils import dist
from utils.registry import METRICS


class Metric:
    """Base class: subclasses define ``keys``, ``_zero_state()``, ``update()`` and ``compute()``."""

    keys: tuple[str, ...] = ()

    def __init__(self):
        self.state: dict[str, torch.Tensor] = {}
        self.reset()

    def _zero_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        self.state = self._zero_state()

    def _add(self, name: str, value: torch.Tensor) -> None:
        self.state[name] = self.state[name].to(value.device) + value

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        """Sum the state over DDP ranks (no-op in a single process)."""
        for name, value in self.state.items():
            self.state[name] = dist.all_reduce_sum(value.clone())

    def compute(self) -> dict[str, float | None]:
        raise NotImplementedError


@METRICS.register(name="accuracy")
class Accuracy(Metric):
    """Top-1 accuracy in percent."""

    keys = ("accuracy",)

    def _zero_state(self):
        return {"correct": torch.zeros((), dtype=torch.float64), "total": torch.zeros((), dtype=torch.float64)}

    def update(self, logits, target):
        self._add("correct", (logits.argmax(dim=1) == target).sum().double())
        self._add("total", torch.tensor(float(target.numel()), dtype=torch.float64, device=target.device))

    def compute(self):
        total = float(self.state["total"])
        return {"accuracy": 100.0 * float(self.state["correct"]) / total if total else None}


@METRICS.register(name="top5")
class TopK(Metric):
    """Top-k accuracy in percent (k = 5 by default; k is capped at the number of classes)."""

    def __init__(self, k: int = 5):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.keys = (f"top{k}",)
        super().__init__()

    def _zero_state(self):
        return {"correct": torch.zeros((), dtype=torch.float64), "total": torch.zeros((), dtype=torch.float64)}

    def update(self, logits, target):
        k = min(self.k, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        self._add("correct", (top == target[:, None]).any(dim=1).sum().double())
        self._add("total", torch.tensor(float(target.numel()), dtype=torch.float64, device=target.device))

    def compute(self):
        total = float(self.state["total"])
        return {self.keys[0]: 100.0 * float(self.state["correct"]) / total if total else None}


def shot_groups(cls_num_list: Sequence[int], many_threshold: int = 100, few_threshold: int = 20,
                ranges: Sequence[Sequence[int]] | None = None) -> dict[str, list[int]]:
    """Class indices of the many/medium/few groups.

    By training counts (many: count > ``many_threshold``, few: count < ``few_threshold``, medium: the
    rest), or by class-index ranges ``[[0, a], [a, b], [b, C]]`` (half-open) as MiSLAS configs give them.
    """
    if ranges is not None:
        return {name: list(range(lo, hi)) for name, (lo, hi) in zip(("many", "medium", "few"), ranges)}
    many = [c for c, n in enumerate(cls_num_list) if n > many_threshold]
    few = [c for c, n in enumerate(cls_num_list) if n < few_threshold]
    medium = [c for c, n in enumerate(cls_num_list) if few_threshold <= n <= many_threshold]
    return {"many": many, "medium": medium, "few": few}


def describe_shot_groups(cls_num_list: Sequence[int], shot_args: dict | None = None) -> str:
    """One line naming the many/medium/few definition and what it gives on ``cls_num_list``, for tables.

    e.g. ``many/medium/few by training images: many > 100 (35 classes), medium 20-100 (35), few < 20 (30)``
    or ``many/medium/few by class index: 0-2 / 3-6 / 7-9 (training images 5000-1796 / 1077-232 / 139-50)``.
    An empty group is named as such (its column shows '-').
    """
    shot_args = dict(shot_args or {})
    groups = shot_groups(cls_num_list, **shot_args)

    def span(values) -> str:
        return f"{values[0]}-{values[-1]}" if len(values) > 1 and values[0] != values[-1] else str(values[0])

    if shot_args.get("ranges") is not None:
        names = " / ".join(span(c) if c else "none" for c in groups.values())
        images = " / ".join(span(sorted({cls_num_list[i] for i in c}, reverse=True)) if c else "-"
                            for c in groups.values())
        text = f"many/medium/few by class index: {names} (training images {images})"
    else:
        many, few = shot_args.get("many_threshold", 100), shot_args.get("few_threshold", 20)
        sizes = {name: len(c) for name, c in groups.items()}
        text = (f"many/medium/few by training images: many > {many} ({sizes['many']} classes), medium {few}-{many} "
                f"({sizes['medium']}), few < {few} ({sizes['few']})")
    empty = [name for name, c in groups.items() if not c]
    return text + (f"; no {' / '.join(empty)} class on this training set ('-')" if empty else "")


@METRICS.register(name="shot_accuracy")
class ShotAccuracy(Metric):
    """Many/medium/few-shot accuracy in percent: per-class accuracy averaged within each group.

    Groups come from the training class counts (``cls_num_list``, supplied by the framework): many
    > ``many_threshold`` images, few < ``few_threshold``, medium in between; or from half-open class
    index ``ranges`` [[0, a], [a, b], [b, C]]. A group with no classes (or no test images) is None.
    """

    keys = ("many", "medium", "few")

    def __init__(self, cls_num_list: Sequence[int], many_threshold: int = 100, few_threshold: int = 20,
                 ranges: Sequence[Sequence[int]] | None = None):
        if few_threshold > many_threshold:
            raise ValueError(f"few_threshold ({few_threshold}) must not exceed many_threshold ({many_threshold})")
        self.num_classes = len(cls_num_list)
        if ranges is not None:
            flat = [v for r in ranges for v in r]
            if (len(ranges) != 3 or any(len(r) != 2 for r in ranges) or flat != sorted(flat)
                    or flat[0] < 0 or flat[-1] > self.num_classes):
                raise ValueError(f"ranges must be three increasing [start, end) pairs within "
                                 f"[0, {self.num_classes}], got {ranges}")
        self.groups = shot_groups(cls_num_list, many_threshold, few_threshold, ranges)
        super().__init__()

    def _zero_state(self):
        return {"correct": torch.zeros(self.num_classes, dtype=torch.float64),
                "total": torch.zeros(self.num_classes, dtype=torch.float64)}

    def update(self, logits, target):
        correct = (logits.argmax(dim=1) == target).double()
        self._add("correct", torch.zeros(self.num_classes, dtype=torch.float64, device=target.device)
                  .index_add_(0, target, correct))
        self._add("total", torch.bincount(target, minlength=self.num_classes).double())

    def compute(self):
        correct, total = self.state["correct"].cpu(), self.state["total"].cpu()
        out: dict[str, float | None] = {}
        for name, classes in self.groups.items():
            seen = [c for c in classes if total[c] > 0]
            out[name] = (100.0 * float(sum(correct[c] / total[c] for c in seen)) / len(seen)) if seen else None
        return out


MAX_BINS = 1000  # confidence bins; more leave most bins empty on any test set (and 1e12 would allocate terabytes)


@METRICS.register(name="ece")
class CalibrationError(Metric):
    """Expected and maximum calibration error (ECE, MCE) in percent, equal-width confidence bins.

    Confidence is the top-1 softmax probability; bins are (lo, hi] on [0, 1] as in MiSLAS
    (``np.digitize(..., right=True)``), 15 by default. ECE = sum_b |B_b|/N |acc(B_b) - conf(B_b)|,
    MCE = max_b |acc(B_b) - conf(B_b)| over non-empty bins.
    """

    keys = ("ece", "mce")

    def __init__(self, n_bins: int = 15):
        if not 1 <= n_bins <= MAX_BINS:
            raise ValueError(f"n_bins must be in [1, {MAX_BINS}], got {n_bins}")
        self.n_bins = n_bins
        super().__init__()

    def _zero_state(self):
        return {name: torch.zeros(self.n_bins, dtype=torch.float64) for name in ("count", "conf", "correct")}

    def update(self, logits, target):
        prob = torch.softmax(logits.float(), dim=1)
        conf, pred = prob.max(dim=1)
        # float64 edges: float32 linspace puts 0.4 at 0.40000004 and moves edge values to the wrong bin
        edges = torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64, device=conf.device)[1:-1]
        bins = torch.bucketize(conf.double(), edges, right=False)  # (lo, hi] bins
        zeros = torch.zeros(self.n_bins, dtype=torch.float64, device=conf.device)
        self._add("count", zeros.index_add(0, bins, torch.ones_like(conf, dtype=torch.float64)))
        self._add("conf", zeros.index_add(0, bins, conf.double()))
        self._add("correct", zeros.index_add(0, bins, (pred == target).double()))

    def compute(self):
        count, conf, correct = (self.state[k].cpu() for k in ("count", "conf", "correct"))
        n = float(count.sum())
        if n == 0:
            return {"ece": None, "mce": None}
        filled = count > 0
        gap = (correct[filled] / count[filled] - conf[filled] / count[filled]).abs()
        return {"ece": 100.0 * float((count[filled] / n * gap).sum()), "mce": 100.0 * float(gap.max())}


def split_scores(logits: torch.Tensor, targets: torch.Tensor, cls_num_list: Sequence[int],
                 shot_args: dict | None = None) -> dict[str, float | int | None]:
    """``{"n", "many", "medium", "few", "all"}`` of logits ``(N, C)`` against labels ``(N,)`` (test_all's row).

    ``shot_args`` are ShotAccuracy's thresholds or ranges (default many > 100, few < 20).
    """
    shots, accuracy = ShotAccuracy(cls_num_list, **(shot_args or {})), Accuracy()
    for metric in (shots, accuracy):
        metric.update(logits, targets)
    return {"n": int(len(targets)), **shots.compute(), "all": accuracy.compute()["accuracy"]}
