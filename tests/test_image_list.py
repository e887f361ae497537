"""ImageNet-LT-style loaders on a generated image folder with txt lists."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

import test_all
import train
from parse_config import ConfigParser
from utils.errors import DataError
from utils.registry import DATA_LOADERS

TRAIN_COUNTS = [12, 8, 5, 3, 2, 1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """6 classes of small RGB images (PNG and JPEG); long-tailed train list, balanced val/test lists."""
    root = tmp_path_factory.mktemp("imagelist")
    rng = np.random.default_rng(0)
    lists = {"train": [], "val": [], "test": []}
    for cls in range(6):
        (root / "images" / f"c{cls}").mkdir(parents=True)
        # the train list numbers classes in reverse frequency order so that remapping has work to do
        label = 5 - cls
        sizes = {"train": TRAIN_COUNTS[cls], "val": 2, "test": 4}
        for split, n in sizes.items():
            for i in range(n):
                ext = "jpg" if i % 2 else "png"
                rel = f"images/c{cls}/{split}_{i}.{ext}"
                pixels = rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / rel)
                lists[split].append(f"{rel} {label}")
    for split, lines in lists.items():
        (root / f"Tiny_{split}.txt").write_text("\n".join(lines) + "\n")
    test = lists["test"]
    (root / "Tiny_forward2.txt").write_text("\n".join(test[:12]) + "\n")
    (root / "Tiny_backward2.txt").write_text("\n".join(test[12:]) + "\n")
    return root


def args(folder, **extra):
    base = {"root": str(folder), "train_list": "Tiny_train.txt", "val_list": "Tiny_val.txt",
            "test_list": "Tiny_test.txt", "num_classes": 6, "batch_size": 8, "num_workers": 0,
            "image_size": 32, "resize": 36,
            "split_lists": {"forward2": "Tiny_forward2.txt", "backward2": "Tiny_backward2.txt"}}
    return {**base, **extra}


def build(folder, training=True, **extra):
    return DATA_LOADERS.build({"type": "ImageNetLT", "args": args(folder, **extra)}, ("data_loader",),
                              training=training)


def test_counts_batches_and_validation(folder):
    loader = build(folder)
    assert loader.cls_num_list == [1, 2, 3, 5, 8, 12]  # labels were given in reverse order
    images, labels, index = next(iter(loader))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and index.dtype == torch.int64
    assert len(loader.dataset) == sum(TRAIN_COUNTS)
    valid = loader.split_validation()
    assert len(valid.dataset) == 12 and "validation list" in loader.validation_source


def test_sort_classes_by_count_remaps_every_split(folder):
    loader = build(folder, sort_classes_by_count=True)
    assert loader.cls_num_list == [12, 8, 5, 3, 2, 1]
    assert loader.class_map.tolist() == [5, 4, 3, 2, 1, 0]
    test = build(folder, training=False, sort_classes_by_count=True)
    # the first test images are from folder c0, listed with label 5, the most frequent class -> 0
    assert test.test_targets()[0] == 0 and test.cls_num_list == [12, 8, 5, 3, 2, 1]


def test_test_agnostic_splits_map_to_test_indices(folder):
    test = build(folder, training=False)
    splits = test.test_agnostic_splits()
    assert list(splits) == ["forward2", "backward2"]
    assert splits["forward2"].tolist() == list(range(12)) and splits["backward2"].tolist() == list(range(12, 24))


def test_split_entry_not_in_test_list_names_file_and_line(folder, tmp_path):
    bad = folder / "Tiny_bad_split.txt"
    bad.write_text("images/c0/test_0.png 5\nimages/c0/train_0.png 5\n")
    test = build(folder, training=False, split_lists={"forward2": "Tiny_bad_split.txt"})
    with pytest.raises(DataError, match=r"Tiny_bad_split.txt, line 2: 'images/c0/train_0.png' is not in the test"):
        test.test_agnostic_splits()


@pytest.mark.parametrize("line, message", [
    ("images/c0/train_0.png", "expected 'relative/path label'"),
    ("images/c0/train_0.png five", "label 'five' is not an integer"),
    ("images/c0/train_0.png 6", "label 6 is outside 0..5"),
    ("images/missing.png 1", "image .*missing.png does not exist"),
])
def test_bad_list_lines_name_file_and_line(folder, line, message):
    bad = folder / "Tiny_broken.txt"
    bad.write_text("images/c0/train_1.jpg 5\n" + line + "\n")
    with pytest.raises(DataError, match=r"Tiny_broken.txt, line 2: " + message):
        build(folder, train_list="Tiny_broken.txt")


def test_missing_list_file(folder):
    with pytest.raises(DataError, match="image list .*Nope.txt does not exist"):
        build(folder, train_list="Nope.txt")


def test_corrupt_image_is_named_when_loaded(folder):
    corrupt = folder / "images" / "c0" / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg at all")
    (folder / "Tiny_corrupt.txt").write_text("images/c0/corrupt.jpg 5\n")
    loader = build(folder, train_list="Tiny_corrupt.txt")
    with pytest.raises(DataError, match=r"cannot read image .*corrupt.jpg \(.*Tiny_corrupt.txt, line 1\)"):
        next(iter(loader))


def test_class_aware_sampler_is_honoured(folder):
    loader = build(folder, sampler={"type": "ClassAwareSampler", "args": {"num_samples_cls": 2}})
    labels = torch.as_tensor(loader.dataset.targets)[loader.sampler.indices()]
    counts = torch.bincount(labels, minlength=6)
    assert counts.max() - counts.min() <= 2  # every class about equally often, not 12 : 1


def test_trains_and_scores_every_split(folder, tiny_config):
    config = copy.deepcopy(tiny_config)
    config["arch"] = {"type": "ResNet32", "args": {"num_classes": 6, "width": 4}}
    config["data_loader"] = {"type": "ImageNetLT", "args": args(folder)}
    config["metrics"] = [{"type": "accuracy", "args": {}}, {"type": "shot_accuracy",
                                                             "args": {"many_threshold": 6, "few_threshold": 3}}]
    config["trainer"]["args"]["epochs"] = 1
    parsed = ConfigParser(config, run_id="img")
    trainer = train.build_trainer(parsed)
    parsed.prepare_run_dirs()
    trainer.train()
    result = test_all.evaluate_all(trainer, parsed.build_data_loader(training=False), shot_args={})
    assert set(result["splits"]) == {"forward2", "backward2"}
    assert result["splits"]["forward2"]["n"] == 12
    trainer.close()
