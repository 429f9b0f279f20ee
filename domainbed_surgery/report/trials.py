"""Per-trial data of a sweep: the test accuracy DomainBed's selection methods pick.

:func:`per_trial_accuracies` gives one row per (dataset, algorithm, target domain, trial
seed), computed with DomainBed's own ``reporting.get_grouped_records`` and
``SelectionMethod.sweep_acc`` exactly as ``domainbed/scripts/collect_results.py`` does;
:func:`algorithm_order` orders the columns and a control arm is labelled
``<name>-single``. DomainBed is imported inside the functions: the caller (a script)
makes it importable and registers our names first (``domainbed_surgery.register()``).
"""

from __future__ import annotations

from typing import Iterable, Optional

import pandas as pd

from .. import dataset_info

#: Short CLI names for DomainBed's selection methods (class names in ``domainbed.model_selection``).
SELECTION_METHODS = {
    "iid": "IIDAccuracySelectionMethod",
    "loo": "LeaveOneOutSelectionMethod",
    "oracle": "OracleSelectionMethod",
}
#: The row of a table that averages the target domains (per trial seed).
AVG = "Avg"
DEFAULT_BASELINE = "ERM"
#: Suffix of the control arm's column (hparam ``surgery_batches: single``, paper Fig. 4).
SINGLE_DOMAIN_SUFFIX = "-single"

PER_TRIAL_COLUMNS = ["dataset", "algorithm", "test_env", "target", "trial_seed", "acc"]


def selection_method(key: str):
    """DomainBed's selection-method class for ``key`` ('iid', 'loo' or 'oracle')."""
    from domainbed import model_selection  # noqa: PLC0415 - DomainBed is optional at import

    try:
        return getattr(model_selection, SELECTION_METHODS[key])
    except KeyError:
        raise ValueError(f"unknown selection {key!r}; choose from {sorted(SELECTION_METHODS)}")


def environments(dataset: str) -> list[str]:
    """Target-domain names of ``dataset`` (its ``ENVIRONMENTS``), or [] if DomainBed does not know it."""
    return dataset_info.environments(dataset) or []


def algorithm_order(names: Iterable[str], baseline: Optional[str] = DEFAULT_BASELINE) -> list[str]:
    """Baseline first, then DomainBed's ``ALGORITHMS`` order (as collect_results), then the rest;
    a control arm ``<name>-single`` right after ``<name>``."""
    names = set(names)
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


def with_arm_label(record: dict) -> dict:
    """The record, its algorithm renamed ``<name>-single`` if it ran the single-domain control.

    So a sweep with both arms of the paper's control experiment shows them side by side.
    Idempotent: a record already labelled keeps its label.
    """
    if (record.get("hparams") or {}).get("surgery_batches") != "single" \
            or record["args"]["algorithm"].endswith(SINGLE_DOMAIN_SUFFIX):
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
    reported as missing by :func:`~.summary.summarize`.
    """
    from domainbed.lib import reporting  # noqa: PLC0415
    from domainbed.lib.query import Q  # noqa: PLC0415

    if isinstance(method, str):
        method = selection_method(method)
    records = Q([with_arm_label(r) for r in records])
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
