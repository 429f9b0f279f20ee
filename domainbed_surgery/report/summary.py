"""Statistics of a table: per-cell summaries, the paired Wilcoxon test, the :class:`Table`.

:func:`summarize` gives one row per table cell: mean, sample std (ddof=1), n, the paired
Wilcoxon signed-rank p-value against the baseline, best/significant flags, and a note
that says in words why a cell or a test is missing; with the sweep's records the table
also gets its :func:`~.protocol.protocol`. Pure computation: formatters are in
:mod:`.format`, figures in :mod:`.figures`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .protocol import Protocol, mixed_note, protocol
from .trials import AVG, DEFAULT_BASELINE, algorithm_order, environments

DEFAULT_ALPHA = 0.05
#: Decimals shown in cells; "best" is decided on the shown (rounded) mean so ties are all marked.
DECIMALS = 1


def check_alpha(alpha: float) -> float:
    """``alpha`` if it is a significance level, in (0, 1); else ValueError: alpha 5 would
    mark every tested cell significant, alpha 0 none (and :func:`min_pairs_for` never end)."""
    if not 0.0 < alpha < 1.0:  # NaN fails too
        raise ValueError(f"alpha must be in (0, 1), got {alpha:g}")
    return alpha


def min_pairs_for(alpha: float = DEFAULT_ALPHA) -> int:
    """Fewest non-zero paired differences whose best exact two-sided p (2/2^n) is < alpha."""
    check_alpha(alpha)
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
    protocol: Optional[Protocol] = field(repr=False, default=None)
    #: The dataset's target domains that no run of the sweep held out (not shown as rows).
    omitted_targets: list[str] = field(default_factory=list)

    def cell(self, target: str, algorithm: str) -> pd.Series:
        """The summary row of one cell."""
        c = self.cells
        return c[(c["target"] == target) & (c["algorithm"] == algorithm)].iloc[0]


CELL_COLUMNS = ["dataset", "algorithm", "target", "mean", "std", "n", "trials",
                "p_value", "n_pairs", "significant", "best", "mixed", "note"]


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
              targets: Optional[Sequence[str]] = None, records=None) -> Table:
    """Per-cell statistics of one dataset's table.

    Rows are the dataset's target domains plus ``Avg`` (per trial seed, the mean over all
    target domains; then mean/std over the trial seeds that have every domain). Cells hold
    mean and sample std (ddof=1) over trial seeds, n, and the paired Wilcoxon p-value
    against ``baseline`` (paired by trial seed). ``best`` marks the highest rounded mean in
    a row; ``significant`` marks p < ``alpha``. With the sweep's ``records`` the table
    gets its :func:`protocol`, and ``mixed`` (plus a note) marks cells whose runs mix
    protocols: their mean pools runs that were not run alike.
    """
    check_alpha(alpha)
    pt = per_trial[per_trial["dataset"] == dataset]
    omitted: list[str] = []
    if targets is None:
        targets = environments(dataset)
        swept = [t for t in targets if t in set(pt["target"])]
        if swept and len(swept) < len(targets):  # a sweep of some targets only
            omitted = [t for t in targets if t not in swept]
            targets = swept
    targets = list(targets)
    if not targets:
        targets = [str(e) for e in sorted(pt["test_env"].unique())]
    algorithms = list(algorithms) if algorithms is not None else algorithm_order(
        pt["algorithm"].unique(), baseline)
    values = _trial_values(pt, targets)
    have_baseline = baseline is not None and baseline in algorithms
    proto = protocol(records, dataset, targets, algorithms) if records is not None else None
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
                   "best": False, "mixed": False, "note": ""}
            notes = []
            mixed = proto.mixed.get((alg, target)) if proto is not None else None
            if mixed and n:
                row["mixed"] = True
                notes.append(mixed_note(mixed))
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
                 alpha=alpha, cells=cells, per_trial=pt, protocol=proto,
                 omitted_targets=omitted)


def tables(per_trial: pd.DataFrame, selection: str = "", baseline: Optional[str] = DEFAULT_BASELINE,
           alpha: float = DEFAULT_ALPHA, records=None,
           algorithms: Optional[Sequence[str]] = None) -> list[Table]:
    """One :class:`Table` per dataset in ``per_trial``, datasets in sorted order (with
    their protocol when the sweep's ``records`` are given); ``algorithms``: these columns
    only, in this order (default: every algorithm of the sweep, baseline first)."""
    out = []
    for ds in sorted(per_trial["dataset"].unique()):
        pt = per_trial[per_trial["dataset"] == ds]
        cols = None if algorithms is None else [a for a in algorithms
                                                 if a in set(pt["algorithm"])]
        if cols == []:
            continue
        out.append(summarize(per_trial, ds, selection, baseline, alpha, algorithms=cols,
                             records=records))
    return out
