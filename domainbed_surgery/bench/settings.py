"""The benchmark's settings: model, input and minibatch shape, and the random minibatches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Setting:
    """One benchmark configuration: model, input and minibatch shape."""

    name: str
    backbone: Optional[str]  # None: DomainBed's own featurizer for the input shape
    input_shape: tuple[int, ...]  # [C, H, W] images, or [D] vectors (DomainBed's MLP)
    num_domains: int
    batch_size: int  # per domain
    dataset: str  # whose DomainBed default hparams to use
    num_classes: int
    hparams: tuple = ()  # extra (name, value) pairs over the dataset defaults


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("alexnet-224-32", "alexnet", (3, 224, 224), 3, 32, "PACS", 7),
    Setting("alexnet-224-128", "alexnet", (3, 224, 224), 3, 128, "PACS", 7),
    Setting("resnet50-224-32", "resnet50", (3, 224, 224), 3, 32, "PACS", 7),
    Setting("resnet50-224-128", "resnet50", (3, 224, 224), 3, 128, "PACS", 7),
    Setting("mnist-28", None, (1, 28, 28), 3, 32, "RotatedDigits", 10),
    Setting("resnet18-64", "resnet18", (3, 64, 64), 3, 16, "PACS", 7),
    # The pretrained experiments on CPU (docs/results/pacs-pretrained): EfficientNet-Lite0
    # on PACS128 with stem..blocks.5 frozen and applied once by the dataset, so the inputs
    # are that prefix's outputs (192 x 4 x 4); 128 images per domain.
    Setting("efficientnet_lite0-128", "efficientnet_lite0", (192, 4, 4), 3, 128, "PACS", 7,
            (("frozen_prefix", "blocks.5"),)),
    # The full-size pretrained protocol (the authors' batch, full fine-tuning at 224 px):
    # what one step of the GPU version of docs/results/pacs-pretrained costs.
    Setting("efficientnet_lite0-224-128", "efficientnet_lite0", (3, 224, 224), 3, 128, "PACS", 7),
    # For tests of this script (DomainBed's MLP on 16-d vectors): a second on a CPU,
    # not a measurement of anything.
    Setting("tiny", None, (16,), 3, 4, "RotatedDigits", 10,
            (("mlp_width", 64), ("mlp_depth", 3), ("mlp_dropout", 0.0))),
)}
#: Names that stand for several settings.
ALIASES = {
    "alexnet-224": ("alexnet-224-32", "alexnet-224-128"),
    "resnet50-224": ("resnet50-224-32", "resnet50-224-128"),
}
GPU_SETTINGS = ("alexnet-224-32", "alexnet-224-128", "resnet50-224-32", "resnet50-224-128",
                "efficientnet_lite0-224-128")
CPU_SETTINGS = ("mnist-28", "resnet18-64", "efficientnet_lite0-128")


def resolve_settings(names) -> list[Setting]:
    """Setting objects for ``names`` (aliases expanded, order kept, no duplicates)."""
    out: list[Setting] = []
    for name in names:
        for n in ALIASES.get(name, (name,)):
            if n not in SETTINGS:
                raise SystemExit(f"unknown setting {n!r}; choose from "
                                 f"{sorted(SETTINGS) + sorted(ALIASES)}")
            if SETTINGS[n] not in out:
                out.append(SETTINGS[n])
    return out


def make_minibatches(setting: Setting, device: torch.device, seed: int = 0):
    """``num_domains`` random (x, y) minibatches from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(setting.num_domains):
        x = torch.randn((setting.batch_size, *setting.input_shape), generator=gen)
        y = torch.randint(0, setting.num_classes, (setting.batch_size,), generator=gen)
        batches.append((x.to(device), y.to(device)))
    return batches
