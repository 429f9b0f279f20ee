"""Gradient-combination rules across domains: pure tensor math on ``[N, P]``, one module each.

:data:`REGISTRY` maps a rule's name (its DomainBed algorithm name) to its class. Every
module of this package is imported here, and each :class:`Rule` subclass with a ``name``
registers itself, so a new rule is one new module (and its test file): the DomainBed
algorithms, their hparams, the benchmark rows and the property tests derive from the
registry.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (CHUNK, REGISTRY, GramianRule, HParam, OnePass, Rule, RuleUnavailable,
                   agreement_mask, check_finite_rows, check_grads, column_chunks, combine_in_one_pass, gram_matrix,
                   one_pass,
                   pairwise_cosine)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def names(available_only: bool = True) -> list[str]:
    """Registered rule names (those whose optional dependencies are installed, by default)."""
    ordered = sorted(REGISTRY.values(), key=lambda cls: cls.rank)  # stable: registration order
    return [cls.name for cls in ordered if cls.available() or not available_only]


def get(name: str) -> type[Rule]:
    """The rule class registered as ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no rule named {name!r}; registered: {sorted(REGISTRY)}") from None


__all__ = ["REGISTRY", "Rule", "GramianRule", "HParam", "RuleUnavailable", "names", "get",
           "agreement_mask", "gram_matrix", "one_pass", "combine_in_one_pass", "OnePass", "column_chunks", "CHUNK",
           "pairwise_cosine", "check_grads", "check_finite_rows"]
