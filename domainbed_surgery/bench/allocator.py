"""glibc's allocator set to keep freed memory in the process, for CPU timing (and training).

By default glibc gives large freed blocks back to the kernel: a block above the mmap
threshold is unmapped when freed, and free space at the heap's top above the trim
threshold is trimmed. A CPU training step frees its activations and allocates them
again, so the next step page-faults them in afresh, at a cost that depends on the
machine's memory state. On the 2-core development machine an efficientnet_lite0-128
step took 49,000-69,000 minor faults and 100-139 ms of system time that way, kept at
most 1,922 faults and 4 ms (docs/results/cpu_step_time/allocator). The arithmetic is the
same, so results are too; only where memory comes from changes.

Any process, a DomainBed training run included, gets the same with the environment
variables of :data:`ENVIRONMENT` (glibc reads them at start-up).
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Optional

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "ENVIRONMENT", "glibc_version",
           "keep_freed_memory", "describe"]

#: Blocks up to this size come from the heap, not from their own mapping: glibc's own
#: ceiling for its adaptive threshold on 64-bit systems (32 MiB).
MMAP_THRESHOLD = 32 * 2 ** 20
#: Free space at the heap's top is returned to the kernel only above this (1 GiB).
TRIM_THRESHOLD = 2 ** 30
#: The same two settings as glibc environment variables, for any process.
ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
               "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_kept = False  # keep_freed_memory() ran in this process


def _libc() -> Optional[ctypes.CDLL]:
    """The process's C library when it is glibc (which has ``mallopt``), else None."""
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):  # musl and others: no glibc
        return None


def glibc_version() -> Optional[str]:
    """glibc's version ("2.36"), or None where the C library is not glibc."""
    libc = _libc()
    return None if libc is None else libc.gnu_get_libc_version().decode()


def keep_freed_memory() -> bool:
    """Set this process's glibc to keep freed memory (:data:`MMAP_THRESHOLD`,
    :data:`TRIM_THRESHOLD`); False where the C library is not glibc (nothing changed).
    Process-wide and for the rest of the process: glibc has no way back to its adaptive
    default."""
    global _kept
    libc = _libc()
    if libc is None:
        return False
    for parameter, value in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                             (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) != 1:
            raise RuntimeError(f"glibc's mallopt refused parameter {parameter} = {value}")
    _kept = True
    return True


def describe() -> str:
    """The allocator the process runs with, for benchmark records."""
    version = glibc_version()
    if version is None:
        return "not glibc: the system's allocator, unchanged"
    if _kept:
        return (f"glibc {version}, freed memory kept (mmap threshold {MMAP_THRESHOLD >> 20} MiB, "
                f"trim threshold {TRIM_THRESHOLD >> 30} GiB)")
    set_by_env = {k: os.environ[k] for k in ENVIRONMENT if k in os.environ}
    if set_by_env:
        return f"glibc {version}, " + ", ".join(f"{k}={v}" for k, v in set_by_env.items())
    return f"glibc {version}, its defaults (freed memory returned to the kernel)"
