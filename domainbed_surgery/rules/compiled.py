"""One-read CPU kernels for the elementwise rules, compiled with Numba when it is installed.

On the CPU, torch computes Agr-Sum's chunk in about ten passes (min, max, compare, add,
mask), each reading memory again; the compiled kernel reads each column once and gives
the same bits (the same additions in the same order). Agr-Rand's noise is written into the
zeros of its agreeing sum in one read, by each drawing thread. Without Numba, off the CPU,
for other dtypes or with ``DOMAINBED_SURGERY_COMPILED=0``, the torch code runs instead:
the same results, slower.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["enabled", "describe", "applies", "agreeing_sum", "noise_where_zero"]

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


def agreeing_sum(grads: Tensor, out: Tensor) -> Optional[tuple[int, float]]:
    """Agr-Sum of ``grads`` ([N, K]) into ``out`` ([K]): the sum where all rows are > 0 or
    all < 0, else 0; returns (conflicting columns, sum of ``|out|`` in float64), or None
    (nothing written) where it does not :func:`applies`."""
    if not applies(grads, out):
        return None
    rows = tuple(row.numpy() for row in grads)
    conflicts, l1 = _run(_loaded().agreeing_sum, rows, out.numpy())
    return int(conflicts), float(l1)


def noise_where_zero(values: Tensor, draws: Tensor, scale: Tensor) -> None:
    """``values = where(values == 0, draws * scale, values)`` (1-D, in place; ``draws`` is
    used up). Compiled: one serial read of each, callable from several threads at once."""
    if _usable(values, draws, scale) and values.shape == draws.shape:
        _loaded().noise_where_zero(values.numpy(), draws.numpy(),
                                   values.numpy().dtype.type(scale.item()))
        return
    torch.where(values == 0, draws.mul_(scale), values, out=values)
