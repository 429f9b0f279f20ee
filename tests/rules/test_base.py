"""The math every rule shares: Eq. 2 agreement mask, Gram matrix, pairwise cosine, input checks."""

import pytest
import torch

from domainbed_surgery import rules

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
    assert rules.agreement_mask(grads).tolist() == [True, True, False, False, False, True]


def test_all_zero_columns_are_conflicts():
    """A component that is zero in every domain has no common sign: the mask is False."""
    grads = T([[0.0, 0.0, 2.0], [0.0, -0.0, 3.0]])
    assert rules.agreement_mask(grads).tolist() == [False, False, True]
    assert rules.agreement_mask(T([[0.0, 5.0]])).tolist() == [False, True]  # N = 1


def authors_mask(g):
    """The authors' code: ``|sum_i sgn(g_i)| == N`` (DGvGS, src/gradient.py)."""
    return torch.sign(g).sum(dim=0).abs() == g.shape[0]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_agreement_mask_is_the_authors_rule_on_random_inputs(n):
    g = torch.randint(-2, 3, (n, 500), generator=gen(n)).float()  # many exact zeros
    assert torch.equal(rules.agreement_mask(g), authors_mask(g))
    # ... which is the strict rule: every component nonzero, all of one sign
    assert torch.equal(rules.agreement_mask(g), (g > 0).all(0) | (g < 0).all(0))


def test_negative_zero_counts_as_zero():
    assert rules.agreement_mask(T([[0.0, 1.0], [-0.0, 1.0]])).tolist() == [False, True]


# --- diagnostics and input checks ----------------------------------------------------
def test_pairwise_cosine():
    g = T([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expected = (0.0 + 2 ** -0.5 + 2 ** -0.5) / 3
    assert rules.pairwise_cosine(rules.gram_matrix(g)).item() == pytest.approx(expected)
    assert torch.isnan(rules.pairwise_cosine(rules.gram_matrix(g[:1])))


def test_gram_matrix_survives_float32_overflow():
    g = torch.full((2, 4), 1e30)  # squares overflow float32
    gram = rules.gram_matrix(g)
    assert gram.dtype == torch.float64 and torch.isfinite(gram).all()
    assert gram[0, 1].item() == pytest.approx(4e60)


@pytest.mark.parametrize("bad, error", [
    (torch.zeros(3), ValueError), (torch.zeros(0, 4), ValueError),
    (torch.zeros(2, 3, dtype=torch.long), TypeError), ([[1.0]], TypeError)])
def test_bad_inputs_raise(bad, error):
    with pytest.raises(error):
        rules.agreement_mask(bad)
    for name in rules.names():
        with pytest.raises(error):
            rules.get(name)()(bad)
