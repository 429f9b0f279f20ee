"""Render a :class:`~.summary.Table` as plain text, Markdown, LaTeX or CSV.

Formatting only: every number comes from :func:`domainbed_surgery.report.summary.summarize`.
Cells read "mean (std)"; the row's best mean is marked (``*x*`` in text, bold in
Markdown/LaTeX), a dagger marks p < alpha against the baseline, a double dagger a cell
whose runs mix protocols, and a footnote states the protocol (what was compared, read
from the runs), the statistics used and, in words, why any cell or test is missing.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import Optional, Sequence

import pandas as pd

from .protocol import NOT_RECORDED, Protocol, format_value
from .summary import DECIMALS, Table, min_pairs_for
from .trials import AVG

DAGGER = "\u2020"
#: Marks a cell whose runs mix protocols (e.g. different steps).
DDAGGER = "\u2021"
STYLES = ("text", "markdown", "latex", "csv")


def cell_text(row: pd.Series, style: str = "text") -> str:
    """One cell: "mean (std)" with best / significance markers for ``style``."""
    if row["n"] == 0:
        return "missing"
    mean = f"{row['mean']:.{DECIMALS}f}"
    spread = f"{row['std']:.{DECIMALS}f}" if row["n"] > 1 else "n=1"
    text = f"{mean} ({spread})"
    if row["best"]:
        text = {"markdown": f"**{text}**", "latex": f"\\textbf{{{text}}}"}.get(style, f"*{text}*")
    if row["significant"]:
        text += "$^\\dagger$" if style == "latex" else DAGGER
    if row.get("mixed", False):
        text += "$^\\ddagger$" if style == "latex" else DDAGGER
    return text


def _range(values) -> str:
    values = sorted(set(int(v) for v in values))
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def _seeds_text(seeds: list[int], name: str) -> str:
    """"20 (hparams_seed 0-19)": how many seeds, which."""
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1))
    which = (f"{seeds[0]}-{seeds[-1]}" if contiguous and len(seeds) > 1
             else ", ".join(map(str, seeds)))
    default = ": default hparams" if name == "hparams_seed" and seeds == [0] else ""
    return f"{len(seeds)} ({name} {which}{default})"


def _values_text(values: list, searched: bool = False) -> str:
    """One algorithm's values of an item: "5000", "8-45 (searched)", "1000/5000 (mixed)"."""
    if len(values) == 1:
        return format_value(values[0])
    if searched:
        return f"{format_value(values[0])}-{format_value(values[-1])} (searched)"
    return "/".join(format_value(v) for v in values) + " (mixed)"


def _per_algorithm(texts: dict[str, str], algorithms: list[str]) -> str:
    """A value common to ``algorithms``, or each algorithm's."""
    if len(set(texts.values())) == 1:
        value = next(iter(texts.values()))
        return value if list(texts) == algorithms else f"{value} ({', '.join(texts)})"
    return ", ".join(f"{alg} {text}" for alg, text in texts.items())


def _hparam_values(values: list) -> str:
    """One algorithm's values of a differing hparam: "1e-05" or "5 values, 1e-05-0.001"."""
    if len(values) == 1:
        return format_value(values[0])
    return f"{len(values)} values, {format_value(values[0])} to {format_value(values[-1])}"


#: Items the protocol line words as a phrase when recorded ("{}": the values).
ITEM_WORDING = {"trained_share": "trained {} of the featurizer's parameters"}


def _item_text(item: str, text: str) -> str:
    """"batch_size 32", "trained 30.2% of the featurizer's parameters"."""
    wording = ITEM_WORDING.get(item)
    return f"{item} {text}" if wording is None or NOT_RECORDED in text else wording.format(text)


def protocol_lines(table: Table) -> list[str]:
    """What the table compared (read from the runs): settings, samples, differences."""
    proto: Protocol = table.protocol
    if proto is None:
        return []
    algs = proto.algorithms
    items = "; ".join(
        _item_text(item, _per_algorithm({a: _values_text(v, item in proto.searched)
                                         for a, v in per_alg.items()}, algs))
        for item, per_alg in proto.settings.items())
    lines = [f"Protocol ({proto.n_runs} runs): {items}."]
    samples = _per_algorithm({a: _seeds_text(s, "hparams_seed")
                              for a, s in proto.hparams_seeds.items()}, algs)
    trials = _per_algorithm({a: _seeds_text(s, "trial_seed")
                             for a, s in proto.trial_seeds.items()}, algs)
    lines.append(f"Hparam samples: {samples}; trials: {trials}.")
    if len(algs) > 1:
        differences = proto.differences()
        lines.append(
            f"Not the same for every algorithm: {', '.join(differences)}." if differences else
            "Same protocol and same shared hparams for every algorithm; they differ only by "
            "the method (and its own hparams).")
    if proto.differing:
        lines.append("Hparams that differ between algorithms: " + "; ".join(
            f"{k} (" + ", ".join(f"{a} {_hparam_values(v)}" for a, v in per_alg.items()) + ")"
            for k, per_alg in proto.differing.items()) + ".")
    if proto.own:
        lines.append("The algorithms' own hparams: " + "; ".join(
            f"{a} {', '.join(keys)}" for a, keys in proto.own.items()) + ".")
    if table.cells["mixed"].any():
        lines.append(f"{DDAGGER}: the cell's runs mix protocols (its note says which items); "
                     "its mean pools them.")
    return lines


def footnote(table: Table) -> list[str]:
    """Sentences that say what was compared and what the cells, markers and n mean
    (plain text, unicode daggers)."""
    c = table.cells
    present = c[c["n"] > 0]
    k = len(table.targets)
    sel = f" selected by {table.selection} model selection" if table.selection else ""
    lines = protocol_lines(table) + [
        f"Cells: mean (std) of the test-domain accuracy (%){sel}, over trials (trial_seed).",
        "std is the sample standard deviation over trials (ddof=1), not the standard error "
        "that DomainBed's collect_results prints (its +/- is std(ddof=0)/sqrt(n)).",
    ]
    if len(present):
        lines.append(f"n = {_range(present['n'])} trial(s) per cell.")
    if table.omitted_targets:
        lines.append(f"Rows: the {k} target domain(s) this sweep held out "
                     f"({', '.join(table.targets)}); not run: {', '.join(table.omitted_targets)}.")
    lines.append(f"{AVG}: for each trial seed the mean over the {k} target domains, then "
                 "mean (std) over the trial seeds that have all of them.")
    lines.append("*best*: highest mean of the row (to the shown precision; ties all marked; "
                 "rows with a single result are not marked).")
    if table.baseline is None:
        lines.append("No significance test: the baseline is not in this sweep.")
    elif list(table.algorithms) == [table.baseline]:
        lines.append(f"No significance test: only the baseline {table.baseline} is in this sweep.")
    else:
        tested = c[c["n_pairs"] > 0]
        pairs = f"n = {_range(tested['n_pairs'])} pair(s) per cell" if len(tested) else \
            "no cell had a pair"
        lines.append(
            f"{DAGGER}: p < {table.alpha:g} in a two-sided paired Wilcoxon signed-rank test "
            f"against {table.baseline}, a difference in either direction (scipy.stats.wilcoxon, "
            f"pairs matched by trial_seed, "
            f"zero differences dropped; {pairs}). With n non-zero differences the smallest "
            f"possible p is 2/2^n, so n < {min_pairs_for(table.alpha)} can never reach "
            f"p < {table.alpha:g}.")
    lines.extend(notes(table))
    return lines


def notes(table: Table) -> list[str]:
    """Cell notes grouped by text: "Note - note text: ALG (target, ...); ..."."""
    grouped: "OrderedDict[str, OrderedDict[str, list[str]]]" = OrderedDict()
    for _, row in table.cells.iterrows():
        for note in filter(None, row["note"].split("; ")):
            grouped.setdefault(note, OrderedDict()).setdefault(row["algorithm"], []).append(
                row["target"])
    return [f"Note - {note}: " + "; ".join(f"{alg} ({', '.join(ts)})" for alg, ts in where.items())
            for note, where in grouped.items()]


def _grid(table: Table, style: str) -> list[list[str]]:
    """Header + one row per target (+ Avg) of cell strings."""
    rows = [["Target"] + list(table.algorithms)]
    for target in table.targets + [AVG]:
        rows.append([target] + [cell_text(table.cell(target, a), style) for a in table.algorithms])
    return rows


def title(table: Table) -> str:
    """One-line caption: dataset and selection method."""
    sel = f", model selection: {table.selection}" if table.selection else ""
    return f"Dataset: {table.dataset}{sel}"


def to_text(table: Table) -> str:
    """Fixed-width table for the terminal, with its footnote."""
    grid = _grid(table, "text")
    widths = [max(len(r[i]) for r in grid) + 2 for i in range(len(grid[0]))]
    out = [f"-------- {title(table)}"]
    for i, row in enumerate(grid):
        if i == len(grid) - 1:
            out.append("-" * sum(widths))
        out.append("".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    out.extend(footnote(table))
    return "\n".join(out) + "\n"


#: Markdown alignment rules: none, left, centred, right.
_RULES = {"": "---", "l": ":---", "c": ":---:", "r": "---:"}


def markdown_table(rows, header: Optional[Sequence] = None, align: Optional[Sequence[str]] = None,
                   float_format: str = ".3f", missing: str = "-") -> str:
    """A GitHub Markdown table, one line per row and a final newline: the one Markdown
    table writer (report tables, compare_by_hparam, the gradient-similarity summary).

    ``rows``: a DataFrame (``header`` defaults to its columns) or sequences of cells;
    ``align``: per column "" (none), "l", "c" or "r". A float is written with
    ``float_format`` (NaN as ``missing``), anything else as ``str``; a "|" is escaped.
    """
    if isinstance(rows, pd.DataFrame):
        header = list(rows.columns) if header is None else header
        rows = rows.itertuples(index=False)

    def cell(value) -> str:
        if isinstance(value, float):
            value = missing if value != value else format(value, float_format)
        return str(value).replace("|", "\\|")

    align = [""] * len(header) if align is None else align
    lines = ["| " + " | ".join(cell(c) for c in header) + " |",
             "|" + "|".join(_RULES[a] for a in align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown table with the footnote as a list below it."""
    grid = _grid(table, "markdown")
    rows = [[f"**{AVG}**"] + row[1:] if row[0] == AVG else row for row in grid[1:]]
    align = ["l"] + ["c"] * (len(grid[0]) - 1)
    out = [f"### {title(table)}", "", markdown_table(rows, grid[0], align).rstrip("\n"), ""]
    out.extend(f"- {line}".replace("*best*", "**bold**") for line in footnote(table))
    return "\n".join(out) + "\n"


_LATEX = [("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("$", "\\$"), ("#", "\\#"),
          ("_", "\\_"), ("{", "\\{"), ("}", "\\}"), ("~", "\\textasciitilde{}"),
          ("^", "\\textasciicircum{}"), ("<", "$<$"), (">", "$>$"), (DAGGER, "$^\\dagger$"),
          (DDAGGER, "$^\\ddagger$")]


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters in plain text (names, footnote)."""
    for old, new in _LATEX:
        text = text.replace(old, new)
    # "{}" of \textbackslash{} went through the brace escapes above: undo that.
    return text.replace("\\textbackslash\\{\\}", "\\textbackslash{}")


def to_latex(table: Table) -> str:
    """booktabs ``table`` environment (needs ``\\usepackage{booktabs}``) with the footnote."""
    grid = _grid(table, "latex")
    ncol = len(grid[0])
    out = ["\\begin{table}[t]", "\\centering",
           f"\\caption{{{latex_escape(title(table))}}}",
           "\\begin{tabular}{l" + "c" * (ncol - 1) + "}", "\\toprule",
           " & ".join(latex_escape(c) for c in grid[0]) + " \\\\", "\\midrule"]
    for row in grid[1:]:
        if row[0] == AVG:
            out.append("\\midrule")
        out.append(" & ".join([latex_escape(row[0])] + row[1:]) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "",
            "\\smallskip\\footnotesize",
            " ".join(latex_escape(s).replace("*best*", "Bold") for s in footnote(table)),
            "\\end{table}"]
    return "\n".join(out) + "\n"


def to_csv(table: Table) -> str:
    """The table as CSV: Target column then one column per algorithm (text-style cells)."""
    buf = io.StringIO()
    grid = _grid(table, "text")
    pd.DataFrame(grid[1:], columns=grid[0]).to_csv(buf, index=False)
    return buf.getvalue()


def cells_csv(table: Table) -> str:
    """Long-format CSV of every cell's numbers (mean, std, n, p_value, notes...)."""
    buf = io.StringIO()
    table.cells.assign(selection=table.selection).to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue()


def render(table: Table, style: str) -> str:
    """Dispatch on ``style`` ('text', 'markdown', 'latex', 'csv')."""
    return {"text": to_text, "markdown": to_markdown, "latex": to_latex, "csv": to_csv}[style](table)


__all__ = ["cell_text", "footnote", "protocol_lines", "notes", "to_text", "to_markdown", "to_latex", "to_csv",
           "cells_csv", "render", "latex_escape", "markdown_table"]
