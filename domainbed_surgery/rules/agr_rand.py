"""Agr-Rand (Mansilla et al., ICCV 2021, Eq. 4): the agreeing sum, Gaussian noise elsewhere."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from . import compiled
from .interface import ElementwiseRule
from .kernels import CHUNK, agreeing_sum_into, column_chunks


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

    def combine_fused(self, grads, out):
        """:meth:`combine_chunk` over all columns by the compiled kernel (its float64
        ``sum |g*|`` is summed block by block rather than chunk by chunk: the same value up
        to rounding)."""
        conflicts, l1 = compiled.agreeing_sum(grads, out)
        return torch.tensor(conflicts), torch.tensor([l1, out.numel() - conflicts],
                                                     dtype=torch.float64)

    def finish(self, out, partial, generator):
        """Noise where the domains conflict: exactly the zeros of ``out``, since an agreeing
        component is a sum of nonzero numbers of one sign, which is never zero.

        Every component gets a draw and the agreeing ones keep their sum: a normal draw
        costs about what compacting the conflicting ones out would (measured: draw and
        select 63 ms, ``masked_scatter_`` of the conflicts' draws 123 ms, for 11.2 M
        components at 90% conflict, one thread), and no count waits for a GPU. On the CPU
        the draws (one generator, one core: about 3.5 ns a number) are split into
        :data:`NOISE_PARTS` contiguous parts drawn by parallel threads, each with its own
        generator seeded from ``generator`` (the result does not depend on the thread
        count); each thread writes its cache-sized chunk of draws into the zeros at once
        (:func:`~.compiled.noise_where_zero`).
        """
        l1, n_agree = partial[0], partial[1]
        sigma = torch.where(n_agree > 0, l1 / n_agree.clamp_min(1), 0.0).to(out.dtype)
        flat = out.view(-1)
        if flat.device.type != "cpu":
            noise = torch.randn(flat.shape, generator=generator, device=flat.device,
                                dtype=flat.dtype).mul_(sigma)
            torch.where(flat == 0, noise, flat, out=flat)
            return out
        bounds = torch.linspace(0, flat.numel(), NOISE_PARTS + 1).long().tolist()
        seeds = torch.randint(0, 2**62, (NOISE_PARTS,), generator=generator).tolist()
        parts = [(flat[a:b], seed) for a, b, seed in zip(bounds, bounds[1:], seeds) if b > a]
        list(_pool().map(lambda part: _noise_where_zero(*part, sigma), parts))
        return out


#: Contiguous parts of Agr-Rand's noise, each drawn by its own generator; fixed, so that the
#: update does not depend on the machine. The parts go to ``torch.get_num_threads()``
#: threads (more threads than cores would compete with the intra-op ones).
NOISE_PARTS = 4
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool() -> ThreadPoolExecutor:
    workers = max(1, min(NOISE_PARTS, torch.get_num_threads()))
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(max_workers=workers,
                                             thread_name_prefix="agr-rand-noise")
    return _POOLS[workers]


def _noise_where_zero(part: Tensor, seed: int, sigma: Tensor) -> None:
    """``N(0, sigma^2)`` draws into the zeros of ``part``, a cache-sized chunk at a time."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.empty(min(CHUNK, part.numel()), dtype=part.dtype)
    for cols in column_chunks(part.numel(), CHUNK):
        chunk = part[cols]
        draw = noise[:chunk.numel()]
        torch.randn(draw.shape, generator=generator, out=draw)
        compiled.noise_where_zero(chunk, draw, sigma)
