"""PCGrad (Eq. 5) against hand-computed projections and TorchJD's PCGrad."""

import itertools

import pytest
import torch

from domainbed_surgery import rules

T = torch.tensor


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pcgrad(grads, generator=None, **kwargs):
    return rules.get("PCGrad")()(grads, generator, **kwargs)


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
    torch.testing.assert_close(pcgrad(g, generator), expected)


def test_pcgrad_three_domains_hand_computed_for_both_orders():
    g = T([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-0.5, -1.0, 1.0]])
    results = set()
    for seed in range(40):
        results.add(tuple(round(v, 5) for v in pcgrad(g, gen(seed)).tolist()))
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
    from domainbed_surgery.rules.pcgrad import pcgrad_weights, random_orders

    for seed in range(5):
        g = torch.randn(n, 7, generator=gen(100 * n + seed), dtype=torch.float64)
        g[1] = -g[0] + 0.3 * g[1]  # make sure something conflicts
        gram = g @ g.T
        orders = random_orders(n, gen(seed))
        perms = iter([torch.tensor([i, *order]) for i, order in enumerate(orders)])
        monkeypatch.setattr(torch, "randperm", lambda *args, **kwargs: next(perms))
        theirs = aggregation.PCGradWeighting()(gram)
        monkeypatch.undo()
        torch.testing.assert_close(pcgrad_weights(gram, orders), theirs, rtol=1e-12, atol=1e-12)
