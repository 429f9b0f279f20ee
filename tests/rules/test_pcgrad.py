"""PCGrad (Eq. 5) against hand-computed projections and TorchJD's PCGrad."""

import itertools
from fractions import Fraction

import pytest
import torch

from domainbed_surgery import rules

T = torch.tensor


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pcgrad(grads, generator=None, order="shared", **kwargs):
    return rules.get("PCGrad")(order=order)(grads, generator, **kwargs)


def project(gi, gj):
    dot = gi @ gj
    return gi - dot / (gj @ gj) * gj if dot < 0 else gi


def test_pcgrad_two_domains_closed_form():
    g1, g2 = T([1.0, 0.0]), T([-1.0, 1.0])
    # <g1,g2> = -1: g1' = g1 - (-1/2) g2 = [0.5, 0.5]; g2' = g2 - (-1/1) g1 = [0, 1]
    out = pcgrad(torch.stack([g1, g2]), gen())
    torch.testing.assert_close(out, T([0.5, 1.5]))


def test_pcgrad_leaves_non_conflicting_gradients_alone():
    g = T([[1.0, 2.0, 0.0], [2.0, 1.0, 1.0], [0.5, 0.0, 3.0]])
    torch.testing.assert_close(pcgrad(g, gen()), g.sum(0))


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
    torch.testing.assert_close(pcgrad(g, generator, order="independent"), expected)


def test_pcgrad_three_domains_hand_computed_for_both_orders():
    g = T([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-0.5, -1.0, 1.0]])
    results = set()
    for seed in range(40):
        results.add(tuple(round(v, 5) for v in pcgrad(g, gen(seed), "independent").tolist()))
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
    torch.testing.assert_close(pcgrad(g, gen()), p0 + p1)


def test_pcgrad_zero_gradient_never_divides_by_zero():
    g = T([[0.0, 0.0], [1.0, -1.0], [-1.0, 0.5]])
    out = pcgrad(g, gen())
    assert torch.isfinite(out).all()


def test_pcgrad_pinned_on_the_two_row_matrix():
    # <g1, g2> = -22, |g1|^2 = 18, |g2|^2 = 38: g1' = g1 + 22/38 g2, g2' = g2 + 22/18 g1
    g = T([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    expected = g[0] + 22 / 38 * g[1] + g[1] + 22 / 18 * g[0]
    torch.testing.assert_close(pcgrad(g, gen()), expected)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_torchjd_pcgrad_is_the_oracle_under_the_same_orders(n, monkeypatch):
    """TorchJD's PCGradWeighting visits, for each i, a permutation of all rows (skipping
    i); fed permutations that list our orders, it must give our weights exactly."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    from domainbed_surgery.rules.pcgrad import independent_orders, pcgrad_weights

    for seed in range(5):
        g = torch.randn(n, 7, generator=gen(100 * n + seed), dtype=torch.float64)
        g[1] = -g[0] + 0.3 * g[1]  # make sure something conflicts
        gram = g @ g.T
        orders = independent_orders(n, gen(seed))
        perms = iter([torch.tensor([i, *order]) for i, order in enumerate(orders)])
        monkeypatch.setattr(torch, "randperm", lambda *args, **kwargs: next(perms))
        theirs = aggregation.PCGradWeighting()(gram)
        monkeypatch.undo()
        torch.testing.assert_close(pcgrad_weights(gram, orders), theirs, rtol=1e-12, atol=1e-12)


# -- the authors' shared order, enumerated ------------------------------------------------
# G (3 x 5): <g0,g1> = -12, <g0,g2> = -12, <g1,g2> = 4; |g0|^2 = 24, |g1|^2 = 12, |g2|^2 = 15.
G = [[-3, -1, 2, -3, 1], [2, 2, -2, 0, 0], [1, 0, -1, 3, 2]]
# One shuffled permutation, every domain visits the others in its order (DGvGS
# src/gradient.py). By hand for (0, 1, 2):
#   g0 -> g0 + 12/12 g1 = [-1, 1, 0, -3, 1]; . g2 = -8 -> + 8/15 g2 = [-7/15, 1, -8/15, -21/15, 31/15]
#   g1 -> g1 + 12/24 g0 = [1/2, 3/2, -1, -3/2, 1/2]; . g2 = -2 -> + 2/15 g2
#        = [19/30, 3/2, -17/15, -11/10, 23/30]
#   g2 -> g2 + 12/24 g0 = [-1/2, -1/2, 0, 3/2, 5/2]; . g1 = -2 -> + 2/12 g1
#        = [-1/6, -1/6, -1/3, 3/2, 5/2]
#   sum = [0, 7/3, -2, -1, 16/3]; the other five the same way.
F = Fraction
SHARED = {
    (0, 1, 2): (F(0), F(7, 3), F(-2), F(-1), F(16, 3)),
    (0, 2, 1): (F(-4, 15), F(9, 5), F(-26, 15), F(-1, 5), F(88, 15)),
    (1, 0, 2): (F(-1, 3), F(2), F(-5, 3), F(-1), F(16, 3)),
    (1, 2, 0): (F(-7, 15), F(2), F(-23, 15), F(-7, 5), F(76, 15)),
    (2, 0, 1): (F(-2, 5), F(9, 5), F(-8, 5), F(-3, 5), F(28, 5)),
    (2, 1, 0): (F(-11, 15), F(22, 15), F(-19, 15), F(-3, 5), F(28, 5)),
}
# Reachable only with one permutation per domain (Yu et al.): the cyclic visit plans
# 0:(1,2) 1:(2,0) 2:(0,1) and 0:(2,1) 1:(0,2) 2:(1,0).
INDEPENDENT_ONLY = {(F(-2, 15), F(7, 3), F(-28, 15), F(-7, 5), F(76, 15)),
                    (F(-3, 5), F(22, 15), F(-7, 5), F(-1, 5), F(88, 15))}


def authors_pcgrad(g, task_order):
    """A literal replica of DGvGS's ``pcgrad`` loop in exact arithmetic, for a given shuffle."""
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    grad_pc = [[F(x) for x in row] for row in g]
    for i in task_order:
        for j in [j for j in task_order if j != i]:
            inner = dot(grad_pc[i], g[j])
            if inner < 0:
                grad_pc[i] = [a - inner / dot(g[j], g[j]) * b for a, b in zip(grad_pc[i], g[j])]
    return tuple(sum(col) for col in zip(*grad_pc))


def outcome(vector):
    return tuple(F(v).limit_denominator(1000) for v in vector.tolist())


def test_the_enumerated_table_is_the_authors_code():
    for perm, expected in SHARED.items():
        assert authors_pcgrad(G, perm) == expected
    assert len(set(SHARED.values())) == 6 and not INDEPENDENT_ONLY & set(SHARED.values())


def test_default_order_is_the_authors_shared_one():
    g = torch.tensor(G, dtype=torch.float64)
    for seed in range(30):
        perm = tuple(torch.randperm(3, generator=gen(seed)).tolist())  # the draw the rule makes
        got = rules.get("PCGrad")()(g, gen(seed))
        torch.testing.assert_close(got, torch.tensor([float(x) for x in SHARED[perm]],
                                                     dtype=torch.float64), rtol=0, atol=1e-12)


def test_shared_order_reaches_exactly_the_six_outcomes():
    g = torch.tensor(G, dtype=torch.float64)
    seen = {outcome(pcgrad(g, gen(seed), "shared")) for seed in range(200)}
    assert seen == set(SHARED.values())


def test_independent_orders_reach_eight_outcomes_two_the_authors_never_make():
    g = torch.tensor(G, dtype=torch.float64)
    seen = {outcome(pcgrad(g, gen(seed), "independent")) for seed in range(300)}
    assert seen == set(SHARED.values()) | INDEPENDENT_ONLY


def test_unknown_order_is_an_error():
    with pytest.raises(ValueError, match="order must be one of"):
        rules.get("PCGrad")(order="random")
    from domainbed_surgery.surgery.hparams import rule_from_hparams

    with pytest.raises(ValueError, match="hparam pcgrad_order must be one of"):
        rule_from_hparams(rules.get("PCGrad"), {"pcgrad_order": "random"})
