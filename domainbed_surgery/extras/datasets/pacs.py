"""PACS at the sizes of CPU runs: ``PACS64``, ``PACS32`` and ``PACS128`` (the pretrained regime)."""

from __future__ import annotations

import os

import torch
from domainbed.datasets import MultipleDomainDataset
from torch.utils.data import TensorDataset

from . import prefix_cache


class PACS64(MultipleDomainDataset):
    """PACS read from ``<data_dir>/PACS`` (DomainBed's layout) at 64x64 instead of 224x224.

    For CPU-sized runs with a small backbone (default: ResNet-18 from scratch, see
    :mod:`...plugin.hparams`); transforms and augmentation mirror DomainBed's image datasets
    (ImageNet normalization; random resized crop, flip, color jitter and grayscale on
    training domains when ``data_augmentation``). The folder must hold exactly PACS's
    four domain folders, each with exactly its seven class folders (see
    :func:`check_pacs_layout`): anything else would shift domains or class indices.
    Domains read without augmentation (test domains, or all with ``data_augmentation:
    false``) are decoded once into memory (:func:`decoded`).
    """

    ENVIRONMENTS = ["A", "C", "P", "S"]
    DOMAIN_FOLDERS = ("art_painting", "cartoon", "photo", "sketch")  # ENVIRONMENTS' order
    CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
    SIDE = 64
    CHECKPOINT_FREQ = 100
    N_WORKERS = 2

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        from torchvision import transforms  # noqa: PLC0415
        from torchvision.datasets import ImageFolder  # noqa: PLC0415

        if root is None:
            raise ValueError(f"{type(self).__name__} needs --data_dir, the folder that holds PACS/")
        folder = os.path.join(root, "PACS")
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no PACS folder at {folder}")
        check_pacs_layout(folder, self.DOMAIN_FOLDERS, self.CLASSES)
        normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        plain = transforms.Compose([transforms.Resize((self.SIDE, self.SIDE)),
                                    transforms.ToTensor(), normalize])
        augment = transforms.Compose([
            transforms.RandomResizedCrop(self.SIDE, scale=(0.7, 1.0)),
            transforms.RandomHorizontalFlip(), transforms.ColorJitter(0.3, 0.3, 0.3, 0.3),
            transforms.RandomGrayscale(), transforms.ToTensor(), normalize])
        folders = []
        for i, env in enumerate(self.DOMAIN_FOLDERS):
            train = hparams.get("data_augmentation", True) and i not in test_envs
            try:
                folders.append(ImageFolder(os.path.join(folder, env),
                                           transform=augment if train else plain))
            except FileNotFoundError as exc:  # a class folder without images
                raise ValueError(f"PACS domain folder {os.path.join(folder, env)}: {exc}") from exc
        self.input_shape = (3, self.SIDE, self.SIDE)
        self.num_classes = len(self.CLASSES)
        augmented = [f.transform is augment for f in folders]
        if prefix_cache.wanted(hparams) and not any(augmented):
            self.datasets, self.input_shape = prefix_cache.prefix_features(
                folders, hparams, self.input_shape, type(self).__name__)
            return
        if prefix_cache.wanted(hparams):
            prefix_cache.announce_uncached("training domains are augmented")
        self.datasets = [f if aug else decoded(f) for f, aug in zip(folders, augmented)]


def decoded(images) -> TensorDataset:
    """An image folder whose transform is deterministic, decoded once into memory.

    The same tensors as reading each image when asked, but DomainBed evaluates every split
    at every checkpoint, and decoding ~10k JPEGs each time cost more than the network's
    forward pass. The folder's ``root``, ``classes``, ``class_to_idx`` and ``targets``
    are kept.
    """
    xs = torch.stack([images[i][0] for i in range(len(images))])
    dataset = TensorDataset(xs, torch.as_tensor(images.targets, dtype=torch.long))
    for name in ("root", "classes", "class_to_idx", "targets"):
        setattr(dataset, name, getattr(images, name))
    return dataset


def _subfolders(path: str) -> set[str]:
    """Names of the folders in ``path`` (as ``ImageFolder`` sees them: hidden ones included)."""
    return {entry.name for entry in os.scandir(path) if entry.is_dir()}


def _difference(where: str, found: set, expected, kind: str) -> list[str]:
    """Problems of ``found`` against ``expected`` folder names, as sentences."""
    problems = []
    missing, extra = sorted(set(expected) - found), sorted(found - set(expected))
    if missing:
        problems.append(f"{where}: missing {kind} folder(s): {', '.join(missing)}")
    if extra:
        problems.append(f"{where}: unexpected folder(s): {', '.join(extra)}")
    return problems


def check_pacs_layout(folder: str, domains, classes) -> None:
    """Raise ``ValueError`` unless ``folder`` holds exactly ``domains``, each with exactly ``classes``.

    ``ImageFolder`` numbers classes by the sorted folders it finds, and a domain list
    read from disk would shift environments: a missing, extra or misspelled folder
    silently trains on wrong labels or domains under unchanged names.
    """
    found = _subfolders(folder)
    layout = (f"expected DomainBed's layout {folder}/<domain>/<class>/<image>, with domains "
              f"{', '.join(domains)} and in each the classes {', '.join(classes)}")
    if not found:
        raise ValueError(f"PACS folder {folder} has no domain folders; {layout}.")
    problems = _difference(folder, found, domains, "domain")
    for domain in sorted(found & set(domains)):
        path = os.path.join(folder, domain)
        problems += _difference(path, _subfolders(path), classes, "class")
    if problems:
        raise ValueError("PACS64 cannot use this PACS folder (a wrong folder would shift domains "
                         "or class labels):\n  " + "\n  ".join(problems) + f"\n{layout}; "
                         "move other folders out of it.")


class PACS32(PACS64):
    """PACS at 32x32: the size of the from-scratch experiments on 2 CPU cores (docs/results).

    A step and an evaluation cost about a third of PACS64's with ResNet-18; no loader
    workers (on 2 cores running 2 jobs they cost more than they save).
    """

    SIDE = 32
    N_WORKERS = 0


class PACS128(PACS64):
    """PACS at 128x128 (``--data_dir`` holding ``PACS/``, e.g. the 128 px copy): the size of
    the pretrained experiments on CPU, with EfficientNet-Lite0 by default.

    With ``frozen_prefix`` set, pretrained weights and no augmentation, each image's
    prefix output is computed once and cached (:mod:`.prefix_cache`).
    """

    SIDE = 128
    N_WORKERS = 0
