"""Paper-style results (Mansilla et al., ICCV 2021, Table 1 / Fig. 3) from a DomainBed sweep.

Pure computation only, no formatting or plotting:

* :func:`per_trial_accuracies` - one row per (dataset, algorithm, target domain, trial
  seed): the test accuracy (%) that a DomainBed model-selection method picks, computed
  with DomainBed's own ``reporting.get_grouped_records`` and ``SelectionMethod.sweep_acc``
  exactly as ``domainbed/scripts/collect_results.py`` does;
* :func:`summarize` - one row per table cell: mean, sample std (ddof=1), n, the paired
  Wilcoxon signed-rank p-value against the baseline, best/significant flags and a note
  that says in words why a cell or a test is missing.

Formatters live in :mod:`.report_format`, figures in :mod:`.figures`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from . import locate

#: Short CLI names for DomainBed's selection methods (class names in ``domainbed.model_selection``).
SELECTION_METHODS = {
    "iid": "IIDAccuracySelectionMethod",
    "loo": "LeaveOneOutSelectionMethod",
    "oracle": "OracleSelectionMethod",
}
AVG = "Avg"
DEFAULT_BASELINE = "ERM"
DEFAULT_ALPHA = 0.05
#: Decimals shown in cells; "best" is decided on the shown (rounded) mean so ties are all marked.
DECIMALS = 1

PER_TRIAL_COLUMNS = ["dataset", "algorithm", "test_env", "target", "trial_seed", "acc"]


def selection_method(key: str):
    """DomainBed's selection-method class for ``key`` ('iid', 'loo' or 'oracle')."""
    locate.ensure_importable()
    from domainbed import model_selection  # noqa: PLC0415 - DomainBed is optional at import

    try:
        return getattr(model_selection, SELECTION_METHODS[key])
    except KeyError:
        raise ValueError(f"unknown selection {key!r}; choose from {sorted(SELECTION_METHODS)}")


def load_records(input_dir: str):
    """All records of a sweep folder, as DomainBed's ``reporting.load_records`` reads them,
    but a broken line is skipped with a warning naming file and line (:mod:`.records`)."""
    from .records import load_records as tolerant  # noqa: PLC0415

    return tolerant(input_dir)


def incomplete_runs(input_dir: str) -> list[str]:
    """Run folders with a ``results.jsonl`` but no ``done`` file (still running or crashed).

    DomainBed's loader uses their records anyway; the report says how many there are.
    """
    root = Path(input_dir)
    return sorted(d.name for d in root.iterdir()
                  if (d / "results.jsonl").is_file() and not (d / "done").exists())


def environments(dataset: str) -> list[str]:
    """Target-domain names of ``dataset`` (its ``ENVIRONMENTS``), or env indices if unknown."""
    locate.ensure_importable()
    from domainbed import datasets  # noqa: PLC0415

    try:
        return [str(e) for e in datasets.get_dataset_class(dataset).ENVIRONMENTS]
    except NotImplementedError:
        return []


def algorithm_order(names: Iterable[str], baseline: Optional[str] = DEFAULT_BASELINE) -> list[str]:
    """Baseline first, then DomainBed's ``ALGORITHMS`` order (as collect_results), then the rest;
    a control arm ``<name>-single`` right after ``<name>``."""
    names = set(names)
    locate.ensure_importable()
    from domainbed import algorithms  # noqa: PLC0415

    order = [n for n in algorithms.ALGORITHMS if n in names]
    order += sorted(n for n in names if n not in order and not n.endswith(SINGLE_DOMAIN_SUFFIX))
    for arm in sorted(n for n in names if n.endswith(SINGLE_DOMAIN_SUFFIX)):
        base = arm[:-len(SINGLE_DOMAIN_SUFFIX)]
        order.insert(order.index(base) + 1 if base in order else len(order), arm)
    if baseline in order:
        order.remove(baseline)
        order.insert(0, baseline)
    return order


#: Suffix of the control arm's column (hparam ``surgery_batches: single``, paper Fig. 4).
SINGLE_DOMAIN_SUFFIX = "-single"


def _with_arm_label(record: dict) -> dict:
    """The record, its algorithm renamed ``<name>-single`` if it ran the single-domain control.

    So a sweep with both arms of the paper's control experiment shows them side by side.
    """
    if (record.get("hparams") or {}).get("surgery_batches") != "single":
        return record
    args = dict(record["args"], algorithm=record["args"]["algorithm"] + SINGLE_DOMAIN_SUFFIX)
    return dict(record, args=args)


def per_trial_accuracies(records, method) -> pd.DataFrame:
    """Selected test accuracy (%) per (dataset, algorithm, test_env, trial_seed).

    ``records`` is a DomainBed ``Q`` of records (or a list of dicts); ``method`` a DomainBed
    selection-method class or its short key. Groups are built by
    ``reporting.get_grouped_records`` and scored by ``method.sweep_acc`` like collect_results,
    so only single-test-env runs provide the test accuracy (two-test-env runs only serve as
    validation for leave-one-domain-out). Groups with no selectable run are dropped here and
    reported as missing by :func:`summarize`.
    """
    locate.ensure_importable()
    from domainbed.lib import reporting  # noqa: PLC0415
    from domainbed.lib.query import Q  # noqa: PLC0415

    if isinstance(method, str):
        method = selection_method(method)
    records = Q([_with_arm_label(r) for r in records])
    rows = []
    env_names: dict[str, list[str]] = {}
    for group in reporting.get_grouped_records(records):
        acc = method.sweep_acc(group["records"])
        if acc is None:
            continue
        ds = group["dataset"]
        names = env_names.setdefault(ds, environments(ds))
        env = group["test_env"]
        rows.append({
            "dataset": ds,
            "algorithm": group["algorithm"],
            "test_env": env,
            "target": names[env] if env < len(names) else str(env),
            "trial_seed": group["trial_seed"],
            "acc": 100.0 * float(acc),
        })
    frame = pd.DataFrame(rows, columns=PER_TRIAL_COLUMNS)
    return frame.sort_values(["dataset", "algorithm", "test_env", "trial_seed"],
                             ignore_index=True)


def min_pairs_for(alpha: float = DEFAULT_ALPHA) -> int:
    """Fewest non-zero paired differences whose best exact two-sided p (2/2^n) is < alpha."""
    n = 1
    while 2.0 / 2 ** n >= alpha:
        n += 1
    return n


@dataclass
class Test:
    """A paired Wilcoxon signed-rank test of one cell against the baseline."""

    p_value: float = math.nan
    n_pairs: int = 0
    note: str = ""


def wilcoxon_vs_baseline(values: pd.Series, baseline: pd.Series,
                         alpha: float = DEFAULT_ALPHA) -> Test:
    """Paired two-sided Wilcoxon signed-rank test, pairs matched on the index (trial seed).

    Uses ``scipy.stats.wilcoxon`` with its defaults (zero differences dropped). The note
    explains an untestable or unreachable comparison instead of leaving it blank.
    """
    from scipy import stats  # noqa: PLC0415

    paired = pd.concat([values.rename("a"), baseline.rename("b")], axis=1, join="inner")
    n = len(paired)
    unpaired = len(values.index.symmetric_difference(baseline.index))
    extra = f"; {unpaired} unpaired trial(s) left out" if unpaired else ""
    if n == 0:
        return Test(note=f"no trial seed shared with the baseline{extra}")
    diffs = paired["a"].to_numpy() - paired["b"].to_numpy()
    nonzero = int(np.count_nonzero(diffs))
    if nonzero == 0:
        return Test(p_value=1.0, n_pairs=n,
                    note=f"n={n}: identical to the baseline on every pair{extra}")
    p = float(stats.wilcoxon(paired["a"].to_numpy(), paired["b"].to_numpy()).pvalue)
    need = min_pairs_for(alpha)
    if nonzero < need:
        zeros = f" ({n - nonzero} zero difference(s) dropped)" if nonzero < n else ""
        return Test(p_value=p, n_pairs=n,
                    note=f"n={nonzero}{zeros}: too few pairs for p<{alpha:g}{extra}")
    return Test(p_value=p, n_pairs=n, note=extra.lstrip("; "))


@dataclass
class Table:
    """Everything a formatter needs for one (dataset, selection method) table."""

    dataset: str
    selection: str
    targets: list[str]
    algorithms: list[str]
    baseline: Optional[str]
    alpha: float
    cells: pd.DataFrame
    per_trial: pd.DataFrame = field(repr=False, default=None)

    def cell(self, target: str, algorithm: str) -> pd.Series:
        """The summary row of one cell."""
        c = self.cells
        return c[(c["target"] == target) & (c["algorithm"] == algorithm)].iloc[0]


CELL_COLUMNS = ["dataset", "algorithm", "target", "mean", "std", "n", "trials",
                "p_value", "n_pairs", "significant", "best", "note"]


def _trial_values(per_trial: pd.DataFrame, targets: Sequence[str]):
    """{(algorithm, target): Series acc indexed by trial_seed}, incl. the per-trial Avg."""
    out = {}
    for alg, sub in per_trial.groupby("algorithm"):
        wide = sub.pivot_table(index="trial_seed", columns="target", values="acc")
        for t in targets:
            out[(alg, t)] = wide[t].dropna() if t in wide else pd.Series(dtype=float)
        complete = wide.reindex(columns=list(targets)).dropna()
        out[(alg, AVG)] = complete.mean(axis=1)
        out[(alg, "_incomplete")] = len(wide) - len(complete)
    return out


def summarize(per_trial: pd.DataFrame, dataset: str, selection: str = "",
              baseline: Optional[str] = DEFAULT_BASELINE, alpha: float = DEFAULT_ALPHA,
              algorithms: Optional[Sequence[str]] = None,
              targets: Optional[Sequence[str]] = None) -> Table:
    """Per-cell statistics of one dataset's table.

    Rows are the dataset's target domains plus ``Avg`` (per trial seed, the mean over all
    target domains; then mean/std over the trial seeds that have every domain). Cells hold
    mean and sample std (ddof=1) over trial seeds, n, and the paired Wilcoxon p-value
    against ``baseline`` (paired by trial seed). ``best`` marks the highest rounded mean in
    a row; ``significant`` marks p < ``alpha``.
    """
    pt = per_trial[per_trial["dataset"] == dataset]
    targets = list(targets) if targets is not None else environments(dataset)
    if not targets:
        targets = [str(e) for e in sorted(pt["test_env"].unique())]
    algorithms = list(algorithms) if algorithms is not None else algorithm_order(
        pt["algorithm"].unique(), baseline)
    values = _trial_values(pt, targets)
    have_baseline = baseline is not None and baseline in algorithms
    rows = []
    for target in targets + [AVG]:
        for alg in algorithms:
            v = values.get((alg, target), pd.Series(dtype=float))
            n = len(v)
            row = {"dataset": dataset, "algorithm": alg, "target": target,
                   "mean": float(v.mean()) if n else math.nan,
                   "std": float(v.std(ddof=1)) if n > 1 else math.nan,
                   "n": n, "trials": ",".join(str(s) for s in sorted(v.index)),
                   "p_value": math.nan, "n_pairs": 0, "significant": False,
                   "best": False, "note": ""}
            notes = []
            if n == 0:
                if target == AVG and (alg, target) in values:
                    notes.append("missing: no trial seed has a result for every target domain")
                else:
                    notes.append("missing: no selectable single-test-env run in the sweep")
            elif n == 1:
                notes.append("n=1: std undefined")
            if target == AVG and values.get((alg, "_incomplete")):
                notes.append(f"{values[(alg, '_incomplete')]} trial seed(s) without every "
                             "target domain left out of Avg")
            if n and alg != baseline:
                if not have_baseline:
                    notes.append(f"no test: baseline {baseline} not in the sweep")
                else:
                    base = values.get((baseline, target), pd.Series(dtype=float))
                    test = wilcoxon_vs_baseline(v, base, alpha)
                    row.update(p_value=test.p_value, n_pairs=test.n_pairs,
                               significant=bool(test.p_value < alpha))
                    if test.note:
                        notes.append(test.note)
            row["note"] = "; ".join(notes)
            rows.append(row)
    cells = pd.DataFrame(rows, columns=CELL_COLUMNS)
    rounded = cells["mean"].round(DECIMALS)
    best = rounded.groupby(cells["target"]).transform("max")
    contenders = rounded.notna().groupby(cells["target"]).transform("sum")
    # A "best" mark needs something to beat: rows with fewer than two results get none.
    cells["best"] = rounded.notna() & (rounded == best) & (contenders >= 2)
    return Table(dataset=dataset, selection=selection, targets=targets,
                 algorithms=algorithms, baseline=baseline if have_baseline else None,
                 alpha=alpha, cells=cells, per_trial=pt)


def tables(per_trial: pd.DataFrame, selection: str = "", baseline: Optional[str] = DEFAULT_BASELINE,
           alpha: float = DEFAULT_ALPHA) -> list[Table]:
    """One :class:`Table` per dataset in ``per_trial``, datasets in sorted order."""
    return [summarize(per_trial, ds, selection, baseline, alpha)
            for ds in sorted(per_trial["dataset"].unique())]
