"""ClassifierTrainer: plain supervised training, the "Softmax" baseline of long-tailed papers."""
from __future__ import annotations

from typing import Any

import torch

from base.base_trainer import BaseTrainer
from utils.errors import ConfigError
from utils.registry import TRAINERS


@TRAINERS.register()
class ClassifierTrainer(BaseTrainer):
    """Supervised classification: minimise the configured loss on ``(image, label, index)`` batches.

    Validation and ``test.py`` report the loss and every configured metric (accuracy, top5,
    many/medium/few, ECE/MCE). All arguments are BaseTrainer's (epochs, monitor, save_dir, ...).
    """

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        if self.criterion is None or self.optimizer is None:
            raise ConfigError(f'{config.source}: {type(self).__name__} needs "loss" and "optimizer" sections')

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        bar = self.progress(self.data_loader, epoch)
        for batch_idx, (images, labels, _) in enumerate(bar):
            images, labels = self.to_device(images, labels)
            with self.autocast():
                logits = self.model(images)
            loss = self.criterion(logits, labels)
            self.backward_step(loss, batch_idx)
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
            if batch_idx % self.log_step == 0:
                self.check_finite(epoch)
                bar.set_postfix(loss=f"{loss.item():.4f}")
        return {"loss": float(self._mean_over_ranks(loss_sum, seen))}

    def _mean_over_ranks(self, total: torch.Tensor, count: int) -> torch.Tensor:
        from utils import dist

        both = dist.all_reduce_sum(torch.stack([total.double(), torch.tensor(float(count), device=total.device,
                                                                              dtype=torch.float64)]))
        return both[0] / both[1].clamp_min(1)

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, Any]:
        """Mean loss and every metric over ``loader`` (rank shards are summed under DDP)."""
        self.raw_model.eval()
        for metric in self.metrics:
            metric.reset()
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        for images, labels, _ in loader:
            images, labels = self.to_device(images, labels)
            with self.autocast():
                logits = self.model(images)
            logits = logits.float()
            if self.criterion is not None:
                loss_sum += self.criterion(logits, labels) * len(labels)
            seen += len(labels)
            for metric in self.metrics:
                metric.update(logits, labels)
        result: dict[str, Any] = {}
        if self.criterion is not None:
            result["loss"] = float(self._mean_over_ranks(loss_sum, seen))
        for metric in self.metrics:
            metric.sync()
            result.update(metric.compute())
        return result
