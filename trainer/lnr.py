"""LNRTrainer: MiSLAS classifier re-learning (stage 2) with LNR's label-noise rebalancing."""
from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import torch

from model.lnr_methods import draw_flips, flip_rates, zscore_summary
from trainer.classifier import ClassifierTrainer
from utils import dist
from utils.errors import ConfigError
from utils.registry import TRAINERS


@TRAINERS.register()
class LNRTrainer(ClassifierTrainer):
    """Stage 2 of MiSLAS (Zhong et al. 2021) with the label flips of LNR (Hu et al. 2025).

    The model (a ``BackboneClassifier``, usually with ``lws: true``) starts from the stage-1 checkpoint named
    by the config's ``init_from``. The backbone is frozen and run under ``no_grad``; with ``shift_bn`` its BN
    layers stay in train mode, so their running statistics re-adapt to the class-balanced batches while the
    affine parameters stay fixed. The classifier trains at ``lr_factor * lr`` and the LWS scale at ``lr``.
    Use the ``LabelAwareSmoothing`` loss and a class-aware sampler in the data loader, as MiSLAS does.

    Label-noise rebalancing (``flip: true``): before the first epoch, each training sample's softmax
    probabilities are averaged over ``flip_passes`` passes of training-augmented images; per class k, the
    z-score of p_k is taken over samples whose label is not k, and the rate of moving a sample of class c
    to k is ``tanh(z - flip_threshold) * max(rarity_k - rarity_c, 0)``. One Bernoulli draw per class, the
    highest firing rate wins; only strictly rarer classes. The flips are fixed for the run, stored in every
    checkpoint, and applied by sample index (the sampler still samples by the original label). ``flip:
    false`` is plain MiSLAS.

    Args:
        lr_factor: classifier learning rate as a fraction of the optimizer's ``lr``.
        shift_bn: re-estimate BN statistics on the balanced batches (MiSLAS "shifted BN").
        flip: apply LNR's flips. flip_passes: augmented passes averaged. flip_threshold: z threshold;
            default as the released code: 7.5 with 10 classes, 14.5 otherwise. flip_seed: seed of the draws.
        flip_mode: ``"eval"`` (default): passes with the model in eval mode under ``no_grad``, the method as
            described; ``"released"``: as the released code, the backbone in train mode when ``shift_bn``
            (BN normalises with batch statistics and updates its running statistics during the passes) and
            without ``no_grad``.
        All other arguments are BaseTrainer's.
    """

    wrap_in_ddp = False  # only the head trains

    def __init__(self, config, lr_factor: float = 0.2, shift_bn: bool = True, flip: bool = True,
                 flip_passes: int = 2, flip_threshold: float | None = None, flip_seed: int = 0,
                 flip_mode: Literal["eval", "released"] = "eval", **kwargs):
        if not lr_factor > 0:
            raise ValueError(f"lr_factor must be > 0, got {lr_factor}")
        if flip_passes < 1:
            raise ValueError(f"flip_passes must be >= 1, got {flip_passes}")
        self.lr_factor = lr_factor
        super().__init__(config, **kwargs)
        if not all(hasattr(self.raw_model, name) for name in ("backbone", "head", "classifier")):
            raise ConfigError(f'{config.source}: config["arch"]: LNRTrainer needs a backbone + classifier model '
                              f"(ResNet32, ResNet50, ...), got {type(self.raw_model).__name__}")
        self.shift_bn, self.flip, self.flip_passes, self.flip_seed, self.flip_mode = (
            shift_bn, flip, flip_passes, flip_seed, flip_mode)
        self.flip_threshold = flip_threshold if flip_threshold is not None else (
            7.5 if self.num_classes == 10 else 14.5)
        self.flipped: torch.Tensor | None = None  # new label per training index, -1 where unchanged
        self._flipped_on_device: torch.Tensor | None = None

    def build_optimizer(self):
        self.raw_model.backbone.requires_grad_(False)  # frozen: its features come from stage 1
        return super().build_optimizer()

    def parameter_groups(self):
        """Classifier at ``lr_factor * lr``, LWS at ``lr``; the backbone is frozen."""
        model = self.raw_model
        lr = (self.config["optimizer"].get("args") or {}).get("lr")
        if lr is None:
            raise ConfigError(f'{self.config.source}: config["optimizer"]["args"]["lr"]: LNRTrainer needs an '
                              "explicit learning rate (the classifier trains at lr_factor * lr)")
        groups = [{"params": list(model.classifier.parameters()), "lr": lr * self.lr_factor}]
        if getattr(model, "lws", None) is not None:
            groups.append({"params": list(model.lws.parameters()), "lr": lr})
        return groups


    # --- label-noise rebalancing ------------------------------------------------------------------
    def _flip_loader(self):
        """The training set once per pass, every image, with training augmentation, in index order."""
        return self.config.build_data_loader(training=True, device=self.device, sampler=None, shuffle=False)

    def _average_probabilities(self) -> tuple[torch.Tensor, torch.Tensor]:
        loader = self._flip_loader()
        n = len(loader.dataset)
        self.logger.info(f"LNR: {self.flip_passes} augmented pass{'es' if self.flip_passes > 1 else ''} of the "
                         f"stage-1 model over the {n:,} training images, to draw the label flips ...")
        total = torch.zeros(n, self.num_classes, dtype=torch.float64)
        seen = torch.zeros(n, dtype=torch.float64)
        labels = torch.full((n,), -1, dtype=torch.long)
        released = self.flip_mode == "released"
        self.raw_model.train(released and self.shift_bn)
        with torch.set_grad_enabled(released):
            for _ in range(self.flip_passes):
                for images, target, index in loader:
                    images = self.to_device(images)[0]
                    with self.autocast():
                        # the stage-1 model: backbone + linear classifier, without LWS (as the released code)
                        logits = self.raw_model.classifier(self.raw_model.backbone(images))
                    probs = torch.softmax(logits.float(), dim=1).detach().cpu().double()
                    total.index_add_(0, index, probs)
                    seen.index_add_(0, index, torch.ones(len(index), dtype=torch.float64))
                    labels[index] = target
        # under DDP each rank saw its shard: sum the shards on the device (nccl reduces CUDA tensors only)
        total = dist.all_reduce_sum(total.to(self.device)).cpu()
        seen = dist.all_reduce_sum(seen.to(self.device)).cpu()
        labels = dist.all_reduce_max(labels.to(self.device)).cpu()
        if released:  # the passes moved each rank's BatchNorm statistics by its own shard: agree on rank 0's
            dist.broadcast_buffers(self.raw_model)
        if bool((seen == 0).any()):
            raise RuntimeError("the flip passes did not cover every training sample")
        return total / seen[:, None], labels

    def compute_flips(self) -> None:
        """Draw the run's label flips from the current (stage-1) model and log what changed."""
        probs, labels = self._average_probabilities()
        rates = flip_rates(probs, labels, self.cls_num_list, self.flip_threshold)
        generator = torch.Generator().manual_seed(self.flip_seed)
        self.flipped = draw_flips(rates, generator)
        self._log_zscores(probs, labels)
        self._log_flips(labels)

    def _log_zscores(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Why the rule did or did not flip: the z-scores of the pairs that may flip and how many pass."""
        s = zscore_summary(probs, labels, self.cls_num_list, self.flip_threshold)
        self.zscore_stats = s
        top = sorted(s["max_z_to_class"].items(), key=lambda kv: -kv[1])[:10]
        self.logger.info(
            f"LNR z-scores of the {s['pairs']:,} (sample, rarer class) pairs that may flip: median {s['q50']:.2f}, "
            f"90% {s['q90']:.2f}, 99% {s['q99']:.2f}, max {s['q100']:.2f}; {s['above']} above the threshold "
            f"{self.flip_threshold} ({s['samples_above']} samples), {s['expected_flips']:.1f} flips expected; "
            "largest z towards each target class: " + ", ".join(f"{k}: {v:.1f}" for k, v in top))

    def _log_flips(self, labels: torch.Tensor) -> None:
        changed = self.flipped >= 0
        pairs = Counter(zip(labels[changed].tolist(), self.flipped[changed].tolist()))
        total = int(changed.sum())
        self.flip_summary = {"total": total, "pairs": {f"{a}->{b}": n for (a, b), n in sorted(pairs.items())}}
        self.logger.info(f"LNR flips (threshold {self.flip_threshold}, {self.flip_passes} passes, mode "
                         f"{self.flip_mode}): {total} of {len(labels)} labels changed"
                         + (f"; source->target: {self.flip_summary['pairs']}" if total else ""))
        out_of = Counter(labels[changed].tolist())
        into = Counter(self.flipped[changed].tolist())
        self.writer.scalars({"flips/total": total}, 0)
        self.writer.scalars({f"flips/from_class_{c}": out_of.get(c, 0) for c in range(self.num_classes)}, 0)
        self.writer.scalars({f"flips/to_class_{c}": into.get(c, 0) for c in range(self.num_classes)}, 0)

    # --- training ---------------------------------------------------------------------------------
    def train_log_keys(self) -> set[str]:
        return super().train_log_keys() | {"flips"}  # when flipping, or when a checkpoint restored flips

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        if self.flip and self.flipped is None:
            self.compute_flips()
        self._flipped_on_device = self.flipped.to(self.device) if self.flipped is not None else None
        self.raw_model.backbone.train(self.shift_bn)  # BN statistics shift on the balanced batches
        result = super()._train_epoch(epoch)
        if self.flipped is not None:
            result["flips"] = int((self.flipped >= 0).sum())
        return result

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self._flipped_on_device is not None:  # the run's flips, by sample index
            new = self._flipped_on_device[index]
            labels = torch.where(new >= 0, new, labels)
        with torch.no_grad(), self.autocast():
            features = self.raw_model.backbone(images)
        with self.autocast():
            logits = self.raw_model.head(features.float())
        return self.criterion(logits, labels)

    def trainer_state(self) -> dict[str, Any]:
        return {"flipped": self.flipped} if self.flipped is not None else {}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        """The run's label flips (for resuming it; evaluation reads them but uses no training labels)."""
        if "flipped" in state:
            self.flipped = state["flipped"].cpu()

    def resume(self, path) -> None:
        super().resume(path)
        if self.flipped is not None and dist.is_main_process():  # said when continuing training only
            self.logger.info(f"Continuing with the run's {int((self.flipped >= 0).sum())} LNR label flips")
