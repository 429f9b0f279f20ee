"""Agr-Rand (Mansilla et al., ICCV 2021, Eq. 4): the agreeing sum, Gaussian noise elsewhere."""

from __future__ import annotations

import torch

from .base import Rule


class AgrRand(Rule):
    """The sum where all domains agree in sign, ``N(0, sigma^2)`` samples elsewhere.

    ``sigma`` is the mean of ``|g*_p|`` over the agreeing components ``p`` of the whole
    model (:func:`~.base.agreement_mask`: components that are zero in every domain
    conflict, so they get noise and stay out of the mean, as in the authors' code). If
    no component agrees, ``sigma`` has no reference scale and is defined as 0: the result
    is then all zeros (the authors' code gives NaN there).
    """

    name = "AgrRand"
    rank = 1
    summary = "the agreeing sum; N(0, sigma^2) where the domains conflict (Eq. 4)"
    needs_mask = True
    randomized = True

    def combine(self, grads, *, gram, mask, generator, out):
        total = torch.sum(grads, dim=0, out=out)
        total.mul_(mask)
        n_agree = mask.count_nonzero()
        # |g*| is already zero off the mask, so summing it over all P is the sum over A.
        sigma = torch.where(n_agree > 0,
                            torch.linalg.vector_norm(total, ord=1) / n_agree.clamp_min(1), 0.0)
        noise = torch.randn(total.shape, generator=generator, device=total.device,
                            dtype=total.dtype)
        noise.mul_(sigma.to(total.dtype))
        return torch.where(mask, total, noise, out=total)
