"""Gradient-combination rules across domains: pure tensor math on ``[N, P]``, one module each.

:data:`REGISTRY` maps a rule's name (its DomainBed algorithm name) to its class. Every
module of this package is imported here, and each :class:`Rule` subclass with a ``name``
registers itself, so a new rule is one new module (and its test file): the DomainBed
algorithms, their hparams, the benchmark rows and the property tests derive from the
registry. Layout: :mod:`.interface` (what a rule is), :mod:`.registry`, :mod:`.kernels`
(the shared math), :mod:`.fused` (the step's single pass), :mod:`.compiled` (its CPU
kernels, Numba), one module per rule.
"""

from __future__ import annotations

import importlib
import pkgutil

from .fused import OnePass, combine_in_one_pass, one_pass
from .interface import ElementwiseRule, GramianRule, Param, Rule, RuleUnavailable, fixed
from .kernels import (CHUNK, agreement_mask, check_finite_rows, check_grads, column_chunks,
                      gram_matrix, pairwise_cosine)
from .registry import REGISTRY, get, names

_INFRASTRUCTURE = {"compiled", "fused", "interface", "kernels", "registry"}
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Rule", "ElementwiseRule", "GramianRule", "Param", "fixed", "RuleUnavailable",
           "names", "get", "agreement_mask", "gram_matrix", "one_pass", "combine_in_one_pass",
           "OnePass", "column_chunks", "CHUNK", "pairwise_cosine", "check_grads",
           "check_finite_rows"]
