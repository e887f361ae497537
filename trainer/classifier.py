"""ClassifierTrainer: plain supervised training, the "Softmax" baseline of long-tailed papers."""
from __future__ import annotations

from typing import Any

import torch

from base.base_trainer import BaseTrainer
from utils import dist
from utils.plots import metric_figures
from utils.registry import TRAINERS


@TRAINERS.register()
class ClassifierTrainer(BaseTrainer):
    """Supervised classification: minimise the configured loss on ``(image, label, index)`` batches.

    Validation and ``test.py`` report the loss and every configured metric (accuracy, top5,
    many/medium/few, ECE/MCE). All arguments are BaseTrainer's (epochs, monitor, save_dir, ...).
    """

    required_sections = ("loss", "optimizer")

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The loss of one batch (already on the device); subclasses override this to change the objective."""
        with self.autocast():
            logits = self.model(images)
        return self.criterion(logits, labels)

    def train_log_keys(self) -> set[str]:
        return {"loss"}

    def eval_log_keys(self) -> set[str]:
        """``loss`` (with a criterion) and the keys every metric reports (what ``compute`` of a fresh one holds)."""
        keys = {"loss"} if self.criterion is not None else set()
        for metric in self.metrics:
            metric.reset()
            keys |= set(metric.compute())
        return keys

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        bar = self.progress(self.data_loader, epoch)
        for batch_idx, (images, labels, index) in enumerate(bar):
            images, labels, index = self.to_device(images, labels, index)
            loss = self.training_loss(images, labels, index)
            self.backward_step(loss, batch_idx)
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
            if batch_idx % self.log_step == 0:
                self.check_finite(epoch)
                bar.set_postfix(loss=f"{loss.item():.4f}")
        return {"loss": float(dist.mean_over_ranks(loss_sum, seen))}


    def evaluation_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss reported on validation/test data for logits ``(N, C)`` (the training criterion here)."""
        return self.criterion(logits, labels)

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, Any]:
        """Mean loss and every metric over ``loader`` (under DDP: each rank scores its shard, every sample once
        over the ranks, and the sums are reduced)."""
        self.raw_model.eval()
        for metric in self.metrics:
            metric.reset()
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        for images, labels, _ in loader:
            images, labels = self.to_device(images, labels)
            with self.autocast():
                logits = self.eval_model(images)
            logits = logits.float()
            if self.criterion is not None:
                loss_sum += self.evaluation_loss(logits, labels) * len(labels)
            seen += len(labels)
            for metric in self.metrics:
                metric.update(logits, labels)
        result: dict[str, Any] = {}
        if self.criterion is not None:
            result["loss"] = float(dist.mean_over_ranks(loss_sum, seen))
        for metric in self.metrics:
            metric.sync()
            result.update(metric.compute())
        return result

    @torch.no_grad()
    def predict(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(N, C)`` float32 and labels ``(N,)`` on the CPU, row ``i`` being dataset index ``i``.

        One forward pass per image; single-process (``test_all.py`` and test-time training use it).
        """
        self.raw_model.eval()
        n = len(loader.dataset)
        logits = targets = None
        seen = torch.zeros(n, dtype=torch.bool)
        for images, labels, index in loader:
            images = self.to_device(images)[0]
            with self.autocast():
                out = self.eval_model(images)
            out = out.float().cpu()
            if logits is None:
                logits = torch.empty(n, out.shape[1])
                targets = torch.full((n,), -1, dtype=torch.long)
            logits[index], targets[index], seen[index] = out, labels.cpu(), True
        if logits is None or not bool(seen.all()):
            raise RuntimeError(f"predict: the loader yielded {int(seen.sum())} of {n} images; it must cover the "
                               "whole dataset once, in any order")
        return logits, targets

    def figures(self, title: str = "") -> dict:
        """Reliability diagram and per-class accuracy from the last evaluation's metric states."""
        return metric_figures(self.metrics, self.cls_num_list, title)
