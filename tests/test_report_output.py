"""The one Markdown table writer and the one figure saver, against known answers."""

from __future__ import annotations

import math

import pandas as pd

from domainbed_surgery.report.figures import save_figure
from domainbed_surgery.report.format import markdown_table


def test_markdown_table_from_a_frame():
    """Header from the columns, no alignment, floats to 3 decimals, NaN as a dash, ints as is."""
    frame = pd.DataFrame({"batch_size": ["16", "64"], "n": [2, 3],
                          "acc_mean": [35.0, 45.12345], "gap_mean": [math.nan, -10.0]})
    assert markdown_table(frame) == (
        "| batch_size | n | acc_mean | gap_mean |\n"
        "|---|---|---|---|\n"
        "| 16 | 2 | 35.000 | - |\n"
        "| 64 | 3 | 45.123 | -10.000 |\n")


def test_markdown_table_from_rows_with_alignment_and_escaping():
    """Rows of cells with a header; alignment per column; a "|" in a cell is escaped."""
    text = markdown_table([["a|b", "**1.0 (0.1)**", 0.5]], ["Target", "ERM", "x"],
                          align=["l", "c", "r"], float_format=".1f")
    assert text.splitlines() == ["| Target | ERM | x |", "|:---|:---:|---:|",
                                 "| a\\|b | **1.0 (0.1)** | 0.5 |"]


def test_save_figure_writes_png_and_pdf_and_frees_pyplot(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    stem = tmp_path / "curve"
    paths = save_figure(fig, stem)
    assert paths == [f"{stem}.png", f"{stem}.pdf"]
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "curve.pdf").read_bytes()[:4] == b"%PDF"
    assert not plt.fignum_exists(fig.number)  # closed: no pyplot figure left open
    plain = Figure()  # no pyplot state: saved as is
    plain.subplots().plot([0, 1])
    assert save_figure(plain, tmp_path / "plain", formats=("png",)) == [f"{tmp_path / 'plain'}.png"]
