"""Memory of one benchmark step and of an algorithm's state (see :mod:`.step_time`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Callable, Optional

import torch


def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StepMemory:
    """Peak memory one call adds above what was resident right before it (see module doc)."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.method = "cuda max_memory_allocated - memory_allocated"
        elif _proc_status_kib("VmHWM") is not None and _reset_peak_rss():
            self.method = "VmHWM (reset via clear_refs) - VmRSS, after malloc_trim"
        else:
            self.method = "unavailable"

    def measure(self, fn: Callable[[], object]) -> Optional[float]:
        """Run ``fn`` once; bytes of peak growth, or None if this platform cannot tell."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return float(torch.cuda.max_memory_allocated(self.device) - base)
        if self.method == "unavailable":
            fn()
            return None
        _malloc_trim()
        base = _proc_status_kib("VmRSS")
        _reset_peak_rss()
        fn()
        peak = _proc_status_kib("VmHWM")
        return float(max(peak - base, 0) * 1024)


def state_bytes(obj) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj``'s state.

    Walks modules (parameters, their ``.grad``, buffers, submodules), optimizers'
    state and plain attributes (tensors, lists, tuples, dicts); counts each storage
    once, so views into one buffer (our per-parameter gradient views) cost nothing extra.
    """
    storages: dict[tuple, int] = {}
    seen: set[int] = set()

    def visit(x, depth: int) -> None:
        if depth > 200 or id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            s = x.untyped_storage()
            storages[(x.device.type, x.device.index, s.data_ptr())] = s.nbytes()
            if isinstance(x, torch.nn.Parameter) and x.grad is not None:
                visit(x.grad, depth + 1)
        elif isinstance(x, torch.optim.Optimizer):
            visit(list(x.state.values()), depth + 1)
        elif isinstance(x, dict):
            for k, v in x.items():
                visit(k, depth + 1)
                visit(v, depth + 1)
        elif isinstance(x, (list, tuple, set)):
            for v in x:
                visit(v, depth + 1)
        elif isinstance(x, torch.nn.Module):
            visit(vars(x), depth + 1)

    visit(obj, 0)
    return sum(storages.values())
