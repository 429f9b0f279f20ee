"""The paper's Fig. 4 control in numbers: each method's multi-domain arm minus its
single-domain arm (``<name>-single``), paired by target and trial seed.

Both arms of a pair share the target, the trial seed (so the data split) and every hparam
but ``surgery_batches``; the paired difference isolates what building the N gradients from
N domains, rather than from N batches of one domain, changes.
"""

from __future__ import annotations

import pandas as pd
from scipy import stats

from ..report.trials import AVG, SINGLE_DOMAIN_SUFFIX

__all__ = ["ARM_COLUMNS", "arm_differences"]

ARM_COLUMNS = ["algorithm", "target", "n_pairs", "mean_diff", "min_diff", "max_diff",
               "multi_ahead", "wilcoxon_p"]


def arm_differences(per_trial: pd.DataFrame) -> pd.DataFrame:
    """Multi minus single arm, in accuracy points, per method and target, and ``Avg``
    (per trial seed the mean over the targets both arms have for every target).

    ``per_trial``: the report's per-trial rows (``algorithm``, ``target``, ``trial_seed``,
    ``acc``). One row per (method, target) with both arms: the number of pairs, the mean,
    smallest and largest difference, how many pairs favour the multi arm, and the
    two-sided paired Wilcoxon p (NaN with fewer than 2 non-zero differences).
    """
    arms = sorted(a[:-len(SINGLE_DOMAIN_SUFFIX)] for a in per_trial["algorithm"].unique()
                  if a.endswith(SINGLE_DOMAIN_SUFFIX))
    rows = []
    for name in arms:
        both = per_trial[per_trial["algorithm"].isin([name, name + SINGLE_DOMAIN_SUFFIX])]
        wide = both.pivot_table(index=["target", "trial_seed"], columns="algorithm",
                                values="acc").dropna()
        if wide.empty:
            continue
        diff = wide[name] - wide[name + SINGLE_DOMAIN_SUFFIX]
        by_target = {t: diff.xs(t, level="target") for t in diff.index.unique("target")}
        targets = sorted(by_target)
        complete = [s for s in diff.index.unique("trial_seed")
                    if all(s in by_target[t].index for t in targets)]
        if complete:
            by_target[AVG] = pd.Series({s: sum(by_target[t][s] for t in targets) / len(targets)
                                        for s in complete})
        for target, d in by_target.items():
            p = None
            if (d != 0).sum() >= 2:
                p = float(stats.wilcoxon(d.to_numpy()).pvalue)
            rows.append({"algorithm": name, "target": target, "n_pairs": len(d),
                         "mean_diff": d.mean(), "min_diff": d.min(), "max_diff": d.max(),
                         "multi_ahead": int((d > 0).sum()), "wilcoxon_p": p})
    return pd.DataFrame(rows, columns=ARM_COLUMNS)
