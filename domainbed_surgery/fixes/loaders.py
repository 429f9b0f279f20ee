"""DomainBed's infinite training loaders, made to fail fast when a batch can never be formed.

``domainbed.lib.fast_data_loader.InfiniteDataLoader`` (and its ``WithoutReplacement``
twin) batch a ``RandomSampler`` over the dataset with ``drop_last=True``. With fewer
examples than ``batch_size`` (and no ``weights``), no batch is ever produced, and the
loader spins forever looking for one: the training job hangs, and under a launcher holds
its slot for ever. Registration (:mod:`..plugin.registration`) puts subclasses that check this one
condition at DomainBed's names, for every dataset and algorithm (DomainBed's included:
the check changes nothing but a job that would never end into an error). With
``weights`` DomainBed draws ``batch_size`` examples with replacement, which always works,
so that case is left alone.
"""

from __future__ import annotations

from typing import Any


def check_batch_fits(dataset: Any, weights: Any, batch_size: int) -> None:
    """Raise ``ValueError`` if DomainBed's loader could never form one batch of ``dataset``."""
    if weights is not None:
        return
    n = len(dataset)
    if n >= batch_size:
        return
    raise ValueError(
        f"a training split cannot fill one batch: batch_size={batch_size} but the split has "
        f"only {n} examples, and DomainBed's InfiniteDataLoader (drop_last=True) would wait "
        f"forever for a full batch. Set the 'batch_size' hparam to at most {n} "
        f"(e.g. --hparams '{{\"batch_size\": {min(n, 32)}}}'), lower --holdout_fraction, or, "
        "if this batch size came from a random hparam search, narrow that dataset's "
        "'batch_size' range.")


def with_batch_check(loader_class: type) -> type:
    """A subclass of DomainBed's ``loader_class`` whose constructor first runs :func:`check_batch_fits`."""

    class Checked(loader_class):
        __doc__ = (f"DomainBed's ``{loader_class.__name__}``; raises ValueError instead of "
                   "hanging when no batch can be formed (domainbed_surgery.fixes.loaders).")
        domainbed_surgery = True

        def __init__(self, dataset, weights, batch_size, num_workers):
            check_batch_fits(dataset, weights, batch_size)
            super().__init__(dataset, weights, batch_size, num_workers)

    Checked.__name__ = loader_class.__name__
    Checked.__qualname__ = loader_class.__qualname__
    Checked.__wrapped__ = loader_class
    return Checked


#: DomainBed's loaders that get the check.
CHECKED = ("InfiniteDataLoader", "InfiniteDataLoaderWithoutReplacement")
