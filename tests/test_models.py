"""Model specifics beyond the registry-wide smoke tests."""
from __future__ import annotations

import os

import pytest
import torch
import torchvision

from model.resnet_cifar import ResNetCifar
from utils.errors import CheckpointError
from utils.registry import MODELS


def test_resnet32_has_the_paper_layout():
    model = MODELS.build({"type": "ResNet32", "args": {"num_classes": 100}}, ("arch",))
    blocks = [len(getattr(model.backbone, f"layer{i}")) for i in (1, 2, 3)]
    assert blocks == [5, 5, 5]  # 6n + 2 = 32 layers
    assert model.backbone.out_features == 64
    # about 0.46 M parameters, as reported for CIFAR ResNet-32
    assert 0.45e6 < model.num_trainable_parameters() < 0.48e6


@pytest.mark.parametrize("depth", [31, 2])
def test_resnet_cifar_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError, match="6n \\+ 2"):
        ResNetCifar(depth, 10)


def test_pretrained_weights_load_into_the_backbone(tmp_path):
    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = MODELS.build({"type": "ResNet50", "args": {"num_classes": 9, "pretrained": str(path)}}, ("arch",))
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert model.classifier.out_features == 9


def test_pretrained_file_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Exploit()}, path)
    with pytest.raises(CheckpointError, match="cannot read pretrained weights"):
        MODELS.build({"type": "ResNet50", "args": {"num_classes": 9, "pretrained": str(path)}}, ("arch",))
    assert not marker.exists()


def test_unet_denoise_in_chunks_equals_one_forward():
    """UNet1D.denoise splits large CPU batches for speed; every spectrum is denoised on its own, so the result
    must be that of one forward."""
    from model.unet1d import UNet1D

    torch.manual_seed(0)
    model = UNet1D(channels=(8, 16)).eval()
    spectra = torch.randn(5, 300)
    with torch.no_grad():
        whole = model(spectra)
    chunked = model.denoise(spectra, max_points=2 * 300)  # chunks of 2, 2 and 1 spectra
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert model.denoise(spectra).shape == (5, 300)
