"""Figures: reliability diagram and accuracy against class frequency (classification), and a denoised
spectrum against its input and reference (NMR).

Both are drawn from accumulated metric state (bin counts, per-class counts), so they cost nothing extra
after an evaluation. They return matplotlib figures; callers save them as PNG and/or send them to
TensorBoard.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@functools.cache  # the backend is chosen once, as the module-level import did
def _pyplot():
    """matplotlib.pyplot with the Agg backend, imported on the first figure: matplotlib takes about half a second
    to import, and the scripts that import this module draw only at the end of a run (or never)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def reliability_diagram(count: torch.Tensor, conf_sum: torch.Tensor, correct_sum: torch.Tensor,
                        title: str = "Reliability diagram"):
    """Accuracy against confidence per equal-width bin, with the gap to the diagonal shaded.

    Args:
        count, conf_sum, correct_sum: per-bin sample count, summed confidence and summed correctness
            (the state of ``model.metric.CalibrationError``), each of shape ``(n_bins,)``.
    """
    count, conf_sum, correct_sum = (np.asarray(t.cpu(), dtype=float) for t in (count, conf_sum, correct_sum))
    n_bins = len(count)
    edges = np.linspace(0, 1, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    filled = count > 0
    accuracy = np.divide(correct_sum, count, out=np.zeros_like(count), where=filled)
    confidence = np.divide(conf_sum, count, out=centers.copy(), where=filled)
    gaps = np.abs(accuracy - confidence)[filled]
    ece = 100 * float((count[filled] / count.sum() * gaps).sum()) if filled.any() else 0.0

    fig, (top, bottom) = _pyplot().subplots(2, 1, figsize=(4.5, 5.5), height_ratios=[3, 1], sharex=True)
    width = 1 / n_bins
    top.bar(centers[filled], accuracy[filled], width=width, edgecolor="black", color="#4c72b0", label="accuracy")
    top.bar(centers[filled], (confidence - accuracy)[filled], bottom=accuracy[filled], width=width,
            color="#dd8452", alpha=0.5, edgecolor="#dd8452", label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1)
    top.set(ylabel="accuracy", ylim=(0, 1), title=f"{title} (ECE {ece:.2f}%)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, count / max(count.sum(), 1), width=width, color="gray", edgecolor="black")
    bottom.set(xlabel="confidence", ylabel="fraction", xlim=(0, 1))
    fig.tight_layout()
    return fig


def accuracy_vs_frequency(correct: torch.Tensor, total: torch.Tensor, cls_num_list: Sequence[int],
                          groups: dict[str, list[int]] | None = None, title: str = "Per-class accuracy"):
    """Test accuracy of each class (bars) against its number of training images (line, log scale).

    Args:
        correct, total: per-class correct predictions and test images, shape ``(C,)``.
        cls_num_list: training images per class.
        groups: optional many/medium/few class lists, drawn as shaded bands.
    """
    correct, total = np.asarray(correct.cpu(), dtype=float), np.asarray(total.cpu(), dtype=float)
    accuracy = np.divide(correct, total, out=np.full_like(total, np.nan), where=total > 0) * 100
    order = np.argsort(-np.asarray(cls_num_list), kind="stable")
    fig, ax = _pyplot().subplots(figsize=(7, 3.5))
    positions = np.arange(len(order))
    ax.bar(positions, accuracy[order], width=0.8, color="#4c72b0", edgecolor="none", zorder=3)
    ax.set(xlabel="classes, most to least frequent in training", ylabel="test accuracy (%)", ylim=(0, 100),
           title=title)
    if groups:
        colours = {"many": "#55a868", "medium": "#ccb974", "few": "#c44e52"}
        rank = {cls: i for i, cls in enumerate(order)}
        for name, classes in groups.items():
            if classes:
                where = [rank[c] for c in classes]
                ax.axvspan(min(where) - 0.5, max(where) + 0.5, color=colours.get(name, "gray"), alpha=0.25,
                           label=name, zorder=0)
        ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    counts_axis = ax.twinx()
    counts_axis.plot(positions, np.asarray(cls_num_list)[order], color="black", linewidth=1.2)
    counts_axis.set_yscale("log")
    counts_axis.set_ylabel("training images")
    fig.tight_layout()
    return fig


def metric_figures(metrics, cls_num_list: Sequence[int], title: str = "") -> dict:
    """Tag -> figure for the reliability diagram (from a CalibrationError) and the per-class accuracy plot
    (from a ShotAccuracy) among ``metrics``, drawn from their accumulated states; metrics with no data
    give no figure."""
    from model.metric import CalibrationError, ShotAccuracy

    figures = {}
    for metric in metrics:
        if isinstance(metric, CalibrationError) and float(metric.state["count"].sum()) > 0:
            figures["reliability"] = reliability_diagram(metric.state["count"], metric.state["conf"],
                                                         metric.state["correct"], title=f"{title} reliability")
        if isinstance(metric, ShotAccuracy) and float(metric.state["total"].sum()) > 0:
            figures["class_accuracy"] = accuracy_vs_frequency(metric.state["correct"], metric.state["total"],
                                                              cls_num_list, metric.groups,
                                                              title=f"{title} per-class accuracy")
    return figures


def spectrum_figure(noisy, denoised, reference=None, ppm=None, title: str = ""):
    """Two panels for one 1D spectrum: input, denoised and reference overlaid, then the residual
    (denoised − reference, or input − denoised without a reference). Arrays ``(L,)``; with ``ppm`` the axis
    runs from high to low ppm, as NMR spectra are drawn.
    """
    noisy, denoised = np.asarray(noisy, dtype=float), np.asarray(denoised, dtype=float)
    x = np.asarray(ppm, dtype=float) if ppm is not None else np.arange(len(noisy))
    fig, (top, bottom) = _pyplot().subplots(2, 1, figsize=(10, 5.5), sharex=True, height_ratios=[3, 1])
    top.plot(x, noisy, color="0.7", lw=0.6, label="input (level 0)")
    if reference is not None:
        top.plot(x, np.asarray(reference, dtype=float), color="k", lw=0.8, label="reference")
    top.plot(x, denoised, color="tab:red", lw=0.8, label="denoised")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(title, fontsize=10)
    residual = denoised - np.asarray(reference, dtype=float) if reference is not None else noisy - denoised
    bottom.plot(x, residual, color="tab:blue", lw=0.6)
    bottom.set_ylabel("denoised − ref." if reference is not None else "removed", fontsize=8)
    bottom.set_xlabel("ppm" if ppm is not None else "point")
    if ppm is not None:
        top.invert_xaxis()  # shared x: inverting one inverts both (NMR plots run from high to low ppm)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path
