"""Fig. 4 control analysis (domainbed_surgery.analysis.control) on known answers."""

import pandas as pd
import pytest

from conftest import REPO
from domainbed_surgery.analysis.control import ARM_COLUMNS, arm_differences


def rows(algorithm, accs):
    return [{"algorithm": algorithm, "target": t, "trial_seed": s, "acc": a}
            for (t, s), a in accs.items()]


def test_arm_differences_by_hand():
    multi = {("P", 0): 80.0, ("P", 1): 82.0, ("P", 2): 81.0, ("S", 0): 40.0, ("S", 1): 44.0}
    single = {("P", 0): 79.0, ("P", 1): 80.0, ("P", 2): 84.0, ("S", 0): 41.0, ("S", 1): 40.0,
              ("S", 2): 50.0}  # S trial 2 has no multi partner: left out
    per_trial = pd.DataFrame(rows("AgrSum", multi) + rows("AgrSum-single", single)
                             + rows("ERM", multi))
    table = arm_differences(per_trial).set_index("target")
    assert list(arm_differences(per_trial).columns) == ARM_COLUMNS
    assert set(table["algorithm"]) == {"AgrSum"}  # ERM has no control arm
    assert table.loc["P", "n_pairs"] == 3 and table.loc["P", "mean_diff"] == pytest.approx(0.0)
    assert (table.loc["P", "min_diff"], table.loc["P", "max_diff"]) == (-3.0, 2.0)
    assert table.loc["P", "multi_ahead"] == 2
    assert table.loc["S", "mean_diff"] == pytest.approx(1.5)  # (-1 + 4) / 2
    # Avg: trial seeds with both targets: 0 -> (1 - 1) / 2 = 0, 1 -> (2 + 4) / 2 = 3
    assert table.loc["Avg", "n_pairs"] == 2 and table.loc["Avg", "mean_diff"] == pytest.approx(1.5)
    assert pd.isna(table.loc["Avg", "wilcoxon_p"])  # one non-zero difference
    # P: differences +1, +2, -3: ranks 1, 2, 3; W- = 3, W+ = 3; exact two-sided p = 1
    assert table.loc["P", "wilcoxon_p"] == pytest.approx(1.0)


PACS64_CONTROL = REPO / "docs" / "results" / "pacs64" / "control"


@pytest.mark.skipif(not (PACS64_CONTROL / "per_trial_iid.csv").is_file(), reason="no results")
def test_arm_differences_reproduce_the_from_scratch_control_table():
    """The README's multi-minus-single table of the from-scratch control, written before
    this module existed, comes out of its per-trial CSV."""
    per_trial = pd.read_csv(PACS64_CONTROL / "per_trial_iid.csv", dtype={"target": str})
    table = arm_differences(per_trial).set_index(["algorithm", "target"])
    readme = {("AgrSum", "P"): "+0.6 (p 0.84)", ("AgrSum", "S"): "+0.3 (p 0.84)",
              ("AgrSum", "Avg"): "+0.5 (p 1.00)", ("AgrRand", "P"): "+0.7 (p 0.53)",
              ("AgrRand", "S"): "+0.9 (p 0.31)", ("AgrRand", "Avg"): "+0.8 (p 0.44)",
              ("PCGrad", "P"): "-0.1 (p 0.94)", ("PCGrad", "S"): "-0.1 (p 0.84)",
              ("PCGrad", "Avg"): "-0.1 (p 1.00)"}
    got = {k: f"{table.loc[k, 'mean_diff']:+.1f} (p {table.loc[k, 'wilcoxon_p']:.2f})"
           for k in readme}
    assert got == readme
