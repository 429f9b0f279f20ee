"""Gradient-surgery rules of Mansilla et al. (ICCV 2021), as pure tensor functions.

Every rule maps a stacked matrix ``grads`` of shape ``[N domains, P parameters]``
(one flattened loss gradient per source domain) to one update direction of shape
``[P]``. Nothing here knows about models, optimizers or DomainBed.

- :func:`agreement_mask` -- Eq. 2: where do all domains agree in sign?
- :func:`agr_sum` -- Eq. 3 (Agr-Sum): sum where they agree, zero elsewhere.
- :func:`agr_rand` -- Eq. 4 (Agr-Rand): sum where they agree, N(0, sigma^2) elsewhere.
- :func:`pcgrad` -- Eq. 5 (PCGrad, Yu et al. 2020) applied to domains instead of tasks.

Randomness only comes from the ``generator`` argument (or torch's global RNG for
the tensor's device when it is ``None``), so results are reproducible under a seed.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = [
    "Rule",
    "agreement_mask",
    "agr_sum",
    "agr_rand",
    "pcgrad",
    "gram_matrix",
    "pairwise_cosine",
    "pcgrad_weights",
    "RULES",
]

#: A surgery rule: ``rule(grads, generator=None) -> combined gradient``.
Rule = Callable[..., Tensor]


def _check_grads(grads: Tensor) -> None:
    if not isinstance(grads, Tensor):
        raise TypeError(f"grads must be a torch.Tensor, got {type(grads).__name__}")
    if grads.dim() != 2:
        raise ValueError(
            f"grads must have shape [N domains, P parameters], got {tuple(grads.shape)}")
    if grads.shape[0] == 0:
        raise ValueError("grads must hold at least one domain gradient (N >= 1)")
    if not grads.is_floating_point():
        raise TypeError(f"grads must be floating point, got {grads.dtype}")


def _check_generator(generator: Optional[torch.Generator], grads: Tensor) -> None:
    if generator is not None and generator.device.type != grads.device.type:
        raise ValueError(
            f"generator is on {generator.device} but grads are on {grads.device}; "
            "create the generator on the gradients' device")


def _all_rows(grads: Tensor, compare) -> Tensor:
    """``bool[P]``: ``compare(row)`` holds in every row (row-wise, no ``[N, P]`` temporaries)."""
    result = compare(grads[0])
    for row in grads[1:]:
        result &= compare(row)
    return result


def agreement_mask(grads: Tensor) -> Tensor:
    """Eq. 2: ``bool[P]``, true where all N components are nonzero with one common sign.

    This is the authors' released rule (``|sum_i sgn(g_k^(i))| == N``): a component that
    is zero in some domain conflicts, including one that is zero in *every* domain (Eq. 2
    read literally would let ``sgn(0) = ... = sgn(0)`` agree). It matters for Agr-Rand,
    whose noise goes to every conflicting component and whose sigma averages over the
    agreeing ones, and for the logged agreement fraction; Agr-Sum's sum is 0 there anyway.
    """
    _check_grads(grads)
    return _all_rows(grads, lambda r: r > 0) | _all_rows(grads, lambda r: r < 0)


def _check_mask(mask: Tensor, grads: Tensor) -> None:
    if mask.dtype != torch.bool or mask.shape != grads.shape[1:]:
        raise ValueError(f"mask must be bool[{grads.shape[1]}] from agreement_mask(grads), "
                         f"got {mask.dtype}{list(mask.shape)}")


def agr_sum(grads: Tensor, generator: Optional[torch.Generator] = None, *,
            out: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
    """Eq. 3 (Agr-Sum): ``sum_i g^(i)`` where all domains agree in sign, 0 elsewhere.

    ``generator`` is accepted for a uniform rule signature and unused. ``out``, a
    preallocated ``[P]`` tensor, receives the result (saves an allocation per step);
    ``mask`` may pass a precomputed :func:`agreement_mask` of ``grads``.
    """
    _check_grads(grads)
    if mask is None:
        mask = agreement_mask(grads)
    _check_mask(mask, grads)
    total = torch.sum(grads, dim=0, out=out)
    return total.mul_(mask)


def agr_rand(grads: Tensor, generator: Optional[torch.Generator] = None, *,
             out: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
    """Eq. 4 (Agr-Rand): the sum where domains agree, ``N(0, sigma^2)`` samples elsewhere.

    ``sigma`` is the mean of ``|g*_p|`` over the agreeing components ``p`` of the
    whole model (:func:`agreement_mask`: components that are zero in every domain
    conflict, so they get noise and stay out of the mean, as in the authors' code).
    If no component agrees, ``sigma`` has no reference scale and is defined as 0: the
    result is then all zeros (the authors' code gives NaN there). With a single domain
    (N = 1) there is nothing to agree with and the gradient is returned unchanged
    (the authors' rule would put noise on its exact zeros).
    ``mask`` may pass a precomputed :func:`agreement_mask` of ``grads``.
    """
    _check_grads(grads)
    _check_generator(generator, grads)
    if grads.shape[0] == 1:  # one domain: nothing to agree with, the plain gradient
        return grads[0].clone() if out is None else out.copy_(grads[0])
    agree = agreement_mask(grads) if mask is None else mask
    _check_mask(agree, grads)
    total = torch.sum(grads, dim=0, out=out)
    total.mul_(agree)
    n_agree = agree.count_nonzero()
    # |g*| is already zero off the mask, so summing it over all P is the sum over A.
    sigma = torch.where(n_agree > 0, torch.linalg.vector_norm(total, ord=1) / n_agree.clamp_min(1), 0.0)
    noise = torch.randn(total.shape, generator=generator, device=total.device,
                        dtype=total.dtype)
    noise.mul_(sigma.to(total.dtype))
    return torch.where(agree, total, noise, out=total)


def gram_matrix(grads: Tensor) -> Tensor:
    """``[N, N]`` matrix of inner products ``<g^(i), g^(j)>`` (one matmul)."""
    _check_grads(grads)
    return grads @ grads.T


def pairwise_cosine(gram: Tensor) -> Tensor:
    """Mean cosine similarity over domain pairs ``i < j``, from a Gram matrix.

    Pairs with a zero-norm gradient have no defined cosine and are left out; the
    result is NaN when no pair is defined (including N = 1).
    """
    n = gram.shape[0]
    norms = gram.diagonal().clamp_min(0).sqrt()
    i, j = torch.triu_indices(n, n, offset=1, device=gram.device)
    denom = norms[i] * norms[j]
    defined = denom > 0
    cos = gram[i, j][defined] / denom[defined]
    if cos.numel() == 0:
        return torch.tensor(float("nan"), dtype=gram.dtype, device=gram.device)
    return cos.mean()


def pcgrad_weights(gram: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """PCGrad as coefficients: ``w`` such that ``pcgrad(grads) = w @ grads``.

    Every projected gradient stays a linear combination of the original ones, so the
    whole procedure of Eq. 5 runs on the ``[N, N]`` Gram matrix (in float64): the
    inner product of projected ``g_i = c @ G`` with original ``g_j`` is ``c @ G[:, j]``.
    """
    g = gram.detach().to(device="cpu", dtype=torch.float64)
    n = g.shape[0]
    coeffs = torch.eye(n, dtype=torch.float64)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    for i in range(n):
        others = [j for j in range(n) if j != i]
        order = torch.randperm(len(others), generator=generator, device=gen_device).tolist()
        for k in order:
            j = others[k]
            sq_norm = g[j, j]
            if sq_norm <= 0:  # a zero gradient conflicts with nothing
                continue
            dot = coeffs[i] @ g[:, j]
            if dot < 0:
                coeffs[i, j] -= dot / sq_norm
    return coeffs.sum(dim=0)


def pcgrad(grads: Tensor, generator: Optional[torch.Generator] = None, *,
           out: Optional[Tensor] = None, gram: Optional[Tensor] = None) -> Tensor:
    """Eq. 5 (PCGrad): project each domain gradient off its conflicts, then sum.

    Each ``g^(i)`` is projected in turn onto the normal plane of every *original*
    other-domain gradient ``g^(j)`` it conflicts with (``<g^(i), g^(j)> < 0``, with the
    already projected ``g^(i)``), the others visited in a random order drawn from
    ``generator`` (on any device: it only draws permutations); the projected
    gradients are summed. A zero ``g^(j)`` is skipped, so nothing divides by zero. ``gram`` may pass a precomputed :func:`gram_matrix`.
    """
    _check_grads(grads)
    if gram is None:
        gram = gram_matrix(grads)
    weights = pcgrad_weights(gram, generator).to(device=grads.device, dtype=grads.dtype)
    return torch.mv(grads.T, weights, out=out)


#: Rules by the DomainBed algorithm name that uses them.
RULES: dict[str, Rule] = {"AgrSum": agr_sum, "AgrRand": agr_rand, "PCGrad": pcgrad}
