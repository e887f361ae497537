"""BaseTrainer: owns the training loop; subclasses implement one epoch.

What a subclass may assume after ``__init__``: ``self.model`` (on ``self.device``, wrapped in
DistributedDataParallel under torchrun; ``self.raw_model`` is the bare module), ``self.data_loader`` and
``self.valid_loader`` (None when the data loader holds nothing back), ``self.criterion``,
``self.metrics``, ``self.optimizer``, ``self.lr_scheduler`` (each None when the config has no such
section), ``self.logger`` and ``self.writer`` (TensorBoard, a no-op off rank 0).

A subclass implements ``_train_epoch(epoch) -> dict`` and usually ``evaluate(loader) -> dict``; the base
validates with ``evaluate`` each epoch, prefixes the keys with ``val_``, steps the scheduler, tracks the
monitored value, writes checkpoints, stops early, and resumes exactly. Components are built by the
``build_*`` methods, which a subclass overrides when it needs something else (param groups, a second
model). Constructing a trainer writes nothing to disk; :meth:`train` does, after
``config.prepare_run_dirs()``.
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
import math
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm import tqdm

from base.base_data_loader import BaseDataLoader
from utils import dist
from utils.batchnorm import PreciseBatchNorm, batches_to_forget, batchnorm_layers
from utils.checkpoint import RESUME_ENTRIES, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from utils.errors import CheckpointError, ConfigError, NonFiniteLossError, format_path
from utils.logging import TensorboardWriter, close_file_handlers, get_logger


class BaseTrainer(ABC):
    """The loop, checkpoints and bookkeeping shared by every trainer.

    Args:
        config: the validated ConfigParser.
        epochs: number of training epochs.
        save_dir: root of ``models/<name>/<run_id>`` and ``log/<name>/<run_id>``.
        save_period: also keep ``checkpoint-epochN.pth`` every N epochs (0: never).
        monitor: ``"off"`` or ``"min|max <key>"`` with a key of the epoch log, e.g. ``"max val_accuracy"``.
            ``model_best.pth`` is written whenever it improves.
        early_stop: stop after this many epochs without improvement (0: never).
        tensorboard: write TensorBoard events to the log directory.
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        amp: autocast: ``"auto"`` (bf16 on CUDA, off on CPU), ``"bf16"``, ``"fp16"`` (with a grad
            scaler) or ``"off"``.
        compile: wrap the model in ``torch.compile``.
        sync_batchnorm: under DDP on CUDA, convert BatchNorm layers to ``SyncBatchNorm`` so batch statistics
            are computed over the global batch (for small per-GPU batches); without it each rank normalises
            with its own batch, as SADE's and RIDE's released code do.
        channels_last: NHWC memory layout for the model's 4D weights and image batches: faster convolutions on
            tensor-core GPUs and with oneDNN on CPU (1.1-1.35x per training step for the ResNets on CPU here).
        deterministic: ask torch for deterministic kernels (CPU runs are deterministic regardless).
        grad_clip: clip the gradient norm to this value (null: no clipping).
        log_step: batches between progress-bar/loss updates (each costs one host-device sync).
        progress_bar: show a tqdm bar per epoch (null: only when stderr is a terminal).
        test_after_training: evaluate ``model_best.pth`` (or the last weights) on the test set at the end.
        bn_stats: BatchNorm running statistics. ``"ema"``: torch's exponential average (momentum 0.1);
            ``"epoch"``: after every epoch, the statistics of that epoch's training batches recomputed with
            the final weights, for the layers that trained (precise BN, ``utils.batchnorm``); ``"auto"``
            (default): ``"epoch"`` when an epoch has too few batches for the average to forget the previous
            epoch (fewer than 44 at momentum 0.1: small datasets), otherwise ``"ema"``.
    """

    required_sections: tuple[str, ...] = ()  # config sections a subclass cannot work without
    # False for trainers whose model is (mostly) frozen and which train a few parameters beside it (LNR's
    # classifier, test-time weights): DDP refuses a module without trainable parameters, so backward_step
    # averages those gradients over the ranks instead
    wrap_in_ddp: bool = True
    # False for trainers whose model and evaluation need nothing from the training data (no class counts): when a
    # checkpoint is evaluated (``config.evaluation``) they build no training loader, so test.py runs on a machine
    # that has only the test data, in files the training loader would refuse to batch (other axes or lengths)
    evaluation_needs_training_data: bool = True
    # the metrics test.py's table shows when a test result compares methods (the model and baselines); None: all
    table_columns: tuple[str, ...] | None = None

    def __init__(self, config, epochs: int, save_dir: str = "saved", save_period: int = 0, monitor: str = "off",
                 early_stop: int = 0, tensorboard: bool = True, device: str = "auto",
                 amp: Literal["auto", "bf16", "fp16", "off"] = "auto", compile: bool = False,
                 sync_batchnorm: bool = False, channels_last: bool = True,
                 deterministic: bool = False, grad_clip: float | None = None, log_step: int = 10,
                 progress_bar: bool | None = None, test_after_training: bool = True,
                 bn_stats: Literal["auto", "ema", "epoch"] = "auto"):
        missing = [section for section in self.required_sections if section not in config]
        if missing:  # before anything is built
            raise ConfigError(f"{config.source}: {format_path((missing[0],))}: missing; {type(self).__name__} needs "
                              + " and ".join(f'"{section}"' for section in self.required_sections)
                              + (" sections" if len(self.required_sections) > 1 else " section"))
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if save_period < 0 or early_stop < 0 or log_step < 1:
            raise ValueError("save_period and early_stop must be >= 0 and log_step >= 1")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {grad_clip}")
        if bn_stats not in ("auto", "ema", "epoch"):
            raise ValueError(f'bn_stats must be "auto", "ema" or "epoch", got {bn_stats!r}')
        if config.get("init_from") and getattr(config, "resume", None) is None \
                and not Path(config["init_from"]).is_file():  # before the data is read
            raise CheckpointError(missing_init_from(config, config["init_from"]))
        self.config = config
        self.epochs, self.save_period, self.early_stop = epochs, save_period, early_stop
        self.log_step, self.grad_clip, self.test_after_training = log_step, grad_clip, test_after_training
        self.deterministic, self.use_tensorboard = deterministic, tensorboard
        self.progress_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        self.monitor_mode, self.monitor_key = _parse_monitor(monitor)
        self.monitor_best = math.inf if self.monitor_mode == "min" else -math.inf
        self.not_improved = 0
        self.start_epoch = self.last_epoch = 1
        self.device = _select_device(device)
        dist.init_distributed(self.device)
        self.amp_dtype = _amp_dtype(amp, self.device)
        self.logger = get_logger(verbose=dist.is_main_process())
        self.writer = TensorboardWriter(None, enabled=False)
        self._startup_notes: list[str] = []

        self.data_loader, self.valid_loader = self.build_data()
        self.channels_last = channels_last
        self.raw_model = self.build_model().to(self.device)
        if self.channels_last:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)  # touches 4D weights only
        # a resumed or evaluated run has its weights in the checkpoint: the initial weights are not needed (and may be
        # gone); only a new run starts from them
        if config.get("init_from") and getattr(config, "resume", None) is None:
            self.init_weights_from(config["init_from"])
        if sync_batchnorm:
            self.raw_model = self._sync_batchnorm(self.raw_model)
        self.model = self._wrap_model(self.raw_model, compile)
        # evaluation runs outside DDP, so its shards may differ in length
        if self.model is self.raw_model or not dist.is_distributed():
            self.eval_model = self.model
        else:
            self.eval_model = torch.compile(self.raw_model) if compile else self.raw_model
        self.criterion = self.build_criterion()
        self.metrics = self.build_metrics()
        self.optimizer = self.build_optimizer()
        self.lr_scheduler = self.build_scheduler()
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.epoch_bn_stats = self._choose_bn_stats(bn_stats, compile)
        self._bad_batch = torch.full((), -1, dtype=torch.long, device=self.device)
        self._check_monitor()

    # --- what the epoch log holds (checked before training) ------------------------------------------
    def train_log_keys(self) -> set[str] | None:
        """The keys ``_train_epoch`` returns, or None when a trainer does not declare them (checked after epoch 1
        then). Trainers that declare them let a monitor typo fail before anything is written."""
        return None

    def eval_log_keys(self) -> set[str] | None:
        """The keys ``evaluate`` returns (logged with a ``val_`` prefix), or None when not declared."""
        return None

    def logged_keys(self) -> set[str] | None:
        """Every key of the epoch log, or None when the trainer does not declare its keys."""
        train = self.train_log_keys()
        if train is None:
            return None
        keys = {"lr", "time_s"} | train
        if self.optimizer is not None and len(self.optimizer.param_groups) > 1:
            keys |= {f"lr_group{i}" for i in range(len(self.optimizer.param_groups))}
        if self.valid_loader is not None:
            evaluated = self.eval_log_keys()
            if evaluated is None:
                return None
            keys |= {f"val_{k}" for k in evaluated}
        return keys

    def _check_monitor(self) -> None:
        """A monitor naming a key the epoch log never holds, or ReduceLROnPlateau without a monitor, fails here, not
        after the first epoch with a run directory left behind."""
        where = f'{self.config.source}: config["trainer"]["args"]["monitor"]'
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and self.monitor_mode == "off":
            raise ConfigError(f'{self.config.source}: config["lr_scheduler"]: ReduceLROnPlateau steps on the monitored '
                              'value, but trainer.args.monitor is "off"; set it, e.g. "min val_loss", or choose '
                              "another schedule")
        if self.monitor_mode == "off":
            return
        keys = self.logged_keys()
        if keys is None or self.monitor_key in keys:
            return
        close = difflib.get_close_matches(self.monitor_key, sorted(keys), n=1, cutoff=0.6)
        hint = f' Did you mean "{self.monitor_mode} {close[0]}"?' if close else ""
        loader = f'config["data_loader"] ({self.config["data_loader"]["type"]})'
        if self.valid_loader is None:
            origin = f"there are no val_ keys: {loader} holds nothing back for validation"
        else:
            metrics = ", ".join(str(m.get("type")) for m in self.config.get("metrics", [])) or "none"
            origin = f'the val_ keys are the loss and the metrics of config["metrics"]: {metrics}'
        raise ConfigError(f'{where}: "{self.monitor_key}" is not in the epoch log; available: '
                          f"{', '.join(sorted(keys))} ({origin}).{hint}")

    # --- component builders (override to customise) -----------------------------------------------
    @property
    def cls_num_list(self) -> list[int] | None:
        return getattr(self.data_loader, "cls_num_list", None)

    @property
    def num_classes(self) -> int | None:
        counts = self.cls_num_list
        return getattr(self.data_loader, "num_classes", len(counts) if counts is not None else None)

    def build_data(self):
        """The training loader and its validation split; none when evaluating a checkpoint needs no training data."""
        if self.config.evaluation and not self.evaluation_needs_training_data:
            return None, None
        loader = self.config.build_data_loader(training=True, device=self.device)
        return loader, loader.split_validation()

    @property
    def data_channels(self) -> int | None:
        """Channels of the data's images: the loader's ``channels`` when it declares them, else those of an
        in-memory image tensor ``(N, C, H, W)`` of its dataset; None when unknown (no check then)."""
        declared = getattr(self.data_loader, "channels", None)
        if isinstance(declared, int):
            return declared
        dataset = getattr(self.data_loader, "dataset", None)
        while isinstance(dataset, torch.utils.data.Subset):
            dataset = dataset.dataset
        images = getattr(dataset, "images", None)
        return images.shape[1] if isinstance(images, torch.Tensor) and images.dim() == 4 else None

    def build_model(self) -> nn.Module:
        optional = {"num_classes": self.num_classes} if self.num_classes is not None else {}
        self._check_channels()
        return self.config.build("arch", optional=optional)

    def _check_channels(self) -> None:
        """A model whose ``in_channels`` differs from the data's would fail inside the first convolution."""
        channels = self.data_channels
        if channels is None:
            return
        from utils.registry import MODELS

        target = MODELS.get(self.config["arch"]["type"])
        given = (self.config["arch"].get("args") or {}).get("in_channels")
        if given is None:
            try:
                parameter = inspect.signature(target).parameters.get("in_channels")
            except (TypeError, ValueError):
                return
            if parameter is None or parameter.default is parameter.empty:
                return
            given = parameter.default
        if isinstance(given, int) and given != channels:
            loader = self.config["data_loader"]["type"]
            raise ConfigError(f'{self.config.source}: config["arch"]["args"]["in_channels"] is {given} but {loader} '
                              f"gives {channels}-channel images; set it to {channels}"
                              + ("" if "in_channels" in (self.config["arch"].get("args") or {}) else
                                 f" ({self.config['arch']['type']} defaults to {given})"))

    def build_criterion(self):
        if "loss" not in self.config:
            return None
        criterion = self.config.build("loss", optional={"cls_num_list": self.cls_num_list})
        return criterion.to(self.device) if isinstance(criterion, nn.Module) else criterion

    def build_metrics(self) -> list:
        return self.config.build_metrics(optional={"cls_num_list": self.cls_num_list,
                                                   "num_classes": self.num_classes})

    def parameter_groups(self):
        """What the optimizer trains: every trainable parameter (override for param groups)."""
        return [p for p in self.raw_model.parameters() if p.requires_grad]

    def build_optimizer(self):
        if "optimizer" not in self.config:
            return None
        return self.config.build("optimizer", params=self.parameter_groups())

    def build_scheduler(self):
        if "lr_scheduler" not in self.config:
            return None
        return self.config.build("lr_scheduler", optimizer=self.optimizer, optional={"total_epochs": self.epochs})

    def _sync_batchnorm(self, module: nn.Module) -> nn.Module:
        if not dist.is_distributed():
            self._startup_notes.append("sync_batchnorm: one process, nothing to synchronise")
            return module
        if self.device.type != "cuda":
            raise ConfigError(f'{self.config.source}: config["trainer"]["args"]["sync_batchnorm"]: SyncBatchNorm needs '
                              "CUDA devices (torch has no CPU implementation); set it to false for CPU runs")
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)

    def _choose_bn_stats(self, mode: str, compiled: bool) -> PreciseBatchNorm | None:
        """The per-epoch BatchNorm statistics collector, or None for torch's running average (see ``bn_stats``)."""
        layers = batchnorm_layers(self.raw_model)
        if mode == "ema" or not layers or self.data_loader is None:
            return None
        try:
            batches = len(self.data_loader)
        except TypeError:  # a loader without a length: keep torch's average
            return None
        needed = max(batches_to_forget(layer.momentum) for layer in layers)
        if mode == "auto" and (batches >= needed or compiled):
            return None
        self._startup_notes.append(
            f"BatchNorm statistics: recomputed after each epoch from its {batches} training batches with the final "
            f"weights (precise BN; bn_stats {mode!r}; an "
            f"exponential average of momentum {layers[0].momentum} needs {needed} batches to forget the previous "
            'epoch; bn_stats "ema" keeps it)')
        return PreciseBatchNorm(self.raw_model, context=self.autocast)

    def _wrap_model(self, module: nn.Module, compile_model: bool) -> nn.Module:
        """The model the training step calls: DDP under torchrun (see ``wrap_in_ddp``), then ``torch.compile``
        when asked."""
        wrapped = module
        if dist.is_distributed() and self.wrap_in_ddp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        if compile_model:
            wrapped = torch.compile(wrapped)
        return wrapped

    def init_weights_from(self, path: str) -> None:
        """Load the model weights of checkpoint ``path`` (a new run starts; optimizer etc. are fresh).

        Parameters missing from the checkpoint keep their initial values and extra ones are ignored,
        both listed in the log; a parameter whose shape differs is an error.
        """
        state = load_checkpoint(path, require=("model",))["model"]
        own = self.raw_model.state_dict()
        wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
        if wrong:
            raise CheckpointError(f"init_from {path}: shapes differ for {', '.join(wrong[:5])}; the checkpoint "
                                  "was trained with a different architecture or number of classes")
        if not set(state) & set(own):
            raise CheckpointError(f"init_from {path}: no parameter names in common with "
                                  f"{type(self.raw_model).__name__}")
        result = self.raw_model.load_state_dict(state, strict=False)
        message = f"Initialised from {path}"
        if result.missing_keys:
            message += (f"; kept initial values for {len(result.missing_keys)} tensors not in it "
                        f"({', '.join(result.missing_keys[:4])}...)")
        if result.unexpected_keys:
            message += f"; ignored {len(result.unexpected_keys)} of its tensors"
        self._startup_notes.append(message)  # printed (and written to the run's log file) when the run opens

    # --- what subclasses implement ----------------------------------------------------------------
    @abstractmethod
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; return scalars to log (e.g. ``{"loss": 0.7}``)."""

    def evaluate(self, loader) -> dict[str, Any]:
        """Score the model on ``loader``; return named scalars. Trainers with validation implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate()")

    def _valid_epoch(self, epoch: int) -> dict[str, Any]:
        return self.evaluate(self.valid_loader)

    def configure_inference(self, preference: list[float] | None = None,
                            weights: list[float] | None = None) -> list[float] | None:
        """Set how a multi-expert model combines its experts at inference; returns the preference in use.

        Models without experts accept neither; trainers with experts (hypernetwork, SADE) override this.
        """
        if preference is not None or weights is not None:
            raise ConfigError(f"{self.config['arch']['type']} has no experts: --preference and --weights apply to "
                              "multi-expert (SADE / hypernetwork) checkpoints only")
        return None

    def inference_settings(self) -> dict[str, Any] | None:
        """How a multi-expert model combines its experts at inference (weights, preference and where each comes
        from), printed above the evaluation scripts' tables; None for models without experts."""
        return None

    def figures(self, title: str = "") -> dict[str, Any]:
        """Matplotlib figures describing the last evaluation (tag -> figure); none by default."""
        return {}

    def trainer_state(self) -> dict[str, Any]:
        """Extra state a subclass keeps in checkpoints (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_trainer_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore what :meth:`trainer_state` returned."""

    # --- helpers for subclasses -------------------------------------------------------------------
    def autocast(self):
        """Autocast context for forward passes (bf16 on CUDA by default, disabled on CPU)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward_step(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Backward, clip, optimizer step and zero_grad; records a non-finite ``loss`` without syncing.

        The check itself happens in :meth:`check_finite` (every ``log_step`` batches and at the end of
        the epoch), so the device never waits for the host inside the step.
        """
        bad = ~torch.isfinite(loss.detach())
        self._bad_batch = torch.where(bad & (self._bad_batch < 0), torch.full_like(self._bad_batch, batch_idx),
                                      self._bad_batch)
        self.grad_scaler.scale(loss).backward()
        if not self.wrap_in_ddp:  # no-op in one process
            dist.average_gradients(p for group in self.optimizer.param_groups for p in group["params"])
        if self.grad_clip is not None:
            self.grad_scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.grad_clip)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def check_finite(self, epoch: int) -> None:
        """Raise NonFiniteLossError if a loss since the start of the epoch was NaN or Inf."""
        bad = int(self._bad_batch)
        if bad >= 0:
            latest = self.config.model_dir / "latest.pth"
            kept = (f"the last good checkpoint ({latest}) is intact" if latest.exists()
                    else "no checkpoint had been written yet")
            raise NonFiniteLossError(
                f"the training loss became non-finite (NaN or Inf) at epoch {epoch}, batch {bad}. Training "
                f"stopped; {kept}. Try a lower learning rate, gradient clipping (trainer.args.grad_clip) or "
                'amp "off"')

    def _stopped(self, epoch: int) -> str:
        latest = self.config.model_dir / "latest.pth"
        kept = (f"the last good checkpoint ({latest}) is intact" if latest.exists()
                else "no checkpoint had been written yet")
        return f"Training stopped without saving epoch {epoch}; {kept}"

    def _check_finite_weights(self, epoch: int) -> None:
        """Raise NonFiniteLossError when a floating-point weight or buffer is NaN or Inf (one sync per epoch):
        a finite loss does not make the weights saved after it finite."""
        tensors = [(name, t) for name, t in self.raw_model.state_dict().items() if t.is_floating_point()]
        if not tensors:
            return
        finite = torch.stack([torch.isfinite(t).all() for _, t in tensors])
        if not bool(finite.all()):
            bad = [name for (name, _), ok in zip(tensors, finite.tolist()) if not ok]
            raise NonFiniteLossError(
                f"the weights became non-finite (NaN or Inf) in epoch {epoch}: {', '.join(bad[:4])}"
                f"{' ...' if len(bad) > 4 else ''}. {self._stopped(epoch)}. Try a lower learning rate, gradient "
                'clipping (trainer.args.grad_clip) or amp "off"')

    def _check_finite_log(self, epoch: int, log: dict[str, Any]) -> None:
        """Raise NonFiniteLossError when a logged value (a validation loss or metric) is NaN or Inf."""
        bad = [k for k, v in log.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(
                f"{', '.join(f'{k} {log[k]}' for k in bad)} at epoch {epoch}: a model whose scores are not finite is "
                f"not saved. {self._stopped(epoch)}. Try a lower learning rate, gradient clipping "
                '(trainer.args.grad_clip) or amp "off"')

    def _learning_rates(self) -> dict[str, float]:
        """``{"lr": rate}``, plus ``lr_group<i>`` for each parameter group when there are several."""
        if self.optimizer is None:
            return {"lr": None}
        groups = self.optimizer.param_groups
        rates = {"lr": groups[0]["lr"]}
        if len(groups) > 1:
            rates.update({f"lr_group{i}": group["lr"] for i, group in enumerate(groups)})
        return rates

    def progress(self, loader, epoch: int, desc: str = "train"):
        """Iterate ``loader`` with a tqdm bar when enabled (rank 0 only)."""
        return tqdm(loader, desc=f"{desc} {epoch}/{self.epochs}", leave=False, dynamic_ncols=True,
                    disable=not (self.progress_bar and dist.is_main_process()))

    def to_device(self, *tensors: torch.Tensor):
        """``tensors`` on the trainer's device (non-blocking: loaders pin memory on CUDA machines); image
        batches (4D floating point) in channels-last layout when the model is."""
        moved = tuple(t.to(self.device, non_blocking=True) for t in tensors)
        if self.channels_last:
            moved = tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and t.is_floating_point()
                          else t for t in moved)
        return moved

    # --- the loop ---------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train from ``start_epoch`` to ``epochs``; returns the last epoch's log."""
        self._open_run()
        log: dict[str, Any] = {}
        try:
            for epoch in range(self.start_epoch, self.epochs + 1):
                started = time.perf_counter()
                self._set_sampler_epoch(epoch)
                self._bad_batch.fill_(-1)
                self.raw_model.train()
                trained_with = self._learning_rates()  # the scheduler steps after the epoch: log what it trained with
                if self.epoch_bn_stats is not None:
                    self.epoch_bn_stats.start()
                try:
                    log = {"epoch": epoch, **self._train_epoch(epoch)}
                    self.check_finite(epoch)
                finally:
                    if self.epoch_bn_stats is not None:  # before the ranks agree on rank 0's buffers
                        self.epoch_bn_stats.finish(write=sys.exc_info()[0] is None)
                # DDP syncs buffers (BatchNorm statistics) only before training forwards: make the ranks agree
                # before validation and saving (the checkpoint holds rank 0's)
                dist.broadcast_buffers(self.raw_model)
                self._check_finite_weights(epoch)
                if self.valid_loader is not None:
                    log.update({f"val_{k}": v for k, v in self._valid_epoch(epoch).items()})
                self._check_finite_log(epoch, log)
                improved = self._update_monitor(log)
                self._step_scheduler(log)
                log.update(trained_with)
                log["time_s"] = round(time.perf_counter() - started, 2)
                self._log_epoch(log, improved)
                self._save(epoch, improved)
                if self.early_stop and self.not_improved >= self.early_stop:
                    self.logger.info(f"No improvement of {self.monitor_key} for {self.early_stop} epochs: "
                                     "stopping early")
                    break
        except NonFiniteLossError as err:
            self.logger.error(str(err))
            raise
        finally:
            self.writer.flush()  # closed by close(), so the final test can still add figures
        self.last_epoch = log.get("epoch", self.start_epoch - 1)
        return log

    def _open_run(self) -> None:
        if dist.is_main_process():
            self.logger = get_logger(log_file=self.config.log_dir / "train.log")
            self.writer = TensorboardWriter(self.config.log_dir, enabled=self.use_tensorboard)
        self.logger.info(f"Run {self.config.name}/{self.config.run_id}: checkpoints in {self.config.model_dir}, "
                         f"logs in {self.config.log_dir}")
        self.logger.info(f"Model {self.config['arch']['type']}: "
                         f"{sum(p.numel() for p in self.raw_model.parameters() if p.requires_grad):,} trainable "
                         f"parameters; device {self.device}"
                         + (f" x {dist.world_size()} processes" if dist.is_distributed() else "")
                         + (f"; autocast {self.amp_dtype}" if self.amp_dtype else ""))
        for note in self._startup_notes:
            self.logger.info(note)
        if self.monitor_mode != "off":
            source = getattr(self.data_loader, "validation_source", "the validation loader")
            self.logger.info(f"Model selection: {self.monitor_mode} {self.monitor_key} on {source}")
        if self.start_epoch > self.epochs:
            self.logger.info(f"Checkpoint is at epoch {self.start_epoch - 1} of {self.epochs}: nothing left to train")

    def _set_sampler_epoch(self, epoch: int) -> None:
        sampler = getattr(self.data_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def _update_monitor(self, log: dict[str, Any]) -> bool:
        if self.monitor_mode == "off":
            return False
        if self.monitor_key not in log:
            raise ConfigError(f'config["trainer"]["args"]["monitor"]: "{self.monitor_key}" is not in the epoch '
                              f"log; available: {', '.join(k for k in log if k != 'epoch')}")
        value = log[self.monitor_key]
        improved = value is not None and math.isfinite(value) and (
            value < self.monitor_best if self.monitor_mode == "min" else value > self.monitor_best)
        if improved:
            self.monitor_best, self.not_improved = value, 0
        else:
            self.not_improved += 1
        return improved

    def _step_scheduler(self, log: dict[str, Any]) -> None:
        if self.lr_scheduler is None:
            return
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if self.monitor_mode == "off" or log.get(self.monitor_key) is None:
                raise ConfigError('config["lr_scheduler"]: ReduceLROnPlateau needs trainer.args.monitor to name '
                                  "a logged value")
            self.lr_scheduler.step(log[self.monitor_key])
        else:
            self.lr_scheduler.step()

    def _log_epoch(self, log: dict[str, Any], improved: bool) -> None:
        parts = []
        for key, value in log.items():
            if key == "epoch":
                continue
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        self.logger.info(f"epoch {log['epoch']}/{self.epochs}: " + ", ".join(parts) + (" *" if improved else ""))
        self.writer.scalars({k: v for k, v in log.items() if k != "epoch"}, log["epoch"])

    # --- checkpoints ------------------------------------------------------------------------------
    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """Everything needed to continue the run exactly (all weights_only-loadable types)."""
        return {
            "epoch": epoch,
            "arch": self.config["arch"]["type"],
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "grad_scaler": self.grad_scaler.state_dict(),
            "rng": rng_state(),
            "monitor_best": self.monitor_best,
            "not_improved": self.not_improved,
            "world_size": dist.world_size(),
            "run_id": self.config.run_id,
            "config": self.config.config,
            "trainer_state": self.trainer_state(),
        }

    def _save(self, epoch: int, improved: bool) -> None:
        if not dist.is_main_process():
            dist.barrier()
            return
        state = self.checkpoint_state(epoch)
        model_dir = self.config.model_dir
        # best before latest: a kill between the two writes then repeats this epoch on resume (writing the same
        # best again), where the other order would resume past it with monitor_best set and never write it
        if improved:
            save_checkpoint(state, model_dir / "model_best.pth")
            self.logger.info(f"Saved model_best.pth ({self.monitor_key} {self.monitor_best:.4g})")
        save_checkpoint(state, model_dir / "latest.pth")
        if self.save_period and epoch % self.save_period == 0:
            save_checkpoint(state, model_dir / f"checkpoint-epoch{epoch}.pth")
        dist.barrier()

    def resume(self, path: str | Path) -> None:
        """Continue the run saved in checkpoint ``path``: weights, optimizer, scheduler, RNG, counters."""
        state = load_checkpoint(path, require=RESUME_ENTRIES)
        if state.get("arch") != self.config["arch"]["type"]:
            raise CheckpointError(f"{path} holds a {state.get('arch')} model but the config builds "
                                  f"{self.config['arch']['type']}")
        if state.get("world_size", 1) != dist.world_size():
            self.logger.warning(f"{path} was written with {state.get('world_size')} processes, resuming with "
                                f"{dist.world_size()}: the data order will differ from an uninterrupted run")
        try:
            self.raw_model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise weights_mismatch(path, self.raw_model, state["model"], err) from err
        if self.optimizer is not None and state.get("optimizer") is not None:
            self._load_optimizer(path, state["optimizer"])
            self._warn_if_optimizer_changed(path, state.get("config") or {})
        for key, target in (("lr_scheduler", self.lr_scheduler), ("grad_scaler", self.grad_scaler)):
            if target is not None and state.get(key):
                try:
                    target.load_state_dict(state[key])
                except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
                    raise CheckpointError(f"{path}: the checkpoint's '{key}' entry does not fit the configured "
                                          f"{type(target).__name__} ({type(err).__name__}: {err})") from err
        self.monitor_best = state["monitor_best"]
        self.not_improved = state.get("not_improved", 0)
        self.start_epoch = state["epoch"] + 1
        self.load_trainer_state(state.get("trainer_state") or {})
        set_rng_state(state["rng"])
        self.logger.info(f"Resumed from {path} (epoch {state['epoch']})")

    # optimizer state entries that hold one value per parameter element, so must have the parameter's shape
    _PER_ELEMENT_STATE = frozenset({"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg",
                                    "grad_avg", "acc_delta", "sum", "prev", "step_size", "ax", "exp_inf"})

    def _load_optimizer(self, path: str | Path, saved: dict[str, Any]) -> None:
        """Restore the optimizer's state, refusing one whose groups or buffers do not fit the parameters (torch
        would accept buffers of another shape and fail at the first step of training)."""
        groups = saved.get("param_groups")
        own = self.optimizer.param_groups
        if not isinstance(groups, list) or not isinstance(saved.get("state"), dict) or not all(
                isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
            raise CheckpointError(f"{path}: the checkpoint's 'optimizer' entry is not an optimizer state (it needs "
                                  "'state' and a list of 'param_groups')")
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in own]:
            raise CheckpointError(f"{path}: the checkpoint's optimizer has {len(groups)} parameter group(s) of "
                                  f"{[len(g['params']) for g in groups]} parameters, the configured one "
                                  f"{len(own)} of {[len(g['params']) for g in own]}; the checkpoint belongs to "
                                  "another model or trainer")
        try:
            self.optimizer.load_state_dict(saved)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{path}: the checkpoint's 'optimizer' entry does not fit the configured "
                                  f"{type(self.optimizer).__name__} ({type(err).__name__}: {err})") from err
        for group_index, group in enumerate(self.optimizer.param_groups):
            for param_index, param in enumerate(group["params"]):
                for name, value in self.optimizer.state.get(param, {}).items():
                    if name in self._PER_ELEMENT_STATE and isinstance(value, torch.Tensor) \
                            and value.shape != param.shape:
                        raise CheckpointError(
                            f"{path}: optimizer state '{name}' of parameter {param_index} in group {group_index} has "
                            f"shape {tuple(value.shape)}, the parameter {tuple(param.shape)}; the checkpoint is "
                            "damaged or belongs to another model")

    def _warn_if_optimizer_changed(self, path: str | Path, saved_config: dict[str, Any]) -> None:
        """Resuming restores the optimizer's and scheduler's state, learning rates included: say so when the
        config asks for other optimizer or scheduler settings than the checkpoint's, instead of ignoring them."""
        changed = [section for section in ("optimizer", "lr_scheduler")
                   if section in saved_config and saved_config.get(section) != self.config.config.get(section)]
        if changed:
            message = (f"{path}: config[{changed[0]!r}] differs from the checkpoint's; resuming continues with the "
                       "checkpoint's optimizer and scheduler state (learning rates included). To train with new "
                       "settings, start a new run from these weights with --init-from")
            self.logger.warning(message)
            self._startup_notes.append(message)  # repeated in the run's log file once it exists

    def load_weights(self, path: str | Path) -> dict[str, Any]:
        """Load only the model weights (and trainer state) of ``path`` for evaluation; returns the checkpoint."""
        state = load_checkpoint(path, require=("model",))
        try:
            self.raw_model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise weights_mismatch(path, self.raw_model, state["model"], err) from err
        self.load_trainer_state(state.get("trainer_state") or {})
        return state

    # --- testing ----------------------------------------------------------------------------------
    def test(self, output_dir: Path | None = None, data_dir: str | Path | None = None) -> dict[str, Any]:
        """Evaluate the current weights on the test split; returns ``{"metrics": ..., "n": N}``.

        ``output_dir`` and ``data_dir`` are for trainers that write per-sample outputs or read data other than
        their loader's (the NMR denoiser); here the loader already reads ``test.py --data_dir`` through the
        config, and nothing is written.
        """
        if data_dir is not None and (self.config["data_loader"].get("args") or {}).get("data_dir") != str(data_dir):
            raise ConfigError(f"--data_dir: the {self.config['data_loader']['type']} data loader does not read a data "
                              "directory; its data comes from the config")
        loader = self.config.build_data_loader(training=False, device=self.device)
        metrics = self.evaluate(loader)
        return {"metrics": metrics, "n": len(loader.dataset)}

    def close(self) -> None:
        self.writer.close()
        close_file_handlers(self.logger)
        release = getattr(self.config, "release_run_dir", None)
        if release is not None:
            release()


def missing_init_from(config, path: str) -> str:
    """The message for an ``init_from`` checkpoint that does not exist: it is an earlier run's output, and when its
    path is ``<save_dir>/models/<name>/<run_id>/<file>`` with a config of that name under configs/, the command
    that writes it."""
    from utils.cli import ROOT, display_path, script_command

    where = f'{config.source}: config["init_from"] (--init-from)'
    first = ("init_from names the weights of an earlier run (stage 1 of a two-stage method), which must have "
             "finished first")
    parts = Path(path).parts
    if len(parts) >= 4 and "models" in parts[:-3]:
        at = len(parts) - 1 - parts[::-1].index("models")
        if at + 3 == len(parts) - 1:
            save_dir, name, run_id = Path(*parts[:at]) if at else Path("."), parts[at + 1], parts[at + 2]
            found = _config_named(name, ROOT / "configs")
            if found is not None:
                args = ["-c", display_path(found[0]), "--run-id", run_id]
                if Path(found[1]) != save_dir:
                    args += ["--set", f"trainer.args.save_dir={save_dir}"]
                return (f"{where}: checkpoint {path} does not exist. {first}: run it with "
                        f"{script_command('train.py', *args)}, then this config again (or point init_from at an "
                        "existing checkpoint)")
            return (f"{where}: checkpoint {path} does not exist. {first}: train the run {name!r} with --run-id "
                    f"{run_id} (save_dir {save_dir}) first, or point init_from at an existing checkpoint")
    return f"{where}: checkpoint {path} does not exist. {first}, or point init_from at an existing checkpoint"


def _config_named(name: str, root: Path) -> tuple[Path, str] | None:
    """The config file under ``root`` whose ``name`` is ``name`` and its save_dir, or None (read only in this error
    path: about a hundred small files)."""
    import json

    for candidate in sorted(root.rglob("*.json")):
        try:
            values = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(values, dict) and values.get("name") == name:
            trainer = values.get("trainer") if isinstance(values.get("trainer"), dict) else {}
            return candidate, str((trainer.get("args") or {}).get("save_dir", "saved"))
    return None


def _parse_monitor(monitor: str) -> tuple[str, str | None]:
    if monitor == "off":
        return "off", None
    parts = monitor.split()
    if len(parts) != 2 or parts[0] not in ("min", "max"):
        raise ValueError(f'monitor must be "off" or "min <key>" / "max <key>" (e.g. "max val_accuracy"), '
                         f"got {monitor!r}")
    return parts[0], parts[1]


def _select_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank())
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from err
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use -d cpu")
        if chosen.index is None:
            chosen = torch.device("cuda", dist.local_rank())
        if chosen.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif chosen.type != "cpu":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return chosen


def _amp_dtype(amp: str, device: torch.device):
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16


def weights_mismatch(path, model: torch.nn.Module, weights: dict, err: RuntimeError) -> CheckpointError:
    """One message for weights that do not load into ``model``: which tensors are missing or unexpected (a
    few names), else torch's first line (shapes); a model that knows its earlier forms (``weights_hint(missing,
    unexpected)``, e.g. the hypernetwork's) adds the setting that builds the checkpoint's."""
    own = set(model.state_dict())
    given = set(weights) if isinstance(weights, dict) else set()
    missing, unexpected = sorted(own - given), sorted(given - own)

    def few(names):
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    if missing or unexpected:
        detail = "; ".join(part for part in (f"missing {few(missing)}" if missing else "",
                                             f"unexpected {few(unexpected)}" if unexpected else "") if part)
    else:
        lines = str(err).splitlines()
        detail = lines[1].strip() if len(lines) > 1 else lines[0]
    hint = model.weights_hint(missing, unexpected) if hasattr(model, "weights_hint") else ""
    return CheckpointError(f"{path}: weights do not fit the model: {detail}{hint and f' ({hint})'}")


__all__ = ["BaseTrainer", "BaseDataLoader"]
