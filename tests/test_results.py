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

from conftest import REPO, archived_records
from domainbed_surgery.report import format as fmt
from domainbed_surgery.report import summary

RESULTS = REPO / "docs" / "results" / "pacs64"
#: Experiment folder -> the baseline its report tested against (None: no test).
TABLES = {"table1": "ERM", "control": None}
#: The pretrained regime's tables (docs/results/pacs-pretrained), likewise.
PRETRAINED_TABLES = {"table1": "ERM", "control": None, "gpu_pilot": "ERM",
                     "baselines/trials0-2": "ERM"}
#: The paper's three rules, in the order the step-time and control tables list them.
PAPER_RULES = ("AgrSum", "AgrRand", "PCGrad")


def table_lines(markdown: str) -> list[str]:
    """The Markdown table's own lines (header, rule, rows)."""
    return [line for line in markdown.splitlines() if line.startswith("|")]


def assert_table_block(document: Path, expected: list[str]) -> None:
    """``expected`` are consecutive lines of a Markdown table in ``document``."""
    lines = table_lines(document.read_text(encoding="utf-8"))
    assert expected[0] in lines, f"{document.name} lacks the table row {expected[0]!r}"
    start = lines.index(expected[0])
    assert lines[start:start + len(expected)] == expected


def committed(folder: Path) -> list[Path]:
    return sorted(folder.glob("*_iid.md")) if folder.is_dir() else []


@pytest.mark.parametrize("regime, name", [("pacs64", n) for n in sorted(TABLES)]
                         + [("pacs-pretrained", n) for n in sorted(PRETRAINED_TABLES)])
def test_committed_tables_match_their_per_trial_csv(regime, name):
    folder = REPO / "docs" / "results" / regime / name
    baseline = {**TABLES, **PRETRAINED_TABLES}[name]
    if not committed(folder):
        pytest.skip(f"no committed results in {folder}")
    per_trial = pd.read_csv(folder / "per_trial_iid.csv", dtype={"target": str})
    for md in committed(folder):
        dataset = md.name[:-len("_iid.md")]
        lines = table_lines(md.read_text(encoding="utf-8"))
        algorithms = [c.strip() for c in lines[0].strip("|").split("|")][1:]
        targets = [row.strip("|").split("|")[0].strip() for row in lines[2:-1]]
        table = summary.summarize(per_trial, dataset, per_trial["selection"].iloc[0],
                              baseline=baseline, algorithms=algorithms, targets=targets)
        assert table_lines(fmt.to_markdown(table)) == lines, md


BATCH_SIZE_STUDIES = [REPO / "docs" / "results" / regime / "batch_size"
                      for regime in ("pacs64", "pacs-pretrained")]


@pytest.mark.parametrize("folder", BATCH_SIZE_STUDIES, ids=lambda f: f.parent.name)
def test_committed_batch_size_table_matches_its_per_trial_csv(folder):
    """The batch-size table is computed again from its per-trial CSV (accuracies, paired
    gaps, diagnostics), so every row of it can be re-derived."""
    from domainbed_surgery.analysis.by_hparam import summarize_per_trial

    if not (folder / "by_batch_size.csv").is_file():
        pytest.skip(f"no committed results in {folder}")
    per_trial = pd.read_csv(folder / "by_batch_size_per_trial.csv", dtype={"value": str})
    frame = pd.read_csv(folder / "by_batch_size.csv", dtype={"value": str})
    pd.testing.assert_frame_equal(summarize_per_trial(per_trial), frame, check_exact=False,
                                  rtol=1e-12)
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


# -- the numbers the prose quotes, computed again from the committed data --------------------
def text(path: Path) -> str:
    """A document with its whitespace collapsed (prose wraps anywhere)."""
    return " ".join(path.read_text(encoding="utf-8").split())


def cell(per_trial: pd.DataFrame, algorithm: str, target: str = "Avg") -> pd.Series:
    """Selected accuracies of one cell by trial seed; ``Avg``: per trial, the mean over targets."""
    mine = per_trial[per_trial["algorithm"] == algorithm]
    wide = mine.pivot_table(index="trial_seed", columns="target", values="acc")
    return wide.mean(axis=1) if target == "Avg" else wide[target]


def mean_std(values: pd.Series) -> str:
    return f"{values.mean():.1f} ({values.std(ddof=1):.1f})"


def pacs64_claims() -> list[tuple[str, str]]:
    """(document, phrase) pairs: each phrase quotes numbers computed here from the CSVs."""
    from scipy import stats

    similarity = pd.read_csv(RESULTS / "gradient_similarity" / "gradient_similarity.csv")
    after = similarity[similarity["step"] > 0]
    table1 = pd.read_csv(RESULTS / "table1" / "per_trial_iid.csv", dtype={"target": str})
    curves = pd.read_csv(RESULTS / "table1" / "agreement_curves.csv")
    curves = curves[curves["step"] > 0]
    control = pd.read_csv(RESULTS / "control" / "diagnostics.csv").groupby("surgery_batches").mean(
        numeric_only=True)
    erm, agrrand = cell(table1, "ERM"), cell(table1, "AgrRand")
    p = stats.wilcoxon(agrrand, erm).pvalue
    batch = pd.read_csv(RESULTS / "batch_size" / "by_batch_size_per_trial.csv")
    wide = batch.pivot_table(index=["value", "trial_seed"], columns="algorithm", values="acc")
    gaps = (wide["AgrSum"] - wide["ERM"]).round(2)
    diagnostics = batch[batch["algorithm"] == "AgrSum"].groupby("value")[["agreement", "cosine"]].mean()
    pairs = "; ".join(f"batch {v}: " + ", ".join(f"{g:+.2f}" for g in gaps[v])
                      for v in gaps.index.get_level_values(0).unique())
    sketch = table1[table1["target"] == "S"].pivot_table(index="trial_seed", columns="algorithm",
                                                         values="acc")
    table1_gap = f"{(sketch['AgrSum'] - sketch['ERM']).mean():.2f}"
    cosines = ", ".join(f"{c:.3f}" for c in diagnostics["cosine"])
    batch_readme = "docs/results/pacs64/batch_size/README.md"
    return [
        (batch_readme, f"AgrSum minus ERM (trial 0, trial 1): {pairs}."),
        (batch_readme, f"ahead in {(gaps > 0).sum()} of the {len(gaps)} pairs, but they range "
                       f"from {gaps.min():.2f} to {gaps.max():+.2f} points"),
        (batch_readme, f"gives AgrSum {sketch['AgrSum'].mean():.1f} against ERM "
                       f"{sketch['ERM'].mean():.1f} on S, a gap of {table1_gap}"),
        (batch_readme, f"({cosines})"),
        (batch_readme, "(" + "%, ".join(f"{100 * a:.1f}" for a in diagnostics["agreement"]) + "%)"),
        ("README.md", f"grows with the batch ({cosines})"),
        ("README.md", f"from {gaps.min():.2f} to {gaps.max():+.2f} points over these "
                      f"{len(gaps)} pairs; the batch-16 cell over 6 trials in Table 1 gives "
                      f"{table1_gap}"),
        ("README.md", f"in {(after['intra'] > after['inter']).sum()} of the {len(after)} "
                      "measurements after step 0"),
        ("README.md", f"(cosine {after['intra'].mean():.3f} within against "
                      f"{after['inter'].mean():.3f} across)"),
        ("README.md", f"ERM: {mean_std(erm)}% averaged over P and S"),
        ("README.md", f"AgrSum {mean_std(cell(table1, 'AgrSum'))} and PCGrad "
                      f"{mean_std(cell(table1, 'PCGrad'))}"),
        ("README.md", f"AgrRand {mean_std(agrrand)}: worse than ERM (paired Wilcoxon p = {p:.2f}"),
        ("README.md", f"(mean cosine {abs(curves['cosine'].mean()):.2f}), and only "
                      f"{100 * curves['agreement'].mean():.1f}% of their components agree"),
        ("README.md", f"(cosine {control.loc['single', 'cosine']:.3f} against "
                      f"{abs(control.loc['multi', 'cosine']):.3f})"),
        ("docs/results/pacs64/control/README.md",
         f"cosine {control.loc['single', 'cosine']:.3f} against {abs(control.loc['multi', 'cosine']):.3f}"),
    ]


@pytest.mark.parametrize("document, phrase", pacs64_claims() if RESULTS.is_dir() else [],
                         ids=lambda v: v if len(v) < 40 else v[:40])
def test_prose_quotes_the_data(document, phrase):
    """Every number these phrases quote is recomputed from the committed CSVs: an edited
    CSV or a rounded-wrong sentence fails here."""
    assert phrase in text(REPO / document), f"{document} should say: {phrase}"


PRETRAINED = REPO / "docs" / "results" / "pacs-pretrained"


def pretrained_claims() -> list[tuple[str, str]]:
    """(document, phrase) pairs of the pretrained results, recomputed from their CSVs."""
    claims = []
    pilot_csv = PRETRAINED / "pilot_erm_sketch.csv"
    if pilot_csv.is_file():
        pilot = pd.read_csv(pilot_csv).set_index("step")
        gain = lambda a, b: 100 * (pilot.loc[b, "source_val_acc"] - pilot.loc[a, "source_val_acc"])  # noqa: E731
        readme = "docs/results/pacs-pretrained/README.md"
        claims += [
            (readme, f"rose {gain(200, 300):.1f} points from step 200 to 300"),
            (readme, f"(300 to 400: {gain(300, 400):+.2f}; 400 to 500: {gain(400, 500):+.2f}; "
                     f"500 to 600: {gain(500, 600):+.2f}; 600 to 700: {gain(600, 700):+.2f})"),
            (readme, f"at step 300: {100 * pilot.loc[300, 'target_in_acc']:.1f}%; at step 800: "
                     f"{100 * pilot.loc[800, 'target_in_acc']:.1f}%"),
        ]
        assert all(gain(s, s + 100) < 1.0 for s in range(300, 800, 100) if s + 100 in pilot.index)
    batch_csv = PRETRAINED / "batch_size" / "by_batch_size_per_trial.csv"
    if batch_csv.is_file():
        claims += pretrained_batch_size_claims(batch_csv)
    table1 = PRETRAINED / "table1"
    if (table1 / "per_trial_iid.csv").is_file():
        per_trial = pd.read_csv(table1 / "per_trial_iid.csv", dtype={"target": str})
        means = per_trial.groupby(["algorithm", "target"])["acc"].mean()
        curves = pd.read_csv(table1 / "agreement_curves.csv").groupby("step")[
            ["agreement", "cosine"]].mean()
        wide = per_trial.pivot_table(index=["target", "trial_seed"], columns="algorithm",
                                     values="acc")
        below = {a: (wide[a] - wide["ERM"]).dropna() for a in ("AgrSum", "PCGrad", "AgrRand")}
        first, last = curves.index.min(), curves.index.max()
        readme = "docs/results/pacs-pretrained/table1/README.md"
        complete = per_trial.groupby(["algorithm", "trial_seed"])["target"].nunique()
        full_seeds = [t for t in sorted(per_trial["trial_seed"].unique())
                      if all(complete.get((a, t), 0) == 4 for a in means.index.levels[0])]
        avg = per_trial[per_trial["trial_seed"].isin(full_seeds)].groupby(
            ["algorithm", "trial_seed"])["acc"].mean().groupby("algorithm").mean()
        lead = {a: avg["ERM"] - avg[a] for a in ("AgrSum", "PCGrad", "AgrRand")}
        claims += [
            (readme, f"**All {per_trial.shape[0]} runs**"),
            (readme, f"The mean of ERM's four target means is {means['ERM'].mean():.1f}% (photo "
                     f"{means['ERM', 'P']:.1f}%, sketch {means['ERM', 'S']:.1f}%)"),
            (readme, f"the sign agreement falls from {curves.loc[first, 'agreement']:.3f} at step "
                     f"{first} to {curves.loc[last, 'agreement']:.3f} at step {last}, and the mean "
                     f"pairwise cosine from {curves.loc[first, 'cosine']:.3f} to "
                     f"{curves.loc[last, 'cosine']:.3f}"),
            (readme, "ERM is below zero in {} of {} pairs, PCGrad in {} of {}, AgrRand in {} of {}"
                     .format(*[n for a in ("AgrSum", "PCGrad", "AgrRand")
                               for n in ((below[a] < 0).sum(), len(below[a]))])),
            (readme, f"Averaged over the four targets (trial seeds "
                     f"{full_seeds[0]}-{full_seeds[-1]}), ERM leads AgrSum by {lead['AgrSum']:.1f} "
                     f"points, PCGrad by {lead['PCGrad']:.1f} and AgrRand by {lead['AgrRand']:.1f}"),
        ]
        assert means["ERM"].mean() >= 60  # the issue's bar for a pretrained regime
        by_target = pd.concat(below.values())
        photo_sketch = by_target[by_target.index.get_level_values(0).isin(["P", "S"])]
        art_cartoon = by_target[by_target.index.get_level_values(0).isin(["A", "C"])]
        claims += [
            (readme, f"On photo and sketch every pair is below zero (from {photo_sketch.min():.1f} "
                     f"to {photo_sketch.max():.1f} points)"),
            (readme, f"On art and cartoon the pairs lie between {art_cartoon.min():.1f} and "
                     f"{art_cartoon.max():+.1f}"),
        ]
        assert per_trial.shape[0] == 96 and (photo_sketch < 0).all()
        from scipy import stats

        cell_p = {f"{stats.wilcoxon(wide.loc[t][a], wide.loc[t]['ERM']).pvalue:.3f}"
                  for t in ("P", "S") for a in ("AgrSum", "PCGrad", "AgrRand")}
        by_seed = per_trial.groupby(["algorithm", "trial_seed"])["acc"].mean().unstack(0)
        avg_p = {f"{stats.wilcoxon(by_seed[a], by_seed['ERM']).pvalue:.3f}"
                 for a in ("AgrSum", "PCGrad", "AgrRand")}
        assert len(cell_p) == 1 and len(avg_p) == 1  # the prose quotes one p for each group
        (cell_p,), (avg_p,) = cell_p, avg_p
        claims += [
            (readme, f"p = {cell_p} in each of the six photo and sketch cells"),
            (readme, f"ERM's lead over the four targets has p = {avg_p} for each method"),
        ]
        claims += [
            ("README.md", f"ERM is in a pretrained regime: {means['ERM'].mean():.1f}% on average "
                          f"over the four targets (photo {means['ERM', 'P']:.1f}%)"),
            ("README.md", f"(sign agreement {curves.loc[first, 'agreement']:.2f}, cosine "
                          f"{curves.loc[first, 'cosine']:.2f} at step 0)"),
            ("README.md", f"and a cosine of {curves.loc[last, 'cosine']:.2f} by step 300"),
            ("README.md", f"on art and cartoon they lie between {art_cartoon.min():.1f} and "
                          f"{art_cartoon.max():+.1f} points"),
            ("README.md", f"**complete: {per_trial.shape[0]} runs**"),
            ("README.md", f"(trial seeds {full_seeds[0]}-{full_seeds[-1]}; paired Wilcoxon p = "
                          f"{avg_p} for each)"),
            ("README.md", f"({(photo_sketch < 0).sum()} of {len(photo_sketch)} pairs)"),
            ("README.md", f"ERM leads AgrSum by {lead['AgrSum']:.1f} points, PCGrad by "
                          f"{lead['PCGrad']:.1f} and AgrRand by {lead['AgrRand']:.1f}"),
        ]
    if (PRETRAINED / "gpu_pilot" / "per_trial_iid.csv").is_file():
        claims += gpu_pilot_claims(PRETRAINED / "gpu_pilot", table1)
    return claims


def gpu_pilot_claims(folder: Path, table1: Path) -> list[tuple[str, str]]:
    """The full-size GPU pilot's prose (one trial of ERM and AgrSum on sketch), recomputed
    from its per-trial CSV and agreement curves, and the CPU regime's from Table 1's."""
    pilot = pd.read_csv(folder / "per_trial_iid.csv").set_index("algorithm")["acc"]
    cpu = pd.read_csv(table1 / "per_trial_iid.csv")
    cpu_s = cpu[cpu["target"] == "S"]
    cpu0 = cpu_s[cpu_s["trial_seed"] == 0].set_index("algorithm")["acc"]
    curve = pd.read_csv(folder / "agreement_curves.csv").set_index("step")
    cpu_curve = pd.read_csv(table1 / "agreement_curves.csv")
    cpu_curve = cpu_curve[(cpu_curve["algorithm"] == "AgrSum") & (cpu_curve["test_env"] == 3)]
    cpu_curve = cpu_curve.groupby("step")[["agreement", "cosine"]].mean()
    first, last = curve.index.min(), curve.index.max()
    readme = "docs/results/pacs-pretrained/gpu_pilot/README.md"
    runs = {records[0]["args"]["algorithm"]: records  # algorithm -> its records
            for records in archived_records(folder / "runs.tar.gz")}
    source = lambda r: sum(r[f"env{e}_out_acc"] for e in (0, 1, 2)) / 3  # noqa: E731
    chosen = {a: max(rs, key=source) for a, rs in runs.items()}  # training-domain validation
    step_time = {a: sum(r["step_time"] for r in rs[1:]) / len(rs[1:]) for a, rs in runs.items()}
    assert {a: round(100 * r["env3_in_acc"], 1) for a, r in chosen.items()} == {
        a: round(pilot[a], 1) for a in runs}  # the table's cells are these checkpoints'
    return [
        (readme, f"ERM {100 * source(chosen['ERM']):.1f}% (step {chosen['ERM']['step']}), AgrSum "
                 f"{100 * source(chosen['AgrSum']):.1f}% (step {chosen['AgrSum']['step']})"),
        (readme, f"end near zero ({runs['ERM'][-1]['loss']:.3f} and {runs['AgrSum'][-1]['loss']:.3f})"),
        (readme, f"ERM {step_time['ERM']:.3f} s, AgrSum {step_time['AgrSum']:.3f} s"),
        (readme, f"ERM {runs['ERM'][-1]['mem_gb']:.1f} GB, AgrSum {runs['AgrSum'][-1]['mem_gb']:.1f} GB"),
        (readme, f"| S | **{pilot['ERM']:.1f} (n=1)** | {pilot['AgrSum']:.1f} (n=1) |"),
        (readme, f"ERM reaches {pilot['ERM']:.1f}% on sketch, against {cpu0['ERM']:.1f}% for the "
                 f"same trial in the CPU regime ({cpu_s[cpu_s['algorithm'] == 'ERM']['acc'].mean():.1f}%"),
        (readme, f"**AgrSum is {pilot['ERM'] - pilot['AgrSum']:.1f} points below ERM**"),
        (readme, f"was {cpu0['ERM'] - cpu0['AgrSum']:.1f} points below (AgrSum "
                 f"{cpu0['AgrSum']:.1f}%, ERM {cpu0['ERM']:.1f}%)"),
        (readme, f"from {curve.loc[first, 'agreement']:.3f} at step {first} to "
                 f"{curve.loc[last, 'agreement']:.3f} at step {last}"),
        (readme, f"cosine from {curve.loc[first, 'cosine']:.3f} to {curve.loc[last, 'cosine']:.3f}"),
        (readme, f"sketch runs: {cpu_curve['agreement'].iloc[0]:.3f} to "
                 f"{cpu_curve['agreement'].iloc[-1]:.3f} and {cpu_curve['cosine'].iloc[0]:.3f} to "
                 f"{cpu_curve['cosine'].iloc[-1]:.3f}"),
    ]


CONTROL = PRETRAINED / "control"


def control_arm_rows() -> list[str]:
    """The pretrained control README's multi-minus-single table, from control_arms_iid.csv."""
    arms = pd.read_csv(CONTROL / "control_arms_iid.csv", dtype={"target": str}).set_index(
        ["algorithm", "target"])
    targets = ["A", "C", "P", "S", "Avg"]
    lines = []
    for name in PAPER_RULES:
        cells = [f"{arms.loc[(name, t), 'mean_diff']:+.1f} ({arms.loc[(name, t), 'multi_ahead']}"
                 f"/{arms.loc[(name, t), 'n_pairs']}, p {arms.loc[(name, t), 'wilcoxon_p']:.2f})"
                 for t in targets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def control_diagnostics() -> pd.DataFrame:
    """Agreement and cosine per arm, mean over the checkpoints from step 100 on (the single
    arm's step-0 record combines three copies of one batch)."""
    curves = pd.read_csv(CONTROL / "agreement_curves.csv")
    return curves[curves["step"] >= 100].groupby("algorithm")[["agreement", "cosine"]].mean()


def control_diagnostic_rows() -> list[str]:
    """The control README's per-arm diagnostics table."""
    means = control_diagnostics()
    return [f"| {name} | {means.loc[name, 'agreement']:.3f} | "
            f"{means.loc[name + '-single', 'agreement']:.3f} | {means.loc[name, 'cosine']:.3f} | "
            f"{means.loc[name + '-single', 'cosine']:.3f} |" for name in PAPER_RULES]


@pytest.mark.skipif(not (CONTROL / "control_arms_iid.csv").is_file(), reason="not analysed yet")
@pytest.mark.parametrize("rows", [control_arm_rows, control_diagnostic_rows],
                         ids=["arms", "diagnostics"])
def test_pretrained_control_tables_are_the_committed_data(rows):
    assert_table_block(CONTROL / "README.md", rows())


def control_claims() -> list[tuple[str, str]]:
    """The pretrained control's prose, recomputed from its CSVs."""
    if not (CONTROL / "control_arms_iid.csv").is_file():
        return []
    arms = pd.read_csv(CONTROL / "control_arms_iid.csv", dtype={"target": str})
    per_target = arms[arms["target"] != "Avg"].groupby("algorithm")[["multi_ahead", "n_pairs"]].sum()
    avg = arms[arms["target"] == "Avg"].set_index("algorithm")
    means = control_diagnostics()
    single = means[means.index.str.endswith("-single")]
    multi = means[~means.index.str.endswith("-single")]
    per_trial = pd.read_csv(CONTROL / "per_trial_iid.csv", dtype={"target": str})
    readme = "docs/results/pacs-pretrained/control/README.md"
    ahead = ", ".join(f"{a} ahead in {per_target.loc[a, 'multi_ahead']} of "
                      f"{per_target.loc[a, 'n_pairs']}" for a in PAPER_RULES)
    assert (per_trial["algorithm"].str.endswith("-single")).sum() == 72
    return [
        (readme, f"each method: {ahead}"),
        (readme, "Averaged over the four targets: " + ", ".join(
            f"{a} {avg.loc[a, 'mean_diff']:+.1f}{' points' if a == 'AgrSum' else ''} "
            f"(p {avg.loc[a, 'wilcoxon_p']:.2f})" for a in PAPER_RULES)),
        (readme, f"two batches of one domain give gradients with a cosine of "
                 f"{single['cosine'].min():.2f}-{single['cosine'].max():.2f} and agree in sign "
                 f"on {100 * single['agreement'].min():.0f}-{100 * single['agreement'].max():.0f}% "
                 f"of the components; batches of three different domains have a cosine of "
                 f"{multi['cosine'].min():.2f}-{multi['cosine'].max():.2f} and agree on "
                 f"{100 * multi['agreement'].min():.0f}-{100 * multi['agreement'].max():.0f}%"),
    ]


@pytest.mark.parametrize("document, phrase", control_claims(), ids=lambda v: v[:40])
def test_pretrained_control_prose_quotes_the_data(document, phrase):
    assert phrase in text(REPO / document), f"{document} should say: {phrase}"


def pretrained_batch_size_claims(batch_csv) -> list[tuple[str, str]]:
    """The pretrained batch-size study's prose, recomputed from its per-trial CSV."""
    from scipy import stats

    batch = pd.read_csv(batch_csv)
    wide = batch.pivot_table(index=["value", "trial_seed"], columns="algorithm", values="acc")
    gaps = (wide["AgrSum"] - wide["ERM"]).round(2)
    diag = batch[batch["algorithm"] == "AgrSum"].groupby("value")[["agreement", "cosine"]].mean()
    acc = batch.groupby(["algorithm", "value"])["acc"].mean()
    sizes = sorted(diag.index)
    lo, hi = sizes[0], sizes[-1]
    pairs = "; ".join(f"batch {v}: " + ", ".join(f"{g:+.2f}" for g in gaps[v])
                      for v in gaps.index.get_level_values(0).unique())
    below = int((gaps < 0).sum())
    sign_p = stats.binomtest(below, len(gaps)).pvalue
    readme = "docs/results/pacs-pretrained/batch_size/README.md"
    return [
        (readme, f"mean cosine between AgrSum's domain gradients rises from "
                 f"{diag.loc[lo, 'cosine']:.3f} to {diag.loc[hi, 'cosine']:.3f} ("
                 + ", ".join(f"{c:.3f}" for c in diag["cosine"]) + ")"),
        (readme, f"the sign agreement from {100 * diag.loc[lo, 'agreement']:.1f}% to "
                 f"{100 * diag.loc[hi, 'agreement']:.1f}% ("
                 + ", ".join(f"{100 * a:.1f}%" for a in diag["agreement"]) + ";"),
        (readme, f"(trials 0, 1, 2): {pairs}."),
        (readme, f"All {below} of {len(gaps)} pairs are below zero (a sign test over them: "
                 f"p = {sign_p:.4f}, two-sided"),
        (readme, f"ERM itself gains {acc['ERM', hi] - acc['ERM', lo]:.1f} points from batch "
                 f"{lo} to {hi} and AgrSum {acc['AgrSum', hi] - acc['AgrSum', lo]:.1f}"),
        ("README.md", f"(cosine {diag.loc[lo, 'cosine']:.3f} at {lo}, {diag.loc[hi, 'cosine']:.3f} "
                      f"at {hi}), but AgrSum stays below ERM in all {below} pairs, by "
                      f"{-gaps.max():.1f} to {-gaps.min():.1f} points"),
    ]


@pytest.mark.parametrize("document, phrase", pretrained_claims(),
                         ids=lambda v: v if len(v) < 40 else v[:40])
def test_pretrained_prose_quotes_the_data(document, phrase):
    assert phrase in text(REPO / document), f"{document} should say: {phrase}"


ALLOCATOR = REPO / "docs" / "results" / "cpu_step_time" / "allocator"


def allocator_runs() -> dict[tuple[str, str, str], list[tuple[float, int, int]]]:
    """(setting, algorithm, system|keep) -> per process (median ms, system ms per step,
    minor faults per step), from the committed output of allocator/run.sh."""
    import re
    from collections import defaultdict

    runs = defaultdict(list)
    pattern = re.compile(r"(\S+) (\S+) (system|keep): median ([\d.]+) ms min [\d.]+; "
                         r"per step: user \d+ ms sys (\d+) ms minflt (\d+)")
    for line in (ALLOCATOR / "step_faults.txt").read_text().splitlines():
        setting, algorithm, mode, median, system, faults = pattern.fullmatch(line).groups()
        runs[setting, algorithm, mode].append((float(median), int(system), int(faults)))
    return runs


def span(values, fmt="{:.0f}") -> str:
    low, high = min(values), max(values)
    return fmt.format(low) if fmt.format(low) == fmt.format(high) else \
        f"{fmt.format(low)}-{fmt.format(high)}"


def test_allocator_table_and_prose_are_the_committed_output():
    runs = allocator_runs()
    rows = ["| setting | algorithm | glibc's defaults: median ms | system ms / step | minor faults "
            "/ step | kept: median ms | system ms / step | minor faults / step |",
            "|---|---|---|---|---|---|---|---|"]
    for setting in ("efficientnet_lite0-128", "resnet18-64", "mnist-28"):
        for name in ("ERM", "AgrSum"):
            cells = []
            for mode in ("system", "keep"):
                got = runs[setting, name, mode]
                assert len(got) == 2  # two processes each, alternating
                cells += [span([g[0] for g in got], "{:.1f}"), span([g[1] for g in got]),
                          span([g[2] for g in got], "{:,}")]
            rows.append(f"| {setting} | {name} | " + " | ".join(cells) + " |")
    assert_table_block(ALLOCATOR / "README.md", rows)
    said = " ".join(text(REPO / "README.md").split())
    ms = lambda s, a, m: span([g[0] for g in runs[s, a, m]])  # noqa: E731
    for setting in ("efficientnet_lite0-128", "resnet18-64"):
        for name in ("ERM", "AgrSum"):
            assert (f"{name} {ms(setting, name, 'system')} -> {ms(setting, name, 'keep')} ms"
                    in said), (setting, name)
    gaps = {mode: [a[0] - e[0] for a, e in zip(runs["resnet18-64", "AgrSum", mode],
                                               runs["resnet18-64", "ERM", mode])]
            for mode in ("system", "keep")}
    assert (f"AgrSum's step {gaps['system'][0]:.0f} and {gaps['system'][1]:.0f} ms above ERM's "
            f"there (the two alternations), against {gaps['keep'][0]:.0f} and "
            f"{gaps['keep'][1]:.0f} ms") in " ".join(text(ALLOCATOR / "README.md").split())


BASELINES = PRETRAINED / "baselines"
#: The order of the baselines README's pooled comparison: the paper's rules, then DomainBed's.
BASELINE_ORDER = ("AgrSum", "AgrRand", "PCGrad", "IRM", "GroupDRO", "Mixup", "MLDG", "Fish",
                  "Fishr", "UPGrad", "MGDA", "CAGrad")


def test_pretrained_baselines_readme_is_the_committed_data():
    """The baselines README's averages, pooled paired comparison with ERM (12 (target, trial)
    pairs, Wilcoxon) and IRM's range, recomputed from the committed per-trial CSV."""
    from scipy import stats

    csv = BASELINES / "trials0-2" / "per_trial_iid.csv"
    if not csv.is_file():
        pytest.skip(f"no committed results in {csv.parent}")
    per_trial = pd.read_csv(csv, dtype={"target": str})
    assert per_trial.groupby("algorithm").size().eq(12).all()  # 4 targets x 3 trials each
    wide = per_trial.pivot_table(index=["target", "trial_seed"], columns="algorithm",
                                 values="acc")
    rows = ["| algorithm | pairs below / equal / above ERM | mean difference (points) | p |",
            "|---|---|---|---|"]
    for name in BASELINE_ORDER:
        diff = (wide[name] - wide["ERM"]).dropna()
        rows.append(f"| {name} | {(diff < 0).sum()} / {(diff == 0).sum()} / {(diff > 0).sum()} "
                    f"| {diff.mean():+.2f} | {stats.wilcoxon(diff).pvalue:.4f} |")
    readme = BASELINES / "README.md"
    assert_table_block(readme, rows)
    avg = per_trial.groupby(["algorithm", "trial_seed"])["acc"].mean().groupby("algorithm").mean()
    ranked = ", ".join(f"{a} {v:.1f}" for a, v in avg.sort_values(ascending=False).items()
                       if a != "IRM")
    said = " ".join(text(readme).split())
    assert f"average over the four targets (%): {ranked}, **IRM {avg['IRM']:.1f}**" in said
    irm = per_trial.loc[per_trial["algorithm"] == "IRM", "acc"]
    assert f"IRM ends at {irm.min():.1f}-{irm.max():.1f}% per run" in said
    assert not (avg.drop("ERM") > avg["ERM"]).any()  # "No baseline beats ERM"
    middle = avg.drop(["ERM", "Fishr", "CAGrad", "IRM", *PAPER_RULES])
    assert (avg[["Fishr", "CAGrad"]] > middle.max()).all()
    top = " ".join(text(REPO / "README.md").split())
    assert (f"none beats ERM ({avg['ERM']:.1f} on average); Fishr {avg['Fishr']:.1f} and CAGrad "
            f"{avg['CAGrad']:.1f} are level with it, GroupDRO, MLDG, Fish, MGDA, UPGrad and "
            f"Mixup lie between {middle.max():.1f} and {middle.min():.1f}, and IRM collapses "
            f"to {avg['IRM']:.1f}") in top


STEP_TIME = REPO / "docs" / "results" / "cpu_step_time" / "benchmark.csv"
STEP_TIME_PAIRED = STEP_TIME.with_name("benchmark_paired.csv")
STEP_TIME_SETTINGS = {"resnet18-64": "resnet18-64, 3 x 16",
                      "mnist-28": "mnist-28, 3 x 32",
                      "efficientnet_lite0-128": "efficientnet_lite0-128, 3 x 128"}
STEP_TIME_COLUMNS = ["ERM", "AgrSum", "AgrRand", "PCGrad", "ANDMask", "Fish", "paper-scheme",
                     "per-domain-floor"]


def step_time_rows() -> list[str]:
    """The README's CPU step-time table rows, rebuilt from the committed benchmark CSV."""
    rows = pd.read_csv(STEP_TIME).set_index(["setting", "algorithm"])
    lines = []
    for setting, label in STEP_TIME_SETTINGS.items():
        medians = [f"{rows.loc[(setting, a), 'median_ms']:.1f}" for a in STEP_TIME_COLUMNS]
        ratios = [f"{rows.loc[(setting, a), 'paired_ratio_to_erm']:.3f}" for a in STEP_TIME_COLUMNS]
        lines += [f"| {label}: median ms | " + " | ".join(medians) + " |",
                  "| paired ratio to ERM | " + " | ".join(ratios) + " |"]
    return lines


def paired_rows() -> list[str]:
    """The README's paired-comparison rows: per setting and rule, the median per-repetition
    difference to ANDMask and to the paper's scheme (ms, its 95% confidence interval, the
    one-sided Wilcoxon p), and to the floor in ERM steps."""
    paired = pd.read_csv(STEP_TIME_PAIRED).set_index(["setting", "algorithm", "reference"])
    lines = []
    for setting in STEP_TIME_SETTINGS:
        for rule in PAPER_RULES:
            cells = []
            for ref in ("ANDMask", "paper-scheme"):
                row = paired.loc[(setting, rule, ref)]
                cells.append(f"{row['median_diff_ms']:+.1f} [{row['ci95_low_ms']:+.1f}, "
                             f"{row['ci95_high_ms']:+.1f}] (p {row['wilcoxon_p_faster']:.2g})")
            floor = paired.loc[(setting, rule, "per-domain-floor"), "median_diff_erm_steps"]
            lines.append(f"| {setting} | {rule} | " + " | ".join(cells) + f" | {floor:+.3f} |")
    return lines


def test_step_time_tables_follow_from_the_committed_steps():
    """The run's every timed step (``benchmark_times.csv``) gives its medians and, through
    :func:`~domainbed_surgery.bench.paired.compare`, its paired table."""
    from domainbed_surgery.bench.paired import compare

    steps = pd.read_csv(STEP_TIME.with_name("benchmark_times.csv"))
    table = pd.read_csv(STEP_TIME).set_index(["setting", "algorithm"])
    per = steps.pivot_table(index=["setting", "repetition"], columns="algorithm", values="ms")
    assert steps.groupby(["setting", "repetition"]).size().eq(11).all()  # one step of each
    medians = steps.groupby(["setting", "algorithm"])["ms"].median()
    assert (medians - table["median_ms"]).abs().max() < 2e-3  # times are rounded to 1 us
    paired = pd.read_csv(STEP_TIME_PAIRED)
    for row in paired.itertuples():
        times = per.loc[row.setting]
        c = compare(list(times[row.algorithm] / 1e3), list(times[row.reference] / 1e3),
                    list(times["ERM"] / 1e3))
        assert c["median_diff_ms"] == pytest.approx(row.median_diff_ms, abs=2e-3)
        assert c["ci95_low_ms"] == pytest.approx(row.ci95_low_ms, abs=2e-3)
        assert c["ci95_high_ms"] == pytest.approx(row.ci95_high_ms, abs=2e-3)
        # 5%: the CSV keeps 1 us, and a tie that rounding makes among the |differences|
        # moves scipy from the exact distribution to the normal approximation
        assert c["wilcoxon_p_faster"] == pytest.approx(row.wilcoxon_p_faster, rel=0.05)


@pytest.mark.parametrize("expected", [step_time_rows, paired_rows], ids=["steps", "paired"])
def test_readme_step_time_tables_are_the_committed_run(expected):
    assert_table_block(REPO / "README.md", expected())


def issue_targets(paired: pd.DataFrame) -> dict:
    """#19's targets in one run's paired CSV: the paper's rules against ANDMask and the
    paper's scheme (``versus``, the ``faster`` ones, those with p < 0.05), and against the
    floor on the two small settings (``floor``, ``within`` 0.05 ERM steps, the ``largest``)."""
    rules = paired[paired["algorithm"].isin(PAPER_RULES)]
    versus = rules[rules["reference"].isin(["ANDMask", "paper-scheme"])]
    faster = versus[versus["median_diff_ms"] < 0]
    floor = rules[(rules["reference"] == "per-domain-floor")
                  & rules["setting"].isin(["mnist-28", "efficientnet_lite0-128"])]
    return {"versus": versus, "faster": faster,
            "significant": faster[faster["wilcoxon_p_faster"] < 0.05], "floor": floor,
            "within": floor["median_diff_erm_steps"] <= 0.05,
            "largest": floor.loc[floor["median_diff_erm_steps"].idxmax()]}


def step_time_claims() -> list[str]:
    """The README's prose on the step-time targets, from the committed benchmark CSVs."""
    targets = issue_targets(pd.read_csv(STEP_TIME_PAIRED))
    versus, faster, significant = targets["versus"], targets["faster"], targets["significant"]
    within, largest = targets["within"], targets["largest"]
    resnet = versus[versus["setting"] == "resnet18-64"]
    assert (resnet["median_diff_ms"] < 0).all() and (resnet["wilcoxon_p_faster"] < 0.05).all()
    return [
        f"{len(faster)} of the {len(versus)} comparisons with ANDMask and the paper's scheme "
        f"have the rule faster (median per-repetition difference below zero), "
        f"{len(significant)} of them with p < 0.05",
        f"within 0.05 ERM steps of the floor in {int(within.sum())} of {len(within)} (the "
        f"largest: {largest['algorithm']} on {largest['setting']}, "
        f"{largest['median_diff_erm_steps']:+.3f})",
    ]


@pytest.mark.parametrize("phrase", step_time_claims(), ids=lambda v: v[:40])
def test_readme_step_time_prose_quotes_the_run(phrase):
    assert phrase in text(REPO / "README.md"), f"README.md should say: {phrase}"


def targets_sentence(folder: str, paired: pd.DataFrame | None = None) -> str:
    """The README's summary of an earlier run's targets, from its paired CSV (or ``paired``)."""
    if paired is None:
        paired = pd.read_csv(STEP_TIME.with_name(folder) / "benchmark_paired.csv")
    targets = issue_targets(paired)
    largest = targets["largest"]
    return (f"{len(targets['faster'])} of the {len(targets['versus'])} comparisons with "
            f"ANDMask and the paper's scheme have the rule faster, "
            f"{len(targets['significant'])} of them with p < 0.05; within 0.05 ERM steps of "
            f"the floor in {int(targets['within'].sum())} of {len(targets['within'])} (the "
            f"largest: {largest['algorithm']} on {largest['setting']}, "
            f"{largest['median_diff_erm_steps']:+.3f})")


#: Earlier runs of the README's benchmark command, newest first (folders of cpu_step_time/).
EARLIER_STEP_TIME_RUNS = ("run_74a6dff", "repeat_74a6dff", "run_5ade472", "run_ba5303f",
                          "before_allocator", "allocator_run")
#: The repeat of the README's run, at the same commit, right after it.
REPEAT = "repeat_6e9afac"


def resnet_leads(folder: str) -> pd.Series:
    """A run's median differences to ANDMask and the paper's scheme on resnet18-64 (ms), by
    (rule, reference)."""
    paired = pd.read_csv(STEP_TIME.parent / folder / "benchmark_paired.csv")
    return issue_targets(paired)["versus"].query("setting == 'resnet18-64'").set_index(
        ["algorithm", "reference"])["median_diff_ms"]


def test_readme_quotes_pcgrads_lead_on_resnet_over_the_runs():
    """Every rule ahead of both references on resnet18-64 in every run; PCGrad's lead on
    ANDMask, the smallest of the three at 74a6dff, the largest in this run and its repeat
    (the compiled Gram matrix)."""
    for folder in ("", REPEAT, *EARLIER_STEP_TIME_RUNS):
        assert (resnet_leads(folder) < 0).all(), folder
    leads = {f: -resnet_leads(f).xs("ANDMask", level="reference") for f in ("run_74a6dff", "", REPEAT)}
    assert leads["run_74a6dff"].idxmin() == "PCGrad"
    assert leads[""].idxmax() == "PCGrad" and leads[REPEAT].idxmax() == "PCGrad"
    phrase = (f"PCGrad's lead on ANDMask there, the smallest of the three rules' at 74a6dff "
              f"({leads['run_74a6dff']['PCGrad']:.1f} ms), is {leads['']['PCGrad']:.1f} ms in "
              f"this run and {leads[REPEAT]['PCGrad']:.1f} ms in its repeat, the largest of the "
              f"three in both")
    assert phrase in text(REPO / "README.md"), phrase


@pytest.mark.parametrize("folder", EARLIER_STEP_TIME_RUNS)
def test_readme_quotes_the_earlier_runs(folder):
    """The README's sentence on each earlier run of the same command."""
    said = " ".join(text(REPO / "README.md").split())
    phrase = targets_sentence(folder)
    assert phrase in said, f"README.md should say: {phrase}"


def pooled_paired(folders: tuple[str, ...]) -> pd.DataFrame:
    """The paired table (``benchmark_paired.csv``'s columns) of several runs' timed steps
    taken together, repetition by repetition."""
    from domainbed_surgery.bench.paired import compare

    steps = pd.concat([pd.read_csv(STEP_TIME.parent / f / "benchmark_times.csv").assign(run=i)
                       for i, f in enumerate(folders)])
    per = steps.pivot_table(index=["setting", "run", "repetition"], columns="algorithm",
                            values="ms")
    rows = []
    for setting in STEP_TIME_SETTINGS:
        times = per.loc[setting] / 1e3
        for rule in PAPER_RULES:
            for ref in ("ANDMask", "paper-scheme", "per-domain-floor"):
                c = compare(list(times[rule]), list(times[ref]), list(times["ERM"]))
                rows.append({"setting": setting, "algorithm": rule, "reference": ref,
                             "median_diff_ms": c["median_diff_ms"],
                             "median_diff_erm_steps": c["median_diff_erm_steps"],
                             "wilcoxon_p_faster": c["wilcoxon_p_faster"]})
    return pd.DataFrame(rows)


def test_readme_quotes_the_repeat_and_both_runs_pooled():
    """The second run at the same commit, and the two runs' repetitions taken together."""
    said = text(REPO / "README.md")
    repeat = pd.read_csv(STEP_TIME.with_name(REPEAT) / "benchmark_paired.csv")
    versus = issue_targets(repeat)["versus"]
    behind = versus[versus["median_diff_ms"] >= 0]
    # "The one behind is AgrSum against ANDMask on efficientnet_lite0-128 (+0.1 ms, its
    # interval holds 0)"
    assert len(behind) == 1
    row = behind.iloc[0]
    assert (row["setting"], row["algorithm"], row["reference"]) == (
        "efficientnet_lite0-128", "AgrSum", "ANDMask")
    assert row["ci95_low_ms"] <= 0 <= row["ci95_high_ms"]
    assert (f"The one behind is AgrSum against ANDMask on efficientnet_lite0-128 "
            f"({row['median_diff_ms']:+.1f} ms, its interval holds 0)") in said
    for phrase in (targets_sentence(REPEAT), targets_sentence("", pooled_paired(("", REPEAT)))):
        assert phrase in said, f"README.md should say: {phrase}"


def verdict(keys, diff, pvalue, low, high) -> str:
    """The README's verdict on one small setting's six comparisons: how many are faster by
    the median difference, by how much, how many with p < 0.05, how many intervals hold 0."""
    faster = [k for k in keys if diff[k] < 0]
    ahead = [-diff[k] for k in faster]
    holding = [k for k in keys if low[k] <= 0 <= high[k]]
    count = "all six" if len(faster) == len(keys) == 6 else f"{len(faster)} of the six"
    return (f"{count} faster by the median difference (ahead by "
            f"{min(ahead):.1f}-{max(ahead):.1f} ms), {sum(pvalue[k] < 0.05 for k in faster)} "
            f"of them with p < 0.05; {len(holding)} of the six 95% intervals hold 0")


def step_time_details() -> list[str]:
    """The README's other numbers on the step-time run: ERM against the floor, the TorchJD
    rules' ratios, the verdict per setting with the confidence intervals, the room on
    mnist-28, what the compiled Gram matrix changed (against the previous run), Adam after
    Agr-Sum and the cost of a diagnostic step, from the committed CSVs."""
    steps = pd.read_csv(STEP_TIME).set_index(["setting", "algorithm"])
    median, ratio = steps["median_ms"], steps["paired_ratio_to_erm"]
    paired = pd.read_csv(STEP_TIME_PAIRED)
    cell = paired.set_index(["setting", "algorithm", "reference"])
    diff, pvalue = cell["median_diff_ms"], cell["wilcoxon_p_faster"]
    low, high = cell["ci95_low_ms"], cell["ci95_high_ms"]

    def parts_of(folder):
        return pd.read_csv(STEP_TIME.parent / folder / "benchmark_parts.csv").set_index(
            ["setting", "algorithm", "part"])["median_ms"]

    parts, before = parts_of(""), parts_of("run_74a6dff")
    eff, mnist, resnet = "efficientnet_lite0-128", "mnist-28", "resnet18-64"
    torchjd = ("UPGrad", "MGDA", "CAGrad")
    surgery = PAPER_RULES + torchjd
    refs = ("ANDMask", "paper-scheme")

    def span(values, fmt="{:.3f}"):
        return fmt.format(min(values)) + "-" + fmt.format(max(values))

    def interval(s, r, ref):  # "[a, b]" of a difference the rule is ahead by (sign flipped)
        return f"[{-high[s, r, ref]:.1f}, {-low[s, r, ref]:.1f}]"

    versus = {(s, r, ref) for s in (resnet, mnist, eff) for r in PAPER_RULES for ref in refs}
    small = [k for k in versus if k[0] != resnet]
    resnet_keys = [k for k in versus if k[0] == resnet]
    closest = max(resnet_keys, key=lambda k: diff[k])
    floor_steps = [cell.loc[(mnist, r, "per-domain-floor"), "median_diff_erm_steps"]
                   for r in PAPER_RULES]
    floor_ms = [diff[mnist, r, "per-domain-floor"] for r in PAPER_RULES]
    combination = {r: parts[mnist, r, "combine_no_diagnostics"] for r in PAPER_RULES}
    adam = {s: parts[s, "AgrSum", "adam"] for s in (resnet, eff)}
    other_adam = {s: [parts[s, r, "adam"] for r in surgery if r != "AgrSum"] for s in (resnet, eff)}

    def diagnostic(table):
        return {r: table[resnet, r, "combine"] - table[resnet, r, "combine_no_diagnostics"]
                for r in surgery}

    now, then = diagnostic(parts), diagnostic(before)
    small_steps = [median[s, r] for s in (mnist, eff) for r in PAPER_RULES + refs]

    def change(setting, rule, part="combine_no_diagnostics"):
        key = (setting, rule, part)
        return f"{before[key]:.2f} -> {parts[key]:.2f}"

    return [
        f"({median[eff, 'ERM']:.1f} ms against the floor's {median[eff, 'per-domain-floor']:.1f} "
        f"here), so the ratios of that setting are below 1; on mnist-28 too "
        f"({median[mnist, 'ERM']:.1f} against {median[mnist, 'per-domain-floor']:.1f})",
        f"UPGrad {ratio[resnet, 'UPGrad']:.3f}, MGDA {ratio[resnet, 'MGDA']:.3f}, CAGrad "
        f"{ratio[resnet, 'CAGrad']:.3f} on resnet18-64; "
        f"{span([ratio[mnist, r] for r in torchjd])} on mnist-28; "
        f"{span([ratio[eff, r] for r in torchjd])} on efficientnet_lite0-128",
        f"the closest is {closest[1]} against {closest[2]}, {-diff[closest]:.1f} ms ahead "
        f"{interval(*closest)} (p {pvalue[closest]:.2g})",
        "**efficientnet_lite0-128** (1.0 M): " + verdict([k for k in versus if k[0] == eff],
                                                         diff, pvalue, low, high),
        "**mnist-28** (0.4 M): " + verdict([k for k in versus if k[0] == mnist],
                                           diff, pvalue, low, high),
        f"AgrSum carries {adam[eff] - max(other_adam[eff]):.1f} ms of Adam",
        f"ANDMask's median step is {median[mnist, 'ANDMask'] - median[mnist, 'per-domain-floor']:.1f} "
        f"ms above the floor's ({median[mnist, 'ANDMask']:.1f} against "
        f"{median[mnist, 'per-domain-floor']:.1f} ms), ours are {span(floor_steps)} ERM steps "
        f"({span(floor_ms, '{:.1f}')} ms) above it",
        f"{combination['AgrSum']:.2f} (AgrSum), {combination['AgrRand']:.2f} (AgrRand, its noise "
        f"included) and {combination['PCGrad']:.2f} ms (PCGrad)",
        f"PCGrad's combination without diagnostics: resnet18-64 {change(resnet, 'PCGrad')} ms, "
        f"efficientnet_lite0-128 {change(eff, 'PCGrad')}, mnist-28 {change(mnist, 'PCGrad')}; "
        f"the combination on a diagnostic step, resnet18-64: AgrSum "
        f"{change(resnet, 'AgrSum', 'combine')}, AgrRand {change(resnet, 'AgrRand', 'combine')}, "
        f"PCGrad {change(resnet, 'PCGrad', 'combine')}",
        f"the 95% intervals of those 12 comparisons lie between "
        f"{min(low[k] for k in small):.1f} and {max(high[k] for k in small):+.1f} ms, in steps "
        f"of {min(small_steps):.0f}-{max(small_steps):.0f} ms",
        f"({adam[resnet]:.1f} against {span(other_adam[resnet], '{:.1f}')} ms on resnet18-64 in "
        f"this run's parts table, {adam[eff]:.1f} against {span(other_adam[eff], '{:.1f}')} on "
        f"efficientnet)",
        f"a diagnostic step costs {span(now.values(), '{:.1f}')} ms more on resnet18-64 in the "
        f"current run (AgrSum {now['AgrSum']:.1f}; {span(then.values(), '{:.1f}')} before the "
        f"compiled Gram matrix, 12-15 ms on the earlier VM)",
    ]


@pytest.mark.parametrize("phrase", step_time_details(), ids=lambda v: v[:40])
def test_readme_step_time_details_quote_the_run(phrase):
    said = " ".join(text(REPO / "README.md").split())
    assert phrase in said, f"README.md should say: {phrase}"


ZIGGURAT = STEP_TIME.with_name("ziggurat")


def combination_medians(folder: Path, version: str) -> list[pd.Series]:
    """Per run of ``folder/parts_<version>_*.csv`` (two runs): the median combination
    without diagnostics (ms), indexed by (setting, algorithm)."""
    runs = []
    for path in sorted(folder.glob(f"parts_{version}_*.csv")):
        parts = pd.read_csv(path)
        runs.append(parts[parts["part"] == "combine_no_diagnostics"].set_index(
            ["setting", "algorithm"])["median_ms"])
    assert len(runs) == 2
    return runs


def noise_costs() -> dict[tuple[str, str], float]:
    """Agr-Rand's noise in the before/after runs of the compiled ziggurat: its combination
    without diagnostics minus Agr-Sum's (ms), by (setting, before/new), mean of two runs."""
    costs = {}
    for version in ("before", "new"):
        runs = []
        for medians in combination_medians(ZIGGURAT, version):
            wide = medians.unstack("algorithm")
            runs.append(wide["AgrRand"] - wide["AgrSum"])
        for setting, cost in (sum(runs) / len(runs)).items():
            costs[(setting, version)] = cost
    return costs


def test_readme_quotes_the_ziggurat_before_and_after():
    costs = noise_costs()
    phrase = "; ".join(
        f"{setting} {costs[(setting, 'before')]:.1f} -> {costs[(setting, 'new')]:.1f} ms"
        for setting in STEP_TIME_SETTINGS)
    assert phrase in text(REPO / "README.md"), f"README.md should say: {phrase}"
    assert all(costs[(s, "new")] < costs[(s, "before")] for s in STEP_TIME_SETTINGS)


UNSIGNED = STEP_TIME.with_name("unsigned_index")


def test_step_time_readme_quotes_the_vectorized_kernel_before_and_after():
    """docs/results/cpu_step_time/README.md: the combination without diagnostics in the two
    runs before and the two after the agreeing-sum kernel's unsigned index, as ranges; every
    run after it is faster than every run before."""
    ranges = {version: pd.concat(combination_medians(UNSIGNED, version), axis=1)
              for version in ("before", "after")}
    fmt_range = {"efficientnet_lite0-128": "{:.2f}-{:.2f}", "resnet18-64": "{:.1f}-{:.1f}"}
    document = text(STEP_TIME.with_name("README.md"))
    for setting in fmt_range:
        for algorithm in ("AgrSum", "AgrRand"):
            before = ranges["before"].loc[(setting, algorithm)]
            after = ranges["after"].loc[(setting, algorithm)]
            assert after.max() < before.min(), (setting, algorithm)
            phrase = (f"{algorithm} " + fmt_range[setting].format(before.min(), before.max())
                      + " -> " + fmt_range[setting].format(after.min(), after.max()) + " ms")
            assert phrase in document, f"the step-time README should say: {phrase}"
