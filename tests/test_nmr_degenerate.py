"""Ladders that cannot be prepared (issue 16 item 18): noise-only and all-zero ladders raise a DataError that names
the ladder (its index in a batch, its file in a directory) instead of an IndexError deep in robust_scale, and the
command-line scripts refuse them before they write anything."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_loader.nmr.dataset import NMRDirectory
from data_loader.nmr.fusion import LadderError, fusion_weights, ladder_problems, prepare_ladder
from data_loader.nmr.simulate import SimulationSettings, simulate_ladders
from tests.fixtures import run_training
from tests.test_nmr_trainer import TINY_NMR
from utils.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
LENGTH = 256


def ladders(count: int = 4, seed: int = 0) -> torch.Tensor:
    settings = SimulationSettings(length=LENGTH, levels=4, sw_hz=500.0, multiplets=(1, 3))
    return simulate_ladders(settings, count, seed, snr=10.0)["spectra"]


def noise_only(seed: int = 1) -> torch.Tensor:
    """A ladder ``(4, L)`` of pure noise, σ_k = 0.1·2^-k (levels by rising SNR, as the real ones)."""
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(4, LENGTH, generator=generator) / 2 ** torch.arange(4.0)[:, None]


@pytest.mark.parametrize("kind", ["noise", "zeros"])
def test_prepare_ladder_names_the_ladder_that_cannot_be_prepared(kind):
    batch = ladders()
    batch[2] = noise_only() if kind == "noise" else 0
    with pytest.raises(LadderError) as caught:
        prepare_ladder(batch)
    err = caught.value
    assert isinstance(err, DataError) and err.index == 2
    if kind == "noise":
        assert str(err).startswith("ladder 2 of the batch has no peak above the noise")
    else:
        assert str(err).startswith("ladder 2 of the batch has a constant level 0 (every point is 0)")
    assert "IndexError" not in str(err)


def test_a_whole_batch_of_noise_is_refused_too():
    """No ladder with a peak at all: the packed peak points have width 0 (the former IndexError)."""
    with pytest.raises(LadderError, match="ladder 0 of the batch has no peak above the noise"):
        prepare_ladder(torch.stack([noise_only(s) for s in range(3)]))


def test_without_rescaling_a_noise_only_ladder_is_prepared_with_snr_zero():
    batch = ladders(3)
    batch[1] = noise_only()
    ladder = prepare_ladder(batch, rescale=False)
    assert not ladder.peaks[1].any() and (ladder.snr[1] == 0).all()
    assert torch.isfinite(ladder.target).all() and torch.isfinite(ladder.weights).all()
    with pytest.raises(LadderError, match="constant level 3"):   # a constant level still cannot be prepared
        batch[1, 3] = 0.5
        prepare_ladder(batch, rescale=False)


def test_a_noise_free_level_takes_the_weight_instead_of_making_it_nan():
    batch = ladders(2)
    top = batch[:, -1]
    batch[:, -1] = torch.where(top.abs() > 0.05 * top.amax(1, keepdim=True), top, 0)   # no noise on its baseline
    ladder = prepare_ladder(batch, max_share=0.9, align=False)   # (a fractional shift would ring on the baseline)
    assert (ladder.sigma[:, -1] == 0).all()
    assert torch.isfinite(ladder.weights).all() and torch.isfinite(ladder.target).all()
    assert torch.allclose(ladder.weights[:, -1], torch.tensor(0.9))   # all it may take, as 1/σ² says
    sigma = torch.tensor([[0.1, 0.05, 0.0, 0.0]])   # two noise-free levels share the weight
    assert torch.allclose(fusion_weights(sigma, torch.ones(1, 4), max_share=0.9), torch.tensor([[0, 0, 0.5, 0.5]]))


def test_ladder_problems_lists_every_bad_ladder_in_order():
    batch = ladders(5)
    batch[1], batch[3, 2] = noise_only(), 0
    problems = ladder_problems(batch)
    assert [i for i, _ in problems] == [1, 3]
    assert problems[0][1].startswith("has no peak") and problems[1][1].startswith("has a constant level 2")


def write(directory: Path, spectra: torch.Tensor, names: list[str] | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, ladder in enumerate(spectra):
        np.savez(directory / f"{names[i] if names else f'sample_{i}'}.npz", spectra=ladder.double().numpy())


@pytest.mark.parametrize("kind", ["noise", "zeros"])
def test_the_directory_loader_refuses_the_file_when_it_loads(tmp_path, kind):
    batch = ladders(4)
    batch[2] = noise_only() if kind == "noise" else 0
    write(tmp_path, batch, ["a", "b", "quiet", "d"])
    with pytest.raises(DataError, match=r"quiet\.npz: this ladder has (no peak above the noise|a constant level 0)"):
        NMRDirectory(str(tmp_path), batch_size=2, validation_split=0)


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def assert_refused(done: subprocess.CompletedProcess, name: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    assert f"{name}.npz: this ladder has no peak above the noise" in done.stderr, done.stderr


@pytest.mark.slow
def test_train_py_refuses_a_noise_only_ladder_before_creating_the_run(tmp_path):
    data_dir, saved = tmp_path / "train", tmp_path / "saved"
    batch = ladders(4)
    batch[1] = noise_only()
    write(data_dir, batch, ["s0", "noise", "s2", "s3"])
    config = copy.deepcopy(TINY_NMR)
    config["data_loader"] = {"type": "NMRDirectory", "args": {"data_dir": str(data_dir), "batch_size": 2,
                                                              "validation_split": 0}}
    config["trainer"]["args"].update(save_dir=str(saved), epochs=1, phase_a_epochs=1)
    config["lr_scheduler"]["args"]["warmup_epochs"] = 0   # a warm-up as long as the run is refused
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    done = run_script("train.py", "-c", str(path), "-d", "cpu", cwd=tmp_path)
    assert_refused(done, "noise")
    assert not saved.exists()   # nothing written before the error


@pytest.mark.slow
def test_test_py_refuses_a_noise_only_ladder_before_writing_outputs(tmp_path):
    config = copy.deepcopy(TINY_NMR)
    config["trainer"]["args"].update(save_dir=str(tmp_path / "saved"), epochs=1, phase_a_epochs=1)
    config["lr_scheduler"]["args"]["warmup_epochs"] = 0
    _, parsed = run_training(config, run_id="degenerate")
    data_dir, out_dir = tmp_path / "ladders", tmp_path / "denoised"
    batch = ladders(3)
    batch[2] = noise_only()
    write(data_dir, batch, ["a", "b", "noise"])
    done = run_script("test.py", "-r", str(parsed.model_dir / "latest.pth"), "--data_dir", str(data_dir),
                      "--save_dir", str(out_dir), "-d", "cpu", cwd=tmp_path)
    assert_refused(done, "noise")
    assert not list(out_dir.glob("*.npz"))   # refused before the first ladder was denoised
