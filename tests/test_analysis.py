"""The gradient analyses against cases with known answers.

* cosine statistics: brute force over pairs, identical copies (intra = inter = 1),
  identical distributions (intra ~= inter), flipped labels on a linear model whose
  per-sample gradients are known in closed form (inter < 0 < intra, exact values);
* per-sample gradients from ``vmap`` == a per-sample autograd loop;
* class-balanced one-class sampling;
* both command lines end to end (RotatedDigits; a synthetic DomainBed sweep folder).
"""

import csv
import itertools
import json
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from domainbed_surgery.analysis import curves
from domainbed_surgery.analysis.per_sample import (eval_mode, measure_similarity,
                                                   per_sample_gradients)
from domainbed_surgery.analysis.similarity import (cosine_stats, eligible_classes,
                                                   one_class_indices)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- cosine statistics ---------------------------------------------------------------
def brute_force(grads, domains):
    intra, inter = [], []
    for i, j in itertools.combinations(range(len(grads)), 2):
        c = F.cosine_similarity(grads[i].double(), grads[j].double(), dim=0).item()
        (intra if domains[i] == domains[j] else inter).append(c)
    return sum(intra) / len(intra), sum(inter) / len(inter), len(intra), len(inter)


def test_cosine_stats_matches_brute_force_over_pairs():
    g = torch.randn(11, 37, generator=gen(1)) + 0.3
    d = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 0, 1])
    expected = brute_force(g, d)
    stats = cosine_stats(g.clone(), d)
    assert stats.n_intra == expected[2] == 3 + 3 + 6 + 0 + 3 + 0  # C(4,2)+C(3,2)+C(4,2)
    assert stats.n_inter == expected[3] == math.comb(11, 2) - expected[2]
    assert stats.intra == pytest.approx(expected[0], abs=1e-6)
    assert stats.inter == pytest.approx(expected[1], abs=1e-6)


def test_cosine_stats_hand_computed():
    # domain 0: e1, e1+e2 ; domain 1: -e1
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    stats = cosine_stats(g, torch.tensor([0, 0, 1]))
    r = 1 / math.sqrt(2)
    assert stats.intra == pytest.approx(r)
    assert stats.inter == pytest.approx((-1 - r) / 2)
    assert (stats.n_intra, stats.n_inter) == (1, 2)


def test_identical_copies_give_intra_inter_one():
    row = torch.randn(1, 1000, generator=gen(2))
    stats = cosine_stats(row.repeat(6, 1), torch.tensor([0, 0, 0, 1, 1, 1]))
    assert stats.intra == pytest.approx(1.0, abs=1e-6)
    assert stats.inter == pytest.approx(1.0, abs=1e-6)
    assert (stats.n_intra, stats.n_inter) == (6, 9)


def test_zero_gradients_are_left_out_and_missing_pairs_are_nan():
    g = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    stats = cosine_stats(g, torch.tensor([0, 0, 1]))
    assert (stats.n_intra, stats.n_inter) == (0, 1)
    assert math.isnan(stats.intra) and stats.inter == pytest.approx(1.0)


def test_cosine_stats_checks_shapes():
    with pytest.raises(ValueError):
        cosine_stats(torch.zeros(3, 2), torch.tensor([0, 1]))


# --- a linear model with closed-form per-sample gradients ------------------------------
def zero_linear(d, k=2):
    """W = 0: softmax is uniform, so the gradient of sample (x, y) is (1/k - e_y) x^T."""
    model = nn.Linear(d, k, bias=False)
    nn.init.zeros_(model.weight)
    return model


def test_flipped_labels_conflict_on_a_linear_model():
    """Domain B = domain A's images with the other label.

    With W = 0 and two classes, grad_i = s_i * (0.5, -0.5)^T x_i^T with s_i = -1 for
    label 0 and +1 for label 1, so cos(grad_i, grad_j) = s_i s_j cos(x_i, x_j): intra =
    mean_{i<j} cos(x_i, x_j) > 0 for positive images, and inter = -mean over all (i, j),
    the i = j pairs (each exactly -1) included.
    """
    x = torch.rand(5, 1, 4, 4, generator=gen(3)) + 0.1  # positive "images"
    model = nn.Sequential(nn.Flatten(), zero_linear(16))
    a = (x, torch.zeros(5, dtype=torch.long))
    b = (x.clone(), torch.ones(5, dtype=torch.long))
    stats = measure_similarity(model, [a, b])
    flat = F.normalize(x.reshape(5, -1).double(), dim=1)
    cos = flat @ flat.T
    iu = torch.triu_indices(5, 5, 1)
    assert stats.intra == pytest.approx(cos[iu[0], iu[1]].mean().item(), abs=1e-6)
    assert stats.inter == pytest.approx(-cos.mean().item(), abs=1e-6)
    assert stats.intra > 0.5 and stats.inter < -0.5
    assert (stats.n_intra, stats.n_inter) == (20, 25)


def test_same_images_as_two_domains_are_indistinguishable():
    # Same class, identical copies of one image in both "domains": all gradients equal.
    x = torch.rand(1, 1, 4, 4, generator=gen(4)).repeat(4, 1, 1, 1)
    y = torch.full((4,), 2, dtype=torch.long)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    stats = measure_similarity(model, [(x, y), (x.clone(), y.clone())])
    assert stats.intra == pytest.approx(1.0, abs=1e-6)
    assert stats.inter == pytest.approx(1.0, abs=1e-6)


def test_identical_distributions_give_intra_equal_inter_in_expectation():
    """Two domains drawn from one distribution: E[intra] = E[inter] (exchangeable samples).

    Over seeds the sampling noise of intra - inter is < 1e-3 here; counting the 160
    self-pairs (cosine 1) as intra-domain pairs would move intra by ~0.005.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.rand(160, 1, 4, 4, generator=gen(5))
    y = torch.zeros(160, dtype=torch.long)
    stats = measure_similarity(model, [(x[:80], y[:80]), (x[80:], y[80:])])
    assert 0.1 < stats.inter < 0.99  # a non-degenerate case
    assert stats.intra == pytest.approx(stats.inter, abs=0.002)
    # ...and a genuinely different second domain (shifted inputs) separates them.
    shifted = measure_similarity(model, [(x[:80], y[:80]), (x[80:] + 1.0, y[80:])])
    assert shifted.intra - shifted.inter > 0.05


# --- per-sample gradients --------------------------------------------------------------
class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.head(torch.tanh(self.frozen(self.drop(h))))


def autograd_loop(model, x, y):
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for xi, yi in zip(x, y):
        g = torch.autograd.grad(F.cross_entropy(model(xi[None]), yi[None]), params)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_vmap_per_sample_gradients_equal_autograd_loop(chunk_size):
    torch.manual_seed(0)
    model = SmallNet()
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x, y = torch.randn(7, 1, 6, 6), torch.randint(0, 3, (7,))
    with eval_mode(model):
        got = per_sample_gradients(model, x, y, chunk_size=chunk_size)
        want = autograd_loop(model, x, y)
    assert got.shape == (7, sum(p.numel() for p in model.parameters() if p.requires_grad))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_measurement_restores_modes_and_leaves_grads_and_buffers_alone():
    torch.manual_seed(0)
    model = SmallNet().train()
    model.frozen.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(6, 1, 6, 6), torch.randint(0, 3, (6,))
    stats = measure_similarity(model, [(x[:3], y[:3]), (x[3:], y[3:])])
    assert model.training and model.bn.training and not model.frozen.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (stats.n_intra, stats.n_inter) == (6, 9)


# --- one-class sampling ----------------------------------------------------------------
def test_one_class_indices_same_class_everywhere_and_distinct():
    labels = [torch.tensor([0, 1, 1, 2, 2, 2, 3]), torch.tensor([2, 1, 0, 2, 1, 5]),
              torch.tensor([1, 2, 2, 4, 1, 2])]
    # class 0 is missing from domain 2, 3/4/5 from others; 1 and 2 are eligible.
    assert eligible_classes(labels, 2) == [1, 2]
    g = gen(0)
    for _ in range(50):
        cls, picks = one_class_indices(labels, 2, g)
        assert cls in (1, 2)
        for lab, ix in zip(labels, picks):
            assert len(ix) == 2 and len(set(ix.tolist())) == 2
            assert (lab[ix] == cls).all()


def test_one_class_indices_is_class_balanced_and_takes_what_there_is():
    # class 0 is 20x more frequent than class 1; both should be drawn ~ equally often.
    labels = [torch.tensor([0] * 40 + [1] * 2), torch.tensor([0] * 40 + [1] * 3)]
    g = gen(1)
    draws = [one_class_indices(labels, 8, g) for _ in range(400)]
    counts = Counter(cls for cls, _ in draws)
    assert 160 < counts[1] < 240
    sizes = {tuple(len(ix) for ix in picks) for cls, picks in draws if cls == 1}
    assert sizes == {(2, 3)}  # fewer than n: all of them, no duplicates


def test_one_class_indices_needs_a_common_class():
    with pytest.raises(ValueError):
        one_class_indices([torch.tensor([0, 0]), torch.tensor([1, 1])], 2, gen())


# --- the gradient_similarity command -----------------------------------------------------
def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.domainbed
def test_gradient_similarity_cli_on_rotated_digits(domainbed, tmp_path, capsys):
    pytest.importorskip("sklearn")
    from domainbed_surgery.analysis.gradient_similarity import COLUMNS
    from domainbed_surgery.scripts import gradient_similarity as cli

    out = tmp_path / "out"
    rc = cli.main(["--dataset", "RotatedDigits", "--data_dir", str(tmp_path),
                   "--test_envs", "0", "--test_envs", "1,2", "--steps", "2", "--every", "2",
                   "--per_domain", "3", "--hparams", json.dumps({"batch_size": 8}),
                   "--output_dir", str(out)])
    assert rc == 0
    rows = read_csv(out / "gradient_similarity.csv")
    assert list(rows[0]) == COLUMNS
    assert [(r["test_envs"], int(r["step"])) for r in rows] == \
        [("0", 0), ("0", 2), ("1,2", 0), ("1,2", 2)]
    assert {r["source_domains"] for r in rows} == {"25+50+75", "0+75"}
    for r in rows:
        three = r["test_envs"] == "0"  # 3 sources x 3 samples, or 2 x 3
        assert (int(r["n_intra"]), int(r["n_inter"])) == ((9, 27) if three else (6, 9))
        assert -1.0 <= float(r["intra"]) <= 1.0 and -1.0 <= float(r["inter"]) <= 1.0
        assert 0 <= int(r["class"]) < 10
    assert rows[0]["train_loss"] == "" and float(rows[1]["train_loss"]) > 0  # NaN: no update yet
    for ext in ("png", "pdf"):
        assert (out / f"gradient_similarity.{ext}").stat().st_size > 1000


def test_parse_test_env_choices():
    from domainbed_surgery.analysis.gradient_similarity import parse_test_env_choices

    assert parse_test_env_choices(None, 4) == [(0,), (1,), (2,), (3,)]
    assert parse_test_env_choices([["0", "2"], ["1,3"], ["0"]], 4) == [(0,), (2,), (1, 3)]
    for bad in ("4", "0,1,2"):  # out of range; one source domain left
        with pytest.raises(ValueError):
            parse_test_env_choices([[bad]], 4)


# --- the agreement_curves command ----------------------------------------------------------
def write_run(sweep, name, algorithm, test_env, trial_seed, values, hparams_seed=0,
              dataset="RotatedDigits", extra=None):
    """One fake DomainBed run folder: results.jsonl records for steps 0, 10, 20..."""
    run = sweep / name
    run.mkdir(parents=True)
    with open(run / "results.jsonl", "w") as f:
        for k, v in enumerate(values):
            record = {"args": {"algorithm": algorithm, "dataset": dataset,
                               "test_envs": [test_env], "trial_seed": trial_seed,
                               "hparams_seed": hparams_seed},
                      "step": 10 * k, "loss": 1.0, "env0_in_acc": 0.5}
            if v is not None:
                record.update({"agreement": v, "cosine": v - 0.5})
            record.update((extra or {}).get(k, {}))
            f.write(json.dumps(record) + "\n")


def test_agreement_curves_numbers_and_files(domainbed, tmp_path, capsys):
    from domainbed_surgery.scripts import agreement_curves as cli

    sweep = tmp_path / "sweep"
    write_run(sweep, "a", "AgrSum", 0, 0, [0.2, 0.4, 0.6])
    write_run(sweep, "b", "AgrSum", 0, 1, [0.4, 0.6, 0.8])
    write_run(sweep, "c", "PCGrad", 1, 0, [0.9, 0.7], hparams_seed=3)
    write_run(sweep, "d", "ERM", 0, 0, [None, None, None])
    out = tmp_path / "figs"
    assert cli.main(["--input_dir", str(sweep), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipping ERM (3 records)" in printed

    rows = read_csv(out / "agreement_curves.csv")
    assert list(rows[0]) == curves.COLUMNS
    got = sorted((r["algorithm"], r["test_env"], int(r["trial_seed"]), int(r["hparams_seed"]),
                  int(r["step"]), float(r["agreement"]), float(r["cosine"])) for r in rows)
    want = sorted([("AgrSum", "0", 0, 0, 0, 0.2, -0.3), ("AgrSum", "0", 0, 0, 10, 0.4, -0.1),
                   ("AgrSum", "0", 0, 0, 20, 0.6, 0.1), ("AgrSum", "0", 1, 0, 0, 0.4, -0.1),
                   ("AgrSum", "0", 1, 0, 10, 0.6, 0.1), ("AgrSum", "0", 1, 0, 20, 0.8, 0.3),
                   ("PCGrad", "1", 0, 3, 0, 0.9, 0.4), ("PCGrad", "1", 0, 3, 10, 0.7, 0.2)])
    assert [g[:5] for g in got] == [w[:5] for w in want]
    for g, w in zip(got, want):
        assert g[5:] == pytest.approx(w[5:])
    for ext in ("png", "pdf"):
        assert (out / f"agreement_curves.{ext}").stat().st_size > 1000
    assert not (out / "agreement_per_layer.png").exists()

    # The plotted line is the mean over trials, the band their spread.
    frame, _, _ = curves.records_to_frames(json.loads(line) for run in "abcd"
                                           for line in open(sweep / run / "results.jsonl"))
    agr = curves.summarize(frame, "agreement")
    agr_sum = agr[agr["algorithm"] == "AgrSum"]
    assert agr_sum["mean"].tolist() == pytest.approx([0.3, 0.5, 0.7])
    assert agr_sum["std"].tolist() == pytest.approx([0.1, 0.1, 0.1])
    assert agr_sum["n"].tolist() == [2, 2, 2]


def test_agreement_curves_per_layer(domainbed, tmp_path, capsys):
    from domainbed_surgery.scripts import agreement_curves as cli

    sweep = tmp_path / "sweep"
    layer = {k: {"agreement/featurizer.conv1.weight": 0.1 * k,
                 "agreement/featurizer.conv1.bias": 0.2 * k,
                 "agreement/classifier.weight": 0.5} for k in range(3)}
    write_run(sweep, "a", "AgrRand", 2, 0, [0.3, 0.3, 0.3], extra=layer)
    write_run(sweep, "b", "AgrSum", 2, 0, [0.3, 0.3, 0.3])
    assert cli.main(["--input_dir", str(sweep), "--per_layer"]) == 0
    rows = read_csv(sweep / "agreement_per_layer.csv")
    assert list(rows[0]) == curves.LAYER_COLUMNS
    assert len(rows) == 9 and {r["algorithm"] for r in rows} == {"AgrRand"}
    bias = sorted((int(r["step"]), float(r["agreement"])) for r in rows
                  if r["layer"] == "featurizer.conv1.bias")
    assert bias == [(0, 0.0), (10, pytest.approx(0.2)), (20, pytest.approx(0.4))]
    assert curves.layer_group("featurizer.conv1.bias") == "featurizer.conv1"
    for ext in ("png", "pdf"):
        assert (sweep / f"agreement_per_layer.{ext}").stat().st_size > 1000

    capsys.readouterr()
    assert cli.main(["--input_dir", str(sweep), "--per_layer", "--layer_regex", "nothing"]) == 0
    assert "no 'agreement/<layer>' keys" in capsys.readouterr().out


def test_agreement_curves_without_diagnostics_says_so(domainbed, tmp_path, capsys):
    from domainbed_surgery.scripts import agreement_curves as cli

    sweep = tmp_path / "sweep"
    write_run(sweep, "erm", "ERM", 0, 0, [None, None])
    write_run(sweep, "coral", "CORAL", 1, 0, [None])
    assert cli.main(["--input_dir", str(sweep)]) == 1
    printed = capsys.readouterr().out
    assert "skipping CORAL (1 records)" in printed and "skipping ERM (2 records)" in printed
    assert "No record under" in printed and "nothing to plot" in printed
    assert not (sweep / "agreement_curves.csv").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["--input_dir", str(empty)]) == 1
    assert "No results.jsonl records" in capsys.readouterr().out


def test_runs_side_by_side_by_hparam(tmp_path):
    """Two batch sizes x (ERM, AgrSum) x 2 trials on target 3: per value, selected accuracy,
    the paired gap to ERM and the mean diagnostics, never pooled across values."""
    import json

    pytest.importorskip("domainbed_surgery.report.trials")
    from domainbed_surgery.plugin import locate

    try:
        locate.ensure_importable()
    except ImportError as exc:
        pytest.skip(f"DomainBed not importable: {exc}")
    import pandas as pd

    from domainbed_surgery.analysis.by_hparam import (PER_TRIAL_COLUMNS, per_trial_by_hparam,
                                                      summarize_by_hparam, summarize_per_trial)
    from domainbed_surgery.report import records as rec

    accs = {(16, "ERM"): [0.30, 0.40], (16, "AgrSum"): [0.35, 0.41],
            (64, "ERM"): [0.50, 0.60], (64, "AgrSum"): [0.40, 0.50]}
    for (batch, alg), values in accs.items():
        for trial, acc in enumerate(values):
            run = tmp_path / f"{alg}_{batch}_{trial}"
            run.mkdir()
            lines = []
            for step, test, val, agree in [(0, 0.0, 0.1, 0.2), (100, acc, 0.9, 0.4)]:
                r = {"args": {"dataset": "PACS32", "algorithm": alg, "test_envs": [3],
                              "trial_seed": trial, "hparams_seed": 0},
                     "hparams": {"batch_size": batch}, "step": step}
                for e in range(4):
                    r[f"env{e}_in_acc"] = test if e == 3 else 0.5
                    r[f"env{e}_out_acc"] = 0.0 if e == 3 else val
                if alg == "AgrSum":
                    r.update(agreement=agree, cosine=agree / 2)
                lines.append(json.dumps(r))
            (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    frame = summarize_by_hparam(rec.load_records(tmp_path), "batch_size")
    got = {(r.value, r.algorithm): r for r in frame.itertuples()}
    assert list(frame["value"]) == ["16", "16", "64", "64"]
    assert got[("16", "ERM")].acc_mean == pytest.approx(35.0)
    assert got[("64", "AgrSum")].acc_mean == pytest.approx(45.0)
    assert got[("16", "AgrSum")].gap_mean == pytest.approx(3.0)  # (+5, +1) / 2
    assert got[("64", "AgrSum")].gap_mean == pytest.approx(-10.0)
    assert got[("64", "AgrSum")].n_pairs == 2 and math.isnan(got[("64", "ERM")].gap_mean)
    assert got[("16", "AgrSum")].agreement == pytest.approx(0.3)  # mean over checkpoints
    assert got[("16", "AgrSum")].cosine == pytest.approx(0.15)
    assert math.isnan(got[("16", "ERM")].agreement)
    # the table is computed from the per-trial rows, which are the data to publish
    per_trial = per_trial_by_hparam(rec.load_records(tmp_path), "batch_size")
    assert len(per_trial) == 8 and list(per_trial.columns) == PER_TRIAL_COLUMNS
    row = per_trial[(per_trial.value == "64") & (per_trial.algorithm == "AgrSum")
                    & (per_trial.trial_seed == 1)].iloc[0]
    assert row.acc == pytest.approx(50.0) and row.agreement == pytest.approx(0.3)
    pd.testing.assert_frame_equal(summarize_per_trial(per_trial), frame)


def test_gradient_similarity_summary_and_redraw(tmp_path, capsys):
    """The per-choice summary from a CSV: means, difference and share of steps with intra
    above inter, known by hand; --from_csv redraws figure and summary without training."""
    from domainbed_surgery.analysis import gradient_similarity as gs
    from domainbed_surgery.scripts import gradient_similarity as cli

    rows = [{"dataset": "PACS32", "test_envs": "3", "source_domains": "A+C+P", "step": s,
             "class": 0, "intra": i, "inter": e, "n_intra": 9, "n_inter": 27,
             "n_per_domain": "3/3/3", "train_loss": 1.0}
            for s, i, e in [(0, 0.5, 0.4), (10, 0.3, 0.4), (20, 0.7, 0.4)]]
    import pandas as pd

    csv_path = tmp_path / "in.csv"
    pd.DataFrame(rows, columns=gs.COLUMNS).to_csv(csv_path, index=False)
    assert cli.main(["--from_csv", str(csv_path), "--output_dir", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / gs.SUMMARY_NAME).read_text()
    assert "| PACS32 | 3 | A, C, P | 3 | 0.500 | 0.400 | +0.100 | 67% |" in text
    assert (tmp_path / "out" / "gradient_similarity.png").stat().st_size > 1000
    with pytest.raises(SystemExit):
        cli.parse_args(["--steps", "3"])  # neither --dataset nor --from_csv


def test_agreement_curves_keep_the_control_arm_apart():
    """A sweep folder holding both arms of the Fig. 4 control (the pretrained sweeps share
    one folder) gives one curve per arm, labelled as the report labels them, not one
    pooled curve per algorithm."""
    records = [{"args": {"dataset": "PACS", "algorithm": "AgrSum", "test_envs": [0],
                         "trial_seed": 0, "hparams_seed": 0},
                "hparams": {"surgery_batches": arm}, "step": 0, "agreement": value,
                "cosine": value}
               for arm, value in (("multi", 0.3), ("single", 0.5))]
    records.append({**records[0], "hparams": {}})  # runs from before the hparam existed
    frame, _, _ = curves.records_to_frames(records)
    assert frame["algorithm"].tolist() == ["AgrSum", "AgrSum", "AgrSum-single"]
    assert frame["agreement"].tolist() == [0.3, 0.3, 0.5]


def test_by_hparam_finds_the_control_arms_diagnostics(tmp_path):
    """per_trial_by_hparam labels a control arm ``<name>-single`` as the report does, and
    still finds that arm's logged agreement (it looked the runs up by the bare name)."""
    from domainbed_surgery.plugin import locate

    try:
        locate.ensure_importable()
    except ImportError as exc:
        pytest.skip(f"DomainBed not importable: {exc}")
    from domainbed_surgery.analysis.by_hparam import per_trial_by_hparam
    from domainbed_surgery.report import records as rec

    for arm, agree in (("multi", 0.2), ("single", 0.6)):
        run = tmp_path / arm
        run.mkdir()
        r = {"args": {"dataset": "PACS32", "algorithm": "AgrSum", "test_envs": [3],
                      "trial_seed": 0, "hparams_seed": 0},
             "hparams": {"batch_size": 16, "surgery_batches": arm}, "step": 100,
             "agreement": agree, "cosine": agree / 2}
        r.update({f"env{e}_{s}_acc": 0.5 for e in range(4) for s in ("in", "out")})
        (run / "results.jsonl").write_text(json.dumps(r) + "\n")
    per_trial = per_trial_by_hparam(rec.load_records(tmp_path), "batch_size").set_index(
        "algorithm")
    assert per_trial.loc["AgrSum", "agreement"] == pytest.approx(0.2)
    assert per_trial.loc["AgrSum-single", "agreement"] == pytest.approx(0.6)
