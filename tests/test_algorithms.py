"""AgrSum, AgrRand and PCGrad as DomainBed algorithms: updates, diagnostics, errors."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import randomized
from domainbed_surgery import rules
from domainbed_surgery.surgery import hparams as surgery_hparams

OURS = ("AgrSum", "AgrRand", "PCGrad")


# DomainBed's MLP featurizer on flattened images keeps these tests fast on 2 cores;
# the conv backbones go through the same glue in test_backbones and test_domainbed_scripts.
MLP = {"mlp_width": 64, "mlp_depth": 3, "mlp_dropout": 0.0, "backbone": None}


def hparams_for(domainbed, algorithm, **overrides):
    from domainbed import hparams_registry

    hp = hparams_registry.default_hparams(algorithm, "RotatedDigits")
    hp.update(MLP, **overrides)
    return hp


def make(domainbed, algorithm, n_domains=3, seed=0, **overrides):
    from domainbed import algorithms

    torch.manual_seed(seed)
    cls = algorithms.get_algorithm_class(algorithm)
    return cls((14 * 14,), 10, n_domains, hparams_for(domainbed, algorithm, **overrides))


@pytest.fixture(scope="module")
def digits_batches(domainbed):
    """Three RotatedDigits domains, 16 flattened images each (fixed)."""
    from domainbed import datasets

    data = datasets.get_dataset_class("RotatedDigits")(None, [3], {})
    g = torch.Generator().manual_seed(0)
    batches = []
    for env in list(data)[:3]:
        idx = torch.randperm(len(env), generator=g)[:16]
        x, y = env.tensors[0][idx].flatten(1), env.tensors[1][idx]
        batches.append((x, y))
    return batches


def plain_domain_grads(alg, minibatches):
    """The straightforward per-domain gradients: zero_grad, forward, backward, flatten."""
    rows = []
    for x, y in minibatches:
        alg.network.zero_grad(set_to_none=True)
        F.cross_entropy(alg.predict(x), y).backward()
        rows.append(torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                               for p in alg.network.parameters() if p.requires_grad]))
    return torch.stack(rows)


@pytest.mark.parametrize("algorithm", OURS)
def test_each_algorithm_trains_to_lower_loss(domainbed, digits_batches, algorithm):
    alg = make(domainbed, algorithm, lr=3e-3)
    x = torch.cat([b[0] for b in digits_batches])
    y = torch.cat([b[1] for b in digits_batches])
    with torch.no_grad():
        before = F.cross_entropy(alg.predict(x), y).item()
    outs = [alg.update(digits_batches) for _ in range(30)]
    with torch.no_grad():
        after = F.cross_entropy(alg.predict(x), y).item()
    assert after < before - 0.25
    # the diagnostics on steps 0, 10, 20 (the default every 10th step), the loss on every one
    every = surgery_hparams.DIAGNOSTICS_EVERY
    assert every == 10
    for step, out in enumerate(outs):
        diagnostic = {"agreement", "cosine"} if step % every == 0 else set()
        assert set(out) == {"loss", "diagnostics_every"} | diagnostic, step
        assert out["diagnostics_every"] == every
    assert 0.0 <= outs[0]["agreement"] <= 1.0 and -1.0 <= outs[0]["cosine"] <= 1.0


@pytest.mark.parametrize("algorithm", OURS)
def test_update_writes_the_rule_of_the_domain_gradients(domainbed, digits_batches, algorithm):
    alg = make(domainbed, algorithm)
    reference = copy.deepcopy(alg)
    grads = plain_domain_grads(reference, digits_batches)
    alg.update(digits_batches)
    torch.testing.assert_close(alg._grads, grads, rtol=1e-5, atol=1e-7)
    got = torch.cat([p.grad.flatten() for p in alg.network.parameters()])
    rule = rules.get(algorithm)()
    generator = torch.Generator().manual_seed(alg._seed)
    expected, _ = rules.combine_in_one_pass(rule, grads, generator)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_loss_is_the_mean_of_the_domain_losses(domainbed, digits_batches):
    alg = make(domainbed, "AgrSum")
    with torch.no_grad():
        expected = sum(F.cross_entropy(alg.predict(x), y).item() for x, y in digits_batches) / 3
    assert alg.update(digits_batches)["loss"] == pytest.approx(expected, rel=1e-5)


def test_identical_domains_agree_everywhere_with_cosine_one(domainbed, digits_batches):
    alg = make(domainbed, "AgrSum")
    reference = copy.deepcopy(alg)
    out = alg.update([digits_batches[0]] * 3)
    assert out["cosine"] == pytest.approx(1.0, abs=1e-5)
    # identical rows: every nonzero component agrees; a component that is zero (in every
    # domain, here) is a conflict, as in the authors' code
    g = plain_domain_grads(reference, digits_batches[:1])[0]
    nonzero = (g != 0).float().mean().item()
    assert 0.5 < nonzero < 1.0  # the MLP's ReLUs leave some exact zeros
    assert out["agreement"] == pytest.approx(nonzero)


def test_flipped_labels_conflict(domainbed, digits_batches):
    alg = make(domainbed, "AgrSum")
    x, y = digits_batches[0]
    flipped = (x, (y + 5) % 10)
    out = alg.update([(x, y), flipped])
    # the same images pulled towards other labels: gradients point against each other
    assert out["cosine"] < 0 and out["agreement"] < 0.75


def test_single_domain_is_plain_gradient_with_one_warning(domainbed, digits_batches):
    alg = make(domainbed, "AgrRand", n_domains=1, surgery_diagnostics_every=1)
    reference = copy.deepcopy(alg)
    with pytest.warns(UserWarning, match="single training domain"):
        alg.update(digits_batches[:1])
    got = torch.cat([p.grad.flatten() for p in alg.network.parameters()])
    torch.testing.assert_close(got, plain_domain_grads(reference, digits_batches[:1])[0],
                               rtol=1e-5, atol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = alg.update(digits_batches[:1])  # no second warning
    # no pair of domains: no cosine is defined, so none is logged (not a NaN)
    assert set(out) == {"loss", "agreement", "diagnostics_every"}


@pytest.mark.parametrize("algorithm", rules.names())
def test_non_finite_domain_gradient_raises_and_leaves_weights(domainbed, digits_batches,
                                                              algorithm):
    alg = make(domainbed, algorithm)
    before = [p.detach().clone() for p in alg.network.parameters()]
    x, y = digits_batches[1]
    bad = (torch.full_like(x, float("nan")), y)
    with pytest.raises(FloatingPointError, match=r"domain\(s\) \[1\]"):
        alg.update([digits_batches[0], bad, digits_batches[2]])
    for p, q in zip(alg.network.parameters(), before):
        assert torch.equal(p, q)


def test_empty_minibatches_raise(domainbed):
    with pytest.raises(ValueError, match="at least one minibatch"):
        make(domainbed, "AgrSum").update([])


def test_frozen_parameters_are_skipped_and_unused_count_as_zero(domainbed, digits_batches):
    alg = make(domainbed, "AgrSum")
    frozen = alg.classifier.bias
    frozen.requires_grad_(False)
    alg.update(digits_batches)
    assert frozen.grad is None
    n_trainable = sum(p.numel() for p in alg.network.parameters() if p.requires_grad)
    assert alg._grads.shape == (3, n_trainable)


def test_runs_are_reproducible_under_the_seed(domainbed, digits_batches):
    def run(seed):
        alg = make(domainbed, "AgrRand", seed=seed)
        for _ in range(2):
            alg.update(digits_batches)
        return torch.cat([p.detach().flatten() for p in alg.network.parameters()])

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_single_domain_control_arm_uses_one_domain(domainbed, digits_batches):
    alg = make(domainbed, "AgrSum", surgery_batches="single")
    chosen = alg.gradient_batches(digits_batches)
    assert len(chosen) == 3
    # first step: all N batches come from one domain (the only batch seen so far, repeated)
    assert all(b is chosen[0] for b in chosen) and any(chosen[0] is b for b in digits_batches)
    later = [[(x + k, y) for x, y in digits_batches] for k in range(1, 4)]
    for batches in later:
        chosen = alg.gradient_batches(batches)
    # after N steps: the N most recent, distinct batches of a single domain
    domain = [d for d in range(3) if chosen[0] is later[-1][d]]
    assert len(domain) == 1
    d = domain[0]
    assert [id(b) for b in chosen] == [id(later[-1][d]), id(later[-2][d]), id(later[-3][d])]
    assert alg.update(digits_batches)["loss"] > 0


def test_bad_surgery_batches_value(domainbed):
    with pytest.raises(ValueError, match="surgery_batches"):
        make(domainbed, "AgrSum", surgery_batches="both")


def test_per_layer_agreement_is_logged_on_request(domainbed, digits_batches):
    alg = make(domainbed, "PCGrad", surgery_layer_agreement=True)
    out = alg.update(digits_batches)
    layers = {k: v for k, v in out.items() if k.startswith("agreement/")}
    names = [n for n, p in alg.network.named_parameters()]
    assert list(layers) == [f"agreement/{n}" for n in names]
    sizes = [p.numel() for p in alg.network.parameters()]
    # the overall fraction is the size-weighted mean of the per-parameter fractions
    weighted = sum(v * n for v, n in zip(layers.values(), sizes)) / sum(sizes)
    assert out["agreement"] == pytest.approx(weighted)
    assert "agreement/0.input.weight" not in make(domainbed, "PCGrad").update(digits_batches)


def test_per_layer_agreement_is_counted_in_the_one_pass(domainbed, digits_batches):
    """The per-tensor fractions equal the Eq. 2 mask of the same gradients, split by tensor."""
    alg = make(domainbed, "AgrSum", surgery_layer_agreement=True)
    grads, losses = alg.gradients(digits_batches)
    mask = rules.agreement_mask(grads.clone())
    logged = alg.metrics(losses, alg.combine(grads))
    expected = [m.float().mean().item() for m in mask.split([p.numel() for p in alg._params])]
    got = [v for k, v in logged.items() if k.startswith("agreement/")]
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["AgrSum", "AgrRand", "PCGrad"])
def test_diagnostics_every_k_steps_leave_the_update_alone(domainbed, digits_batches, name):
    """k = 3: agreement and cosine on steps 0, 3, 6 only; the weights after 7 steps are
    the same as with diagnostics on every step."""
    every = make(domainbed, name, surgery_diagnostics_every=1)
    sparse = make(domainbed, name, surgery_diagnostics_every=3)
    logged = []
    for _ in range(7):
        every.update(digits_batches)
        logged.append(sparse.update(digits_batches))
    assert [("agreement" in out) for out in logged] == [True, False, False, True, False, False, True]
    assert all(out["diagnostics_every"] == 3.0 and "loss" in out for out in logged)
    for p, q in zip(every.parameters(), sparse.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="surgery_diagnostics_every must be a positive integer"):
        make(domainbed, name, surgery_diagnostics_every=0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_scale_against_erm(domainbed, digits_batches, reduction):
    """Every domain given the same minibatch, no BatchNorm, no dropout: the domain
    gradients are identical, so AgrSum's rule keeps all of them (exact zeros are 0 for
    ERM too). ``mean`` takes ERM's step; ``sum`` (the paper) takes N times ERM's gradient,
    which Adam turns into ERM's step with weight decay divided by N (up to Adam's eps)."""
    # float64: ERM's mean over the concatenated batch and the per-domain gradients then
    # differ by ~1e-16 only, which Adam cannot amplify into a visible difference
    batch = tuple(t.double() if t.is_floating_point() else t for t in digits_batches[0])
    wd = 0.05
    ours = make(domainbed, "AgrSum", surgery_reduction=reduction, weight_decay=wd).double()
    same = make(domainbed, "ERM", weight_decay=wd if reduction == "mean" else wd / 3).double()
    other = make(domainbed, "ERM", weight_decay=wd / 3 if reduction == "mean" else wd).double()
    for alg in (ours, same, other):  # Adam's eps is its only scale: take it out of the way
        alg.optimizer.param_groups[0]["eps"] = 1e-30
    for _ in range(4):
        ours.update([batch] * 3)
        same.update([batch] * 3)
        other.update([batch] * 3)
    for a, b in zip(ours.network.parameters(), same.network.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # ... and the other scale is measurably another step
    assert not all(torch.allclose(a, b, rtol=1e-6, atol=1e-6)
                   for a, b in zip(ours.network.parameters(), other.network.parameters()))


def test_bad_surgery_reduction_value(domainbed):
    with pytest.raises(ValueError, match="surgery_reduction"):
        make(domainbed, "AgrSum", surgery_reduction="median")


@pytest.mark.parametrize("name", rules.names())
def test_reduction_scales_the_rule_from_its_native_scale(domainbed, digits_batches, name):
    """``surgery_reduction`` at the rule's published scale leaves its output alone; the other
    value multiplies (to "sum") or divides (to "mean") it by N."""
    native = rules.get(name).native_scale
    other = "mean" if native == "sum" else "sum"
    grads = plain_domain_grads(make(domainbed, name), digits_batches)
    outs = {}
    for reduction in (native, other):
        alg = make(domainbed, name, surgery_reduction=reduction)
        alg._prepare(3)
        alg.combine(grads)
        outs[reduction] = alg.update_vector.clone()
    if not randomized(name):  # random rules: the fast path draws differently
        expected = rules.get(name)()(grads, torch.Generator(
            device=rules.get(name)().generator_device(grads)).manual_seed(0))
        torch.testing.assert_close(outs[native], expected, rtol=1e-5, atol=1e-7)
    factor = 3.0 if other == "sum" else 1 / 3.0
    torch.testing.assert_close(outs[other], factor * outs[native], rtol=1e-5, atol=1e-7)
