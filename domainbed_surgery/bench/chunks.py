"""Should the one pass over ``[N, P]`` read cache-sized chunks or whole rows on this device?

The chunks (:data:`~..rules.kernels.CHUNK` columns) keep a chunk in the CPU's cache while
every quantity of the step is computed from it; on a GPU each chunk costs about ten kernel
launches instead. :func:`chunk_study` times an elementwise rule's combination
(:func:`~..rules.combine_in_one_pass`, with and without the logged diagnostics) on random
``[N, P]`` gradients for several chunk sizes, interleaved, so the default of
:func:`~..rules.kernels.default_chunk` is a measurement. Timing only: nothing is asserted.
"""

from __future__ import annotations

import statistics
from typing import Optional, Sequence

import torch

from .. import rules
from .step_time import timed

__all__ = ["CHUNK_COLUMNS", "chunk_study"]

CHUNK_COLUMNS = ("device", "rule", "domains", "params", "chunk", "chunks", "diagnostics",
                 "median_ms", "min_ms", "ratio_to_whole")


def chunk_study(params: Sequence[int], chunks: Sequence[Optional[int]], device: torch.device,
                rule_names: Sequence[str] = ("AgrSum", "AgrRand"), domains: int = 3,
                steps: int = 20, warmup: int = 3, seed: int = 0) -> list[dict]:
    """Median time of ``combine_in_one_pass`` for every (P, rule, chunk, diagnostics);
    a chunk of ``None`` is whole rows, the reference of ``ratio_to_whole``."""
    if steps < 1 or warmup < 0:
        raise ValueError("steps must be >= 1 and warmup >= 0")
    unknown = [c for c in chunks if c is not None and c < 1]
    if unknown:
        raise ValueError(f"chunks must be >= 1 column or None (whole rows), got {unknown}")
    rows = []
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        grads = torch.randn(domains, p, generator=gen).to(device)
        out = grads.new_empty(p)
        for name in rule_names:
            rule = rules.get(name)()
            rng = torch.Generator(device=rule.generator_device(grads)).manual_seed(seed)
            cases = [(c, d) for c in chunks for d in (False, True)]
            times: dict[tuple, list[float]] = {case: [] for case in cases}

            def once(case):
                chunk, diagnostics = case
                return timed(lambda: rules.combine_in_one_pass(
                    rule, grads, rng, out=out, diagnostics=diagnostics,
                    chunk=p if chunk is None else chunk), device)[0]

            for _ in range(warmup):
                for case in cases:
                    once(case)
            for rep in range(steps):
                k = rep % len(cases)
                for case in cases[k:] + cases[:k]:
                    times[case].append(once(case))
            medians = {case: statistics.median(t) * 1e3 for case, t in times.items()}
            for chunk, diagnostics in cases:
                whole = medians.get((None, diagnostics))
                med = medians[(chunk, diagnostics)]
                rows.append({
                    "device": device.type, "rule": name, "domains": domains, "params": p,
                    "chunk": "whole" if chunk is None else chunk,
                    "chunks": 1 if chunk is None else -(-p // chunk),
                    "diagnostics": diagnostics, "median_ms": round(med, 3),
                    "min_ms": round(min(times[(chunk, diagnostics)]) * 1e3, 3),
                    "ratio_to_whole": round(med / whole, 3) if whole else None})
    return rows
