"""The rule registry: rule name (= DomainBed algorithm name) -> rule class.

A :class:`~.interface.Rule` subclass with a ``name`` is added when its module is imported;
:mod:`domainbed_surgery.rules` imports every module of the package, so a new rule is one
module. Everything else (DomainBed's algorithms, their hparams, the benchmark's rows, the
property tests) is derived from here.
"""

from __future__ import annotations

#: Rule name -> rule class (a :class:`~.interface.Rule` subclass), in registration order.
#: Typed as plain ``type``: the interface imports this module, not the other way round.
REGISTRY: dict[str, type] = {}


def add(cls: type) -> None:
    """Register ``cls`` under its name; a second class under one name is an error."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"two rules named {cls.name!r}: {REGISTRY[cls.name]} and {cls}")
    REGISTRY[cls.name] = cls


def names(available_only: bool = True) -> list[str]:
    """Registered rule names, the paper's first (by ``rank``, then registration order);
    by default only those whose optional dependencies are installed."""
    ordered = sorted(REGISTRY.values(), key=lambda cls: cls.rank)  # stable: registration order
    return [cls.name for cls in ordered if cls.available() or not available_only]


def get(name: str) -> type:
    """The rule class registered as ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no rule named {name!r}; registered: {sorted(REGISTRY)}") from None
