"""Agreement/cosine curves from DomainBed ``results.jsonl`` records: tables and figures.

The gradient-surgery algorithms (:mod:`domainbed_surgery.surgery.algorithm`) return per-step
diagnostics that DomainBed's ``train.py`` averages over the steps since the previous
checkpoint and writes into each checkpoint record:

* ``agreement``: fraction of parameters on which all domain gradients agree in sign;
* ``cosine``: mean pairwise cosine similarity of the domain gradients;
* ``agreement/<layer>`` (optional): the same fraction restricted to one layer or
  parameter tensor. These exist only if an algorithm's ``update`` emits such keys; this
  module plots whatever ``agreement/<name>`` keys the records carry and invents none.

Algorithms without the keys (ERM and DomainBed's others) are reported and skipped. The
control arm of the paper's Fig. 4 (hparam ``surgery_batches: single``) is its own
algorithm, ``<name>-single``, as in the report's tables.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional

import pandas as pd

from ..report.figures import save_figure
from ..report.trials import with_arm_label

KEYS = ("agreement", "cosine")
LAYER_PREFIX = "agreement/"
ID_COLUMNS = ["dataset", "test_env", "algorithm", "trial_seed", "hparams_seed", "step"]
COLUMNS = ID_COLUMNS + list(KEYS)
LAYER_COLUMNS = ID_COLUMNS + ["layer", "agreement"]


def _ids(record: Mapping) -> dict:
    args = record.get("args", {})
    test_envs = args.get("test_envs", [])
    return {
        "dataset": args.get("dataset"),
        # A run holding out several environments is its own target ("0,1"), not one
        # curve per held-out environment.
        "test_env": ",".join(str(e) for e in test_envs),
        "algorithm": args.get("algorithm"),
        "trial_seed": args.get("trial_seed"),
        "hparams_seed": args.get("hparams_seed"),
        "step": record.get("step"),
    }


def records_to_frames(records: Iterable[Mapping]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Split records into (diagnostics, per-layer agreement, skipped algorithms).

    Returns:
        ``frame`` with :data:`COLUMNS` (one row per record that has ``agreement`` or
        ``cosine``; a missing one is NaN), ``layers`` with :data:`LAYER_COLUMNS` (one row
        per ``agreement/<layer>`` key), and ``{algorithm: n_records}`` for algorithms none
        of whose records have any diagnostic.
    """
    rows, layer_rows, seen, with_keys = [], [], {}, set()
    for record in records:
        record = with_arm_label(record)  # a control arm is its own curve, "<name>-single"
        ids = _ids(record)
        seen[ids["algorithm"]] = seen.get(ids["algorithm"], 0) + 1
        layer_keys = [k for k in record if k.startswith(LAYER_PREFIX)]
        if not any(k in record for k in KEYS) and not layer_keys:
            continue
        with_keys.add(ids["algorithm"])
        if any(k in record for k in KEYS):
            rows.append({**ids, **{k: record.get(k, float("nan")) for k in KEYS}})
        for key in layer_keys:
            layer_rows.append({**ids, "layer": key[len(LAYER_PREFIX):], "agreement": record[key]})
    frame, layers = (pd.DataFrame(r, columns=c).sort_values(ID_COLUMNS, kind="stable")
                     .reset_index(drop=True)
                     for r, c in ((rows, COLUMNS), (layer_rows, LAYER_COLUMNS)))
    skipped = {a: n for a, n in seen.items() if a not in with_keys}
    return frame, layers, skipped


def summarize(frame: pd.DataFrame, value: str, by: Iterable[str] = ()) -> pd.DataFrame:
    """Mean, standard deviation (ddof=0) and number of runs of ``value`` per curve point.

    Runs differing only in ``trial_seed``/``hparams_seed`` (and anything not in the
    grouping) are pooled: the band is their spread, not a confidence interval.
    """
    keys = ["dataset", "test_env", "algorithm", *by, "step"]
    g = frame.dropna(subset=[value]).groupby(keys, sort=True)[value]
    out = g.agg(mean="mean", std=lambda v: v.std(ddof=0), n="count").reset_index()
    return out


_PARAM_SUFFIX = re.compile(r"\.(weight|bias)$")


def layer_group(name: str) -> str:
    """The panel a per-layer key goes to: its name without a ``.weight``/``.bias`` suffix."""
    return _PARAM_SUFFIX.sub("", name)


def _target_label(dataset: str, test_env: str, env_names: Optional[Mapping]) -> str:
    names = (env_names or {}).get(dataset)
    if names:
        try:
            test_env = "+".join(str(names[int(e)]) for e in test_env.split(","))
        except (ValueError, IndexError):
            pass
    return f"{dataset}, target {test_env}"


def _colors(algorithms: list[str]) -> dict[str, object]:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {a: cycle[i % len(cycle)] for i, a in enumerate(sorted(algorithms))}


def _band(ax, s: pd.DataFrame, color, label, **line) -> None:
    ax.plot(s["step"], s["mean"], color=color, label=label, **line)
    if (s["n"] > 1).any():
        ax.fill_between(s["step"], s["mean"] - s["std"], s["mean"] + s["std"],
                        color=color, alpha=0.2, lw=0)


def plot_curves(frame: pd.DataFrame, output_stem: str,
                env_names: Optional[Mapping] = None) -> list[str]:
    """Rows ``agreement`` and ``cosine``, one column per (dataset, target); PNG + PDF."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    targets = list(frame[["dataset", "test_env"]].drop_duplicates().itertuples(index=False))
    colors = _colors(frame["algorithm"].unique().tolist())
    ncols = len(targets)
    fig, axes = plt.subplots(2, ncols, figsize=(max(6.0, 4.0 * ncols), 6.0), squeeze=False,
                             sharex="col")
    ylabels = {"agreement": "sign agreement (fraction of params)",
               "cosine": "mean pairwise cosine of domain grads"}
    for row, key in enumerate(KEYS):
        stats = summarize(frame, key)
        for col, (dataset, test_env) in enumerate(targets):
            ax = axes[row, col]
            here = stats[(stats["dataset"] == dataset) & (stats["test_env"] == test_env)]
            for algorithm, s in here.groupby("algorithm"):
                _band(ax, s, colors[algorithm], f"{algorithm} (n={s['n'].max()})")
            if row == 0:
                ax.set_title(_target_label(dataset, test_env, env_names), fontsize=10)
            else:
                ax.set_xlabel("step (values averaged since previous checkpoint)", fontsize=8)
            if col == 0:
                ax.set_ylabel(ylabels[key], fontsize=9)
            ax.grid(alpha=0.3)
            if len(here):
                ax.legend(fontsize=7)
    fig.suptitle("Domain-gradient agreement over training\n"
                 "(mean over trials/hparams, band: ±1 std)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, output_stem)


def plot_layers(layers: pd.DataFrame, output_stem: str,
                env_names: Optional[Mapping] = None) -> list[str]:
    """One row per layer group, one column per (dataset, target); lines per algorithm.

    Within a group, a ``.weight`` key is drawn solid and a ``.bias`` key dashed.
    """
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    layers = layers.assign(group=layers["layer"].map(layer_group))
    groups = list(dict.fromkeys(layers["group"]))  # first-seen order: network order
    targets = list(layers[["dataset", "test_env"]].drop_duplicates().itertuples(index=False))
    colors = _colors(layers["algorithm"].unique().tolist())
    stats = summarize(layers, "agreement", by=["layer"])
    stats["group"] = stats["layer"].map(layer_group)
    fig, axes = plt.subplots(len(groups), len(targets), squeeze=False, sharex="col",
                             figsize=(max(6.0, 4.0 * len(targets)), 2.4 * len(groups) + 0.6))
    for r, group in enumerate(groups):
        for c, (dataset, test_env) in enumerate(targets):
            ax = axes[r, c]
            here = stats[(stats["dataset"] == dataset) & (stats["test_env"] == test_env)
                         & (stats["group"] == group)]
            for (algorithm, layer), s in here.groupby(["algorithm", "layer"]):
                style = "--" if layer.endswith(".bias") else "-"
                suffix = layer[len(group):] or ""
                _band(ax, s, colors[algorithm], f"{algorithm}{suffix}", ls=style)
            if r == 0:
                ax.set_title(_target_label(dataset, test_env, env_names), fontsize=10)
            if c == 0:
                ax.set_ylabel(f"agreement\n{group}", fontsize=8)
            if r == len(groups) - 1:
                ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if len(here):
                ax.legend(fontsize=6)
    fig.suptitle("Per-layer sign agreement\n(keys agreement/<layer> logged by the algorithms)",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, output_stem)
