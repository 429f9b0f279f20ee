"""``python -m domainbed_surgery.scripts.train``: DomainBed's ``train`` script (same arguments),
with our algorithms registered, that continues where it stopped.

It runs :mod:`..training.loop` (DomainBed's training, step for step, with a resume state
saved at every record; a rerun of the same command continues from the last one). Before
training it stops on a ``--test_envs`` index that is not an environment of the dataset,
or that leaves no training domain, on ``--steps``/``--checkpoint_freq`` below 1 (DomainBed
takes 0 for "the dataset's default"), and warns about ``--hparams`` keys that nothing
defines for the algorithm and dataset (see :mod:`..plugin.checks`).
"""

from __future__ import annotations

import argparse
import sys

from ..plugin import checks
from ..plugin.registration import register


def check(argv) -> None:
    """Run :mod:`..plugin.checks` on the train arguments ``argv`` (DomainBed's defaults where absent)."""
    parser = argparse.ArgumentParser(prog="python -m domainbed_surgery.scripts.train",
                                     add_help=False)
    parser.add_argument("--dataset", default="RotatedMNIST")
    parser.add_argument("--algorithm", default="ERM")
    parser.add_argument("--test_envs", type=int, nargs="+", default=[0])
    parser.add_argument("--hparams", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--checkpoint_freq", type=int, default=None)
    args, _ = parser.parse_known_args(argv)
    checks.check_positive("--steps", args.steps)
    checks.check_positive("--checkpoint_freq", args.checkpoint_freq)
    register()
    checks.check_test_envs(args.dataset, args.test_envs)
    checks.warn_unknown_hparams(checks.parse_hparams(args.hparams),
                                 [(args.algorithm, args.dataset)])


def main(argv=None):
    from ..training import loop  # noqa: PLC0415 - imports torch and DomainBed

    argv = list(sys.argv[1:] if argv is None else argv)
    if not {"-h", "--help"} & set(argv):
        check(argv)
    sys.exit(loop.main(argv))


if __name__ == "__main__":
    main()
