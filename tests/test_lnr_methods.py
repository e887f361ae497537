"""MiSLAS / LNR building blocks against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from model.lnr_methods import (
    LabelAwareSmoothing,
    draw_flips,
    flip_priors,
    flip_rates,
    flip_zscores,
    las_epsilons,
    remix_label_weight,
    zscore_summary,
)


def test_las_epsilons_cifar100_ir100_concave():
    # the worked example of the MiSLAS code: head 0.4, tail 0.1, counts from CIFAR-100-LT IR100
    eps = las_epsilons([500, 314, 98, 48, 19, 5], 0.4, 0.1, "concave")
    assert [round(float(e), 2) for e in eps] == [0.40, 0.35, 0.19, 0.14, 0.11, 0.10]


@pytest.mark.parametrize("shape, middle", [("linear", 0.25), ("convex", 0.4 + 0.3 * math.sin(1.75 * math.pi)),
                                           ("exp", 0.1 + 0.3 * 0.5 ** 2)])
def test_las_shapes(shape, middle):
    eps = las_epsilons([100, 55, 10], 0.4, 0.1, shape, power=2.0)
    assert float(eps[0]) == pytest.approx(0.4) and float(eps[2]) == pytest.approx(0.1)
    assert float(eps[1]) == pytest.approx(middle)


def test_las_loss_by_hand():
    loss = LabelAwareSmoothing([30, 10], smooth_head=0.4, smooth_tail=0.0)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 1])
    logp = torch.log_softmax(logits, dim=1)
    # class 0 (n = 30, the head) has eps 0.4, class 1 (the tail) eps 0
    expected = ((0.6 * -logp[0, 0] + 0.4 * -logp[0].mean()) + (-logp[1, 1])) / 2
    assert float(loss(logits, target)) == pytest.approx(float(expected))


def test_remix_rule_on_constructed_pairs():
    counts = torch.tensor([300, 100, 99, 10])
    y_a = torch.tensor([0, 0, 1, 3, 1])
    y_b = torch.tensor([3, 1, 2, 0, 0])
    # lam 0.3: y_a's pixels are the minority share
    share = remix_label_weight(0.3, y_a, y_b, counts)
    # pair 0: 300/10 >= 3 and lam < 0.5 -> label wholly to the rarer y_b (share 0)
    # pair 1: 300/100 = 3 >= 3 -> share 0; pair 2: 100/99 < 3 -> plain lam
    # pair 3: 10/300 <= 1/3 but 1 - lam = 0.7 >= 0.5 -> plain lam; pair 4: 100/300 <= 1/3, 0.7 >= 0.5 -> lam
    assert share.tolist() == pytest.approx([0.0, 0.0, 0.3, 0.3, 0.3])
    share = remix_label_weight(0.7, y_a, y_b, counts)
    # now 1 - lam = 0.3 < 0.5: pairs whose y_a is >= 3x rarer give y_a everything (share 1)
    assert share.tolist() == pytest.approx([0.7, 0.7, 0.7, 1.0, 1.0])


def probability_table():
    """6 samples, 3 classes with counts 3/2/1; sample 1 (class 0) looks strongly like class 2."""
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    probs = torch.tensor([[0.90, 0.09, 0.01],
                          [0.10, 0.10, 0.80],
                          [0.80, 0.19, 0.01],
                          [0.05, 0.90, 0.05],
                          [0.10, 0.85, 0.05],
                          [0.05, 0.05, 0.90]])
    return probs, labels


def test_flip_rates_by_hand():
    probs, labels = probability_table()
    rates = flip_rates(probs, labels, [3, 2, 1], threshold=1.0)
    # class 2 over non-members (samples 0-4): mean 0.184, population std
    p2 = probs[:5, 2].double()
    mu, sigma = p2.mean(), p2.std(unbiased=False)
    z = (0.80 - mu) / sigma
    # rarity: class 0 -> 0, class 1 -> 0.5, class 2 -> 1; sample 1 (class 0) -> class 2 weight 1
    assert float(rates[1, 2]) == pytest.approx(math.tanh(float(z) - 1.0), rel=1e-5)
    # flips only towards strictly rarer classes: never to the own or a larger class
    assert float(rates[5].sum()) == 0  # class 2 is the rarest: nothing is rarer
    assert float(rates[3, 0]) == 0 and float(rates[3, 1]) == 0
    assert (rates >= 0).all()


def test_no_flip_when_z_is_below_the_threshold():
    probs, labels = probability_table()
    assert float(flip_rates(probs, labels, [3, 2, 1], threshold=50.0).sum()) == 0


def test_draw_takes_the_highest_firing_rate():
    rates = torch.tensor([[0.0, 0.9, 0.95], [0.0, 0.0, 0.0], [0.0, 0.6, 0.0]])
    picks = [draw_flips(rates, torch.Generator().manual_seed(seed)).tolist() for seed in range(200)]
    # sample 0: when both fire, class 2 (0.95) wins over class 1 (0.9)
    assert all(p[0] in (-1, 1, 2) for p in picks)
    both = [p[0] for p in picks]
    assert both.count(2) > both.count(1) > 0
    assert all(p[1] == -1 for p in picks)  # rate 0 never fires
    frequency = sum(p[2] == 1 for p in picks) / len(picks)
    assert 0.45 < frequency < 0.75  # Bernoulli(0.6)


def test_a_higher_rate_that_does_not_fire_does_not_win():
    rates = torch.tensor([[0.0, 0.5, 0.99]])
    # find draws where class 2 does not fire (u > 0.99) but class 1 does (u < 0.5): the flip goes to 1
    generator = torch.Generator()
    for seed in range(5000):
        u = torch.rand(rates.shape, generator=generator.manual_seed(seed))
        if u[0, 2] > 0.99 and u[0, 1] < 0.5:
            assert draw_flips(rates, generator.manual_seed(seed)).tolist() == [1]
            return
    pytest.fail("no seed among 5000 produced the constructed draw")


def test_zscore_summary_counts_what_passes_the_threshold():
    probs, labels = probability_table()
    counts = [3, 2, 1]
    summary = zscore_summary(probs, labels, counts, threshold=1.0)
    z, _ = flip_zscores(probs, labels)
    eligible = flip_priors(labels, counts) > 0
    assert summary["pairs"] == int(eligible.sum())
    assert summary["above"] == int((z[eligible] > 1.0).sum())
    assert summary["q100"] == pytest.approx(float(z[eligible].max()), rel=1e-5)
    # a pair above the threshold has a positive flip rate, and the expected count matches the rates
    rates = flip_rates(probs, labels, counts, threshold=1.0).double()
    assert int((rates > 0).sum()) == summary["above"]
    assert summary["expected_flips"] == pytest.approx(float((1 - torch.prod(1 - rates, dim=1)).sum()), rel=1e-5)
    assert flip_zscores(probs, labels)[1].tolist() == [3, 4, 5]  # non-members of each class
