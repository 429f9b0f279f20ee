"""The math every rule and the step share: input checks, the Eq. 2 agreement mask, the
chunked Gram matrix, the finiteness check and the pairwise cosine.

Pure tensor functions on the stacked domain gradients ``grads`` of shape ``[N domains,
P parameters]``; nothing here knows about rules, models or DomainBed.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import compiled

__all__ = ["CHUNK", "DEVICE_CHUNK", "default_chunk", "check_grads", "column_chunks",
           "agreement_mask", "row_sum", "agreeing_sum_into", "gram_matrix",
           "check_finite_rows", "pairwise_cosine"]


def check_grads(grads: Tensor) -> None:
    """Raise unless ``grads`` is a floating-point ``[N >= 1, P]`` tensor."""
    if not isinstance(grads, Tensor):
        raise TypeError(f"grads must be a torch.Tensor, got {type(grads).__name__}")
    if grads.dim() != 2:
        raise ValueError(
            f"grads must have shape [N domains, P parameters], got {tuple(grads.shape)}")
    if grads.shape[0] == 0:
        raise ValueError("grads must hold at least one domain gradient (N >= 1)")
    if not grads.is_floating_point():
        raise TypeError(f"grads must be floating point, got {grads.dtype}")


#: Columns per chunk of the one-pass functions: 3 domain rows of 2^19 float32 (6 MB) stay
#: in cache while every quantity of the step is computed from them.
CHUNK = 1 << 19
#: Columns per chunk on other devices (CUDA): None, whole rows. A GPU has no cache that a
#: chunk could stay in, and each chunk costs ~10 kernel launches.
DEVICE_CHUNK: Optional[int] = None


def default_chunk(like: Tensor) -> int:
    """Columns per chunk for gradients like ``like`` ([N, P]): :data:`CHUNK` on the CPU,
    :data:`DEVICE_CHUNK` (whole rows when None) on any other device."""
    if like.device.type == "cpu":
        return CHUNK
    return DEVICE_CHUNK or max(1, like.shape[-1])


def column_chunks(n_columns: int, chunk: int = CHUNK) -> list[slice]:
    """Consecutive column slices of at most ``chunk`` columns covering ``n_columns``."""
    return [slice(a, min(a + chunk, n_columns)) for a in range(0, n_columns, chunk)]


def conflicts_into(grads: Tensor, out: Tensor, low: Tensor, high: Tensor,
                    scratch: Tensor) -> Tensor:
    """Not Eq. 2, into ``out``: some row is <= 0 (their minimum is) and some is >= 0 (their
    maximum is); i.e. the components are not all > 0 nor all < 0 (the authors' rule: a
    zero conflicts). ``low``/``high``/``scratch`` are buffers of ``out``'s length."""
    if len(grads) == 1:
        low.copy_(grads[0])
        high.copy_(grads[0])
    else:
        torch.minimum(grads[0], grads[1], out=low)
        torch.maximum(grads[0], grads[1], out=high)
    for row in grads[2:]:
        torch.minimum(low, row, out=low)
        torch.maximum(high, row, out=high)
    torch.le(low, 0, out=out)
    return out.logical_and_(torch.ge(high, 0, out=scratch))


def scratch_buffers(width: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scratch space of the chunked functions: conflict mask, low, high, scratch mask."""
    return (torch.empty(width, dtype=torch.bool, device=like.device), like.new_empty(width),
            like.new_empty(width), torch.empty(width, dtype=torch.bool, device=like.device))


def agreement_mask(grads: Tensor) -> Tensor:
    """Eq. 2: ``bool[P]``, true where all N components are nonzero with one common sign.

    This is the authors' released rule (``|sum_i sgn(g_k^(i))| == N``): a component that
    is zero in some domain conflicts, including one that is zero in *every* domain (Eq. 2
    read literally would let ``sgn(0) = ... = sgn(0)`` agree). It matters for Agr-Rand,
    whose noise goes to every conflicting component and whose sigma averages over the
    agreeing ones, and for the logged agreement fraction; Agr-Sum's sum is 0 there anyway.
    """
    check_grads(grads)
    return conflicts_into(grads, *scratch_buffers(grads.shape[1], grads[0])).logical_not_()


def row_sum(grads: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """The ``[N >= 2, K]`` rows added one after the other, into ``out``: the order of every
    path (the plain rules, the one pass, the compiled kernel), so that they agree bitwise
    (``torch.sum`` over 4 or more rows may add in another order)."""
    out = torch.add(grads[0], grads[1], out=out)
    for row in grads[2:]:
        out.add_(row)
    return out


def agreeing_sum_into(grads: Tensor, conflicts: Tensor, out: Tensor) -> Tensor:
    """Agr-Sum of some columns into ``out``: :func:`row_sum`, 0 where ``conflicts``."""
    return row_sum(grads, out).masked_fill_(conflicts, 0.0)


def upper_dots(rows: Sequence[Tensor]) -> list[Tensor]:
    """``<rows[i], rows[j]>`` for ``i <= j`` (the upper triangle, row by row)."""
    return [torch.dot(rows[i], rows[j]) for i in range(len(rows)) for j in range(i, len(rows))]


def gram_from_dots(dots: list[Tensor], n: int, device) -> Tensor:
    """The ``[N, N]`` float64 Gram matrix from per-chunk upper-triangle dots, summed."""
    upper = torch.stack(dots).view(-1, n * (n + 1) // 2).double().sum(dim=0)
    gram = torch.zeros(n, n, dtype=torch.float64, device=device)
    i, j = torch.triu_indices(n, n, device=device)
    gram[i, j] = upper
    gram[j, i] = upper
    return gram


def gram_matrix(grads: Tensor, chunk: int = CHUNK) -> Tensor:
    """``[N, N]`` float64 inner products ``<g^(i), g^(j)>``: the step's Gram matrix.

    On the CPU, the compiled kernel (:func:`~.compiled.gram`: float64 products, one read);
    elsewhere, or without it, each chunk's dot products are taken in the gradients' dtype
    and summed in float64, recomputed in float64 throughout if float32 overflows.
    :func:`~.fused.one_pass` takes the same path, so both give the same matrix.
    """
    check_grads(grads)
    compiled_gram = compiled.gram(grads)
    if compiled_gram is not None:
        return compiled_gram
    return torch_gram_matrix(grads, chunk)


def torch_gram_matrix(grads: Tensor, chunk: int = CHUNK) -> Tensor:
    """:func:`gram_matrix` the torch way (chunked dots, summed in float64), whatever the device."""
    n = grads.shape[0]
    dots = [d for cols in column_chunks(grads.shape[1], chunk) for d in upper_dots(grads[:, cols])]
    return widened_if_overflowed(gram_from_dots(dots, n, grads.device), grads, chunk)


def widened_if_overflowed(gram: Tensor, grads: Tensor, chunk: int) -> Tensor:
    """``gram``, or its float64 recomputation when it overflowed while ``grads`` are finite."""
    if grads.dtype == torch.float64 or bool(torch.isfinite(gram).all()) \
            or not bool(torch.isfinite(grads).all()):
        return gram
    return torch_gram_matrix(grads.double(), chunk)


def norms_from_dots(dots: list[Tensor], grads: Tensor, chunk: int = CHUNK) -> Tensor:
    """``[N]`` float64 squared norms from per-chunk ``<g^(i), g^(i)>`` (row by row), summed;
    recomputed in float64 if float32 overflowed while ``grads`` are finite."""
    n = grads.shape[0]
    sq_norms = torch.stack(dots).view(-1, n).double().sum(dim=0)
    if grads.dtype == torch.float64 or bool(torch.isfinite(sq_norms).all()) \
            or not bool(torch.isfinite(grads).all()):
        return sq_norms
    return torch_gram_matrix(grads.double(), chunk).diagonal().clone()


def check_finite_rows(sq_norms: Tensor, grads: Tensor) -> None:
    """Raise ``FloatingPointError`` naming the rows of ``grads`` that are not finite.

    A row is finite iff its squared norm (``sq_norms``, the Gram diagonal; a float32
    overflow already recomputed in float64) is, so the rows are read only then.
    """
    if bool(torch.isfinite(sq_norms).all()):
        return
    finite = torch.isfinite(grads).all(dim=1).tolist()
    bad = [i for i, ok in enumerate(finite) if not ok]
    raise FloatingPointError(
        f"non-finite gradient in training domain(s) {bad} (position among this step's "
        f"{len(finite)} training minibatches); no update was applied")


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
        return torch.tensor(math.nan, dtype=gram.dtype, device=gram.device)
    return cos.mean()
