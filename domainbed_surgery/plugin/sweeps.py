"""Our additions to DomainBed's sweep: jobs' train arguments, the targets, the checks,
and job folders that are never touched while their job is alive.

Used by ``python -m domainbed_surgery.scripts.sweep`` (see there): ``--checkpoint_freq``
as a train argument of every job (so in each job's folder hash), ``--test_envs`` to sweep
some targets only, runs of another frequency reported, the arguments checked before any
job folder is made (:func:`check_sweep`), and :func:`guarded_job_class`.
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


def sweep_arguments(argv) -> argparse.Namespace:
    """The arguments of DomainBed's sweep that our checks read (None where absent)."""
    parser = argparse.ArgumentParser(prog="python -m domainbed_surgery.scripts.sweep",
                                     add_help=False)
    parser.add_argument("command", nargs="?", default=None)
    parser.add_argument("--datasets", nargs="+", default=None)
    parser.add_argument("--algorithms", nargs="+", default=None)
    parser.add_argument("--hparams", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--command_launcher", default=None)
    args, _ = parser.parse_known_args(argv)
    return args


def check_sweep(argv) -> None:
    """Stop, before any job folder is made, on what would make failing jobs: an unknown
    algorithm or dataset, ``--steps`` below 1, ``--hparams`` that is not a JSON object or
    holds a value a swept (algorithm, dataset) cannot take; warn about hparam keys no swept
    pair defines (DomainBed's defaults: all algorithms and datasets)."""
    args = sweep_arguments(argv)
    checks.check_positive("--steps", args.steps)
    from domainbed import algorithms, datasets  # noqa: PLC0415

    if args.algorithms:
        checks.check_algorithms(args.algorithms)
    names = args.datasets or [d for d in datasets.DATASETS if "Debug" not in d]
    for name in names:
        checks.environments(name)
    hparams = checks.parse_hparams(args.hparams)
    if not hparams:
        return
    pairs = [(a, d) for a in args.algorithms or algorithms.ALGORITHMS for d in names]
    checks.warn_unknown_hparams(hparams, pairs)
    if args.command == "launch":
        checks.check_hparam_values(hparams, pairs)


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


RUNNING = "Running"


def guarded_job_class(job_class: type, resume_incomplete: bool) -> type:
    """DomainBed's sweep ``Job``, whose folders are left alone while their job is alive.

    A job folder whose training process holds its lock, or whose Slurm task is still
    listed by ``squeue`` (see :mod:`..launch.folders`), is in state ``Running``, neither
    *Incomplete* nor *Not launched*: ``delete_incomplete`` does not delete it (and deletes
    the others under their lock, checking again first) and ``launch`` does not launch it.
    With ``resume_incomplete`` (our launchers, which run the resumable train), ``launch``
    also launches the *Incomplete* jobs: each continues from its last resume state.
    """
    from ..launch import folders  # noqa: PLC0415

    live: dict = {}  # sweep folder -> {job folder: owner}
    made: list = []

    def owner_of(job_dir: str, sweep_dir: str) -> Optional[str]:
        if sweep_dir not in live:
            root = Path(sweep_dir)
            unfinished = ([d for d in root.iterdir() if d.is_dir() and not (d / "done").exists()]
                          if root.is_dir() else [])
            live[sweep_dir] = folders.owners(unfinished)
        return live[sweep_dir].get(str(Path(job_dir)))

    class Job(job_class):
        __doc__ = guarded_job_class.__doc__

        def __init__(self, train_args, sweep_output_dir):
            super().__init__(train_args, sweep_output_dir)
            made.append(self)
            self.owner = None
            if self.state == job_class.INCOMPLETE:
                self.owner = owner_of(self.output_dir, sweep_output_dir)
                if self.owner:
                    self.state = RUNNING

        def __str__(self):
            text = super().__str__()
            return f"{text} [alive: {self.owner}]" if self.owner else text

        @staticmethod
        def launch(jobs, launcher_fn):
            running = [j for j in made if j.state == RUNNING]
            if running:
                print(f"{len(running)} job(s) still running (their training process or Slurm "
                      "job is alive): left alone.")
            extra = [j for j in made if j.state == job_class.INCOMPLETE] if resume_incomplete else []
            if extra:
                print(f"Also launching the {len(extra)} incomplete job(s): each continues from "
                      "its last resume state (`delete_incomplete` first to start them over).")
            job_class.launch(list(jobs) + extra, launcher_fn)

        @staticmethod
        def delete(jobs):
            print("Deleting...")
            kept = []
            for job in jobs:
                owner = folders.owner(job.output_dir) or folders.delete_unowned(job.output_dir)
                if owner:
                    kept.append((job, owner))
            print(f"Deleted {len(jobs) - len(kept)} jobs!")
            for job, owner in kept:
                print(f"Kept {job.output_dir}: its job started meanwhile ({owner}).")

    Job.__name__ = Job.__qualname__ = job_class.__name__
    return Job
