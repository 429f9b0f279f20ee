"""Runs that differ in one hparam (e.g. ``batch_size``), side by side: accuracy, gap to a
baseline, and the gradient diagnostics the surgery algorithms log.

Pure computation on DomainBed records (no plotting). For each value of the hparam the
records are selected like the report does (a DomainBed selection method, per trial
seed), so runs of different values are never pooled; ``agreement`` and ``cosine`` are
the means over every checkpoint record of those runs (each record already averages
the steps since the previous checkpoint).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import pandas as pd

from ..report import trials

COLUMNS = ["hparam", "value", "algorithm", "test_env", "n", "acc_mean", "acc_std",
           "gap_mean", "gap_std", "n_pairs", "agreement", "cosine"]
PER_TRIAL_COLUMNS = ["hparam", "value", "algorithm", "test_env", "trial_seed", "acc",
                     "agreement", "cosine"]


def _key(value) -> str:
    """A hashable, printable form of an hparam value (lists and dicts included)."""
    return str(value)


def per_trial_by_hparam(records, hparam: str, selection: str = "iid",
                        algorithms: Optional[Sequence[str]] = None,
                        test_env: Optional[int] = None) -> pd.DataFrame:
    """One row per (hparam value, algorithm, test env, trial seed) of single-test-env runs:
    the selected test accuracy (%) and the run's mean ``agreement`` and ``cosine`` over its
    checkpoint records (NaN for algorithms that log none)."""
    records = [r for r in map(trials.with_arm_label, records)  # control arm: "<name>-single"
               if len(r["args"]["test_envs"]) == 1
               and (test_env is None or r["args"]["test_envs"][0] == test_env)
               and (algorithms is None or r["args"]["algorithm"] in algorithms)]
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(_key((r.get("hparams") or {}).get(hparam)), []).append(r)
    method = trials.selection_method(selection)
    rows = []
    for value, recs in groups.items():
        for row in trials.per_trial_accuracies(recs, method).itertuples(index=False):
            run = [r for r in recs if r["args"]["algorithm"] == row.algorithm
                   and r["args"]["test_envs"][0] == row.test_env
                   and r["args"].get("trial_seed", 0) == row.trial_seed]
            rows.append({"hparam": hparam, "value": value, "algorithm": row.algorithm,
                         "test_env": row.test_env, "trial_seed": row.trial_seed, "acc": row.acc,
                         "agreement": _mean(run, "agreement"), "cosine": _mean(run, "cosine")})
    return _in_value_order(pd.DataFrame(rows, columns=PER_TRIAL_COLUMNS),
                           ["value", "algorithm", "test_env", "trial_seed"])


def summarize_per_trial(per_trial: pd.DataFrame, baseline: str = "ERM") -> pd.DataFrame:
    """One row per (hparam value, algorithm, test env) from :func:`per_trial_by_hparam`'s rows.

    ``acc_*``: selected test accuracy (%) over trial seeds (std ddof=1); ``gap_*``: the
    paired difference to ``baseline`` at the same value and trial seed (NaN for the
    baseline itself or without pairs); ``agreement``/``cosine``: means over the trials.
    """
    rows = []
    for (hparam, value, alg, env), sub in per_trial.groupby(
            ["hparam", "value", "algorithm", "test_env"], sort=False):
        accs = sub.set_index("trial_seed")["acc"]
        base = per_trial[(per_trial["value"] == value) & (per_trial["algorithm"] == baseline)
                         & (per_trial["test_env"] == env)]
        paired = accs - base.set_index("trial_seed")["acc"]
        paired = paired.dropna() if alg != baseline else paired.iloc[0:0]
        rows.append({
            "hparam": hparam, "value": value, "algorithm": alg, "test_env": env,
            "n": len(accs), "acc_mean": accs.mean(),
            "acc_std": accs.std(ddof=1) if len(accs) > 1 else math.nan,
            "gap_mean": paired.mean() if len(paired) else math.nan,
            "gap_std": paired.std(ddof=1) if len(paired) > 1 else math.nan,
            "n_pairs": len(paired),
            "agreement": sub["agreement"].mean(), "cosine": sub["cosine"].mean(),
        })
    return _in_value_order(pd.DataFrame(rows, columns=COLUMNS), ["value", "algorithm", "test_env"])


def summarize_by_hparam(records, hparam: str, selection: str = "iid",
                        algorithms: Optional[Sequence[str]] = None,
                        test_env: Optional[int] = None, baseline: str = "ERM") -> pd.DataFrame:
    """:func:`summarize_per_trial` of :func:`per_trial_by_hparam`."""
    return summarize_per_trial(per_trial_by_hparam(records, hparam, selection, algorithms, test_env),
                               baseline)


def _in_value_order(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """``frame`` sorted by ``by``, hparam values numerically where they are numbers."""
    order = {v: i for i, v in enumerate(_sorted_values(frame["value"].unique()))}
    return frame.sort_values(by, key=lambda c: c.map(order) if c.name == "value" else c,
                             ignore_index=True)


def _mean(records, key: str) -> float:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return sum(values) / len(values) if values else math.nan


def _sorted_values(values) -> list:
    """Numeric order when every value is a number, else text order."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)
