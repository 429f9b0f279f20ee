"""What every backbone shares: the pretrained-weights error, boolean hparams, the line and
the facts a featurizer announces (``out.txt`` and :mod:`...run_facts`), image checks."""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from ... import run_facts

class PretrainedWeightsError(RuntimeError):
    """ImageNet weights could not be loaded (no network and no cached file)."""


def boolean_hparam(hparams: Mapping, key: str, default: bool = True) -> bool:
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
    return boolean_hparam(hparams, "pretrained")


#: Lines already printed by this process (Fish builds a featurizer every step).
_ANNOUNCED: set[str] = set()


def announce(line: str, facts: Optional[Mapping] = None) -> None:
    """Print ``line`` once per process (train.py tees stdout into out.txt) and record
    ``facts`` about the featurizer in the run's ``protocol.json`` (:mod:`...run_facts`)."""
    if line not in _ANNOUNCED:
        _ANNOUNCED.add(line)
        print(line, flush=True)
    if facts is not None:
        run_facts.record("featurizer", {"description": line, **facts})


def parameter_counts(module: nn.Module) -> dict:
    """How many of ``module``'s parameters are trained, of how many."""
    return {"trained_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "featurizer_parameters": sum(p.numel() for p in module.parameters())}


def adapt_first_conv(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
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


def check_image_shape(name: str, input_shape, min_side: int = 1) -> int:
    if len(input_shape) != 3:
        raise ValueError(
            f"backbone {name!r} needs image inputs [C, H, W], got input_shape {tuple(input_shape)}")
    channels, height, width = input_shape
    if min(height, width) < min_side:
        raise ValueError(
            f"backbone {name!r} needs images of at least {min_side}x{min_side} pixels, "
            f"got {height}x{width}")
    return channels
