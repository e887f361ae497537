"""NMRDenoiseTrainer: a 1D U-Net trained on ladders of repeated acquisitions (the NMR plan, §2–§7).

Each batch holds all levels of its samples. On the device, the batch is aligned, rescaled, masked and fused
into a pseudo-ground truth (data_loader/nmr/fusion.py); the model denoises level 0 and, for the
self-supervised terms, a set of other levels of the same samples, all in one forward pass.

Phase A (``phase_a_epochs``): the supervised terms plus consistency between ``phase_a_levels`` randomly chosen
levels k > 0. Phase B (the remaining epochs): ``phase_b_weights`` raise consistency and the residual-ratio
constraint, and the SNR curriculum starts with the cleanest pair (K−1, K) and adds lower levels until
level 0 joins; the peak weight and the curvature weight move linearly to ``peak_weight_final`` and
``curv_final`` over phase B.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from base.base_trainer import BaseTrainer
from data_loader.nmr.dataset import check_ladders
from data_loader.nmr.fusion import Ladder, LadderError, ladder_problems, prepare_ladder
from data_loader.nmr.io import read_directory, read_npy, read_npz
from model.nmr_loss import NMRDenoiseLoss
from model.nmr_metrics import evaluate_methods, mean_metrics, spectrum_metrics
from model.unet1d import UNet1D
from utils import dist
from utils.errors import ConfigError, DataError
from utils.plots import save_figure, spectrum_figure
from utils.registry import TRAINERS
from utils.safe_paths import path_inside


def _ladder_dataset(dataset):
    """The LadderDataset behind a loader's dataset (through a validation Subset, whose items carry the full
    dataset's index)."""
    return dataset.dataset if hasattr(dataset, "indices") else dataset


def _dataset_names(dataset) -> list[str]:
    """The names of a ladder dataset's items, indexed as its items' ``index``."""
    return _ladder_dataset(dataset).names


def _without(windows: torch.Tensor, names: list[str] | None,
             dropped: set[int]) -> tuple[torch.Tensor, list[str] | None]:
    """The cropped ladders of a batch and their names without those at ``dropped``; a DataError when none is left."""
    keep = [i for i in range(len(windows)) if i not in dropped]
    if not keep:
        raise DataError("no ladder of this training window has a peak (train_crop cut them all out); "
                        "raise train_crop's minimum length")
    return windows[keep], None if names is None else [names[i] for i in keep]


# logged each validation epoch (test.py reports every key of model/nmr_metrics.py)
REPORTED = ("snr_in", "snr_out", "snr_gain", "snr_p95_gain", "peak_f1", "peak_shift", "height_rel_err",
            "fwhm_rel_err", "integral_rel_err", "l1", "l2")
# the columns of test.py's (and train.py's final test's) table, one row per method; the JSON holds every metric
TABLE_COLUMNS = ("l2", "snr_gain", "peak_f1", "peak_shift", "height_ratio", "integral_rel_err")
REFERENCES = {"clean": "the clean spectra",
              "pseudo_ground_truth": "a pseudo-ground truth fused from each ladder's higher levels"}


@TRAINERS.register()
class NMRDenoiseTrainer(BaseTrainer):
    """Multi-SNR NMR denoising with fused pseudo-ground truth and self-supervised consistency.

    Args:
        snr_ratio: the configured T (SNR gain per level); used by the residual-ratio term and checked against
            the T̂ measured from the data (a warning when they differ by more than 20%).
        phase_a_epochs: epochs of phase A; the rest of ``epochs`` is phase B (0: phase B only).
        phase_a_levels: levels k > 0 drawn per batch for consistency in phase A (the plan: 1–2).
        phase_b_weights: loss weights that change in phase B (e.g. ``{"cons": 1.0, "ratio": 0.4}``).
        curriculum: phase B adds levels from the top down (False: all levels from its first epoch).
        curriculum_fraction: share of phase B over which the lowest level goes from K−1 to 0.
        peak_weight_final, curv_final: peak weight and curvature weight reached at the end of phase B
            (null: unchanged).
        weighting, gamma, max_share, include_input: the pseudo-ground truth (see ``fusion_weights``):
            ``inverse_variance`` (default), ``snr`` (w ∝ SNR^γ, the plan) or ``top_only``.
        align, rescale: the preprocessing steps of §2.1 and §2.2 (off for the ablations).
        anchor_peaks, anchor_window: local alignment refinement in windows around that many strong peaks
            (0: one global shift per level).
        train_crop: ``[shortest, longest]`` points: each training batch is cut to a random length in that range
            (a multiple of 16) at a random offset, so the model sees varied lengths and more ladders per second
            for the same compute; null: whole spectra. Evaluation always uses whole spectra.
        tolerance_ppm: peak-matching tolerance in evaluation (points are used when the data has no ppm axis).
        figure_count: spectra drawn in TensorBoard each validation and in ``test.py``'s figure.
    """

    required_sections = ("loss", "optimizer")
    evaluation_needs_training_data = False   # the U-Net needs no class counts; test() reads its own data

    def __init__(self, config, snr_ratio: float = 2.0, phase_a_epochs: int = 0, phase_a_levels: int = 2,
                 phase_b_weights: dict[str, float] | None = None, curriculum: bool = True,
                 curriculum_fraction: float = 0.5, peak_weight_final: float | None = None,
                 curv_final: float | None = None,
                 weighting: Literal["inverse_variance", "snr", "top_only"] = "inverse_variance", gamma: float = 1.0,
                 max_share: float = 0.9, include_input: bool = False, align: bool = True, anchor_peaks: int = 0,
                 anchor_window: int = 64, rescale: bool = True, train_crop: list[int] | None = None,
                 tolerance_ppm: float = 0.01, figure_count: int = 3, **kwargs):
        if not snr_ratio > 1:
            raise ValueError(f"snr_ratio (T) must be > 1, got {snr_ratio}")
        if anchor_peaks < 0 or anchor_window < 8:
            raise ValueError(f"anchor_peaks must be >= 0 and anchor_window >= 8, got {anchor_peaks}, {anchor_window}")
        if phase_a_epochs < 0 or phase_a_levels < 1 or not 0 < curriculum_fraction <= 1:
            raise ValueError("phase_a_epochs must be >= 0, phase_a_levels >= 1, curriculum_fraction in (0, 1]")
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {max_share}")
        if curv_final is not None and not curv_final >= 0:
            raise ValueError(f"curv_final (the final baseline-curvature weight) must be >= 0 or null, got {curv_final}")
        if peak_weight_final is not None and not peak_weight_final >= 1:
            raise ValueError(f"peak_weight_final (the final peak weight) must be >= 1 or null, got {peak_weight_final}")
        if train_crop is not None and (len(train_crop) != 2 or not 64 <= train_crop[0] <= train_crop[1]):
            raise ValueError(f"train_crop must be [shortest, longest] with 64 <= shortest <= longest, got {train_crop}")
        super().__init__(config, **kwargs)
        if phase_a_epochs > self.epochs:
            raise ValueError(f"phase_a_epochs ({phase_a_epochs}) exceeds epochs ({self.epochs})")
        if not isinstance(self.criterion, NMRDenoiseLoss):
            raise ConfigError(f'{config.source}: config["loss"]: NMRDenoiseTrainer needs "loss": '
                              f'{{"type": "NMRDenoiseLoss"}}, got {config["loss"]["type"]}')
        self.snr_ratio, self.phase_a_epochs, self.phase_a_levels = snr_ratio, phase_a_epochs, phase_a_levels
        self.phase_b_weights = NMRDenoiseLoss.merged_weights(phase_b_weights, self.criterion.weights)
        self.curriculum, self.curriculum_fraction = curriculum, curriculum_fraction
        self.peak_weight_final, self.curv_final = peak_weight_final, curv_final
        self.fusion = dict(weighting=weighting, gamma=gamma, max_share=max_share, include_input=include_input,
                           align=align, anchor_peaks=anchor_peaks, anchor_window=anchor_window, rescale=rescale)
        self.tolerance_ppm, self.figure_count = tolerance_ppm, figure_count
        self.train_crop = None if train_crop is None else (int(train_crop[0]), int(train_crop[1]))
        self._ratio_checked = False
        self._shown: list[dict[str, Any]] = []   # spectra kept from the last evaluation for figures
        self._reference_kind = "none"

    # --- the schedule -----------------------------------------------------------------------------
    def phase(self, epoch: int) -> str:
        return "A" if epoch <= self.phase_a_epochs else "B"

    def _phase_b_progress(self, epoch: int) -> float:
        """0 at the first epoch of phase B, 1 at its last."""
        length = self.epochs - self.phase_a_epochs
        return 1.0 if length <= 1 else (epoch - self.phase_a_epochs - 1) / (length - 1)

    def loss_settings(self, epoch: int) -> tuple[dict[str, float], float]:
        """Loss weights and peak weight used at ``epoch``."""
        base, peak = self.criterion.weights, self.criterion.peak_weight
        if self.phase(epoch) == "A":
            return dict(base), peak
        weights, progress = dict(self.phase_b_weights), self._phase_b_progress(epoch)
        if self.curv_final is not None:
            weights["curv"] += progress * (self.curv_final - weights["curv"])
        if self.peak_weight_final is not None:
            peak += progress * (self.peak_weight_final - peak)
        return weights, peak

    def levels_for(self, epoch: int, levels: int) -> list[int]:
        """Levels whose outputs enter the consistency and ratio terms at ``epoch`` (sorted; K = levels − 1)."""
        top = levels - 1
        if self.phase(epoch) == "A":
            count = min(self.phase_a_levels, top)
            return sorted((torch.randperm(top)[:count] + 1).tolist())
        if not self.curriculum:
            return list(range(levels))
        progress = min(1.0, self._phase_b_progress(epoch) / self.curriculum_fraction)
        lowest = round((top - 1) * (1 - progress))
        return list(range(lowest, levels))

    # --- training ---------------------------------------------------------------------------------
    def prepare(self, spectra: torch.Tensor, names: list[str] | None = None) -> Ladder:
        """The prepared batch; a ladder that cannot be prepared raises a DataError naming it (``names``: what
        to call the ladders of the batch, e.g. their files)."""
        with torch.no_grad():
            try:
                return prepare_ladder(spectra, **self.fusion)
            except LadderError as err:
                if names is None:
                    raise
                raise DataError(f"{names[err.index]}: this ladder {err.problem}") from None

    def _check_ratio(self, ladder: Ladder) -> None:
        """Warn once when the T measured from the noise levels disagrees with the configured T."""
        self._ratio_checked = True
        measured = float(ladder.estimated_ratio().median())
        if abs(math.log(measured / self.snr_ratio)) > math.log(1.2):
            self.logger.warning(f"The data's noise levels give T ≈ {measured:.2f} per level (median of σ_k/σ_k+1), "
                                f"but trainer.args.snr_ratio is {self.snr_ratio}. Set snr_ratio to the measured "
                                "value if the levels are what you think; cumulative sums of the same scans also "
                                "lower the apparent T")
        else:
            self.logger.info(f"Measured T ≈ {measured:.2f} per level (configured {self.snr_ratio})")

    def crop(self, spectra: torch.Tensor) -> torch.Tensor:
        """A random window ``(B, K+1, L')`` of a training batch ``(B, K+1, L)``, L' in ``train_crop`` (a multiple of
        16, at most L), the same window for every ladder and level of the batch; the batch itself without it.

        The window holds the tallest point of the first ladder's top level, so the batch keeps at least one peak
        (a window of sparse spectra could otherwise hold none, and leave the peak mask of every ladder empty).
        """
        if self.train_crop is None:
            return spectra
        length = spectra.shape[-1]
        low, high = min(self.train_crop[0], length) // 16, min(self.train_crop[1], length) // 16
        size = 16 * int(torch.randint(max(low, 1), max(high, 1) + 1, ()))
        if size >= length:
            return spectra
        top = int(spectra[0, -1].argmax())
        first, last = max(0, top - size + 1), min(top, length - size)
        start = first + int(torch.randint(0, last - first + 1, ()))
        return spectra[..., start:start + size]

    def with_peaks(self, windows: torch.Tensor, names: list[str] | None) -> tuple[torch.Tensor, list[str] | None]:
        """The cropped ladders of a batch that still hold a peak (a window of a sparse spectrum can miss every
        line of it: nothing to rescale on or to learn from), and their names. Whole ladders are checked when the
        data is loaded; only crops can lose their peaks, so only they are dropped, never silently a file."""
        problems = ladder_problems(windows, need_peaks=self.fusion["rescale"])
        if not problems:
            return windows, names
        return _without(windows, names, {index for index, _ in problems})

    def prepare_windows(self, windows: torch.Tensor, names: list[str] | None) -> Ladder:
        """The prepared batch of cropped ladders, without the windows that lost their peaks: those :meth:`with_peaks`
        finds, and those that lose them only when prepared (aligning a level moves its top level by a fraction of a
        point, which can lower a marginal narrow peak of a window below the threshold)."""
        windows, names = self.with_peaks(windows, names)
        while True:   # each failed pass drops a window, so this ends
            try:
                with torch.no_grad():
                    return prepare_ladder(windows, **self.fusion)
            except LadderError as err:   # whole ladders were checked when loaded: only the window can be at fault
                windows, names = _without(windows, names, {err.index})

    def training_loss(self, spectra: torch.Tensor, epoch: int,
                      names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The loss terms of one batch of ladders ``(B, K+1, L)`` already on the device (``names``: theirs, for
        messages); a batch cropped by ``train_crop`` keeps only the windows that hold a peak
        (:meth:`prepare_windows`)."""
        ladder = self.prepare(spectra, names) if self.train_crop is None else self.prepare_windows(spectra, names)
        if not self._ratio_checked:
            self._check_ratio(ladder)
        batch, levels, length = ladder.levels.shape
        unit = UNet1D.amplitude(ladder.levels[:, 0])             # per-sample scale: terms are scale-free
        x = ladder.levels / unit[..., None]
        chosen = self.levels_for(epoch, levels)
        run = [0] + [k for k in chosen if k != 0]               # level 0 always, for the supervised terms
        with self.autocast():
            y = self.model(x[:, run].reshape(batch * len(run), length)).float().view(batch, len(run), length)
        order = [run.index(k) for k in chosen]
        weights, peak_weight = self.loss_settings(epoch)
        return self.criterion(y[:, 0], ladder.target / unit, ladder.peaks, ladder.baseline,
                              inputs=x[:, chosen], outputs=y[:, order], levels=chosen, snr_ratio=self.snr_ratio,
                              weights=weights, peak_weight=peak_weight)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        if hasattr(self.data_loader, "set_epoch"):
            self.data_loader.set_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        bar = self.progress(self.data_loader, epoch)
        names = _dataset_names(self.data_loader.dataset)
        for batch_idx, (spectra, _, index) in enumerate(bar):
            spectra = self.crop(self.to_device(spectra)[0])
            terms = self.training_loss(spectra, epoch, [names[i] for i in index.tolist()])
            self.backward_step(terms["loss"], batch_idx)
            for key, value in terms.items():
                sums[key] = sums.get(key, torch.zeros((), device=self.device)) + value.detach() * len(spectra)
            seen += len(spectra)
            if batch_idx % self.log_step == 0:
                self.check_finite(epoch)
                bar.set_postfix(loss=f"{terms['loss'].item():.4f}")
        log = {key: float(dist.mean_over_ranks(total, seen)) for key, total in sums.items()}
        return {**log, "phase": self.phase(epoch)}


    # --- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, spectra: torch.Tensor) -> torch.Tensor:
        """Denoised spectra ``(B, L)`` float32 on the CPU for input spectra ``(B, L)`` (any device, any scale)."""
        self.raw_model.eval()
        with self.autocast():
            out = self.raw_model.denoise(spectra.to(self.device).float())
        return out.float().cpu()

    def references(self, spectra: torch.Tensor, clean: torch.Tensor,
                   names: list[str] | None = None) -> tuple[torch.Tensor, str]:
        """What the outputs are scored against: ``clean`` when every row has it, else the pseudo-ground truth."""
        if not torch.isnan(clean).any():
            return clean.float(), "clean"
        if spectra.shape[1] < 2:
            raise DataError("these spectra have neither a clean reference nor higher levels to fuse one from; "
                            "they can be denoised but not scored")
        return self.prepare(spectra.to(self.device), names).target.float().cpu(), "pseudo_ground_truth"

    def _score(self, spectra: torch.Tensor, clean: torch.Tensor, ppm: np.ndarray | None, names: list[str],
               rows: dict[str, list], keep: int, baselines: bool = True) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Denoise level 0 of a batch and append each spectrum's metrics to ``rows[method]`` (the model, plus the
        input and the classical baselines when ``baselines``)."""
        noisy = spectra[:, 0].float()
        denoised = self.denoise(noisy)
        reference, kind = self.references(spectra, clean, names)
        for i in range(len(noisy)):
            spectra_i = dict(noisy_input=noisy[i].double().numpy(), reference=reference[i].double().numpy(),
                             ppm=ppm, tolerance_ppm=self.tolerance_ppm)
            model = denoised[i].double().numpy()
            scored = (evaluate_methods(outputs={"model": model}, **spectra_i) if baselines else
                      {"model": spectrum_metrics(output=model, **spectra_i)})
            for method, values in scored.items():
                rows.setdefault(method, []).append(values)
            if len(self._shown) < keep:
                self._shown.append({"name": names[i], "input": noisy[i].numpy(), "denoised": denoised[i].numpy(),
                                    "reference": reference[i].numpy(), "ppm": ppm, "kind": kind})
        return denoised, reference, kind

    def evaluate(self, loader) -> dict[str, Any]:
        """Mean metrics of the model on level 0 of every ladder in ``loader`` (see :meth:`test` for all methods)."""
        result = self._evaluate_loader(loader, baselines=False)
        return {k: result["model"].get(k) for k in REPORTED}

    def _evaluate_loader(self, loader, output_dir: Path | None = None, baselines: bool = True) -> dict[str, dict]:
        base = _ladder_dataset(loader.dataset)
        ppm = base.ppm.numpy() if base.ppm is not None else None
        rows: dict[str, list] = {}
        indices: list[int] = []
        self._shown, kinds = [], set()
        for spectra, clean, index in loader:
            indices.extend(index.tolist())
            names = [base.names[i] for i in index.tolist()]  # items carry the index into the full dataset
            denoised, reference, kind = self._score(spectra, clean, ppm, names, rows, self.figure_count, baselines)
            kinds.add(kind)
            if output_dir is not None:
                for i, name in enumerate(names):
                    self._write(output_dir, name, spectra[i, 0].numpy(), denoised[i].numpy(), reference[i].numpy(),
                                ppm)
        self._reference_kind = " and ".join(sorted(set(dist.gather_lists(sorted(kinds)))))
        # under DDP each rank scored its shard, and DistributedSampler pads the shards to equal length by repeating
        # spectra: pool the per-spectrum rows over the ranks (one gather) and count each dataset index once
        per_spectrum = [(i, {method: values[j] for method, values in rows.items()}) for j, i in enumerate(indices)]
        pooled = list(dict(dist.gather_lists(per_spectrum)).values())  # dataset index -> {method: metrics}
        methods = sorted({method for scored in pooled for method in scored})
        return {method: mean_metrics([scored[method] for scored in pooled]) for method in methods}

    def _valid_epoch(self, epoch: int) -> dict[str, Any]:
        log = self.evaluate(self.valid_loader)
        if self.writer.enabled:
            for tag, figure in self.figures(title=f"epoch {epoch}").items():
                self.writer.figure(f"valid/{tag}", figure, epoch)
        return log

    table_columns = TABLE_COLUMNS

    def test(self, output_dir: Path | None = None, data_dir: str | Path | None = None) -> dict[str, Any]:
        """Denoise level 0 of every test ladder and score the model and the classical baselines side by side.

        ``data_dir``: a directory of ladders or a single spectrum file instead of the config's test data.
        ``output_dir``: write ``<name>.npz`` (key ``denoised``, plus ``ppm`` when known) and ``<name>.png``
        (input, denoised, reference, residual) per group.
        Returns ``{"metrics": model, "baselines": {"savgol", "apodisation", "input"}, "reference": ..., "n",
        "description": TEXT}`` (what was denoised and what it was scored against, in words).
        """
        if output_dir is not None:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
        if data_dir is not None:
            return self._test_files(Path(data_dir), output_dir)
        loader = self.config.build_data_loader(training=False, device=self.device)
        scored = self._evaluate_loader(loader, output_dir)
        n = len(loader.dataset)
        what = f"level 0 of the {n} test ladder{'s' if n != 1 else ''} of {self.config['data_loader']['type']}"
        return self._report(scored, n, what)

    def _report(self, scored: dict[str, dict], n: int, what: str) -> dict[str, Any]:
        against = " and ".join(REFERENCES.get(kind, kind) for kind in self._reference_kind.split(" and "))
        return {"metrics": scored.pop("model"), "baselines": scored, "reference": self._reference_kind, "n": n,
                "description": f"Denoised {what}; scored against {against}"}

    def _test_files(self, path: Path, output_dir: Path | None) -> dict[str, Any]:
        """Denoise the groups of a directory (or one file) one by one: lengths may differ between groups."""
        groups = [self._read_file(path)] if path.is_file() else read_directory(path, allow_single=True)
        for length in {g.spectra.shape for g in groups if g.clean is None and len(g.spectra) > 1}:
            # ladders scored against their own fused target: refuse unusable ones before any output is written
            same = [g for g in groups if g.spectra.shape == length and g.clean is None]
            check_ladders(torch.stack([torch.as_tensor(g.spectra, dtype=torch.float32) for g in same]),
                          [g.origin for g in same], str(path))
        rows: dict[str, list] = {}
        self._shown, kinds, unscored = [], set(), []
        for group in groups:
            spectra = torch.as_tensor(group.spectra, dtype=torch.float32)[None]
            clean = (torch.as_tensor(group.clean, dtype=torch.float32) if group.clean is not None
                     else torch.full((spectra.shape[-1],), math.nan))[None]
            if group.clean is None and spectra.shape[1] < 2:
                denoised = self.denoise(spectra[:, 0])
                reference = None
                unscored.append(group.name)
            else:
                denoised, reference, kind = self._score(spectra, clean, group.ppm, [group.name], rows,
                                                        self.figure_count)
                kinds.add(kind)
            if output_dir is not None:
                self._write(output_dir, group.name, group.spectra[0], denoised[0].numpy(),
                            None if reference is None else reference[0].numpy(), group.ppm)
        if unscored:
            self.logger.info(f"{len(unscored)} single spectra denoised without scores (no reference): "
                             f"{', '.join(unscored[:5])}{'...' if len(unscored) > 5 else ''}")
        self._reference_kind = " and ".join(sorted(kinds)) or "none"
        scored = len(groups) - len(unscored)
        names = [g.name for g in groups if g.name not in unscored]
        what = (f"level 0 of {scored} ladder{'s' if scored != 1 else ''} in {path} "
                f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})")
        if unscored:
            what += f", and {len(unscored)} single spectr{'a' if len(unscored) > 1 else 'um'} without a score"
        if not rows:
            return {"metrics": {}, "baselines": {}, "reference": "none", "n": len(groups),
                    "description": f"Denoised {len(groups)} single spectra in {path}; none has a reference or "
                                   "higher levels to score against"}
        return self._report({m: mean_metrics(v) for m, v in rows.items()}, len(groups), what)

    @staticmethod
    def _read_file(path: Path):
        """One ``.npz``/``.npy`` file: a ladder (K+1, L) or a single spectrum (L,)."""
        readers = {".npz": read_npz, ".npy": read_npy}
        if path.suffix not in readers:
            raise DataError(f"{path}: expected a .npz (key spectra) or .npy spectrum file, or a directory of them")
        return readers[path.suffix](path, allow_single=True)

    def _write(self, output_dir: Path, name: str, noisy, denoised, reference, ppm) -> None:
        """``<name>.npz`` and ``<name>.png`` directly inside ``output_dir``: the name must follow
        ``utils.safe_paths.NAME_RULE`` and each resolved path must stay in ``output_dir`` (a DataError otherwise,
        before anything is written), so a group name can never write elsewhere or create directories."""
        arrays_path, figure_path = path_inside(output_dir, name, ".npz"), path_inside(output_dir, name, ".png")
        arrays = {"denoised": np.asarray(denoised, dtype=np.float64)}
        if ppm is not None:
            arrays["ppm"] = np.asarray(ppm, dtype=np.float64)
        np.savez(arrays_path, **arrays)
        figure = spectrum_figure(noisy, denoised, reference, ppm, title=name)
        save_figure(figure, figure_path)

    def figures(self, title: str = "") -> dict[str, Any]:
        """Input, denoised, reference and residual of the first spectra of the last evaluation."""
        return {f"spectrum_{i}": spectrum_figure(s["input"], s["denoised"], s["reference"], s["ppm"],
                                                 title=f"{title} {s['name']} (reference: {s['kind']})".strip())
                for i, s in enumerate(self._shown)}
