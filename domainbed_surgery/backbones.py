"""Featurizers chosen by the ``backbone`` hparam: ``alexnet``, ``resnet18``, ``resnet50``, ``mnist_cnn``.

Each returns an ``nn.Module`` with ``n_outputs`` features, to which DomainBed puts
its own linear classifier. AlexNet is the paper's backbone (torchvision AlexNet with
the last FC layer removed); the ResNets behave like DomainBed's (``resnet_dropout``,
``freeze_bn``, first-conv channel adaptation). ``pretrained`` (default true) loads
torchvision's ImageNet weights. ``mnist_cnn`` is DomainBed's own small-image CNN
(GroupNorm, global pooling), at any input size; it has no pretrained weights.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torchvision
from torch import nn

__all__ = ["BACKBONES", "build", "AlexNetFeaturizer", "ResNetFeaturizer", "PretrainedWeightsError"]

#: Smallest input side AlexNet's conv/pool stack accepts (11/4 conv, three 3/2 pools).
ALEXNET_MIN_SIDE = 63


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights could not be loaded (no network and no cached file)."""


def _load(constructor: Callable, weights, name: str) -> nn.Module:
    if weights is None:
        return constructor(weights=None)
    try:
        return constructor(weights=weights)
    except Exception as exc:  # URLError, OSError, hash mismatch...
        raise PretrainedWeightsError(
            f"could not load ImageNet weights for backbone {name!r} ({exc}). "
            f"Without network access, copy {weights.url.rsplit('/', 1)[-1]} into "
            f"{torch.hub.get_dir()}/checkpoints, or train from scratch with "
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
        weights = torchvision.models.AlexNet_Weights.DEFAULT if hparams.get("pretrained", True) else None
        self.network = _load(torchvision.models.alexnet, weights, "alexnet")
        self.network.features[0] = _adapt_first_conv(self.network.features[0], channels)
        self.network.classifier[-1] = nn.Identity()

    def forward(self, x):
        return self.network(x)


class ResNetFeaturizer(nn.Module):
    """torchvision ResNet without its FC layer, with DomainBed's dropout and ``freeze_bn``."""

    _MODELS = {
        "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights, 512),
        "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights, 2048),
    }

    def __init__(self, name: str, input_shape, hparams: Mapping):
        super().__init__()
        channels = _check_image_shape(name, input_shape)
        constructor, weight_enum, self.n_outputs = self._MODELS[name]
        weights = weight_enum.DEFAULT if hparams.get("pretrained", True) else None
        self.network = _load(constructor, weights, name)
        self.network.conv1 = _adapt_first_conv(self.network.conv1, channels)
        self.network.fc = nn.Identity()
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

    return MNIST_CNN(tuple(input_shape))


#: Backbone name -> factory ``(input_shape, hparams) -> featurizer``.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "alexnet": AlexNetFeaturizer,
    "resnet18": lambda input_shape, hparams: ResNetFeaturizer("resnet18", input_shape, hparams),
    "resnet50": lambda input_shape, hparams: ResNetFeaturizer("resnet50", input_shape, hparams),
    "mnist_cnn": mnist_cnn,
}


def build(name: str, input_shape, hparams: Mapping) -> nn.Module:
    """The featurizer called ``name`` for inputs of ``input_shape``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} "
                         "(or leave it unset for DomainBed's default)")
    return BACKBONES[name](tuple(input_shape), hparams)
