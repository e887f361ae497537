"""ResNet for 32x32 inputs (He et al. 2016, §4.2), the ResNet-32 backbone of the CIFAR-LT papers.

Three stages of ``n`` basic blocks with 16/32/64 channels, identity shortcuts padded with zeros when the
shape changes (option A, as in MiSLAS, RIDE and SADE), global average pooling, then a linear classifier.
Any input size works (the bundled 8x8 digits included): the stride-2 stages halve it twice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from base.base_model import BackboneClassifier
from utils.registry import MODELS


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.pad = stride, planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        # Option A: subsample spatially, zero-pad the new channels equally on both sides.
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifarBackbone(nn.Module):
    """conv-BN-ReLU stem and three stages; ``forward`` returns pooled features ``(N, 4 * width)``."""

    def __init__(self, blocks_per_stage: int, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(width, width, blocks_per_stage, 1)
        self.layer2 = self._stage(width, 2 * width, blocks_per_stage, 2)
        self.layer3 = self._stage(2 * width, 4 * width, blocks_per_stage, 2)
        self.out_features = 4 * width
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class ResNetCifar(BackboneClassifier):
    """Backbone + linear classifier (+ optional LWS). ``forward(x: (N, in_channels, H, W)) -> (N, num_classes)``."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, width: int = 16, lws: bool = False):
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be >= 1, got {in_channels}, {width}")
        backbone = ResNetCifarBackbone((depth - 2) // 6, in_channels, width)
        super().__init__(backbone, backbone.out_features, num_classes, lws)


@MODELS.register()
def ResNet32(num_classes: int, in_channels: int = 3, width: int = 16, lws: bool = False) -> ResNetCifar:
    """ResNet-32 for CIFAR-sized images (5 basic blocks per stage, 16/32/64 channels, linear classifier).

    ``lws`` adds MiSLAS's learnable per-class logit scale (stage 2).
    """
    return ResNetCifar(32, num_classes, in_channels, width, lws)
