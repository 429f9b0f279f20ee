"""The Numba kernels behind :mod:`.compiled` (imported only there, and only when Numba is).

Each kernel splits the columns into :data:`BLOCK`-column blocks, run in parallel; every
block's result lands in its own slot and the slots are reduced in block order, so no
result depends on the thread count. The domain rows come as a tuple of 1-D arrays: Numba
compiles one version per number of rows, whose row loop LLVM unrolls, so the column loop
vectorizes. No fast-math: each element sees the same IEEE operations, in the same order,
as the torch code it stands in for; only the inner products (:func:`_dot`: the squared
norms and the Gram matrix) are float64 sums reassociated so that they vectorize.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, prange, types
from numba.extending import intrinsic

# The default layer of a plain install: no extra runtime beside torch's OpenMP. It is not
# thread-safe, so .compiled serializes the calls.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

#: Columns per parallel work item (3 float32 rows of it: 192 KiB).
BLOCK = 1 << 14


@njit(inline="always")
def _column(rows, j):  # pragma: no cover - compiled
    """Column ``j``: the rows added in order, and whether every row is > 0 or every row is
    < 0 (Eq. 2: a zero, or a NaN, conflicts)."""
    x = rows[0][j]
    s = x
    positive = x > 0
    negative = x < 0
    for i in range(1, len(rows)):
        y = rows[i][j]
        s += y
        positive &= y > 0
        negative &= y < 0
    return s, positive | negative


@njit(inline="always")
def _block_range(b, p):  # pragma: no cover - compiled
    """Block ``b``'s columns ``[start, stop)`` of ``p``, unsigned (no negative-index wrap)."""
    return np.uint64(b * BLOCK), np.uint64(min(b * BLOCK + BLOCK, p))


@njit(cache=True, fastmath={"reassoc", "contract"}, boundscheck=False)
def _dot(x, y, start, stop):  # pragma: no cover - compiled
    """``sum(float64(x[j]) * float64(y[j]) for j in [start, stop))``, reassociated so that it
    vectorizes: a float64 sum in the vector width of this machine's build (only the inner
    products, the Gram matrix and the squared norms, are summed so; every other result keeps
    IEEE order)."""
    total = 0.0
    for j in range(start, stop):
        total += np.float64(x[j]) * np.float64(y[j])
    return total


@njit(inline="always")
def _block_dots(rows, start, stop, slots):  # pragma: no cover - compiled
    """The rows' inner products over columns [start, stop) into ``slots``: with one slot per
    row their squared norms, with N(N+1)/2 the Gram matrix's upper triangle, row by row
    (its diagonal: the same calls, so the same bits as the norms)."""
    n = len(rows)
    if slots.shape[0] == n:
        for i in range(n):
            slots[i] = _dot(rows[i], rows[i], start, stop)
    else:
        k = 0
        for i in range(n):
            for m in range(i, n):
                slots[k] = _dot(rows[i], rows[m], start, stop)
                k += 1


@njit(inline="always")
def _agreeing_sum_block(rows, out, want_l1, b, conflicts, l1, dots):  # pragma: no cover - compiled
    """Block ``b`` of :func:`agreeing_sum`: its columns, its conflict count into
    ``conflicts[b]``, (``want_l1``) its float64 sum of ``|out|`` into ``l1[b]`` and the
    rows' inner products (:func:`_block_dots`) into ``dots[b]``, over the block still in
    cache."""
    zero = out.dtype.type(0)
    one, eight = np.uint64(1), np.uint64(8)
    start, stop = _block_range(b, out.shape[0])
    count = 0
    for j in range(start, stop):
        s, agree = _column(rows, j)
        out[j] = s if agree else zero
        count += not agree
    conflicts[b] = count
    if want_l1:
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
        j = start
        while j + eight <= stop:
            a0 += abs(out[j])
            a1 += abs(out[j + one])
            a2 += abs(out[j + 2 * one])
            a3 += abs(out[j + 3 * one])
            a4 += abs(out[j + 4 * one])
            a5 += abs(out[j + 5 * one])
            a6 += abs(out[j + 6 * one])
            a7 += abs(out[j + 7 * one])
            j += eight
        while j < stop:
            a0 += abs(out[j])
            j += one
        l1[b] = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
    _block_dots(rows, start, stop, dots[b])


@njit(cache=True)
def block_totals(conflicts, l1, dots):  # pragma: no cover - compiled
    """The per-block slots reduced in block order: (conflicting columns, sum of |out|, the
    rows' inner products)."""
    return conflicts.sum(), l1.sum(), dot_totals(dots)


@njit(cache=True)
def dot_totals(dots):  # pragma: no cover - compiled
    """The per-block inner products (``[blocks, slots]``) summed in block order."""
    totals = np.zeros(dots.shape[1], np.float64)
    for b in range(dots.shape[0]):
        for i in range(dots.shape[1]):
            totals[i] += dots[b, i]
    return totals


@njit(parallel=True, cache=True, boundscheck=False)
def agreeing_sum(rows, out, want_l1, dot_slots):  # pragma: no cover - compiled
    """``out[j] = rows[0][j] + rows[1][j] + ...`` where every row is > 0 or every row is
    < 0, else 0; returns (conflicting columns, sum of |out| in float64, or 0.0 without
    ``want_l1``, the rows' inner products in float64: ``dot_slots`` = N, their squared
    norms; N(N+1)/2, the Gram matrix's upper triangle).

    The column index is unsigned: with a signed one Numba wraps negative indices, and that
    branch kept LLVM from vectorizing the loop (1.7 against 0.6 ms for 1 M columns on one
    core). The float64 sum of ``|out|`` cannot vectorize in order, so it runs after each
    block, over the block still in cache, in 8 interleaved chains (column j into chain
    j % 8), added in a fixed order: the same value for any thread count.
    """
    blocks = (out.shape[0] + BLOCK - 1) // BLOCK
    conflicts = np.zeros(blocks, np.int64)
    l1 = np.zeros(blocks, np.float64)
    dots = np.zeros((blocks, dot_slots), np.float64)
    for b in prange(blocks):
        _agreeing_sum_block(rows, out, want_l1, b, conflicts, l1, dots)
    return block_totals(conflicts, l1, dots)


@njit(inline="always")
def _gram_block(rows, b, dots):  # pragma: no cover - compiled
    """Block ``b`` of :func:`gram`: its N(N+1)/2 inner products into ``dots[b]``."""
    start, stop = _block_range(b, rows[0].shape[0])
    _block_dots(rows, start, stop, dots[b])


@njit(parallel=True, cache=True, boundscheck=False)
def gram(rows):  # pragma: no cover - compiled
    """The ``[blocks, N(N+1)/2]`` per-block inner products of the rows (the Gram matrix's
    upper triangle, row by row; :func:`dot_totals` sums them): one read of the columns,
    block by block, each block's N rows in cache while its N(N+1)/2 products are taken."""
    n = len(rows)
    blocks = (rows[0].shape[0] + BLOCK - 1) // BLOCK
    dots = np.zeros((blocks, n * (n + 1) // 2), np.float64)
    for b in prange(blocks):
        _gram_block(rows, b, dots)
    return dots


# -- Agr-Rand's noise: N(0, 1) draws by Marsaglia & Tsang's ziggurat -----------------------
# The float32 variant of NumPy's ``random_standard_normal_f`` (256 layers; one 32-bit word
# gives the layer, the sign and a 23-bit magnitude; 98.5% of draws end at the first table
# test), fed by SplitMix64 (Steele, Lea & Flood 2014): each BLOCK of columns has its own
# stream, seeded from the step's seed and the block's index, so no draw depends on the
# thread count. Each 64-bit output is two words.

#: Where the ziggurat's base strip meets its tail, for 256 layers.
ZIGGURAT_R = 3.6541528853610088


def ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ki, wi, fi): the 256-layer tables of ``exp(-x^2 / 2)`` for 23-bit magnitudes, by
    Marsaglia & Tsang's construction (equal to NumPy's ``ki_float``/``wi_float``/``fi_float``)."""
    r = ZIGGURAT_R
    f = lambda x: math.exp(-0.5 * x * x)  # noqa: E731
    area = r * f(r) + math.sqrt(math.pi / 2) * math.erfc(r / math.sqrt(2))  # of each layer
    scale = float(1 << 23)
    ki = np.zeros(256, np.uint32)
    wi = np.zeros(256, np.float32)
    fi = np.zeros(256, np.float32)
    x = previous = r
    q = area / f(x)
    ki[0] = int(x / q * scale)
    wi[0], wi[255] = q / scale, x / scale
    fi[0], fi[255] = 1.0, f(x)
    for i in range(254, 0, -1):
        x = math.sqrt(-2.0 * math.log(area / x + f(x)))
        ki[i + 1] = int(x / previous * scale)
        previous = x
        fi[i] = f(x)
        wi[i] = x / scale
    return ki, wi, fi


KI, WI, FI = ziggurat_tables()
_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)


@njit(inline="always")
def _mix(z):  # pragma: no cover - compiled
    """SplitMix64's output function (a bijection of 64-bit words)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(inline="always")
def _unit(word):  # pragma: no cover - compiled
    """A uniform draw in (0, 1] from a word's top 24 bits."""
    return (np.float64(word >> np.uint64(40)) + 1.0) * (1.0 / 16777216.0)


@njit(inline="always")
def _first_test(word, ki, wi):  # pragma: no cover - compiled
    """A 32-bit ``word``'s layer, sign and candidate ``x``, and whether the first table test
    accepts it."""
    layer = np.int64(word & np.uint64(0xFF))
    negative = (word >> np.uint64(8)) & np.uint64(1)
    magnitude = np.uint32(word >> np.uint64(9))
    x = np.float32(magnitude) * wi[layer]
    if negative:
        x = -x
    return layer, negative, x, magnitude < ki[layer]


@njit(cache=True)
def _ziggurat_rest(state, layer, x, negative, ki, wi, fi):  # pragma: no cover - compiled
    """The ziggurat after a first test that failed (1.5% of draws): the tail (layer 0) or
    the wedge test, else a fresh word; further words come from ``state`` (SplitMix64).
    Returns (state, draw)."""
    while True:
        if layer == 0:  # beyond R: Marsaglia's exponential method
            while True:
                state += _GAMMA
                xx = -math.log(_unit(_mix(state))) / ZIGGURAT_R
                state += _GAMMA
                yy = -math.log(_unit(_mix(state)))
                if yy + yy > xx * xx:
                    t = np.float32(ZIGGURAT_R + xx)
                    return state, -t if negative else t
        state += _GAMMA
        u = _unit(_mix(state))
        if (fi[layer - 1] - fi[layer]) * u + fi[layer] < math.exp(-0.5 * np.float64(x) * x):
            return state, x
        state += _GAMMA
        layer, negative, x, accepted = _first_test(_mix(state) & _LOW32, ki, wi)
        if accepted:
            return state, x


@njit(inline="always")
def _normal(word, state, ki, wi, fi):  # pragma: no cover - compiled
    """One N(0, 1) float32 draw from a 32-bit ``word`` (and ``state`` if it is rejected)."""
    layer, negative, x, accepted = _first_test(word, ki, wi)
    if accepted:
        return state, x
    return _ziggurat_rest(state, layer, x, negative, ki, wi, fi)


@njit(inline="always")
def _word(base, start, j):  # pragma: no cover - compiled
    """Column ``j``'s 32-bit word of its block's stream (two columns per 64-bit output)."""
    word = _mix(base + ((j - start) >> np.uint64(1)) * _GAMMA)
    return (word >> np.uint64(32)) if (j - start) & np.uint64(1) else (word & _LOW32)


@njit(inline="always")
def _noise_block(values, seed, scale, b, ki, wi, fi):  # pragma: no cover - compiled
    """Block ``b`` of :func:`noise_where_zero`, in two loops: the first test of every draw
    (98.5% end there), then, in column order, the rest of the rejected ones. The same draws
    as one loop, but the hot loop makes no call: a call in it made a serially compiled
    block 15x slower."""
    zero = values.dtype.type(0)
    base = _mix(np.uint64(seed) ^ _mix(np.uint64(b) * _GAMMA))
    start, stop = _block_range(b, values.shape[0])
    rejected = np.empty(stop - start, np.uint64)
    n_rejected = 0
    for j in range(start, stop):  # unsigned: no negative-index wrap
        layer, negative, z, accepted = _first_test(_word(base, start, j), ki, wi)
        v = values[j]
        if accepted:
            values[j] = z * scale if v == zero else v
        else:
            rejected[n_rejected] = j
            n_rejected += 1
    state = _mix(base ^ _M2)
    for k in range(n_rejected):
        j = rejected[k]
        layer, negative, z, accepted = _first_test(_word(base, start, j), ki, wi)
        state, z = _ziggurat_rest(state, layer, z, negative, ki, wi, fi)
        v = values[j]
        values[j] = z * scale if v == zero else v


@njit(parallel=True, cache=True, boundscheck=False)
def noise_where_zero(values, seed, scale, ki, wi, fi):  # pragma: no cover - compiled
    """``values[j] = scale * z_j`` where ``values[j] == 0``, ``z_j`` N(0, 1) (float32).

    Every column gets a draw, kept or not: an unpredictable branch per column would cost
    more than the draws it saves. Block ``b``'s words are ``mix(base_b + k * gamma)`` (two
    columns each) with ``base_b = mix(seed ^ mix(b * gamma))``; its rejected draws continue
    from the stream at ``mix(base_b ^ M2)``.
    """
    for b in prange((values.shape[0] + BLOCK - 1) // BLOCK):
        _noise_block(values, seed, scale, b, ki, wi, fi)


# -- The same kernels as tasks for torch's own OpenMP threads ----------------------------
# After a parallel torch operation (the step's backward), torch's idle OpenMP thread keeps
# spinning for a while; a kernel on Numba's own threads then shares a core with it and runs
# no faster than on one thread (measured in efficientnet_lite0-128's step, 1.0 M columns:
# Agr-Rand's noise 1.8 ms on one or two Numba threads, 0.9 ms as a task on torch's two;
# 1.0 ms on two Numba threads outside a step). The tasks below are C callbacks that
# .compiled hands to torch's libgomp (``GOMP_parallel``), so the thread that spins picks
# them up. The threads take blocks from a shared atomic counter; each block's result lands
# in its own slot, as in the kernels above, so the results are the same bits as theirs.
# Arguments come as one int64 array (``task``): slot 0 is the counter, then the fields
# named by the *_FIELDS tuples.

#: Rows (domains) the row-reading task is compiled for; more rows use the kernels above.
TASK_MAX_ROWS = 8
#: The row-reading task's fields, after the counter: :func:`agreeing_sum` (``gram_only`` 0)
#: or :func:`gram` (``gram_only`` 1: only ``dots`` is written; ``out``, ``conflicts`` and
#: ``l1`` may be 0). ``dot_slots`` is the number of inner products per block (N or N(N+1)/2).
READ_FIELDS = ("rows", "columns", "row_stride", "want_l1", "grads", "out", "conflicts", "l1",
               "dots", "dot_slots", "gram_only", "counter_address")
#: The noise task's fields, after the counter (``scale`` as the bits of a float64).
NOISE_FIELDS = ("columns", "seed", "scale", "values", "counter_address")


def _pointer_to(numba_type):
    """An intrinsic: an int64 address as a ``numba_type*`` (for ``numba.carray``)."""
    @intrinsic
    def pointer(typingctx, address):
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
        return types.CPointer(numba_type)(types.int64), codegen
    return pointer


_f32_at = _pointer_to(types.float32)
_f64_at = _pointer_to(types.float64)
_i64_at = _pointer_to(types.int64)


@intrinsic
def _take_block(typingctx, counter):
    """Atomically ``counter[0] += 1``; returns the value before (the block to do)."""
    def codegen(context, builder, signature, args):
        return builder.atomic_rmw("add", args[0], ir.Constant(ir.IntType(64), 1), "monotonic")
    return types.int64(types.CPointer(types.int64)), codegen


@njit(inline="always")
def _read_block(rows, args):  # pragma: no cover - compiled
    """Block ``b`` of :func:`gram` (``gram_only``) or of :func:`agreeing_sum`; ``args``:
    (gram_only, out, want_l1, b, conflicts, l1, dots)."""
    gram_only, out, want_l1, b, conflicts, l1, dots = args
    if gram_only:
        _gram_block(rows, b, dots)
    else:
        _agreeing_sum_block(rows, out, want_l1, b, conflicts, l1, dots)


@njit(cache=True, boundscheck=False)
def _read_rows(g, n, p, s, gram_only, out, want_l1, b, conflicts, l1, dots):  # pragma: no cover
    """Block ``b`` over the ``n`` rows of ``g`` (flat, row stride ``s``), as a tuple of ``n``
    rows so that the row loop unrolls."""
    args = (gram_only, out, want_l1, b, conflicts, l1, dots)
    if n == 1:
        _read_block((g[:p],), args)
    elif n == 2:
        _read_block((g[:p], g[s:s + p]), args)
    elif n == 3:
        _read_block((g[:p], g[s:s + p], g[2 * s:2 * s + p]), args)
    elif n == 4:
        _read_block((g[:p], g[s:s + p], g[2 * s:2 * s + p], g[3 * s:3 * s + p]), args)
    elif n == 5:
        _read_block((g[:p], g[s:s + p], g[2 * s:2 * s + p], g[3 * s:3 * s + p],
                     g[4 * s:4 * s + p]), args)
    elif n == 6:
        _read_block((g[:p], g[s:s + p], g[2 * s:2 * s + p], g[3 * s:3 * s + p],
                     g[4 * s:4 * s + p], g[5 * s:5 * s + p]), args)
    elif n == 7:
        _read_block((g[:p], g[s:s + p], g[2 * s:2 * s + p], g[3 * s:3 * s + p],
                     g[4 * s:4 * s + p], g[5 * s:5 * s + p], g[6 * s:6 * s + p]), args)
    elif n == 8:
        _read_block((g[:p], g[s:s + p], g[2 * s:2 * s + p], g[3 * s:3 * s + p],
                     g[4 * s:4 * s + p], g[5 * s:5 * s + p], g[6 * s:6 * s + p],
                     g[7 * s:7 * s + p]), args)


@njit(inline="always")
def _read_task(task, g, out):  # pragma: no cover - compiled
    n, p, s, want_l1 = task[1], task[2], task[3], task[4] != 0
    blocks = (p + BLOCK - 1) // BLOCK
    conflicts = carray(_i64_at(task[7]), (blocks,))
    l1 = carray(_f64_at(task[8]), (blocks,))
    dots = carray(_f64_at(task[9]), (blocks, task[10]))
    gram_only = task[11] != 0
    counter = _i64_at(task[12])
    while True:
        b = _take_block(counter)
        if b >= blocks:
            break
        _read_rows(g, n, p, s, gram_only, out, want_l1, b, conflicts, l1, dots)


@cfunc(types.void(types.voidptr), cache=True)
def read_task_f32(data):  # pragma: no cover - compiled
    """:func:`agreeing_sum` or :func:`gram` on float32 rows, as an OpenMP task (fields:
    READ_FIELDS)."""
    task = carray(data, (1 + len(READ_FIELDS),), np.int64)
    _read_task(task, carray(_f32_at(task[5]), ((task[1] - 1) * task[3] + task[2],)),
               carray(_f32_at(task[6]), (task[2],)))


@cfunc(types.void(types.voidptr), cache=True)
def read_task_f64(data):  # pragma: no cover - compiled
    """:func:`agreeing_sum` or :func:`gram` on float64 rows, as an OpenMP task (fields:
    READ_FIELDS)."""
    task = carray(data, (1 + len(READ_FIELDS),), np.int64)
    _read_task(task, carray(_f64_at(task[5]), ((task[1] - 1) * task[3] + task[2],)),
               carray(_f64_at(task[6]), (task[2],)))


@njit(cache=True, boundscheck=False)
def _noise_blocks(values, seed, scale, counter):  # pragma: no cover - compiled
    blocks = (values.shape[0] + BLOCK - 1) // BLOCK
    while True:
        b = _take_block(counter)
        if b >= blocks:
            break
        _noise_block(values, seed, scale, b, KI, WI, FI)


@cfunc(types.void(types.voidptr), cache=True)
def noise_task_f32(data):  # pragma: no cover - compiled
    """:func:`noise_where_zero` on float32 values, as an OpenMP task (fields: NOISE_FIELDS)."""
    task = carray(data, (1 + len(NOISE_FIELDS),), np.int64)
    _noise_blocks(carray(_f32_at(task[4]), (task[1],)), np.uint64(task[2]),
                  np.float32(task[3:4].view(np.float64)[0]), _i64_at(task[5]))
