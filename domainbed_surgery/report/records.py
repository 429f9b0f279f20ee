"""Read a sweep's ``results.jsonl`` records as DomainBed does, skipping a broken line loudly.

DomainBed's ``reporting.load_records`` stops with a bare ``JSONDecodeError`` (naming no
file) at the first line it cannot parse, typically the last line of a job killed while
writing. :func:`load_records` reads the same files into the same ``Q`` of records, but
skips such a line with a warning on stderr that names the file and the line number,
and warns about runs without a ``done`` file (their partial records are used, as
DomainBed does, so a table made mid-sweep says so). Each record of a run whose folder
holds a ``protocol.json`` (the facts training recorded, :mod:`domainbed_surgery.run_facts`)
carries them under :data:`FACTS_KEY`, so the report reads them instead of re-deriving them.
A run holding out an environment its dataset does not have (``--test_envs 7`` on VLCS),
on which DomainBed stops with a bare ``KeyError``, is skipped with a warning naming it.
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

from .. import dataset_info, run_facts

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


def _count_envs(dataset: str, record: dict, known: dict) -> tuple[int, Optional[list[str]]]:
    """(number of environments, their names or None): DomainBed's dataset if it knows it,
    else the environments the record has accuracies for."""
    if dataset not in known:
        try:
            known[dataset] = dataset_info.environments(dataset)
        except ImportError:  # DomainBed not importable: the record alone
            known[dataset] = None
    names = known[dataset]
    if names is not None:
        return len(names), names
    return sum(1 for k in record if k.startswith("env") and k.endswith("_in_acc")), None


def foreign_env_reason(records: list, known: Optional[dict] = None) -> Optional[str]:
    """Why a run cannot be reported, if it holds out an environment its dataset does not have
    (e.g. ``--test_envs 7`` on a 4-domain dataset), else None.

    Such a run fills no cell of any table (no row is that environment, and its records hold
    no test accuracy for it), while DomainBed's selection methods stop on it with a bare
    ``KeyError: 'env7_in_acc'`` naming no run, withholding every valid result. So
    :func:`load_records` skips it with a warning naming the folder, as it does a broken
    line: the tables of the valid runs come out, and the stray folder is not silently
    lost (a DG researcher would remove it or rerun it with a valid ``--test_envs``).
    """
    if not records:
        return None
    args = records[0].get("args") or {}
    test_envs, dataset = args.get("test_envs") or [], args.get("dataset")
    n, names = _count_envs(dataset, records[0], {} if known is None else known)
    foreign = [e for e in test_envs if not (isinstance(e, int) and 0 <= e < n)]
    if not foreign:
        return None
    which = ", ".join(map(str, foreign))
    listed = f": 0-{n - 1} = {', '.join(names)}" if names else ""
    return (f"test_envs {test_envs} names environment{'s' if len(foreign) > 1 else ''} {which}, "
            f"which {dataset} does not have (it has {n}{listed})")


def load_records(path: PathLike):
    """All records under the sweep folder ``path`` (each ``*/results.jsonl``) as DomainBed's
    ``Q``; those of a run with recorded facts carry them under :data:`FACTS_KEY`; a run
    holding out an environment its dataset lacks is skipped, named (:func:`foreign_env_reason`)."""
    from domainbed.lib.query import Q  # noqa: PLC0415 - DomainBed is optional at import

    records, unfinished = [], []
    known: dict = {}  # dataset -> environment names (None: unknown to DomainBed)
    for name in sorted(os.listdir(path)):
        folder = os.path.join(path, name)
        results = os.path.join(folder, "results.jsonl")
        if os.path.isfile(results):
            run = list(read_results_file(results))
            reason = foreign_env_reason(run, known)
            if reason is not None:
                print(f"warning: {folder}: skipped ({len(run)} record"
                      f"{'' if len(run) == 1 else 's'}): {reason}; no table "
                      "can use this run.", file=sys.stderr)
                continue
            facts = read_facts(folder)
            for record in run:
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
