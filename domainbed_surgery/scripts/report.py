"""Paper-style report of a DomainBed sweep: Table 1 (md/tex/csv/text) and Fig. 3 box plots.

    python -m domainbed_surgery.scripts.report --input_dir SWEEP [--output_dir DIR]
        [--selection iid loo oracle] [--baseline ERM] [--alpha 0.05] [--no_figures]

Writes ``<dataset>_<selection>.{md,tex,csv}``, ``<dataset>_<selection>_cells.csv``,
``<dataset>_<selection>_boxplot.{png,pdf}`` and ``per_trial_<selection>.csv`` into the
output folder (default ``<input_dir>/report``) and prints the tables as text; where the
sweep has control arms (``<name>-single``, paper Fig. 4), also each method's multi minus
single arm (``control_arms_<selection>.csv``, :mod:`domainbed_surgery.analysis.control`). Under
each table: the protocol read from the runs and the facts their training recorded
(``protocol.json``: steps, batch size, backbone and weights..., what differs between the
algorithms); cells whose runs mix protocols are marked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .. import register
from ..analysis.control import arm_differences
from ..report import format as fmt
from ..report import records as rec
from ..report import summary, trials

FILES = {"markdown": "md", "latex": "tex", "csv": "csv"}


def _alpha(text: str) -> float:
    """``--alpha``: a significance level in (0, 1), else an argparse error (``--alpha 5`` was
    accepted and marked every tested cell significant)."""
    try:
        return summary.check_alpha(float(text))
    except ValueError:  # not a number, or not in (0, 1)
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}") from None


def parse_args(argv=None) -> argparse.Namespace:
    """The CLI arguments (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input_dir", required=True, help="DomainBed sweep output folder")
    p.add_argument("--output_dir", default=None, help="default: <input_dir>/report")
    p.add_argument("--selection", nargs="+", default=["iid"], choices=sorted(trials.SELECTION_METHODS),
                   help="model selection: iid = training-domain validation (default), "
                        "loo = leave-one-domain-out, oracle = test-domain validation")
    p.add_argument("--baseline", default=trials.DEFAULT_BASELINE,
                   help="algorithm the Wilcoxon tests compare against (default ERM)")
    p.add_argument("--algorithms", nargs="+", default=None,
                   help="these columns only, in this order (default: every algorithm of the "
                        "sweep; a control arm is named <algorithm>-single)")
    p.add_argument("--alpha", type=_alpha, default=summary.DEFAULT_ALPHA,
                   help="significance level of the Wilcoxon tests, in (0, 1) (default 0.05)")
    p.add_argument("--no_figures", action="store_true", help="skip the box plots")
    return p.parse_args(argv)


def main(argv=None) -> list[Path]:
    """Run the report; return the files written."""
    args = parse_args(argv)
    register()  # DomainBed importable, our algorithms and datasets known
    input_dir = Path(args.input_dir)
    if not input_dir.is_dir():
        sys.exit(f"error: --input_dir {input_dir} is not a folder")
    out_dir = Path(args.output_dir) if args.output_dir else input_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    records = rec.load_records(input_dir)
    print(f"Total records: {len(records)}")
    if not len(records):
        sys.exit(f"error: no results.jsonl records under {input_dir}")
    incomplete = rec.incomplete_runs(input_dir)
    if incomplete:
        print(f"Warning: {len(incomplete)} run folder(s) without a 'done' file (incomplete); "
              f"their records are used as collect_results does: {', '.join(incomplete[:5])}"
              + (" ..." if len(incomplete) > 5 else ""))
    written: list[Path] = []
    for key in args.selection:
        method = trials.selection_method(key)
        per_trial = trials.per_trial_accuracies(records, method)
        path = out_dir / f"per_trial_{key}.csv"
        per_trial.assign(selection=method.name).to_csv(path, index=False, float_format="%.10g")
        written.append(path)
        if per_trial.empty:
            print(f"\n-------- model selection: {method.name}\n"
                  "No cell: no (dataset, algorithm, test env, trial) group has a selectable "
                  "single-test-env run.")
            continue
        for table in summary.tables(per_trial, method.name, args.baseline, args.alpha,
                                records=records, algorithms=args.algorithms):
            print()
            print(fmt.to_text(table), end="")
            stem = out_dir / f"{table.dataset}_{key}"
            for style, ext in FILES.items():
                path = Path(f"{stem}.{ext}")
                path.write_text(fmt.render(table, style), encoding="utf-8")
                written.append(path)
            path = Path(f"{stem}_cells.csv")
            path.write_text(fmt.cells_csv(table), encoding="utf-8")
            written.append(path)
            if not args.no_figures:
                from ..report import figures  # noqa: PLC0415 - matplotlib only when plotting

                written += figures.save_boxplots(table, Path(f"{stem}_boxplot"))
        written += _control_arms(per_trial, args.algorithms, out_dir / f"control_arms_{key}.csv")
    print(f"\nWrote {len(written)} files to {out_dir}")
    return written


def _control_arms(per_trial, algorithms, path: Path) -> list[Path]:
    """Print and write each method's multi minus single arm, where the sweep has both."""
    shown = per_trial if algorithms is None else per_trial[per_trial["algorithm"].isin(algorithms)]
    frames = [arm_differences(sub).assign(dataset=ds) for ds, sub in shown.groupby("dataset")]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return []
    arms = pd.concat(frames, ignore_index=True)
    arms = arms[["dataset"] + [c for c in arms.columns if c != "dataset"]]
    print("\nControl (paper Fig. 4): multi minus single arm, accuracy points, paired by target "
          "and trial seed; two-sided paired Wilcoxon p")
    for r in arms.itertuples(index=False):
        p = "-" if pd.isna(r.wilcoxon_p) else f"{r.wilcoxon_p:.3f}"
        print(f"  {r.dataset} {r.algorithm} {r.target}: {r.mean_diff:+.1f} "
              f"({r.min_diff:+.1f} to {r.max_diff:+.1f}; multi ahead in {r.multi_ahead} of "
              f"{r.n_pairs}; p {p})")
    arms.to_csv(path, index=False, float_format="%.10g")
    return [path]


if __name__ == "__main__":
    main()
