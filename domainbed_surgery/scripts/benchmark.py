"""Step-time benchmark of every surgery algorithm against ERM, ANDMask, Fish and two references.

    python -m domainbed_surgery.scripts.benchmark [--settings mnist-28 resnet18-64]
        [--algorithms ...] [--steps 10] [--warmup 2] [--threads N] [--output_dir DIR]

What is measured and how: :mod:`domainbed_surgery.bench.step_time`.
"""

from __future__ import annotations

import argparse

import torch

from ..bench.step_time import (ALIASES, CPU_SETTINGS, DEFAULT_ALGORITHMS, GPU_SETTINGS,
                               SETTINGS, run)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Median step time and memory of the surgery algorithms vs ERM, "
                    "ANDMask, Fish and the paper's scheme.")
    parser.add_argument("--settings", nargs="+", default=None,
                        help=f"settings to run (default: {' '.join(CPU_SETTINGS)} on CPU, "
                             f"{' '.join(GPU_SETTINGS)} on CUDA); all: "
                             f"{', '.join(list(SETTINGS) + list(ALIASES))}")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    parser.add_argument("--steps", type=int, default=10, help="timed repetitions per algorithm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per algorithm first")
    parser.add_argument("--algorithms", nargs="+", default=list(DEFAULT_ALGORITHMS),
                        help=f"default: {' '.join(DEFAULT_ALGORITHMS)}")
    parser.add_argument("--output_dir", default=None, help="write CSV and JSON here")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> tuple[list[dict], list[dict]]:
    """Run the benchmark; print the tables; return (result rows, part rows)."""
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:  # main() may be called in-process (tests): leave torch as it was
        torch.set_num_threads(threads_before)




if __name__ == "__main__":
    main()
