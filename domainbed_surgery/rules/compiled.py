"""One-read CPU kernels for the elementwise rules, compiled with Numba when it is installed.

On the CPU, torch computes Agr-Sum's chunk in about ten passes (min, max, compare, add,
mask), each reading memory again; the compiled kernel reads each column once and gives
the same bits (the same additions in the same order). Agr-Rand's noise is drawn by a
compiled ziggurat straight into the zeros of its agreeing sum, in one pass. Without Numba,
off the CPU, for other dtypes or with ``DOMAINBED_SURGERY_COMPILED=0``, the torch code runs
instead: the same results, slower.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["enabled", "describe", "applies", "agreeing_sum", "noise_applies",
           "noise_where_zero", "standard_normal"]

#: The dtypes the kernels are compiled for.
DTYPES = (torch.float32, torch.float64)
_LOCK = threading.Lock()  # the kernels' threading layer takes one caller at a time
_kernels = None


def enabled() -> bool:
    """Whether the compiled kernels run: Numba is installed and not switched off."""
    return (os.environ.get("DOMAINBED_SURGERY_COMPILED", "1") != "0"
            and importlib.util.find_spec("numba") is not None)


def describe() -> str:
    """What a step on the CPU uses, for logs and benchmark records."""
    if not enabled():
        return "torch (Numba not installed or DOMAINBED_SURGERY_COMPILED=0)"
    import numba  # noqa: PLC0415

    return f"numba {numba.__version__}"


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


def applies(grads: Tensor, out: Tensor) -> bool:
    """Whether :func:`agreeing_sum` runs compiled for ``grads`` ([N >= 2, K]) into ``out``
    ([K]): enabled, CPU, one dtype of :data:`DTYPES`, contiguous rows, no autograd."""
    return grads.dim() == 2 and grads.shape[0] >= 2 and out.shape == grads.shape[1:] \
        and _usable(grads, out)


def agreeing_sum(grads: Tensor, out: Tensor,
                 l1: bool = True) -> Optional[tuple[int, Optional[float]]]:
    """Agr-Sum of ``grads`` ([N, K]) into ``out``: the sum where all rows are > 0 or all
    < 0, else 0; returns (conflicting columns, sum of ``|out|`` in float64, or None without
    ``l1``: Agr-Sum does not need it, Agr-Rand's sigma does), or None (nothing written)
    where it does not :func:`applies`."""
    if not applies(grads, out):
        return None
    rows = tuple(row.numpy() for row in grads)
    conflicts, total = _run(_loaded().agreeing_sum, rows, out.numpy(), l1)
    return int(conflicts), float(total) if l1 else None


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
    kernels = _loaded()
    _run(kernels.noise_where_zero, values.numpy(), np.uint64(seed), np.float32(scale),
         kernels.KI, kernels.WI, kernels.FI)
    return True


def standard_normal(n: int, seed: int) -> Tensor:
    """``n`` N(0, 1) float32 draws of :func:`noise_where_zero` from ``seed`` (the draws it
    would scale at every column): what the generator's tests examine."""
    values = torch.zeros(n)
    if not noise_where_zero(values, seed, 1.0):
        raise RuntimeError("the compiled kernels are not enabled")
    return values
