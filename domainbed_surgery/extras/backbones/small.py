"""``mnist_cnn``: DomainBed's small-image CNN (GroupNorm, global pooling) at any input size."""

from __future__ import annotations

from typing import Mapping

from torch import nn

from .common import check_image_shape, announce, parameter_counts


def mnist_cnn(input_shape, hparams: Mapping) -> nn.Module:
    """DomainBed's ``MNIST_CNN`` (its featurizer for 28x28 inputs) for any image size."""
    check_image_shape("mnist_cnn", input_shape, min_side=2)
    from domainbed.networks import MNIST_CNN  # noqa: PLC0415 - only this backbone needs DomainBed

    network = MNIST_CNN(tuple(input_shape))
    announce("backbone mnist_cnn: random init (no pretrained weights exist for it)",
             {"backbone": "mnist_cnn", "weights": "random init", "pretrained": "n/a",
              **parameter_counts(network)})
    return network
