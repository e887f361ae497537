"""Multi-expert models, the PRL hypernetwork, SADE's losses and test-time training."""
from __future__ import annotations

import copy
import inspect
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fixtures import run_training

import test_training
import train
from model.expert_loss import DiverseExpertLoss, inverse_prior, scalarize
from parse_config import ConfigParser, load_json
from utils.errors import ConfigError
from utils.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]


def build(**args):
    return MODELS.build({"type": "MultiExpertResNet32", "args": {"num_classes": 10, "in_channels": 1, **args}},
                        ("arch",))


def test_expert_stages_share_nothing_past_the_stem():
    model = build()
    shared = {id(p) for p in model.shared.parameters()}
    per_expert = [{id(p) for p in expert.parameters()} for expert in model.experts]
    assert all(not (a & b) for i, a in enumerate(per_expert) for b in per_expert[i + 1:])
    assert all(not (a & shared) for a in per_expert)
    assert len(model.experts) == 3 and model.feature_dim == 48  # reduce_dimension: 24/48 channels
    # a gradient through expert 0's logits reaches only the stem and expert 0
    x = torch.randn(2, 1, 8, 8)
    model.expert_logits(x)[:, 0].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in model.experts[1].parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.experts[0].parameters())


def test_hypernetwork_output_depends_on_the_preference_and_gets_gradients():
    torch.manual_seed(0)
    model = build(hypernet={"hidden": 32})
    x = torch.randn(4, 1, 8, 8)
    a = model.expert_logits(x, torch.tensor([0.8, 0.1, 0.1]))
    b = model.expert_logits(x, torch.tensor([0.1, 0.1, 0.8]))
    assert not torch.allclose(a, b)
    # residual (default): W(p) = B + offset(p), the offset zero at the default preference and, at a vertex,
    # OFFSET_INIT of |B| whatever the sizes
    hypernet = model.hypernet
    with torch.no_grad():
        w1, w2 = hypernet(torch.tensor([1.0, 0, 0])), hypernet(torch.tensor([0, 0, 1.0]))
        assert torch.allclose(hypernet(None), hypernet.base)
        relative = (w1 - hypernet.base).flatten(1).norm(dim=1) / hypernet.base.flatten(1).norm(dim=1)
    assert relative.mean() == pytest.approx(hypernet.OFFSET_INIT, rel=0.05)
    assert not torch.allclose(w1, w2)
    # the released form: not a small perturbation of a constant, the classifiers point in different directions
    # (an initialisation where the head's bias dominated gave 0.99999, and training then ignored the preference)
    torch.manual_seed(0)
    direct = build(hypernet={"hidden": 32, "residual": False}).hypernet
    with torch.no_grad():
        d1, d2 = direct(torch.tensor([1.0, 0, 0])), direct(torch.tensor([0, 0, 1.0]))
    assert float(F.cosine_similarity(d1.flatten(1), d2.flatten(1)).max()) < 0.995
    a.sum().backward()
    assert model.hypernet.head.weight.grad is not None and model.hypernet.head.weight.grad.abs().sum() > 0
    assert model.hypernet.preference_scale.grad is not None
    # the preference itself is differentiable (test-time training learns it)
    preference = torch.tensor([0.3, 0.3, 0.4], requires_grad=True)
    model.expert_logits(x, preference).sum().backward()
    assert preference.grad is not None and preference.grad.abs().sum() > 0


def test_per_expert_preferences_condition_each_expert_on_its_row():
    model = build(hypernet={"hidden": 16})
    x = torch.randn(3, 1, 8, 8)
    rows = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    mixed = model.expert_logits(x, rows)
    for j in range(3):
        assert torch.allclose(mixed[:, j], model.expert_logits(x, rows[j])[:, j], atol=1e-5)


def test_preference_weights_the_experts_unless_weights_are_set():
    model = build(hypernet={"hidden": 16}).eval()
    x = torch.randn(3, 1, 8, 8)
    p = torch.tensor([0.0, 0.0, 1.0])
    with torch.no_grad():
        experts = model.expert_logits(x, p)
        assert torch.allclose(model(x, p), experts[:, 2], atol=1e-5)  # the backward expert alone
        model.set_inference(weights=[1, 1, 1])
        assert torch.allclose(model(x, p), experts.mean(1), atol=1e-5)
    plain = build(hypernet={"hidden": 16, "aggregate_by_preference": False}).eval()
    with torch.no_grad():
        assert torch.allclose(plain(x, p), plain.expert_logits(x, p).mean(1), atol=1e-5)


def test_each_expert_loss_by_hand():
    counts = [60, 30, 10]
    loss = DiverseExpertLoss(counts, tau=2.0, scalarization="sum")
    prior = torch.tensor(counts, dtype=torch.float64) / 100
    assert inverse_prior(prior).tolist() == pytest.approx([0.1, 0.3, 0.6])
    z = torch.randn(5, 3, 3)
    y = torch.tensor([0, 1, 2, 0, 1])
    l1 = F.cross_entropy(z[:, 0], y)
    l2 = F.cross_entropy(z[:, 1] + prior.log().float(), y)
    l3 = F.cross_entropy(z[:, 2] + prior.log().float() - 2 * torch.tensor([0.1, 0.3, 0.6]).log(), y)
    assert loss.expert_losses(z, y).tolist() == pytest.approx([float(l1), float(l2), float(l3)], rel=1e-5)
    assert float(loss(z, y)) == pytest.approx(float(l1 + l2 + l3), rel=1e-5)


def test_scalarizations():
    losses = torch.tensor([1.0, 2.0, 4.0])
    p = torch.tensor([0.5, 0.3, 0.2])
    assert float(scalarize(losses, p, "linear")) == pytest.approx(3 * (0.5 + 0.6 + 0.8))
    released = float(scalarize(losses, p, "stch", mu=0.3, weighted=False))
    assert released == pytest.approx(7.0 + 0.3 * math.log(math.exp(1) + math.exp(2) + math.exp(4)))
    weighted_max = float((3 * p * losses).max())  # 3 * max(0.5, 0.6, 0.8)
    for mu, tolerance in ((0.1, 0.2), (0.01, 0.02), (0.001, 0.002)):
        assert float(scalarize(losses, p, "stch", mu=mu)) == pytest.approx(weighted_max, abs=tolerance)
    assert float(scalarize(losses, p, "stch", mu=1e-4)) >= weighted_max  # an upper bound that tightens


@pytest.fixture
def expert_config(tiny_config):
    config = copy.deepcopy(tiny_config)
    config["name"] = "experts"
    config["arch"] = {"type": "MultiExpertResNet32", "args": {"num_classes": 10, "in_channels": 1, "width": 4,
                                                              "hypernet": {"hidden": 16}}}
    config["loss"] = {"type": "DiverseExpertLoss", "args": {"tau": 2.0, "scalarization": "stch", "mu": 1.0}}
    config["trainer"] = {"type": "HyperExpertTrainer", "args": {**tiny_config["trainer"]["args"],
                                                               "dirichlet_alpha": 1.2}}
    return config


def test_hypernetwork_checkpoint_round_trips_through_test_py(expert_config, tmp_path):
    trainer, parsed = run_training(expert_config, "hyper")
    best = parsed.model_dir / "model_best.pth"
    out = tmp_path / "m.json"
    done = subprocess.run([sys.executable, str(ROOT / "test.py"), "-r", str(best), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    trainer.load_weights(best)
    assert result["metrics"]["accuracy"] == pytest.approx(trainer.test()["metrics"]["accuracy"])
    assert len(result["preference"]) == 3 and sum(result["preference"]) == pytest.approx(1, abs=1e-4)
    assert result["weights"] == [0.3333] * 3
    # the weights and preference used are printed above the table (issue 17.6)
    assert ("Expert weights [0.3333, 0.3333, 0.3333] (the preference's, aggregate_by_preference); preference "
            "[0.3333, 0.3333, 0.3333] (the default: uniform)\nTest split of 500 samples:\n") in done.stdout
    assert done.stdout.split("Test split of 500 samples:\n")[1].split("|")[0].strip() == "loss"  # column width varies
    # a chosen preference changes the predictions; a wrong length is a clear error
    chosen = subprocess.run([sys.executable, str(ROOT / "test.py"), "-r", str(best), "--preference", "0,0,1"],
                            capture_output=True, text=True, timeout=300)
    assert chosen.returncode == 0, chosen.stderr
    assert "preference [0, 0, 1] (set with --preference)" in chosen.stdout
    weighted = subprocess.run([sys.executable, str(ROOT / "test_all.py"), "-r", str(best), "--weights", "1,1,2"],
                              capture_output=True, text=True, timeout=300)
    assert weighted.returncode == 0, weighted.stderr
    assert "Expert weights [0.25, 0.25, 0.5] (set with --weights)" in weighted.stdout
    wrong = subprocess.run([sys.executable, str(ROOT / "test.py"), "-r", str(best), "--preference", "1,2"],
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "needs 3 values" in wrong.stderr


def test_test_time_training_never_reads_labels(expert_config, tmp_path, monkeypatch):
    _, parsed = run_training(expert_config, "ttt")
    best = parsed.model_dir / "model_best.pth"
    test_time = load_json(ROOT / "configs/experts/test_time_quickstart_digits.json")
    test_time["trainer"]["args"]["epochs"] = 2
    test_time["trainer"]["args"]["guard"] = "none"  # every adaptation kept, so "it did adapt" below is checkable

    def adapt(scramble: bool):
        config = ConfigParser(test_training.merged_config(copy.deepcopy(test_time),
                                                          copy.deepcopy(expert_config)))
        torch.manual_seed(0)
        trainer = train.build_trainer(config)
        trainer.load_weights(best)
        if scramble:  # the views the adaptation sees carry random labels
            loader = config.build_data_loader(training=False)
            original = type(loader).view_loader

            def scrambled(self, indices):
                views = original(self, indices)
                # a private generator: scrambling must not change the augmentation draws
                views.dataset.targets = torch.randint(0, 10, views.dataset.targets.shape,
                                                      generator=torch.Generator().manual_seed(5))
                return views

            monkeypatch.setattr(type(loader), "view_loader", scrambled)
        torch.manual_seed(1)
        return trainer.adapt_all()

    clean, scrambled = adapt(False), adapt(True)
    for name in clean:
        assert clean[name]["weights"] == scrambled[name]["weights"]
        assert clean[name]["preference"] == scrambled[name]["preference"]
    assert clean["forward50"]["weights"] != [round(1 / 3, 4)] * 3  # it did adapt


def test_test_time_config_merges_over_the_checkpoint(expert_config):
    test_time = load_json(ROOT / "configs/experts/test_time_quickstart_digits.json")
    merged = test_training.merged_config(test_time, expert_config)
    assert merged["trainer"]["type"] == "TestTimeTrainer" and "dirichlet_alpha" not in merged["trainer"]["args"]
    assert merged["arch"] == expert_config["arch"]
    ConfigParser(merged)  # validates


@pytest.mark.parametrize("path", sorted((ROOT / "configs/experts").glob("test_time_*.json")), ids=lambda p: p.name)
def test_every_test_time_config_merges_and_validates(path, expert_config):
    merged = test_training.merged_config(load_json(path), expert_config)
    assert merged["trainer"]["type"] == "TestTimeTrainer"
    ConfigParser(merged, source=str(path))


def test_the_prior_guard_needs_a_loss_with_logit_adjustments(expert_config):
    """The guard reads each expert's logit adjustment from the checkpoint's loss: without one it is a clear error
    that names the way out, before any image is read."""
    merged = test_training.merged_config(load_json(ROOT / "configs/experts/test_time_quickstart_digits.json"),
                                         expert_config)
    merged["loss"] = {"type": "CrossEntropy", "args": {}}
    with pytest.raises(ConfigError, match='guard "prior" needs .* got CrossEntropy; set trainer.args.guard to "none"'):
        train.build_trainer(ConfigParser(merged))
    merged["trainer"]["args"]["guard"] = "none"
    train.build_trainer(ConfigParser(merged))  # unchecked adaptation needs no adjustments


# --- orderings that must hold on a small learnable set (fast: synthetic features, full-batch steps) ----------
TOY_COUNTS = [160, 80, 40, 20, 10, 6, 4, 2, 2, 1]  # long-tailed, IR 160: classes 5.. are "few"


def toy_data(per_class, seed):
    """Gaussian clusters in 12-d, one per class, with overlap: learnable but not trivially."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, 12, generator=torch.Generator().manual_seed(0)) * 1.2
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    return centres[labels] + 1.5 * torch.randn(len(labels), 12, generator=g), labels


def toy_model(hypernet=None):
    """A MultiExpertModel with a small MLP stem and three MLP experts (same class as the ResNets)."""
    from model.experts import MultiExpertModel

    torch.manual_seed(0)
    shared = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU())
    experts = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU()) for _ in range(3))
    return MultiExpertModel(shared, experts, 16, 10, hypernet=hypernet)


def toy_train(loss_args, hypernet=None, steps=100):
    """HyperExpertTrainer's step (one Dirichlet(1.2) preference per step, the model's weighting rule) on the toy
    set; returns the model and the mean of SADE's per-expert loss sum over the last 20 steps."""

    model = toy_model(hypernet)
    x, y = toy_data(TOY_COUNTS, seed=1)
    criterion = DiverseExpertLoss(TOY_COUNTS, **loss_args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dirichlet = torch.distributions.Dirichlet(torch.full((3,), 1.2))
    torch.manual_seed(1)
    tail = []
    for step in range(steps):
        preference = dirichlet.sample() if hypernet is not None else None
        logits = model(x, preference=preference, return_experts=True)
        loss_preference = preference if preference is not None else torch.full((3,), 1 / 3)
        loss = criterion(logits, y, loss_preference, model.preference_weights(preference))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= steps - 20:
            tail.append(float(criterion.expert_losses(logits.detach(), y).sum()))
    return model.eval(), sum(tail) / len(tail)


def toy_few_accuracy(model, preference):
    x, y = toy_data([40] * 10, seed=2)  # a uniform test set
    with torch.no_grad():
        predicted = model(x, preference=torch.tensor(preference)).argmax(1)
    few = y >= 5
    return float((predicted[few] == y[few]).float().mean())


def head_cosine(model):
    with torch.no_grad():
        w1, w3 = model.hypernet(torch.tensor([1.0, 0, 0])), model.hypernet(torch.tensor([0, 0, 1.0]))
    return float(F.cosine_similarity(w1.flatten(1), w3.flatten(1)).min())


def test_prl_aggregate_objective_trains_like_sade_where_the_paper_form_starves():
    _, sade = toy_train({"scalarization": "sum"})
    _, aggregate = toy_train({"scalarization": "stch", "mu": 0.1}, {"hidden": 32})
    _, experts = toy_train({"scalarization": "stch", "mu": 0.1, "objective": "experts"}, {"hidden": 32})
    # the default PRL objective's per-expert losses end within 20% of SADE's (measured 0.89x); the near-max over
    # the experts' own losses trains about one expert per step and ends far above (measured 3.5x SADE)
    assert aggregate < 1.2 * sade, (aggregate, sade)
    assert experts > 2 * aggregate, (experts, aggregate)


def test_prl_generated_heads_depend_on_the_preference_and_move_few_shot_accuracy():
    """Issue 15 item 1: with the experts averaged the preference acts only through the generated heads, and it
    must still change them and move the tail. Fails if the heads stop depending on the preference (measured on
    this toy set: cosine 0.932 with few-shot 0.225 -> 0.465; the "tanh" offset 0.9879, 0.22 -> 0.47; the released
    direct form 0.99982, 0.27 -> 0.27)."""
    model, _ = toy_train({"scalarization": "stch", "mu": 0.1}, {"hidden": 32, "aggregate_by_preference": False})
    assert head_cosine(model) < 0.99
    gain = toy_few_accuracy(model, [0, 0, 1.0]) - toy_few_accuracy(model, [1.0, 0, 0])
    assert gain > 0.15
    # Scored on each expert's own logits (the paper-era objective) the heads do move with the preference (cosine
    # 0.147: stch at mu 0.1 trains about one expert per batch), but not usefully: few-shot 0.225 -> 0.195.
    paper, _ = toy_train({"scalarization": "stch", "mu": 0.1, "objective": "experts"},
                         {"hidden": 32, "aggregate_by_preference": False})
    assert toy_few_accuracy(paper, [0, 0, 1.0]) - toy_few_accuracy(paper, [1.0, 0, 0]) < gain - 0.1


def test_direct_generated_heads_collapse_onto_one_direction():
    """Why the residual form is the default: generating the whole matrix, the MLP's output grows along what
    every preference shares and the cosine classifier normalises the rest away (the cause of issue 15 item 1)."""
    model, _ = toy_train({"scalarization": "stch", "mu": 0.1},
                         {"hidden": 32, "aggregate_by_preference": False, "residual": False})
    assert head_cosine(model) > 0.999  # measured 0.99982 (residual: 0.9879)
    assert abs(toy_few_accuracy(model, [0, 0, 1.0]) - toy_few_accuracy(model, [1.0, 0, 0])) < 0.05


def test_learned_conditioning_cannot_collapse_a_preference_weight():
    """h(p) = normalize(2^tanh(w) p): every scale in [1/2, 2], so a vertex maps to itself and no weight of the
    preference can be switched off (softplus(w) went to 0 in training: every p mapped to one h, a vertex to 0/0)."""
    model = build(hypernet={"hidden": 16})
    with torch.no_grad():
        model.hypernet.preference_scale.copy_(torch.tensor([-115.0, 30.0, 0.0]))
        assert torch.allclose(model.hypernet.conditioning(torch.tensor([0, 0, 1.0])), torch.tensor([0, 0, 1.0]))
        h = model.hypernet.conditioning(torch.tensor([0.5, 0.5, 0.0]))
    assert torch.allclose(h, torch.tensor([0.2, 0.8, 0.0]))
    assert torch.isfinite(model.hypernet(torch.tensor([1.0, 0, 0]))).all()


def test_discriminative_stability_scores_a_constant_prediction_zero():
    from trainer.test_time import prediction_stability

    torch.manual_seed(0)
    constant = torch.softmax(torch.randn(1, 10) * 3, dim=1).expand(16, 10)
    assert float(prediction_stability(constant, constant, "sade")) == pytest.approx(1.0)
    assert float(prediction_stability(constant, constant)) == pytest.approx(0.0, abs=1e-6)
    p1, p2 = torch.softmax(torch.randn(6, 4), 1), torch.softmax(torch.randn(6, 4), 1)
    a, b = F.normalize(p1, dim=1), F.normalize(p2, dim=1)
    pairs = a @ b.T
    by_hand = pairs.diag().mean() - (pairs.sum() - pairs.diag().sum()) / 30
    assert float(prediction_stability(p1, p2)) == pytest.approx(float(by_hand), abs=1e-6)


def toy_adapt(model, x, stability, steps=25, lr=0.1, noise=1.5):
    """TestTimeTrainer's adaptation on the toy model: softmax weights from 1/3, SGD (SADE's lr 0.1, momentum
    0.9, nesterov), two noisy views per step, SADE's stop below 0.05. Returns the learned weights."""
    from trainer.test_time import prediction_stability

    logits = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=lr, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        with torch.no_grad():
            z1, z2 = (model.expert_logits(x + noise * torch.randn(x.shape, generator=g)) for _ in range(2))
        w = torch.softmax(logits, 0)
        p1, p2 = (torch.softmax(torch.einsum("nec,e->nc", z, w), 1) for z in (z1, z2))
        loss = -prediction_stability(p1, p2, stability)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if float(torch.softmax(logits.detach(), 0).min()) < 0.05:
            break
    return torch.softmax(logits, 0).detach()


def default_stability() -> str:
    from trainer.test_time import TestTimeTrainer

    return inspect.signature(TestTimeTrainer.__init__).parameters["stability"].default


def toy_guarded_adapt(model, x, stability):
    """toy_adapt, then TestTimeTrainer's default prior guard (the same function): the learned weights if they
    moved the assumed test prior toward the EM estimate of the images' prior, else the starting 1/3."""
    from trainer.test_time import prior_guard

    loss = DiverseExpertLoss(TOY_COUNTS)  # toy_train's loss: the adjustments the experts were trained with
    start, adapted = torch.full((3,), 1 / 3), toy_adapt(model, x, stability)
    with torch.no_grad():
        logits = torch.einsum("nec,e->nc", model.expert_logits(x), start)
    before, after = prior_guard(logits, start, adapted, loss.adjustments(3), loss.log_prior)
    return adapted if after < before else start


def toy_accuracies(model, counts, seed, stability):
    """(before, guarded adaptation) accuracy on a toy test set with ``counts`` images per class."""
    x, y = toy_data(counts, seed=seed)
    with torch.no_grad():
        experts = model.expert_logits(x)

    def accuracy(w):
        return float((torch.einsum("nec,e->nc", experts, w).argmax(1) == y).float().mean())

    return accuracy(torch.full((3,), 1 / 3)), accuracy(toy_guarded_adapt(model, x, stability))


FORWARD, BACKWARD = [70, 50, 36, 26, 18, 12, 8, 6, 4, 4], [4, 4, 6, 8, 12, 18, 26, 36, 50, 70]


def test_test_time_aggregation_does_not_lose_accuracy_on_the_uniform_split():
    model, _ = toy_train({"scalarization": "sum"})
    for seed in (2, 3):
        before, adapted = toy_accuracies(model, [40] * 10, seed, default_stability())
        assert adapted >= before - 0.01, (seed, adapted, before)


def test_test_time_adaptation_does_not_lose_on_a_backward_shifted_split():
    """Measured: unguarded, the discriminative stability loses here (47.4 -> 46.2 at seed 3; 52.6 -> 49.5 on 97
    images), its weights edging toward the head expert as on every split; the guard keeps what it cannot back."""
    model, _ = toy_train({"scalarization": "sum"})
    for counts in (BACKWARD, [2, 2, 3, 4, 5, 7, 10, 14, 20, 30]):  # 234 and 97 images
        for seed in (2, 3, 4):
            before, adapted = toy_accuracies(model, counts, seed, default_stability())
            assert adapted >= before, (sum(counts), seed, adapted, before)


def test_test_time_adaptation_gains_on_a_forward_shifted_split_where_the_evidence_is_clear():
    model, _ = toy_train({"scalarization": "sum"})
    for seed in (2, 3, 4):
        before, adapted = toy_accuracies(model, FORWARD, seed, default_stability())
        assert adapted >= before + 0.05, (seed, adapted, before)  # measured +7 to +12 points


def test_em_prior_recovers_a_shifted_label_prior_from_exact_class_likelihoods():
    from trainer.test_time import em_prior

    g = torch.Generator().manual_seed(0)
    means = torch.randn(4, 5, generator=g) * 2
    prior = torch.tensor([0.55, 0.25, 0.15, 0.05])
    labels = torch.multinomial(prior, 4000, replacement=True, generator=g)
    x = means[labels] + torch.randn(4000, 5, generator=g)
    log_likelihood = -0.5 * torch.cdist(x, means) ** 2  # exact log p(x|y) up to a per-image constant
    estimate = em_prior(log_likelihood, torch.zeros(4))
    assert estimate == pytest.approx(torch.bincount(labels, minlength=4).float() / 4000, abs=0.02)


@pytest.mark.parametrize("declared", [True, False], ids=["declared_class", "found_after_building"])
def test_test_time_training_of_a_model_without_experts_is_one_clear_error(tiny_config, tmp_path, monkeypatch,
                                                                          declared):
    """Issue 17.10: a ResNet32 (or UNet1D) checkpoint gave AttributeError 'ResNetCifar' object has no attribute
    'num_experts'. The model's class is read from the registry before any data is read; a factory whose class
    cannot be told is checked right after building the model, before the optimizer asks for its experts."""
    import trainer.test_time as test_time_module

    tiny_config["trainer"]["args"]["epochs"] = 1
    _, parsed = run_training(tiny_config, "plain")
    best = parsed.model_dir / "model_best.pth"
    if declared:  # the command line: exit 2, one line, no traceback
        done = subprocess.run([sys.executable, str(ROOT / "test_training.py"), "-c",
                               str(ROOT / "configs/experts/test_time_quickstart_digits.json"), "-r", str(best)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        message = done.stderr
    else:
        monkeypatch.setattr(test_time_module, "_declared_model_class", lambda name: None)
        with pytest.raises(test_time_module.ConfigError) as caught:
            test_training.main(["-c", str(ROOT / "configs/experts/test_time_quickstart_digits.json"),
                                "-r", str(best)])
        message = str(caught.value)
    assert "ResNet32 (ResNetCifar), has no experts" in message
    assert "needs a multi-expert checkpoint" in message and "configs/experts/quickstart_digits_sade.json" in message


def test_test_training_says_what_it_does_per_split_then_prints_the_table(expert_config, tmp_path):
    """Issue 17.5: test_training.py printed nothing for minutes. Off a terminal: one line for the feature pass and
    one per split with its elapsed time, then the tables (all on stdout, like training's epoch lines; stderr keeps
    the progress bars of a terminal, and errors)."""
    expert_config["trainer"]["args"]["epochs"] = 1
    _, parsed = run_training(expert_config, "progress")
    done = subprocess.run([sys.executable, str(ROOT / "test_training.py"), "-c",
                           str(ROOT / "configs/experts/test_time_quickstart_digits.json"),
                           "-r", str(parsed.model_dir / "model_best.pth"), "--set", "trainer.args.epochs=1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Test-time training: expert features of the 500 test images (one pass), then 11 "
                               "splits adapted for up to 1 epoch each")
    adapted = [line for line in lines if " adapted on " in line]
    assert len(adapted) == 11 and all(re.search(r"in \d+\.\d s \(1 epoch", line) for line in adapted)
    assert "forward50   (1/11) adapted on 135 images" in adapted[0]
    header = "split                  before   adapted  unguarded  weights / preference"
    assert lines.index(adapted[-1]) < lines.index(header)
    assert done.stderr == ""


def test_a_pre_residual_hypernetwork_checkpoint_names_the_setting_that_loads_it():
    from base.base_trainer import weights_mismatch

    old = build(hypernet={"hidden": 8, "residual": False}).state_dict()
    model = build(hypernet={"hidden": 8})
    with pytest.raises(RuntimeError) as caught:
        model.load_state_dict(old)
    message = str(weights_mismatch("old.pth", model, old, caught.value))
    assert "old.pth: weights do not fit the model: missing hypernet.base" in message
    assert "--set arch.args.hypernet.residual=false" in message
    build(hypernet={"hidden": 8, "residual": False}).load_state_dict(old)  # the setting named does load it
    extra = {**model.state_dict(), "stray.weight": torch.zeros(1)}
    with pytest.raises(RuntimeError) as caught:
        model.load_state_dict(extra)
    assert "unexpected stray.weight" in str(weights_mismatch("x.pth", model, extra, caught.value))


def test_a_tanh_offset_checkpoint_names_the_setting_that_loads_it():
    """The "tanh" and "relative" offsets have the same parameters; the relative form's saved bound tells them
    apart, so the earlier form's weights are refused by name instead of loading into the other form."""
    from base.base_trainer import weights_mismatch

    old = build(hypernet={"hidden": 8, "offset": "tanh"}).state_dict()
    model = build(hypernet={"hidden": 8})
    with pytest.raises(RuntimeError) as caught:
        model.load_state_dict(old)
    message = str(weights_mismatch("old.pth", model, old, caught.value))
    assert "missing hypernet.offset_bound" in message and "--set arch.args.hypernet.offset=tanh" in message
    build(hypernet={"hidden": 8, "offset": "tanh"}).load_state_dict(old)


def test_the_relative_offset_is_bounded_relative_to_the_unit_columns():
    """W_j(p) = normalize(B_j) + rho / sqrt(D) * tanh(G(p) - G(uniform)): whatever the generator's scale, every
    entry of the offset is within rho / sqrt(D), so each column moves by at most rho against its unit base."""
    torch.manual_seed(0)
    hypernet = build(hypernet={"hidden": 16, "offset_bound": 0.5}).hypernet
    with torch.no_grad():
        hypernet.head.weight.mul_(1e4)  # drive the tanh to saturation
        hypernet.base.mul_(7.0)  # a grown base changes nothing: it is normalised
        offset = hypernet(torch.tensor([1.0, 0, 0])) - F.normalize(hypernet.base, dim=1)
    bound = 0.5 / hypernet.feature_dim ** 0.5
    assert float(offset.abs().max()) <= bound + 1e-6
    assert float(offset.abs().max()) > 0.99 * bound  # saturated, so the bound is reached
    assert float(offset.norm(dim=1).max()) <= 0.5 + 1e-5
