"""Agr-Sum (Mansilla et al., ICCV 2021, Eq. 3): sum where all domains agree in sign, 0 elsewhere."""

from __future__ import annotations

import torch

from .interface import ElementwiseRule


class AgrSum(ElementwiseRule):
    """``g*_k = sum_i g_k^(i)`` where :func:`~.kernels.agreement_mask` holds, else 0."""

    name = "AgrSum"
    rank = 0
    summary = "sum of the domain gradients where all agree in sign, 0 elsewhere (Eq. 3)"

    def combine(self, grads, *, gram, mask, generator, out):
        total = torch.sum(grads, dim=0, out=out)
        return total.mul_(mask)

    def combine_chunk(self, grads, conflicts, out):
        torch.add(grads[0], grads[1], out=out)
        for row in grads[2:]:
            out.add_(row)
        out.masked_fill_(conflicts, 0.0)
