"""``python -m domainbed_surgery.scripts.sweep``: DomainBed's ``sweep`` (same arguments), registered.

Adds ``--checkpoint_freq N``, which DomainBed's sweep lacks (the paper validates every
20 steps). It becomes one more of each job's train arguments, like ``--steps``: the job
runs ``python -m domainbed.scripts.train ... --checkpoint_freq N``, and, as DomainBed
names a job's folder by the hash of its train arguments, a different frequency means
different jobs in different folders: a sweep never takes runs made with another
frequency for its own (without the option, jobs and folders are exactly DomainBed's).
Runs of another frequency in the same ``--output_dir`` are reported loudly, since
DomainBed's ``collect_results`` and our report would pool them with the new ones.

Adds ``--test_envs E [E ...]``: only the jobs whose held-out environments are all among
``E`` (with ``--single_test_envs``: leave-one-domain-out on those targets only), for
sweeps sized to a machine.

It also stops on ``--hparams`` that is not a JSON object and warns about keys that no
swept algorithm defines on the swept datasets (see :mod:`._checks`).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

from ..glue import checks as _checks
from ..plugin.forward import forward, forward_prepared
from ..plugin.registration import register


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
    hparams = _checks.parse_hparams(args.hparams)
    if not hparams:
        return
    from domainbed import algorithms, datasets  # noqa: PLC0415

    names = args.datasets or [d for d in datasets.DATASETS if "Debug" not in d]
    for name in names:
        _checks.dataset_class(name)
    _checks.warn_unknown_hparams(hparams, [(a, d) for a in args.algorithms or algorithms.ALGORITHMS
                                           for d in names])


def check_test_envs(test_envs, argv) -> None:
    """Stop on ``--test_envs`` that no swept dataset has."""
    if any(e < 0 for e in test_envs):
        raise SystemExit(f"--test_envs {sorted(test_envs)}: environments are numbered from 0")
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--datasets", nargs="+", default=None)
    args, _ = parser.parse_known_args(argv)
    for name in args.datasets or []:
        n_envs = len(_checks.dataset_class(name).ENVIRONMENTS)
        if max(test_envs) >= n_envs:
            raise SystemExit(f"--test_envs {sorted(test_envs)}: {name} has environments "
                             f"0..{n_envs - 1}")


def main(argv=None):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--checkpoint_freq", type=int, default=None)
    parser.add_argument("--test_envs", type=int, nargs="+", default=None)
    parser.add_argument("--output_dir", type=str, default=None)
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if ours.output_dir is not None:
        rest += ["--output_dir", ours.output_dir]
    if ours.checkpoint_freq is not None and ours.checkpoint_freq < 1:
        raise SystemExit(f"--checkpoint_freq {ours.checkpoint_freq}: must be a positive "
                         "number of steps")
    register()
    if not {"-h", "--help"} & set(rest):
        check_hparams(rest)
        if ours.test_envs is not None:
            check_test_envs(ours.test_envs, rest)
    if ours.output_dir is not None:
        warn_other_frequencies(ours.output_dir, ours.checkpoint_freq)
    if ours.checkpoint_freq is None and ours.test_envs is None:
        forward("domainbed.scripts.sweep", rest)
        return
    test_envs = None if ours.test_envs is None else frozenset(ours.test_envs)

    def prepare(script: ModuleType) -> None:
        script.make_args_list = with_train_args(script.make_args_list, ours.checkpoint_freq,
                                                test_envs)

    forward_prepared("domainbed.scripts.sweep", rest, prepare)


if __name__ == "__main__":
    main()
