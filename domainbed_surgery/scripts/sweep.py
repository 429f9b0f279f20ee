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
swept algorithm defines on the swept datasets (see :mod:`..plugin.checks`).
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from ..plugin.sweeps import check_hparams, check_test_envs, warn_other_frequencies, with_train_args
from ..plugin.forward import forward, forward_prepared
from ..plugin.registration import register


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
