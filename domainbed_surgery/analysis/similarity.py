"""Intra- vs inter-domain gradient similarity: the pure math (paper Sec. 4.3, Fig. 2).

Mansilla et al. measure, during standard training, how aligned the gradients of single
samples are within a domain and across domains. To keep the class from being a source
of differences, every measurement uses samples of ONE class (the same class in every
domain). This module holds the parts that need no model:

* :func:`cosine_stats`: mean pairwise cosine similarity of per-sample gradients, over
  pairs from the same domain (intra) and from different domains (inter), computed from
  the row-normalized ``[S, P]`` gradient matrix with one ``[S, S]`` matmul;
* :func:`one_class_indices`: class-balanced one-class sampling: a class drawn uniformly
  among those every domain has, then up to ``n`` distinct samples of it per domain.

Nothing here imports DomainBed.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor


class CosineStats(NamedTuple):
    """Mean cosine similarity over intra- and inter-domain pairs, and how many pairs.

    A mean is NaN when it has no pair (e.g. one sample per domain gives no intra pair).
    """

    intra: float
    inter: float
    n_intra: int
    n_inter: int


def normalize_rows_(grads: Tensor, eps: float = 0.0) -> Tensor:
    """Divide each row of ``grads`` by its L2 norm, in place; return the row norms.

    Rows with norm ``<= eps`` (an exactly-zero gradient, e.g. a saturated softmax)
    are left as they are; :func:`cosine_stats` leaves them out, since the cosine of a
    zero vector is undefined.
    """
    norms = torch.linalg.vector_norm(grads, dim=1)
    grads.div_(torch.where(norms > eps, norms, torch.ones_like(norms)).unsqueeze(1))
    return norms


def cosine_stats(grads: Tensor, domains: Tensor, normalized: bool = False) -> CosineStats:
    """Mean cosine similarity of the rows of ``grads`` within and between domains.

    Args:
        grads: ``[S, P]``, one flattened per-sample gradient per row. Unless
            ``normalized`` is true the rows are normalized IN PLACE (the matrix can be
            large: no copy is made); pass ``grads.clone()`` to keep it.
        domains: ``[S]`` integer domain label of each row.
        normalized: the rows already have unit norm (or are zero).

    Every unordered pair ``i < j`` counts once. Pairs with a zero row are left out.
    The cosines come from one matmul of the normalized matrix with its transpose,
    accumulated in float64 so that identical rows give exactly 1 up to rounding.
    """
    if grads.dim() != 2:
        raise ValueError(f"grads must be [S, P], got shape {tuple(grads.shape)}")
    domains = torch.as_tensor(domains, device=grads.device).reshape(-1)
    if domains.numel() != grads.shape[0]:
        raise ValueError(f"{domains.numel()} domain labels for {grads.shape[0]} gradients")
    if normalized:
        valid = torch.linalg.vector_norm(grads, dim=1) > 0
    else:
        valid = normalize_rows_(grads) > 0
    if grads.dtype in (torch.float16, torch.bfloat16):
        cos = (grads.float() @ grads.float().T).double()
    else:
        cos = (grads @ grads.T).double()
    s = grads.shape[0]
    upper = torch.triu(torch.ones(s, s, dtype=torch.bool, device=grads.device), diagonal=1)
    pair_ok = upper & valid.unsqueeze(0) & valid.unsqueeze(1)
    same = domains.unsqueeze(0) == domains.unsqueeze(1)
    intra_mask, inter_mask = pair_ok & same, pair_ok & ~same
    n_intra, n_inter = int(intra_mask.sum()), int(inter_mask.sum())
    intra = float(cos[intra_mask].mean()) if n_intra else float("nan")
    inter = float(cos[inter_mask].mean()) if n_inter else float("nan")
    return CosineStats(intra, inter, n_intra, n_inter)


def eligible_classes(labels_per_domain: Sequence[Tensor], min_count: int = 1) -> list[int]:
    """Classes that have at least ``min_count`` samples in every domain, sorted."""
    common: Optional[set[int]] = None
    for labels in labels_per_domain:
        values, counts = torch.unique(torch.as_tensor(labels).reshape(-1), return_counts=True)
        here = {int(v) for v, c in zip(values.tolist(), counts.tolist()) if c >= min_count}
        common = here if common is None else common & here
    return sorted(common or ())


def one_class_indices(labels_per_domain: Sequence[Tensor], n: int,
                      generator: torch.Generator) -> tuple[int, list[Tensor]]:
    """Draw one class and, from every domain, up to ``n`` distinct samples of that class.

    The class is drawn uniformly among the classes present in all domains (class-
    balanced: a rare class is as likely as a frequent one), preferring classes with
    at least two samples in every domain so that each domain contributes intra-domain
    pairs. Samples are drawn without replacement (a duplicated sample would add a
    spurious cosine of exactly 1 to the intra-domain mean); a domain with fewer than
    ``n`` samples of the class contributes all of them.

    Returns:
        ``(class, indices)`` with one ``LongTensor`` of positions per domain, indexing
        into that domain's ``labels``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    labels_per_domain = [torch.as_tensor(lab).reshape(-1).cpu() for lab in labels_per_domain]
    classes = eligible_classes(labels_per_domain, min_count=min(2, n)) or \
        eligible_classes(labels_per_domain, min_count=1)
    if not classes:
        raise ValueError("no class is present in every domain")
    cls = classes[int(torch.randint(len(classes), (1,), generator=generator))]
    indices = []
    for labels in labels_per_domain:
        where = torch.nonzero(labels == cls).reshape(-1)
        pick = torch.randperm(len(where), generator=generator)[:n]
        indices.append(where[pick])
    return cls, indices
