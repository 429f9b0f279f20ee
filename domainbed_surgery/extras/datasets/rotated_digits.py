"""``RotatedDigits``: an offline RotatedMNIST from scikit-learn's digits (:mod:`.digits`)."""

from __future__ import annotations

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
