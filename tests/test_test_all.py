"""test_all.py: one pass over the test set, every split scored from it, equal to direct evaluation."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

import test_all
import train
from parse_config import ConfigParser
from utils.cli import parse_vector
from utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def trained(tiny_config):
    config = ConfigParser(tiny_config, run_id="t")
    trainer = train.build_trainer(config)
    config.prepare_run_dirs()
    trainer.train()
    trainer.close()
    return config, trainer


def test_model_sees_each_test_image_once_and_splits_match_direct_evaluation(trained):
    config, trainer = trained
    loader = config.build_data_loader(training=False)
    seen = []
    hook = trainer.raw_model.register_forward_pre_hook(lambda _, inputs: seen.append(len(inputs[0])))
    result = test_all.evaluate_all(trainer, loader, shot_args=test_all.shot_settings(config))
    hook.remove()
    assert sum(seen) == len(loader.dataset) == 500

    splits = loader.test_agnostic_splits()
    assert list(result["splits"]) == ["forward50", "forward25", "forward10", "forward5", "forward2", "uniform",
                                      "backward2", "backward5", "backward10", "backward25", "backward50"]
    for name, index in splits.items():
        subset = loader.make_loader(Subset(loader.dataset, index.tolist()))
        direct = trainer.evaluate(subset)
        scored = result["splits"][name]
        assert scored["n"] == len(index)
        assert scored["all"] == pytest.approx(direct["accuracy"])
        for group in ("many", "medium", "few"):
            assert scored[group] == pytest.approx(direct[group]), (name, group)


def test_split_sizes_follow_the_formula(trained):
    config, _ = trained
    splits = config.build_data_loader(training=False).test_agnostic_splits()
    # 50 test images per class, 10 classes: class i keeps int(50 * (1/f) ** (i / 9))
    expected = sum(int(50 * (1 / 50) ** (i / 9)) for i in range(10))
    assert len(splits["forward50"]) == len(splits["backward50"]) == expected
    assert len(splits["uniform"]) == 500
    labels = config.build_data_loader(training=False).test_targets()
    forward = torch.bincount(labels[splits["forward50"]], minlength=10)
    backward = torch.bincount(labels[splits["backward50"]], minlength=10)
    assert forward[0] == 50 and forward[9] == 1 and torch.equal(forward, backward.flip(0))


def test_cli_writes_json_and_figures_only_when_asked(trained, tmp_path):
    """Issue 17.8: --out also dropped PNGs into the working directory; figures are written only with --figures DIR."""
    config, _ = trained
    out = tmp_path / "all.json"
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "test_all.py"), "-r", str(config.model_dir / "model_best.pth"),
                           "--out", str(out)], cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert set(result) >= {"splits", "preference", "weights"} and result["preference"] is result["weights"] is None
    assert set(result["splits"]["forward50"]) == {"n", "many", "medium", "few", "all"}
    assert not list(tmp_path.rglob("*.png"))  # no figures unless asked
    assert "forward50" in done.stdout and "backward50" in done.stdout
    assert "Expert weights" not in done.stdout  # a model without experts
    assert "evaluating on the 500 test images (one pass) ..." in done.stdout.splitlines()[0]  # before the pass
    assert done.stderr == ""
    figures = tmp_path / "figures"
    done = subprocess.run([sys.executable, str(ROOT / "test_all.py"), "-r", str(config.model_dir / "model_best.pth"),
                           "--figures", str(figures)], cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (figures / "reliability.png").stat().st_size > 1000
    assert (figures / "class_accuracy.png").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == ["class_accuracy.png", "reliability.png"]
    assert f"wrote {figures / 'reliability.png'}" in done.stdout


def test_preference_on_a_model_without_experts_is_refused(trained):
    _, trainer = trained
    with pytest.raises(ConfigError, match="has no experts"):
        trainer.configure_inference(preference=[0.2, 0.8])


@pytest.mark.parametrize("text", ["a,b", "-1,2", "0,0"])
def test_bad_vectors(text):
    with pytest.raises(ConfigError, match="--preference"):
        parse_vector(text, "--preference")
