"""Protocol facts of a training run, written when training knows them: ``protocol.json``.

What a run compared (its featurizer's weights, a frozen prefix and the share of
parameters trained, the rule and its scale) is known while the run is built, and not
all of it can be read back from ``args`` and ``hparams``. Each fact is recorded into
``<output_dir>/protocol.json`` beside ``results.jsonl`` (one JSON object of sections),
so the report reads it instead of re-deriving it. Outside a ``domainbed.scripts.train``
run (tests, notebooks) nothing is written.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

FILE = "protocol.json"
TRAIN_SCRIPT = "domainbed.scripts.train"


def run_dir() -> Optional[str]:
    """The ``--output_dir`` of the ``domainbed.scripts.train`` run in this process, if any."""
    for module in (sys.modules.get("__main__"), sys.modules.get(TRAIN_SCRIPT)):
        spec = getattr(module, "__spec__", None)
        if getattr(spec, "name", None) != TRAIN_SCRIPT:
            continue
        output_dir = getattr(getattr(module, "args", None), "output_dir", None)
        if output_dir and os.path.isdir(output_dir):
            return output_dir
    return None


def record(section: str, facts: dict[str, Any]) -> None:
    """Merge ``facts`` into ``section`` of the run's ``protocol.json`` (written whole)."""
    folder = run_dir()
    if folder is None:
        return
    path = os.path.join(folder, FILE)
    data = read(folder)
    if data.get(section, {}) == {**data.get(section, {}), **facts}:
        return  # nothing new (Fish builds a featurizer every step)
    data.setdefault(section, {}).update(facts)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read(folder: str) -> dict[str, Any]:
    """The facts recorded for the run in ``folder`` ({} if none)."""
    try:
        with open(os.path.join(folder, FILE), encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}
