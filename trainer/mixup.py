"""MixupTrainer: stage 1 of MiSLAS / LNR, representation learning with mixup."""
from __future__ import annotations

import torch

from model.lnr_methods import mixup_batch, remix_label_weight
from trainer.classifier import ClassifierTrainer
from utils.registry import TRAINERS


@TRAINERS.register()
class MixupTrainer(ClassifierTrainer):
    """Supervised training on mixed images (Zhang et al. 2018), as MiSLAS stage 1.

    Each batch is mixed with a random in-batch permutation of itself, ``lam ~ Beta(alpha, alpha)``; the loss
    is ``share * L(y_a) + (1 - share) * L(y_b)`` per sample. ``share`` is ``lam`` (MiSLAS), or with ``remix``
    the rebalanced rule of LNR's code (Remix, Chou et al. 2020): when one class of the pair has at least
    ``kappa`` times the images of the other and the rarer image's pixel share is above ``tau``, the whole
    label goes to the rarer class (pixels are still mixed).

    Args:
        alpha: Beta parameter (1.0 for CIFAR in MiSLAS, 0.2 for ImageNet-LT / iNat / Places).
        remix: use the rebalanced label rule. kappa, tau: its size ratio and share thresholds.
        All other arguments are BaseTrainer's.
    """

    def __init__(self, config, alpha: float = 1.0, remix: bool = False, kappa: float = 3.0, tau: float = 0.5,
                 **kwargs):
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if kappa < 1 or not 0 <= tau <= 1:
            raise ValueError(f"kappa must be >= 1 and tau in [0, 1], got {kappa}, {tau}")
        super().__init__(config, **kwargs)
        self.alpha, self.remix, self.kappa, self.tau = alpha, remix, kappa, tau
        self.cls_num = torch.as_tensor(self.cls_num_list, device=self.device)

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        mixed, perm, lam = mixup_batch(images, self.alpha)
        y_a, y_b = labels, labels[perm]
        if self.remix:
            share = remix_label_weight(lam, y_a, y_b, self.cls_num, self.kappa, self.tau)
        else:
            share = torch.full(labels.shape, lam, device=labels.device)
        with self.autocast():
            logits = self.model(mixed)
        return self.criterion(logits, y_a, share) + self.criterion(logits, y_b, 1 - share)
