"""The one place that answers what DomainBed knows of a dataset: its class and its
environments (ours included once registered). Imports DomainBed when asked."""

from __future__ import annotations

from typing import Optional


class UnknownDataset(ValueError):
    """A dataset name DomainBed does not know."""


def dataset_class(name: str):
    """DomainBed's dataset class ``name``; :class:`UnknownDataset` naming the known ones."""
    from domainbed import datasets  # noqa: PLC0415

    try:
        return datasets.get_dataset_class(name)
    except NotImplementedError:
        raise UnknownDataset(f"unknown dataset {name!r}; DomainBed knows "
                             f"{', '.join(datasets.DATASETS)}") from None


def environments_or_raise(name: str) -> list[str]:
    """The environment names of dataset ``name`` (its ``ENVIRONMENTS``)."""
    return [str(e) for e in dataset_class(name).ENVIRONMENTS]


def environments(name: str) -> Optional[list[str]]:
    """The environment names of dataset ``name``, None if DomainBed does not know it."""
    try:
        return environments_or_raise(name)
    except UnknownDataset:
        return None


def training_defaults(name: str) -> Optional[dict[str, int]]:
    """``{"steps": N_STEPS, "checkpoint_freq": CHECKPOINT_FREQ}`` of dataset ``name``: what
    DomainBed's train.py uses when they are unset; None if DomainBed does not know it."""
    try:
        cls = dataset_class(name)
    except UnknownDataset:
        return None
    return {"steps": cls.N_STEPS, "checkpoint_freq": cls.CHECKPOINT_FREQ}
