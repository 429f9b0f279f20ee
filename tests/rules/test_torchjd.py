"""TorchJD's aggregators as rules: TorchJD itself is the oracle; a few values by hand."""

from __future__ import annotations

import warnings

import pytest
import torch

from domainbed_surgery import rules
from domainbed_surgery.rules import torchjd as tj

aggregation = pytest.importorskip("torchjd.aggregation")
WRAPPED = [n for n in rules.names() if issubclass(rules.get(n), tj.TorchJDRule)]
J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)  # TorchJD's example


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def theirs(name: str, matrix: torch.Tensor, seed: int) -> torch.Tensor:
    """TorchJD's aggregator on the full matrix, its global RNG seeded as our wrapper seeds it."""
    rule = rules.get(name)()
    torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=gen(seed))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(aggregation, name)(**rule.constructor_kwargs(matrix.shape[0]))(matrix)


def test_every_fitting_aggregator_is_wrapped():
    assert set(WRAPPED) == {"UPGrad", "DualProj", "MGDA", "CAGrad", "IMTLG", "AlignedMTL",
                            "GradVac", "NashMTL", "FairGrad", "ConFIG", "TrimmedMean",
                            "GradDrop", "ExcessMTL"}


@pytest.mark.parametrize("name", WRAPPED)
def test_equals_torchjd_on_the_full_matrix(name):
    for k, (n, p) in enumerate([(2, 3), (3, 40), (4, 25)]):
        if n < rules.get(name).min_domains:
            continue
        g = torch.randn(n, p, generator=gen(k), dtype=torch.float64)
        g[1] = -0.5 * g[0] + 0.5 * g[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = rules.get(name)()(g, gen(k))
        torch.testing.assert_close(ours, theirs(name, g, k), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", [n for n in WRAPPED if rules.get(n).needs_gram])
def test_gram_based_rules_use_the_callers_gram(name):
    """They read the gradients only for ``weights @ grads``: another Gram, another answer."""
    g = torch.randn(3, 10, generator=gen(1), dtype=torch.float64)
    g[1] = -0.5 * g[0] + 0.5 * g[1]
    rule = rules.get(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        right = rule()(g, gen(), gram=g @ g.T)
        other = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))
        wrong = rule()(g, gen(), gram=other)
    assert not torch.allclose(right, wrong)


def test_hand_computed_values_on_the_two_row_matrix():
    # MGDA: min over a of |(6 - 10a, 1, 1)|: a = 0.6, the point (0, 1, 1)
    torch.testing.assert_close(rules.get("MGDA")()(J), torch.tensor([0.0, 1.0, 1.0],
                                                                      dtype=torch.float64))
    # IMTL-G: v = G^-1 d (d = norms), weights v / sum(v), G = [[18, -22], [-22, 38]]
    gram, d = J @ J.T, J.norm(dim=1)
    v = torch.linalg.inv(gram) @ d
    torch.testing.assert_close(rules.get("IMTLG")()(J), (v / v.sum()) @ J)
    # UPGrad: TorchJD's documented answer for this matrix
    torch.testing.assert_close(rules.get("UPGrad")()(J),
                               torch.tensor([0.2929, 1.9004, 1.9004], dtype=torch.float64),
                               rtol=0, atol=1e-4)


def test_trimmed_mean_of_three_domains_is_the_median():
    g = torch.tensor([[1.0, -5.0, 0.0], [3.0, 2.0, 7.0], [2.0, 9.0, -1.0]])
    assert rules.get("TrimmedMean")()(g).tolist() == [2.0, 2.0, 0.0]


def test_hparams_reach_the_aggregator():
    rule = rules.get("CAGrad").from_hparams({"cagrad_c": 0.8})
    assert rule.config["c"] == 0.8
    aggregator = rule.aggregator(3)
    assert aggregator.gramian_weighting.c == 0.8
    leak = rules.get("GradDrop")(leak=0.1).constructor_kwargs(3)["leak"]
    assert leak.tolist() == pytest.approx([0.1, 0.1, 0.1])


def test_random_rules_leave_the_global_generator_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    rules.get("GradDrop")()(torch.randn(3, 8, generator=gen()), gen(9))
    assert torch.equal(torch.rand(3), expected)


def test_stateful_rule_keeps_and_resets_its_state():
    g = torch.randn(3, 6, generator=gen(2), dtype=torch.float64)
    rule = rules.get("GradVac")(beta=0.5)
    first = rule(g, gen(0))
    second = rule(g, gen(0))  # the EMA targets moved: another update
    assert not torch.allclose(first, second)
    rule.reset()
    torch.testing.assert_close(rule(g, gen(0)), first)


def test_square_root_of_a_rank_deficient_gram():
    g = torch.randn(2, 5, generator=gen(3), dtype=torch.float64)
    g = torch.cat([g, g[:1] * 2.0])  # rank 2 of 3
    root = tj.gram_square_root(g @ g.T)
    torch.testing.assert_close(root @ root.T, g @ g.T)
    assert torch.linalg.matrix_rank(root) == 2
