"""Find the user's DomainBed checkout: importable as ``domainbed``, or under ``DOMAINBED_DIR``.

Imports nothing heavy: this runs at interpreter start (see :mod:`.._startup`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
import threading
from typing import Iterator, Optional

#: Environment variable naming the DomainBed checkout (the folder holding ``domainbed/``).
ENV_VAR = "DOMAINBED_DIR"
DEFAULT_DIR = "~/DomainBed"
#: The DomainBed commit this package is built and tested against.
PINNED_COMMIT = "b93c22a1cfc3b2428398272c1a116c8de1f4139e"


class DomainBedNotFound(ImportError):
    """Raised when no DomainBed checkout can be found."""


def domainbed_dir() -> Optional[Path]:
    """The folder that holds the ``domainbed`` package per ``DOMAINBED_DIR``, or None.

    ``DOMAINBED_DIR`` may name the checkout's root or its ``domainbed/`` package itself.
    """
    root = Path(os.path.expanduser(os.environ.get(ENV_VAR) or DEFAULT_DIR))
    if (root / "domainbed" / "__init__.py").is_file():
        return root.resolve()
    if root.name == "domainbed" and (root / "__init__.py").is_file():
        return root.parent.resolve()
    return None


_state = threading.local()


def busy() -> bool:
    """True while :func:`suspended` is active in this thread (the import hook stands aside)."""
    return getattr(_state, "busy", False)


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Let the import finders run without ours (to look for the real ``domainbed``)."""
    previous = busy()
    _state.busy = True
    try:
        yield
    finally:
        _state.busy = previous


def _importable_without_us() -> bool:
    with suspended():
        return importlib.util.find_spec("domainbed") is not None


def ensure_importable() -> None:
    """Make ``import domainbed`` work, adding ``DOMAINBED_DIR`` to ``sys.path`` if needed."""
    if "domainbed" in sys.modules or _importable_without_us():
        return
    found = domainbed_dir()
    if found is None:
        raise DomainBedNotFound(not_found_message())
    if str(found) not in sys.path:
        sys.path.append(str(found))


def not_found_message() -> str:
    where = os.environ.get(ENV_VAR) or DEFAULT_DIR
    return (
        f"DomainBed is not importable and {ENV_VAR}={where!r} holds no 'domainbed' package. "
        "Check out facebookresearch/DomainBed at commit "
        f"{PINNED_COMMIT} and either run from its root, add it to PYTHONPATH, "
        f"or set {ENV_VAR} to its path.")
