"""Validation of NMRDenoiseTrainer pinned to independent computations (issue 14).

From b7ee006 until the fix, validation called ``spectrum_metrics(model, noisy, reference)`` against the signature
``(output, reference, noisy_input)``: it scored the model against the noisy input, so ``min val_l2`` picked the
epoch closest to the identity, with every other test green. These tests compare what validation logs with numbers
computed here from the spectra themselves, so a swap of any two of output, reference and input fails one of them.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from parse_config import ConfigParser
from tests.fixtures import ROOT, run_training
from tests.test_nmr_trainer import TINY_NMR
from trainer.nmr_denoise import REPORTED

QUICKSTART = ROOT / "configs" / "nmr" / "quickstart_simulated.json"


def validation_spectra(trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """Level 0 ``(N, L)`` and the clean spectra ``(N, L)`` of every validation ladder, in loader order."""
    noisy, clean = [], []
    for spectra, reference, _ in trainer.valid_loader:
        noisy.append(spectra[:, 0].double())
        clean.append(reference.double())
    return torch.cat(noisy), torch.cat(clean)


def relative_l2(output: torch.Tensor, clean: torch.Tensor) -> float:
    """Mean over spectra of RMS(output - clean) / max|clean| (the metric's definition, written out again)."""
    per_spectrum = (output - clean).pow(2).mean(1).sqrt() / clean.abs().amax(1)
    return float(per_spectrum.mean())


def identity(spectra: torch.Tensor) -> torch.Tensor:
    return spectra.float().cpu()


@pytest.fixture
def tiny(tmp_path) -> dict:
    config = copy.deepcopy(TINY_NMR)
    config["trainer"]["args"]["save_dir"] = str(tmp_path / "saved")
    return config


def test_identity_model_validation_row_equals_the_input_row_of_test(tiny, monkeypatch):
    """Validation of a model that returns its input must score exactly what test.py reports for the input."""
    trainer = train.build_trainer(ConfigParser(tiny))
    monkeypatch.setattr(trainer, "denoise", identity)
    validation = trainer.evaluate(trainer.valid_loader)
    # test.py's path (model, input and classical baselines side by side) on the same ladders
    input_row = trainer._evaluate_loader(trainer.valid_loader, baselines=True)["input"]
    for key in REPORTED:
        if input_row[key] is None:
            assert validation[key] is None, key
        else:
            assert validation[key] == pytest.approx(input_row[key], rel=0, abs=1e-9), key
    noisy, clean = validation_spectra(trainer)
    assert validation["l2"] == pytest.approx(relative_l2(noisy, clean), rel=1e-9)
    assert validation["l2"] > 0.01  # the input is noisy: an identity row of zeros means it was scored on itself
    assert validation["snr_gain"] == pytest.approx(1.0, abs=1e-9)


def test_validation_snr_in_is_the_configured_test_snr():
    """The quickstart's held-out ladders are simulated at level-0 max/sigma = test_snr: validation must say so."""
    config = json.loads(QUICKSTART.read_text())
    config["data_loader"]["args"].update(n_train=16, n_valid=16, n_test=16)
    config["trainer"]["args"].update(tensorboard=False, progress_bar=False, save_dir="/nonexistent/not-written")
    trainer = train.build_trainer(ConfigParser(config))
    validation = trainer.evaluate(trainer.valid_loader)
    test_snr = config["data_loader"]["args"]["test_snr"]
    assert validation["snr_in"] == pytest.approx(test_snr, rel=0.10)


@pytest.mark.slow
def test_short_training_logs_the_true_l2_and_beats_the_input(tiny, monkeypatch):
    """A short CPU run: each logged val_l2 is the model's L2 to the clean spectra (recomputed here), it ends below
    the input's, and model_best.pth is the epoch of the smallest of them."""
    tiny["data_loader"]["args"].update(n_train=64, fresh_each_epoch=True)
    tiny["trainer"]["args"].update(epochs=4, phase_a_epochs=4)
    tiny["optimizer"]["args"]["lr"] = 3e-3
    logs: list[dict] = []
    original = train.build_trainer

    def build_and_record(config):
        trainer = original(config)
        log_epoch = trainer._log_epoch

        def record(log, improved):
            noisy, clean = validation_spectra(trainer)
            logs.append({**log, "recomputed_l2": relative_l2(trainer.denoise(noisy).double(), clean),
                         "input_l2": relative_l2(noisy, clean)})
            log_epoch(log, improved)

        trainer._log_epoch = record
        return trainer

    monkeypatch.setattr(train, "build_trainer", build_and_record)
    _, parsed = run_training(tiny, run_id="pinned")
    assert len(logs) == 4
    for log in logs:
        assert log["val_l2"] == pytest.approx(log["recomputed_l2"], rel=1e-5), log["epoch"]
    assert logs[-1]["val_l2"] < logs[-1]["input_l2"]
    best = torch.load(Path(parsed.model_dir) / "model_best.pth", weights_only=True)
    assert best["monitor_best"] == pytest.approx(min(log["val_l2"] for log in logs), rel=1e-12)
    assert np.argmin([log["val_l2"] for log in logs]) + 1 == best["epoch"]
