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

Before any job folder is made it stops on an unknown algorithm or dataset, on
``--steps`` below 1, on ``--hparams`` that is not a JSON object or holds a value a swept
algorithm cannot take, and (``--command_launcher slurm``) on a request the cluster can
never satisfy; it warns about hparam keys that no swept algorithm defines on the swept
datasets (see :mod:`..plugin.checks`).

A job folder whose job is alive (its training process holds the folder's lock, or its
Slurm task is still queued or running) is never deleted by ``delete_incomplete`` nor
launched again; with our launchers (``parallel``, ``slurm``) ``launch`` also relaunches
the incomplete jobs, which continue from their last resume state
(:func:`..plugin.sweeps.guarded_job_class`).
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from ..plugin.checks import check_positive
from ..plugin.forward import forward_prepared
from ..plugin.registration import register
from ..plugin.sweeps import (check_sweep, check_test_envs, guarded_job_class, sweep_arguments,
                             warn_other_frequencies, with_train_args)

#: Our launchers: they run the train that continues where it stopped.
RESUMING_LAUNCHERS = ("parallel", "slurm")


def main(argv=None):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--checkpoint_freq", type=int, default=None)
    parser.add_argument("--test_envs", type=int, nargs="+", default=None)
    parser.add_argument("--output_dir", type=str, default=None)
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if ours.output_dir is not None:
        rest += ["--output_dir", ours.output_dir]
    check_positive("--checkpoint_freq", ours.checkpoint_freq)
    register()
    swept = sweep_arguments(rest)
    if not {"-h", "--help"} & set(rest):
        check_sweep(rest)
        if ours.test_envs is not None:
            check_test_envs(ours.test_envs, rest)
        if swept.command == "launch" and swept.command_launcher == "slurm":
            from ..launch.slurm import check_setup  # noqa: PLC0415

            check_setup()
    if ours.output_dir is not None:
        warn_other_frequencies(ours.output_dir, ours.checkpoint_freq)
    test_envs = None if ours.test_envs is None else frozenset(ours.test_envs)

    def prepare(script: ModuleType) -> None:
        if ours.checkpoint_freq is not None or test_envs is not None:
            script.make_args_list = with_train_args(script.make_args_list, ours.checkpoint_freq,
                                                    test_envs)
        script.Job = guarded_job_class(script.Job,
                                       resume_incomplete=swept.command_launcher in RESUMING_LAUNCHERS)

    forward_prepared("domainbed.scripts.sweep", rest, prepare)


if __name__ == "__main__":
    main()
