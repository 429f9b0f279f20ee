"""Run one of DomainBed's scripts as ``__main__`` after registering everything of ours,
or build the argument parser of one."""

from __future__ import annotations

import argparse
import ast
import importlib
import runpy
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional, Sequence

from .registration import register


def forward(module: str, argv: Optional[Sequence[str]] = None) -> None:
    """``python -m domainbed_surgery.scripts.X ARGS`` == ``python -m domainbed.scripts.X ARGS``, registered."""
    register()
    sys.argv = [module, *(sys.argv[1:] if argv is None else argv)]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def forward_prepared(module: str, argv: Sequence[str],
                     prepare: Callable[[ModuleType], None]) -> None:
    """Like :func:`forward`, but ``prepare(script_module)`` may replace the script's own functions.

    ``runpy`` would define the script's functions afresh right before its main block
    runs, so here the script is imported as a module (its definitions only), prepared,
    and then its ``if __name__ == "__main__":`` block -- DomainBed's own code, unchanged --
    runs in that module's namespace.
    """
    register()
    sys.argv = [module, *argv]
    script = importlib.import_module(module)
    prepare(script)
    path = Path(script.__file__)
    exec(_compiled(_main_block(path), path), vars(script))  # noqa: S102 - DomainBed's own code


def script_parser(module: str) -> argparse.ArgumentParser:
    """The argument parser that DomainBed script ``module`` builds, built by its own code:
    the statements of its main block before ``args = parser.parse_args()``, run in the
    script module's namespace (nothing else of the script runs)."""
    script = importlib.import_module(module)
    path = Path(script.__file__)
    body = _main_block(path)
    for i, node in enumerate(body):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and ast.unparse(node.targets[0]) == "args"
                and ast.unparse(node.value) == "parser.parse_args()"):
            break
    else:
        raise RuntimeError(f"{path}: no `args = parser.parse_args()` in its main block; is this "
                           "DomainBed newer than the pinned commit?")
    namespace = dict(vars(script))
    exec(_compiled(body[:i], path), namespace)  # noqa: S102 - DomainBed's own code
    return namespace["parser"]


def _main_block(path: Path) -> list:
    """The statements of the one ``if __name__ == "__main__":`` block of the script at ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    blocks = [node for node in tree.body if isinstance(node, ast.If)
              and ast.unparse(node.test) == "__name__ == '__main__'"]
    if len(blocks) != 1:
        raise RuntimeError(f"{path}: expected one `if __name__ == '__main__':` block, "
                           f"found {len(blocks)}; is this DomainBed newer than the pinned commit?")
    return blocks[0].body


def _compiled(statements: list, path: Path):
    return compile(ast.Module(body=statements, type_ignores=[]), str(path), "exec")
