"""Step-time benchmark of every surgery algorithm against ERM, ANDMask, Fish and two references.

    python -m domainbed_surgery.scripts.benchmark [--settings mnist-28 resnet18-64]
        [--algorithms ...] [--steps 10] [--warmup 2] [--settle 1] [--threads N] [--allocator keep]
        [--output_dir DIR]
    python -m domainbed_surgery.scripts.benchmark --chunk_study [--chunks 524288 0]
        [--params 11200000] [--output_dir DIR]

What is measured and how: :mod:`domainbed_surgery.bench.step_time`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..bench.chunks import CHUNK_COLUMNS, chunk_study
from ..bench.step_time import (ALIASES, CPU_SETTINGS, DEFAULT_ALGORITHMS, GPU_SETTINGS,
                               SETTINGS, build, format_table, resolve_settings, run,
                               write_csv)


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
    parser.add_argument("--settle", type=int, default=1,
                        help="untimed steps of the same algorithm right before each timed one "
                             "(its own steady state, as in training; 0: none)")
    parser.add_argument("--allocator", choices=("keep", "system"), default="keep",
                        help="keep (default): glibc keeps freed memory, for every algorithm "
                             "alike (domainbed_surgery.bench.allocator); system: its defaults")
    parser.add_argument("--algorithms", nargs="+", default=list(DEFAULT_ALGORITHMS),
                        help=f"default: {' '.join(DEFAULT_ALGORITHMS)}")
    parser.add_argument("--output_dir", default=None, help="write CSV and JSON here")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk_study", action="store_true",
                        help="instead: time the one pass over [N, P] per chunk size "
                             "(domainbed_surgery.bench.chunks)")
    parser.add_argument("--chunks", nargs="+", type=int, default=[1 << 19, 1 << 22, 0],
                        help="chunk sizes in columns for --chunk_study; 0 = whole rows")
    parser.add_argument("--params", nargs="+", type=int, default=None,
                        help="P values for --chunk_study (default: the parameter counts of "
                             "the settings' networks)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.settle < 0:
        parser.error("--steps must be >= 1, --warmup and --settle >= 0")
    if any(c < 0 for c in args.chunks) or any(p < 1 for p in args.params or ()):
        parser.error("--chunks must be >= 0 (0: whole rows) and --params >= 1")
    return args


def main(argv=None) -> tuple[list[dict], list[dict]]:
    """Run the benchmark; print the tables; return (result rows, part rows)."""
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        if args.chunk_study:
            return run_chunk_study(args), []
        return run(args)
    finally:  # main() may be called in-process (tests): leave torch as it was
        torch.set_num_threads(threads_before)


def run_chunk_study(args: argparse.Namespace) -> list[dict]:
    """``--chunk_study``: print the table, write ``chunks.csv`` if ``--output_dir``."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    params = args.params
    if params is None:  # the settings' networks' parameter counts
        names = args.settings or (GPU_SETTINGS if device.type == "cuda" else CPU_SETTINGS)
        params = [sum(p.numel() for p in build("ERM", s, torch.device("cpu")).parameters())
                  for s in resolve_settings(names)]
    rows = chunk_study(params, [c or None for c in args.chunks], device,
                       steps=args.steps, warmup=args.warmup, seed=args.seed)
    print(format_table(rows, [(c, c) for c in CHUNK_COLUMNS]))
    if args.output_dir:
        write_csv(Path(args.output_dir) / "chunks.csv", CHUNK_COLUMNS, rows)
        print(f"wrote {args.output_dir}/chunks.csv")
    return rows


if __name__ == "__main__":
    main()
