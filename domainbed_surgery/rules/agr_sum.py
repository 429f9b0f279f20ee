"""Agr-Sum (Mansilla et al., ICCV 2021, Eq. 3): sum where all domains agree in sign, 0 elsewhere."""

from __future__ import annotations

from . import compiled
from .interface import ElementwiseRule
from .kernels import agreeing_sum_into


class AgrSum(ElementwiseRule):
    """``g*_k = sum_i g_k^(i)`` where :func:`~.kernels.agreement_mask` holds, else 0."""

    name = "AgrSum"
    rank = 0
    summary = "sum of the domain gradients where all agree in sign, 0 elsewhere (Eq. 3)"

    def combine(self, grads, *, gram, mask, generator, out):
        return agreeing_sum_into(grads, ~mask, out)

    def combine_chunk(self, grads, conflicts, out):
        agreeing_sum_into(grads, conflicts, out)

    def fuses(self, grads, out):
        return compiled.applies(grads, out)

    def combine_fused(self, grads, out, gram=False):
        return None, compiled.agreeing_sum(grads, out, l1=False, gram=gram)
