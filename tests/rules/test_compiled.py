"""The compiled CPU kernels (:mod:`domainbed_surgery.rules.compiled`) against the torch code
they stand in for: the same bits, across block and chunk boundaries, for any thread count;
Agr-Rand's ziggurat against its tables' definition and the normal distribution."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

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
    conflicts, l1, sq_norms, _ = compiled.agreeing_sum(g, out)
    expected, expected_conflicts, expected_l1 = torch_agreeing_sum(g)
    assert torch.equal(out, expected)
    assert conflicts == expected_conflicts
    assert l1 == pytest.approx(expected_l1, rel=1e-12)
    reference = (g.double() ** 2).sum(dim=1)  # float64 squares: only the order differs
    assert sq_norms.dtype == torch.float64
    torch.testing.assert_close(sq_norms, reference, rtol=1e-12, atol=0)


def test_agreeing_sum_without_l1_writes_the_same_bits():
    """Agr-Sum's call (``l1=False``) skips only the sum of ``|out|``: the same update and
    count, across block boundaries, as the call Agr-Rand makes."""
    g = with_zeros(3, 3 * block() + 5, seed=7)
    with_l1, without = torch.empty(g.shape[1]), torch.empty(g.shape[1])
    conflicts, l1, sq_norms, _ = compiled.agreeing_sum(g, with_l1)
    lean = compiled.agreeing_sum(g, without, l1=False)
    assert lean.conflicts == conflicts and lean.l1 is None
    assert torch.equal(lean.sq_norms, sq_norms)
    assert torch.equal(with_l1.view(torch.int32), without.view(torch.int32))
    assert isinstance(l1, float) and l1 > 0


def test_agreeing_sum_hand_computed():
    g = torch.tensor([[1.0, -2.0, 0.0, 3.0, -0.0, 1e-45],
                      [2.0, -1.0, 0.0, -3.0, 1.0, 1e-45],
                      [0.5, -4.0, 0.0, 1.0, 1.0, 1e-45]])
    out = torch.empty(6)
    conflicts, l1, sq_norms, _ = compiled.agreeing_sum(g, out)
    # agree, agree, all zero (conflict), mixed signs, -0.0 (conflict), tiny but agreeing
    assert out.tolist() == [3.5, -7.0, 0.0, 0.0, 0.0, pytest.approx(3 * 1.401298464324817e-45)]
    assert conflicts == 3
    assert l1 == pytest.approx(10.5)
    assert sq_norms.tolist() == pytest.approx([14.0, 15.0, 18.25])  # 1 + 4 + 9, ...; 1e-45 squared is 0


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


def same_totals(a, b):
    return (a.conflicts, a.l1) == (b.conflicts, b.l1) and torch.equal(a.sq_norms, b.sq_norms)


@pytest.mark.parametrize("openmp", ["1", "0"])  # torch's OpenMP threads where torch has them
def test_agreeing_sum_does_not_depend_on_the_thread_count(openmp, monkeypatch):
    import numba

    monkeypatch.setenv("DOMAINBED_SURGERY_OPENMP", openmp)
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
    assert torch.equal(results[0][0], results[1][0]) and same_totals(results[0][1], results[1][1])


def test_ziggurat_tables_are_marsaglia_tsangs():
    """The 256 layers of exp(-x^2/2): NumPy's float tables at known entries, and every
    layer of the same area (the construction's defining property)."""
    from domainbed_surgery.rules import _numba

    ki, wi, fi = _numba.KI, _numba.WI, _numba.FI
    # numpy/random/src/distributions/ziggurat_constants.h
    assert (ki[0], ki[1], ki[2]) == (0x007799EC, 0, 0x006045F4)
    assert wi[0] == np.float32(4.66198677960027669e-07)
    assert wi[1] == np.float32(2.56588335019207033e-08)
    assert fi[1] == np.float32(0.977101701267671596)
    r = _numba.ZIGGURAT_R
    x = wi.astype(np.float64) * 2**23  # layer i's right edge, for i >= 1
    f = np.exp(-0.5 * x**2)
    area = r * np.exp(-0.5 * r * r) + np.sqrt(np.pi / 2) * math.erfc(r / np.sqrt(2))
    layers = x[2:] * (f[1:-1] - f[2:])  # between edges i - 1 and i
    np.testing.assert_allclose(layers, area, rtol=1e-4)  # edges rounded to float32
    assert x[255] == pytest.approx(r) and (np.diff(x[1:]) > 0).all()


def test_noise_where_zero_fills_exactly_the_zeros():
    """+0.0 and -0.0 become ``scale`` times the column's N(0, 1) draw; the rest stays."""
    values = with_zeros(1, 3 * block() + 5, seed=2, zero_share=0.5)[0]
    zeros = values == 0
    filled = values.clone()
    assert compiled.noise_where_zero(filled, seed=77, scale=0.37)
    z = compiled.standard_normal(values.numel(), seed=77)
    assert torch.equal(filled[~zeros], values[~zeros])
    assert torch.equal(filled[zeros], z[zeros] * np.float32(0.37))
    assert (filled[zeros] != 0).float().mean() > 0.999


def test_compiled_normal_draws_are_standard_normal():
    """2 M draws: Kolmogorov-Smirnov, 100 equiprobable bins, the first two moments and the
    share beyond the ziggurat's base (|z| > R: the tail path) against N(0, 1)."""
    from domainbed_surgery.rules import _numba

    n = 2_000_000
    z = compiled.standard_normal(n, seed=2021).double().numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-3
    bins = np.searchsorted(stats.norm.ppf(np.linspace(0, 1, 101)[1:-1]), z)
    assert stats.chisquare(np.bincount(bins, minlength=100)).pvalue > 1e-3
    assert abs(z.mean()) < 4 / n**0.5 and abs(z.var() - 1) < 4 * (2 / n) ** 0.5
    beyond = int((np.abs(z) > _numba.ZIGGURAT_R).sum())
    expected = 2 * stats.norm.sf(_numba.ZIGGURAT_R)
    assert beyond > 0 and stats.binomtest(beyond, n, expected).pvalue > 1e-3


def test_compiled_normal_streams():
    """One seed, one sequence; another seed, other draws; neighbouring column blocks (each
    its own stream) and the two words of one 64-bit output uncorrelated."""
    n = 4 * block()
    z = compiled.standard_normal(n, seed=5)
    assert torch.equal(z, compiled.standard_normal(n, seed=5))
    assert not torch.equal(z, compiled.standard_normal(n, seed=6))
    bound = 4 / block() ** 0.5
    blocks = z.view(4, block()).double()
    for a, b in zip(blocks[:-1], blocks[1:]):
        assert abs(np.corrcoef(a, b)[0, 1]) < bound
    pairs = z.view(-1, 2).double()
    assert abs(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) < 4 / (n / 2) ** 0.5


def test_noise_where_zero_declines_what_it_is_not_compiled_for():
    """float64 (the ziggurat is the 23-bit one), strided, off the CPU: nothing written; the
    rule then draws with torch."""
    assert not compiled.noise_where_zero(torch.zeros(10, dtype=torch.float64), 1, 1.0)
    assert not compiled.noise_where_zero(torch.zeros(10)[::2], 1, 1.0)
    assert not compiled.noise_applies(torch.zeros(10, device="meta"))
    g = torch.tensor([[1.0, 2.0, -1.0], [1.0, -2.0, -1.0]], dtype=torch.float64)
    out, _ = rules.combine_in_one_pass(rules.get("AgrRand")(), g, gen(0))
    assert out[[0, 2]].tolist() == [2.0, -2.0] and out[1] != 0


@pytest.mark.parametrize("name", ["AgrSum", "AgrRand"])
def test_one_pass_gives_the_same_update_with_and_without_the_kernels(name, monkeypatch):
    """The compiled path and the torch path of a step: the same update (Agr-Rand: the same
    agreeing sums, noise in the same places with the same scale, from another generator),
    the same count, the same Gram matrix up to rounding (the kernel's float64 products are
    exact to 1e-12; torch's float32 dots, summed in float64 chunk by chunk, to 1e-5)."""
    g = with_zeros(3, 2 * rules.CHUNK + 3 * block() + 11, seed=9)
    rule = rules.get(name)()
    fast, fast_pass = rules.combine_in_one_pass(rule, g, gen(4))
    monkeypatch.setenv("DOMAINBED_SURGERY_COMPILED", "0")
    slow, slow_pass = rules.combine_in_one_pass(rule, g, gen(4))
    if name == "AgrSum":
        assert torch.equal(fast, slow)
    else:
        mask = rules.agreement_mask(g)
        assert torch.equal(fast[mask], slow[mask])
        assert (fast[~mask] != 0).all() and (slow[~mask] != 0).all()
        sigma = fast[mask].double().abs().mean()
        for noise in (fast[~mask], slow[~mask]):
            assert stats.kstest((noise.double() / sigma).numpy(), "norm").pvalue > 1e-3
    assert fast_pass.n_agree.item() == slow_pass.n_agree.item()
    exact = g.double() @ g.double().T
    scale = exact.diagonal().max().item()
    torch.testing.assert_close(fast_pass.gram, exact, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(slow_pass.gram, exact, rtol=0, atol=1e-5 * scale)
    assert not torch.equal(fast_pass.gram, slow_pass.gram)  # the kernel's Gram ran


def test_describe_names_what_runs(monkeypatch):
    assert compiled.describe().startswith("numba ")
    monkeypatch.setenv("DOMAINBED_SURGERY_COMPILED", "0")
    assert not compiled.enabled() and compiled.describe().startswith("torch")
    assert compiled.agreeing_sum(torch.randn(3, 4), torch.empty(4)) is None


# -- the kernels as tasks on torch's OpenMP threads -----------------------------------------
def torch_openmp_or_skip():
    lib = compiled._torch_openmp()
    if lib is None:
        pytest.skip("torch does not run on GNU OpenMP here: the kernels use Numba's threads")
    return lib


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 8), p=st.integers(1, 3 * 16384 + 50), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64]), l1=st.booleans())
def test_agreeing_sum_task_gives_the_kernels_bits(n, p, seed, dtype, l1):
    """On torch's threads: the same update, conflict count and float64 sum of |out| as
    Numba's kernel, for every number of rows the task is compiled for."""
    lib = torch_openmp_or_skip()
    g = with_zeros(n, p, seed, dtype)
    by_task = torch.full((p,), float("nan"), dtype=dtype)
    by_kernel = torch.full((p,), float("nan"), dtype=dtype)
    conflicts, total, sq_norms = compiled._agreeing_sum_on(lib, g, by_task, l1)
    k_conflicts, k_total, k_sq_norms = compiled._agreeing_sum_kernel(g, by_kernel, l1)
    assert (conflicts, total) == (k_conflicts, k_total)
    assert np.array_equal(sq_norms, k_sq_norms)
    assert torch.equal(by_task, by_kernel)
    assert torch.equal(by_task, torch_agreeing_sum(g)[0])


def test_agreeing_sum_task_reads_rows_of_a_wider_matrix():
    """Rows with a stride larger than their length (a column slice of [N, P]): the task
    reads each row's own columns."""
    lib = torch_openmp_or_skip()
    wide = with_zeros(3, 3 * block() + 40, seed=12)
    g = wide[:, 17:17 + 2 * block() + 5]
    out = torch.empty(g.shape[1])
    conflicts, _, sq_norms = compiled._agreeing_sum_on(lib, g, out, True)
    expected, expected_conflicts, _ = torch_agreeing_sum(g.contiguous())
    assert torch.equal(out, expected) and conflicts == expected_conflicts
    np.testing.assert_allclose(sq_norms, (g.double() ** 2).sum(dim=1).numpy(), rtol=1e-12)


def test_more_rows_than_the_task_is_compiled_for_use_numbas_kernel():
    from domainbed_surgery.rules import _numba

    torch_openmp_or_skip()
    g = with_zeros(_numba.TASK_MAX_ROWS + 1, 1000, seed=4)
    out = torch.empty(1000)
    conflicts = compiled.agreeing_sum(g, out).conflicts
    expected, expected_conflicts, _ = torch_agreeing_sum(g)
    assert torch.equal(out, expected) and conflicts == expected_conflicts


@pytest.mark.parametrize("seed", [0, 2**63 + 12345, 2**64 - 1])
def test_noise_task_gives_the_kernels_draws(seed, monkeypatch):
    """The same draws on torch's threads as on Numba's, for seeds across the 64-bit range
    (the task receives the seed as the bits of an int64)."""
    torch_openmp_or_skip()
    p = 4 * block() + 9
    values = with_zeros(1, p, seed=1)[0]
    by_task = values.clone()
    assert compiled.noise_where_zero(by_task, seed, 0.25)
    monkeypatch.setenv("DOMAINBED_SURGERY_OPENMP", "0")
    by_kernel = values.clone()
    assert compiled.noise_where_zero(by_kernel, seed, 0.25)
    assert torch.equal(by_task, by_kernel)
    assert torch.equal(by_task[values != 0], values[values != 0])  # nonzeros kept


def test_tasks_do_not_depend_on_the_thread_count():
    torch_openmp_or_skip()
    g = with_zeros(3, 5 * block() + 3, seed=8)
    results = []
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            out = torch.empty(g.shape[1])
            totals = compiled.agreeing_sum(g, out)
            compiled.noise_where_zero(out, 99, 1.5)
            results.append((out, totals))
    finally:
        torch.set_num_threads(threads)
    for out, totals in results[1:]:
        assert torch.equal(out, results[0][0]) and same_totals(totals, results[0][1])


def test_tasks_that_disagree_with_the_kernels_fall_back_to_numbas_threads(monkeypatch):
    """The first use checks the tasks against the kernels on a known input; a task giving
    other bits (here: a corrupted update) means Numba's threads, with a warning."""
    lib = torch_openmp_or_skip()
    real = compiled._agreeing_sum_on

    def corrupted(lib, grads, out, l1, gram=False):
        totals = real(lib, grads, out, l1, gram)
        out[0] += 1.0
        return totals

    monkeypatch.setattr(compiled, "_gomp", None)
    monkeypatch.setattr(compiled, "_agreeing_sum_on", corrupted)
    with pytest.warns(RuntimeWarning, match="Numba's threads"):
        assert compiled._torch_openmp() is None
    assert compiled.describe().endswith("on Numba's threads")
    monkeypatch.setattr(compiled, "_gomp", None)
    monkeypatch.setattr(compiled, "_agreeing_sum_on", real)
    assert compiled._torch_openmp()._handle == lib._handle  # passes again: torch's threads


def test_describe_says_whose_threads_run_the_kernels(monkeypatch):
    torch_openmp_or_skip()
    assert compiled.describe().endswith("on torch's OpenMP threads")
    monkeypatch.setenv("DOMAINBED_SURGERY_OPENMP", "0")
    assert compiled.describe().endswith("on Numba's threads")


# -- the Gram matrix in one read (PCGrad's every step, every rule's diagnostic step) ------
def float64_gram(g):
    g = g.double()
    return g @ g.T


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 9), p=st.integers(1, 3 * 16384 + 50), seed=st.integers(0, 2**16))
def test_gram_is_the_float64_gram_matrix(n, p, seed):
    """Float64 products of float32 rows, summed in another order than a matmul: equal to
    1e-12 of the largest squared norm, and exactly symmetric; N = 9 runs past the tasks'
    eight rows on Numba's kernel."""
    g = with_zeros(n, p, seed)
    gram = compiled.gram(g)
    expected = float64_gram(g)
    assert gram.dtype == torch.float64 and gram.shape == (n, n)
    assert torch.equal(gram, gram.T)
    torch.testing.assert_close(gram, expected, rtol=0,
                               atol=1e-12 * expected.diagonal().max().item() + 1e-300)


def test_gram_hand_computed():
    g = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 2.0], [0.0, 0.0, 0.0]])
    assert compiled.gram(g).tolist() == [[5.0, 1.0, 0.0], [1.0, 14.0, 0.0], [0.0, 0.0, 0.0]]
    huge = torch.full((2, 4), 2.0 ** 100)  # float32 products would overflow; float64 ones do not
    assert compiled.gram(huge).tolist() == [[2.0 ** 202] * 2] * 2


def test_the_agreeing_sums_gram_is_grams_and_its_norms_the_diagonal():
    """On a diagnostic step the agreeing-sum kernel's read gives the Gram matrix: the bits
    of :func:`compiled.gram`, whose diagonal is the norms of a step without diagnostics."""
    g = with_zeros(3, 3 * block() + 7, seed=21)
    out = torch.empty(g.shape[1])
    with_gram = compiled.agreeing_sum(g, out, gram=True)
    lean = compiled.agreeing_sum(g, torch.empty(g.shape[1]), l1=False)
    assert torch.equal(with_gram.gram, compiled.gram(g))
    assert torch.equal(with_gram.sq_norms, lean.sq_norms)
    assert torch.equal(with_gram.gram.diagonal(), lean.sq_norms)


def test_gram_declines_what_it_is_not_compiled_for():
    g = torch.randn(3, 10)
    assert compiled.gram(g.double()) is None  # float64: torch's float64 dots
    assert compiled.gram(g.half()) is None
    assert compiled.gram(g[:, ::2]) is None  # strided rows
    assert compiled.gram(g.clone().requires_grad_()) is None
    assert compiled.gram(g[0]) is None  # not [N, P]
    assert not compiled.gram_applies(torch.empty(3, 10, device="meta"))


@pytest.mark.parametrize("openmp", ["1", "0"])
def test_gram_does_not_depend_on_the_thread_count(openmp, monkeypatch):
    import numba

    monkeypatch.setenv("DOMAINBED_SURGERY_OPENMP", openmp)
    g = with_zeros(4, 5 * block() + 3, seed=5)
    threads = torch.get_num_threads()
    try:
        grams = []
        for t in (1, min(3, max(2, numba.config.NUMBA_NUM_THREADS))):
            torch.set_num_threads(t)
            grams.append(compiled.gram(g))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grams[0], grams[1])


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_gram_task_gives_the_kernels_bits(n):
    lib = torch_openmp_or_skip()
    wide = with_zeros(n, 3 * block() + 40, seed=n)
    for g in (wide, wide[:, 9:9 + 2 * block() + 5]):  # rows of a wider matrix too
        assert np.array_equal(compiled._gram_on(lib, g), compiled._gram_kernel(g))


def test_a_gramian_rules_diagnostic_step_counts_in_the_kernels_read(monkeypatch):
    """PCGrad on a diagnostic step: the agreement count and Gram matrix of the torch chunks,
    the count exactly, from one compiled read; the update the rule's on that Gram."""
    g = with_zeros(3, rules.CHUNK + 2 * block() + 3, seed=17)
    rule = rules.get("PCGrad")()
    fast, fast_pass = rules.combine_in_one_pass(rule, g, gen(2))
    assert torch.equal(fast_pass.gram, compiled.gram(g))
    assert torch.equal(fast, rule(g, gen(2), gram=compiled.gram(g)))
    monkeypatch.setenv("DOMAINBED_SURGERY_COMPILED", "0")
    slow, slow_pass = rules.combine_in_one_pass(rule, g, gen(2))
    assert fast_pass.n_agree.item() == slow_pass.n_agree.item() == int(rules.agreement_mask(g).sum())
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4 * g.abs().max().item())
