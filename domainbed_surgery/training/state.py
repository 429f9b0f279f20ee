"""A training run's resume state: what continuing it needs, saved atomically in its folder.

``resume.pt`` in the run's ``--output_dir`` holds

- the whole algorithm object (network, optimizers, any attribute: a rule's state, a
  surgery algorithm's generators, GroupDRO's ``q``, Fish's inner network...), pickled;
- every random generator: torch's (CPU and CUDA), numpy's and Python's;
- each infinite loader's position (:mod:`.loaders`);
- the step to run next, the values logged since the last record, and how many bytes
  of ``results.jsonl`` the records written so far take;
- the run's arguments, so that a different run never continues it.

It is written to a temporary file and renamed over the old one, so a run killed while
saving keeps the previous state. Classes that pickle cannot find by their module and
name (our surgery algorithms are made by ``type()``) are pickled by their name in
``domainbed.algorithms``.
"""

from __future__ import annotations

import os
import pickle
import random
import types
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

FILE = "resume.pt"
FORMAT = 1


def algorithm_class(name: str) -> type:
    """The algorithm class registered in DomainBed under ``name`` (for unpickling)."""
    from domainbed import algorithms  # noqa: PLC0415

    return algorithms.get_algorithm_class(name)


def _findable(cls: type) -> bool:
    """Whether pickle finds ``cls`` at its module and qualified name."""
    try:
        found: Any = __import__(cls.__module__, fromlist=["_"])
        for part in cls.__qualname__.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return False
    return found is cls


class _Pickler(pickle.Pickler):
    """Pickles a class pickle cannot find, but DomainBed has as an algorithm, by that name."""

    def reducer_override(self, obj):
        if isinstance(obj, type) and not _findable(obj):
            import sys  # noqa: PLC0415

            registry = sys.modules.get("domainbed.algorithms")
            if registry is not None and getattr(registry, obj.__name__, None) is obj:
                return algorithm_class, (obj.__name__,)
        return NotImplemented


#: What ``torch.save``/``torch.load`` use as their ``pickle_module``.
PICKLE = types.SimpleNamespace(Pickler=_Pickler, Unpickler=pickle.Unpickler, load=pickle.load,
                               dump=pickle.dump, loads=pickle.loads, __name__="pickle")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def path(output_dir: str) -> Path:
    return Path(output_dir) / FILE


def save(output_dir: str, state: dict) -> None:
    """Write ``state`` as the run's resume state, atomically (temporary file, fsync, rename)."""
    target = path(output_dir)
    tmp = target.with_name(f".{FILE}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f, pickle_module=PICKLE)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


class CannotResume(RuntimeError):
    """The folder holds a resume state this run must not (or cannot) continue."""


def load(output_dir: str, device: str) -> Optional[dict]:
    """The run's resume state (tensors on ``device``), or None if there is none."""
    source = path(output_dir)
    if not source.exists():
        return None
    try:
        state = torch.load(source, map_location=device, weights_only=False, pickle_module=PICKLE)
    except Exception as exc:  # noqa: BLE001 - say what and where, whatever broke
        raise CannotResume(f"{source} cannot be read ({type(exc).__name__}: {exc})") from exc
    if state.get("format") != FORMAT:
        raise CannotResume(f"{source} has format {state.get('format')!r}, this version "
                           f"reads {FORMAT}")
    return state


#: Arguments that may change between a run and its continuation: where it is, where the data is.
MAY_DIFFER = {"output_dir", "data_dir"}


def different_args(saved: dict, current: dict) -> dict:
    """The arguments (but :data:`MAY_DIFFER`) in which two runs differ: {name: (saved, current)}."""
    keys = (set(saved) | set(current)) - MAY_DIFFER
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}


def keep_records(results: Path, n_bytes: int) -> None:
    """Cut ``results.jsonl`` back to its first ``n_bytes`` (the records the resume state
    knows): a record written after that state was saved is written again, once."""
    size = results.stat().st_size if results.exists() else 0
    if size < n_bytes:
        raise CannotResume(f"{results} holds {size} bytes, fewer than the {n_bytes} its resume "
                           "state was saved with: records were lost")
    if size > n_bytes:
        with open(results, "r+b") as f:
            f.truncate(n_bytes)
