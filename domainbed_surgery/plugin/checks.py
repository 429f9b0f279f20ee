"""Checks our entry points run before DomainBed's scripts, for what those take silently.

DomainBed's ``train.py`` trains on every domain when a ``--test_envs`` index is out of
range, ends in a bare ``StopIteration`` when every domain is a test env, and passes
any ``--hparams`` key along whether or not anything reads it (a typo such as
``surgery_batch`` for ``surgery_batches`` changes nothing, silently). Our entry points
stop on the first two with a clear message and warn about the third.
"""

from __future__ import annotations

import difflib
import json
import sys
from typing import Iterable, Optional, Sequence

from .. import dataset_info


def fail(message: str) -> None:
    """Stop the entry point with ``message`` on stderr and exit status 2 (a usage error)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def environments(dataset: str) -> list[str]:
    """The environments of ``dataset``, or :func:`fail` naming the known datasets."""
    try:
        return dataset_info.environments_or_raise(dataset)
    except dataset_info.UnknownDataset as exc:
        fail(f"--dataset: {exc}")


def check_test_envs(dataset: str, test_envs: Sequence[int]) -> None:
    """:func:`fail` unless every test env is an environment of ``dataset`` and one is left to train on."""
    environments_ = environments(dataset)
    n = len(environments_)
    named = ", ".join(f"{i}={e}" for i, e in enumerate(environments_))
    shown = " ".join(str(e) for e in test_envs)
    bad = [e for e in test_envs if not 0 <= e < n]
    if bad:
        fail(f"--test_envs {shown}: {dataset} has {n} environments, numbered 0-{n - 1} "
             f"({named}); {', '.join(map(str, bad))} is none of them (DomainBed would "
             "silently train on every domain).")
    if set(range(n)) <= set(test_envs):
        fail(f"--test_envs {shown} holds out every environment of {dataset} ({named}): "
             "no training domain is left. Leave at least one out of --test_envs.")


def parse_hparams(text: Optional[str]) -> dict:
    """The ``--hparams`` JSON object (empty if not given), or :func:`fail` saying why not."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--hparams {text!r} is not valid JSON ({exc.msg}); write it like "
             "'{\"batch_size\": 32}' (double quotes).")
    if not isinstance(value, dict):
        fail(f"--hparams {text!r} must be a JSON object, like '{{\"batch_size\": 32}}'.")
    return value


def warn_unknown_hparams(hparams: dict, pairs: Iterable[tuple[str, str]]) -> list[str]:
    """Warn (stderr) about ``hparams`` keys that no ``(algorithm, dataset)`` pair defines; return them."""
    from domainbed import hparams_registry  # noqa: PLC0415

    pairs = list(pairs)
    defined: set[str] = set()
    for algorithm, dataset in pairs:
        defined |= set(hparams_registry.default_hparams(algorithm, dataset))
    unknown = [key for key in hparams if key not in defined]
    algorithms = sorted({a for a, _ in pairs})
    datasets = sorted({d for _, d in pairs})
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(defined), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"warning: hparam {key!r} (--hparams) is not defined for "
              f"{'/'.join(algorithms)} on {'/'.join(datasets)} (DomainBed's registry and "
              f"ours), so most likely nothing reads it.{hint}", file=sys.stderr)
    return unknown
