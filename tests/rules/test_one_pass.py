"""The one-pass combine against the reference (plain) rules.

:func:`~domainbed_surgery.rules.one_pass` reads ``[N, P]`` once, chunk by chunk, for the
Gram matrix, the agreement count and an elementwise rule's result;
:func:`~domainbed_surgery.rules.combine_in_one_pass` completes the update. Against the
plain functions: bitwise for Agr-Sum, the Gram matrix and the Gramian rules; for
Agr-Rand the same agreeing sums, and noise of the same distribution (drawn for the
conflicting components only), reproducible under a seed.
"""

import pytest
import torch
from scipy import stats

from domainbed_surgery import rules


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def grads_with_zeros(n=3, p=1001, seed=0, dtype=torch.float32):
    g = torch.randn(n, p, generator=gen(seed), dtype=dtype)
    g[:, ::7] = 0.0  # columns zero in every domain
    g[0, 1::5] = 0.0  # zeros in one domain
    return g


@pytest.mark.parametrize("chunk", [1, 64, 1000, 1001, rules.CHUNK])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_gram_and_count_equal_the_plain_functions(chunk, n):
    g = grads_with_zeros(n)
    passed = rules.one_pass(g, chunk=chunk)
    assert torch.equal(passed.gram, rules.gram_matrix(g, chunk=chunk))
    torch.testing.assert_close(passed.gram, (g.double() @ g.double().T), rtol=1e-5, atol=1e-3)
    assert passed.n_agree.item() == rules.agreement_mask(g).sum().item()


@pytest.mark.parametrize("chunk", [1, 64, 1001, rules.CHUNK])
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("compiled", ["1", "0"])  # the compiled kernel, the torch code
def test_agrsum_in_one_pass_is_bitwise_the_rule(chunk, n, compiled, monkeypatch):
    monkeypatch.setenv("DOMAINBED_SURGERY_COMPILED", compiled)
    g = grads_with_zeros(n, dtype=torch.float64)
    rule = rules.get("AgrSum")()
    out = torch.full((g.shape[1],), float("nan"), dtype=g.dtype)
    passed = rules.one_pass(g, rule, out=out, chunk=chunk)
    assert torch.equal(out, rule(g))
    assert passed.partial is None


@pytest.mark.parametrize("name", ["PCGrad", "UPGrad", "MGDA"])
def test_gramian_rules_in_one_pass_are_bitwise_the_rule(name):
    if not rules.get(name).available():
        pytest.skip(f"{name} needs {rules.get(name).requires}")
    g = grads_with_zeros(p=300_000)  # several chunks
    fast, passed = rules.combine_in_one_pass(rules.get(name)(), g, gen(4))
    plain = rules.get(name)()(g, gen(4), gram=rules.gram_matrix(g))
    assert torch.equal(fast, plain)


def test_agrrand_keeps_the_agreeing_sums_and_draws_the_same_noise():
    """Agreeing components: the sum, bitwise. Conflicting ones (all-zero columns included):
    N(0, sigma^2) with the reference's sigma, by a Kolmogorov-Smirnov test on 100k draws."""
    g = grads_with_zeros(p=300_000, seed=1)
    rule = rules.get("AgrRand")()
    fast, passed = rules.combine_in_one_pass(rule, g, gen(2))
    mask = rules.agreement_mask(g)
    total = g.sum(0)
    assert torch.equal(fast[mask], total[mask])
    sigma = total[mask].abs().double().mean().item()  # the authors' scale
    assert passed.partial[1].item() == passed.n_agree.item() == mask.sum().item()
    assert passed.partial[0].item() / passed.partial[1].item() == pytest.approx(sigma, rel=1e-9)
    noise = fast[~mask].double()
    assert (noise != 0).all()
    assert stats.kstest(noise.numpy() / sigma, "norm").pvalue > 1e-3
    reference = rule(g, gen(2))[~mask].double()  # the plain rule's noise: same law
    assert stats.ks_2samp(noise.numpy(), reference.numpy()).pvalue > 1e-3


def test_agrrand_in_one_pass_is_reproducible_under_a_seed():
    g = grads_with_zeros(p=5000, seed=3)
    rule = rules.get("AgrRand")()
    a, _ = rules.combine_in_one_pass(rule, g, gen(7))
    b, _ = rules.combine_in_one_pass(rule, g, gen(7))
    c, _ = rules.combine_in_one_pass(rule, g, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_agrrand_without_agreement_and_single_domain():
    g = torch.tensor([[1.0, -2.0, 0.0], [-1.0, 2.0, 0.0]])
    fast, passed = rules.combine_in_one_pass(rules.get("AgrRand")(), g, gen())
    assert fast.tolist() == [0.0, 0.0, 0.0] and passed.n_agree.item() == 0
    one = torch.tensor([[0.0, 3.0, -1.0]])
    assert rules.combine_in_one_pass(rules.get("AgrRand")(), one, gen())[0].tolist() == \
        [0.0, 3.0, -1.0]


def test_float32_overflow_is_recomputed_in_float64():
    g = torch.full((3, 10), 1e30)
    g[1] = -1e30
    passed = rules.one_pass(g, chunk=4)
    assert torch.isfinite(passed.gram).all() and passed.gram[0, 1].item() == pytest.approx(-1e61)


@pytest.mark.parametrize("name", ["AgrSum", "AgrRand"])
def test_without_diagnostics_the_update_is_the_same_and_only_norms_are_taken(name):
    g = grads_with_zeros(p=3001, seed=5)
    rule = rules.get(name)()
    full, with_diag = rules.combine_in_one_pass(rule, g, gen(1), diagnostics=True)
    lean, without = rules.combine_in_one_pass(rule, g, gen(1), diagnostics=False)
    assert torch.equal(full, lean)
    assert without.gram is None and without.n_agree is None
    if rule.fuses(g, torch.empty(g.shape[1])):  # the compiled kernel's float64 sums
        torch.testing.assert_close(without.sq_norms, with_diag.gram.diagonal(), rtol=1e-6, atol=0)
    else:
        assert torch.equal(without.sq_norms, with_diag.gram.diagonal())


def test_a_gramian_rule_gets_its_gram_matrix_without_diagnostics():
    g = grads_with_zeros(p=2000, seed=6)
    rule = rules.get("PCGrad")()
    lean, passed = rules.combine_in_one_pass(rule, g, gen(1), diagnostics=False)
    assert torch.equal(passed.gram, rules.gram_matrix(g))
    assert torch.equal(lean, rule(g, gen(1), gram=rules.gram_matrix(g)))


@pytest.mark.parametrize("chunk", [7, 64, 1001])
def test_agreement_per_segment_is_counted_in_the_same_pass(chunk):
    g = grads_with_zeros(p=1001, seed=7)
    sizes = [1, 300, 13, 600, 87]
    passed = rules.one_pass(g, chunk=chunk, segments=sizes)
    mask = rules.agreement_mask(g)
    assert passed.segment_agree.tolist() == [int(m.sum()) for m in mask.split(sizes)]
    with pytest.raises(ValueError, match="segments cover 1000 columns"):
        rules.one_pass(g, segments=[1000])


def test_non_finite_rows_are_found_without_diagnostics():
    g = grads_with_zeros(p=500, seed=8)
    g[2, 17] = float("nan")
    with pytest.raises(FloatingPointError, match=r"domain\(s\) \[2\]"):
        rules.combine_in_one_pass(rules.get("AgrSum")(), g, gen(), diagnostics=False)


def test_float32_overflow_of_the_norms_alone_is_recomputed_in_float64():
    g = torch.full((3, 10), 1e30)
    passed = rules.one_pass(g, chunk=4, diagnostics=False)
    assert passed.gram is None and torch.isfinite(passed.sq_norms).all()
    assert passed.sq_norms[0].item() == pytest.approx(1e61)


def test_default_chunk_is_cache_sized_on_cpu_and_whole_rows_elsewhere():
    """The measured policy (docs/results/gpu): 2^19 columns on the CPU; on a GPU whole rows
    (launch-bound there), unless DEVICE_CHUNK says otherwise."""
    from domainbed_surgery.rules import kernels

    assert kernels.default_chunk(torch.zeros(3, 10)) == kernels.CHUNK == 1 << 19
    meta = torch.zeros(3, 5_000_000, device="meta")  # any non-CPU device
    assert kernels.default_chunk(meta) == 5_000_000
    assert kernels.default_chunk(torch.zeros(3, 0, device="meta")) == 1


@pytest.mark.parametrize("chunk", [None, 7, 300_000])
def test_combine_in_one_pass_takes_a_chunk_and_gives_the_same_agrsum(chunk):
    g = grads_with_zeros(p=300_000)
    ref = rules.get("AgrSum")()(g)
    combined, passed = rules.combine_in_one_pass(rules.get("AgrSum")(), g, chunk=chunk)
    assert torch.equal(combined, ref)
    assert int(passed.n_agree) == int(rules.agreement_mask(g).sum())


@pytest.mark.parametrize("chunk", [0, -5])
def test_one_pass_rejects_a_chunk_below_one_column(chunk):
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        rules.one_pass(torch.ones(2, 10), chunk=chunk)
