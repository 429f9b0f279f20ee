"""Intra- vs inter-domain per-sample gradient cosine during ERM training (paper Fig. 2).

    python -m domainbed_surgery.scripts.gradient_similarity --dataset RotatedDigits \\
        --data_dir DATA --steps 200 --every 20 --per_domain 8 --output_dir out

What is measured and how: :mod:`domainbed_surgery.analysis.gradient_similarity`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .. import register
from ..analysis.gradient_similarity import redraw, run


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m domainbed_surgery.scripts.gradient_similarity",
        description="Intra- vs inter-domain per-sample gradient cosine during ERM training "
                    "(Mansilla et al. 2021, Sec. 4.3 / Fig. 2).")
    parser.add_argument("--dataset", default=None, help="required unless --from_csv")
    parser.add_argument("--from_csv", default=None,
                        help="redraw the figure and the summary from this CSV (no training)")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--test_envs", action="append", nargs="+", default=None,
                        help="held-out choices: each value is one run, '0' or '0,1'; "
                             "repeatable (default: every leave-one-domain-out choice)")
    parser.add_argument("--steps", type=int, default=200, help="ERM updates per choice")
    parser.add_argument("--every", type=int, default=20, help="measure every this many steps")
    parser.add_argument("--per_domain", type=int, default=8,
                        help="one-class samples per source domain per measurement")
    parser.add_argument("--hparams", default=None, help="JSON dict updating ERM's defaults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trial_seed", type=int, default=0,
                        help="seeds the in/out split of each environment, as in train.py")
    parser.add_argument("--holdout_fraction", type=float, default=0.2)
    parser.add_argument("--chunk_size", type=int, default=32,
                        help="samples per vmap call (lower it if per-sample gradients OOM)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--output_dir", default="gradient_similarity_output")
    args = parser.parse_args(argv)
    if args.dataset is None and args.from_csv is None:
        parser.error("--dataset is required (or --from_csv to redraw without training)")
    for name in ("every", "per_domain", "chunk_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.steps < 0:
        parser.error("--steps must be >= 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.from_csv:  # no training: DomainBed is not needed
        return redraw(args.from_csv, args.output_dir)
    register()  # DomainBed importable, our algorithms, backbones and datasets known
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
