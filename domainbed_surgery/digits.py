"""RotatedDigits: a small real multi-domain dataset that needs no download.

scikit-learn ships the UCI handwritten digits (1,797 images, 8x8, 10 classes).
Like DomainBed's RotatedMNIST, the images are upsampled to 28x28 (so DomainBed's
MNIST CNN applies), split into disjoint parts and rotated, one domain per angle.
Four domains (0, 25, 50, 75 degrees: RotatedMNIST's range) rather than six: as in
PACS and the paper, each leave-one-out run trains on three source domains, and a
full sweep needs a third fewer jobs, so it runs on a laptop CPU in minutes.
The split is fixed (it does not depend on the run's seed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from torchvision.transforms.functional import InterpolationMode, rotate

ANGLES = (0, 25, 50, 75)
SIDE = 28
SPLIT_SEED = 0


def load_digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    """All scikit-learn digits as ``float[1797, 1, 28, 28]`` in [0, 1] and ``long`` labels."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - only this dataset needs it

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0), torch.as_tensor(digits.target, dtype=torch.long)


def rotated_domains(angles=ANGLES) -> list[TensorDataset]:
    """One ``TensorDataset`` per angle, over disjoint random parts of the digits."""
    images, labels = load_digits_28()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    images, labels = images[order], labels[order]
    domains = []
    for i, angle in enumerate(angles):
        part = images[i::len(angles)]
        rotated = rotate(part, float(angle), interpolation=InterpolationMode.BILINEAR, fill=[0.0])
        domains.append(TensorDataset(rotated, labels[i::len(angles)]))
    return domains
