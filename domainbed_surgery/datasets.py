"""Our DomainBed datasets (glue: subclasses of DomainBed's ``MultipleDomainDataset``)."""

from __future__ import annotations

import os

from domainbed.datasets import MultipleDomainDataset

from . import digits


class RotatedDigits(MultipleDomainDataset):
    """scikit-learn's digits at 14x14, one domain per rotation (an offline RotatedMNIST)."""

    ENVIRONMENTS = [str(a) for a in digits.ANGLES]
    INPUT_SHAPE = (1, digits.SIDE, digits.SIDE)
    N_STEPS = 1001
    CHECKPOINT_FREQ = 50
    N_WORKERS = 0  # in-memory tensors: worker processes only cost start-up time

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        self.datasets = digits.rotated_domains(digits.ANGLES)
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = 10


class PACS64(MultipleDomainDataset):
    """PACS read from ``<data_dir>/PACS`` (DomainBed's layout) at 64x64 instead of 224x224.

    For CPU-sized runs with a small backbone; transforms and augmentation mirror
    DomainBed's image datasets (ImageNet normalization; random resized crop, flip,
    color jitter and grayscale on training domains when ``data_augmentation``).
    """

    ENVIRONMENTS = ["A", "C", "P", "S"]
    SIDE = 64
    CHECKPOINT_FREQ = 100
    N_WORKERS = 2

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        from torchvision import transforms  # noqa: PLC0415
        from torchvision.datasets import ImageFolder  # noqa: PLC0415

        if root is None:
            raise ValueError("PACS64 needs --data_dir, the folder that holds PACS/")
        folder = os.path.join(root, "PACS")
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no PACS folder at {folder}")
        normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        plain = transforms.Compose([transforms.Resize((self.SIDE, self.SIDE)),
                                    transforms.ToTensor(), normalize])
        augment = transforms.Compose([
            transforms.RandomResizedCrop(self.SIDE, scale=(0.7, 1.0)),
            transforms.RandomHorizontalFlip(), transforms.ColorJitter(0.3, 0.3, 0.3, 0.3),
            transforms.RandomGrayscale(), transforms.ToTensor(), normalize])
        environments = sorted(f.name for f in os.scandir(folder) if f.is_dir())
        self.datasets = [
            ImageFolder(os.path.join(folder, env),
                        transform=augment if hparams.get("data_augmentation", True)
                        and i not in test_envs else plain)
            for i, env in enumerate(environments)]
        self.input_shape = (3, self.SIDE, self.SIDE)
        self.num_classes = len(self.datasets[-1].classes)


#: Dataset classes we add to ``domainbed.datasets`` (and its ``DATASETS`` list).
DATASETS = {"RotatedDigits": RotatedDigits, "PACS64": PACS64}
