"""Our additions to DomainBed's sweep: jobs' train arguments, the targets, the checks.

Used by ``python -m domainbed_surgery.scripts.sweep`` (see there): ``--checkpoint_freq``
as a train argument of every job (so in each job's folder hash), ``--test_envs`` to sweep
some targets only, runs of another frequency reported, ``--hparams`` checked.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

from . import checks


def with_train_args(make_args_list: Callable, checkpoint_freq: Optional[int] = None,
                    test_envs: Optional[frozenset] = None) -> Callable:
    """DomainBed's ``make_args_list`` with ``checkpoint_freq`` added to every job's train
    args and, with ``test_envs``, only the jobs whose held-out environments are among them."""
    def make_args_list_of_ours(*args, **kwargs):
        jobs = []
        for train_args in make_args_list(*args, **kwargs):
            if test_envs is not None and not set(train_args["test_envs"]) <= test_envs:
                continue
            if checkpoint_freq is not None:
                train_args = dict(train_args, checkpoint_freq=checkpoint_freq)
            jobs.append(train_args)
        return jobs

    return make_args_list_of_ours


_UNKNOWN = object()


def checkpoint_freq_of(run_dir: Path):
    """The ``--checkpoint_freq`` a run folder was trained with (None: the dataset's default),
    read from its ``results.jsonl`` or ``out.txt``; ``_UNKNOWN`` if neither tells."""
    import json  # noqa: PLC0415

    try:
        with open(run_dir / "results.jsonl", encoding="utf-8") as f:
            return json.loads(f.readline())["args"].get("checkpoint_freq")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        with open(run_dir / "out.txt", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip().startswith("checkpoint_freq:"):
                    value = line.split(":", 1)[1].strip()
                    return None if value == "None" else int(value)
    except (OSError, ValueError):
        pass
    return _UNKNOWN


def other_frequencies(output_dir: str, checkpoint_freq: Optional[int]) -> Counter:
    """How many run folders in ``output_dir`` were made with each other ``--checkpoint_freq``."""
    root = Path(output_dir)
    if not root.is_dir():
        return Counter()
    found = Counter(checkpoint_freq_of(d) for d in root.iterdir() if d.is_dir())
    return Counter({f: n for f, n in found.items() if f is not _UNKNOWN and f != checkpoint_freq})


def warn_other_frequencies(output_dir: str, checkpoint_freq: Optional[int]) -> None:
    """Say loudly (stderr) if ``output_dir`` holds runs made with another ``--checkpoint_freq``."""
    def name(freq):
        return f"--checkpoint_freq {freq}" if freq is not None else "no --checkpoint_freq"

    for freq, n in sorted(other_frequencies(output_dir, checkpoint_freq).items(),
                          key=lambda kv: (kv[0] is not None, kv[0] or 0)):
        print(f"WARNING: {n} run(s) in {output_dir} were made with {name(freq)}, this sweep "
              f"with {name(checkpoint_freq)}. They are other jobs, in other folders: none is "
              f"reused or deleted here (pass {name(freq)} to address them). DomainBed's "
              "collect_results and our report read every run of the folder and would pool "
              "both; use another --output_dir to keep them apart.", file=sys.stderr)


def check_hparams(argv) -> None:
    """Stop on ``--hparams`` that is not a JSON object; warn about keys no swept
    (algorithm, dataset) defines (DomainBed's defaults: all algorithms and datasets)."""
    parser = argparse.ArgumentParser(prog="python -m domainbed_surgery.scripts.sweep",
                                     add_help=False)
    parser.add_argument("--datasets", nargs="+", default=None)
    parser.add_argument("--algorithms", nargs="+", default=None)
    parser.add_argument("--hparams", default=None)
    args, _ = parser.parse_known_args(argv)
    hparams = checks.parse_hparams(args.hparams)
    if not hparams:
        return
    from domainbed import algorithms, datasets  # noqa: PLC0415

    names = args.datasets or [d for d in datasets.DATASETS if "Debug" not in d]
    for name in names:
        checks.environments(name)
    checks.warn_unknown_hparams(hparams, [(a, d) for a in args.algorithms or algorithms.ALGORITHMS
                                           for d in names])


def check_test_envs(test_envs, argv) -> None:
    """Stop on ``--test_envs`` that no swept dataset has."""
    if any(e < 0 for e in test_envs):
        raise SystemExit(f"--test_envs {sorted(test_envs)}: environments are numbered from 0")
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--datasets", nargs="+", default=None)
    args, _ = parser.parse_known_args(argv)
    for name in args.datasets or []:
        n_envs = len(checks.environments(name))
        if max(test_envs) >= n_envs:
            raise SystemExit(f"--test_envs {sorted(test_envs)}: {name} has environments "
                             f"0..{n_envs - 1}")
