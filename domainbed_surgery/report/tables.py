"""Paper-style results (Mansilla et al., ICCV 2021, Table 1 / Fig. 3) from a DomainBed sweep.

Pure computation only, no formatting or plotting:

* :func:`per_trial_accuracies` - one row per (dataset, algorithm, target domain, trial
  seed): the test accuracy (%) that a DomainBed model-selection method picks, computed
  with DomainBed's own ``reporting.get_grouped_records`` and ``SelectionMethod.sweep_acc``
  exactly as ``domainbed/scripts/collect_results.py`` does;
* :func:`summarize` - one row per table cell: mean, sample std (ddof=1), n, the paired
  Wilcoxon signed-rank p-value against the baseline, best/significant flags and a note
  that says in words why a cell or a test is missing;
* :func:`protocol` - what a table compared, read from its runs' ``args`` and ``hparams``:
  steps, checkpoint frequency, batch size, backbone and weights, pretrained, data
  augmentation, ``surgery_reduction``, the hparams that differ between algorithms, the
  hparam samples and trials, and the cells whose runs mix protocols (flagged, see
  :func:`summarize`).

Formatters live in :mod:`.format`, figures in :mod:`.figures`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from ..plugin import locate

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


# --- the protocol: what a table compared ------------------------------------------------
#: Protocol items, in the order the report states them.
PROTOCOL_ITEMS = ("steps", "checkpoint_freq", "batch_size", "backbone", "weights", "pretrained",
                  "data_augmentation", "surgery_reduction")
#: Items a DomainBed random search draws per (hparams_seed, trial_seed): values that vary
#: only between hparam samples are the search, not a mix of protocols.
SEARCHED_ITEMS = ("batch_size",)
#: hparams stated by the protocol items (``resnet18``/``resnet50_augmix`` through the weights),
#: so not listed again among the hparams that differ between algorithms.
PROTOCOL_HPARAMS = ("batch_size", "backbone", "pretrained", "data_augmentation",
                    "surgery_reduction", "resnet18", "resnet50_augmix")
#: Shown for an item the records do not hold.
NOT_RECORDED = "not recorded"


def _hashable(value) -> str:
    """A value's JSON text: hparam values may be lists or dicts."""
    return json.dumps(value, sort_keys=True, default=str)


def runs(records) -> list[dict]:
    """One record per run (its first; a run's records share args and hparams)."""
    first: dict[str, dict] = {}
    for r in records:
        first.setdefault(_hashable(r["args"]), r)
    return list(first.values())


def _dataset_class(name: str):
    """DomainBed's dataset class called ``name``, or None if unknown."""
    locate.ensure_importable()
    from domainbed import datasets  # noqa: PLC0415

    try:
        return datasets.get_dataset_class(name)
    except NotImplementedError:
        return None


def _domainbed_input_shape(cls) -> Optional[tuple]:
    """The input shape of a DomainBed dataset class, where knowable without its data."""
    from domainbed import datasets as dbd  # noqa: PLC0415

    shape = getattr(cls, "INPUT_SHAPE", None) or getattr(cls, "input_shape", None)
    if shape is None and issubclass(cls, (dbd.MultipleEnvironmentImageFolder, dbd.WILDSDataset)):
        shape = (3, 224, 224)
    if shape is None and issubclass(cls, dbd.MultipleEnvironmentMNIST):
        shape = (None, 28, 28)
    return tuple(shape) if shape is not None else None


def _domainbed_featurizer(cls, hparams: dict) -> tuple[str, str, Any]:
    """(backbone, weights, pretrained) of DomainBed's own ``networks.Featurizer`` (no ``backbone``)."""
    from ..extras.backbones.imagenet import domainbed_resnet  # noqa: PLC0415

    shape = _domainbed_input_shape(cls) if cls is not None else None
    if shape is None:
        return "DomainBed's default (input shape unknown)", NOT_RECORDED, NOT_RECORDED
    if len(shape) == 1:
        return "DomainBed's MLP", "random init", "n/a"
    if shape[1:3] == (28, 28):
        return "DomainBed's MNIST CNN", "random init", "n/a"
    if shape[1:3] == (32, 32):
        return "DomainBed's Wide ResNet", "random init", "n/a"
    if hparams.get("vit") and hparams.get("dinov2"):
        return "DomainBed's DinoV2", "torch.hub dinov2_vitb14", True
    arch = "resnet18" if hparams.get("resnet18") else "resnet50"
    if "resnet50_augmix" not in hparams:
        return f"DomainBed's ResNet ({arch})", f"{NOT_RECORDED} (no resnet50_augmix hparam)", True
    arch, weights = domainbed_resnet(hparams)
    return f"DomainBed's ResNet ({arch})", str(weights), True


def _featurizer(cls, hparams: dict) -> tuple[str, str, Any]:
    """(backbone, weights, pretrained) of a run, as its hparams determine them."""
    from ..extras.backbones.imagenet import weights_for  # noqa: PLC0415

    name = hparams.get("backbone")
    if name is None:
        return _domainbed_featurizer(cls, hparams)
    weights = weights_for(name, hparams)
    if weights is None:
        return name, "random init", "n/a"
    pretrained = bool(hparams.get("pretrained", True))
    return name, str(weights) if pretrained else "random init", pretrained


def _surgery_algorithms() -> set[str]:
    """Names of our surgery algorithms (the rule registry): their runs state ``surgery_reduction``."""
    from .. import rules  # noqa: PLC0415 - torch only when a protocol is computed

    return set(rules.REGISTRY)


def _base_algorithm(name: str) -> str:
    """``AgrSum`` for ``AgrSum-single`` (the control arm), else ``name``."""
    return name[:-len(SINGLE_DOMAIN_SUFFIX)] if name.endswith(SINGLE_DOMAIN_SUFFIX) else name


def run_protocol(record: dict) -> dict[str, Any]:
    """The :data:`PROTOCOL_ITEMS` of one run; ``steps``/``checkpoint_freq`` left unset
    (None) on the command line resolve to the dataset's ``N_STEPS``/``CHECKPOINT_FREQ``,
    as DomainBed's train.py does. ``surgery_reduction`` only for runs that have or need it."""
    args, hparams = record["args"], record.get("hparams") or {}
    cls = _dataset_class(args["dataset"])
    default = (lambda attr: getattr(cls, attr)) if cls is not None else (lambda attr: NOT_RECORDED)
    backbone, weights, pretrained = _featurizer(cls, hparams)
    out = {
        "steps": args.get("steps") or default("N_STEPS"),
        "checkpoint_freq": args.get("checkpoint_freq") or default("CHECKPOINT_FREQ"),
        "batch_size": hparams.get("batch_size", NOT_RECORDED),
        "backbone": backbone,
        "weights": weights,
        "pretrained": pretrained,
        "data_augmentation": hparams.get("data_augmentation", NOT_RECORDED),
    }
    if "surgery_reduction" in hparams:
        out["surgery_reduction"] = hparams["surgery_reduction"]
    elif _base_algorithm(args["algorithm"]) in _surgery_algorithms():
        out["surgery_reduction"] = NOT_RECORDED
    return out


def _sorted(values: Iterable) -> list:
    """Distinct values, sorted: numbers numerically, then anything else by its text."""
    distinct = {_hashable(v): v for v in values}.values()
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return sorted(distinct, key=lambda v: (0, v, "") if number(v) else (1, 0, str(v)))


def _mixed(item: str, runs_: Sequence[dict]) -> list:
    """The values of ``item`` if ``runs_`` mix protocols for it, else [].

    A searched item (:data:`SEARCHED_ITEMS`) mixes only if one (hparams_seed, trial_seed)
    has several values; any other item if it has several values at all.
    """
    values = [r["protocol"][item] for r in runs_ if item in r["protocol"]]
    if len(_sorted(values)) < 2:
        return []
    if item in SEARCHED_ITEMS:
        by_seed: dict[tuple, list] = {}
        for r in runs_:
            if item in r["protocol"]:
                by_seed.setdefault(_seeds(r), []).append(r["protocol"][item])
        if all(len(_sorted(v)) == 1 for v in by_seed.values()):
            return []
    return _sorted(values)


def _seeds(run: dict) -> tuple[int, int]:
    """(hparams_seed, trial_seed): what DomainBed seeds a random hparam draw with."""
    return run["args"].get("hparams_seed", 0), run["args"].get("trial_seed", 0)


def _differs(by_alg: dict[str, list[dict]], key: str) -> bool:
    """True if hparam ``key`` differs between two algorithms: on a (hparams_seed, trial_seed)
    both ran (a random search draws the same values for both), or, sharing none, at all."""
    per_alg = {}
    for alg, rs in by_alg.items():
        by_seed: dict[tuple, set] = {}
        for r in rs:
            by_seed.setdefault(_seeds(r), set()).add(_hashable(r["hparams"][key]))
        per_alg[alg] = by_seed
    algs = list(per_alg)
    for i, a in enumerate(algs):
        for b in algs[i + 1:]:
            shared = per_alg[a].keys() & per_alg[b].keys()
            if shared and any(per_alg[a][s] != per_alg[b][s] for s in shared):
                return True
            if not shared and set().union(*per_alg[a].values()) != set().union(*per_alg[b].values()):
                return True
    return False


@dataclass
class Protocol:
    """What one table compared, read from its runs (see :func:`protocol`).

    ``settings``: item -> algorithm -> distinct values (an algorithm without the item is
    absent); ``searched``: items whose several values are a random search's draws;
    ``differing``: hparam -> algorithm -> distinct values, for hparams held by every
    algorithm that differ between them; ``own``: algorithm -> hparams only some algorithms
    have; ``hparams_seeds``/``trial_seeds``: algorithm -> distinct seeds; ``mixed``:
    (algorithm, target) -> {item: values} for cells whose runs mix protocols.
    """

    algorithms: list[str]
    n_runs: int
    settings: dict[str, dict[str, list]]
    searched: set[str]
    differing: dict[str, dict[str, list]]
    own: dict[str, list[str]]
    hparams_seeds: dict[str, list[int]]
    trial_seeds: dict[str, list[int]]
    mixed: dict[tuple[str, str], dict[str, list]]

    def differences(self) -> list[str]:
        """Items and hparams not the same for every algorithm (besides the method itself)."""
        items = [i for i, per_alg in self.settings.items()
                 if len({_hashable(v) for v in per_alg.values()}) > 1]
        return items + list(self.differing)


def _settings(by_alg: dict[str, list[dict]]) -> tuple[dict[str, dict[str, list]], set[str]]:
    """(item -> algorithm -> distinct values, the searched items) over the runs."""
    settings: dict[str, dict[str, list]] = {}
    searched: set[str] = set()
    for item in PROTOCOL_ITEMS:
        per_alg = {a: _sorted(r["protocol"][item] for r in rs if item in r["protocol"])
                   for a, rs in by_alg.items()}
        per_alg = {a: v for a, v in per_alg.items() if v}
        if per_alg:
            settings[item] = per_alg
        if (item in SEARCHED_ITEMS and any(len(v) > 1 for v in per_alg.values())
                and not any(_mixed(item, rs) for rs in by_alg.values())):
            searched.add(item)
    return settings, searched


def _hparam_differences(by_alg: dict[str, list[dict]]) -> tuple[dict, dict]:
    """(differing, own): hparams every run has that differ between algorithms (hparam ->
    algorithm -> values), and each algorithm's hparams that not every run has."""
    hparams = {a: [r.get("hparams") or {} for r in rs] for a, rs in by_alg.items()}
    keys = {a: set().union(*hs) - set(PROTOCOL_HPARAMS) for a, hs in hparams.items()}
    shared = {k for k in set.intersection(*keys.values())
              if all(k in h for hs in hparams.values() for h in hs)} if keys else set()
    differing = {k: {a: _sorted(h[k] for h in hs) for a, hs in hparams.items()}
                 for k in sorted(shared) if len(by_alg) > 1 and _differs(by_alg, k)}
    own = {a: sorted(k - shared) for a, k in keys.items() if k - shared}
    return differing, own


def _mixed_cells(by_alg: dict[str, list[dict]], targets: Sequence[str]) -> dict:
    """(algorithm, target) -> {item: values} for the cells whose runs mix protocols."""
    mixed = {}
    for alg, rs in by_alg.items():
        cells = {t: [r for r in rs if i in r["args"]["test_envs"]] for i, t in enumerate(targets)}
        cells[AVG] = rs
        for target, cell_runs in cells.items():
            found = {item: v for item in PROTOCOL_ITEMS if (v := _mixed(item, cell_runs))}
            if found:
                mixed[(alg, target)] = found
    return mixed


def protocol(records, dataset: str, targets: Sequence[str],
             algorithms: Optional[Sequence[str]] = None) -> Protocol:
    """What the ``dataset`` table compared, from its runs' ``args`` and ``hparams``.

    ``targets`` are the table's target names by test env index; ``algorithms`` (default:
    all in the records) are the table's columns, control arms labelled ``<name>-single``.
    A cell's runs are those DomainBed's ``get_grouped_records`` gives it (every run
    holding out its domain); the Avg cell's are all the algorithm's runs.
    """
    by_alg: dict[str, list[dict]] = {}
    for r in runs(_with_arm_label(r) for r in records):
        if r["args"]["dataset"] == dataset:
            by_alg.setdefault(r["args"]["algorithm"], []).append(
                dict(r, protocol=run_protocol(r)))
    if algorithms is not None:
        by_alg = {a: by_alg[a] for a in algorithms if a in by_alg}
    settings, searched = _settings(by_alg)
    differing, own = _hparam_differences(by_alg)
    return Protocol(
        algorithms=list(by_alg), n_runs=sum(len(rs) for rs in by_alg.values()),
        settings=settings, searched=searched, differing=differing, own=own,
        hparams_seeds={a: sorted({_seeds(r)[0] for r in rs}) for a, rs in by_alg.items()},
        trial_seeds={a: sorted({_seeds(r)[1] for r in rs}) for a, rs in by_alg.items()},
        mixed=_mixed_cells(by_alg, targets))


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


def format_value(value) -> str:
    """A protocol value as the report prints it (JSON-like booleans, %g numbers)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def mixed_note(items: dict[str, list]) -> str:
    """The note of a cell whose runs mix protocols: which items, which values."""
    return "mixed protocol: " + ", ".join(
        f"{item} {'/'.join(format_value(v) for v in values)}" for item, values in items.items())


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
