"""Plot gradient agreement and cosine over training from a DomainBed sweep folder.

::

    python -m domainbed_surgery.scripts.agreement_curves --input_dir SWEEP [--output_dir DIR]
        [--per_layer [--layer_regex REGEX]]

Reads every ``SWEEP/*/results.jsonl`` as DomainBed's ``reporting.load_records`` does (a
broken line is skipped with a warning naming file and line) and writes to
``--output_dir`` (default: ``SWEEP``):

* ``agreement_curves.csv``: dataset, test_env, algorithm, trial_seed, hparams_seed, step,
  agreement, cosine (one row per checkpoint record that has the diagnostics);
* ``agreement_curves.png``/``.pdf``: ``agreement`` (top) and ``cosine`` (bottom) over
  ``step``, one line per algorithm (mean over trials and hparams, band ±1 std), one
  column per (dataset, target domain).

The values are the diagnostics the surgery algorithms return from ``update``, averaged
by ``train.py`` over the steps since the previous checkpoint. Algorithms whose records
lack them (ERM, ...) are skipped with a note; exit status 1 if no record has them.

``--per_layer``: also ``agreement_per_layer.csv`` and ``.png``/``.pdf`` from keys
``agreement/<layer>``, one row of panels per layer group (a name without its
``.weight``/``.bias`` suffix). Those keys exist only if the algorithms emit them in
their diagnostics; this script does not compute them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Optional, Sequence

from ..analysis import curves


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m domainbed_surgery.scripts.agreement_curves",
        description="Gradient sign agreement / domain-gradient cosine over training, "
                    "from a DomainBed sweep folder.")
    parser.add_argument("--input_dir", required=True, help="DomainBed sweep output folder")
    parser.add_argument("--output_dir", default=None, help="default: --input_dir")
    parser.add_argument("--per_layer", action="store_true",
                        help="also plot agreement/<layer> keys, if the records have any")
    parser.add_argument("--layer_regex", default=None,
                        help="with --per_layer: only layers whose name matches (re.search)")
    return parser.parse_args(argv)


def load(input_dir: str) -> list:
    """All records under ``input_dir`` (registers our names first; a broken line is skipped
    with a warning naming file and line, see :mod:`domainbed_surgery.report.records`)."""
    import domainbed_surgery  # noqa: PLC0415
    from ..report import records  # noqa: PLC0415

    domainbed_surgery.register()
    return list(records.load_records(input_dir))


def env_names(datasets_seen) -> dict:
    """``{dataset: ENVIRONMENTS}`` for the datasets DomainBed knows (for panel titles)."""
    from .. import dataset_info  # noqa: PLC0415

    found = {name: dataset_info.environments(name) for name in datasets_seen}
    return {name: envs for name, envs in found.items() if envs is not None}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not os.path.isdir(args.input_dir):
        print(f"error: {args.input_dir} is not a folder", file=sys.stderr)
        return 2
    records = load(args.input_dir)
    if not records:
        print(f"No results.jsonl records under {args.input_dir} (expected a DomainBed sweep "
              "folder: one sub-folder per run, each with results.jsonl).")
        return 1
    frame, layers, skipped = curves.records_to_frames(records)
    for algorithm, n in sorted(skipped.items(), key=lambda kv: str(kv[0])):
        print(f"note: skipping {algorithm} ({n} records): no 'agreement'/'cosine' "
              "diagnostics in its records (only the gradient-surgery algorithms log them).")
    if frame.empty:
        print(f"No record under {args.input_dir} has gradient diagnostics ('agreement' or "
              "'cosine'): nothing to plot. They are logged by AgrSum, AgrRand and PCGrad "
              "(domainbed_surgery); run the sweep with one of those algorithms.")
        return 1

    output_dir = args.output_dir or args.input_dir
    os.makedirs(output_dir, exist_ok=True)
    names = env_names(frame["dataset"].unique())
    csv_path = os.path.join(output_dir, "agreement_curves.csv")
    frame.to_csv(csv_path, index=False)
    written = [csv_path] + curves.plot_curves(
        frame, os.path.join(output_dir, "agreement_curves"), names)

    if args.per_layer:
        if args.layer_regex:
            layers = layers[layers["layer"].map(lambda n: re.search(args.layer_regex, n)
                                                is not None)]
        if layers.empty:
            print("note: --per_layer: no 'agreement/<layer>' keys in the records"
                  + (f" matching {args.layer_regex!r}" if args.layer_regex else "")
                  + ". Per-layer agreement is plotted only when the algorithms log it in "
                  "their diagnostics; the current ones log only the global 'agreement'.")
        else:
            layer_csv = os.path.join(output_dir, "agreement_per_layer.csv")
            layers.to_csv(layer_csv, index=False)
            written += [layer_csv] + curves.plot_layers(
                layers, os.path.join(output_dir, "agreement_per_layer"), names)

    summary = frame.groupby(["dataset", "test_env", "algorithm"])[list(curves.KEYS)].mean()
    print("mean over all checkpoints and runs:\n" + summary.to_string(float_format="%.4f"))
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
