"""The Numba kernels behind :mod:`.compiled` (imported only there, and only when Numba is).

Each kernel splits the columns into :data:`BLOCK`-column blocks, run in parallel; every
block's result lands in its own slot and the slots are reduced in block order, so no
result depends on the thread count. The domain rows come as a tuple of 1-D arrays: Numba
compiles one version per number of rows, whose row loop LLVM unrolls, so the column loop
vectorizes. No fast-math: each element sees the same IEEE operations, in the same order,
as the torch code it stands in for.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

# The default layer of a plain install: no extra runtime beside torch's OpenMP. It is not
# thread-safe, so .compiled serializes the calls.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

#: Columns per parallel work item (3 float32 rows of it: 192 KiB).
BLOCK = 1 << 14


@njit(parallel=True, cache=True, boundscheck=False)
def agreeing_sum(rows, out):  # pragma: no cover - compiled
    """``out[j] = rows[0][j] + rows[1][j] + ...`` where every row is > 0 or every row is
    < 0 (Eq. 2, a zero conflicts), else 0; returns (conflicting columns, sum of |out|)."""
    p = out.shape[0]
    n = len(rows)
    blocks = (p + BLOCK - 1) // BLOCK
    conflicts = np.zeros(blocks, np.int64)
    l1 = np.zeros(blocks, np.float64)
    zero = out.dtype.type(0)
    for b in prange(blocks):
        start = b * BLOCK
        stop = min(start + BLOCK, p)
        count = 0
        total = 0.0
        for j in range(start, stop):
            x = rows[0][j]
            s = x
            low = x
            high = x
            for i in range(1, n):
                y = rows[i][j]
                s += y
                low = min(low, y)
                high = max(high, y)
            agree = (low > 0) | (high < 0)
            v = s if agree else zero
            out[j] = v
            count += not agree
            total += abs(v)
        conflicts[b] = count
        l1[b] = total
    return conflicts.sum(), l1.sum()


@njit(cache=True, boundscheck=False, nogil=True)
def noise_where_zero(values, draws, scale):  # pragma: no cover - compiled
    """``values[j] = draws[j] * scale`` where ``values[j] == 0``. Serial and without the
    GIL: Agr-Rand's drawing threads each call it on their own cache-sized chunks."""
    for j in range(values.shape[0]):
        v = values[j]
        values[j] = draws[j] * scale if v == 0 else v
