"""Registration into DomainBed: one idempotent :func:`register` and :func:`registered`.

Each step takes the DomainBed module it patches, so the lazy import hook
(:mod:`.import_hook`) can run it right after that module is imported. A name
DomainBed (or anyone else) already uses for another class is never replaced:
``strict=True`` raises, ``strict=False`` (the hook) warns and skips.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType
from typing import Any

from . import locate
from .hparams import common_hparams

ORIGIN = "domainbed_surgery"


class RegistrationConflict(RuntimeError):
    """DomainBed already has something else under one of our names."""


def _ours(obj: Any) -> bool:
    return getattr(obj, "__module__", "").split(".")[0] == ORIGIN or getattr(
        obj, "domainbed_surgery", False)


def _refuse(message: str, strict: bool) -> None:
    """A name we will not take: raise (``strict``, explicit ``register()``) or warn (the hook)."""
    if strict:
        raise RegistrationConflict(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _taken(where: str, existing: Any, strict: bool) -> bool:
    """True if ``existing`` is someone else's: then :func:`_refuse`."""
    if existing is None or _ours(existing):
        return False
    _refuse(f"{where} already exists ({existing!r}); domainbed_surgery does not replace it",
            strict)
    return True


def _add(module: ModuleType, names_list: list, name: str, obj: Any, strict: bool) -> bool:
    """Put ``obj`` at ``module.name`` and in ``names_list``; False if the name is taken."""
    if _taken(f"{module.__name__}.{name}", getattr(module, name, None), strict):
        return False
    setattr(module, name, obj)
    if name not in names_list:
        names_list.append(name)
    return True


# -- one step per group -------------------------------------------------------------------
def add_surgery_algorithms(module: ModuleType, strict: bool = True) -> None:
    """The surgery algorithms: one per rule, into ``domainbed.algorithms`` (and ``ALGORITHMS``).

    A rule whose optional dependencies are missing (TorchJD's, without the extra) stays
    out of ``ALGORITHMS``, so sweeps and tables never list it; its class is still put at
    its name, so ``--algorithm UPGrad`` fails with one message saying what to install.
    """
    from ..surgery.algorithm import ALGORITHMS  # noqa: PLC0415 - imports domainbed.algorithms

    for name, cls in ALGORITHMS.items():
        listed = module.ALGORITHMS if cls.rule_class.available() else []
        _add(module, listed, name, cls, strict)


def add_datasets(module: ModuleType, strict: bool = True) -> None:
    """The extra datasets, into ``domainbed.datasets`` and its ``DATASETS``."""
    from ..extras import datasets  # noqa: PLC0415

    for name, cls in datasets.datasets().items():
        _add(module, module.DATASETS, name, cls, strict)


def add_backbones(module: ModuleType, strict: bool = True) -> None:
    """The extra backbones: ``networks.Featurizer`` wrapped so the ``backbone`` hparam picks ours."""
    from ..extras.backbones import with_backbones  # noqa: PLC0415 - DomainBed has loaded torch

    if not _ours(module.Featurizer):
        module.Featurizer = with_backbones(module.Featurizer)


def add_hparams(module: ModuleType, strict: bool = True) -> None:
    """Our hparams: ``hparams_registry._hparams`` wrapped with extra, name-seeded hparams."""
    from domainbed.lib import misc  # noqa: PLC0415

    from .hparams import with_extras  # noqa: PLC0415

    if not _ours(module._hparams):
        module._hparams = with_extras(module._hparams, misc.seed_hash)


def add_launchers(module: ModuleType, strict: bool = True) -> None:
    """The launchers ``parallel`` and ``slurm``, into ``domainbed.command_launchers.REGISTRY``.

    Idempotent; an entry someone else put under one of these names is kept
    (``strict`` raises :class:`RegistrationConflict`, otherwise a warning).
    """
    from ..launch.launchers import LAUNCHERS  # noqa: PLC0415 - light: no torch at import

    for name, fn in LAUNCHERS.items():
        if not _taken(f"{module.__name__}.REGISTRY[{name!r}]", module.REGISTRY.get(name), strict):
            module.REGISTRY[name] = fn


def fix_data_loaders(module: ModuleType, strict: bool = True) -> None:
    """A fix at DomainBed's names: its infinite loaders raise instead of hanging when no
    batch can be formed (a subclass that adds one check, see :mod:`..fixes.loaders`)."""
    from ..fixes.loaders import CHECKED, with_batch_check  # noqa: PLC0415 - no torch import

    for name in CHECKED:
        current = getattr(module, name, None)
        if current is not None and not _ours(current):
            setattr(module, name, with_batch_check(current))


#: The fixes at DomainBed's algorithm names: name -> (our module, our class, where
#: DomainBed's original stays reachable). DomainBed's Fishr needs BackPACK, which fails
#: with current torch; ours is numerically equal.
REPLACES = {"Fishr": ("domainbed_surgery.fixes.fishr", "Fishr", "Fishr_BackPACK")}
#: Set to 1 to keep DomainBed's own (BackPACK) Fishr.
KEEP_BACKPACK_FISHR = "DOMAINBED_SURGERY_KEEP_BACKPACK_FISHR"


def fix_algorithms(module: ModuleType, strict: bool = True) -> None:
    """Put our classes at the names in :data:`REPLACES`, keeping DomainBed's originals.

    Only DomainBed's own class is replaced (one defined in ``domainbed.algorithms``);
    anything else found there is a conflict, as for :func:`_add`.
    """
    import os  # noqa: PLC0415

    if os.environ.get(KEEP_BACKPACK_FISHR, "").strip().lower() in ("1", "true", "yes", "on"):
        return
    for name, (our_module, our_name, keep_as) in REPLACES.items():
        ours = getattr(importlib.import_module(our_module), our_name)
        current = getattr(module, name, None)
        if current is ours:
            continue
        if current is None or getattr(current, "__module__", None) != module.__name__:
            _refuse(f"{module.__name__}.{name} is {current!r}, not DomainBed's own; "
                    "domainbed_surgery does not replace it", strict)
            continue
        ours.original = current
        setattr(module, keep_as, current)
        setattr(module, name, ours)


#: DomainBed module -> the steps that register into it, in order.
GROUPS = {
    "domainbed.networks": (add_backbones,),
    "domainbed.algorithms": (add_surgery_algorithms, fix_algorithms),
    "domainbed.hparams_registry": (add_hparams,),
    "domainbed.datasets": (add_datasets,),
    "domainbed.command_launchers": (add_launchers,),
    "domainbed.lib.fast_data_loader": (fix_data_loaders,),
}
#: Our modules that import a DomainBed module while they are being imported: that
#: module's steps wait until ours is complete (instead of a circular import), and run then.
FEEDS = {
    "domainbed_surgery.surgery.algorithm": "domainbed.algorithms",
    "domainbed_surgery.fixes.fishr": "domainbed.algorithms",
    "domainbed_surgery.extras.datasets.pacs": "domainbed.datasets",
    "domainbed_surgery.extras.datasets.rotated_digits": "domainbed.datasets",
}


def _importing(name: str) -> bool:
    """Whether module ``name`` is being imported right now (started, not finished)."""
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _run_group(module: ModuleType, strict: bool = True, finished: str = "") -> None:
    """The steps of ``module``'s group, unless one of our modules it needs is mid-import
    (``finished``: one that has just run to its end, though still flagged as importing)."""
    if any(_importing(ours) for ours, target in FEEDS.items()
           if target == module.__name__ and ours != finished):
        return  # that module of ours is importing this one: it runs the steps when done
    for step in GROUPS[module.__name__]:
        step(module, strict)


def _feeder_done(module: ModuleType, strict: bool = True) -> None:
    """One of our :data:`FEEDS` modules ran to its end: register into its target if loaded."""
    target = sys.modules.get(FEEDS[module.__name__])
    if target is not None and not _importing(target.__name__):
        _run_group(target, strict, finished=module.__name__)


#: Module name -> what the import hook runs right after that module is imported.
STEPS = {**{name: _run_group for name in GROUPS}, **{name: _feeder_done for name in FEEDS}}


def register() -> dict[str, list[str]]:
    """Register everything into DomainBed now (idempotent) and return :func:`registered`.

    Raises :class:`RegistrationConflict` if DomainBed already has another object
    under one of our names, and :class:`~.locate.DomainBedNotFound` without DomainBed.
    """
    locate.ensure_importable()
    for module_name in GROUPS:
        _run_group(importlib.import_module(module_name), strict=True)
    return registered()


def registered() -> dict[str, list[str]]:
    """What of ours DomainBed currently has, by kind (empty lists if not imported)."""
    modules = {name: sys.modules.get(name) for name in GROUPS}

    def names(module_name: str, attr_list: str) -> list[str]:
        module = modules[module_name]
        if module is None:
            return []
        return [n for n in getattr(module, attr_list) if _ours(getattr(module, n, None))]

    networks, registry = modules["domainbed.networks"], modules["domainbed.hparams_registry"]
    backbones = []
    if networks is not None and _ours(networks.Featurizer):
        from ..extras.backbones import BACKBONES  # noqa: PLC0415 - torch is loaded by now

        backbones = sorted(BACKBONES)
    return {
        "algorithms": names("domainbed.algorithms", "ALGORITHMS"),
        "datasets": names("domainbed.datasets", "DATASETS"),
        "hparams": [hp.name for hp in common_hparams("")] if registry and _ours(registry._hparams) else [],
        "backbones": backbones,
        "launchers": _our_launchers(modules["domainbed.command_launchers"]),
        "data_loaders": _our_loaders(modules["domainbed.lib.fast_data_loader"]),
    }


def _our_loaders(module) -> list[str]:
    """DomainBed's loader names that hold our checked subclass (see :mod:`..fixes.loaders`)."""
    from ..fixes.loaders import CHECKED  # noqa: PLC0415 - light

    return [] if module is None else [n for n in CHECKED if _ours(getattr(module, n, None))]


def _our_launchers(module) -> list[str]:
    return [] if module is None else [n for n, fn in module.REGISTRY.items() if _ours(fn)]
