"""NMR denoising losses and the 1D U-Net (issue 6: zero on a perfect prediction, positive otherwise; any L)."""
from __future__ import annotations

import pytest
import torch

from model.nmr_loss import (
    NMRDenoiseLoss,
    baseline_curvature_l1,
    consistency_l1,
    derivative_l1,
    peak_weighted_l1,
    residual_ratio_loss,
    window_integral_l1,
)
from model.unet1d import UNet1D

LENGTH = 512


def gaussian_peaks(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spectra whose baseline is exactly flat (Gaussians cut at 6 widths), with their peak and baseline masks."""
    x = torch.arange(LENGTH, dtype=torch.float64)
    clean = torch.zeros(batch, LENGTH, dtype=torch.float64)
    for b in range(batch):
        for centre, width, height in ((100 + 7 * b, 3.0, 1.0), (300, 4.0, 0.5), (420, 2.5, 0.8)):
            bump = height * torch.exp(-0.5 * ((x - centre) / width) ** 2)
            clean[b] += torch.where((x - centre).abs() < 6 * width, bump, torch.zeros_like(bump))
    peaks = clean > 0
    baseline = ~torch.nn.functional.max_pool1d(peaks[:, None].double(), 7, 1, 3)[:, 0].bool()
    return clean, peaks, baseline


def noise_ladder(clean: torch.Tensor, ratio: float, levels: int, independent: bool) -> torch.Tensor:
    """``(B, levels, L)`` clean + noise with σ_k = 0.05·T^-k (one pattern rescaled, or independent draws)."""
    gen = torch.Generator().manual_seed(0)
    shape = (clean.shape[0], levels, clean.shape[1])
    pattern = torch.randn(shape if independent else (clean.shape[0], 1, clean.shape[1]), generator=gen,
                          dtype=torch.float64)
    sigma = 0.05 * ratio ** -torch.arange(levels, dtype=torch.float64)
    return clean[:, None] + sigma[None, :, None] * pattern


def test_each_term_is_zero_on_a_perfect_prediction_and_positive_otherwise():
    clean, peaks, baseline = gaussian_peaks()
    wrong = clean + 0.01 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1), dtype=clean.dtype)
    assert peak_weighted_l1(clean, clean, peaks) == 0 and peak_weighted_l1(wrong, clean, peaks) > 0
    assert derivative_l1(clean, clean) == 0 and derivative_l1(wrong, clean) > 0
    assert baseline_curvature_l1(clean, baseline) == 0 and baseline_curvature_l1(wrong, baseline) > 0
    same = clean[:, None].expand(-1, 3, -1)
    assert consistency_l1(same) == 0 and consistency_l1(torch.stack([clean, wrong, clean], 1)) > 0
    inputs = noise_ladder(clean, 2.0, 4, independent=False)
    perfect = clean[:, None].expand_as(inputs)
    assert residual_ratio_loss(inputs, perfect, [0, 1, 2, 3], baseline, 2.0) < 1e-6
    assert residual_ratio_loss(inputs, inputs, [0, 1, 2, 3], baseline, 2.0) > 1   # no denoising at all
    assert residual_ratio_loss(inputs, perfect, [0, 1, 2, 3], baseline, 3.0) > 0.3  # the wrong T


def test_peak_weighting_multiplies_errors_on_peaks():
    clean, peaks, _ = gaussian_peaks()
    error = 0.1 * peaks.double()
    assert peak_weighted_l1(clean + error, clean, peaks, 6.0) == pytest.approx(
        6 * peak_weighted_l1(clean + error, clean, peaks, 1.0).item())


def test_residual_ratio_direction_is_the_physical_one():
    """With SNR rising in k, the noisier level i < j has the larger residual: ‖r_i‖/‖r_j‖ ≈ T^(j-i), not T^-(j-i)."""
    torch.manual_seed(0)
    clean, _, baseline = gaussian_peaks(batch=4)
    big = torch.zeros(4, 16384, dtype=torch.float64)   # long baselines: independent noise averages out
    inputs = noise_ladder(big, 2.0, 4, independent=True)
    perfect = big[:, None].expand_as(inputs)
    everywhere = torch.ones_like(big, dtype=torch.bool)
    assert residual_ratio_loss(inputs, perfect, [0, 1, 2, 3], everywhere, 2.0) < 0.03
    # the plan's T^-(j-i) is the same as a ratio of 1/T: far from what a perfect denoiser leaves
    assert residual_ratio_loss(inputs, perfect, [0, 1, 2, 3], everywhere, 0.5) > 1.0


def test_residual_ratio_uses_the_level_indices_given():
    clean, _, baseline = gaussian_peaks()
    inputs = noise_ladder(clean, 2.0, 4, independent=False)
    perfect = clean[:, None].expand_as(inputs)
    picked = [1, 3]  # levels 1 and 3 of the ladder: expected ratio T^2
    assert residual_ratio_loss(inputs[:, picked], perfect[:, picked], picked, baseline, 2.0) < 1e-6


def test_total_loss_weights_and_validation():
    clean, peaks, baseline = gaussian_peaks()
    loss = NMRDenoiseLoss()
    inputs = noise_ladder(clean, 2.0, 3, independent=False)
    terms = loss(clean, clean, peaks, baseline, inputs=inputs, outputs=clean[:, None].expand_as(inputs),
                 levels=[0, 1, 2], snr_ratio=2.0)
    assert set(terms) == {"loss", "rec", "deriv", "curv", "cons", "ratio"}
    assert terms["loss"] < 1e-6
    off = loss(clean + 0.01, clean, peaks, baseline, weights={**loss.weights, "rec": 0.0, "deriv": 0.0})
    assert "rec" not in off and off["loss"] == pytest.approx(0.1 * off["curv"].item())
    with pytest.raises(ValueError, match="unknown loss term"):
        NMRDenoiseLoss(weights={"recon": 1.0})
    with pytest.raises(ValueError, match="peak_weight"):
        NMRDenoiseLoss(peak_weight=0.5)


@pytest.mark.parametrize("length", [1, 7, 63, 257, 1000, 1025])
def test_unet_keeps_any_length(length):
    model = UNet1D(channels=[8, 16, 16, 16])
    x = torch.randn(3, length)
    assert model(x).shape == (3, length)
    assert model(x[:, None]).shape == (3, 1, length)


def test_unet_default_size_and_scale_equivariance():
    model = UNet1D().eval()
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 3_000_000
    x = torch.randn(2, 300)
    with torch.no_grad():
        assert torch.allclose(model(7.5 * x), 7.5 * model(x), rtol=1e-4, atol=1e-5)


def test_unet_rejects_bad_shapes_and_settings():
    with pytest.raises(ValueError, match="expects"):
        UNet1D(channels=[8, 8])(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="odd"):
        UNet1D(kernel_size=4)


def test_window_integral_l1_charges_area_not_zero_sum_wiggles():
    clean, peaks, _ = gaussian_peaks()
    assert window_integral_l1(clean, clean, peaks) < 1e-7
    # the term is the peak-weighted mean |moving 9-point mean of (pred - target)|, checked against a convolution
    pred = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    box = torch.nn.functional.conv1d((pred - clean)[:, None], torch.ones(1, 1, 9, dtype=torch.float64) / 9)[:, 0]
    weight = 1 + 5.0 * peaks[:, 4:4 + box.shape[-1]].float()
    assert window_integral_l1(pred, clean, peaks, 9, 6.0).item() == pytest.approx((weight * box.abs()).mean().item(),
                                                                                  rel=1e-5)
    # an alternating +-a wiggle (sums to zero over the window) and a positive shoulder of the same pointwise L1:
    # the rec term cannot tell them apart, the integral term charges only the shoulder
    index = torch.arange(LENGTH)
    wiggle = 0.05 * (-1.0) ** index * ((index > 100) & (index < 140))
    shoulder = 0.05 * ((index > 100) & (index < 140)).double()
    flat = torch.zeros(2, LENGTH, dtype=torch.float64)
    none = torch.zeros(2, LENGTH, dtype=torch.bool)
    assert peak_weighted_l1(flat + wiggle, flat, none).item() == pytest.approx(
        peak_weighted_l1(flat + shoulder, flat, none).item())
    # (an odd window holds one unpaired wiggle: 1/9 of the shoulder's cost)
    assert window_integral_l1(flat + wiggle, flat, none).item() < 0.15 * window_integral_l1(flat + shoulder, flat,
                                                                                            none).item()
    # erasing a line costs its local area, W times over on its peak points
    erased = window_integral_l1(torch.zeros_like(clean), clean, peaks, 9, 6.0)
    assert erased > 2 * window_integral_l1(torch.zeros_like(clean), clean, peaks, 9, 1.0)


def test_integral_term_is_off_by_default_and_its_window_is_validated():
    clean, peaks, baseline = gaussian_peaks()
    assert NMRDenoiseLoss().weights["integ"] == 0.0
    assert "integ" not in NMRDenoiseLoss()(clean + 0.01, clean, peaks, baseline)
    on = NMRDenoiseLoss(weights={"integ": 2.0}, integral_window=5)
    terms = on(clean + 0.01, clean, peaks, baseline)
    assert terms["integ"].item() == pytest.approx(window_integral_l1(clean + 0.01, clean, peaks, 5, 6.0).item())
    assert terms["loss"].item() == pytest.approx(terms["rec"].item() + 0.5 * terms["deriv"].item()
                                                 + 0.1 * terms["curv"].item() + 2.0 * terms["integ"].item())
    for bad in (1, 2.5, True, "9"):
        with pytest.raises(ValueError, match="integral_window must be an integer >= 2"):
            NMRDenoiseLoss(integral_window=bad)
