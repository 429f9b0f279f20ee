"""Lazy registration: run our patches right after DomainBed's modules are imported.

A :class:`sys.meta_path` finder watches the module names of :data:`.registration.STEPS`
(a few ``domainbed.*`` modules, and those of ours that import DomainBed's). When
one of them has executed, the matching step of :mod:`.registration` runs, so a
plain ``python -m domainbed.scripts.train`` sees our algorithms, hparams, backbones
and datasets, and nothing (torch included) is imported before DomainBed itself is.
It also finds ``domainbed`` under ``DOMAINBED_DIR`` when it is not importable.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import traceback
import warnings

from .locate import busy, domainbed_dir, suspended
from .registration import STEPS


class _PostImportLoader(importlib.abc.Loader):
    """Wraps a module's loader and runs a registration step after ``exec_module``."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        try:
            STEPS[module.__name__](module, strict=False)
        except Exception:  # never break DomainBed's own import, but say so loudly
            warnings.warn(
                f"domainbed_surgery could not register into {module.__name__}; "
                "our algorithms may be missing:\n"
                + traceback.format_exc(), RuntimeWarning, stacklevel=2)

    def __getattr__(self, name):  # get_source, get_data, is_package, ...
        return getattr(self._loader, name)


class DomainBedFinder(importlib.abc.MetaPathFinder):
    """Finds watched DomainBed modules with the other finders and wraps their loader."""

    def find_spec(self, fullname, path=None, target=None):
        if busy() or (fullname != "domainbed" and fullname not in STEPS):
            return None
        with suspended():
            spec = _find_with_others(self, fullname, path, target)
            if spec is None and fullname == "domainbed":
                found = domainbed_dir()
                if found is not None:
                    spec = importlib.machinery.PathFinder.find_spec(fullname, [str(found)])
        if spec is not None and fullname in STEPS and spec.loader is not None:
            spec.loader = _PostImportLoader(spec.loader)
        return spec


def _find_with_others(me, fullname, path, target):
    for finder in sys.meta_path:
        if finder is me or isinstance(finder, DomainBedFinder):
            continue
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        spec = find(fullname, path, target)
        if spec is not None:
            return spec
    return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, DomainBedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, DomainBedFinder())


def installed() -> bool:
    return any(isinstance(f, DomainBedFinder) for f in sys.meta_path)
