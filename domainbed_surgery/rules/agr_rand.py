"""Agr-Rand (Mansilla et al., ICCV 2021, Eq. 4): the agreeing sum, Gaussian noise elsewhere."""

from __future__ import annotations

import torch
from torch import Tensor

from . import compiled
from .interface import ElementwiseRule
from .kernels import agreeing_sum_into


class AgrRand(ElementwiseRule):
    """The sum where all domains agree in sign, ``N(0, sigma^2)`` samples elsewhere.

    ``sigma`` is the mean of ``|g*_p|`` over the agreeing components ``p`` of the whole
    model (:func:`~.kernels.agreement_mask`: components that are zero in every domain
    conflict, so they get noise and stay out of the mean, as in the authors' code). If
    no component agrees, ``sigma`` has no reference scale and is defined as 0: the result
    is then all zeros (the authors' code gives NaN there).
    """

    name = "AgrRand"
    rank = 1
    summary = "the agreeing sum; N(0, sigma^2) where the domains conflict (Eq. 4)"

    def combine(self, grads, *, gram, mask, generator, out):
        total = agreeing_sum_into(grads, ~mask, out)
        n_agree = mask.count_nonzero()
        # |g*| is already zero off the mask, so summing it over all P is the sum over A.
        sigma = torch.where(n_agree > 0,
                            torch.linalg.vector_norm(total, ord=1) / n_agree.clamp_min(1), 0.0)
        noise = torch.randn(total.shape, generator=generator, device=total.device,
                            dtype=total.dtype)
        noise.mul_(sigma.to(total.dtype))
        return torch.where(mask, total, noise, out=total)

    def combine_chunk(self, grads, conflicts, out):
        """The agreeing sum of these columns; returns [sum |g*|, agreeing count] (float64)."""
        agreeing_sum_into(grads, conflicts, out)
        n_agree = conflicts.numel() - conflicts.count_nonzero()
        return torch.stack([torch.linalg.vector_norm(out, ord=1, dtype=torch.float64),
                            n_agree.to(torch.float64)])

    def fuses(self, grads, out):
        return compiled.applies(grads, out)

    def combine_fused(self, grads, out, gram=False):
        """:meth:`combine_chunk` over all columns by the compiled kernel (its float64
        ``sum |g*|`` is summed block by block rather than chunk by chunk: the same value up
        to rounding)."""
        read = compiled.agreeing_sum(grads, out, gram=gram)
        return torch.tensor([read.l1, out.numel() - read.conflicts], dtype=torch.float64), read

    def finish(self, out, partial, generator):
        """Noise where the domains conflict: exactly the zeros of ``out``, since an agreeing
        component is a sum of nonzero numbers of one sign, which is never zero.

        On the CPU (float32) a compiled ziggurat draws them in one pass over ``out``
        (:func:`~.compiled.noise_where_zero`: about 2.5 ns a draw on one core, against
        3.5 ns for ``torch.randn``), seeded by one draw from ``generator``; its streams
        are per column block, so the update does not depend on the thread count. Every
        column gets a draw and the agreeing ones keep their sum: a branch per column
        costs more than the draws it saves (measured at 73% conflict). Elsewhere
        ``torch.randn`` with ``generator`` draws them.
        """
        l1, n_agree = partial[0], partial[1]
        sigma = torch.where(n_agree > 0, l1 / n_agree.clamp_min(1), 0.0).to(out.dtype)
        flat = out.view(-1)
        if compiled.noise_applies(flat):
            seed = int(torch.randint(-2**63, 2**63 - 1, (), generator=generator)) % 2**64
            compiled.noise_where_zero(flat, seed, float(sigma))
            return out
        noise = torch.randn(flat.shape, generator=generator, device=flat.device,
                            dtype=flat.dtype).mul_(sigma)
        torch.where(flat == 0, noise, flat, out=flat)
        return out
