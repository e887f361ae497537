"""Residual 1D U-Net for real-valued spectra (§4 of the NMR plan): ``(B, L) -> (B, L)``, any length L."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.registry import MODELS


def _groups(channels: int, wanted: int = 8) -> int:
    """The largest group count ≤ ``wanted`` that divides ``channels`` (GroupNorm needs a divisor)."""
    return next(g for g in range(min(wanted, channels), 0, -1) if channels % g == 0)


class SqueezeExcite1d(nn.Module):
    """Channel attention: rescale channels by a gate computed from their means over the length."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean(-1))[..., None]


class ResidualBlock1d(nn.Module):
    """x + Conv1x1(GELU(GN(Conv_k(GELU(GN(x)))))), the k-point convolution dilated; SE gate optional."""

    def __init__(self, channels: int, kernel_size: int = 9, dilation: int = 1, se: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(channels), channels), nn.GELU(),
            nn.Conv1d(channels, channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation),
            nn.GroupNorm(_groups(channels), channels), nn.GELU(),
            nn.Conv1d(channels, channels, 1),
        )
        self.se = SqueezeExcite1d(channels) if se else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se(self.body(x))


@MODELS.register()
class UNet1D(nn.Module):
    """Residual 1D U-Net denoiser: output = input + predicted correction.

    Encoder: one residual block per level with a k-point convolution of dilation 1, 2, 4, 8 (level by
    level), stride-2 convolutions between levels; decoder: transposed-convolution upsampling, concatenation
    with the encoder's features of the same level, a 1×1 merge and a residual block; a 1×1 head. GroupNorm
    and GELU throughout; optional squeeze-excitation on the bottleneck and the shallowest level.

    Input ``(B, L)`` or ``(B, 1, L)`` float, any L (padded to a multiple of 2^(levels-1) by reflection and
    cropped back). Each spectrum is divided by its own amplitude (the maximum of a 5-point moving average of
    |x|) before the network and multiplied back after, so f(c·x) = c·f(x) for c > 0: spectra normalised in
    any way are denoised alike.

    Args:
        channels: width per level, shallow to bottleneck (the plan's 64-128-256-256: 2.99 M parameters).
        kernel_size: convolution length (odd).
        se: squeeze-excitation attention on the bottleneck and the first level.
    """

    def __init__(self, channels: list[int] = (64, 128, 256, 256), kernel_size: int = 9, se: bool = True):
        super().__init__()
        channels = list(channels)
        if len(channels) < 2 or any(c < 1 for c in channels):
            raise ValueError(f"channels must list at least 2 positive widths, got {channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        depth = len(channels)
        self.multiple = 2 ** (depth - 1)
        self.stem = nn.Conv1d(1, channels[0], kernel_size, padding=kernel_size // 2)
        self.encoder = nn.ModuleList(
            ResidualBlock1d(c, kernel_size, 2 ** i, se=se and i in (0, depth - 1)) for i, c in enumerate(channels))
        self.down = nn.ModuleList(nn.Conv1d(a, b, 2, stride=2) for a, b in zip(channels, channels[1:]))
        self.up = nn.ModuleList(nn.ConvTranspose1d(b, a, 2, stride=2) for a, b in zip(channels, channels[1:]))
        self.merge = nn.ModuleList(nn.Conv1d(2 * c, c, 1) for c in channels[:-1])
        self.decoder = nn.ModuleList(
            ResidualBlock1d(c, kernel_size, 2 ** i, se=se and i == 0) for i, c in enumerate(channels[:-1]))
        self.head = nn.Sequential(nn.GroupNorm(_groups(channels[0]), channels[0]), nn.GELU(),
                                  nn.Conv1d(channels[0], 1, 1))

    @staticmethod
    def amplitude(x: torch.Tensor) -> torch.Tensor:
        """Per-spectrum scale ``(B, 1)`` used for normalisation (a smoothed max, robust to single noise spikes)."""
        smooth = F.avg_pool1d(x.abs()[:, None], 5, stride=1, padding=2, count_include_pad=False)[:, 0]
        return smooth.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)

    @torch.no_grad()
    def denoise(self, spectra: torch.Tensor, max_points: int | None = None) -> torch.Tensor:
        """Inference on ``(B, L)`` spectra in chunks of at most ``max_points`` points (B·L) per forward; the
        caller sets eval mode. Default: 65,536 points on CPU, where the activations of a larger call spill out
        of the caches (16 spectra of 16,384 points in one call ran at 0.6x of one per call on 2 cores), and no
        limit on other devices, where larger calls fill the GPU."""
        if max_points is None:
            max_points = 65_536 if spectra.device.type == "cpu" else spectra.numel()
        chunk = max(1, max_points // max(spectra.shape[-1], 1))
        if chunk >= len(spectra):
            return self(spectra)
        return torch.cat([self(part) for part in spectra.split(chunk)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.dim() == 3
        if squeeze:
            x = x[:, 0]
        if x.dim() != 2:
            raise ValueError(f"UNet1D expects (B, L) or (B, 1, L) spectra, got shape {tuple(x.shape)}")
        length = x.shape[-1]
        scale = self.amplitude(x)
        z = x / scale
        pad = -length % self.multiple
        h = F.pad(z[:, None], (0, pad), mode="reflect" if 0 < pad < length else "replicate") if pad else z[:, None]
        h = self.stem(h)
        skips = []
        for i, block in enumerate(self.encoder):
            h = block(h)
            if i < len(self.down):
                skips.append(h)
                h = self.down[i](h)
        for i in reversed(range(len(self.up))):
            h = self.decoder[i](self.merge[i](torch.cat([self.up[i](h), skips[i]], dim=1)))
        out = (z + self.head(h)[:, 0, :length]) * scale
        return out[:, None] if squeeze else out
