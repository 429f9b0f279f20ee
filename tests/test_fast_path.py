"""The per-domain gradient fast path against the straightforward computation.

``GradientSurgery.domain_gradients`` writes each domain's gradient straight into a
row of a preallocated ``[N, P]`` buffer (``.grad`` pointed at the row before that
domain's backward). Whatever it does to be fast, it must give what the plain
per-domain loop gives: for each domain on its own, ``zero_grad``, forward,
cross-entropy, backward, collect and flatten every trainable ``.grad`` (an unused
parameter counting as zero). The two are compared bitwise (``torch.equal``;
both run the same kernels on the same inputs, so there is no reason for float
differences), on twin copies of one model so BatchNorm running statistics and
dropout masks can be compared too. Each equality test also checks that the
effect it relies on is real (per-domain BatchNorm statistics differ from
batched ones, dropout masks depend on the seed, the AgrSum mask drops
something), so that it can fail when the fast path does something else.

The benchmark CLI is run end to end on its ``tiny`` setting.
"""

from __future__ import annotations

import copy
import csv
import json
import runpy
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import require_domainbed

require_domainbed()

from domainbed import algorithms as db_algorithms  # noqa: E402
from domainbed import hparams_registry  # noqa: E402

from domainbed_surgery import rules  # noqa: E402
from domainbed_surgery.bench import allocator, step_time  # noqa: E402
from domainbed_surgery.surgery import algorithm as algorithm_module  # noqa: E402
from domainbed_surgery.scripts import benchmark  # noqa: E402

pytestmark = pytest.mark.domainbed


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def make(name: str, input_shape, dataset: str = "PACS", num_classes: int = 7, seed: int = 0,
         **hparams):
    """A DomainBed algorithm built from ``seed`` with default hparams plus ``hparams``."""
    hp = hparams_registry.default_hparams(name, dataset)
    hp.update({"pretrained": False, **hparams})
    torch.manual_seed(seed)
    return db_algorithms.get_algorithm_class(name)(input_shape, num_classes, 3, hp).train()


def minibatches(input_shape, n: int = 3, batch: int = 4, num_classes: int = 7, seed: int = 1):
    """``n`` random (x, y) minibatches, distinct per domain (shifted means)."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn((batch, *input_shape), generator=gen) + i,
             torch.randint(0, num_classes, (batch,), generator=gen)) for i in range(n)]


#: DomainBed's MLP featurizer on 16-d vectors: the cheapest model DomainBed builds.
MLP_SHAPE = (16,)
MLP = {"dataset": "RotatedDigits", "num_classes": 10, "mlp_width": 32, "mlp_depth": 3,
       "mlp_dropout": 0.0, "backbone": None}


def trainable(alg):
    return [p for p in alg.network.parameters() if p.requires_grad]


def plain_domain_gradients(alg, batches):
    """The straightforward way: per domain zero_grad, forward, CE, backward, flatten grads."""
    params = trainable(alg)
    rows, losses = [], []
    for x, y in batches:
        alg.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(alg.predict(x), y)
        loss.backward()
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                               for p in params]))
        losses.append(loss.detach())
    return torch.stack(rows), torch.stack(losses)


def buffers(alg) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in alg.network.named_buffers()}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------
# domain_gradients
# --------------------------------------------------------------------------------------
@pytest.fixture(params=["hooks", "autograd"])
def copy_path(request, monkeypatch):
    """Both ways of filling the ``[N, P]`` buffer: the CPU's per-parameter hooks and the
    GPU's ``autograd.grad`` + one fused copy (forced here on the CPU)."""
    if request.param == "autograd":
        monkeypatch.setattr(algorithm_module, "HOOKED_COPY_DEVICES", frozenset())
    return request.param


def test_batchnorm_and_dropout_per_domain_passes(copy_path):
    """ResNet-18 in train mode (BatchNorm, ``resnet_dropout`` 0.5), 3 domains.

    One forward per domain in the same order on both paths, so BatchNorm uses
    per-domain batch statistics and the running statistics end up equal; torch is
    seeded identically before both paths, so the dropout masks are the same.
    """
    shape = (3, 16, 16)
    fast = make("AgrSum", shape, backbone="resnet18", resnet_dropout=0.5)
    plain = copy.deepcopy(fast)
    batches = minibatches(shape)
    assert any(isinstance(m, torch.nn.BatchNorm2d) and m.training for m in fast.modules())
    before = buffers(fast)

    torch.manual_seed(123)
    grads, losses = fast.domain_gradients(batches)
    torch.manual_seed(123)
    ref, ref_losses = plain_domain_gradients(plain, batches)

    assert grads.shape == (3, sum(p.numel() for p in trainable(fast)))
    assert torch.equal(grads, ref)
    assert torch.equal(losses, ref_losses)
    after = buffers(fast)
    assert_same_tensors(after, buffers(plain))
    # Three forward passes, one per domain: every BN layer counted three batches
    # and its running mean moved.
    counts = {v.item() for k, v in after.items() if k.endswith("num_batches_tracked")}
    assert counts == {3}
    assert not torch.equal(after["0.network.bn1.running_mean"], before["0.network.bn1.running_mean"])

    # The comparison is discriminating. (a) Dropout is on: another seed, other masks,
    # other gradients. (b) BatchNorm statistics matter: one batched pass over the
    # union of the domains gives another gradient than the mean of per-domain ones.
    other = copy.deepcopy(plain)
    torch.manual_seed(124)
    moved, _ = plain_domain_gradients(other, batches)
    assert not torch.equal(moved, ref)
    other.featurizer.dropout.p = 0.0  # (b) without dropout noise
    per_domain, _ = plain_domain_gradients(other, batches)
    other.optimizer.zero_grad(set_to_none=True)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    F.cross_entropy(other.predict(x), y).backward()
    union = torch.cat([p.grad.flatten() for p in trainable(other)])
    assert not torch.allclose(union, per_domain.mean(dim=0), rtol=1e-3, atol=1e-6)


def test_update_takes_one_order_free_batchnorm_update_per_step():
    """ResNet-18 (BatchNorm in train mode), 3 domains: ``update`` keeps per-domain batch
    statistics in the forwards but moves the running statistics once per step, from the
    mean of the per-domain batch statistics, whatever the order of the domains.

    Known answer for the first BatchNorm (its input is ``conv1(x)``):
    ``(1 - m) * old + m * mean_d(batch statistic of conv1(x_d))``.
    """
    shape = (3, 16, 16)
    first = make("AgrSum", shape, backbone="resnet18")
    permuted = copy.deepcopy(first)
    batches = minibatches(shape)
    bn1 = first.featurizer.network.bn1
    m, old_mean, old_var = bn1.momentum, bn1.running_mean.clone(), bn1.running_var.clone()
    with torch.no_grad():
        acts = [first.featurizer.network.conv1(x) for x, _ in batches]
    mean_d = torch.stack([a.mean(dim=(0, 2, 3)) for a in acts]).mean(0)
    var_d = torch.stack([a.var(dim=(0, 2, 3), unbiased=True) for a in acts]).mean(0)

    first.update(batches)
    permuted.update([batches[2], batches[0], batches[1]])

    torch.testing.assert_close(bn1.running_mean, (1 - m) * old_mean + m * mean_d)
    torch.testing.assert_close(bn1.running_var, (1 - m) * old_var + m * var_d)
    counts = {v.item() for k, v in first.network.named_buffers() if k.endswith("num_batches_tracked")}
    assert counts == {1}
    for (name, a), b in zip(first.network.named_buffers(), permuted.network.buffers()):
        torch.testing.assert_close(a, b, msg=name)
    # AgrSum is symmetric in the domains: the same update up to float summation order
    for a, b in zip(trainable(first), trainable(permuted)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_unused_parameters_are_zero_and_frozen_ones_are_skipped(copy_path):
    """An unused parameter's slice is zero; a frozen one is not in the buffer, .grad stays None."""
    shape = MLP_SHAPE
    fast = make("AgrSum", shape, **MLP)
    # Unused: registered on the featurizer, never touched by its forward.
    fast.featurizer.register_parameter("unused", torch.nn.Parameter(torch.ones(7)))
    # Frozen: the first layer.
    frozen = list(fast.featurizer.input.parameters())
    for p in frozen:
        p.requires_grad_(False)
    plain = copy.deepcopy(fast)
    batches = minibatches(shape, num_classes=10)

    grads, losses = fast.domain_gradients(batches)
    ref, ref_losses = plain_domain_gradients(plain, batches)

    params = trainable(fast)
    assert grads.shape == (3, sum(p.numel() for p in params))
    assert sum(p.numel() for p in fast.network.parameters()) == grads.shape[1] + sum(
        p.numel() for p in frozen)
    assert torch.equal(grads, ref)
    assert torch.equal(losses, ref_losses)
    # The unused parameter's columns are all zero (and plain autograd left it None).
    offset = 0
    for p in params:
        if p is fast.featurizer.unused:
            break
        offset += p.numel()
    assert torch.count_nonzero(grads[:, offset:offset + 7]) == 0
    assert plain.featurizer.unused.grad is None
    assert all(p.grad is None for p in frozen)

    # A full step leaves the frozen parameters alone and keeps their .grad None.
    before = [p.clone() for p in frozen]
    fast.update(batches)
    assert all(torch.equal(p, b) and p.grad is None for p, b in zip(frozen, before))


# --------------------------------------------------------------------------------------
# update
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["AgrSum", "AgrRand", "PCGrad"])
def test_update_equals_plain_gradients_plus_rule_plus_adam(name, copy_path):
    """Two ``update`` steps equal plain per-domain gradients + the surgery rule + Adam.

    The reference applies the rule from :mod:`domainbed_surgery.rules` (its one-pass
    form, :func:`~domainbed_surgery.rules.combine_in_one_pass`, which
    ``tests/rules/test_one_pass.py`` holds against the plain call) with a generator
    seeded like the algorithm's (its construction seed), writes the result into
    ``.grad`` slice by slice and steps the same Adam optimizer.
    """
    shape = MLP_SHAPE
    seed = 7
    fast = make(name, shape, seed=seed, surgery_diagnostics_every=1, **MLP)  # logged each step
    plain = copy.deepcopy(fast)
    rule = rules.get(name)()
    gen = torch.Generator().manual_seed(seed)
    start = [p.clone() for p in trainable(fast)]

    for step in range(2):
        batches = minibatches(shape, num_classes=10, seed=10 + step)
        out = fast.update(batches)

        ref, ref_losses = plain_domain_gradients(plain, batches)
        combined, _ = rules.combine_in_one_pass(rule, ref, gen)
        offset = 0
        for p in trainable(plain):
            p.grad = combined[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        plain.optimizer.step()

        assert out["loss"] == pytest.approx(ref_losses.mean().item(), rel=1e-6)
        assert out["agreement"] == pytest.approx(
            rules.agreement_mask(ref).float().mean().item(), rel=1e-6)
        for a, b in zip(trainable(fast), trainable(plain)):
            assert torch.equal(a, b)

    # The step did something, and the rule is not a plain sum on this data.
    assert not all(torch.equal(a, b) for a, b in zip(trainable(fast), start))
    assert not torch.equal(combined, ref.sum(dim=0))


# --------------------------------------------------------------------------------------
# benchmark CLI
# --------------------------------------------------------------------------------------
def test_benchmark_main_writes_csv_and_json(tmp_path, capsys):
    """All default algorithms on ``tiny``: tables printed, CSV/JSON with the documented columns."""
    rows, parts = benchmark.main(["--settings", "tiny", "--steps", "2", "--warmup", "1",
                                  "--threads", "1", "--output_dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "torch " + torch.__version__ in printed and "threads 1" in printed
    assert "paper-scheme" in printed and "share of update" in printed
    assert f"allocator: {allocator.describe()}" in printed  # --allocator keep by default

    with open(tmp_path / "benchmark.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == step_time.RESULT_COLUMNS
        csv_rows = list(reader)
    assert [r["algorithm"] for r in csv_rows] == list(step_time.DEFAULT_ALGORITHMS)
    for r in csv_rows:
        assert r["setting"] == "tiny" and r["steps"] == "2" and r["threads"] == "1"
        assert float(r["median_ms"]) > 0 and float(r["state_mib"]) > 0
        assert float(r["p25_ms"]) <= float(r["median_ms"]) <= float(r["p75_ms"])
        assert float(r["min_ms"]) <= float(r["mean_ms"])
    erm = next(r for r in csv_rows if r["algorithm"] == "ERM")
    assert float(erm["ratio_to_erm"]) == 1.0 and float(erm["mean_ratio_to_erm"]) == 1.0

    with open(tmp_path / "benchmark_parts.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == step_time.PART_COLUMNS
        part_rows = list(reader)
    assert {(r["algorithm"], r["part"]) for r in part_rows} == {
        (a, p) for a in step_time.SURGERY_ALGORITHMS for p in step_time.PARTS}

    with open(tmp_path / "benchmark_paired.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == step_time.PAIRED_COLUMNS
        paired_rows = list(reader)
    assert [(r["algorithm"], r["reference"]) for r in paired_rows] == [
        (a, ref) for a in step_time.SURGERY_ALGORITHMS for ref in step_time.REFERENCES]
    for r in paired_rows:  # two repetitions: each differed from the reference or not
        assert r["steps"] == "2" and float(r["faster_share"]) in (0.0, 0.5, 1.0)
    assert all(float(r["paired_ratio_to_erm"]) > 0 for r in csv_rows)
    assert float(erm["paired_ratio_to_erm"]) == 1.0
    assert "paired, repetition by repetition" in printed

    with open(tmp_path / "benchmark_times.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == step_time.TIME_COLUMNS
        time_rows = list(reader)
    n = len(step_time.DEFAULT_ALGORITHMS)
    assert len(time_rows) == 2 * n  # every timed step: 2 repetitions x the algorithms
    for rep in ("0", "1"):  # each repetition times every algorithm once, in rotated order
        order = [r["algorithm"] for r in sorted(
            (r for r in time_rows if r["repetition"] == rep), key=lambda r: int(r["position"]))]
        shift = int(rep) % n
        names = list(step_time.DEFAULT_ALGORITHMS)
        assert order == names[shift:] + names[:shift]
    for r in csv_rows:  # the table's median is the median of the written steps
        steps_ms = sorted(float(t["ms"]) for t in time_rows if t["algorithm"] == r["algorithm"])
        assert float(r["median_ms"]) == pytest.approx(sum(steps_ms) / 2, abs=2e-3)

    data = json.loads((tmp_path / "benchmark.json").read_text())
    assert len(data["paired"]) == len(paired_rows)
    assert data["environment"]["torch"] == torch.__version__
    assert data["environment"]["threads"] == 1
    assert data["environment"]["allocator"] == allocator.describe()
    assert data["args"]["allocator"] == "keep"
    assert len(data["results"]) == len(rows) == len(csv_rows)
    assert len(data["parts"]) == len(parts) == len(part_rows)


def test_benchmark_module_entry_point(tmp_path, monkeypatch):
    """``python -m domainbed_surgery.scripts.benchmark`` runs ``main`` on ``sys.argv``.

    Run through :mod:`runpy` as ``__main__`` in this process (a fresh interpreter
    would spend most of the test budget importing torch and DomainBed).
    """
    monkeypatch.setattr(sys, "argv", [
        "benchmark", "--settings", "tiny", "--steps", "1", "--warmup", "0", "--threads", "1",
        "--algorithms", "ERM", "AgrSum", "--output_dir", str(tmp_path)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: module already imported
        runpy.run_module("domainbed_surgery.scripts.benchmark", run_name="__main__")
    with open(tmp_path / "benchmark.csv") as f:
        assert [r["algorithm"] for r in csv.DictReader(f)] == ["ERM", "AgrSum"]


@pytest.mark.parametrize("settle", [0, 1, 2])
def test_benchmark_times_each_step_right_after_settle_steps_of_the_same_algorithm(
        monkeypatch, settle):
    """The timed step of an algorithm follows ``settle`` untimed steps of that algorithm,
    never directly another algorithm's step (unless ``settle`` is 0)."""
    calls = []
    build = step_time.build

    def recording_build(name, *args, **kwargs):
        alg = build(name, *args, **kwargs)
        update = alg.update
        alg.update = lambda *a, **k: (calls.append(name), update(*a, **k))[1]
        return alg

    real_timed = step_time.timed
    monkeypatch.setattr(step_time, "build", recording_build)
    monkeypatch.setattr(step_time, "timed", lambda fn, device: (calls.append("timed"),
                                                                real_timed(fn, device))[1])
    step_time.run_setting(step_time.SETTINGS["tiny"], ["ERM", "AgrSum"], torch.device("cpu"),
                          steps=2, warmup=0, log=lambda msg: None, settle=settle)
    main_loop = calls[:2 * 2 * (settle + 2)]  # 2 repetitions x 2 algorithms
    expected = []
    for order in (["ERM", "AgrSum"], ["AgrSum", "ERM"]):
        for name in order:
            expected += [name] * settle + ["timed", name]
    assert main_loop == expected


def test_benchmark_rejects_negative_settle():
    with pytest.raises(SystemExit):
        benchmark.main(["--settings", "tiny", "--settle", "-1"])
    with pytest.raises(ValueError, match="settle"):
        step_time.run_setting(step_time.SETTINGS["tiny"], ["ERM"], torch.device("cpu"), 1, 0,
                              settle=-1)


def test_benchmark_rejects_unknown_setting():
    with pytest.raises(SystemExit):
        benchmark.main(["--settings", "no-such-setting"])


def test_paper_scheme_step_equals_agrsum_step():
    """The benchmark's paper-scheme reference computes the same Agr-Sum step as ours."""
    setting = step_time.SETTINGS["tiny"]
    ours = step_time.build("AgrSum", setting, torch.device("cpu"))
    paper = step_time.build(step_time.PAPER, setting, torch.device("cpu"))
    batches = step_time.make_minibatches(setting, torch.device("cpu"))
    for _ in range(2):
        ours.update(batches)
        paper.update(batches)
    for a, b in zip(ours.network.parameters(), paper.network.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunk_study_times_every_case_and_writes_csv(tmp_path, capsys):
    """``--chunk_study``: one row per (P, rule, chunk, diagnostics); whole rows are the
    reference (ratio 1); the chunk counts are P / chunk rounded up."""
    rows, _ = benchmark.main(["--chunk_study", "--params", "1000", "--chunks", "64", "0",
                              "--steps", "2", "--warmup", "0", "--device", "cpu",
                              "--output_dir", str(tmp_path)])
    assert {(r["rule"], r["chunk"], r["diagnostics"]) for r in rows} == {
        (rule, c, d) for rule in ("AgrSum", "AgrRand") for c in (64, "whole") for d in (False, True)}
    assert all(r["chunks"] == (16 if r["chunk"] == 64 else 1) for r in rows)
    assert all(r["ratio_to_whole"] == 1.0 for r in rows if r["chunk"] == "whole")
    with open(tmp_path / "chunks.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows) == 8
    assert "ratio_to_whole" in capsys.readouterr().out


def test_chunk_study_rejects_bad_sizes():
    with pytest.raises(SystemExit):
        benchmark.main(["--chunk_study", "--chunks", "-1"])
    with pytest.raises(SystemExit):
        benchmark.main(["--chunk_study", "--params", "0"])
