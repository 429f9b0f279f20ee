"""PCGrad (Yu et al., NeurIPS 2020; Mansilla et al. Eq. 5) on domain gradients."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .interface import GramianRule, fixed

Orders = list[list[int]]


def pcgrad_weights(gram: Tensor, orders: Sequence[Sequence[int]]) -> Tensor:
    """PCGrad as coefficients ``w`` with ``pcgrad(grads) = w @ grads``, for given visit orders.

    ``orders[i]`` lists the other domains in the order domain ``i`` is projected off them.
    Every projected gradient stays a linear combination of the original ones, so Eq. 5 runs
    on the ``[N, N]`` Gram matrix (in float64): the inner product of a projected
    ``g_i = c @ G`` with an original ``g_j`` is ``c @ gram[:, j]``.
    """
    # Python floats: N is a handful (8 us for N = 3; torch's per-element calls took 69 us).
    g = gram.detach().to(device="cpu", dtype=torch.float64).tolist()
    n = len(g)
    coeffs = [[float(i == k) for k in range(n)] for i in range(n)]
    for i, order in enumerate(orders):
        c = coeffs[i]
        for j in order:
            sq_norm = g[j][j]
            if sq_norm <= 0:  # a zero gradient conflicts with nothing
                continue
            dot = sum(c[k] * g[k][j] for k in range(n))
            if dot < 0:
                c[j] -= dot / sq_norm
    return torch.tensor([sum(row[k] for row in coeffs) for k in range(n)], dtype=torch.float64)


def shared_order(n: int, generator: Optional[torch.Generator]) -> Orders:
    """The authors' orders (DGvGS ``src/gradient.py``): ONE random permutation of the
    domains, and every domain visits the others in that permutation's order.

    At most N! distinct visit plans (6 for N = 3).
    """
    perm = torch.randperm(n, generator=generator).tolist()
    return [[j for j in perm if j != i] for i in range(n)]


def independent_orders(n: int, generator: Optional[torch.Generator]) -> Orders:
    """Yu et al.'s orders: each domain visits the others in its own random permutation.

    ((N-1)!)^N visit plans (8 for N = 3), some of which the authors' code never makes.
    """
    orders = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        perm = torch.randperm(len(others), generator=generator).tolist()
        orders.append([others[k] for k in perm])
    return orders


#: ``pcgrad_order`` values -> how the visit orders are drawn each step.
ORDERS: dict[str, Callable[[int, Optional[torch.Generator]], Orders]] = {
    "shared": shared_order,
    "independent": independent_orders,
}


class PCGrad(GramianRule):
    """Project each domain gradient off every *original* other one it conflicts with, then sum.

    Each ``g^(i)`` is projected in turn onto the normal plane of every other-domain
    gradient ``g^(j)`` with ``<g^(i), g^(j)> < 0`` (``g^(i)`` already projected, ``g^(j)``
    original); the projected gradients are summed. The visit order is drawn each step from
    the (CPU) generator: ``order="shared"`` (default) is the authors' code, one permutation
    that every domain follows; ``"independent"`` is Yu et al.'s, one permutation per
    domain. A zero ``g^(j)`` is skipped, so nothing divides by zero.
    """

    name = "PCGrad"
    rank = 2
    summary = "each domain gradient projected off the conflicting others, then summed (Eq. 5)"
    params = (fixed("order", "shared",
                    "visit order of the other domains: 'shared' (one permutation per step, "
                    "the authors' code) or 'independent' (one per domain, Yu et al.)",
                    choices=tuple(ORDERS)),)

    def weights(self, gram, generator):
        return pcgrad_weights(gram, ORDERS[self.config["order"]](gram.shape[0], generator))
