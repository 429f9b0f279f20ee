"""The surgery rules against hand-computed answers and the paper's formulas (Eq. 2-5)."""

import itertools

import pytest
import torch
from scipy import stats

from domainbed_surgery import surgery

T = torch.tensor


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- Eq. 2: agreement mask (the authors' rule: all N components nonzero, one sign) --
def test_agreement_mask_hand_computed():
    grads = T([[1.0, -2.0, 3.0, 0.0, 0.0, -1.0],
               [2.0, -1.0, -3.0, 0.0, 1.0, -0.5],
               [0.5, -4.0, 1.0, 0.0, 1.0, -2.0]])
    # agree(+), agree(-), conflict, all zero (a conflict, as in the authors' code),
    # zero vs nonzero, agree(-)
    assert surgery.agreement_mask(grads).tolist() == [True, True, False, False, False, True]


def test_all_zero_columns_are_conflicts():
    """A component that is zero in every domain has no common sign: the mask is False."""
    grads = T([[0.0, 0.0, 2.0], [0.0, -0.0, 3.0]])
    assert surgery.agreement_mask(grads).tolist() == [False, False, True]
    assert surgery.agreement_mask(T([[0.0, 5.0]])).tolist() == [False, True]  # N = 1


def authors_mask(g):
    """The authors' code: ``|sum_i sgn(g_i)| == N`` (DGvGS, src/gradient.py)."""
    return torch.sign(g).sum(dim=0).abs() == g.shape[0]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_agreement_mask_is_the_authors_rule_on_random_inputs(n):
    g = torch.randint(-2, 3, (n, 500), generator=gen(n)).float()  # many exact zeros
    assert torch.equal(surgery.agreement_mask(g), authors_mask(g))
    # ... which is the strict rule: every component nonzero, all of one sign
    assert torch.equal(surgery.agreement_mask(g), (g > 0).all(0) | (g < 0).all(0))


def test_negative_zero_counts_as_zero():
    assert surgery.agreement_mask(T([[0.0, 1.0], [-0.0, 1.0]])).tolist() == [False, True]


# --- Eq. 3: Agr-Sum ----------------------------------------------------------------
def test_agr_sum_hand_computed():
    grads = T([[-4.0, 1.0, 1.0, 0.0, 2.0],
               [6.0, 1.0, 1.0, 0.0, 0.0]])
    assert surgery.agr_sum(grads).tolist() == [0.0, 2.0, 2.0, 0.0, 0.0]


def test_agr_sum_is_the_sum_not_the_mean():
    grads = T([[1.0], [2.0], [3.0]])
    assert surgery.agr_sum(grads).tolist() == [6.0]


def test_agr_sum_writes_into_out_and_is_row_order_invariant():
    g = torch.randn(3, 1000, generator=gen())
    out = torch.empty(1000)
    res = surgery.agr_sum(g, out=out)
    assert res.data_ptr() == out.data_ptr()
    torch.testing.assert_close(surgery.agr_sum(g[[2, 0, 1]]), res)
    mask = surgery.agreement_mask(g)
    torch.testing.assert_close(res, torch.where(mask, g.sum(0), 0.0))


def test_single_domain_is_the_plain_gradient():
    g = torch.randn(1, 50, generator=gen())
    for rule in surgery.RULES.values():
        torch.testing.assert_close(rule(g, gen()), g[0])


# --- Eq. 4: Agr-Rand ---------------------------------------------------------------
def test_agr_rand_keeps_agreeing_sum_and_noises_conflicts():
    grads = T([[1.0, 3.0, -1.0, 5.0],
               [1.0, 1.0, -3.0, -5.0]])
    out = surgery.agr_rand(grads, gen())
    assert out[:3].tolist() == [2.0, 4.0, -4.0]
    assert out[3] != 0  # noise where the domains conflict


def test_agr_rand_sigma_is_mean_abs_of_agreeing_components():
    # agreeing sums: 2, -6 -> sigma = (2 + 6) / 2 = 4. The all-zero component is a
    # conflict (authors' rule): it is not in sigma's mean and it receives noise, like the
    # 20000 conflicting components; all of them N(0, sigma^2)
    agree = T([[1.0, -3.0], [1.0, -3.0]])
    conflict = torch.stack([torch.ones(20000), -torch.ones(20000)])
    conflict[:, :5000] = 0.0  # zero in every domain
    grads = torch.cat([agree, conflict], dim=1)
    out = surgery.agr_rand(grads, gen(1))
    assert out[:2].tolist() == [2.0, -6.0]
    noise = out[2:].double().numpy()
    assert (noise[:5000] != 0).all()  # the all-zero components got noise too
    sigma = 4.0
    assert abs(noise.std() / sigma - 1) < 0.03
    assert abs(noise.mean()) < 4 * sigma / 20000 ** 0.5
    # the samples are normal with that scale (Kolmogorov-Smirnov)
    assert stats.kstest(noise / sigma, "norm").pvalue > 1e-3


def test_agr_rand_without_any_agreement_is_finite_zero():
    grads = T([[1.0, -2.0], [-1.0, 2.0]])
    out = surgery.agr_rand(grads, gen())
    assert torch.isfinite(out).all()
    assert out.tolist() == [0.0, 0.0]


def test_agr_rand_is_reproducible_with_a_generator():
    g = torch.randn(3, 1000, generator=gen())
    torch.testing.assert_close(surgery.agr_rand(g, gen(5)), surgery.agr_rand(g, gen(5)))
    assert not torch.equal(surgery.agr_rand(g, gen(5)), surgery.agr_rand(g, gen(6)))


# --- Eq. 5: PCGrad -----------------------------------------------------------------
def project(gi, gj):
    dot = gi @ gj
    return gi - dot / (gj @ gj) * gj if dot < 0 else gi


def test_pcgrad_two_domains_closed_form():
    g1, g2 = T([1.0, 0.0]), T([-1.0, 1.0])
    # <g1,g2> = -1: g1' = g1 - (-1/2) g2 = [0.5, 0.5]; g2' = g2 - (-1/1) g1 = [0, 1]
    out = surgery.pcgrad(torch.stack([g1, g2]), gen())
    torch.testing.assert_close(out, T([0.5, 1.5]))


def test_pcgrad_leaves_non_conflicting_gradients_alone():
    g = T([[1.0, 2.0, 0.0], [2.0, 1.0, 1.0], [0.5, 0.0, 3.0]])
    torch.testing.assert_close(surgery.pcgrad(g, gen()), g.sum(0))


def test_pcgrad_three_domains_against_sequential_projection_in_the_drawn_order():
    g = T([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-0.5, -1.0, 1.0]])
    generator = gen(3)
    # Recompute with the same permutations the rule draws: one per domain, over the others.
    replay = gen(3)
    expected = torch.zeros(3)
    for i in range(3):
        others = [j for j in range(3) if j != i]
        gi = g[i].clone()
        for k in torch.randperm(2, generator=replay).tolist():
            gi = project(gi, g[others[k]])  # against the ORIGINAL g_j
        expected += gi
    torch.testing.assert_close(surgery.pcgrad(g, generator), expected)


def test_pcgrad_three_domains_hand_computed_for_both_orders():
    g = T([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-0.5, -1.0, 1.0]])
    results = set()
    for seed in range(40):
        results.add(tuple(round(v, 5) for v in surgery.pcgrad(g, gen(seed)).tolist()))
    # each domain has two possible orders: at most 8 distinct results, at least 2 seen
    all_orders = set()
    for orders in itertools.product(itertools.permutations([1, 2]), itertools.permutations([0, 2]),
                                    itertools.permutations([0, 1])):
        total = torch.zeros(3)
        for i, order in enumerate(orders):
            gi = g[i].clone()
            for j in order:
                gi = project(gi, g[j])
            total += gi
        all_orders.add(tuple(round(v, 5) for v in total.tolist()))
    assert 2 <= len(results) and results <= all_orders


def test_pcgrad_no_conflict_left_for_two_domains():
    g = torch.randn(2, 100, generator=gen(4), dtype=torch.float64)
    g[1] = -g[0] + 0.1 * g[1]  # strongly conflicting
    p0, p1 = project(g[0], g[1]), project(g[1], g[0])
    assert p0 @ g[1] == pytest.approx(0.0, abs=1e-9) and p1 @ g[0] == pytest.approx(0.0, abs=1e-9)
    torch.testing.assert_close(surgery.pcgrad(g, gen()), p0 + p1)


def test_pcgrad_zero_gradient_never_divides_by_zero():
    g = T([[0.0, 0.0], [1.0, -1.0], [-1.0, 0.5]])
    out = surgery.pcgrad(g, gen())
    assert torch.isfinite(out).all()


# --- diagnostics and input checks ----------------------------------------------------
def test_pairwise_cosine():
    g = T([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expected = (0.0 + 2 ** -0.5 + 2 ** -0.5) / 3
    assert surgery.pairwise_cosine(surgery.gram_matrix(g)).item() == pytest.approx(expected)
    assert torch.isnan(surgery.pairwise_cosine(surgery.gram_matrix(g[:1])))


@pytest.mark.parametrize("rule", list(surgery.RULES.values()) + [surgery.agreement_mask])
@pytest.mark.parametrize("bad, error", [
    (torch.zeros(3), ValueError), (torch.zeros(0, 4), ValueError),
    (torch.zeros(2, 3, dtype=torch.long), TypeError), ([[1.0]], TypeError)])
def test_bad_inputs_raise(rule, bad, error):
    with pytest.raises(error):
        rule(bad)


def test_generator_on_the_wrong_device_is_refused():
    meta = torch.zeros(2, 3, device="meta")
    with pytest.raises(ValueError, match="generator"):
        surgery.agr_rand(meta, torch.Generator())


def test_single_domain_with_exact_zeros_is_the_plain_gradient():
    g = T([[0.0, 1.5, 0.0, -2.0]])
    for rule in surgery.RULES.values():
        assert rule(g, gen()).tolist() == [0.0, 1.5, 0.0, -2.0]
