"""Unit tests for model.metric (accuracy, top-k, many/medium/few, ECE/MCE) and data_loader.long_tail."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from data_loader.long_tail import long_tailed_counts, subsample_per_class
from model.metric import Accuracy, CalibrationError, ShotAccuracy, TopK, shot_groups
from utils.registry import METRICS

LN2 = math.log(2.0)


def two_class(p: float, pred: int = 0) -> list[float]:
    """Logits of a 2-class sample whose softmax gives probability ``p`` (> 0.5) to class ``pred``."""
    logits = [math.log(1.0 - p), math.log(1.0 - p)]
    logits[pred] = math.log(p)
    return logits


# --- registration ------------------------------------------------------------------------------------


def test_metrics_are_registered_under_their_config_names():
    assert METRICS.get("accuracy") is Accuracy
    assert METRICS.get("top5") is TopK
    assert METRICS.get("shot_accuracy") is ShotAccuracy
    assert METRICS.get("ece") is CalibrationError


# --- accuracy and top-k ------------------------------------------------------------------------------

# 7 classes. Sample 0..3 share the ranking 0 > 1 > 2 > 3 > 4 > 5 > 6.
RANKED = [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
TOPK_LOGITS = torch.tensor([RANKED, RANKED, RANKED, RANKED, [0, 0, 0, 0, 0, 0, 9.0]])
TOPK_TARGET = torch.tensor([0,  # rank 1: top-1, top-2, top-5 correct
                            1,  # rank 2: top-2 and top-5 correct
                            4,  # rank 5: only top-5 correct
                            5,  # rank 6: wrong everywhere
                            6])  # rank 1


def test_accuracy_on_hand_made_logits():
    metric = Accuracy()
    metric.update(TOPK_LOGITS, TOPK_TARGET)
    assert metric.compute() == {"accuracy": pytest.approx(100.0 * 2 / 5)}


def test_top5_on_hand_made_logits():
    metric = TopK()
    assert metric.keys == ("top5",)
    metric.update(TOPK_LOGITS, TOPK_TARGET)
    assert metric.compute() == {"top5": pytest.approx(100.0 * 4 / 5)}


def test_topk_other_k():
    metric = TopK(k=2)
    assert metric.keys == ("top2",)
    metric.update(TOPK_LOGITS, TOPK_TARGET)
    assert metric.compute() == {"top2": pytest.approx(100.0 * 3 / 5)}
    one = TopK(k=1)
    one.update(TOPK_LOGITS, TOPK_TARGET)
    assert one.compute() == {"top1": pytest.approx(100.0 * 2 / 5)}


def test_top5_with_fewer_than_5_classes_is_capped():
    metric = TopK()
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [0.0, 5.0, 0.0]])
    metric.update(logits, torch.tensor([2, 0, 2]))  # every target is in the top 3 of 3 classes
    assert metric.compute() == {"top5": 100.0}
    metric = TopK(k=2)
    metric.update(torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]), torch.tensor([2, 1]))
    assert metric.compute() == {"top2": 50.0}


def test_topk_rejects_k_below_one():
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        TopK(k=0)


def test_accuracy_of_nothing_is_none():
    assert Accuracy().compute() == {"accuracy": None}
    assert TopK().compute() == {"top5": None}


# --- many / medium / few -----------------------------------------------------------------------------


def test_shot_groups_by_counts_with_boundaries():
    # many: > 100, few: < 20, medium: 20..100 inclusive
    counts = [500, 101, 100, 50, 20, 19, 5]
    assert shot_groups(counts) == {"many": [0, 1], "medium": [2, 3, 4], "few": [5, 6]}
    assert shot_groups(counts, many_threshold=50, few_threshold=50) == {
        "many": [0, 1, 2], "medium": [3], "few": [4, 5, 6]}


def test_shot_groups_by_ranges():
    assert shot_groups([1] * 10, ranges=[[0, 3], [3, 7], [7, 10]]) == {
        "many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}


def _logits_for(pred: list[int], num_classes: int) -> torch.Tensor:
    logits = torch.zeros(len(pred), num_classes)
    logits[torch.arange(len(pred)), torch.tensor(pred)] = 5.0
    return logits


# training counts: many = {0, 1}, medium = {2, 3}, few = {4, 5}
SHOT_COUNTS = [500, 200, 50, 30, 10, 5]
# test set, deliberately unbalanced:
#   class 0: 8 images, 8 right  -> 100 %
#   class 1: 2 images, 0 right  ->   0 %
#   class 2: 1 image,  1 right  -> 100 %
#   class 3: 4 images, 1 right  ->  25 %
#   class 4: 3 images, 2 right  -> 66.67 %
#   class 5: no test images     -> left out of the few average
SHOT_TARGET = [0] * 8 + [1] * 2 + [2] + [3] * 4 + [4] * 3
SHOT_PRED = [0] * 8 + [0, 2] + [2] + [3, 0, 1, 2] + [4, 4, 0]


def test_shot_accuracy_averages_per_class_not_per_sample():
    metric = ShotAccuracy(SHOT_COUNTS)
    metric.update(_logits_for(SHOT_PRED, 6), torch.tensor(SHOT_TARGET))
    out = metric.compute()
    assert out["many"] == pytest.approx((100.0 + 0.0) / 2)  # per sample it would be 8/10 = 80 %
    assert out["medium"] == pytest.approx((100.0 + 25.0) / 2)  # per sample 2/5 = 40 %
    assert out["few"] == pytest.approx(200.0 / 3)  # class 5 has no test images
    assert set(out) == {"many", "medium", "few"}


def test_shot_accuracy_by_ranges():
    # class ranges ignore the counts: many = 0..1, medium = 2, few = 3..5
    metric = ShotAccuracy(SHOT_COUNTS, ranges=[[0, 2], [2, 3], [3, 6]])
    metric.update(_logits_for(SHOT_PRED, 6), torch.tensor(SHOT_TARGET))
    out = metric.compute()
    assert out["many"] == pytest.approx(50.0)
    assert out["medium"] == pytest.approx(100.0)
    assert out["few"] == pytest.approx((25.0 + 200.0 / 3) / 2)


def test_shot_accuracy_thresholds():
    metric = ShotAccuracy(SHOT_COUNTS, many_threshold=40, few_threshold=40)
    # many = {0, 1, 2}, medium = {}, few = {3, 4, 5}
    metric.update(_logits_for(SHOT_PRED, 6), torch.tensor(SHOT_TARGET))
    out = metric.compute()
    assert out == {"many": pytest.approx(200.0 / 3), "medium": None, "few": pytest.approx((25.0 + 200.0 / 3) / 2)}


def test_shot_accuracy_empty_groups_are_none():
    metric = ShotAccuracy([500, 300, 101])  # every class is many-shot
    metric.update(_logits_for([0, 1, 0], 3), torch.tensor([0, 1, 2]))
    out = metric.compute()
    assert out == {"many": pytest.approx(200.0 / 3), "medium": None, "few": None}
    assert not any(isinstance(v, float) and math.isnan(v) for v in out.values())


def test_shot_accuracy_group_without_test_images_is_none():
    metric = ShotAccuracy([500, 50, 5])
    metric.update(_logits_for([0, 0], 3), torch.tensor([0, 1]))  # no image of class 2
    assert metric.compute() == {"many": 100.0, "medium": 0.0, "few": None}


def test_shot_accuracy_before_update_is_all_none():
    assert ShotAccuracy(SHOT_COUNTS).compute() == {"many": None, "medium": None, "few": None}


@pytest.mark.parametrize("kwargs", [
    {"many_threshold": 10, "few_threshold": 20},
    {"ranges": [[0, 2], [2, 4]]},
    {"ranges": [[0, 2], [2, 4], [4, 7]]},  # past the number of classes
    {"ranges": [[0, 3], [2, 4], [4, 6]]},  # overlapping
    {"ranges": [[-1, 2], [2, 4], [4, 6]]},
    {"ranges": [[0, 2, 3], [3, 4], [4, 6]]},
])
def test_shot_accuracy_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        ShotAccuracy(SHOT_COUNTS, **kwargs)


# --- calibration -------------------------------------------------------------------------------------


def test_ece_and_mce_against_hand_computation_with_15_bins():
    # 15 equal-width bins (lo, hi]: bin b is (b/15, (b+1)/15].
    #   sample  confidence  bin                     correct
    #   a       0.95        14  (0.9333, 1.0]       yes
    #   b       0.97        14                      no
    #   c       0.75        11  (0.7333, 0.8]       yes
    #   d       0.78        11                      yes
    #   e       0.55         8  (0.5333, 0.6]       no
    #   f       0.65         9  (0.6, 0.6667]       yes
    logits = torch.tensor([two_class(0.95, 0), two_class(0.97, 1), two_class(0.75, 1),
                           two_class(0.78, 0), two_class(0.55, 0), two_class(0.65, 1)])
    target = torch.tensor([0, 0, 1, 0, 1, 1])
    # bin 14: accuracy 1/2, mean confidence (0.95 + 0.97) / 2 = 0.96, gap 0.46,  weight 2/6
    # bin 11: accuracy 2/2, mean confidence (0.75 + 0.78) / 2 = 0.765, gap 0.235, weight 2/6
    # bin 8:  accuracy 0/1, confidence 0.55, gap 0.55, weight 1/6
    # bin 9:  accuracy 1/1, confidence 0.65, gap 0.35, weight 1/6
    expected_ece = 100.0 * (2 / 6 * 0.46 + 2 / 6 * 0.235 + 1 / 6 * 0.55 + 1 / 6 * 0.35)  # = 38.1667
    expected_mce = 100.0 * 0.55
    metric = CalibrationError()
    assert metric.n_bins == 15
    metric.update(logits, target)
    out = metric.compute()
    assert out["ece"] == pytest.approx(expected_ece, abs=1e-4)
    assert out["mce"] == pytest.approx(expected_mce, abs=1e-4)
    assert expected_ece == pytest.approx(38.1666667, abs=1e-6)
    # one bin for everything would give |4/6 - 4.65/6| = 10.83 %: the binning matters
    assert abs(out["ece"] - 100 * abs(4 / 6 - 4.65 / 6)) > 1.0


def test_ece_perfectly_confident_and_right_is_zero():
    metric = CalibrationError()
    metric.update(torch.tensor([[0.0, -200.0], [-200.0, 0.0]]), torch.tensor([0, 1]))
    assert metric.compute() == {"ece": pytest.approx(0.0, abs=1e-6), "mce": pytest.approx(0.0, abs=1e-6)}
    metric.update(torch.tensor([[0.0, -200.0]]), torch.tensor([1]))  # confident and wrong
    # one bin (14/15, 1]: accuracy 2/3, confidence 1, gap 1/3
    assert metric.compute() == {"ece": pytest.approx(100 / 3), "mce": pytest.approx(100 / 3)}


def test_confidence_on_a_bin_edge_goes_to_the_lower_bin():
    # 4 bins with exactly representable edges 0.25, 0.5, 0.75.
    # a: logits [0, -ln 2, -ln 2] -> softmax [1/2, 1/4, 1/4]: confidence exactly 0.5, predicts 0, right
    # b: confidence 0.6 (bin (0.5, 0.75]), predicts 0, wrong
    a = [0.0, -LN2, -LN2]
    b = [math.log(0.6), math.log(0.3), math.log(0.1)]
    logits = torch.tensor([a, b])
    conf = torch.softmax(logits, dim=1).max(dim=1).values
    assert conf[0].item() == 0.5  # precondition: the edge is hit exactly
    assert torch.linspace(0, 1, 5)[2].item() == 0.5
    metric = CalibrationError(n_bins=4)
    metric.update(logits, torch.tensor([0, 1]))
    out = metric.compute()
    # a alone in (0.25, 0.5]: gap |1 - 0.5| = 0.5; b alone in (0.5, 0.75]: gap |0 - 0.6| = 0.6
    # ECE = 1/2 * 0.5 + 1/2 * 0.6 = 0.55. (Had a gone up, one bin: |1/2 - 0.55| = 0.05.)
    assert out["ece"] == pytest.approx(55.0, abs=1e-4)
    assert out["mce"] == pytest.approx(60.0, abs=1e-4)


def test_confidence_one_goes_to_the_last_bin_and_state_counts_bins():
    metric = CalibrationError(n_bins=4)
    metric.update(torch.tensor([[0.0, -LN2, -LN2], [0.0, -200.0, -200.0], [0.0, 0.0, 0.0]]),
                  torch.tensor([0, 0, 0]))
    # confidences 0.5 -> bin 1, 1.0 -> bin 3, 1/3 -> bin 1
    assert metric.state["count"].tolist() == [0.0, 2.0, 0.0, 1.0]


def test_ece_n_bins_validation_and_empty():
    with pytest.raises(ValueError, match=r"n_bins must be in \[1, 1000\], got 0"):
        CalibrationError(n_bins=0)
    assert CalibrationError().compute() == {"ece": None, "mce": None}


# --- accumulation and reset --------------------------------------------------------------------------


def _all_metrics():
    return [Accuracy(), TopK(), TopK(k=2), ShotAccuracy([300, 120, 60, 40, 15, 5]), CalibrationError()]


def _random_batch(n=97, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 2
    target = torch.randint(0, c, (n,), generator=g)
    # make sure some predictions are right
    target[::3] = logits[::3].argmax(dim=1)
    return logits, target


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if a[key] is None:
            assert b[key] is None, key
        else:
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-9), key


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=97), max_size=5))
def test_update_in_pieces_equals_one_update(cuts):
    logits, target = _random_batch()
    bounds = [0] + sorted(cuts) + [len(target)]
    for whole, pieces in zip(_all_metrics(), _all_metrics()):
        whole.update(logits, target)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi > lo:
                pieces.update(logits[lo:hi], target[lo:hi])
        _assert_same(whole.compute(), pieces.compute())


def test_values_of_the_random_batch_are_sane():
    logits, target = _random_batch()
    for metric in _all_metrics():
        metric.update(logits, target)
        for value in metric.compute().values():
            assert value is not None and 0.0 <= value <= 100.0
    acc = Accuracy()
    acc.update(logits, target)
    assert acc.compute()["accuracy"] == pytest.approx(
        100.0 * (logits.argmax(1) == target).sum().item() / len(target))


def test_reset_clears():
    logits, target = _random_batch()
    other_logits, other_target = _random_batch(n=31, seed=1)
    for used, fresh in zip(_all_metrics(), _all_metrics()):
        used.update(logits, target)
        used.reset()
        assert all(v is None for v in used.compute().values())
        assert all(float(t.abs().sum()) == 0.0 for t in used.state.values())
        used.update(other_logits, other_target)
        fresh.update(other_logits, other_target)
        _assert_same(fresh.compute(), used.compute())


def test_sync_is_a_no_op_in_one_process():
    logits, target = _random_batch()
    for metric in _all_metrics():
        metric.update(logits, target)
        before = metric.compute()
        metric.sync()
        _assert_same(before, metric.compute())


# --- long-tailed counts and subsampling --------------------------------------------------------------


def test_long_tailed_counts_cifar100_ir100():
    counts = long_tailed_counts(500, 100, 0.01)
    assert len(counts) == 100
    assert counts[0] == 500 and counts[-1] == 5
    assert sum(counts) == 10847  # CIFAR-100-LT, imbalance ratio 100
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert all(isinstance(c, int) for c in counts)


def test_long_tailed_counts_cifar10_and_balanced():
    counts = long_tailed_counts(5000, 10, 0.01)
    assert counts[0] == 5000 and counts[-1] == 50 and sum(counts) == 12406  # CIFAR-10-LT, IR 100
    assert long_tailed_counts(500, 100, 0.1)[-1] == 50
    assert long_tailed_counts(7, 3, 1.0) == [7, 7, 7]
    # n_i = int(n_max * f ** (i / (C - 1))): 100 * 0.25 ** 0.5 = 50
    assert long_tailed_counts(100, 3, 0.25) == [100, 50, 25]


@pytest.mark.parametrize("imb_factor", [0, 1.5, -0.01])
def test_long_tailed_counts_rejects_bad_imb_factor(imb_factor):
    with pytest.raises(ValueError, match=r"imb_factor must be in \(0, 1\]"):
        long_tailed_counts(500, 100, imb_factor)


@pytest.mark.parametrize("n_max, num_classes", [(500, 1), (0, 10)])
def test_long_tailed_counts_rejects_bad_sizes(n_max, num_classes):
    with pytest.raises(ValueError, match="need num_classes >= 2 and n_max >= 1"):
        long_tailed_counts(n_max, num_classes, 0.1)


def _balanced_targets(per_class=20, classes=4, seed=0):
    targets = np.repeat(np.arange(classes), per_class)
    np.random.RandomState(seed + 100).shuffle(targets)
    return targets


def test_subsample_per_class_keeps_the_counts():
    targets = _balanced_targets()
    counts = [20, 9, 3, 1]
    idx = subsample_per_class(targets, counts, seed=0)
    assert len(idx) == sum(counts) == len(set(idx.tolist()))
    assert np.bincount(targets[idx], minlength=4).tolist() == counts
    # grouped by class, in class order
    assert targets[idx].tolist() == [0] * 20 + [1] * 9 + [2] * 3 + [3] * 1


def test_subsample_per_class_is_deterministic_for_a_seed():
    targets = _balanced_targets()
    counts = [10, 5, 3, 2]
    first = subsample_per_class(targets, counts, seed=3)
    again = subsample_per_class(list(targets), counts, seed=3)  # a list works as well as an array
    assert first.tolist() == again.tolist()
    others = [subsample_per_class(targets, counts, seed=s).tolist() for s in (4, 5, 6)]
    assert any(o != first.tolist() for o in others)


def test_subsample_per_class_matches_the_reference_recipe():
    # LDAM / MiSLAS / SADE: np.random.seed(0); for each class in order: idx = where(...); shuffle; idx[:n]
    targets = _balanced_targets(per_class=15, classes=3)
    counts = [15, 6, 2]
    rng = np.random.RandomState(0)
    expected = []
    for cls, n in enumerate(counts):
        idx = np.where(targets == cls)[0]
        rng.shuffle(idx)
        expected.extend(idx[:n].tolist())
    assert subsample_per_class(targets, counts, seed=0).tolist() == expected


def test_subsample_per_class_rejects_too_many():
    with pytest.raises(ValueError, match="class 1 has 20 samples, cannot keep 21"):
        subsample_per_class(_balanced_targets(), [5, 21, 1, 1])
