"""``python -m domainbed_surgery.scripts.train``: DomainBed's ``train`` script (same arguments), with our algorithms registered.

Before training it stops on a ``--test_envs`` index that is not an environment of the
dataset, or that leaves no training domain, and warns about ``--hparams`` keys that
nothing defines for the algorithm and dataset (see :mod:`..plugin.checks`); DomainBed's own
script takes all three silently.
"""

from __future__ import annotations

import argparse
import sys

from ..plugin import checks
from ..plugin.forward import forward
from ..plugin.registration import register


def check(argv) -> None:
    """Run :mod:`..plugin.checks` on the train arguments ``argv`` (DomainBed's defaults where absent)."""
    parser = argparse.ArgumentParser(prog="python -m domainbed_surgery.scripts.train",
                                     add_help=False)
    parser.add_argument("--dataset", default="RotatedMNIST")
    parser.add_argument("--algorithm", default="ERM")
    parser.add_argument("--test_envs", type=int, nargs="+", default=[0])
    parser.add_argument("--hparams", default=None)
    args, _ = parser.parse_known_args(argv)
    register()
    checks.check_test_envs(args.dataset, args.test_envs)
    checks.warn_unknown_hparams(checks.parse_hparams(args.hparams),
                                 [(args.algorithm, args.dataset)])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not {"-h", "--help"} & set(argv):
        check(argv)
    forward("domainbed.scripts.train", argv)


if __name__ == "__main__":
    main()
