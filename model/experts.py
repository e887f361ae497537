"""Multi-expert backbones (RIDE / SADE layout) with cosine classifiers, optionally hypernetwork-generated.

A shared stem feeds ``num_experts`` expert branches with their own late stages; each expert has its own
head. ``forward(x)`` returns the experts' logits combined by the aggregation weights (the mean unless set
with :meth:`MultiExpertModel.set_inference`), so every evaluation path (test.py, test_all.py, metrics)
works on these models unchanged; trainers that need the experts call :meth:`expert_logits`.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from base.base_model import BaseModel
from model.hypernet import PreferenceHypernet, earlier_form_hint
from model.resnet_cifar import BasicBlock
from model.resnet_imagenet import _load_pretrained
from utils.registry import MODELS, type_problem

# Sizes beyond these are typos or attacks, not models: refused before a tensor is allocated (a config value of
# 10^12 experts would otherwise ask for terabytes).
MAX_EXPERTS = 64
MAX_HIDDEN = 65536
HYPERNET_KEYS = {"hidden": int, "mode": str, "rank": int | None, "residual": bool, "offset": str,
                  "offset_bound": float, "aggregate_by_preference": bool}


def check_hypernet(hypernet: dict | None) -> None:
    """Validate the ``hypernet`` argument (keys of :class:`PreferenceHypernet` plus ``aggregate_by_preference``)
    before any layer is built; ValueError names the wrong key and the valid ones."""
    if hypernet is None:
        return
    if not isinstance(hypernet, dict):
        raise ValueError(f'hypernet must be an object such as {{"hidden": 128}} or null, got {hypernet!r}')
    unknown = sorted(set(hypernet) - set(HYPERNET_KEYS))
    if unknown:
        raise ValueError(f"hypernet has unknown key(s) {unknown}; valid keys: {', '.join(HYPERNET_KEYS)}")
    for key, value in hypernet.items():
        problem = type_problem(value, HYPERNET_KEYS[key])
        if problem:
            raise ValueError(f"hypernet.{key} must be {problem}, got {type(value).__name__} {value!r}")
    if hypernet.get("mode", "classifier") not in ("classifier", "adapter"):
        raise ValueError(f'hypernet.mode must be "classifier" or "adapter", got {hypernet["mode"]!r}')
    for key in ("offset", "offset_bound"):  # they shape the residual classifier offset, nothing else
        if key in hypernet and (hypernet.get("residual", True) is False or hypernet.get("mode") == "adapter"):
            raise ValueError(f"hypernet.{key} applies to the residual generated classifiers only (mode "
                             f'"classifier", residual true); remove it or set residual true')
    if "offset_bound" in hypernet and hypernet.get("offset", "relative") != "relative":
        raise ValueError('hypernet.offset_bound applies to offset "relative" only; remove it')
    if not 1 <= hypernet.get("hidden", 1) <= MAX_HIDDEN or (
            hypernet.get("rank") is not None and not 1 <= hypernet["rank"] <= MAX_HIDDEN):
        raise ValueError(f"hypernet.hidden and hypernet.rank must be in [1, {MAX_HIDDEN}], got {hypernet}")


class NormedLinear(nn.Module):
    """Cosine classifier: ``scale * normalize(x) @ normalize(W)`` with ``W (in, out)`` (SADE's NormedLinear)."""

    def __init__(self, in_features: int, out_features: int, scale: float = 30.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1).renorm_(2, 1, 1e-5)
                                   .mul_(1e5))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


class MultiExpertModel(BaseModel):
    """Base: ``shared`` stem, ``experts`` (one module per expert, each to pooled features ``(N, D)``), heads.

    Heads: per-expert ``NormedLinear`` (``use_norm``) or ``Linear``; with ``hypernet`` (a dict of
    :class:`PreferenceHypernet` arguments, e.g. ``{"hidden": 128}``) the experts' classifiers (or, in
    ``"adapter"`` mode, feature adapters before learned classifiers) are generated from a preference, and
    ``forward`` weights the experts by that preference unless ``set_inference(weights=...)`` fixed weights
    (``"aggregate_by_preference": false`` in the hypernet dict restores the plain mean). Generated classifiers
    are a learned base plus a preference offset (``"residual": true``, the default; false generates the whole
    matrix as released, whose heads end up ignoring the preference: see :class:`PreferenceHypernet`).
    """

    def __init__(self, shared: nn.Module, experts: nn.ModuleList, feature_dim: int, num_classes: int,
                 use_norm: bool = True, scale: float = 30.0, hypernet: dict | None = None):
        super().__init__()
        check_hypernet(hypernet)
        hypernet = dict(hypernet) if hypernet is not None else None
        # With a hypernetwork, forward() weights the experts by the preference unless weights were set; with
        # aggregate_by_preference false the experts are averaged and the preference acts only through the
        # generated heads (DiverseExpertLoss's "aggregate" objective trains them to depend on it).
        self.aggregate_by_preference = bool(hypernet.pop("aggregate_by_preference", True)) if hypernet else False
        self.shared, self.experts = shared, experts
        self.num_experts, self.feature_dim, self.num_classes = len(experts), feature_dim, num_classes
        self.use_norm, self.scale = use_norm, scale
        self.hypernet = None
        mode = (hypernet or {}).get("mode", "classifier")
        if hypernet is not None:
            if not use_norm and mode == "classifier":
                raise ValueError("a hypernetwork-generated classifier is a cosine classifier: set use_norm true")
            self.hypernet = PreferenceHypernet(self.num_experts, feature_dim, num_classes, **hypernet)
        if hypernet is None or mode == "adapter":
            make = (lambda: NormedLinear(feature_dim, num_classes, scale)) if use_norm else (
                lambda: nn.Linear(feature_dim, num_classes))
            self.classifiers = nn.ModuleList(make() for _ in range(self.num_experts))
        self.register_buffer("aggregation", torch.full((self.num_experts,), 1.0 / self.num_experts))
        # whether set_inference(weights=...) was called; an inference setting, not saved with the weights
        self.register_buffer("weights_set", torch.zeros((), dtype=torch.bool), persistent=False)
        self.register_buffer("inference_preference", torch.zeros(0))  # empty: uniform (heads of h(uniform))

    def expert_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of every expert, ``(N, E, D)``."""
        shared = self.shared(x)
        return torch.stack([expert(shared) for expert in self.experts], dim=1)

    def head(self, features: torch.Tensor, preference: torch.Tensor | None = None) -> torch.Tensor:
        """Expert logits ``(N, E, C)`` from expert features ``(N, E, D)`` (and a preference, with a hypernet)."""
        if self.hypernet is None:
            return torch.stack([clf(features[:, j]) for j, clf in enumerate(self.classifiers)], dim=1)
        generated = self.hypernet(preference)
        if self.hypernet.mode == "adapter":
            adapter, bias = generated
            adapted = F.relu(torch.einsum("ned,edk->nek", features, adapter) + bias)
            return torch.stack([clf(adapted[:, j]) for j, clf in enumerate(self.classifiers)], dim=1)
        return self.scale * torch.einsum("ned,edc->nec", F.normalize(features, dim=2), F.normalize(generated, dim=1))

    def expert_logits(self, x: torch.Tensor, preference: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every expert, ``(N, E, C)``."""
        return self.head(self.expert_features(x), preference)

    def current_preference(self) -> torch.Tensor | None:
        """The preference inference uses: the one set by :meth:`set_inference`, else the uniform one.

        Preferences live where training draws them (the simplex); the hypernetwork maps each through its learned
        conditioning ``h`` before generating the heads, so with none given the heads are those of ``h(uniform)``,
        the learned default (``hypernet.default_preference()``), and the experts are weighted by the uniform
        preference, as training weights them under it. (Weighting them by ``h(uniform)`` instead applied ``h``
        twice and cost 13 points of uniform accuracy on the digits proxy: 44.6 against 57.6.)
        """
        if self.hypernet is None:
            return None
        if self.inference_preference.numel():
            return self.inference_preference
        return torch.full((self.num_experts,), 1.0 / self.num_experts, device=self.aggregation.device)

    def aggregate(self, expert_logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_j w_j z_j`` over experts: ``(N, E, C) -> (N, C)``; default weights: see ``inference_weights``."""
        weights = self.inference_weights() if weights is None else weights
        return torch.einsum("nec,e->nc", expert_logits, weights.to(expert_logits.dtype))

    def inference_weights(self, preference: torch.Tensor | None = None) -> torch.Tensor:
        """The weights set by ``set_inference``; else :meth:`preference_weights` of the preference in use."""
        if bool(self.weights_set):
            return self.aggregation
        return self.preference_weights(preference if preference is not None else self.current_preference())

    def preference_weights(self, preference: torch.Tensor | None) -> torch.Tensor:
        """The model's own rule for weighting its experts under ``preference`` (training uses it too): the
        preference itself (its mean over experts for per-expert rows) for a hypernetwork model with
        ``aggregate_by_preference``; else the mean."""
        if preference is None or not self.aggregate_by_preference:
            return torch.full((self.num_experts,), 1.0 / self.num_experts, device=self.aggregation.device)
        return preference if preference.dim() == 1 else preference.mean(0)

    def forward(self, x: torch.Tensor, preference: torch.Tensor | None = None,
                return_experts: bool = False) -> torch.Tensor:
        """Aggregated logits ``(N, C)`` with the inference preference (or ``preference``) and weights; the
        experts' logits ``(N, E, C)`` with ``return_experts`` (training goes through here, so DDP sees it)."""
        preference = preference if preference is not None else (
            self.inference_preference if self.inference_preference.numel() else None)
        logits = self.expert_logits(x, preference)
        if return_experts:
            return logits
        weights = None if preference is None else self.inference_weights(preference)
        return self.aggregate(logits, weights)

    def weights_hint(self, missing: list[str], unexpected: list[str]) -> str:
        """For ``BaseTrainer``'s weights-mismatch message: the setting that loads a checkpoint of an earlier
        hypernetwork head form, or ``""``."""
        return earlier_form_hint(missing, unexpected) if self.hypernet is not None else ""

    def set_inference(self, preference: list[float] | None = None, weights: list[float] | None = None) -> None:
        """Fix the preference (hypernetwork models) and the expert weights used by ``forward``; both are
        normalised to sum to 1 and stored in the model's buffers (so they are saved with it)."""
        for name, values in (("preference", preference), ("weights", weights)):
            if values is not None and len(values) != self.num_experts:
                raise ValueError(f"--{name} needs {self.num_experts} values (one per expert), got {len(values)}")
            if values is not None and (not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               and math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0):
                raise ValueError(f"--{name} entries must be finite, non-negative and not all zero, got {list(values)}")
        if preference is not None:
            if self.hypernet is None:
                raise ValueError("this model has no hypernetwork: --preference applies to hypernetwork experts; "
                                 "use --weights to weight the experts")
            p = torch.as_tensor(preference, dtype=torch.float32, device=self.aggregation.device)
            self.inference_preference = p / p.sum()
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float32, device=self.aggregation.device)
            self.aggregation = w / w.sum()
            self.weights_set = torch.ones((), dtype=torch.bool, device=self.aggregation.device)


# --- CIFAR ResNet-32 with experts ------------------------------------------------------------------------
class _CifarStem(nn.Module):
    def __init__(self, in_channels: int, width: int, blocks: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(*[BasicBlock(width, width) for _ in range(blocks)])

    def forward(self, x):
        return self.layer1(F.relu(self.bn1(self.conv1(x))))


class _CifarExpert(nn.Module):
    def __init__(self, width: int, c2: int, c3: int, blocks: int):
        super().__init__()
        self.layer2 = nn.Sequential(BasicBlock(width, c2, 2), *[BasicBlock(c2, c2) for _ in range(blocks - 1)])
        self.layer3 = nn.Sequential(BasicBlock(c2, c3, 2), *[BasicBlock(c3, c3) for _ in range(blocks - 1)])

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.layer3(self.layer2(x)), 1).flatten(1)


@MODELS.register()
class MultiExpertResNet32(MultiExpertModel):
    """ResNet-32 with ``num_experts`` experts (RIDE/SADE): conv1 + layer1 shared, layer2/layer3 per expert.

    ``reduce_dimension`` gives each expert 24/48 channels instead of 32/64 (SADE's CIFAR-100 setting). Cosine
    classifiers with scale 30 (``use_norm``); ``hypernet`` makes them PRL's preference-generated experts.
    """

    def __init__(self, num_classes: int, num_experts: int = 3, reduce_dimension: bool = True, use_norm: bool = True,
                 in_channels: int = 3, width: int = 16, scale: float = 30.0, hypernet: dict | None = None):
        check_hypernet(hypernet)
        if not 1 <= num_experts <= MAX_EXPERTS:
            raise ValueError(f"num_experts must be in [1, {MAX_EXPERTS}], got {num_experts}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not (1 <= in_channels <= 64 and 1 <= width <= 1024):
            raise ValueError(f"in_channels must be in [1, 64] and width in [1, 1024], got {in_channels}, {width}")
        c2, c3 = (width * 3 // 2, width * 3) if reduce_dimension else (2 * width, 4 * width)
        experts = nn.ModuleList(_CifarExpert(width, c2, c3, 5) for _ in range(num_experts))
        super().__init__(_CifarStem(in_channels, width, 5), experts, c3, num_classes, use_norm, scale, hypernet)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


# --- ImageNet-size ResNets with experts ------------------------------------------------------------------
def _bottleneck_stage(inplanes: int, planes: int, blocks: int, stride: int, groups: int, base_width: int):
    from torchvision.models.resnet import Bottleneck  # torchvision loads torch._dynamo: only for these models

    downsample = None
    if stride != 1 or inplanes != planes * 4:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
    layers = [Bottleneck(inplanes, planes, stride, downsample, groups, base_width)]
    layers += [Bottleneck(planes * 4, planes, groups=groups, base_width=base_width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class _TorchvisionExpert(nn.Module):
    def __init__(self, stages: nn.Sequential):
        super().__init__()
        self.stages = stages

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.stages(x), 1).flatten(1)


class MultiExpertTorchvisionResNet(MultiExpertModel):
    """torchvision ResNet/ResNeXt: stem + layer1 + layer2 (+ layer3 with ``share_layer3``) shared, the rest per
    expert. ``reduce_dimension`` narrows the expert stages to 3/4 width (RIDE/SADE: 1536-d features)."""

    def __init__(self, arch: str, layers: list[int], num_classes: int, num_experts: int, reduce_dimension: bool,
                 use_norm: bool, share_layer3: bool, pretrained: str | None, scale: float, hypernet: dict | None,
                 groups: int = 1, base_width: int = 64):
        check_hypernet(hypernet)
        if not 1 <= num_experts <= MAX_EXPERTS:
            raise ValueError(f"num_experts must be in [1, {MAX_EXPERTS}], got {num_experts}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        import torchvision  # here, not at the top: it imports torch._dynamo (seconds), which only these models need

        net = getattr(torchvision.models, arch)(weights=None)
        if pretrained is not None:
            _load_pretrained(net, Path(pretrained))
        shared = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2]
        factor = 3 / 4 if reduce_dimension else 1
        planes3, planes4 = int(256 * factor), int(512 * factor)
        if share_layer3:
            shared.append(net.layer3)
            inplanes = 1024
        experts = []
        for _ in range(num_experts):
            stages = []
            if share_layer3:
                stages.append(_bottleneck_stage(inplanes, planes4, layers[3], 2, groups, base_width))
            else:
                stages.append(_bottleneck_stage(512, planes3, layers[2], 2, groups, base_width))
                stages.append(_bottleneck_stage(planes3 * 4, planes4, layers[3], 2, groups, base_width))
            experts.append(_TorchvisionExpert(nn.Sequential(*stages)))
        if pretrained is not None and not reduce_dimension:  # experts start from the pretrained late stages
            for expert in experts:
                source = [net.layer4] if share_layer3 else [net.layer3, net.layer4]
                expert.stages.load_state_dict(nn.Sequential(*copy.deepcopy(source)).state_dict())
        super().__init__(nn.Sequential(*shared), nn.ModuleList(experts), planes4 * 4, num_classes, use_norm, scale,
                         hypernet)


@MODELS.register()
def MultiExpertResNet50(num_classes: int, num_experts: int = 3, reduce_dimension: bool = True, use_norm: bool = True,
                        share_layer3: bool = False, pretrained: str | None = None, scale: float = 30.0,
                        hypernet: dict | None = None) -> MultiExpertTorchvisionResNet:
    """ResNet-50 with experts (iNaturalist 2018 in SADE/PRL); layer3/layer4 per expert."""
    return MultiExpertTorchvisionResNet("resnet50", [3, 4, 6, 3], num_classes, num_experts, reduce_dimension,
                                        use_norm, share_layer3, pretrained, scale, hypernet)


@MODELS.register()
def MultiExpertResNeXt50(num_classes: int, num_experts: int = 3, reduce_dimension: bool = True,
                         use_norm: bool = True, share_layer3: bool = False, pretrained: str | None = None,
                         scale: float = 30.0, hypernet: dict | None = None) -> MultiExpertTorchvisionResNet:
    """ResNeXt-50 32x4d with experts (ImageNet-LT in SADE/PRL); layer3/layer4 per expert."""
    return MultiExpertTorchvisionResNet("resnext50_32x4d", [3, 4, 6, 3], num_classes, num_experts, reduce_dimension,
                                        use_norm, share_layer3, pretrained, scale, hypernet, groups=32, base_width=4)


@MODELS.register()
def MultiExpertResNet152(num_classes: int, num_experts: int = 3, reduce_dimension: bool = False,
                         use_norm: bool = True, share_layer3: bool = True, pretrained: str | None = None,
                         scale: float = 30.0, hypernet: dict | None = None) -> MultiExpertTorchvisionResNet:
    """ResNet-152 with experts (Places-LT in SADE/PRL, from ImageNet weights); layer4 per expert by default."""
    return MultiExpertTorchvisionResNet("resnet152", [3, 8, 36, 3], num_classes, num_experts, reduce_dimension,
                                        use_norm, share_layer3, pretrained, scale, hypernet)
