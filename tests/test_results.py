"""The published results (docs/results) cannot drift from their data.

Each committed table is rendered again from the committed per-trial CSV (the report's
library, the same columns and rows) and must match line for line; the batch-size table
and the gradient-similarity summary likewise from their CSVs. Protocol lines are not
compared: they come from the sweep's records, which are not committed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from domainbed_surgery.report import format as fmt
from domainbed_surgery.report import summary

RESULTS = REPO / "docs" / "results" / "pacs64"
#: Experiment folder -> the baseline its report tested against (None: no test).
TABLES = {"table1": "ERM", "control": None}


def table_lines(markdown: str) -> list[str]:
    """The Markdown table's own lines (header, rule, rows)."""
    return [line for line in markdown.splitlines() if line.startswith("|")]


def committed(folder: Path) -> list[Path]:
    return sorted(folder.glob("*_iid.md")) if folder.is_dir() else []


@pytest.mark.parametrize("name", sorted(TABLES))
def test_committed_tables_match_their_per_trial_csv(name):
    folder = RESULTS / name
    if not committed(folder):
        pytest.skip(f"no committed results in {folder}")
    per_trial = pd.read_csv(folder / "per_trial_iid.csv", dtype={"target": str})
    for md in committed(folder):
        dataset = md.name[:-len("_iid.md")]
        lines = table_lines(md.read_text(encoding="utf-8"))
        algorithms = [c.strip() for c in lines[0].strip("|").split("|")][1:]
        targets = [row.strip("|").split("|")[0].strip() for row in lines[2:-1]]
        table = summary.summarize(per_trial, dataset, per_trial["selection"].iloc[0],
                              baseline=TABLES[name], algorithms=algorithms, targets=targets)
        assert table_lines(fmt.to_markdown(table)) == lines, md


def test_committed_batch_size_table_matches_its_csv():
    folder = RESULTS / "batch_size"
    if not (folder / "by_batch_size.csv").is_file():
        pytest.skip(f"no committed results in {folder}")
    frame = pd.read_csv(folder / "by_batch_size.csv", dtype={"value": str})
    table = frame.drop(columns=["hparam"]).rename(columns={"value": "batch_size"})
    assert fmt.markdown_table(table) == (folder / "by_batch_size.md").read_text(encoding="utf-8")


def test_committed_similarity_summary_matches_its_csv():
    folder = RESULTS / "gradient_similarity"
    if not (folder / "gradient_similarity.csv").is_file():
        pytest.skip(f"no committed results in {folder}")
    from domainbed_surgery.analysis import gradient_similarity as gs

    frame = pd.read_csv(folder / "gradient_similarity.csv", dtype={"test_envs": str})
    assert gs.summary_markdown(gs.summarize(frame)) == \
        (folder / gs.SUMMARY_NAME).read_text(encoding="utf-8")
