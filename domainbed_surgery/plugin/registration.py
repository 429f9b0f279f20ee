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
from ..glue.hparams import common_hparams

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


def register_algorithms(module: ModuleType, strict: bool = True) -> None:
    """Add one algorithm per rule to ``domainbed.algorithms`` (and to its ``ALGORITHMS``).

    A rule whose optional dependencies are missing (TorchJD's, without the extra) stays
    out of ``ALGORITHMS``, so sweeps and tables never list it; its class is still put at
    its name, so ``--algorithm UPGrad`` fails with one message saying what to install.
    """
    from ..glue.algorithms import ALGORITHMS  # noqa: PLC0415 - imports domainbed.algorithms

    for name, cls in ALGORITHMS.items():
        listed = module.ALGORITHMS if cls.rule_class.available() else []
        _add(module, listed, name, cls, strict)


def register_datasets(module: ModuleType, strict: bool = True) -> None:
    """Add our offline datasets to ``domainbed.datasets`` and its ``DATASETS``."""
    from ..glue.datasets import DATASETS  # noqa: PLC0415

    for name, cls in DATASETS.items():
        _add(module, module.DATASETS, name, cls, strict)


def patch_hparams_registry(module: ModuleType, strict: bool = True) -> None:
    """Wrap ``hparams_registry._hparams`` with our extra, name-seeded hparams."""
    from domainbed.lib import misc  # noqa: PLC0415

    from ..glue.hparams import with_extras  # noqa: PLC0415

    if not _ours(module._hparams):
        module._hparams = with_extras(module._hparams, misc.seed_hash)


def patch_networks(module: ModuleType, strict: bool = True) -> None:
    """Wrap ``networks.Featurizer`` so the ``backbone`` hparam picks our featurizers."""
    if not _ours(module.Featurizer):
        module.Featurizer = _featurizer_with_backbones(module.Featurizer)


def _featurizer_with_backbones(domainbed_featurizer):
    def Featurizer(input_shape, hparams):  # noqa: N802 - DomainBed's name
        """DomainBed's featurizer, or ours when the ``backbone`` hparam is set; prints its weights."""
        from ..glue import backbones  # noqa: PLC0415 - DomainBed has loaded torch by now

        name = hparams.get("backbone")
        if name is not None:
            return backbones.build(name, input_shape, hparams)
        if hparams.get("frozen_prefix") is not None:
            raise ValueError("hparam frozen_prefix needs a backbone that supports it, e.g. "
                             "\"backbone\": \"efficientnet_lite0\"; DomainBed's own featurizer "
                             "has no frozen prefix.")
        if (not hparams.get("pretrained", True) and len(input_shape) == 3
                and tuple(input_shape[1:3]) == (224, 224)):
            raise ValueError(
                "'pretrained': false only applies to a backbone chosen with the 'backbone' "
                "hparam; DomainBed's own ResNet always loads ImageNet weights. Add e.g. "
                "\"backbone\": \"resnet50\" to --hparams.")
        featurizer = domainbed_featurizer(input_shape, hparams)
        backbones.announce(backbones.describe_domainbed(featurizer, hparams),
                           backbones.domainbed_facts(featurizer, hparams))
        return featurizer

    Featurizer.__wrapped__ = domainbed_featurizer
    Featurizer.domainbed_surgery = True
    return Featurizer


def patch_data_loaders(module: ModuleType, strict: bool = True) -> None:
    """Make DomainBed's infinite loaders raise instead of hanging when no batch can be formed.

    Like Fishr, a deliberate change at DomainBed's names: a subclass that adds one check
    (see :mod:`.loaders`) and inherits everything else.
    """
    from ..glue.loaders import CHECKED, with_batch_check  # noqa: PLC0415 - no torch import

    for name in CHECKED:
        current = getattr(module, name, None)
        if current is not None and not _ours(current):
            setattr(module, name, with_batch_check(current))


def register_launchers(module: ModuleType, strict: bool = True) -> None:
    """Add ``parallel`` and ``slurm`` to ``domainbed.command_launchers.REGISTRY``.

    Idempotent; an entry someone else put under one of these names is kept
    (``strict`` raises :class:`RegistrationConflict`, otherwise a warning).
    """
    from ..launch.launchers import LAUNCHERS  # noqa: PLC0415 - light: no torch at import

    for name, fn in LAUNCHERS.items():
        if not _taken(f"{module.__name__}.REGISTRY[{name!r}]", module.REGISTRY.get(name), strict):
            module.REGISTRY[name] = fn


#: The one deliberate exception to "never replace": DomainBed algorithm name ->
#: (our module, our class, where DomainBed's original stays reachable). DomainBed's
#: Fishr needs BackPACK, which fails with current torch; ours is numerically equal.
REPLACES = {"Fishr": ("domainbed_surgery.glue.fishr", "Fishr", "Fishr_BackPACK")}
#: Set to 1 to keep DomainBed's own (BackPACK) Fishr.
KEEP_BACKPACK_FISHR = "DOMAINBED_SURGERY_KEEP_BACKPACK_FISHR"


def replace_algorithms(module: ModuleType, strict: bool = True) -> None:
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


GLUE_ALGORITHMS = "domainbed_surgery.glue.algorithms"


def _algorithms_step(module: ModuleType, strict: bool = True) -> None:
    glue = sys.modules.get(GLUE_ALGORITHMS)
    if glue is not None and not hasattr(glue, "ALGORITHMS"):
        # Our glue module is importing DomainBed's (for ERM) and is not done: it registers
        # itself when it is (the STEPS entry below), instead of a circular import here.
        return
    register_algorithms(module, strict)
    replace_algorithms(module, strict)


def _glue_algorithms_step(module: ModuleType, strict: bool = True) -> None:
    """Once our glue module is imported: register into ``domainbed.algorithms`` if loaded."""
    algorithms = sys.modules.get("domainbed.algorithms")
    if algorithms is not None:
        _algorithms_step(algorithms, strict)


#: DomainBed module -> our step, in import order.
STEPS = {
    "domainbed.networks": patch_networks,
    "domainbed.algorithms": _algorithms_step,
    "domainbed.hparams_registry": patch_hparams_registry,
    "domainbed.datasets": register_datasets,
    "domainbed.command_launchers": register_launchers,
    "domainbed.lib.fast_data_loader": patch_data_loaders,
    GLUE_ALGORITHMS: _glue_algorithms_step,
}


def register() -> dict[str, list[str]]:
    """Register everything into DomainBed now (idempotent) and return :func:`registered`.

    Raises :class:`RegistrationConflict` if DomainBed already has another object
    under one of our names, and :class:`~.locate.DomainBedNotFound` without DomainBed.
    """
    locate.ensure_importable()
    for module_name, step in STEPS.items():
        step(importlib.import_module(module_name), strict=True)
    return registered()


def registered() -> dict[str, list[str]]:
    """What of ours DomainBed currently has, by kind (empty lists if not imported)."""
    modules = {name: sys.modules.get(name) for name in STEPS}

    def names(module_name: str, attr_list: str) -> list[str]:
        module = modules[module_name]
        if module is None:
            return []
        return [n for n in getattr(module, attr_list) if _ours(getattr(module, n, None))]

    networks, registry = modules["domainbed.networks"], modules["domainbed.hparams_registry"]
    backbones = []
    if networks is not None and _ours(networks.Featurizer):
        from ..glue.backbones import BACKBONES  # noqa: PLC0415 - torch is loaded by now

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
    """DomainBed's loader names that hold our checked subclass (see :mod:`.loaders`)."""
    from ..glue.loaders import CHECKED  # noqa: PLC0415 - light

    return [] if module is None else [n for n in CHECKED if _ours(getattr(module, n, None))]


def _our_launchers(module) -> list[str]:
    return [] if module is None else [n for n, fn in module.REGISTRY.items() if _ours(fn)]
