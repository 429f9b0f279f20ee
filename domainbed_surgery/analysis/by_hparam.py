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

from ..report import tables as rep

COLUMNS = ["hparam", "value", "algorithm", "test_env", "n", "acc_mean", "acc_std",
           "gap_mean", "gap_std", "n_pairs", "agreement", "cosine"]


def _key(value) -> str:
    """A hashable, printable form of an hparam value (lists and dicts included)."""
    return str(value)


def summarize_by_hparam(records, hparam: str, selection: str = "iid",
                        algorithms: Optional[Sequence[str]] = None,
                        test_env: Optional[int] = None, baseline: str = "ERM") -> pd.DataFrame:
    """One row per (hparam value, algorithm, test env) of single-test-env runs.

    ``acc_*``: selected test accuracy (%) over trial seeds (std ddof=1); ``gap_*``: the
    paired difference to ``baseline`` at the same value and trial seed (NaN for the
    baseline itself or without pairs).
    """
    records = [r for r in records
               if len(r["args"]["test_envs"]) == 1
               and (test_env is None or r["args"]["test_envs"][0] == test_env)
               and (algorithms is None or r["args"]["algorithm"] in algorithms)]
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(_key((r.get("hparams") or {}).get(hparam)), []).append(r)
    method = rep.selection_method(selection)
    rows = []
    for value, recs in groups.items():
        per_trial = rep.per_trial_accuracies(recs, method)
        for (alg, env), sub in per_trial.groupby(["algorithm", "test_env"]):
            accs = sub.set_index("trial_seed")["acc"]
            base = per_trial[(per_trial["algorithm"] == baseline) & (per_trial["test_env"] == env)]
            paired = accs - base.set_index("trial_seed")["acc"]
            paired = paired.dropna() if alg != baseline else paired.iloc[0:0]
            diag = [r for r in recs if r["args"]["algorithm"] == alg
                    and r["args"]["test_envs"][0] == env]
            rows.append({
                "hparam": hparam, "value": value, "algorithm": alg, "test_env": env,
                "n": len(accs), "acc_mean": accs.mean(),
                "acc_std": accs.std(ddof=1) if len(accs) > 1 else math.nan,
                "gap_mean": paired.mean() if len(paired) else math.nan,
                "gap_std": paired.std(ddof=1) if len(paired) > 1 else math.nan,
                "n_pairs": len(paired),
                "agreement": _mean(diag, "agreement"), "cosine": _mean(diag, "cosine"),
            })
    frame = pd.DataFrame(rows, columns=COLUMNS)
    order = {v: i for i, v in enumerate(_sorted_values(frame["value"].unique()))}
    return frame.sort_values(["value", "algorithm", "test_env"],
                             key=lambda c: c.map(order) if c.name == "value" else c,
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
