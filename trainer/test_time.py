"""TestTimeTrainer: SADE's test-time self-supervised aggregation, and PRL's preference, per test split."""
from __future__ import annotations

import inspect
import time
import typing
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from base.base_trainer import BaseTrainer
from data_loader.test_agnostic import describe_splits
from model.metric import split_scores
from utils import dist
from utils.errors import ConfigError
from utils.registry import MODELS, TRAINERS

STABILITIES = ("discriminative", "sade")
GUARDS = ("prior", "none")


def prediction_stability(p1: torch.Tensor, p2: torch.Tensor, kind: str = "discriminative") -> torch.Tensor:
    """How well the predictions ``(N, C)`` on two views of the same N images agree.

    ``"sade"``: the mean cosine similarity of each image's two predictions (SADE). Any prediction that does not
    depend on the image maximises it (cosine 1), so it rewards the expert whose prior bias dominates its input
    evidence: the backward expert of a small long-tailed set, whose predictions crowd onto a few tail classes
    whatever the view. ``"discriminative"``: the same agreement minus the mean agreement between the views of
    *different* images of the batch, the part of the stability an input-independent prediction also has; a
    constant prediction scores 0, and a model that matches the split's class marginal is not penalised for it
    (a correct classifier's cross-image agreement is the split's label collision rate, whatever the model).
    """
    a, b = F.normalize(p1, dim=1), F.normalize(p2, dim=1)
    same = (a * b).sum(1).mean()
    if kind == "sade":
        return same
    n = len(a)
    if n < 2:
        return same * 0  # no other image to compare with: no signal, no step
    cross = (a.sum(0) @ b.sum(0) - (a * b).sum()) / (n * (n - 1))  # mean over pairs i != j, without the N x N matrix
    return same - cross


def implied_log_prior(weights: torch.Tensor, adjustments: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """The log test prior ``(C,)`` that the combination ``sum_j w_j z_j`` of experts trained with logit
    adjustments ``(E, C)`` assumes, up to a constant: ``log_prior - w @ adjustments``. Expert j learns
    ``z_j + adj_j ~ log p_train(y|x)``, i.e. ``z_j ~ log p(x|y) + log_prior - adj_j``: it predicts for a test set
    with prior ``exp(log_prior - adj_j)`` (SADE: the training prior, the uniform one, the inverse one at tau)."""
    return log_prior - weights.to(adjustments.dtype) @ adjustments


def em_prior(balanced: torch.Tensor, log_init: torch.Tensor, steps: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """The label prior ``(C,)`` of unlabelled images that maximises their likelihood under label shift
    (Saerens et al. 2002, EM), from their class-conditional log-likelihoods ``balanced`` ``(N, C)`` (logits
    minus the prior they assume; any per-image constant) and a starting log prior ``(C,)``."""
    prior = torch.softmax(log_init.float(), 0)
    for _ in range(steps):
        new = torch.softmax(balanced.float() + prior.clamp_min(1e-12).log(), 1).mean(0)
        done = float((new - prior).abs().max()) < tol
        prior = new
        if done:
            break
    return prior


def prior_gap(estimate: torch.Tensor, log_prior: torch.Tensor) -> float:
    """KL(estimate || softmax(log_prior)): how far an assumed prior is from the estimated one."""
    assumed = torch.log_softmax(log_prior.float(), 0)
    return float((estimate * (estimate.clamp_min(1e-12).log() - assumed)).sum())


def prior_guard(start_logits: torch.Tensor, start: torch.Tensor, adapted: torch.Tensor, adjustments: torch.Tensor,
                log_prior: torch.Tensor) -> tuple[float, float]:
    """The prior guard's two distances, ``(before, after)``: KL from the EM estimate of the images' label prior
    to the prior the starting weights ``start`` ``(E,)`` assume, and to the one the adapted weights assume. The
    estimate comes from the start's logits ``(N, C)`` made class-conditional by subtracting the prior they assume
    (:func:`implied_log_prior` with the loss's ``adjustments`` ``(E, C)`` and training ``log_prior`` ``(C,)``).
    The adaptation is kept when ``after < before``."""
    assumed = implied_log_prior(start, adjustments, log_prior)
    estimate = em_prior(start_logits - assumed, assumed)
    return prior_gap(estimate, assumed), prior_gap(estimate, implied_log_prior(adapted, adjustments, log_prior))


@TRAINERS.register()
class TestTimeTrainer(BaseTrainer):
    """Adapts how a trained multi-expert model combines its experts to an unlabelled test set.

    For every test-agnostic split (forward50 ... backward50), starting from the model's own combination (equal
    expert weights; for a hypernetwork model the uniform preference), it maximises the stability of the
    predictions on two augmented views of the same unlabelled test images (SADE), optimising only the
    softmax-parametrised aggregation weights (and the preference on the simplex, with ``learn_preference``).
    A hypernetwork model that weights its experts by its preference (``aggregate_by_preference``) learns the
    preference alone, which then both conditions the heads and weights the experts, as in inference.

    ``stability``: ``"sade"`` (default) is SADE's agreement of the two views' predictions of the same image;
    ``"discriminative"`` subtracts their mean agreement across different images of the batch
    (:func:`prediction_stability`). The configured optimizer (SGD in SADE) runs for ``epochs`` passes and stops
    as soon as a learned weight falls below ``min_weight`` (0.05). The model is frozen in eval mode. Labels are
    read only to score.

    ``protocol``: ``"transductive"`` adapts on the split and scores the same split, as SADE does;
    ``"split_half"`` adapts on a random half (seed 0) and scores the other half.

    ``guard``: ``"prior"`` (default) keeps an adaptation only if it moved the test prior the combination assumes
    (:func:`implied_log_prior`, from the checkpoint loss's logit adjustments) toward the split's label prior as
    estimated by EM on the unlabelled images (:func:`em_prior`, on the model's own combination); otherwise the
    model's own combination is kept (``"accepted": false`` and the refused adaptation's ``"unguarded_all"`` in
    the results). Neither signal is trustworthy alone on a small long-tailed model: each stability moves the
    weights the same way on every split (SADE's toward the tail expert, the discriminative one toward the head:
    the model's bias, not the split's), and EM's estimate leans to the head (tail images it cannot recognise
    look like head ones). The guard keeps what both support; with SADE's stability it refuses the tail-ward
    moves EM does not see, so it cannot gain on a backward split where EM's estimate is head-biased, but it does
    not lose there either. ``"none"``: keep every adaptation (SADE). The README has the measurements.

    Under torchrun the result is the one-process result: the test set's features are computed in shards, and in
    the adaptation every rank reads every batch of views (the same augmentation draws as one process) but runs
    the model on its slice of each batch only; the slices' features are summed over the ranks, so every rank
    takes the same step on the same global batch (the model's forward passes, the expensive part, are split; the
    loading and augmentation of the views are not).
    """

    required_sections = ("optimizer",)  # SADE: SGD lr 0.1
    wrap_in_ddp = False  # the model is frozen; only the expert weights and preference train

    def __init__(self, config, epochs: int = 5, min_weight: float = 0.05,
                 protocol: Literal["transductive", "split_half"] = "transductive", learn_weights: bool = True,
                 learn_preference: bool = True, stability: Literal["discriminative", "sade"] = "sade",
                 guard: Literal["prior", "none"] = "prior", **kwargs):
        if not 0 <= min_weight < 1:
            raise ValueError(f"min_weight must be in [0, 1), got {min_weight}")
        if stability not in STABILITIES:
            raise ValueError(f"stability must be one of {', '.join(STABILITIES)}, got {stability!r}")
        if guard not in GUARDS:
            raise ValueError(f"guard must be one of {', '.join(GUARDS)}, got {guard!r}")
        self.stability, self.guard = stability, guard
        self.min_weight, self.protocol = min_weight, protocol
        self.learn_weights, self.learn_preference = learn_weights, learn_preference
        declared = _declared_model_class(config["arch"].get("type"))
        if declared is not None and not hasattr(declared, "expert_features"):  # before the data is read
            raise _not_multi_expert(config, declared.__name__)
        super().__init__(config, epochs=epochs, **kwargs)
        self.raw_model.requires_grad_(False)
        if guard == "prior" and not hasattr(self.criterion, "adjustments"):
            raise ConfigError(f"{config.source}: guard \"prior\" needs the checkpoint's loss to give each expert's "
                              f"logit adjustment (DiverseExpertLoss, SADE / PRL), got {type(self.criterion).__name__}; "
                              'set trainer.args.guard to "none" to adapt unchecked')

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if not hasattr(model, "expert_features"):  # before the optimizer asks it for its experts
            raise _not_multi_expert(self.config, type(model).__name__)
        return model

    # --- what is learned --------------------------------------------------------------------------
    def parameter_groups(self):
        experts, model = self.raw_model.num_experts, self.raw_model
        self.weight_logits = nn.Parameter(torch.zeros(experts, device=self.device))
        self.preference_logits = nn.Parameter(torch.zeros(experts, device=self.device))
        learns_preference = self.learn_preference and model.hypernet is not None
        # a hypernetwork model that weights its experts by its preference (aggregate_by_preference, inference's
        # rule) learns the preference alone: it conditions the heads and weights the experts, as in inference
        self.tied = learns_preference and model.aggregate_by_preference and not bool(model.weights_set)
        params = []
        if self.learn_weights and not self.tied:
            params.append(self.weight_logits)
        if learns_preference:
            params.append(self.preference_logits)
        if not params:
            raise ConfigError("TestTimeTrainer: nothing to learn (learn_weights false and no hypernetwork preference)")
        return params

    def _reset(self) -> None:
        """The model's own inference combination (its weights and preference: step 0 is the model before
        adaptation), a fresh optimizer."""
        with torch.no_grad():
            default = self.raw_model.current_preference()
            self.weight_logits.copy_(self.raw_model.inference_weights(default).to(self.device).clamp_min(1e-6).log())
            if default is not None:
                self.preference_logits.copy_(default.to(self.device).clamp_min(1e-6).log())
        self.optimizer = self.config.build("optimizer", params=[p for g in self.optimizer.param_groups
                                                                 for p in g["params"]])

    def weights(self) -> torch.Tensor:
        if self.tied:
            return self.preference()
        return torch.softmax(self.weight_logits, dim=0)

    def preference(self) -> torch.Tensor | None:
        if self.raw_model.hypernet is None:
            return None
        if self.learn_preference:
            return torch.softmax(self.preference_logits, dim=0)
        return self.raw_model.current_preference()

    def combined(self, features: torch.Tensor) -> torch.Tensor:
        """Aggregated logits ``(N, C)`` from expert features ``(N, E, D)`` with the current weights/preference."""
        return self.raw_model.aggregate(self.raw_model.head(features, self.preference()), self.weights())

    # --- adaptation ---------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass of prediction-stability maximisation over the current split's two views."""
        self.raw_model.eval()
        total, batches = torch.zeros((), device=self.device), 0
        first, second = self._views(), self._views()
        bar = getattr(self, "_bar", None)
        if bar is not None and bar.total is None:
            bar.total = self.epochs * len(first)
            bar.refresh()
        for batch_idx, ((view1, _, _), (view2, _, _)) in enumerate(zip(first, second)):
            view1, view2 = self.to_device(view1, view2)
            f1, f2 = self._batch_features(view1), self._batch_features(view2)
            p1, p2 = torch.softmax(self.combined(f1), dim=1), torch.softmax(self.combined(f2), dim=1)
            loss = -prediction_stability(p1, p2, self.stability)
            self.backward_step(loss, batch_idx)
            total, batches = total + loss.detach(), batches + 1
            if bar is not None:
                bar.update()
            if self._collapsed():
                self._stopped = True
                break
        # every rank computed the same loss on the same batches: its own mean is the mean
        return {"stability": -float(total / max(batches, 1))}

    @torch.no_grad()
    def _batch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Expert features ``(B, E, D)`` of a batch of views that every rank holds whole: each rank runs the model
        on its contiguous slice of the rows and the slices are summed over the ranks (a sum with zeros, exact), so
        every rank ends with the features of the whole batch. One process: the whole batch at once."""
        if not dist.is_distributed():
            with self.autocast():
                return self.raw_model.expert_features(images).float()
        n, world, rank = len(images), dist.world_size(), dist.rank()
        start, stop = n * rank // world, n * (rank + 1) // world
        features = torch.zeros(n, self.raw_model.num_experts, self.raw_model.feature_dim, device=self.device)
        if stop > start:
            with self.autocast():
                features[start:stop] = self.raw_model.expert_features(images[start:stop]).float()
        return dist.all_reduce_sum(features)

    def _collapsed(self) -> bool:
        """SADE's stop: a learned weight (or the learned preference) fell below ``min_weight``."""
        learned = [p for p in (self.weights() if self.learn_weights or self.tied else None,
                               self.preference() if self.learn_preference else None) if p is not None]
        return any(bool(p.min() < self.min_weight) for p in learned)

    def _views(self):
        return self.view_source.view_loader(self._adapt_index)

    def _adapt(self, index) -> int:
        """From the model's own combination, maximise the stability on the views of images ``index`` for up to
        ``epochs`` epochs (SADE's stop below ``min_weight``); returns the number of epochs run."""
        self._adapt_index, self._stopped = index, False
        self._reset()
        epoch = 0
        for epoch in range(1, self.epochs + 1):
            self._bad_batch.fill_(-1)
            self._train_epoch(epoch)
            self.check_finite(epoch)
            if self._stopped:
                break
        return epoch

    def _state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of what is learned (the weight and preference logits), to score or restore a combination."""
        return self.weight_logits.detach().clone(), self.preference_logits.detach().clone()

    def _load_state(self, state: tuple[torch.Tensor, torch.Tensor]) -> None:
        with torch.no_grad():
            self.weight_logits.copy_(state[0])
            self.preference_logits.copy_(state[1])

    @torch.no_grad()
    def _prior_check(self, start_logits: torch.Tensor, start_weights: torch.Tensor) -> str | None:
        """The prior guard (:func:`prior_guard`) from the adaptation images' logits ``(N, C)`` and the expert
        weights ``(E,)`` of the combination adaptation started from, against the current (adapted) weights: None
        when the adapted combination is kept, else why not (for the status line). The logits come from features
        that are whole on every rank, so every rank decides the same."""
        loss = self.criterion
        before, after = prior_guard(start_logits, start_weights, self.weights().detach(),
                                    loss.adjustments(self.raw_model.num_experts).to(self.device),
                                    loss.log_prior.to(self.device))
        if after < before:
            return None
        return (f"it moved the assumed prior away from the EM estimate of the split's, KL {before:.3f} -> "
                f"{after:.3f}")

    # --- the whole protocol -------------------------------------------------------------------------
    @torch.no_grad()
    def _test_features(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert features ``(N, E, D)`` and labels of the whole test set, one pass, row i = index i.

        Under DDP each rank computes its shard and the rows are summed over the ranks, so every rank holds all.
        """
        self.raw_model.eval()
        n = len(loader.dataset)
        features = torch.zeros(n, self.raw_model.num_experts, self.raw_model.feature_dim, device=self.device)
        targets = torch.full((n,), -1, dtype=torch.long, device=self.device)
        seen = torch.zeros(n, device=self.device)
        for images, labels, index in loader:
            index = index.to(self.device)
            with self.autocast():
                features[index] = self.raw_model.expert_features(self.to_device(images)[0]).float()
            targets[index], seen[index] = labels.to(self.device), 1
        features, seen = dist.all_reduce_sum(features), dist.all_reduce_sum(seen)
        targets = dist.all_reduce_max(targets)
        if not bool((seen == 1).all()):
            raise RuntimeError(f"the test loader yielded {int((seen > 0).sum())} distinct of {n} images "
                               f"({int((seen > 1).sum())} more than once over the ranks); it must cover each once")
        return features, targets.cpu()

    def adapt_all(self, shot_args: dict | None = None) -> dict[str, dict[str, Any]]:
        """Adapt and score every test-agnostic split; returns test_all's table plus the learned values.

        ``self.test_set`` then describes the test set and the images of each class every split used
        (:func:`describe_splits`; with ``split_half`` a split scores about half of them).
        """
        shot_args = shot_args or {}
        loader = self.config.build_data_loader(training=False, device=self.device)
        if not hasattr(loader, "view_loader"):
            raise ConfigError(f"{self.config['data_loader']['type']} has no view_loader(): it cannot produce the "
                              "augmented views test-time training needs")
        self.view_source = loader
        splits = loader.test_agnostic_splits()
        self.status(f"Test-time training: expert features of the {len(loader.dataset):,} test images (one pass"
                    + (f", split over {dist.world_size()} processes" if dist.is_distributed() else "")
                    + f"), then {len(splits)} splits adapted for up to {self.epochs} "
                    + ("epochs each" if self.epochs > 1 else "epoch each"))
        started = time.perf_counter()
        features, targets = self._test_features(loader)
        self.status(f"  features in {time.perf_counter() - started:.1f} s")
        self.test_set = describe_splits(targets.numpy(), splits, loader.num_classes)
        results = {}
        for number, (name, index) in enumerate(splits.items(), start=1):
            index = np.asarray(index)
            if self.protocol == "split_half":
                order = np.random.RandomState(0).permutation(len(index))
                adapt, score = index[order[: len(index) // 2]], index[order[len(index) // 2:]]
            else:
                adapt = score = index
            started = time.perf_counter()
            with torch.no_grad():  # the model before adaptation (its default combination), for comparison
                default = self.raw_model.current_preference()
                mean = self.raw_model.aggregate(self.raw_model.head(features[score], default))
            self._bar = tqdm(desc=f"adapt {name} ({number}/{len(splits)})", unit="batch", leave=False,
                             dynamic_ncols=True, disable=not (self.progress_bar and dist.is_main_process()))
            try:
                self._reset()
                start = self._state()
                adapt_rows = torch.as_tensor(adapt, dtype=torch.long)
                with torch.no_grad():  # what the guard compares the adaptation with
                    start_weights = self.weights().detach()
                    start_logits = self.combined(features[adapt_rows]) if self.guard == "prior" else None
                epoch = self._adapt(adapt)
                with torch.no_grad():  # scored below as "unguarded_all": what the guard kept or refused
                    unguarded = self.combined(features[score])
                refused = None
                if self.guard == "prior":
                    refused = self._prior_check(start_logits, start_weights)
                if refused is not None:  # the model's own combination, as before adaptation
                    self._load_state(start)
            finally:
                self._bar.close()
                self._bar = None
            with torch.no_grad():
                adapted = self.combined(features[score])
            labels = targets[torch.as_tensor(score, dtype=torch.long)]
            before = split_scores(mean.cpu(), labels, self.cls_num_list, shot_args)
            unguarded = split_scores(unguarded.cpu(), labels, self.cls_num_list, shot_args)
            results[name] = {**split_scores(adapted.cpu(), labels, self.cls_num_list, shot_args),
                             "before_all": before["all"],
                             "unguarded_all": unguarded["all"],
                             "accepted": refused is None,
                             "weights": [round(float(v), 4) for v in self.weights().detach()],
                             "preference": (None if self.preference() is None
                                            else [round(float(v), 4) for v in self.preference().detach()])}
            stop = (f", stopped in epoch {epoch}: a learned weight fell below {self.min_weight}" if self._stopped
                    else "")
            kept = "" if refused is None else f"; kept the model's combination (guard: {refused})"
            self.status(f"  {name:<11} ({number}/{len(splits)}) adapted on {len(adapt):,} images in "
                        f"{time.perf_counter() - started:.1f} s ({epoch} epoch{'s' if epoch > 1 else ''}{stop}{kept}): "
                        f"all {results[name]['before_all']:.2f} -> {results[name]['all']:.2f}")
        return results

    def status(self, message: str) -> None:
        """A line (rank 0, on stdout like the epoch lines of training) saying what a long step is doing; stderr
        has the progress bars and errors only."""
        self.logger.info(message)


def _declared_model_class(name: Any) -> type | None:
    """The class a registered model builds, read without building it: the class itself, or the return annotation
    of a factory function (``def ResNet32(...) -> ResNetCifar``); None when that cannot be told."""
    try:
        target = MODELS.get(name)
    except ConfigError:
        return None  # ConfigParser names the unknown type
    if inspect.isclass(target):
        return target
    try:
        declared = typing.get_type_hints(target).get("return")
    except Exception:  # noqa: BLE001 (an annotation that does not resolve: decide after building)
        return None
    return declared if inspect.isclass(declared) else None


def _not_multi_expert(config, model: str) -> ConfigError:
    from utils.cli import ROOT, display_path, script_command

    arch = config["arch"].get("type")
    built = "" if model == arch else f" ({model})"
    example = script_command("train.py", "-c", display_path(ROOT / "configs/experts/quickstart_digits_sade.json"))
    return ConfigError(
        f"{config.source}: the model, {arch}{built}, has no experts; test-time training learns how a multi-expert "
        "model combines its experts and needs a multi-expert checkpoint (MultiExpertResNet32, MultiExpertResNeXt50, "
        f"...), e.g. one trained with {example} (or another configs/experts/*_sade.json or *_hyper.json)")
