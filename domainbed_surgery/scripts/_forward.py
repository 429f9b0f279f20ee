"""Run one of DomainBed's scripts as ``__main__`` after registering everything of ours."""

from __future__ import annotations

import runpy
import sys
from typing import Optional, Sequence

from ..registration import register


def forward(module: str, argv: Optional[Sequence[str]] = None) -> None:
    """``python -m domainbed_surgery.scripts.X ARGS`` == ``python -m domainbed.scripts.X ARGS``, registered."""
    register()
    sys.argv = [module, *(sys.argv[1:] if argv is None else argv)]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
