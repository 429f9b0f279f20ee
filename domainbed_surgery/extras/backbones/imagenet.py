"""ImageNet backbones of torchvision and timm: ``alexnet`` (the paper's), ``resnet18``, ``resnet50``.

Each returns an ``nn.Module`` with ``n_outputs`` features, to which DomainBed puts its own
linear classifier. AlexNet is torchvision's AlexNet with the last FC layer removed; the
ResNets behave like DomainBed's (``resnet_dropout``, ``freeze_bn``, first-conv channel
adaptation). ``pretrained`` (default true) loads ImageNet weights, the same ones
DomainBed's own network loads under the same hparams (:func:`weights_for`): AlexNet and
ResNet-18 torchvision's IMAGENET1K_V1; ResNet-50 timm's ``resnet50.ram_in1k`` when
``resnet50_augmix`` is true (DomainBed's default), torchvision's IMAGENET1K_V1
otherwise. ``pretrained: false`` builds the same architecture without weights.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional

import torch
import torchvision
from torch import nn

from .common import (PretrainedWeightsError, adapt_first_conv, check_image_shape, boolean_hparam,
                     announce, parameter_counts)

#: Smallest input side AlexNet's conv/pool stack accepts (11/4 conv, three 3/2 pools).
ALEXNET_MIN_SIDE = 63


class Weights(NamedTuple):
    """ImageNet weights: the library, its model builder and the weights' name in it."""

    library: str  # "torchvision" or "timm"
    model: str  # torchvision builder ("resnet50") or timm model name ("resnet50.ram_in1k")
    name: str  # "ResNet50_Weights.IMAGENET1K_V1" or the timm model name

    def __str__(self) -> str:
        return f"{self.library} {self.name}"

    def torchvision_enum(self):
        """The torchvision weights enum member (``ResNet50_Weights.IMAGENET1K_V1``)."""
        enum_name, member = self.name.split(".")
        return getattr(torchvision.models, enum_name)[member]


#: timm's ResNet-50 that DomainBed loads when ``resnet50_augmix`` is true.
TIMM_RESNET50 = Weights("timm", "resnet50.ram_in1k", "resnet50.ram_in1k")
#: torchvision's first ImageNet weights (what ``pretrained=True`` meant, DomainBed's choice).
TORCHVISION_V1 = {
    "alexnet": Weights("torchvision", "alexnet", "AlexNet_Weights.IMAGENET1K_V1"),
    "resnet18": Weights("torchvision", "resnet18", "ResNet18_Weights.IMAGENET1K_V1"),
    "resnet50": Weights("torchvision", "resnet50", "ResNet50_Weights.IMAGENET1K_V1"),
}


def weights_for(name: str, hparams: Mapping) -> Optional[Weights]:
    """Where backbone ``name`` comes from: its architecture and, if pretrained, its weights.

    As DomainBed's own network under the same hparams: ``resnet50`` follows
    ``resnet50_augmix`` (default true, as in DomainBed's registry). ``resnet18`` stays a
    ResNet-18 with V1 weights whatever ``resnet50_augmix`` says (DomainBed's ``resnet18:
    true`` with ``resnet50_augmix: true`` gives timm's ResNet-50). None for ``mnist_cnn``.
    """
    if name == "resnet50" and boolean_hparam(hparams, "resnet50_augmix"):
        return TIMM_RESNET50
    return TORCHVISION_V1.get(name)


def domainbed_resnet(hparams: Mapping) -> tuple[str, Weights]:
    """(architecture, weights) of DomainBed's own ``networks.ResNet`` under ``hparams``."""
    if hparams["resnet50_augmix"]:
        return "resnet50", TIMM_RESNET50
    name = "resnet18" if hparams["resnet18"] else "resnet50"
    return name, TORCHVISION_V1[name]


def describe(name: str, hparams: Mapping) -> str:
    """One line for ``out.txt``: which weights backbone ``name`` starts from, and why."""
    weights = weights_for(name, hparams)
    if weights is None:
        return f"backbone {name}: random init (no pretrained weights exist for it)"
    why = (f" (hparam resnet50_augmix={str(boolean_hparam(hparams, 'resnet50_augmix')).lower()})"
           if name == "resnet50" else "")
    if not boolean_hparam(hparams, "pretrained"):
        return f"backbone {name}: random init (pretrained=false), {weights.library} " \
               f"{weights.model} architecture{why}"
    return f"backbone {name}: {weights} weights{why}"


def describe_domainbed(featurizer: nn.Module, hparams: Mapping) -> str:
    """One line for ``out.txt``: DomainBed's own featurizer (no ``backbone`` hparam) and its weights."""
    found = domainbed_facts(featurizer, hparams)
    why = ""
    if type(featurizer).__name__ == "ResNet":
        why = (f" (hparams resnet18={str(bool(hparams['resnet18'])).lower()}, "
               f"resnet50_augmix={str(bool(hparams['resnet50_augmix'])).lower()})")
    weights = found["weights"] if found["weights"] == "random init" else f"{found['weights']} weights"
    extra = " (no pretrained weights)" if found["weights"] == "random init" else ""
    return f"featurizer: {found['backbone']}: {weights}{extra}{why}"


def domainbed_facts(featurizer: nn.Module, hparams: Mapping) -> dict:
    """Protocol facts of DomainBed's own featurizer (architecture, weights, parameters)."""
    kind = type(featurizer).__name__
    if kind == "ResNet":
        arch, weights = domainbed_resnet(hparams)
        found = {"backbone": f"DomainBed's ResNet ({arch})", "weights": str(weights), "pretrained": True}
    elif kind == "DinoV2":
        found = {"backbone": "DomainBed's DinoV2", "pretrained": True,
                 "weights": "torch.hub facebookresearch/dinov2 dinov2_vitb14"}
    else:
        found = {"backbone": f"DomainBed's {kind}", "weights": "random init", "pretrained": "n/a"}
    return {**found, **parameter_counts(featurizer)}


def facts(name: str, hparams: Mapping, module: Optional[nn.Module] = None) -> dict:
    """Protocol facts of backbone ``name`` (architecture, weights, trained parameters)."""
    weights = weights_for(name, hparams)
    pretrained = weights is not None and boolean_hparam(hparams, "pretrained")
    out = {"backbone": name, "weights": str(weights) if pretrained else "random init",
           "pretrained": pretrained if weights is not None else "n/a"}
    if module is not None:
        out.update(parameter_counts(module))
    return out


def _how_to_get(weights: Weights) -> str:
    """What to do offline to make ``weights`` loadable."""
    if weights.library == "timm":
        return (f"on a machine with network access run python -c \"import timm; "
                f"timm.create_model('{weights.model}', pretrained=True)\" and copy its "
                f"Hugging Face cache (models--timm--{weights.model}) into "
                f"{_hf_cache()}")
    url = weights.torchvision_enum().url
    return f"copy {url.rsplit('/', 1)[-1]} into {torch.hub.get_dir()}/checkpoints"


def _hf_cache() -> str:
    """Where timm looks for Hugging Face downloads."""
    try:
        from huggingface_hub import constants  # noqa: PLC0415

        return constants.HF_HUB_CACHE
    except ImportError:  # timm then downloads from the URL into torch.hub's folder
        return f"{torch.hub.get_dir()}/checkpoints"


def _load(weights: Weights, pretrained: bool, name: str) -> nn.Module:
    """Build ``weights.model`` from its library, with the weights if ``pretrained``."""
    if weights.library == "timm":
        import timm  # noqa: PLC0415 - in DomainBed's requirements; only resnet50 needs it

        build = lambda: timm.create_model(weights.model, pretrained=pretrained)  # noqa: E731
    else:
        tv_weights = weights.torchvision_enum() if pretrained else None
        build = lambda: getattr(torchvision.models, weights.model)(weights=tv_weights)  # noqa: E731
    if not pretrained:
        return build()
    try:
        return build()
    except Exception as exc:  # URLError, OSError, hash mismatch, HF hub errors...
        raise PretrainedWeightsError(
            f"could not load ImageNet weights {weights} for backbone {name!r} ({exc}). "
            f"Without network access, {_how_to_get(weights)}, or train from scratch with "
            "--hparams '{\"pretrained\": false}'.") from exc


class AlexNetFeaturizer(nn.Module):
    """torchvision AlexNet up to fc7 (4096 features): its last FC layer is DomainBed's classifier."""

    n_outputs = 4096

    def __init__(self, input_shape, hparams: Mapping):
        super().__init__()
        channels = check_image_shape("alexnet", input_shape, ALEXNET_MIN_SIDE)
        self.weights = weights_for("alexnet", hparams)
        self.network = _load(self.weights, boolean_hparam(hparams, "pretrained"), "alexnet")
        self.network.features[0] = adapt_first_conv(self.network.features[0], channels)
        self.network.classifier[-1] = nn.Identity()
        announce(describe("alexnet", hparams), facts("alexnet", hparams, self))

    def forward(self, x):
        return self.network(x)


class ResNetFeaturizer(nn.Module):
    """torchvision/timm ResNet without its FC layer, with DomainBed's dropout and ``freeze_bn``."""

    _N_OUTPUTS = {"resnet18": 512, "resnet50": 2048}

    def __init__(self, name: str, input_shape, hparams: Mapping):
        super().__init__()
        channels = check_image_shape(name, input_shape)
        self.n_outputs = self._N_OUTPUTS[name]
        self.weights = weights_for(name, hparams)
        self.network = _load(self.weights, boolean_hparam(hparams, "pretrained"), name)
        self.network.conv1 = adapt_first_conv(self.network.conv1, channels)
        self.network.fc = nn.Identity()
        announce(describe(name, hparams), facts(name, hparams, self))
        self.freeze_bn_stats = bool(hparams.get("freeze_bn", False))
        self.dropout = nn.Dropout(hparams.get("resnet_dropout", 0.0))
        if self.freeze_bn_stats:
            self._freeze_bn()

    def forward(self, x):
        return self.dropout(self.network(x))

    def train(self, mode: bool = True):
        """Like DomainBed's ResNet: with ``freeze_bn`` BatchNorm stays in eval mode."""
        super().train(mode)
        if self.freeze_bn_stats:
            self._freeze_bn()
        return self

    def _freeze_bn(self) -> None:
        for module in self.network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
