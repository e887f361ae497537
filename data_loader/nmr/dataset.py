"""Data loaders of NMR acquisition ladders: simulated (the embedded default) or read from a directory.

Both yield ``(spectra, clean, index)`` batches: ``spectra`` ``(B, K+1, L)`` float32 by rising SNR, ``clean``
``(B, L)`` float32 (NaN where the data has no clean spectrum), ``index`` ``(B,)``. Preprocessing
(alignment, rescaling, masks, fusion) happens in the trainer, batched on the training device.
"""
from __future__ import annotations

import math
import typing
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from base.base_data_loader import BaseDataLoader
from data_loader.nmr.fusion import ladder_problems
from data_loader.nmr.io import SpectrumGroup, read_directory
from data_loader.nmr.simulate import SimulationSettings, simulate_ladders
from utils.errors import DataError
from utils.registry import DATA_LOADERS, type_problem

# offsets added to the config seed so training, validation and test ladders never coincide
_VALID_SEED, _TEST_SEED, _EPOCH_SEED = 1_000_003, 2_000_003, 7_919
MAX_SIMULATED = 1_000_000  # ladders per simulated set: they live in memory (a typo of 10^12 would ask for petabytes)


class LadderDataset(Dataset):
    """Ladders in memory: ``spectra (N, K+1, L)``, ``clean (N, L)`` (NaN rows: unknown), names, ``ppm (L,)``."""

    def __init__(self, spectra: torch.Tensor, clean: torch.Tensor, names: list[str], ppm: torch.Tensor | None):
        self.spectra, self.clean, self.names, self.ppm = spectra, clean, names, ppm

    def __len__(self) -> int:
        return len(self.spectra)

    def __getitem__(self, index: int):
        return self.spectra[index], self.clean[index], index

    @classmethod
    def from_groups(cls, groups: list[SpectrumGroup], source: str) -> LadderDataset:
        """Stack groups read from disk; they must share K+1 and L to be batched (any L works in test.py)."""
        first = groups[0]
        odd = next((g for g in groups if g.spectra.shape != first.spectra.shape), None)
        if odd is not None:
            raise DataError(f"{source}: ladders must share one shape (levels, points) to be batched for training; "
                            f"{first.origin} has {first.spectra.shape}, {odd.origin} has {odd.spectra.shape}. "
                            "Resample them to one grid, or train on each size separately")
        for group in groups[1:]:  # one axis is kept for all ladders: a different one must not be dropped silently
            if (group.ppm is None) != (first.ppm is None):
                with_axis, without = (first, group) if group.ppm is None else (group, first)
                raise DataError(f"{source}: {without.origin} has no ppm axis but {with_axis.origin} has one; give "
                                "every ladder its ppm axis, or none")
            tolerance = 1e-9 + 1e-6 * np.ptp(first.ppm) if first.ppm is not None else 0
            if group.ppm is not None and not np.allclose(group.ppm, first.ppm, rtol=0, atol=tolerance):
                raise DataError(f"{source}: the ppm axis of {group.origin} differs from that of {first.origin} (by "
                                f"up to {np.max(np.abs(group.ppm - first.ppm)):.4g} ppm); ladders batched together "
                                "must share one axis: resample them to one grid, or train on each separately")
        spectra = torch.stack([torch.as_tensor(g.spectra, dtype=torch.float32) for g in groups])
        check_ladders(spectra, [g.origin for g in groups], source)
        length = spectra.shape[-1]
        clean = torch.stack([torch.as_tensor(g.clean, dtype=torch.float32) if g.clean is not None
                             else torch.full((length,), math.nan) for g in groups])
        ppm = groups[0].ppm
        return cls(spectra, clean, [g.name for g in groups],
                   torch.as_tensor(ppm, dtype=torch.float64) if ppm is not None else None)


def check_ladders(spectra: torch.Tensor, origins: list[str], source: str, chunk: int = 256) -> None:
    """Refuse, when the data is loaded (before a run writes anything), ladders ``(N, K+1, L)`` that
    ``prepare_ladder`` cannot prepare: a constant (e.g. all-zero) level, or no peak above the noise on the top
    level. The DataError names the first such ladder's file (``origins``) and counts the others."""
    if spectra.shape[1] < 2:   # single spectra are denoised, not prepared
        return
    problems = [(start + i, problem) for start in range(0, len(spectra), chunk)   # chunks bound the memory
                for i, problem in ladder_problems(spectra[start:start + chunk])]
    if problems:
        index, problem = problems[0]
        others = f" ({len(problems) - 1} more ladders have a problem of this kind)" if len(problems) > 1 else ""
        raise DataError(f"{source}: {origins[index]}: this ladder {problem}{others}")


def _check_simulation(simulation: dict | None) -> None:
    """The JSON types of ``simulation`` against :class:`SimulationSettings` (unknown keys are its own error)."""
    if simulation is None:
        return
    if not isinstance(simulation, dict):
        raise ValueError(f'simulation must be an object such as {{"length": 2048, "levels": 4}}, got {simulation!r}')
    hints = typing.get_type_hints(SimulationSettings)
    for key, value in simulation.items():
        problem = type_problem(value, hints[key]) if key in hints else None
        if problem:
            raise ValueError(f"simulation.{key} must be {problem}, got {type(value).__name__} {value!r}")


def _settings(values: dict | None, key: str) -> SimulationSettings:
    """:class:`SimulationSettings` from ``values``; a bad value is reported under ``key`` (its config key)."""
    try:
        return SimulationSettings.from_dict(values)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None


@DATA_LOADERS.register()
class NMRSimulated(BaseDataLoader):
    """Simulated ladders (first-order multiplets of Voigt lines, σ_k = σ_0·T^-k; see data_loader/nmr/simulate.py).

    Generated in one vectorised pass when the loader is built, so no data ships or downloads.

    Args:
        batch_size: ladders per batch.
        training: True for the training ladders (SNR drawn from ``simulation.snr``), False for the held-out
            test ladders at ``test_snr``.
        simulation: settings of :class:`SimulationSettings` (length, levels, snr_ratio, snr, linewidth_hz...,
            and the real-data options: zero_fill, hz_per_point, phase0_deg, phase1_deg, baseline_roll, drift_hz,
            drift_linewidth_hz, early_noise, early_noise_ms, mixture); a bad value is reported as "simulation: ...".
        eval_simulation: overrides of ``simulation`` for the validation and test ladders (e.g.
            ``{"mixture": []}`` to train on a mixture of regimes and select/score on the base regime alone);
            null: the same settings as training.
        n_train, n_valid, n_test: ladders in each set. Validation ladders (held out, at ``test_snr``) select the
            best checkpoint; 0 disables validation.
        test_snr: level-0 max/σ of validation and test ladders (null: drawn like training).
        fresh_each_epoch: draw new training ladders every epoch (the trainer calls ``set_epoch``).
        seed: base seed; training, validation and test sets use distinct offsets of it.
    """

    def __init__(self, batch_size: int = 16, training: bool = True, simulation: dict | None = None,
                 n_train: int = 2048, n_valid: int = 128, n_test: int = 256, test_snr: float | None = 10.0,
                 fresh_each_epoch: bool = False, seed: int = 0, num_workers: int = 0,
                 eval_simulation: dict | None = None):
        _check_simulation(simulation)
        _check_simulation(eval_simulation)
        self.settings = _settings(simulation, "simulation")
        self.eval_settings = (self.settings if eval_simulation is None else
                              _settings({**(simulation or {}), **eval_simulation}, "eval_simulation"))
        if fresh_each_epoch and num_workers:
            raise ValueError("fresh_each_epoch needs num_workers 0: worker processes keep their own copy of the "
                             "ladders (generation is vectorised and fast on the main process)")
        if min(n_train, n_test) < 1 or n_valid < 0 or max(n_train, n_valid, n_test) > MAX_SIMULATED:
            raise ValueError(f"n_train and n_test must be in [1, {MAX_SIMULATED}] and n_valid in [0, {MAX_SIMULATED}] "
                             f"(ladders are held in memory), got {n_train}, {n_valid}, {n_test}")
        if test_snr is not None and not test_snr > 0:
            raise ValueError(f"test_snr must be > 0 or null, got {test_snr}")
        self.seed, self.test_snr, self.fresh_each_epoch = seed, test_snr, fresh_each_epoch
        self.n_train, self.n_valid = n_train, n_valid
        if training:
            dataset = self._make(n_train, seed, None, "train")
        else:
            dataset = self._make(n_test, seed + _TEST_SEED, test_snr, "test", self.eval_settings)
        super().__init__(dataset, batch_size, shuffle=training, num_workers=num_workers)
        self._training = training

    def _make(self, n: int, seed: int, snr: float | None, prefix: str,
              settings: SimulationSettings | None = None) -> LadderDataset:
        data = simulate_ladders(settings or self.settings, n, seed, snr=snr)
        return LadderDataset(data["spectra"], data["clean"], [f"{prefix}_{i:05d}" for i in range(n)],
                             data["ppm"].double())

    def split_validation(self):
        if not self._training or self.n_valid == 0:
            return None
        return self.make_loader(self._make(self.n_valid, self.seed + _VALID_SEED, self.test_snr, "valid",
                                           self.eval_settings))

    @property
    def validation_source(self) -> str:
        snr = f"max/σ {self.test_snr}" if self.test_snr is not None else "training SNR range"
        return f"{self.n_valid} held-out simulated ladders ({snr}, seed offset {_VALID_SEED})"

    def set_epoch(self, epoch: int) -> None:
        """With ``fresh_each_epoch``, replace the training ladders by new ones drawn for ``epoch``.

        Every rank draws the same ladders (the seed depends only on the epoch); the sampler shards them.
        """
        if self.fresh_each_epoch and self._training and epoch > 1:
            fresh = simulate_ladders(self.settings, self.n_train, self.seed + _EPOCH_SEED * epoch)
            self.dataset.spectra, self.dataset.clean = fresh["spectra"], fresh["clean"]


@DATA_LOADERS.register()
class NMRDirectory(BaseDataLoader):
    """Ladders read from ``data_dir``: ``*.npz`` (key ``spectra`` (K+1, L), optional ``ppm``, ``clean``),
    ``*.npy`` (K+1, L), and Bruker/Varian/NMRPipe data grouped by a ``manifest.json``/``manifest.csv``.

    Args:
        data_dir: the training directory (``training: true``), or the directory evaluated by ``test.py``.
        test_dir: the test directory (default: ``data_dir``; ``test.py --data_dir`` overrides both).
        levels: expected K+1 (null: whatever the files hold, the same for all).
        validation_split: fraction or count of training ladders held back to select the best checkpoint.
    """

    def __init__(self, data_dir: str, batch_size: int = 16, training: bool = True, test_dir: str | None = None,
                 levels: int | None = None, validation_split: float | int = 0.1, num_workers: int = 0,
                 split_seed: int = 0):
        if levels is not None and levels < 2:
            raise ValueError(f"levels must be K+1 >= 2 (a ladder of at least two SNR levels) or null (whatever the "
                             f"files hold), got {levels}")
        directory = Path(data_dir if training or test_dir is None else test_dir)
        groups = read_directory(directory, levels=levels)
        dataset = LadderDataset.from_groups(groups, str(directory))
        self.data_dir = directory
        super().__init__(dataset, batch_size, shuffle=training,
                         validation_split=validation_split if training else 0.0, num_workers=num_workers,
                         split_seed=split_seed)

    @property
    def validation_source(self) -> str:
        return f"a random validation split of the ladders in {self.data_dir}"
