"""A frozen pretrained prefix applied once per image, cached on disk.

With ``frozen_prefix`` set, the first stages of the backbone are a fixed function (eval
mode, ImageNet weights, no gradient) shared by every algorithm. Without augmentation an
image always meets it with the same pixels, so its output can be computed once, instead
of at every step and every evaluation: the dataset then yields the prefix's output and
the featurizer runs only the trained stages. Same function, same data; only where the
prefix runs changes (``tests/test_prefix_cache.py`` checks the two agree).

The features of a dataset are stored in ``$DOMAINBED_SURGERY_CACHE`` (default
``~/.cache/domainbed_surgery``) under a key of everything they depend on: the image
files (relative path, size, modification time), the image side, the architecture, the
weights file's SHA-256, the prefix and the torch version. Concurrent jobs computing the
same key wait for each other (a file lock), and a file is only ever written whole.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from typing import Mapping, Sequence

import torch
from torch.utils.data import TensorDataset

from ... import run_facts

CACHE_ENV = "DOMAINBED_SURGERY_CACHE"
#: Images per forward while the prefix's outputs are computed.
BATCH = 128


def cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                     "domainbed_surgery")


def wanted(hparams: Mapping) -> bool:
    """Whether ``hparams`` ask for a frozen pretrained prefix that can be precomputed."""
    from ..backbones import pretrained_flag  # noqa: PLC0415

    return (hparams.get("backbone") == "efficientnet_lite0" and hparams.get("frozen_prefix") is not None
            and pretrained_flag(hparams))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(folders: Sequence, side: int, frozen_prefix: str, dataset: str) -> str:
    """SHA-256 of everything the prefix's outputs depend on (see the module docstring)."""
    from ..backbones import efficientnet  # noqa: PLC0415

    files = [[os.path.relpath(path, folder.root), label, os.stat(path).st_size,
              os.stat(path).st_mtime_ns] for folder in folders for path, label in folder.samples]
    description = {"dataset": dataset, "side": side, "architecture": efficientnet.ARCHITECTURE,
                   "weights_sha256": _sha256(efficientnet.weights_file()),
                   "frozen_prefix": frozen_prefix, "torch": torch.__version__, "files": files}
    return hashlib.sha256(json.dumps(description).encode()).hexdigest()[:24]


def prefix_features(folders: Sequence, hparams: Mapping, image_shape, dataset: str
                    ) -> tuple[list[TensorDataset], tuple[int, ...]]:
    """Per domain, a ``TensorDataset`` of the prefix's outputs for the images of ``folders``
    (``ImageFolder``s with deterministic transforms), and their shape; from the cache, or
    computed once and cached."""
    from ..backbones import efficientnet  # noqa: PLC0415

    frozen_prefix = efficientnet.check_frozen_prefix(hparams["frozen_prefix"])
    shape = efficientnet.prefix_shape(frozen_prefix, image_shape)
    key = cache_key(folders, image_shape[1], frozen_prefix, dataset)
    os.makedirs(cache_dir(), exist_ok=True)
    path = os.path.join(cache_dir(), f"prefix-{dataset}-{frozen_prefix}-{key}.pt")
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second job waits, then reads the first one's file
        if not os.path.exists(path):
            print(f"frozen prefix: computing stem..{frozen_prefix} outputs of "
                  f"{sum(len(f) for f in folders)} images once, into {path}", flush=True)
            _save(path, _compute(folders, hparams, image_shape))
    stored = torch.load(path, map_location="cpu", weights_only=True)
    datasets = []
    for folder, features, targets in zip(folders, stored["features"], stored["targets"]):
        if tuple(features.shape[1:]) != shape or len(features) != len(folder):
            raise RuntimeError(f"cached prefix outputs {path} do not match the dataset; delete it")
        datasets.append(_tensor_dataset(features, targets, folder))
    print(f"frozen prefix: stem..{frozen_prefix} outputs {shape} read from {path}", flush=True)
    run_facts.record("dataset", {"inputs": f"frozen prefix stem..{frozen_prefix} outputs {list(shape)} "
                                           f"of {image_shape[1]}x{image_shape[2]} images, computed once"})
    return datasets, shape


def _compute(folders: Sequence, hparams: Mapping, image_shape) -> dict:
    """The prefix's outputs for every image, in batches, in eval mode.

    Building the network draws a random initialization before the weights replace it: the
    global RNG is forked, so a run whose job computed the cache starts from the same
    random state (classifier, batches) as one that found it.
    """
    from ..backbones.efficientnet import EfficientNetLite0Featurizer  # noqa: PLC0415

    with torch.random.fork_rng(devices=[]):
        prefix = EfficientNetLite0Featurizer(image_shape, hparams, quiet=True).prefix
    features, targets = [], []
    for folder in folders:
        outputs = []
        for start in range(0, len(folder), BATCH):
            images = torch.stack([folder[i][0] for i in range(start, min(start + BATCH, len(folder)))])
            outputs.append(prefix(images))
        features.append(torch.cat(outputs).contiguous())
        targets.append(torch.as_tensor(folder.targets, dtype=torch.long))
    return {"features": features, "targets": targets}


def _save(path: str, payload: dict) -> None:
    """Write whole or not at all: a temporary file renamed into place."""
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _tensor_dataset(features, targets, folder) -> TensorDataset:
    dataset = TensorDataset(features, targets)
    for name in ("root", "classes", "class_to_idx", "targets"):
        setattr(dataset, name, getattr(folder, name))
    return dataset


def announce_uncached(reason: str) -> None:
    """The line ``out.txt`` gets when a frozen prefix runs at every forward instead."""
    line = f"frozen prefix: computed at every forward ({reason})"
    print(line, flush=True)
    run_facts.record("dataset", {"inputs": line})
