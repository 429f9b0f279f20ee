"""The hparams we add to DomainBed's registry, seeded by name like DomainBed's own.

Every algorithm (ours and DomainBed's) gets ``backbone``, ``pretrained`` and
``frozen_prefix``; our datasets take DomainBed's dataset-dependent hparams of the dataset
they resemble, with ranges of their own where DomainBed's do not fit; our algorithms
(one per rule of :mod:`domainbed_surgery.rules`) get exactly ERM's hparams plus those of
:mod:`domainbed_surgery.surgery.hparams`. Which algorithms are ours is read from the rule
registry.
"""

from __future__ import annotations

from typing import Callable

from ..surgery.hparams import HParam, surgery_hparams


#: Our datasets take DomainBed's dataset-dependent hparams (lr, batch size...) of these.
DATASET_HPARAMS_AS = {"RotatedDigits": "RotatedMNIST", "PACS64": "PACS", "PACS32": "PACS",
                      "PACS128": "PACS"}

#: Default ``backbone`` per dataset; elsewhere None keeps DomainBed's own featurizer choice
#: (which has nothing for PACS64's 64 px images).
DATASET_BACKBONES = {"RotatedDigits": "mnist_cnn", "PACS64": "resnet18", "PACS32": "resnet18",
                     "PACS128": "efficientnet_lite0"}

#: Default ``pretrained`` per dataset (elsewhere true): PACS64's ResNet-18 trains from
#: scratch by default, so that it runs without downloading ImageNet weights.
DATASET_PRETRAINED = {"PACS64": False, "PACS32": False}

#: Where DomainBed's ranges (those of ``DATASET_HPARAMS_AS``) do not fit our data, ours
#: replace them; same default, same per-name seeding. RotatedDigits: a domain's training
#: split holds ~360 images, while RotatedMNIST's search draws ``batch_size`` up to 2^9 and
#: a batch larger than the split is never formed; 2^U(3, 8) stays below 256 (room for
#: ``--holdout_fraction`` up to ~0.28). PACS64 keeps PACS's ranges (at most 45 < 1,336,
#: the smallest training split, photo's).
DATASET_RANGES = {
    "RotatedDigits": (HParam("batch_size", 64, lambda r: int(2 ** r.uniform(3, 8))),),
}


def surgery_rules() -> dict:
    """Our algorithm names -> rule classes (the rule registry; imports torch)."""
    from .. import rules  # noqa: PLC0415 - torch is loaded by DomainBed by the time this runs

    return dict(rules.REGISTRY)


def common_hparams(dataset: str) -> tuple[HParam, ...]:
    """For every algorithm, ours and DomainBed's (see :mod:`domainbed_surgery.extras.backbones`)."""
    backbone = DATASET_BACKBONES.get(dataset)
    pretrained = DATASET_PRETRAINED.get(dataset, True)
    return (HParam("backbone", backbone, lambda r: backbone),
            HParam("pretrained", pretrained, lambda r: pretrained),
            HParam("frozen_prefix", None, lambda r: None))


def extra_hparams(algorithm: str, dataset: str) -> tuple[HParam, ...]:
    """The hparams we define for ``algorithm`` on ``dataset``."""
    rule_class = surgery_rules().get(algorithm)
    return common_hparams(dataset) + (surgery_hparams(rule_class) if rule_class else ())


def base_names(algorithm: str, dataset: str) -> tuple[str, str]:
    """The (algorithm, dataset) whose DomainBed hparams ours start from."""
    return ("ERM" if algorithm in surgery_rules() else algorithm,
            DATASET_HPARAMS_AS.get(dataset, dataset))


def _fit_ranges(hparams: dict, dataset: str, random_seed, seed_hash: Callable) -> None:
    """Replace, in place, the DomainBed hparams that :data:`DATASET_RANGES` redefines for ``dataset``."""
    import numpy as np  # noqa: PLC0415

    for hp in DATASET_RANGES.get(dataset, ()):
        if hp.name in hparams:  # only what DomainBed defines for this algorithm
            state = np.random.RandomState(seed_hash(random_seed, hp.name))
            hparams[hp.name] = (hp.default, hp.random(state))


def with_extras(dbhparams: Callable, seed_hash: Callable) -> Callable:
    """Wrap DomainBed's ``hparams_registry._hparams`` to add :func:`extra_hparams`.

    Each added hparam draws its random value from ``RandomState(seed_hash(seed, name))``,
    as DomainBed does, so adding one never changes another.
    """
    import numpy as np  # noqa: PLC0415 - keep this module free of heavy imports

    def _hparams(algorithm, dataset, random_seed):
        hparams = dbhparams(*base_names(algorithm, dataset), random_seed)
        _fit_ranges(hparams, dataset, random_seed, seed_hash)
        for hp in extra_hparams(algorithm, dataset):
            if hp.name in hparams:
                raise KeyError(
                    f"DomainBed already defines hparam {hp.name!r}; domainbed_surgery "
                    "will not override it. Is your DomainBed newer than the pinned commit?")
            state = np.random.RandomState(seed_hash(random_seed, hp.name))
            hparams[hp.name] = (hp.default, hp.random(state))
        return hparams

    _hparams.__wrapped__ = dbhparams
    _hparams.domainbed_surgery = True
    return _hparams
