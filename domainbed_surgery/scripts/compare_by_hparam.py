"""Compare runs that differ in one hparam: accuracy, gap to a baseline, agreement, cosine.

    python -m domainbed_surgery.scripts.compare_by_hparam --input_dir SWEEP --hparam batch_size
        [--test_env 3] [--algorithms ERM AgrSum] [--baseline ERM] [--selection iid]
        [--output_dir DIR]

Prints the table and writes ``by_<hparam>_per_trial.csv`` (one row per run: the data),
``by_<hparam>.csv`` and ``by_<hparam>.md`` (the table computed from it; floats to 3
decimals, NaN as a dash, by :func:`~domainbed_surgery.report.format.markdown_table`) to
``--output_dir`` (default: ``SWEEP/report``). See :mod:`domainbed_surgery.analysis.by_hparam`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import register
from ..report import records as rec
from ..report import trials
from ..report.format import markdown_table
from ..analysis.by_hparam import per_trial_by_hparam, summarize_per_trial


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m domainbed_surgery.scripts.compare_by_hparam",
                                description=__doc__.splitlines()[0])
    p.add_argument("--input_dir", required=True, help="DomainBed sweep output folder")
    p.add_argument("--hparam", required=True, help="the hparam the runs differ in")
    p.add_argument("--test_env", type=int, default=None, help="one target only")
    p.add_argument("--algorithms", nargs="+", default=None)
    p.add_argument("--baseline", default="ERM")
    p.add_argument("--selection", default="iid", choices=sorted(trials.SELECTION_METHODS))
    p.add_argument("--output_dir", default=None, help="default: <input_dir>/report")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    register()  # DomainBed importable, our algorithms and datasets known
    if not Path(args.input_dir).is_dir():
        sys.exit(f"error: --input_dir {args.input_dir} is not a folder")
    records = rec.load_records(args.input_dir)
    if not len(records):
        sys.exit(f"error: no results.jsonl records under {args.input_dir}")
    per_trial = per_trial_by_hparam(records, args.hparam, args.selection, args.algorithms,
                                    args.test_env)
    if per_trial.empty:
        sys.exit(f"error: no single-test-env run under {args.input_dir} matches")
    frame = summarize_per_trial(per_trial, args.baseline)
    out = Path(args.output_dir) if args.output_dir else Path(args.input_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    per_trial.to_csv(out / f"by_{args.hparam}_per_trial.csv", index=False, float_format="%.17g")
    frame.to_csv(out / f"by_{args.hparam}.csv", index=False, float_format="%.17g")
    table = frame.drop(columns=["hparam"]).rename(columns={"value": args.hparam})
    (out / f"by_{args.hparam}.md").write_text(markdown_table(table))
    print(table.to_string(index=False, float_format="%.3f"))
    print(f"wrote {out / f'by_{args.hparam}_per_trial.csv'}, {out / f'by_{args.hparam}.csv'}, "
          f"{out / f'by_{args.hparam}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
