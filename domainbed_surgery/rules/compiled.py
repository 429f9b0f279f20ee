"""One-read CPU kernels for the step, compiled with Numba when it is installed.

On the CPU, torch computes Agr-Sum's chunk in about ten passes (min, max, compare, add,
mask), each reading memory again; the compiled kernel reads each column once and gives
the same bits (the same additions in the same order). Agr-Rand's noise is drawn by a
compiled ziggurat straight into the zeros of its agreeing sum, in one pass. The Gram
matrix (PCGrad's every step, every rule's diagnostic step) is taken in one read too, in
float64 products, where torch's chunked dots read the rows N(N+1)/2 times. Without Numba,
off the CPU, for other dtypes or with ``DOMAINBED_SURGERY_COMPILED=0``, the torch code runs
instead: the same results (the Gram matrix to rounding), slower.

Where torch runs on GNU OpenMP (its Linux wheels), the kernels run on torch's own OpenMP
threads (``GOMP_parallel`` of the libgomp torch loaded): right after the step's backward,
torch's idle thread still spins, and a kernel on Numba's threads would share a core with
it. Elsewhere, or with ``DOMAINBED_SURGERY_OPENMP=0``, Numba's threads run them. Both
give the same bits.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
import warnings
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["enabled", "describe", "applies", "AgreeingSum", "agreeing_sum", "gram_applies",
           "gram", "noise_applies", "noise_where_zero", "standard_normal"]

#: The dtypes the kernels are compiled for.
DTYPES = (torch.float32, torch.float64)
_LOCK = threading.Lock()  # the kernels' threading layer takes one caller at a time
_kernels = None
_gomp = None  # torch's libgomp, once checked; False where the kernels use Numba's threads


def enabled() -> bool:
    """Whether the compiled kernels run: Numba is installed and not switched off."""
    return (os.environ.get("DOMAINBED_SURGERY_COMPILED", "1") != "0"
            and importlib.util.find_spec("numba") is not None)


def describe() -> str:
    """What a step on the CPU uses, for logs and benchmark records."""
    if not enabled():
        return "torch (Numba not installed or DOMAINBED_SURGERY_COMPILED=0)"
    import numba  # noqa: PLC0415

    where = "torch's OpenMP threads" if _torch_openmp() else "Numba's threads"
    return f"numba {numba.__version__} on {where}"


def _loaded():
    global _kernels
    if _kernels is None:
        from . import _numba  # noqa: PLC0415 - compiles (or loads from Numba's cache) once

        _kernels = _numba
    return _kernels


def _usable(*tensors: Tensor) -> bool:
    return enabled() and all(
        t.device.type == "cpu" and t.dtype in DTYPES and t.dtype == tensors[0].dtype
        and (t.dim() < 1 or t.stride(-1) == 1) and not t.requires_grad for t in tensors)


def _run(kernel: Callable, *args):
    import numba  # noqa: PLC0415

    with _LOCK:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        return kernel(*args)


def _torch_openmp():
    """torch's libgomp (a ctypes library), when the kernels run on its threads; else None.

    Only the libgomp already loaded (``RTLD_NOLOAD``) and only when torch's parallel backend
    is OpenMP: loading another copy would add a second pool of threads. Checked once, with
    a known answer: the tasks must give the kernels' bits, or Numba's threads are used
    (with a warning)."""
    global _gomp
    if os.environ.get("DOMAINBED_SURGERY_OPENMP", "1") == "0" or not enabled():
        return None
    if _gomp is None:
        _gomp = False
        if "ATen parallel backend: OpenMP" in torch.__config__.parallel_info():
            try:
                lib = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
                lib.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint,
                                              ctypes.c_uint]
                lib.GOMP_parallel.restype = None
            except (OSError, AttributeError):
                lib = None
            if lib is not None:
                _gomp = lib if _tasks_agree(lib) else False
    return _gomp or None


def _task(lib, task_kernel, fields: dict, names: tuple) -> None:
    """Run an OpenMP task of :mod:`._numba` on the threads of ``lib`` (torch's libgomp):
    slot 0 the block counter, then ``fields`` in the order of ``names``."""
    task = np.zeros(1 + len(names), np.int64)
    for i, name in enumerate(names, 1):
        task[i] = fields[name] if name != "counter_address" else task.ctypes.data
    with _LOCK:
        lib.GOMP_parallel(task_kernel.address, task.ctypes.data,
                          max(1, torch.get_num_threads()), 0)


def _dot_slots(n: int, gram: bool) -> int:
    """Inner products per block: the N squared norms, or the Gram matrix's upper triangle."""
    return n * (n + 1) // 2 if gram else n


def _read_on(lib, grads: Tensor, dots: np.ndarray, gram_only: bool, out: Optional[Tensor] = None,
             conflicts: Optional[np.ndarray] = None, l1: Optional[np.ndarray] = None) -> None:
    kernels = _loaded()
    task = kernels.read_task_f32 if grads.dtype == torch.float32 else kernels.read_task_f64
    address = lambda a: 0 if a is None else a.ctypes.data  # noqa: E731
    _task(lib, task, {"rows": grads.shape[0], "columns": grads.shape[1],
                      "row_stride": grads.stride(0), "want_l1": int(l1 is not None),
                      "grads": grads.data_ptr(), "out": 0 if out is None else out.data_ptr(),
                      "conflicts": address(conflicts), "l1": address(l1),
                      "dots": dots.ctypes.data, "dot_slots": dots.shape[1],
                      "gram_only": int(gram_only)}, kernels.READ_FIELDS)


def _agreeing_sum_on(lib, grads: Tensor, out: Tensor, l1: bool, gram: bool = False) -> tuple:
    kernels = _loaded()
    blocks = (out.numel() + kernels.BLOCK - 1) // kernels.BLOCK
    conflicts, l1_slots = np.zeros(blocks, np.int64), np.zeros(blocks, np.float64)
    dots = np.zeros((blocks, _dot_slots(grads.shape[0], gram)), np.float64)
    _read_on(lib, grads, dots, False, out, conflicts, l1_slots if l1 else None)
    return kernels.block_totals(conflicts, l1_slots, dots)


def _agreeing_sum_kernel(grads: Tensor, out: Tensor, l1: bool, gram: bool = False) -> tuple:
    """The same on Numba's threads (its parallel kernel)."""
    return _run(_loaded().agreeing_sum, tuple(row.numpy() for row in grads), out.numpy(), l1,
                _dot_slots(grads.shape[0], gram))


def _gram_on(lib, grads: Tensor) -> np.ndarray:
    kernels = _loaded()
    blocks = (grads.shape[1] + kernels.BLOCK - 1) // kernels.BLOCK
    dots = np.zeros((blocks, _dot_slots(grads.shape[0], True)), np.float64)
    _read_on(lib, grads, dots, True)
    return kernels.dot_totals(dots)


def _gram_kernel(grads: Tensor) -> np.ndarray:
    """The same on Numba's threads (its parallel kernel)."""
    kernels = _loaded()
    return kernels.dot_totals(_run(kernels.gram, tuple(row.numpy() for row in grads)))


def _symmetric(upper: np.ndarray, n: int) -> Tensor:
    """The ``[n, n]`` float64 matrix whose upper triangle, row by row, is ``upper``."""
    matrix = np.empty((n, n), np.float64)
    i, j = np.triu_indices(n)
    matrix[i, j] = upper
    matrix[j, i] = upper
    return torch.from_numpy(matrix)


def _noise_on(lib, values: Tensor, seed: int, scale: float) -> None:
    kernels = _loaded()
    _task(lib, kernels.noise_task_f32, {
        "columns": values.numel(), "seed": int(np.uint64(seed).astype(np.int64)),
        "scale": int(np.float64(scale).view(np.int64)), "values": values.data_ptr()},
        kernels.NOISE_FIELDS)


def _noise_kernel(values: Tensor, seed: int, scale: float) -> None:
    """The same on Numba's threads (its parallel kernel)."""
    kernels = _loaded()
    _run(kernels.noise_where_zero, values.numpy(), np.uint64(seed), np.float32(scale),
         kernels.KI, kernels.WI, kernels.FI)


def _tasks_agree(lib) -> bool:
    """Whether the OpenMP tasks give the bits of Numba's kernels on a known input (three
    blocks and a bit, zeros included)."""
    try:
        kernels = _loaded()
        gen = torch.Generator().manual_seed(0)
        grads = torch.randn(3, 3 * kernels.BLOCK + 5, generator=gen)
        grads[:, ::7] = 0
        by_task, by_kernel = torch.empty(grads.shape[1]), torch.empty(grads.shape[1])
        task_totals = _agreeing_sum_on(lib, grads, by_task, True, gram=True)
        kernel_totals = _agreeing_sum_kernel(grads, by_kernel, True, gram=True)
        _noise_on(lib, by_task, 12345, 0.5)
        _noise_kernel(by_kernel, 12345, 0.5)
        agree = (torch.equal(by_task, by_kernel) and task_totals[:2] == kernel_totals[:2]
                 and np.array_equal(task_totals[2], kernel_totals[2])
                 and np.array_equal(_gram_on(lib, grads), _gram_kernel(grads)))
    except Exception as exc:  # noqa: BLE001 - any failure: Numba's threads, said once
        agree, why = False, f"{type(exc).__name__}: {exc}"
    else:
        why = "they gave other bits than Numba's kernels on a known input"
    if not agree:
        warnings.warn(f"domainbed_surgery: the CPU kernels run on Numba's threads, not on "
                      f"torch's OpenMP threads ({why})", RuntimeWarning, stacklevel=3)
    return agree


def applies(grads: Tensor, out: Tensor) -> bool:
    """Whether :func:`agreeing_sum` runs compiled for ``grads`` ([N >= 2, K]) into ``out``
    ([K]): enabled, CPU, one dtype of :data:`DTYPES`, contiguous rows, no autograd."""
    return grads.dim() == 2 and grads.shape[0] >= 2 and out.shape == grads.shape[1:] \
        and _usable(grads, out)


class AgreeingSum(NamedTuple):
    """What :func:`agreeing_sum` returns besides the update it writes."""

    conflicts: int  # columns where Eq. 2 fails
    l1: Optional[float]  # sum of |out| in float64 (Agr-Rand's sigma); None when not asked
    sq_norms: Tensor  # [N] float64: each row's squared norm (the finiteness check)
    gram: Optional[Tensor] = None  # [N, N] float64 (its diagonal: sq_norms); when asked


def agreeing_sum(grads: Tensor, out: Tensor, l1: bool = True,
                 gram: bool = False) -> Optional[AgreeingSum]:
    """Agr-Sum of ``grads`` ([N, K]) into ``out``: the sum where all rows are > 0 or all
    < 0, else 0, in one read of ``grads`` that also takes its rows' squared norms (with
    ``gram``, the whole Gram matrix: for float32, the bits of :func:`gram`); returns an
    :class:`AgreeingSum` (``l1`` is needed by Agr-Rand's sigma, not by Agr-Sum), or None
    (nothing written) where it does not :func:`applies`.

    The update, count and ``l1`` are the torch code's bits. The inner products are float64
    sums reassociated to vectorize (block by block, so the same for any thread count, but
    not the bits of torch's float32 dots)."""
    if not applies(grads, out):
        return None
    n = grads.shape[0]
    if _task_runs(grads):
        conflicts, total, dots = _agreeing_sum_on(_torch_openmp(), grads, out, l1, gram)
    else:
        conflicts, total, dots = _agreeing_sum_kernel(grads, out, l1, gram)
    matrix = _symmetric(dots, n) if gram else None
    return AgreeingSum(int(conflicts), float(total) if l1 else None,
                       matrix.diagonal().clone() if gram else torch.from_numpy(dots), matrix)


def gram_applies(grads: Tensor) -> bool:
    """Whether :func:`gram` runs compiled for ``grads`` ([N >= 1, K]): enabled, CPU, float32
    (the training dtype, where its float64 products are more accurate than torch's float32
    dots; float64 gradients keep torch's float64 dots, to whose last bits some TorchJD
    solvers are sensitive), contiguous rows, no autograd."""
    return (grads.dim() == 2 and grads.shape[0] >= 1 and grads.dtype == torch.float32
            and _usable(grads))


def gram(grads: Tensor) -> Optional[Tensor]:
    """The ``[N, N]`` float64 Gram matrix of ``grads`` ([N, K]) in one read (each block of
    columns in cache while its N(N+1)/2 products are taken), or None where it does not
    :func:`gram_applies`. Float64 products summed block by block, reassociated to vectorize:
    the same for any thread count; no float32 overflow to recover from."""
    if not gram_applies(grads):
        return None
    upper = _gram_on(_torch_openmp(), grads) if _task_runs(grads) else _gram_kernel(grads)
    return _symmetric(upper, grads.shape[0])


def _task_runs(grads: Tensor) -> bool:
    """Whether the row-reading task runs on torch's threads for these rows."""
    return _torch_openmp() is not None and grads.shape[0] <= _loaded().TASK_MAX_ROWS


def noise_applies(values: Tensor) -> bool:
    """Whether :func:`noise_where_zero` runs compiled for ``values``: enabled, CPU, float32
    (the ziggurat's 23-bit variant), contiguous, 1-D."""
    return values.dim() == 1 and values.dtype == torch.float32 and _usable(values)


def noise_where_zero(values: Tensor, seed: int, scale: float) -> bool:
    """``values = where(values == 0, scale * z, values)``, in place, with ``z`` N(0, 1)
    draws of the compiled ziggurat from ``seed`` (a 64-bit integer; the same bits for any
    thread count); False (nothing written) where it does not :func:`noise_applies`."""
    if not noise_applies(values):
        return False
    lib = _torch_openmp()
    if lib is not None:
        _noise_on(lib, values, seed, scale)
    else:
        _noise_kernel(values, seed, scale)
    return True


def standard_normal(n: int, seed: int) -> Tensor:
    """``n`` N(0, 1) float32 draws of :func:`noise_where_zero` from ``seed`` (the draws it
    would scale at every column): what the generator's tests examine."""
    values = torch.zeros(n)
    if not noise_where_zero(values, seed, 1.0):
        raise RuntimeError("the compiled kernels are not enabled")
    return values
