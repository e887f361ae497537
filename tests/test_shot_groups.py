"""One many/medium/few definition per dataset family, in every shipped config of that family, with no group empty
at the config's own imbalance; and the table footnote that names it."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_loader.long_tail import long_tailed_counts
from model.metric import describe_shot_groups, shot_groups
from parse_config import iter_config_files, load_json
from utils.registry import DATA_LOADERS

ROOT = Path(__file__).resolve().parents[1]
LONG_TAILED = {"CIFAR10LT", "CIFAR100LT", "ImageNetLT", "PlacesLT", "INaturalist2018", "DigitsLT"}
CONFIGS = [p for p in iter_config_files(ROOT / "configs")
           if load_json(p).get("data_loader", {}).get("type") in LONG_TAILED]
# images per class of the full CIFAR training files
CIFAR_PER_CLASS = {"CIFAR10LT": (5000, 10), "CIFAR100LT": (500, 100)}
# the list-based sets have one training profile each: (classes, most, fewest images a class) as published
# (OLTR, Liu et al. 2019; iNaturalist 2018). Their count-based groups are checked on the exponential profile
# between those extremes; Places-LT's lists give 131 / 163 / 71 classes (reference/lnr.md 1.5).
LIST_PROFILES = {"ImageNetLT": (1000, 1280, 5), "PlacesLT": (365, 4980, 5), "INaturalist2018": (8142, 1000, 2)}


def training_counts(config: dict) -> list[int]:
    """The config's training images per class (CIFAR and digits: what the loader builds; lists: see above)."""
    kind, args = config["data_loader"]["type"], config["data_loader"].get("args") or {}
    if kind in CIFAR_PER_CLASS:
        per_class, classes = CIFAR_PER_CLASS[kind]
        held_out = args.get("val_per_class", 20) if args.get("validation") == "heldout" else 0
        return long_tailed_counts(per_class - held_out, classes, args.get("imb_factor", 0.01))
    if kind == "DigitsLT":
        return DATA_LOADERS.build({"type": kind, "args": {k: v for k, v in args.items() if k != "batch_size"}},
                                  ("data_loader",), training=True).cls_num_list
    classes, most, fewest = LIST_PROFILES[kind]
    return long_tailed_counts(most, classes, fewest / most)


def test_every_long_tailed_loader_names_its_family_definition():
    for name in LONG_TAILED:
        assert DATA_LOADERS.get(name).shot_groups, name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_uses_its_family_definition_and_no_group_is_empty(path):
    config = load_json(path)
    kind = config["data_loader"]["type"]
    family = DATA_LOADERS.get(kind).shot_groups
    shots = [m for m in config.get("metrics", []) if m["type"] == "shot_accuracy"]
    assert len(shots) == 1, f"{path}: one shot_accuracy metric, with {family}"
    assert shots[0]["args"] == family, f"{path}: many/medium/few of {kind} configs are {family}"
    counts = training_counts(config)
    groups = shot_groups(counts, **family)
    assert all(groups.values()), f"{path}: empty group at its imbalance: {describe_shot_groups(counts, family)}"
    assert sorted(c for g in groups.values() for c in g) == list(range(len(counts)))  # every class, once
    assert "many/medium/few" in config["doc"].lower(), f"{path}: the doc names the many/medium/few definition"


def test_count_thresholds_would_leave_cifar10_few_empty():
    """Why CIFAR-10-LT uses class ranges: at IR 100 (5,000 down to 50) no class has fewer than 20 images."""
    counts = long_tailed_counts(5000, 10, 0.01)
    assert shot_groups(counts)["few"] == []
    assert shot_groups(counts, ranges=DATA_LOADERS.get("CIFAR10LT").shot_groups["ranges"]) == {
        "many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}
    # and the ranges are the > 1500 / < 200 groups at IR 100
    assert shot_groups(counts, many_threshold=1500, few_threshold=200)["few"] == [7, 8, 9]


def test_cifar100_ranges_are_the_standard_count_groups_at_ir100():
    counts = long_tailed_counts(500, 100, 0.01)
    ranges = shot_groups(counts, ranges=DATA_LOADERS.get("CIFAR100LT").shot_groups["ranges"])
    assert ranges == shot_groups(counts, many_threshold=100, few_threshold=20)
    assert [len(g) for g in ranges.values()] == [35, 35, 30]


def test_footnote_names_the_definition_and_empty_groups():
    counts = long_tailed_counts(500, 100, 0.01)
    assert describe_shot_groups(counts) == ("many/medium/few by training images: many > 100 (35 classes), "
                                            "medium 20-100 (35), few < 20 (30)")
    assert describe_shot_groups(long_tailed_counts(5000, 10, 0.01), {"ranges": [[0, 3], [3, 7], [7, 10]]}) == (
        "many/medium/few by class index: 0-2 / 3-6 / 7-9 (training images 5000-1796 / 1077-232 / 139-50)")
    assert describe_shot_groups(long_tailed_counts(500, 100, 0.1)).endswith(
        "few < 20 (0); no few class on this training set ('-')")
