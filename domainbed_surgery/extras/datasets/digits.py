"""RotatedDigits: a small real multi-domain dataset that needs no download.

scikit-learn ships the UCI handwritten digits (1,797 images, 8x8, 10 classes).
Like DomainBed's RotatedMNIST, the images are split into disjoint parts and rotated,
one domain per angle. They are upsampled to 14x14 rather than MNIST's 28x28: the
8x8 originals hold no more detail, and DomainBed's MNIST CNN (the default backbone
``mnist_cnn`` on this dataset) then costs a quarter of the compute, which is what
lets a whole leave-one-out sweep train to ~90% source accuracy on 2 CPU cores.
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
SIDE = 14
SPLIT_SEED = 0


def load_digits_upsampled() -> tuple[torch.Tensor, torch.Tensor]:
    """All scikit-learn digits as ``float[1797, 1, SIDE, SIDE]`` in [0, 1] and ``long`` labels."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - only this dataset needs it

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0), torch.as_tensor(digits.target, dtype=torch.long)


def rotated_domains(angles=ANGLES) -> list[TensorDataset]:
    """One ``TensorDataset`` per angle, over disjoint random parts of the digits."""
    images, labels = load_digits_upsampled()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    images, labels = images[order], labels[order]
    domains = []
    for i, angle in enumerate(angles):
        part = images[i::len(angles)]
        rotated = rotate(part, float(angle), interpolation=InterpolationMode.BILINEAR, fill=[0.0])
        domains.append(TensorDataset(rotated, labels[i::len(angles)]))
    return domains
