"""Featurizers chosen by the ``backbone`` hparam: ``alexnet``, ``resnet18``, ``resnet50``, ``mnist_cnn``.

Each returns an ``nn.Module`` with ``n_outputs`` features, to which DomainBed puts
its own linear classifier. AlexNet is the paper's backbone (torchvision AlexNet with
the last FC layer removed); the ResNets behave like DomainBed's (``resnet_dropout``,
``freeze_bn``, first-conv channel adaptation). ``pretrained`` (default true) loads
ImageNet weights, the same ones DomainBed's own network loads under the same hparams
(:func:`weights_for`): AlexNet and ResNet-18 torchvision's IMAGENET1K_V1; ResNet-50
timm's ``resnet50.ram_in1k`` when ``resnet50_augmix`` is true (DomainBed's default),
torchvision's IMAGENET1K_V1 otherwise. ``pretrained: false`` builds the same
architecture without weights. ``mnist_cnn`` is DomainBed's own small-image CNN
(GroupNorm, global pooling), at any input size; it has no pretrained weights.

Building a featurizer prints one line naming its weights (DomainBed's ``train.py``
tees stdout into ``out.txt``).
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Optional

import torch
import torchvision
from torch import nn

from . import run_facts

__all__ = ["BACKBONES", "build", "AlexNetFeaturizer", "ResNetFeaturizer", "PretrainedWeightsError",
           "Weights", "weights_for", "domainbed_resnet", "describe", "describe_domainbed"]

#: Smallest input side AlexNet's conv/pool stack accepts (11/4 conv, three 3/2 pools).
ALEXNET_MIN_SIDE = 63


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights could not be loaded (no network and no cached file)."""


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


def _flag(hparams: Mapping, key: str, default: bool = True) -> bool:
    """A boolean hparam, DomainBed's default (true) when absent.

    Only JSON booleans (and 0/1) are accepted: ``bool("false")`` is true, so a quoted
    ``"pretrained": "false"`` would load ImageNet weights while out.txt says false.
    """
    value = hparams.get(key, default)
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"hparam {key} must be true or false (a JSON boolean), got {value!r}")


def pretrained_flag(hparams: Mapping) -> bool:
    """The ``pretrained`` hparam (default true), checked to be a boolean."""
    return _flag(hparams, "pretrained")


def weights_for(name: str, hparams: Mapping) -> Optional[Weights]:
    """Where backbone ``name`` comes from: its architecture and, if pretrained, its weights.

    As DomainBed's own network under the same hparams: ``resnet50`` follows
    ``resnet50_augmix`` (default true, as in DomainBed's registry). ``resnet18`` stays a
    ResNet-18 with V1 weights whatever ``resnet50_augmix`` says (DomainBed's ``resnet18:
    true`` with ``resnet50_augmix: true`` gives timm's ResNet-50). None for ``mnist_cnn``.
    """
    if name == "resnet50" and _flag(hparams, "resnet50_augmix"):
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
    why = (f" (hparam resnet50_augmix={str(_flag(hparams, 'resnet50_augmix')).lower()})"
           if name == "resnet50" else "")
    if not _flag(hparams, "pretrained"):
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


#: Lines already printed by this process (Fish builds a featurizer every step).
_ANNOUNCED: set[str] = set()


def announce(line: str, facts: Optional[Mapping] = None) -> None:
    """Print ``line`` once per process (train.py tees stdout into out.txt) and record
    ``facts`` about the featurizer in the run's ``protocol.json`` (:mod:`.run_facts`)."""
    if line not in _ANNOUNCED:
        _ANNOUNCED.add(line)
        print(line, flush=True)
    if facts is not None:
        run_facts.record("featurizer", {"description": line, **facts})


def facts(name: str, hparams: Mapping, module: Optional[nn.Module] = None) -> dict:
    """Protocol facts of backbone ``name`` (architecture, weights, trained parameters)."""
    weights = weights_for(name, hparams)
    pretrained = weights is not None and _flag(hparams, "pretrained")
    out = {"backbone": name, "weights": str(weights) if pretrained else "random init",
           "pretrained": pretrained if weights is not None else "n/a"}
    if module is not None:
        out.update(parameter_counts(module))
    return out


def parameter_counts(module: nn.Module) -> dict:
    """How many of ``module``'s parameters are trained, of how many."""
    return {"trained_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "featurizer_parameters": sum(p.numel() for p in module.parameters())}


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


def _adapt_first_conv(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """A copy of ``conv`` for ``channels`` inputs, cycling the RGB filters (as DomainBed)."""
    if channels == conv.in_channels:
        return conv
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        for c in range(channels):
            new.weight[:, c] = conv.weight[:, c % conv.in_channels]
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _check_image_shape(name: str, input_shape, min_side: int = 1) -> int:
    if len(input_shape) != 3:
        raise ValueError(
            f"backbone {name!r} needs image inputs [C, H, W], got input_shape {tuple(input_shape)}")
    channels, height, width = input_shape
    if min(height, width) < min_side:
        raise ValueError(
            f"backbone {name!r} needs images of at least {min_side}x{min_side} pixels, "
            f"got {height}x{width}")
    return channels


class AlexNetFeaturizer(nn.Module):
    """torchvision AlexNet up to fc7 (4096 features): its last FC layer is DomainBed's classifier."""

    n_outputs = 4096

    def __init__(self, input_shape, hparams: Mapping):
        super().__init__()
        channels = _check_image_shape("alexnet", input_shape, ALEXNET_MIN_SIDE)
        self.weights = weights_for("alexnet", hparams)
        self.network = _load(self.weights, _flag(hparams, "pretrained"), "alexnet")
        self.network.features[0] = _adapt_first_conv(self.network.features[0], channels)
        self.network.classifier[-1] = nn.Identity()
        announce(describe("alexnet", hparams), facts("alexnet", hparams, self))

    def forward(self, x):
        return self.network(x)


class ResNetFeaturizer(nn.Module):
    """torchvision/timm ResNet without its FC layer, with DomainBed's dropout and ``freeze_bn``."""

    _N_OUTPUTS = {"resnet18": 512, "resnet50": 2048}

    def __init__(self, name: str, input_shape, hparams: Mapping):
        super().__init__()
        channels = _check_image_shape(name, input_shape)
        self.n_outputs = self._N_OUTPUTS[name]
        self.weights = weights_for(name, hparams)
        self.network = _load(self.weights, _flag(hparams, "pretrained"), name)
        self.network.conv1 = _adapt_first_conv(self.network.conv1, channels)
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


def mnist_cnn(input_shape, hparams: Mapping) -> nn.Module:
    """DomainBed's ``MNIST_CNN`` (its featurizer for 28x28 inputs) for any image size."""
    _check_image_shape("mnist_cnn", input_shape, min_side=2)
    from domainbed.networks import MNIST_CNN  # noqa: PLC0415 - only this backbone needs DomainBed

    network = MNIST_CNN(tuple(input_shape))
    announce(describe("mnist_cnn", hparams), facts("mnist_cnn", hparams, network))
    return network


#: Backbone name -> factory ``(input_shape, hparams) -> featurizer``.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "alexnet": AlexNetFeaturizer,
    "resnet18": lambda input_shape, hparams: ResNetFeaturizer("resnet18", input_shape, hparams),
    "resnet50": lambda input_shape, hparams: ResNetFeaturizer("resnet50", input_shape, hparams),
    "mnist_cnn": mnist_cnn,
    "efficientnet_lite0": lambda input_shape, hparams: _efficientnet(input_shape, hparams),
}


#: Backbones that take the ``frozen_prefix`` hparam.
FROZEN_PREFIX_BACKBONES = {"efficientnet_lite0"}


def _efficientnet(input_shape, hparams: Mapping) -> nn.Module:
    from .efficientnet import EfficientNetLite0Featurizer  # noqa: PLC0415 - imports timm

    return EfficientNetLite0Featurizer(input_shape, hparams)


def build(name: str, input_shape, hparams: Mapping) -> nn.Module:
    """The featurizer called ``name`` for inputs of ``input_shape``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} "
                         "(or leave it unset for DomainBed's default)")
    if hparams.get("frozen_prefix") is not None and name not in FROZEN_PREFIX_BACKBONES:
        raise ValueError(f"hparam frozen_prefix is only supported by backbone(s) "
                         f"{sorted(FROZEN_PREFIX_BACKBONES)}, not {name!r}")
    return BACKBONES[name](tuple(input_shape), hparams)
