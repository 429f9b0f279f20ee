"""Agr-Sum (Eq. 3) against hand-computed answers."""

import torch

from domainbed_surgery import rules

T = torch.tensor


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def agr_sum(grads, generator=None, **kwargs):
    return rules.get("AgrSum")()(grads, generator, **kwargs)


def test_agr_sum_hand_computed():
    grads = T([[-4.0, 1.0, 1.0, 0.0, 2.0],
               [6.0, 1.0, 1.0, 0.0, 0.0]])
    assert agr_sum(grads).tolist() == [0.0, 2.0, 2.0, 0.0, 0.0]


def test_agr_sum_is_the_sum_not_the_mean():
    grads = T([[1.0], [2.0], [3.0]])
    assert agr_sum(grads).tolist() == [6.0]


def test_agr_sum_writes_into_out_and_is_row_order_invariant():
    g = torch.randn(3, 1000, generator=gen())
    out = torch.empty(1000)
    res = agr_sum(g, out=out)
    assert res.data_ptr() == out.data_ptr()
    torch.testing.assert_close(agr_sum(g[[2, 0, 1]]), res)
    mask = rules.agreement_mask(g)
    torch.testing.assert_close(res, torch.where(mask, g.sum(0), 0.0))
