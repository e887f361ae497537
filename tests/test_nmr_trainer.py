"""NMRDenoiseTrainer end to end on tiny simulated ladders: schedule, checkpoints, test.py outputs (issue 6)."""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch

import test as test_cli
import train
from parse_config import ConfigParser
from tests.fixtures import run_training
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError, DataError

TINY_NMR = {
    "name": "tiny_nmr",
    "seed": 0,
    "arch": {"type": "UNet1D", "args": {"channels": [8, 16, 16], "kernel_size": 5, "se": True}},
    "data_loader": {"type": "NMRSimulated", "args": {
        "batch_size": 8, "n_train": 16, "n_valid": 8, "n_test": 8, "test_snr": 10.0,
        "simulation": {"length": 256, "levels": 4, "snr_ratio": 2.0, "sw_hz": 500.0, "multiplets": [1, 3]}}},
    "loss": {"type": "NMRDenoiseLoss", "args": {"weights": {"ratio": 0.0}}},
    "optimizer": {"type": "AdamW", "args": {"lr": 1e-3}},
    "lr_scheduler": {"type": "WarmupCosineLR", "args": {"warmup_epochs": 1}},
    "trainer": {"type": "NMRDenoiseTrainer", "args": {
        "epochs": 3, "phase_a_epochs": 1, "phase_b_weights": {"cons": 1.0, "ratio": 0.2}, "snr_ratio": 2.0,
        "monitor": "min val_l2", "tensorboard": False, "progress_bar": False, "figure_count": 1}},
}


@pytest.fixture
def nmr_config(tmp_path):
    config = copy.deepcopy(TINY_NMR)
    config["trainer"]["args"]["save_dir"] = str(tmp_path / "saved")
    return config


def build(config):
    return train.build_trainer(ConfigParser(copy.deepcopy(config)))


def test_schedule_phases_curriculum_and_weights(nmr_config):
    nmr_config["trainer"]["args"].update(epochs=7, phase_a_epochs=2, curriculum_fraction=0.5,
                                         peak_weight_final=10.0, curv_final=0.0)
    trainer = build(nmr_config)
    assert [trainer.phase(e) for e in range(1, 8)] == ["A", "A", "B", "B", "B", "B", "B"]
    torch.manual_seed(0)
    for _ in range(20):  # phase A: two random levels above 0
        chosen = trainer.levels_for(1, 4)
        assert len(chosen) == 2 and 0 not in chosen and chosen == sorted(chosen)
    # phase B (epochs 3..7): from the top pair down to level 0 over the first half, then all levels
    assert [trainer.levels_for(e, 4) for e in range(3, 8)] == [[2, 3], [1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3],
                                                               [0, 1, 2, 3]]
    weights_a, peak_a = trainer.loss_settings(1)
    weights_end, peak_end = trainer.loss_settings(7)
    assert peak_a == 6.0 and peak_end == pytest.approx(10.0)
    assert weights_a["ratio"] == 0.0 and weights_end["ratio"] == 0.2 and weights_end["cons"] == 1.0
    assert weights_end["curv"] == pytest.approx(0.0)


def test_two_epochs_plus_resume_one_equal_three(nmr_config, tmp_path):
    # a schedule that does not depend on the number of epochs, so 2 + 1 and 3 run the same steps
    nmr_config["lr_scheduler"]["args"]["total_epochs"] = 3
    nmr_config["trainer"]["args"].update(epochs=2, curriculum=False)
    trainer, parsed = run_training(copy.deepcopy(nmr_config), run_id="two")
    latest = parsed.model_dir / "latest.pth"
    resumed_config = copy.deepcopy(nmr_config)
    resumed_config["trainer"]["args"]["epochs"] = 3
    resumed, _ = run_training(resumed_config, run_id=None, resume=latest)
    straight_config = copy.deepcopy(nmr_config)
    straight_config["trainer"]["args"]["epochs"] = 3
    straight, _ = run_training(straight_config, run_id="three")
    for a, b in zip(resumed.raw_model.state_dict().values(), straight.raw_model.state_dict().values()):
        assert torch.equal(a, b)
    state = load_checkpoint(latest)
    assert state["epoch"] == 3  # the resumed run continued in the same directory


def test_loss_terms_logged_and_ratio_warning(nmr_config, monkeypatch):
    nmr_config["trainer"]["args"]["snr_ratio"] = 3.0   # the simulated data has T = 2
    trainer = build(nmr_config)
    warnings = []
    monkeypatch.setattr(trainer.logger, "warning", warnings.append)
    log = trainer._train_epoch(3)
    assert {"loss", "rec", "deriv", "curv", "cons", "ratio"} <= set(log) and log["phase"] == "B"
    assert all(np.isfinite(v) for k, v in log.items() if k != "phase")
    assert len(warnings) == 1 and re.search(r"T ≈ 1\.9\d per level .*snr_ratio is 3\.0", warnings[0])


def test_quickly_trained_model_beats_its_input(nmr_config):
    """A few epochs on fresh ladders already denoise: L2 to the clean spectrum drops below the input's."""
    nmr_config["data_loader"]["args"].update(n_train=64, fresh_each_epoch=True)
    nmr_config["trainer"]["args"].update(epochs=4, phase_a_epochs=4)
    nmr_config["optimizer"]["args"]["lr"] = 3e-3
    trainer, _ = run_training(nmr_config, run_id="learn")
    result = trainer.test()
    assert result["reference"] == "clean" and result["n"] == 8
    assert set(result["baselines"]) == {"input", "savgol", "apodisation"}
    assert result["metrics"]["l2"] < result["baselines"]["input"]["l2"]


def write_ladders(directory, count=2, levels=4, length=256, clean=True, seed=0):
    from data_loader.nmr.simulate import SimulationSettings, simulate_ladders

    settings = SimulationSettings(length=length, levels=levels, sw_hz=500.0, multiplets=(1, 3))
    data = simulate_ladders(settings, count, seed=seed, snr=10.0)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        arrays = {"spectra": data["spectra"][i].double().numpy(), "ppm": data["ppm"].double().numpy()}
        if clean:
            arrays["clean"] = data["clean"][i].double().numpy()
        np.savez(directory / f"sample_{i}.npz", **arrays)
    return data


def test_test_cli_writes_denoised_spectra_figures_and_metrics(nmr_config, tmp_path, capsys):
    _, parsed = run_training(nmr_config, run_id="cli")
    checkpoint = parsed.model_dir / "latest.pth"
    data_dir, out_dir, out = tmp_path / "ladders", tmp_path / "denoised", tmp_path / "metrics.json"
    write_ladders(data_dir, clean=False)
    np.save(data_dir / "single.npy", np.load(data_dir / "sample_0.npz")["spectra"][0])
    test_cli.main(["-r", str(checkpoint), "--data_dir", str(data_dir), "--save_dir", str(out_dir),
                   "--out", str(out), "-d", "cpu"])
    report = json.loads(out.read_text())
    assert report["reference"] == "pseudo_ground_truth" and report["n"] == 3
    assert {"snr_in", "snr_out", "snr_gain", "peak_f1", "peak_shift", "fwhm_rel_err", "integral_rel_err", "l1",
            "l2"} <= set(report["metrics"])
    assert set(report["baselines"]) == {"input", "savgol", "apodisation"}
    for name in ("sample_0", "sample_1", "single"):
        saved = np.load(out_dir / f"{name}.npz")
        assert saved["denoised"].shape == (256,)
        assert (out_dir / f"{name}.png").stat().st_size > 0
    assert "ppm" in np.load(out_dir / "sample_0.npz")
    printed = capsys.readouterr().out
    assert "savgol" in printed  # the side-by-side table
    # issue 17.7: one narrow table (methods as rows, a few columns, 4 significant digits), the model once, and what
    # was denoised; every metric is in the JSON. Issue 17.8: no figures beside --out unless --figures names a folder
    table = printed[printed.index("     method |"):].splitlines()
    assert table[0].split() == ["method", "|", "l2", "|", "snr_gain", "|", "peak_f1", "|", "peak_shift", "|",
                                "height_ratio", "|", "integral_rel_err"]
    assert max(len(line) for line in table[:6]) < 100 and printed.count("model |") == 1
    assert [row.split()[0] for row in table[2:6]] == ["model", "input", "savgol", "apodisation"]
    shift = float(table[2].split("|")[4])
    assert shift == pytest.approx(report["metrics"]["peak_shift"], rel=1e-3) and shift != 0  # not "0.00"
    assert f"(6 of 23 metrics shown; all of them for every method in {out})" in printed
    assert (f"Denoised level 0 of 2 ladders in {data_dir} (sample_0, sample_1), and 1 single spectrum without a "
            "score; scored against a pseudo-ground truth fused from each ladder's higher levels") in printed
    assert not list(out.parent.glob("metrics*.png"))
    test_cli.main(["-r", str(checkpoint), "--data_dir", str(data_dir), "--figures", str(tmp_path / "figures"),
                   "-d", "cpu"])
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["spectrum_0.png"]  # figure_count 1


def test_test_cli_on_one_file_and_bad_files(nmr_config, tmp_path):
    _, parsed = run_training(nmr_config, run_id="files")
    checkpoint = str(parsed.model_dir / "latest.pth")
    data_dir = tmp_path / "ladders"
    write_ladders(data_dir, count=1)
    test_cli.main(["-r", checkpoint, "--data_dir", str(data_dir / "sample_0.npz"), "--save_dir",
                   str(tmp_path / "one"), "-d", "cpu"])
    assert np.load(tmp_path / "one" / "sample_0.npz")["denoised"].shape == (256,)
    bad = np.load(data_dir / "sample_0.npz")["spectra"]
    bad[2, 10] = np.nan
    np.save(data_dir / "broken.npy", bad)
    with pytest.raises(DataError, match="broken.npy"):
        test_cli.main(["-r", checkpoint, "--data_dir", str(data_dir), "-d", "cpu"])


def train_on_a_directory(nmr_config, data_dir, run_id):
    """One epoch on 6 generated ladders in ``data_dir`` through NMRDirectory (2 held back): ``(trainer, parsed)``."""
    write_ladders(data_dir, count=6, clean=False)
    nmr_config["data_loader"] = {"type": "NMRDirectory", "args": {"data_dir": str(data_dir), "batch_size": 4,
                                                                  "levels": 4, "validation_split": 2}}
    nmr_config["trainer"]["args"].update(epochs=1, phase_a_epochs=1)
    nmr_config["lr_scheduler"]["args"]["warmup_epochs"] = 0
    return run_training(nmr_config, run_id=run_id)


def test_directory_loader_trains_and_scores_against_pseudo_ground_truth(nmr_config, tmp_path):
    trainer, _ = train_on_a_directory(nmr_config, tmp_path / "train", "dir")
    result = trainer.test()
    assert result["reference"] == "pseudo_ground_truth" and result["n"] == 6
    nmr_config["data_loader"]["args"]["levels"] = 5
    with pytest.raises(DataError, match="sample_0"):
        build(nmr_config)


def test_train_crop_cuts_batches_to_random_lengths_and_eval_simulation_sets_the_test_ladders(nmr_config):
    nmr_config["trainer"]["args"]["train_crop"] = [64, 192]
    nmr_config["data_loader"]["args"]["eval_simulation"] = {"multiplets": [1, 1], "max_couplings": 0}
    trainer = build(nmr_config)
    batch = next(iter(trainer.data_loader))[0]
    lengths = {trainer.crop(batch).shape[-1] for _ in range(50)}
    assert lengths <= {64, 80, 96, 112, 128, 144, 160, 176, 192} and len(lengths) > 3
    cropped = trainer.crop(batch)
    start = next(i for i in range(257 - cropped.shape[-1]) if torch.equal(batch[..., i:i + cropped.shape[-1]],
                                                                         cropped))
    assert start <= int(batch[0, -1].argmax()) < start + cropped.shape[-1]  # a window of the batch with a peak
    assert trainer.training_loss(cropped, 1)["loss"].isfinite()
    loader = trainer.config.build_data_loader(training=False, device=trainer.device)
    assert loader.dataset.spectra.shape[-1] == 256
    # the test ladders follow eval_simulation (one singlet each), the training ladders the simulation settings
    assert loader.settings.multiplets == (1, 3) and loader.eval_settings.multiplets == (1, 1)
    with pytest.raises(ConfigError, match="train_crop"):
        nmr_config["trainer"]["args"]["train_crop"] = [32, 16]
        build(nmr_config)


def test_directory_checkpoint_evaluates_spectra_of_other_axes_without_its_training_data(nmr_config, tmp_path):
    """test.py --data_dir with a checkpoint trained on NMRDirectory: the test machine lacks the training
    directory, and the user's ladders have other ppm axes and lengths (each is denoised on its own). Evaluation
    builds no training data."""
    import shutil

    train_dir = tmp_path / "train"
    _, parsed = train_on_a_directory(nmr_config, train_dir, "dir_eval")
    shutil.rmtree(train_dir)
    mine = tmp_path / "mine"
    write_ladders(mine, count=1, clean=False)
    other = write_ladders(tmp_path / "other", count=1, clean=False, seed=5)
    np.savez(mine / "shifted.npz", spectra=other["spectra"][0].double().numpy(),
             ppm=other["ppm"].double().numpy() + 0.37)
    longer = np.concatenate([other["spectra"][0].double().numpy()] * 2, axis=1)
    np.savez(mine / "longer.npz", spectra=longer, ppm=np.linspace(12.0, -1.0, longer.shape[1]))
    out_dir = tmp_path / "denoised"
    test_cli.main(["-r", str(parsed.model_dir / "latest.pth"), "--data_dir", str(mine), "--save_dir", str(out_dir),
                   "-d", "cpu"])
    assert np.load(out_dir / "shifted.npz")["denoised"].shape == (256,)
    assert np.load(out_dir / "longer.npz")["denoised"].shape == (512,)
    assert np.allclose(np.load(out_dir / "shifted.npz")["ppm"], other["ppm"].double().numpy() + 0.37)


def test_a_window_that_loses_its_peak_when_prepared_is_dropped_not_fatal(nmr_config, monkeypatch):
    """A cropped window can pass the peak check on its raw top level and fail it once aligned (a sub-point shift
    lowers a marginal narrow peak): training drops that window, as it drops those without any peak, instead of
    stopping with "this ladder has no peak" (seen in epoch 2 of a pretrained-model run)."""
    import trainer.nmr_denoise as module
    from data_loader.nmr.fusion import LadderError

    nmr_config["trainer"]["args"]["train_crop"] = [128, 128]
    trainer = build(nmr_config)
    batch = next(iter(trainer.data_loader))[0]
    real, calls = module.prepare_ladder, []

    def refuse_the_second_once(windows, **kwargs):
        calls.append(len(windows))
        if len(calls) == 1:
            raise LadderError(1, "has no peak above the noise")
        return real(windows, **kwargs)

    monkeypatch.setattr(module, "prepare_ladder", refuse_the_second_once)
    windows = trainer.crop(batch)
    terms = trainer.training_loss(windows, 1, [f"l{i}" for i in range(len(windows))])
    kept = len(trainer.with_peaks(windows, None)[0])
    assert calls == [kept, kept - 1] and terms["loss"].isfinite()
    monkeypatch.setattr(module, "prepare_ladder", lambda windows, **kwargs: (_ for _ in ()).throw(
        LadderError(0, "has no peak above the noise")))
    with pytest.raises(DataError, match="train_crop"):
        trainer.training_loss(windows, 1)
