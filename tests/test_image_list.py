"""ImageNet-LT-style loaders on a generated image folder with txt lists (6 classes, PNG and JPEG files)."""
from __future__ import annotations

import copy
import re
import shutil

import numpy as np
import pytest
import torch
from fixtures import run_training
from PIL import Image

import test_all
from data_loader.image_list import ImageListDataset
from data_loader.samplers import ClassAwareSampler
from utils.errors import ConfigError, DataError
from utils.registry import DATA_LOADERS

NUM_CLASSES = 6
TRAIN_COUNTS = [12, 8, 5, 3, 2, 1]  # of folders c0..c5; listed with label 5 - k, so label 0 is the rarest
VAL_PER_CLASS, TEST_PER_CLASS = 2, 4
FORWARD = [4, 3, 2, 2, 1, 1]  # test images of folders c0..c5 in the forward split list; backward mirrors it


def folder_label(path: str) -> int:
    """The label a list gives the images of folder ``images/c{k}/``."""
    return NUM_CLASSES - 1 - int(re.search(r"images/c(\d)/", path).group(1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Images of several sizes and modes; long-tailed train list, balanced val/test lists, split lists."""
    root = tmp_path_factory.mktemp("imagelist")
    rng = np.random.default_rng(0)
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    sizes = {"train": TRAIN_COUNTS, "val": [VAL_PER_CLASS] * NUM_CLASSES, "test": [TEST_PER_CLASS] * NUM_CLASSES}
    for k in range(NUM_CLASSES):
        (root / "images" / f"c{k}").mkdir(parents=True)
        for split, counts in sizes.items():
            for i in range(counts[k]):
                rel = f"images/c{k}/{split}_{i}.{'jpg' if i % 2 else 'png'}"
                image = Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 48 - 3 * i, 3), dtype=np.uint8))
                if i == 2:
                    image = image.convert("L")  # grey images must come out with 3 channels too
                elif i == 4 and split == "train":
                    image = image.convert("P")  # a palette PNG
                image.save(root / rel)
                lists[split].append(f"{rel} {folder_label(rel)}")
    for split, lines in lists.items():
        (root / f"Tiny_{split}.txt").write_text("\n".join(lines) + "\n")
    test = lists["test"]
    forward = [line for k in range(NUM_CLASSES) for line in test[k * 4:k * 4 + FORWARD[k]]]
    backward = [line for k in range(NUM_CLASSES) for line in test[k * 4:k * 4 + FORWARD[::-1][k]]]
    (root / "Tiny_forward2.txt").write_text("\n".join(reversed(forward)) + "\n")  # not in test-list order
    (root / "Tiny_backward2.txt").write_text("\n".join(backward) + "\n")
    (root / "Tiny_uniform.txt").write_text("\n".join(test) + "\n")
    return root


def loader_args(folder, **extra) -> dict:
    base = {"root": str(folder), "train_list": "Tiny_train.txt", "val_list": "Tiny_val.txt",
            "test_list": "Tiny_test.txt", "num_classes": NUM_CLASSES, "batch_size": 8, "num_workers": 0,
            "image_size": 32, "resize": 36,
            "split_lists": {"forward2": "Tiny_forward2.txt", "uniform": "Tiny_uniform.txt",
                            "backward2": "Tiny_backward2.txt"}}
    return {**base, **extra}


def build(folder, training=True, type="ImageNetLT", **extra):
    return DATA_LOADERS.build({"type": type, "args": loader_args(folder, **extra)}, ("data_loader",),
                              training=training)


def collect(loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels, index = zip(*loader)
    return torch.cat(images), torch.cat(labels), torch.cat(index)


def test_counts_batches_and_validation(folder):
    loader = build(folder)
    assert loader.cls_num_list == TRAIN_COUNTS[::-1] and loader.num_classes == NUM_CLASSES
    assert loader.class_map.tolist() == list(range(NUM_CLASSES))  # no remapping by default (SADE)
    images, labels, index = next(iter(loader))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and index.dtype == torch.int64
    assert -3 < float(images.min()) < 0 < float(images.max()) < 3  # ImageNet-normalised [0, 1] pixels
    _, labels, index = collect(loader)
    assert sorted(index.tolist()) == list(range(sum(TRAIN_COUNTS)))  # every image once per epoch
    assert labels.tolist() == [loader.dataset.targets[i] for i in index.tolist()]
    assert all(folder_label(loader.dataset.paths[i]) == int(t) for i, t in zip(index.tolist(), labels))
    valid = loader.split_validation()
    images, labels, index = collect(valid)
    assert images.shape == (NUM_CLASSES * VAL_PER_CLASS, 3, 32, 32) and index.tolist() == list(range(12))
    assert "validation list" in loader.validation_source and "Tiny_val.txt" in loader.validation_source


def test_test_loader_is_in_list_order_with_centre_crops(folder):
    test = build(folder, training=False)
    images, labels, index = collect(test)
    assert images.shape == (24, 3, 32, 32) and index.tolist() == list(range(24))
    assert torch.equal(labels, test.test_targets()) and test.test_targets().dtype == torch.int64
    assert torch.equal(collect(test)[0], images)  # the test transform is deterministic
    assert test.cls_num_list == TRAIN_COUNTS[::-1]  # from the train list, also when not training
    assert torch.equal(build(folder).test_targets(), labels)  # a training loader reports the test labels too


def test_sort_classes_by_count_remaps_every_split(folder):
    loader = build(folder, sort_classes_by_count=True)
    assert loader.cls_num_list == sorted(TRAIN_COUNTS, reverse=True)
    assert loader.class_map.tolist() == [5, 4, 3, 2, 1, 0]  # original label -> new: the rarest becomes last
    test = build(folder, training=False, sort_classes_by_count=True)
    assert test.cls_num_list == loader.cls_num_list and test.class_map.tolist() == loader.class_map.tolist()
    splits = {"train": (loader.dataset, collect(loader)), "val": (loader.split_validation().dataset,
                                                              collect(loader.split_validation())),
              "test": (test.dataset, collect(test))}
    for name, (dataset, (_, labels, index)) in splits.items():
        expected = [int(loader.class_map[folder_label(dataset.paths[i])]) for i in index.tolist()]
        assert labels.tolist() == expected, name
    # folder c0 has the most training images: class 0 after the remap, in every split
    assert test.test_targets()[:TEST_PER_CLASS].tolist() == [0] * TEST_PER_CLASS


def test_test_agnostic_splits_map_to_test_indices(folder):
    test = build(folder, training=False)
    splits = test.test_agnostic_splits()
    assert list(splits) == ["forward2", "uniform", "backward2"]
    targets = test.test_targets()
    for name, per_folder in (("forward2", FORWARD), ("backward2", FORWARD[::-1])):
        idx = torch.as_tensor(splits[name])
        counts = torch.bincount(targets[idx], minlength=NUM_CLASSES).tolist()
        assert counts == [per_folder[NUM_CLASSES - 1 - c] for c in range(NUM_CLASSES)], name
    expected_forward = [k * 4 + i for k in range(NUM_CLASSES) for i in range(FORWARD[k])]
    assert splits["forward2"].tolist() == expected_forward[::-1]  # file order, positions in the test list
    assert splits["uniform"].tolist() == list(range(24))


def test_split_entry_not_in_test_list_names_file_and_line(folder):
    (folder / "Tiny_bad_split.txt").write_text("images/c0/test_0.png 5\nimages/c0/train_0.png 5\n")
    test = build(folder, training=False, split_lists={"forward2": "Tiny_bad_split.txt"})
    with pytest.raises(DataError, match=r"Tiny_bad_split.txt, line 2: 'images/c0/train_0.png' is not in the test"):
        test.test_agnostic_splits()


def test_splits_need_split_lists_and_a_test_list_without_duplicates(folder):
    with pytest.raises(DataError, match="no split_lists configured.*ImageNet_LT_forward50.txt"):
        build(folder, training=False, split_lists=None).test_agnostic_splits()
    lines = (folder / "Tiny_test.txt").read_text().splitlines()
    (folder / "Tiny_test_dup.txt").write_text("\n".join(lines + lines[:1]) + "\n")
    with pytest.raises(DataError, match=r"Tiny_test_dup.txt, line 25: .* is listed again \(first on line 1\)"):
        build(folder, training=False, test_list="Tiny_test_dup.txt").test_agnostic_splits()


@pytest.mark.parametrize("line, message", [
    ("images/c0/train_0.png", "expected 'relative/path label'"),
    ("images/c0/train_0.png 5 extra", "expected 'relative/path label'"),
    ("images/c0/train_0.png five", "label 'five' is not an integer"),
    ("images/c0/train_0.png 6", "label 6 is outside 0..5"),
    ("images/c0/train_0.png -1", "label -1 is outside 0..5"),
    ("images/missing.png 1", "image .*missing.png does not exist"),
])
def test_bad_list_lines_name_file_and_line(folder, line, message):
    (folder / "Tiny_broken.txt").write_text("images/c0/train_1.jpg 5\n\n" + line + "\n")
    with pytest.raises(DataError, match=r"Tiny_broken.txt, line 3: " + message):
        build(folder, train_list="Tiny_broken.txt")


def test_validation_list_is_checked_when_the_loader_is_built(folder):
    (folder / "Tiny_val_broken.txt").write_text("images/c0/val_0.png 5\nimages/c0/val_9.png 5\n")
    with pytest.raises(DataError, match=r"Tiny_val_broken.txt, line 2: image .*val_9.png does not exist"):
        build(folder, val_list="Tiny_val_broken.txt")
    build(folder, val_list="Tiny_val_broken.txt", validation="none")  # a list not in use is not read


def test_missing_list_file_and_root(folder, tmp_path):
    with pytest.raises(DataError, match=r"image list .*Nope.txt does not exist; the lists come with SADE"):
        build(folder, train_list="Nope.txt")
    with pytest.raises(DataError, match=r"image root .*elsewhere .*is not a directory"):
        build(folder, root=str(tmp_path / "elsewhere"), data_dir=str(folder))


def test_corrupt_image_is_named_when_loaded(folder):
    (folder / "images" / "c0" / "corrupt.jpg").write_bytes(b"not a jpeg at all" * 10)
    (folder / "Tiny_corrupt.txt").write_text("images/c0/train_0.png 5\nimages/c0/corrupt.jpg 5\n")
    dataset = build(folder, train_list="Tiny_corrupt.txt").dataset
    assert isinstance(dataset, ImageListDataset) and dataset[0][0].shape == (3, 32, 32)
    with pytest.raises(DataError, match=r"cannot read image .*corrupt.jpg \(.*Tiny_corrupt.txt, line 2\)"):
        dataset[1]
    # loaded in a worker process, it still reaches the main process as a DataError naming the file
    loader = build(folder, train_list="Tiny_corrupt.txt", num_workers=1, shuffle=False, batch_size=1)
    with pytest.raises(DataError, match=r"corrupt.jpg \(.*Tiny_corrupt.txt, line 2\)"):
        collect(loader)


def test_unchecked_missing_image_fails_at_load_time(folder):
    (folder / "Tiny_gone.txt").write_text("images/c0/train_0.png 5\nimages/c0/gone.png 5\n")
    loader = build(folder, train_list="Tiny_gone.txt", check_files=False, shuffle=False)
    with pytest.raises(DataError, match=r"cannot read image .*gone.png \(.*Tiny_gone.txt, line 2\)"):
        collect(loader)


def test_class_aware_sampler_is_honoured(folder):
    spec = {"type": "ClassAwareSampler", "args": {"num_samples_cls": 2, "num_samples": 48, "seed": 1}}
    loader = build(folder, sampler=spec)
    assert isinstance(loader.sampler, ClassAwareSampler) and len(loader) == 6
    _, labels, index = collect(loader)
    assert torch.equal(labels, torch.as_tensor(loader.dataset.targets)[index])
    # 24 visits of 2 = 4 full cycles over the 6 classes: every class 8 times, against 12 : 1 in the list
    assert torch.bincount(labels, minlength=NUM_CLASSES).tolist() == [8] * NUM_CLASSES
    assert all(labels[k] == labels[k + 1] for k in range(0, 48, 2))
    loader.sampler.set_epoch(1)  # what the trainer does each epoch
    assert not torch.equal(collect(loader)[2], index)
    with pytest.raises(ConfigError, match=r'config\["data_loader"\]\["args"\]\["sampler"\].*num_sample_cls'):
        build(folder, sampler={"type": "ClassAwareSampler", "args": {"num_sample_cls": 2}})


def test_dataset_defaults_and_validation_protocols(folder, tmp_path):
    inat = tmp_path / "inat"
    shutil.copytree(folder / "images", inat / "images")
    shutil.copy(folder / "Tiny_train.txt", inat / "iNaturalist18_train.txt")
    shutil.copy(folder / "Tiny_test.txt", inat / "iNaturalist18_val.txt")  # iNat's val list is the test set
    spec = {"type": "INaturalist2018", "args": {"root": str(inat), "num_classes": NUM_CLASSES, "num_workers": 0,
                                                "image_size": 32, "resize": 36}}
    loader = DATA_LOADERS.build(spec, ("data_loader",), training=True)
    assert loader.validation == "test" and "published protocol" in loader.validation_source
    assert len(loader.split_validation().dataset) == 24 and loader.lists["val"] is None
    spec["args"]["validation"] = "val"
    with pytest.raises(ConfigError, match="INaturalist2018 has no validation list"):
        DATA_LOADERS.build(spec, ("data_loader",), training=True)
    with pytest.raises(ConfigError, match=r"\"validation\"\]: ImageNetLT expects one of 'val', 'test', 'none'"):
        build(folder, validation="heldout")
    places = build(folder, type="PlacesLT", validation="test")
    assert "flatters" in places.validation_source
    with pytest.raises(DataError, match=r"Places_LT_train.txt does not exist"):
        build(folder, type="PlacesLT", train_list=None)


def test_trains_one_epoch_and_scores_every_split(folder, tiny_config):
    config = copy.deepcopy(tiny_config)
    config["arch"] = {"type": "ResNet32", "args": {"num_classes": NUM_CLASSES, "width": 4}}
    config["data_loader"] = {"type": "ImageNetLT", "args": loader_args(folder, sort_classes_by_count=True)}
    config["metrics"] = [{"type": "accuracy", "args": {}},
                         {"type": "shot_accuracy", "args": {"many_threshold": 6, "few_threshold": 3}}]
    config["trainer"]["args"]["epochs"] = 1
    trainer, parsed = run_training(config, "img")
    assert (parsed.model_dir / "latest.pth").is_file()
    result = test_all.evaluate_all(trainer, parsed.build_data_loader(training=False), shot_args={})
    assert list(result["splits"]) == ["forward2", "uniform", "backward2"]
    assert result["splits"]["forward2"]["n"] == sum(FORWARD) and result["splits"]["uniform"]["n"] == 24
    assert result["logits"].shape == (24, NUM_CLASSES) and torch.isfinite(result["logits"]).all()
    assert 0 <= result["splits"]["uniform"]["all"] <= 100
