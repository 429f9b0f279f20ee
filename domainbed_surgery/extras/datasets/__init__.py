"""Datasets we add to DomainBed (subclasses of its ``MultipleDomainDataset``).

``RotatedDigits`` (offline, :mod:`.rotated_digits`), ``PACS64``, ``PACS32`` and ``PACS128``
(:mod:`.pacs`; PACS128 with a frozen prefix computed once, :mod:`.prefix_cache`).
Importing this package imports nothing; :func:`datasets` imports DomainBed's.
"""

from __future__ import annotations


def datasets() -> dict:
    """Dataset name -> class, for ``domainbed.datasets`` (and its ``DATASETS`` list)."""
    from .pacs import PACS32, PACS64, PACS128  # noqa: PLC0415 - imports domainbed.datasets
    from .rotated_digits import RotatedDigits  # noqa: PLC0415

    return {"RotatedDigits": RotatedDigits, "PACS64": PACS64, "PACS32": PACS32, "PACS128": PACS128}
