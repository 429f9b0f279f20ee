"""Featurizers chosen by the ``backbone`` hparam, for every algorithm (ours and DomainBed's).

``alexnet`` (the paper's), ``resnet18``, ``resnet50`` (:mod:`.imagenet`),
``efficientnet_lite0`` (:mod:`.efficientnet`: ImageNet weights that install offline, and
the ``frozen_prefix`` hparam), ``mnist_cnn`` (:mod:`.small`). Building a featurizer prints
one line naming its weights (DomainBed's ``train.py`` tees stdout into ``out.txt``) and
records them in the run's ``protocol.json``. :func:`with_backbones` is what registration
puts at DomainBed's ``networks.Featurizer``.
"""

from __future__ import annotations

from typing import Callable, Mapping

from torch import nn

from .common import PretrainedWeightsError, announce, pretrained_flag
from .imagenet import AlexNetFeaturizer, ResNetFeaturizer, describe_domainbed, domainbed_facts

__all__ = ["BACKBONES", "FROZEN_PREFIX_BACKBONES", "build", "with_backbones", "PretrainedWeightsError",
           "pretrained_flag"]


def _efficientnet(input_shape, hparams: Mapping) -> nn.Module:
    from .efficientnet import EfficientNetLite0Featurizer  # noqa: PLC0415 - imports timm

    return EfficientNetLite0Featurizer(input_shape, hparams)


def _mnist_cnn(input_shape, hparams: Mapping) -> nn.Module:
    from .small import mnist_cnn  # noqa: PLC0415 - imports DomainBed's networks

    return mnist_cnn(input_shape, hparams)


#: Backbone name -> factory ``(input_shape, hparams) -> featurizer``.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "alexnet": AlexNetFeaturizer,
    "resnet18": lambda input_shape, hparams: ResNetFeaturizer("resnet18", input_shape, hparams),
    "resnet50": lambda input_shape, hparams: ResNetFeaturizer("resnet50", input_shape, hparams),
    "mnist_cnn": _mnist_cnn,
    "efficientnet_lite0": _efficientnet,
}
#: Backbones that take the ``frozen_prefix`` hparam.
FROZEN_PREFIX_BACKBONES = {"efficientnet_lite0"}


def build(name: str, input_shape, hparams: Mapping) -> nn.Module:
    """The featurizer called ``name`` for inputs of ``input_shape``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} "
                         "(or leave it unset for DomainBed's default)")
    if hparams.get("frozen_prefix") is not None and name not in FROZEN_PREFIX_BACKBONES:
        raise ValueError(f"hparam frozen_prefix is only supported by backbone(s) "
                         f"{sorted(FROZEN_PREFIX_BACKBONES)}, not {name!r}")
    return BACKBONES[name](tuple(input_shape), hparams)


def with_backbones(domainbed_featurizer):
    """DomainBed's ``networks.Featurizer`` wrapped: the ``backbone`` hparam picks ours."""
    def Featurizer(input_shape, hparams):  # noqa: N802 - DomainBed's name
        """DomainBed's featurizer, or ours when the ``backbone`` hparam is set; prints its weights."""
        name = hparams.get("backbone")
        if name is not None:
            return build(name, input_shape, hparams)
        if hparams.get("frozen_prefix") is not None:
            raise ValueError("hparam frozen_prefix needs a backbone that supports it, e.g. "
                             "\"backbone\": \"efficientnet_lite0\"; DomainBed's own featurizer "
                             "has no frozen prefix.")
        if (not hparams.get("pretrained", True) and len(input_shape) == 3
                and tuple(input_shape[1:3]) == (224, 224)):
            raise ValueError(
                "'pretrained': false only applies to a backbone chosen with the 'backbone' "
                "hparam; DomainBed's own ResNet always loads ImageNet weights. Add e.g. "
                "\"backbone\": \"resnet50\" to --hparams.")
        featurizer = domainbed_featurizer(input_shape, hparams)
        announce(describe_domainbed(featurizer, hparams), domainbed_facts(featurizer, hparams))
        return featurizer

    Featurizer.__wrapped__ = domainbed_featurizer
    Featurizer.domainbed_surgery = True
    return Featurizer
