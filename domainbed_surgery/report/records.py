"""Read a sweep's ``results.jsonl`` records as DomainBed does, skipping a broken line loudly.

DomainBed's ``reporting.load_records`` stops with a bare ``JSONDecodeError`` (naming no
file) at the first line it cannot parse, typically the last line of a job killed while
writing. :func:`load_records` reads the same files into the same ``Q`` of records, but
skips such a line with a warning on stderr that names the file and the line number,
and warns about runs without a ``done`` file (their partial records are used, as
DomainBed does, so a table made mid-sweep says so). Each record of a run whose folder
holds a ``protocol.json`` (the facts training recorded, :mod:`domainbed_surgery.run_facts`)
carries them under :data:`FACTS_KEY`, so the report reads them instead of re-deriving them.
Our ``report``, ``agreement_curves`` and ``collect_results`` entry points use it
(the last via :func:`install`), after making DomainBed importable and registering our
names; DomainBed's own scripts are left as they are.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, TextIO, Union

from .. import run_facts

#: The record key under which :func:`load_records` puts its run's ``protocol.json``.
FACTS_KEY = "protocol_facts"

PathLike = Union[str, "os.PathLike[str]"]


def read_results_file(path: PathLike, warn: Optional[TextIO] = None) -> Iterator[dict]:
    """The records of one ``results.jsonl``; a line that is not a JSON object is skipped with a warning."""
    warn = sys.stderr if warn is None else warn
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value: Any = json.loads(line)
            except json.JSONDecodeError as exc:
                print(f"warning: {path}, line {number}: not valid JSON ({exc.msg} at column "
                      f"{exc.colno}); skipped. A job killed while writing leaves such a line; "
                      "its other records are used.", file=warn)
                continue
            if not isinstance(value, dict):
                print(f"warning: {path}, line {number}: not a JSON object; skipped.", file=warn)
                continue
            yield value


def read_facts(folder: PathLike, warn: Optional[TextIO] = None) -> dict:
    """The run's recorded protocol facts ({} if none); an unreadable ``protocol.json`` is
    named in a warning and counts as none."""
    facts = run_facts.read(os.fspath(folder))
    path = os.path.join(folder, run_facts.FILE)
    if not facts and os.path.isfile(path) and os.path.getsize(path):
        print(f"warning: {path} is not a JSON object of facts; this run's protocol is "
              "reported as not recorded.", file=sys.stderr if warn is None else warn)
    return facts


def load_records(path: PathLike):
    """All records under the sweep folder ``path`` (each ``*/results.jsonl``) as DomainBed's
    ``Q``; those of a run with recorded facts carry them under :data:`FACTS_KEY`."""
    from domainbed.lib.query import Q  # noqa: PLC0415 - DomainBed is optional at import

    records, unfinished = [], []
    for name in sorted(os.listdir(path)):
        folder = os.path.join(path, name)
        results = os.path.join(folder, "results.jsonl")
        if os.path.isfile(results):
            facts = read_facts(folder)
            for record in read_results_file(results):
                if facts:
                    record[FACTS_KEY] = facts
                records.append(record)
            if not os.path.exists(os.path.join(folder, "done")):
                unfinished.append(name)
    if unfinished:
        print(f"warning: {len(unfinished)} run(s) in {path} have no 'done' file (still "
              f"running, or stopped): {', '.join(unfinished[:5])}"
              f"{', ...' if len(unfinished) > 5 else ''}. Their records so far are used, as "
              "DomainBed's collect_results does; the numbers can change when they finish.",
              file=sys.stderr)
    return Q(records)


def incomplete_runs(input_dir: PathLike) -> list[str]:
    """Run folders with a ``results.jsonl`` but no ``done`` file (still running or crashed).

    DomainBed's loader uses their records anyway; the report says how many there are.
    """
    root = Path(input_dir)
    return sorted(d.name for d in root.iterdir()
                  if (d / "results.jsonl").is_file() and not (d / "done").exists())


def install() -> None:
    """Make ``domainbed.lib.reporting.load_records`` this tolerant loader (in this process only)."""
    from domainbed.lib import reporting  # noqa: PLC0415

    reporting.load_records = load_records
