"""CIFAR-10/100-LT loaders and batched augmentation, on generated files in torchvision's CIFAR format."""
from __future__ import annotations

import copy
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from fixtures import dump, run_training, write_cifar

import test_all
import train
from data_loader import batch_augment
from data_loader.batch_augment import OPS, BatchAugment
from data_loader.cifar import CIFAR10LT, CIFAR100LT, EpochPermutationSampler, read_cifar_file
from model.metric import ShotAccuracy, shot_groups
from parse_config import ConfigParser
from utils import dist
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError, DataError
from utils.registry import DATA_LOADERS, SAMPLERS

MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
STD = torch.tensor((0.2023, 0.1994, 0.2010)).view(1, 3, 1, 1)
C100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


# --- fixtures: real pickles with torchvision's file names, keys and dtypes (tests/fixtures.py) ----------
@pytest.fixture(scope="module")
def c100(cifar_root):
    """Full-size CIFAR-100: 100 x 500 train and 100 x 100 test random images (written once per session)."""
    return cifar_root["100"]


@pytest.fixture(scope="module")
def small100(tmp_path_factory):
    """A small CIFAR-100: 100 x 24 train, 100 x 10 test images."""
    return write_cifar(tmp_path_factory.mktemp("small100"), "100", 24, 10)


@pytest.fixture
def small_copy(small100, tmp_path):
    """A private copy of ``small100`` that a test may damage."""
    shutil.copytree(small100["root"], tmp_path / "data")
    return {**small100, "root": tmp_path / "data", "dir": tmp_path / "data" / "cifar-100-python"}


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    """The reference transform: ToTensor + Normalize on uint8 ``(N, 3, 32, 32)``."""
    return (pixels.float() / 255 - MEAN) / STD


def ldam_subsample(labels: np.ndarray, counts: list[int]) -> np.ndarray:
    """The released LDAM/MiSLAS/SADE ``gen_imbalanced_data``: global seed 0, per-class shuffle, take the head."""
    np.random.seed(0)
    keep = []
    for cls, n in enumerate(counts):
        idx = np.where(labels == cls)[0]
        np.random.shuffle(idx)
        keep.append(idx[:n])
    return np.concatenate(keep)


def collect(loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels, index = zip(*loader)
    return torch.cat(images), torch.cat(labels), torch.cat(index)


# --- the long-tailed profile and the test-agnostic splits -----------------------------------------------
def test_cifar100_ir100_training_set(c100):
    loader = CIFAR100LT(data_dir=str(c100["root"]), imb_factor=0.01)
    assert len(loader.dataset) == 10_847
    assert loader.cls_num_list[0] == 500 and loader.cls_num_list[99] == 5
    assert loader.num_classes == 100 and len(loader) == math.ceil(10_847 / 128)
    assert np.bincount(loader.dataset.targets.numpy(), minlength=100).tolist() == loader.cls_num_list
    # exactly the images the released code keeps (np.random.seed(0), per-class shuffle), in its order
    x, y = c100["train"]
    keep = ldam_subsample(y, loader.cls_num_list)
    assert torch.equal(loader.dataset.images, torch.from_numpy(x[keep]).view(-1, 3, 32, 32))
    assert torch.equal(loader.dataset.targets, torch.from_numpy(y[keep]))


def test_test_set_in_index_order_with_test_agnostic_splits(c100):
    loader = CIFAR100LT(data_dir=str(c100["root"]), training=False, imb_factor=0.01)
    assert len(loader.dataset) == 10_000 and loader.cls_num_list[0] == 500 and loader.cls_num_list[-1] == 5
    images, labels, index = collect(loader)
    assert torch.equal(index, torch.arange(10_000))  # index order, every image once
    x, y = c100["test"]
    assert torch.equal(labels, torch.from_numpy(y)) and torch.equal(loader.test_targets(), torch.from_numpy(y))
    assert torch.allclose(images, normalised(torch.from_numpy(x).view(-1, 3, 32, 32)), atol=1e-5)
    splits = loader.test_agnostic_splits()
    sizes = {name: len(idx) for name, idx in splits.items()}
    for f, n in {50: 2486, 25: 2956, 10: 3876, 5: 4932, 2: 7166}.items():
        assert sizes[f"forward{f}"] == sizes[f"backward{f}"] == n
    assert sizes["uniform"] == 10_000
    forward = np.bincount(y[splits["forward50"]], minlength=100)
    backward = np.bincount(y[splits["backward50"]], minlength=100)
    assert forward[0] == 100 and forward[99] == 2 and backward.tolist() == forward[::-1].tolist()


def test_shot_groups_35_35_30_and_no_few_classes_at_ir10(c100):
    ir100 = CIFAR100LT(data_dir=str(c100["root"]), imb_factor=0.01).cls_num_list
    assert [len(g) for g in shot_groups(ir100, 100, 20).values()] == [35, 35, 30]
    ir10 = CIFAR100LT(data_dir=str(c100["root"]), imb_factor=0.1).cls_num_list
    assert sum(ir10) == 19_573 and shot_groups(ir10, 100, 20)["few"] == []
    metric = ShotAccuracy(ir10)
    target = torch.arange(100).repeat(3)
    metric.update(torch.nn.functional.one_hot(target, 100).float(), target)
    result = metric.compute()
    assert result["few"] is None and result["many"] == 100.0


def test_cifar10lt(tmp_path):
    data = write_cifar(tmp_path, "10", 5000, 20)
    loader = CIFAR10LT(data_dir=str(tmp_path), imb_factor=0.01)
    assert loader.num_classes == 10 and loader.cls_num_list[0] == 5000 and loader.cls_num_list[-1] == 50
    assert len(loader.dataset) == 12_406
    x, y = data["train"]  # the five batch files, concatenated in order
    keep = ldam_subsample(y, loader.cls_num_list)
    assert torch.equal(loader.dataset.images, torch.from_numpy(x[keep]).view(-1, 3, 32, 32))
    test = CIFAR10LT(data_dir=str(tmp_path), training=False)
    assert len(test.dataset) == 200 and test.cls_num_list == loader.cls_num_list


# --- batches: alignment and augmentation ----------------------------------------------------------------
def test_unaugmented_batches_are_the_stored_images_at_their_index(small100):
    loader = CIFAR100LT(data_dir=str(small100["root"]), imb_factor=0.1, augment=[], batch_size=50)
    n = len(loader.dataset)
    seen = []
    for images, labels, index in loader:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
        assert labels.dtype == index.dtype == torch.int64 and len(labels) == len(index) == len(images)
        assert torch.equal(labels, loader.dataset.targets[index])
        assert torch.allclose(images, normalised(loader.dataset.images[index]), atol=1e-5)
        seen.append(index)
    assert sorted(torch.cat(seen).tolist()) == list(range(n))  # a permutation: every image once
    assert not torch.equal(torch.cat(seen), torch.arange(n))  # and shuffled


def test_crop_outputs_are_shifted_windows_of_the_padded_image(small100):
    loader = CIFAR100LT(data_dir=str(small100["root"]), imb_factor=0.1, augment=["crop"], batch_size=128)
    images, labels, index = next(iter(loader))
    assert images.shape == (128, 3, 32, 32) and torch.equal(labels, loader.dataset.targets[index])
    padded = torch.nn.functional.pad(loader.dataset.images[index], (4, 4, 4, 4))
    offsets = set()
    for i in range(0, 128, 8):
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.allclose(images[i], normalised(padded[i:i + 1, :, dy:dy + 32, dx:dx + 32])[0],
                                     atol=1e-5)]
        assert len(matches) == 1, f"image {i}: {len(matches)} windows match"
        offsets.add(matches[0])
    assert len(offsets) > 3  # offsets are drawn per image


def test_flip_is_per_image(small100):
    loader = CIFAR100LT(data_dir=str(small100["root"]), imb_factor=0.1, augment=["flip"], batch_size=128)
    images, _, index = next(iter(loader))
    clean = normalised(loader.dataset.images[index])
    same = (images - clean).abs().amax(dim=(1, 2, 3)) < 1e-5
    flipped = (images - clean.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same | flipped).all()) and 20 < int(flipped.sum()) < 108


def test_all_ops_keep_shape_dtype_input_and_are_reproducible():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    before = images.clone()
    augment = BatchAugment(OPS, MEAN.flatten().tolist(), STD.flatten().tolist(), jitter_p=1.0, blur_p=0.5)
    a = augment(images, torch.Generator().manual_seed(0))
    b = augment(images, torch.Generator().manual_seed(0))
    c = augment(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and a.dtype == torch.float32 and bool(torch.isfinite(a).all())
    assert torch.equal(images, before)  # the input is never modified
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="crop, flip, rotate, color_jitter, grayscale, blur"):
        BatchAugment(["crop", "cutout"])


def test_rotate_and_blur_match_torchvision_per_image():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    rotate = BatchAugment(["rotate"], rotate_degrees=15.0)
    out = rotate(images, torch.Generator().manual_seed(3))
    angles = (torch.rand(6, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 15.0
    ref = torch.stack([TF.rotate(images[i], float(angles[i])) for i in range(6)]).float() / 255
    assert torch.equal(out, ref)  # nearest neighbour, zero fill, same direction as RandomRotation
    blur = BatchAugment(["blur"], blur_p=1.0)
    out = blur(images, torch.Generator().manual_seed(4))
    sigma = 0.1 + 1.9 * torch.rand(2, 6, generator=torch.Generator().manual_seed(4))[0]
    ref = torch.stack([TF.gaussian_blur(images[i].float() / 255, [13, 13], [float(sigma[i])] * 2) for i in range(6)])
    assert torch.allclose(out, ref, atol=1e-5)


def test_color_ops_match_torchvision():
    x = torch.rand(4, 3, 8, 8)
    shift = torch.tensor([0.1, -0.1, 0.05, 0.5])
    ref = torch.stack([TF.adjust_hue(x[i], float(shift[i])) for i in range(4)])
    assert torch.allclose(batch_augment._shift_hue(x, shift), ref, atol=1e-5)
    factor = torch.tensor([0.6, 1.4, 1.0, 0.8])
    saturated = batch_augment._blend(x, batch_augment._grey(x), factor)
    assert torch.allclose(saturated, torch.stack([TF.adjust_saturation(x[i], float(factor[i])) for i in range(4)]),
                          atol=1e-6)
    grey = BatchAugment(["grayscale"], grayscale_p=1.0)((x * 255).to(torch.uint8))
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    jitter = BatchAugment(["color_jitter"], jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=1.0)
    pixels = (x * 255).to(torch.uint8)
    assert not torch.allclose(jitter(pixels), pixels.float() / 255)
    identity = BatchAugment(["color_jitter"], jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=1.0)
    assert torch.equal(identity(pixels), pixels.float() / 255)


# --- order: epochs, seeds, DDP shards, samplers ---------------------------------------------------------
def test_order_is_deterministic_per_seed_and_epoch(small100):
    make = dict(data_dir=str(small100["root"]), imb_factor=0.1, batch_size=64)
    a, b, other_seed = CIFAR100LT(**make), CIFAR100LT(**make), CIFAR100LT(**make, seed=1)
    for loader in (a, b, other_seed):
        loader.sampler.set_epoch(3)  # what BaseTrainer does at the start of every epoch
    torch.manual_seed(0)
    images_a, _, order_a = collect(a)
    torch.manual_seed(0)
    images_b, _, order_b = collect(b)
    assert torch.equal(order_a, order_b) and torch.equal(images_a, images_b)  # augmentation: global RNG
    assert not torch.equal(order_a, collect(other_seed)[2])
    a.set_epoch(4)
    assert not torch.equal(order_a, collect(a)[2])
    a.set_epoch(3)
    assert torch.equal(order_a, collect(a)[2])


def test_ddp_ranks_take_disjoint_shards(small100, monkeypatch):
    loader = CIFAR100LT(data_dir=str(small100["root"]), imb_factor=0.1, batch_size=16)
    n = len(loader.dataset)
    monkeypatch.setattr(dist, "world_size", lambda: 3)
    shards = []
    for rank in range(3):
        monkeypatch.setattr(dist, "rank", lambda r=rank: r)
        shards.append(collect(loader)[2])
        assert len(shards[-1]) == math.ceil(n / 3) and len(loader) == math.ceil(math.ceil(n / 3) / 16)
    everything = torch.cat(shards)
    assert set(everything.tolist()) == set(range(n)) and len(everything) - n == (-n) % 3  # padding only


def test_registered_sampler_is_built_with_training_labels(small100):
    class ReverseSampler(torch.utils.data.Sampler):
        def __init__(self, targets: list, stride: int = 1):
            self.targets, self.stride, self.epoch = targets, stride, 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            return iter(range(len(self.targets) - 1, -1, -self.stride))

        def __len__(self):
            return math.ceil(len(self.targets) / self.stride)

    SAMPLERS.register(ReverseSampler, name="TestOnlyReverseSampler")
    try:
        loader = CIFAR100LT(data_dir=str(small100["root"]), imb_factor=0.1, batch_size=32,
                            sampler={"type": "TestOnlyReverseSampler", "args": {"stride": 2}})
        n = len(loader.dataset)
        assert isinstance(loader.sampler, ReverseSampler) and loader.sampler.targets == loader.dataset.targets.tolist()
        _, labels, index = collect(loader)
        assert index.tolist() == list(range(n - 1, -1, -2)) and len(loader) == math.ceil(len(index) / 32)
        assert torch.equal(labels, loader.dataset.targets[index])
        loader.set_epoch(7)
        assert loader.sampler.epoch == 7
        with pytest.raises(ConfigError, match=r'config\["data_loader"\]\["args"\]\["sampler"\].*strides'):
            CIFAR100LT(data_dir=str(small100["root"]), imb_factor=0.1,
                       sampler={"type": "TestOnlyReverseSampler", "args": {"strides": 2}})
    finally:
        SAMPLERS._entries.pop("TestOnlyReverseSampler", None)


def test_drop_last_and_default_sampler(small100):
    loader = CIFAR100LT(data_dir=str(small100["root"]), imb_factor=0.1, batch_size=100, drop_last=True)
    n = len(loader.dataset)
    assert isinstance(loader.sampler, EpochPermutationSampler) and len(loader) == n // 100
    assert all(len(labels) == 100 for _, labels, _ in loader)


# --- validation -----------------------------------------------------------------------------------------
def test_heldout_validation_is_balanced_and_disjoint(c100):
    loader = CIFAR100LT(data_dir=str(c100["root"]), imb_factor=0.01, validation="heldout", val_per_class=20)
    assert loader.cls_num_list[0] == 480 and loader.cls_num_list[-1] == 4  # n_max = 500 - 20
    valid = loader.split_validation()
    _, labels, index = collect(valid)
    assert torch.equal(index, torch.arange(2000))
    assert np.bincount(labels.numpy(), minlength=100).tolist() == [20] * 100
    rows = {bytes(img.numpy().tobytes()) for img in loader.dataset.images}
    assert not any(bytes(img.numpy().tobytes()) in rows for img in valid.dataset.images)
    assert "held-out" in loader.validation_source and "2000 images" in loader.validation_source


def test_test_validation_says_it_selects_on_test(small100):
    loader = CIFAR100LT(data_dir=str(small100["root"]), imb_factor=0.1)
    valid = loader.split_validation()
    assert len(valid.dataset) == 1000 and "test split" in loader.validation_source
    assert "heldout" in loader.validation_source  # the one-switch alternative is named
    assert CIFAR100LT(data_dir=str(small100["root"]), imb_factor=0.1, validation="none").split_validation() is None


def test_augmented_test_loader_for_sade_scoring(small100):
    loader = CIFAR100LT(data_dir=str(small100["root"]), training=False, imb_factor=0.1,
                        augment=["crop", "flip", "rotate"], augmented_split_scoring=True)
    assert loader.augmented_split_scoring is True
    clean, labels, index = collect(loader)
    augmented, aug_labels, aug_index = collect(loader.augmented_test_loader())
    assert torch.equal(index, aug_index) and torch.equal(labels, aug_labels)
    assert not torch.allclose(clean, augmented)


# --- errors ---------------------------------------------------------------------------------------------
def test_missing_directory_names_path_url_and_download(tmp_path):
    with pytest.raises(DataError) as err:
        CIFAR100LT(data_dir=str(tmp_path / "nowhere"))
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-100-python") in message and C100_URL in message
    assert '"download": true' in message


def test_missing_file_is_named(small_copy):
    (small_copy["dir"] / "test").unlink()
    with pytest.raises(DataError, match=r"cifar-100-python/test is missing"):
        CIFAR100LT(data_dir=str(small_copy["root"]), imb_factor=0.1)


def test_truncated_pickle_names_the_file(small_copy):
    path = small_copy["dir"] / "train"
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(DataError, match=f"{path}.*truncated"):
        CIFAR100LT(data_dir=str(small_copy["root"]), imb_factor=0.1)


@pytest.mark.parametrize("content, expected", [
    ({b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 10}, r"lacks the key\(s\) \['fine_labels'\]"),
    ({b"data": np.zeros((10, 1024), np.uint8), b"fine_labels": [0] * 10}, r"shape \(N, 3072\).*\(10, 1024\)"),
    ({b"data": np.zeros((10, 3072), np.float32), b"fine_labels": [0] * 10}, r"uint8.*float32"),
    ({b"data": np.zeros((10, 3072), np.uint8), b"fine_labels": [0] * 9}, r"10 integers"),
    ({b"data": np.zeros((10, 3072), np.uint8), b"fine_labels": [100] * 10}, r"outside 0..99"),
    ([1, 2, 3], r"not the dict"),
])
def test_malformed_files_name_the_file(small_copy, content, expected):
    path = small_copy["dir"] / "test"
    dump(path, content)
    with pytest.raises(DataError, match=str(path) + ".*" + expected):
        CIFAR100LT(data_dir=str(small_copy["root"]), training=False, imb_factor=0.1)


def test_pickle_with_foreign_global_is_refused_without_running_it(small_copy, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # creates the marker file when unpickled

    path = small_copy["dir"] / "test"
    dump(path, {b"data": Payload(), b"fine_labels": [0]})
    pickle.loads(path.read_bytes()).get(b"data").close()  # control: an ordinary unpickler runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DataError, match=f"{path} contains Python objects .*open"):
        CIFAR100LT(data_dir=str(small_copy["root"]), training=False, imb_factor=0.1)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 5])
def test_other_pickle_protocols_and_str_keys_are_read(tmp_path, protocol):
    data = write_cifar(tmp_path, "100", 6, 2, protocol=protocol)
    x, y = data["test"]
    dump(data["dir"] / "test", {"data": x, "fine_labels": y}, protocol)  # str keys, labels as an ndarray
    loader = CIFAR100LT(data_dir=str(tmp_path), training=False, imb_factor=0.5)
    assert torch.equal(loader.dataset.images, torch.from_numpy(x).view(-1, 3, 32, 32))
    assert loader.cls_num_list[0] == 6 and loader.cls_num_list[-1] == 3


def test_bad_arguments_are_config_errors_with_the_path(small100):
    spec = {"type": "CIFAR100LT", "args": {"data_dir": str(small100["root"]), "augment": ["crop", "mixup"]}}
    with pytest.raises(ConfigError, match=r'config\["data_loader"\].*mixup.*valid names: crop, flip, rotate'):
        DATA_LOADERS.build(spec, ("data_loader",), training=True)
    spec["args"] = {"data_dir": str(small100["root"]), "validation": "val"}
    with pytest.raises(ConfigError, match=r"validation.*one of 'test', 'heldout', 'none'"):
        DATA_LOADERS.build(spec, ("data_loader",), training=True)
    spec["args"] = {"data_dir": str(small100["root"]), "imb_factor": 0.01}  # 24 * 0.01 < 1 image
    with pytest.raises(ConfigError, match=r"leaves 31 classes \(69..99\) with no training images"):
        DATA_LOADERS.build(spec, ("data_loader",), training=True)


# --- end to end -----------------------------------------------------------------------------------------
def test_classifier_trainer_trains_and_evaluates_on_cifar100lt(small100, tiny_config, tmp_path):
    config = copy.deepcopy(tiny_config)
    config["name"] = "cifar_smoke"
    config["arch"] = {"type": "ResNet32", "args": {"in_channels": 3, "width": 4}}
    config["data_loader"] = {"type": "CIFAR100LT", "args": {"data_dir": str(small100["root"]), "imb_factor": 0.2,
                                                            "batch_size": 128, "augmented_split_scoring": True}}
    config["metrics"][2]["args"] = {"many_threshold": 15, "few_threshold": 8}
    config["trainer"]["args"].update(epochs=1, test_after_training=False)
    parsed = ConfigParser(config, run_id="smoke")
    trainer = train.build_trainer(parsed)
    assert isinstance(trainer.data_loader, CIFAR100LT) and trainer.num_classes == 100
    parsed.prepare_run_dirs()
    log = trainer.train()
    trainer.close()
    assert log["epoch"] == 1 and math.isfinite(log["loss"]) and 0 <= log["val_accuracy"] <= 100
    tested = trainer.test()
    assert tested["n"] == 1000 and set(tested["metrics"]) >= {"accuracy", "many", "medium", "few"}
    loader = parsed.build_data_loader(training=False, device=trainer.device)
    scored = test_all.evaluate_all(trainer, loader, loader.augmented_test_loader())
    assert scored["splits"]["uniform"]["n"] == 1000 and scored["splits"]["forward50"]["n"] < 1000
    assert (tmp_path / "saved" / "models" / "cifar_smoke" / "smoke" / "latest.pth").exists()


def smoke_config(tiny_config: dict, root: Path, epochs: int) -> dict:
    config = copy.deepcopy(tiny_config)
    config["name"] = "cifar_resume"
    config["arch"] = {"type": "ResNet32", "args": {"in_channels": 3, "width": 4}}
    config["data_loader"] = {"type": "CIFAR100LT", "args": {"data_dir": str(root), "imb_factor": 0.1,
                                                            "validation": "heldout", "val_per_class": 2,
                                                            "augment": ["crop", "flip", "rotate"]}}
    config["metrics"] = [{"type": "accuracy", "args": {}}]
    config["trainer"]["args"].update(epochs=epochs, test_after_training=False)
    return config




def test_resume_gives_the_same_weights_as_an_uninterrupted_run(small100, tiny_config, tmp_path):
    """Sample order from (seed, epoch), augmentation from the checkpointed torch RNG: resume is exact."""
    run(smoke_config(tiny_config, small100["root"], 3), "straight")
    run(smoke_config(tiny_config, small100["root"], 2), "split")
    split = tmp_path / "saved" / "models" / "cifar_resume" / "split" / "latest.pth"
    resumed_config = load_checkpoint(split)["config"]
    resumed_config["trainer"]["args"]["epochs"] = 3
    run(resumed_config, None, resume=split)
    a = load_checkpoint(tmp_path / "saved" / "models" / "cifar_resume" / "straight" / "latest.pth")
    b = load_checkpoint(split)
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_stay_on_the_device_and_match_cpu(small100):
    make = dict(data_dir=str(small100["root"]), imb_factor=0.1, batch_size=64)
    cpu = CIFAR100LT(**make, augment=[])
    gpu = CIFAR100LT(**make, augment=[], device="cuda")
    for (xc, yc, ic), (xg, yg, ig) in zip(cpu, gpu):
        assert xg.is_cuda and yg.is_cuda and not ig.is_cuda  # the index addresses host-side state
        assert torch.equal(ic, ig) and torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-5)
    augmented = CIFAR100LT(**make, augment=list(OPS), device=torch.device("cuda"))
    images, labels, index = next(iter(augmented))
    assert images.is_cuda and images.dtype == torch.float32 and images.shape == (64, 3, 32, 32)
    assert torch.equal(labels.cpu(), augmented.dataset.targets[index]) and bool(torch.isfinite(images).all())


def run(config: dict, run_id: str | None, resume=None):
    return run_training(config, run_id, resume)[0]


# --- hardening (issue 16): the unpickler admits only what CIFAR files are made of ----------------------------
def test_bare_numpy_reconstruct_cannot_pass_a_tiny_file_as_200000_images(tmp_path):
    """_reconstruct(ndarray, (200000, 3072), 'B') without a state is an uninitialised (zero-paged) array: a file of
    a few hundred bytes was read as 200,000 images with labels 0."""
    from fuzz_data import crafted_array, crafted_cifar

    path = tmp_path / "train"
    path.write_bytes(crafted_cifar(crafted_array((200_000, 3072), how="bare"),
                                   crafted_array((200_000,), how="bare")))
    assert path.stat().st_size < 400
    with pytest.raises(DataError, match=f"^{path}: calls numpy's _reconstruct with \\(200000, 3072\\).*uninitialised"):
        read_cifar_file(path, "fine_labels", 100)


def test_declared_array_sizes_are_checked_before_allocating(tmp_path):
    """A state declaring 50M images (143 GiB) is refused by its row count, before numpy allocates anything."""
    from fuzz_data import crafted_array, crafted_cifar

    path = tmp_path / "train"
    path.write_bytes(crafted_cifar(crafted_array((50_000_000, 3072), payload=b"\x00" * 3072), [0]))
    with pytest.raises(DataError, match=f"^{path}: an array of shape \\(50000000, 3072\\) declares 50,000,000 rows, "
                                        "more than 60,000.*refused before allocating"):
        read_cifar_file(path, "fine_labels", 100)
    path.write_bytes(crafted_cifar(crafted_array((2, 3072), payload=b"\x00" * 3072), [0, 0]))
    with pytest.raises(DataError, match=f"^{path}: an array of shape \\(2, 3072\\) and dtype uint8 needs 6,144 bytes "
                                        "but the file holds 3,072"):
        read_cifar_file(path, "fine_labels", 100)


def test_uninitialised_labels_are_refused_and_never_printed(tmp_path):
    """Labels from a bare _reconstruct were heap garbage, printed in the 'values range from' message."""
    from fuzz_data import crafted_array, crafted_cifar

    path = tmp_path / "test"
    payload = np.zeros((2, 3072), np.uint8).tobytes()
    path.write_bytes(crafted_cifar(crafted_array((2, 3072), payload=payload), crafted_array((2,), how="bare")))
    with pytest.raises(DataError, match="_reconstruct") as info:
        read_cifar_file(path, "fine_labels", 100)
    assert "range from" not in str(info.value)


def test_a_file_larger_than_its_image_bound_is_refused_unread(tmp_path):
    path = write_cifar(tmp_path, "100", 5, 1)["dir"] / "train"  # 500 images, 1.5 MB
    assert len(read_cifar_file(path, "fine_labels", 100)[0]) == 500  # under the default bound
    with pytest.raises(DataError, match=f"^{path} has .* bytes, more than a CIFAR file of at most 10 images can"):
        read_cifar_file(path, "fine_labels", 100, max_images=10)
    with pytest.raises(DataError, match=f"^{path}: an array of shape \\(500, 3072\\) declares 500 rows, more than 499"):
        read_cifar_file(path, "fine_labels", 100, max_images=499)


def test_a_declared_bytes_length_beyond_the_file_is_refused_unallocated(tmp_path):
    """BINBYTES8 declaring 143 GiB: the C unpickler allocates the declared length before reading it."""
    path = tmp_path / "train"
    path.write_bytes(b"\x80\x05\x8e" + (143 << 30).to_bytes(8, "little") + b"\x00" * 64)
    with pytest.raises(DataError, match=f"^{path} is not a readable CIFAR pickle .*bytes8"):
        read_cifar_file(path, "fine_labels", 100)


@pytest.mark.parametrize("labels, expected", [
    ([0, 10 ** 30], r"has 1000000000000000000000000000000 at index 1, outside 0..99"),
    ([0, np.int64(1)], r"must be 2 integers \(one per image\), got a .* at index 1|numpy.*scalar"),
    ((0, 1), r"must be 2 integers \(one per image\), got a tuple"),
    ([0, 1.0], r"got a float at index 1"),
])
def test_labels_are_a_list_of_ints_in_range(tmp_path, labels, expected):
    path = tmp_path / "test"
    dump(path, {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": labels}, protocol=2)
    with pytest.raises(DataError, match=f"^{path}.*({expected})"):
        read_cifar_file(path, "fine_labels", 100)
