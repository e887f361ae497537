"""ResNet-50, ResNeXt-50 (32x4d) and ResNet-152 for ImageNet-LT, Places-LT and iNaturalist 2018.

Built from torchvision's definitions (no weights are downloaded). ``backbone`` returns pooled 2048-d
features and ``classifier`` is a linear layer, so two-stage methods can re-learn the classifier alone.
``pretrained`` loads a local state dict (e.g. ImageNet weights for Places-LT, as MiSLAS and SADE start
from); a file that needs unpickling code is refused.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from base.base_model import BackboneClassifier
from utils.errors import CheckpointError
from utils.registry import MODELS


class TorchvisionResNet(BackboneClassifier):
    """A torchvision ResNet split into ``backbone`` (to pooled features) and ``classifier`` (+ optional LWS).

    ``forward(x: (N, 3, H, W)) -> logits (N, num_classes)``.
    """

    def __init__(self, arch: str, num_classes: int, pretrained: str | None = None, lws: bool = False):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        import torchvision  # here, not at the top: it imports torch._dynamo (seconds), which only these models need

        net = getattr(torchvision.models, arch)(weights=None)
        if pretrained is not None:
            _load_pretrained(net, Path(pretrained))
        features = net.fc.in_features
        net.fc = nn.Identity()
        super().__init__(net, features, num_classes, lws)


def _load_pretrained(net: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"pretrained weights {path} do not exist; give the path of a torchvision state dict "
                         "(.pth) saved on this machine")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read pretrained weights {path} safely: {str(err).splitlines()[0]}") from err
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise CheckpointError(f"pretrained weights {path} do not fit: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}")


@MODELS.register()
def ResNet50(num_classes: int, pretrained: str | None = None, lws: bool = False) -> TorchvisionResNet:
    """ResNet-50 (torchvision blocks), linear classifier; iNaturalist 2018 backbone."""
    return TorchvisionResNet("resnet50", num_classes, pretrained, lws)


@MODELS.register()
def ResNeXt50(num_classes: int, pretrained: str | None = None, lws: bool = False) -> TorchvisionResNet:
    """ResNeXt-50 32x4d (torchvision blocks), linear classifier; ImageNet-LT backbone."""
    return TorchvisionResNet("resnext50_32x4d", num_classes, pretrained, lws)


@MODELS.register()
def ResNet152(num_classes: int, pretrained: str | None = None, lws: bool = False) -> TorchvisionResNet:
    """ResNet-152 (torchvision blocks), linear classifier; Places-LT backbone (start from ImageNet weights)."""
    return TorchvisionResNet("resnet152", num_classes, pretrained, lws)
