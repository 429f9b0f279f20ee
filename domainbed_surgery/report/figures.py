"""Box plots of per-trial accuracies, like Fig. 3 of Mansilla et al. (ICCV 2021).

One panel per target domain, one box per algorithm: box = quartiles, line = median,
triangle = mean, whiskers = min/max, and an asterisk above a box whose paired Wilcoxon
test against the baseline gives p < alpha (taken from the :class:`~.summary.Table`).
:func:`save_figure` writes every figure of the package (PNG + PDF).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .summary import Table

FORMATS = ("png", "pdf")
DPI = 150


def save_figure(fig, stem, formats=FORMATS, dpi: int = DPI) -> list[str]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.pdf``: the one figure saver of the report
    and the analyses. A pyplot figure is closed after; returns the paths as ``f"{stem}.{fmt}"``."""
    paths = [f"{stem}.{fmt}" for fmt in formats]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    if getattr(fig.canvas, "manager", None) is not None:  # pyplot holds it: free it
        import matplotlib.pyplot as plt  # noqa: PLC0415

        plt.close(fig)
    return paths


def boxplot_figure(table: Table):
    """A matplotlib Figure (Agg) with one box-plot panel per target domain of ``table``."""
    import matplotlib  # noqa: PLC0415 - matplotlib is only needed for figures

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # noqa: PLC0415 - no pyplot global state

    pt = table.per_trial
    targets = table.targets
    algs = table.algorithms
    ncols = min(4, len(targets))
    nrows = math.ceil(len(targets) / ncols)
    fig = Figure(figsize=(max(3.2, 0.7 * len(algs) + 1.2) * ncols, 3.4 * nrows),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, target in zip(axes, targets):
        data, positions, labels = [], [], []
        for i, alg in enumerate(algs):
            vals = pt[(pt["target"] == target) & (pt["algorithm"] == alg)]["acc"].to_numpy()
            labels.append(alg)
            if len(vals):
                data.append(vals)
                positions.append(i + 1)
        if data:
            ax.boxplot(data, positions=positions, whis=(0, 100), showmeans=True,
                       widths=0.6, patch_artist=True,
                       boxprops=dict(facecolor="#cfe0f3", edgecolor="black"),
                       medianprops=dict(color="#d62728", linewidth=1.5),
                       meanprops=dict(marker="^", markerfacecolor="#2ca02c",
                                      markeredgecolor="black", markersize=7))
            top = max(v.max() for v in data)
            bottom = min(v.min() for v in data)
            pad = max(0.08 * (top - bottom), 0.5)
            for i, alg in enumerate(algs):
                row = table.cell(target, alg)
                if row["significant"]:
                    ymax = pt[(pt["target"] == target) & (pt["algorithm"] == alg)]["acc"].max()
                    ax.text(i + 1, ymax + pad / 2, "*", ha="center", va="bottom",
                            fontsize=16, fontweight="bold")
            ax.set_ylim(bottom - pad, top + 2.5 * pad)
        for i, alg in enumerate(algs):
            if table.cell(target, alg)["n"] == 0:
                ax.text(i + 1, 0.5, "missing", transform=ax.get_xaxis_transform(),
                        ha="center", va="center", rotation=90, color="gray", fontsize=8)
        ax.set_xticks(range(1, len(algs) + 1), labels, rotation=30, ha="right")
        ax.set_xlim(0.4, len(algs) + 0.6)
        ax.set_title(f"target: {target}")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(targets):]:
        ax.set_visible(False)
    sel = f", {table.selection}" if table.selection else ""
    base = (f"; * p<{table.alpha:g} vs {table.baseline} (paired Wilcoxon)"
            if table.baseline else "")
    fig.suptitle(f"{table.dataset}{sel}\nbox: quartiles, red line: median, "
                 f"\u25b2: mean, whiskers: min/max{base}", fontsize=9)
    return fig


def save_boxplots(table: Table, stem: Path, formats=FORMATS) -> list[Path]:
    """Write the box-plot figure as ``stem.png`` / ``stem.pdf``; return the paths."""
    return [Path(p) for p in save_figure(boxplot_figure(table), stem, formats)]
