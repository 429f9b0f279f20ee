"""One read of ``[N, P]`` per step: the Gram matrix, the agreement count (overall and per
parameter tensor) and an elementwise rule's result, computed chunk by chunk while the
chunk is in cache (:func:`one_pass`); :func:`combine_in_one_pass` completes any rule's
update from it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import compiled
from .interface import ElementwiseRule, GramianRule, Rule
from .kernels import (check_finite_rows, check_grads, column_chunks, conflicts_into, default_chunk,
                      gram_from_dots, gram_matrix, norms_from_dots, scratch_buffers, upper_dots,
                      widened_if_overflowed)

__all__ = ["OnePass", "one_pass", "combine_in_one_pass"]


@dataclass
class OnePass:
    """What :func:`one_pass` computes: the domain gradients' squared norms, and with the
    diagnostics the Gram matrix and the number of agreeing components (overall and per
    segment)."""

    sq_norms: Tensor  # [N] float64: the Gram matrix's diagonal, always
    gram: Optional[Tensor] = None  # [N, N] float64
    n_agree: Optional[Tensor] = None  # int64 scalar: components where Eq. 2 holds
    partial: Optional[Tensor] = None  # the elementwise rule's accumulated statistic
    segment_agree: Optional[Tensor] = None  # int64 [S]: agreeing components per segment


def one_pass(grads: Tensor, rule: Optional[ElementwiseRule] = None, out: Optional[Tensor] = None,
             chunk: Optional[int] = None, segments: Optional[Sequence[int]] = None,
             diagnostics: bool = True, gram: Optional[bool] = None) -> OnePass:
    """In one pass over ``[N, P]``: the squared norms of the domain gradients, an
    elementwise ``rule``'s result (into ``out``) and, with ``diagnostics``, the Gram
    matrix and the agreement count.

    The gradients are read chunk by chunk (``chunk`` columns; by default
    :func:`~.kernels.default_chunk`: cache-sized on the CPU, whole rows on a GPU), and every
    quantity is computed from a chunk while it is in cache: the memory-bound work of a step
    reads the ``[N, P]`` matrix once instead of once per quantity. A rule that is not elementwise
    runs afterwards (e.g. ``weights @ grads``). ``segments`` (sizes of consecutive column
    ranges, e.g. parameter tensors) also counts the agreeing components of each range.
    Without ``diagnostics`` neither the count nor, unless ``gram`` asks for it, the
    N(N-1)/2 inner products besides the N squared norms (the finiteness check) are taken.
    On the CPU the compiled kernels (:mod:`.compiled`) do all of it in their own read of
    the columns (float64 products; for float32 gradients the Gram matrix too, the bits of
    :func:`~.kernels.gram_matrix`), and the torch chunks run only for ``segments``.
    """
    check_grads(grads)
    n, p = grads.shape
    chunk = default_chunk(grads) if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 column, got {chunk}")
    gram = diagnostics if gram is None else gram
    if rule is not None and out is None:
        out = grads.new_empty(p)
    bounds = _bounds(segments, p) if diagnostics else None
    compiled_gram = gram and compiled.gram_applies(grads)
    read = (None if bounds is not None
            else _compiled_read(grads, rule, out, compiled_gram, diagnostics))
    if read is not None:  # the rule (or the count alone) and the norms or Gram, one read
        partial, counted = read
        matrix = counted.gram if compiled_gram else gram_matrix(grads, chunk) if gram else None
        return OnePass(counted.sq_norms if matrix is None else matrix.diagonal().clone(), matrix,
                       n_agree=p - torch.tensor(counted.conflicts) if diagnostics else None,
                       partial=partial)
    # Torch's chunks: the rule and the counts; the Gram matrix compiled where it can be.
    matrix = gram_matrix(grads) if compiled_gram else None
    dots, n_conflicts, partials, segment_conflicts = [], [], [], []
    masks = rule is not None or diagnostics
    if masks:
        conflicts, low, high, scratch = scratch_buffers(min(chunk, p), grads[0])
    for cols in column_chunks(p, chunk) if masks or matrix is None else ():
        part = grads[:, cols]
        k = part.shape[1]
        if matrix is None:
            dots += upper_dots(part) if gram else [torch.dot(row, row) for row in part]
        if not masks:
            continue
        c = conflicts_into(part, conflicts[:k], low[:k], high[:k], scratch[:k])
        if diagnostics:
            n_conflicts.append(c.count_nonzero())
        if bounds is not None:
            segment_conflicts += _segment_counts(c, cols.start, bounds)
        if rule is not None:
            partial = rule.combine_chunk(part, c, out[cols])
            if partial is not None:
                partials.append(partial)
    if matrix is None and gram:
        matrix = widened_if_overflowed(gram_from_dots(dots, n, grads.device), grads, chunk)
    sq_norms = (matrix.diagonal().clone() if matrix is not None
                else norms_from_dots(dots, grads, chunk))
    return OnePass(sq_norms, matrix,
                   n_agree=p - torch.stack(n_conflicts).sum() if diagnostics else None,
                   partial=torch.stack(partials).sum(dim=0) if partials else None,
                   segment_agree=_segment_totals(segment_conflicts, bounds, grads.device)
                   if bounds is not None else None)


def _compiled_read(grads: Tensor, rule: Optional[ElementwiseRule], out: Optional[Tensor],
                   gram: bool, diagnostics: bool):
    """(the rule's statistic, :class:`~.compiled.AgreeingSum`) from one compiled read of
    ``grads``: the rule's kernel; for no rule on a diagnostic step, the agreeing-sum kernel
    for its count, its sum going to a scratch row; None where no kernel applies."""
    if rule is not None:
        return rule.combine_fused(grads, out, gram) if rule.fuses(grads, out) else None
    if diagnostics and compiled.applies(grads, grads[0]):
        return None, compiled.agreeing_sum(grads, grads.new_empty(grads.shape[1]), l1=False,
                                           gram=gram)
    return None


def _bounds(segments: Optional[Sequence[int]], p: int) -> Optional[list[int]]:
    """Cumulative boundaries ``[0, s0, s0 + s1, ..., p]`` of ``segments`` (checked to cover P)."""
    if segments is None:
        return None
    bounds = [0]
    for size in segments:
        bounds.append(bounds[-1] + int(size))
    if bounds[-1] != p:
        raise ValueError(f"segments cover {bounds[-1]} columns, grads have {p}")
    return bounds


def _segment_totals(counts: list[tuple[int, Tensor]], bounds: list[int], device) -> Tensor:
    """Agreeing components per segment, from the per-chunk conflict counts."""
    sizes = torch.tensor([b - a for a, b in zip(bounds[:-1], bounds[1:])], device=device)
    conflicting = torch.zeros(len(sizes), dtype=torch.int64, device=device)
    for index, count in counts:
        conflicting[index] += count
    return sizes - conflicting


def _segment_counts(conflicts: Tensor, start: int, bounds: list[int]) -> list[tuple[int, Tensor]]:
    """(segment index, conflicting components) for each segment meeting this chunk."""
    stop = start + conflicts.shape[0]
    first = bisect.bisect_right(bounds, start) - 1
    counts = []
    for index in range(first, len(bounds) - 1):
        a, b = max(bounds[index], start), min(bounds[index + 1], stop)
        if a >= stop:
            break
        if b > a:
            counts.append((index, conflicts[a - start:b - start].count_nonzero()))
    return counts


def combine_in_one_pass(rule: Rule, grads: Tensor, generator: Optional[torch.Generator] = None,
                        out: Optional[Tensor] = None, segments: Optional[Sequence[int]] = None,
                        diagnostics: bool = True,
                        chunk: Optional[int] = None) -> tuple[Tensor, OnePass]:
    """``rule``'s update of ``grads`` the fast way, and the :class:`OnePass` it came with.

    An elementwise rule is applied inside :func:`one_pass`, then
    :meth:`~.interface.ElementwiseRule.finish` completes it (Agr-Rand's noise); any other
    rule runs after the pass (a Gramian rule with the Gram matrix, computed for it
    whatever ``diagnostics`` says: one ``weights @ grads`` product). Same result as calling
    the rule (bitwise for Agr-Sum and the Gramian rules; Agr-Rand's noise comes from the
    compiled ziggurat on the CPU, so its draws differ but not their distribution). Raises
    ``FloatingPointError`` on a non-finite row before the rule runs.
    """
    fused = isinstance(rule, ElementwiseRule) and grads.shape[0] > 1  # N = 1: the gradient
    if fused:
        out = grads.new_empty(grads.shape[1]) if out is None else out
    passed = one_pass(grads, rule if fused else None, out=out, segments=segments,
                      diagnostics=diagnostics, gram=diagnostics or isinstance(rule, GramianRule),
                      chunk=chunk)
    check_finite_rows(passed.sq_norms, grads)
    if fused:
        return rule.finish(out, passed.partial, generator), passed
    return rule(grads, generator, gram=passed.gram, out=out), passed
