"""The shipped general pretrained NMR denoiser (pretrained/nmr_unet_general.pth, issue 14 item 3): it loads as a
checkpoint of this framework, is small, and denoises simulated ladders of several regimes and lengths."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import test as test_cli
from data_loader.nmr.simulate import SimulationSettings, simulate_ladders
from parse_config import ConfigParser
from utils.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "pretrained" / "nmr_unet_general.pth"


@pytest.fixture(scope="module")
def model():
    state = load_checkpoint(CHECKPOINT)
    assert state["config"]["name"] == "nmr_pretrained_general" and "optimizer" not in state
    net = ConfigParser(state["config"], source=str(CHECKPOINT)).build("arch")
    net.load_state_dict(state["model"])
    return net.eval()


def relative_l2(output: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per spectrum ‖output − clean‖ / ‖clean‖ ``(B,)``."""
    return (output - clean).double().norm(dim=-1) / clean.double().norm(dim=-1)


def test_shipped_checkpoint_is_small():
    assert CHECKPOINT.stat().st_size < 5 * 2 ** 20


@pytest.mark.parametrize("simulation", [
    {},                                                             # the quickstart's 1H ladders, 2,048 points
    {"length": 16384, "levels": 2, "mixture": ["13c"]},             # sparse 13C-like singlets, 16,384 points
    {"length": 4096, "levels": 2, "mixture": ["1h_unapodised"], "phase1_deg": 5.0, "baseline_roll": 0.01},
], ids=["1h_2048", "13c_16384", "1h_unapodised_4096"])
def test_shipped_checkpoint_denoises_better_than_the_input(model, simulation):
    data = simulate_ladders(SimulationSettings.from_dict(simulation), 4, seed=2024, snr=10.0)
    noisy, clean = data["spectra"][:, 0], data["clean"]
    with torch.no_grad():
        denoised = model.denoise(noisy)
    assert denoised.shape == noisy.shape and torch.isfinite(denoised).all()
    assert (relative_l2(denoised, clean) < 0.6 * relative_l2(noisy, clean)).all()


def test_shipped_checkpoint_runs_in_test_py_on_a_directory(tmp_path):
    data = simulate_ladders(SimulationSettings.from_dict({"length": 1024, "levels": 3}), 2, seed=7, snr=10.0)
    ladders = tmp_path / "ladders"
    ladders.mkdir()
    for i in range(2):
        np.savez(ladders / f"l{i}.npz", spectra=data["spectra"][i].numpy(), clean=data["clean"][i].numpy())
    out = tmp_path / "m.json"
    test_cli.main(["-r", str(CHECKPOINT), "--data_dir", str(ladders), "--save_dir", str(tmp_path / "out"),
                   "--out", str(out), "--set", "data_loader.args.n_train=4", "--set", "data_loader.args.n_valid=0",
                   "--set", "data_loader.args.n_test=1", "-d", "cpu"])
    report = json.loads(out.read_text())
    assert report["n"] == 2 and report["reference"] == "clean"
    assert report["metrics"]["l2"] < report["baselines"]["input"]["l2"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npz")) == ["l0.npz", "l1.npz"]
