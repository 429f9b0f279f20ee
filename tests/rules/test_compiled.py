"""The compiled CPU kernels (:mod:`domainbed_surgery.rules.compiled`) against the torch code
they stand in for: the same bits, across block and chunk boundaries, for any thread count."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from domainbed_surgery import rules
from domainbed_surgery.rules import compiled

pytestmark = pytest.mark.skipif(not compiled.enabled(), reason="Numba is not installed")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def block():
    from domainbed_surgery.rules import _numba

    return _numba.BLOCK


def with_zeros(n, p, seed, dtype=torch.float32, zero_share=0.1):
    """Random domain gradients with +0.0 and -0.0 in single domains and in whole columns."""
    g = torch.randn(n, p, generator=gen(seed), dtype=dtype)
    u = torch.rand(n, p, generator=gen(seed + 1))
    g[u < zero_share / 2] = 0.0
    g[u > 1 - zero_share / 2] = -0.0
    g[:, ::11] = 0.0
    return g


def torch_agreeing_sum(g):
    """The reference: Eq. 2's mask (torch) and the rows added one after the other, as the
    torch one pass adds them (``torch.sum`` over 5 rows may add in another order)."""
    out = g[0].clone()
    for row in g[1:]:
        out += row
    mask = rules.agreement_mask(g)
    out[~mask] = 0.0
    return out, int((~mask).sum()), out.double().abs().sum().item()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 6), p=st.integers(1, 40_000), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_agreeing_sum_is_bitwise_torchs(n, p, seed, dtype):
    g = with_zeros(n, p, seed, dtype)
    out = torch.full((p,), float("nan"), dtype=dtype)
    conflicts, l1 = compiled.agreeing_sum(g, out)
    expected, expected_conflicts, expected_l1 = torch_agreeing_sum(g)
    assert torch.equal(out, expected)
    assert conflicts == expected_conflicts
    assert l1 == pytest.approx(expected_l1, rel=1e-12)


def test_agreeing_sum_hand_computed():
    g = torch.tensor([[1.0, -2.0, 0.0, 3.0, -0.0, 1e-45],
                      [2.0, -1.0, 0.0, -3.0, 1.0, 1e-45],
                      [0.5, -4.0, 0.0, 1.0, 1.0, 1e-45]])
    out = torch.empty(6)
    conflicts, l1 = compiled.agreeing_sum(g, out)
    # agree, agree, all zero (conflict), mixed signs, -0.0 (conflict), tiny but agreeing
    assert out.tolist() == [3.5, -7.0, 0.0, 0.0, 0.0, pytest.approx(3 * 1.401298464324817e-45)]
    assert conflicts == 3
    assert l1 == pytest.approx(10.5)


def test_agreeing_sum_declines_what_it_is_not_compiled_for():
    g = torch.randn(3, 10)
    out = torch.empty(10)
    assert compiled.agreeing_sum(g.half(), out.half()) is None  # dtype
    assert compiled.agreeing_sum(g[:, ::2], torch.empty(5)) is None  # strided rows
    assert compiled.agreeing_sum(g.requires_grad_(), out) is None
    assert compiled.agreeing_sum(torch.randn(1, 10), out) is None  # one row: no rule
    assert compiled.agreeing_sum(torch.randn(3, 10), torch.empty(9)) is None  # shapes
    assert compiled.agreeing_sum(torch.randn(3, 10, dtype=torch.float64), out) is None
    meta = torch.empty(3, 10, device="meta")  # not the CPU (as CUDA): the torch code runs
    assert not compiled.applies(meta, torch.empty(10, device="meta"))
    assert not rules.get("AgrSum")().fuses(meta, torch.empty(10, device="meta"))


def test_agreeing_sum_does_not_depend_on_the_thread_count():
    import numba

    g = with_zeros(3, 5 * block() + 3, seed=3)
    results = []
    threads = torch.get_num_threads()
    try:
        for t in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            torch.set_num_threads(t)
            out = torch.empty(g.shape[1])
            results.append((out, compiled.agreeing_sum(g, out)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]


@pytest.mark.parametrize("p", [12, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_where_zero_is_torchs_where(p, dtype, monkeypatch):
    """Zeros (+0.0 and -0.0) get ``draw * scale``, the rest stays: torch's bits."""
    values = with_zeros(1, p, seed=p, dtype=dtype, zero_share=0.5)[0]
    draws = torch.randn(p, generator=gen(p), dtype=dtype)
    scale = torch.tensor(0.37, dtype=dtype)
    fast = values.clone()
    compiled.noise_where_zero(fast, draws.clone(), scale)
    monkeypatch.setenv("DOMAINBED_SURGERY_COMPILED", "0")
    slow = values.clone()
    compiled.noise_where_zero(slow, draws.clone(), scale)
    assert torch.equal(fast, slow)
    zeros = values == 0
    assert zeros.any() and (~zeros).any()
    assert torch.equal(fast[~zeros], values[~zeros])
    assert torch.equal(fast[zeros], (draws * scale)[zeros])


@pytest.mark.parametrize("name", ["AgrSum", "AgrRand"])
def test_one_pass_gives_the_same_update_with_and_without_the_kernels(name, monkeypatch):
    """The compiled path and the torch path of a step: the same update (Agr-Rand: the same
    noise in the same places; its sigma may differ in the last bit from a float64 sum taken
    in another order), the same count, the same Gram matrix."""
    g = with_zeros(3, 2 * rules.CHUNK + 3 * block() + 11, seed=9)
    rule = rules.get(name)()
    fast, fast_pass = rules.combine_in_one_pass(rule, g, gen(4))
    monkeypatch.setenv("DOMAINBED_SURGERY_COMPILED", "0")
    slow, slow_pass = rules.combine_in_one_pass(rule, g, gen(4))
    if name == "AgrSum":
        assert torch.equal(fast, slow)
    else:
        torch.testing.assert_close(fast, slow, rtol=1e-6, atol=0)
        mask = rules.agreement_mask(g)
        assert torch.equal(fast[mask], slow[mask])
    assert fast_pass.n_agree.item() == slow_pass.n_agree.item()
    assert torch.equal(fast_pass.gram, slow_pass.gram)


def test_describe_names_what_runs(monkeypatch):
    assert compiled.describe().startswith("numba ")
    monkeypatch.setenv("DOMAINBED_SURGERY_COMPILED", "0")
    assert not compiled.enabled() and compiled.describe().startswith("torch")
    assert compiled.agreeing_sum(torch.randn(3, 4), torch.empty(4)) is None
