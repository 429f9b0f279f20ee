"""Checks our entry points run before DomainBed's scripts, for what those take silently.

DomainBed's ``train.py`` trains on every domain when a ``--test_envs`` index is out of
range, ends in a bare ``StopIteration`` when every domain is a test env, runs the
dataset's default number of steps for ``--steps 0``, and passes any ``--hparams`` key
along whether or not anything reads it (a typo such as ``surgery_batch`` for
``surgery_batches`` changes nothing, silently). Its sweep makes a job per name in
``--algorithms`` and per hparam value, known or not, and each fails when it starts. Our
entry points stop on all of these with a clear message, but unknown hparam keys, about
which they warn.
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


def check_positive(option: str, value: Optional[int]) -> None:
    """:func:`fail` on a ``--steps``/``--checkpoint_freq`` below 1: DomainBed reads 0 as
    "the dataset's default" (``args.steps or dataset.N_STEPS``) and a negative frequency
    as a record at every step."""
    if value is not None and value < 1:
        fail(f"{option} {value}: must be a positive number of steps (DomainBed would "
             f"silently {'use the dataset default' if value == 0 else 'misbehave'}); leave "
             f"{option} out for the dataset's default.")


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


def check_algorithms(names: Iterable[str]) -> None:
    """:func:`fail` on an ``--algorithms`` name DomainBed does not know (ours included)."""
    from domainbed import algorithms  # noqa: PLC0415

    known = [n for n in vars(algorithms) if isinstance(getattr(algorithms, n), type)
             and issubclass(getattr(algorithms, n), algorithms.Algorithm)]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, algorithms.ALGORITHMS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            fail(f"--algorithms: {name!r} is not an algorithm of DomainBed or ours.{hint} "
                 f"Known: {' '.join(algorithms.ALGORITHMS)}")


def _type_problem(default, value) -> Optional[str]:
    """Why ``value`` cannot stand for an hparam whose default is ``default`` (None if it can)."""
    if default is None or isinstance(default, (list, tuple, dict)):
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false (a JSON boolean)"
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            return "must be a whole number"
        return None
    if isinstance(default, str) and not isinstance(value, str):
        return "must be a string"
    return None


def check_hparam_values(hparams: dict, pairs: Iterable[tuple[str, str]]) -> None:
    """:func:`fail` on a ``--hparams`` value that some swept ``(algorithm, dataset)`` cannot
    take, before any job is made: a value of the wrong kind for the hparam's default (the
    string "false" for a boolean), a backbone we do not have, or a surgery switch or rule
    parameter outside its declared choices."""
    from domainbed import algorithms, hparams_registry  # noqa: PLC0415

    from ..extras.backbones import BACKBONES  # noqa: PLC0415
    from ..surgery.algorithm import GradientSurgery  # noqa: PLC0415
    from ..surgery.hparams import check_switches, rule_from_hparams  # noqa: PLC0415

    for algorithm, dataset in pairs:
        defaults = hparams_registry.default_hparams(algorithm, dataset)
        for key, value in hparams.items():
            if key not in defaults:
                continue  # warn_unknown_hparams says so
            problem = _type_problem(defaults[key], value)
            if problem:
                fail(f"--hparams: {key}={json.dumps(value)} {problem} (its default is "
                     f"{json.dumps(defaults[key])}, for {algorithm} on {dataset}).")
            if key == "backbone" and value is not None and value not in BACKBONES:
                close = difflib.get_close_matches(str(value), sorted(BACKBONES), n=1)
                fail(f"--hparams: backbone {value!r} is none of ours ({', '.join(sorted(BACKBONES))})"
                     + (f"; did you mean {close[0]!r}?" if close else "."))
        cls = getattr(algorithms, algorithm, None)
        if isinstance(cls, type) and issubclass(cls, GradientSurgery):
            merged = {**defaults, **hparams}
            try:
                rule_from_hparams(cls.rule_class, merged)
                check_switches(merged, cls.rule_class.native_scale)
            except (ValueError, ImportError) as exc:
                fail(f"--hparams for {algorithm}: {exc}")
