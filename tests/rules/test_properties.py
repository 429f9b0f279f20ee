"""Properties every registered rule must have, checked over generated matrices (TorchJD's style).

Each property runs over all rules in the registry (TorchJD's too, when installed), so a
new rule module is checked without touching this file: output shape, dtype and device;
finite output for inputs scaled from 1e-30 to 1e30 and with zero rows; invariance to the
order of the domains (exact for deterministic rules, of the mean over seeds for random
ones); the plain gradient for N = 1; positive homogeneity where the rule declares it;
determinism under a seeded generator.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import randomized
from domainbed_surgery import rules

RULES = rules.names()
RANDOMIZED = {name for name in RULES if randomized(name)}
#: Rules whose result is not c times the result for c times the gradients, and why.
NOT_HOMOGENEOUS = {"NashMTL": "max_norm caps the update's norm",
                   "FairGrad": "its weights solve G w = w^(-1/alpha), not scale-free",
                   "ExcessMTL": "its weights come from accumulated squared gradient norms"}
SHAPES = [(2, 5), (3, 9), (4, 6), (5, 3)]
SCALES = [1e-30, 1e-10, 1.0, 1e10, 1e30]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fresh(name: str) -> rules.Rule:
    return rules.get(name)()


def apply(name: str, grads: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A fresh instance of the rule on ``grads`` with a generator seeded by ``seed``."""
    rule = fresh(name)
    return rule(grads, _generator(rule, grads, seed))


def _generator(rule: rules.Rule, grads: torch.Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=rule.generator_device(grads)).manual_seed(seed)


def matrices(name: str, dtype=torch.float64):
    """Seeded matrices the rule is defined for: generic, with a zero row, rank-deficient."""
    cls = rules.get(name)
    out = []
    for k, (n, p) in enumerate(SHAPES):
        if n < cls.min_domains:
            continue
        g = torch.randn(n, p, generator=gen(k), dtype=dtype)
        g[1] = -0.7 * g[0] + 0.3 * g[1]  # a conflict in every matrix
        zero_row = g.clone()
        zero_row[-1] = 0.0
        dependent = g.clone()
        dependent[-1] = 2.0 * g[0]
        out += [g, zero_row, dependent]
    return out


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device(name, dtype):
    for g in matrices(name, dtype):
        out = apply(name, g)
        assert out.shape == (g.shape[1],) and out.dtype == dtype and out.device == g.device


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("scale", SCALES)
def test_finite_from_tiny_to_huge_inputs_and_zero_rows(name, scale):
    for g in matrices(name):
        out = apply(name, g * scale)
        assert torch.isfinite(out).all(), (name, scale, g)
    n = max(2, rules.get(name).min_domains)
    zeros = torch.zeros(n, 4, dtype=torch.float64)
    assert torch.isfinite(apply(name, zeros)).all()


@pytest.mark.parametrize("name", RULES)
def test_single_domain_returns_the_gradient(name):
    g = torch.tensor([[0.0, 1.5, -2.0, 0.0]], dtype=torch.float64)
    assert torch.equal(apply(name, g), g[0])


@pytest.mark.parametrize("name", RULES)
def test_deterministic_under_a_seed(name):
    for g in matrices(name):
        assert torch.equal(apply(name, g, seed=3), apply(name, g, seed=3))


@pytest.mark.parametrize("name", [n for n in RULES if n not in NOT_HOMOGENEOUS])
@pytest.mark.parametrize("c", [1e-3, 7.5])
def test_positive_homogeneity(name, c):
    for g in matrices(name):
        torch.testing.assert_close(apply(name, c * g, seed=1), c * apply(name, g, seed=1),
                                   rtol=1e-6, atol=1e-9 * c)


@pytest.mark.parametrize("name", sorted(set(RULES) - RANDOMIZED))
def test_order_of_the_domains_does_not_matter(name):
    for g in matrices(name):
        perm = torch.arange(g.shape[0]).flip(0)
        torch.testing.assert_close(apply(name, g[perm]), apply(name, g), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(RANDOMIZED))
def test_order_of_the_domains_does_not_matter_on_average(name):
    """Random rules: the mean over 300 seeded draws is the same for permuted domains."""
    g = matrices(name)[3] if len(matrices(name)) > 3 else matrices(name)[0]
    perm = torch.arange(g.shape[0]).flip(0)
    draws = 300
    a = torch.stack([apply(name, g, seed=s) for s in range(draws)])
    b = torch.stack([apply(name, g[perm], seed=10_000 + s) for s in range(draws)])
    spread = torch.maximum(a.std(0), b.std(0)) / draws ** 0.5
    assert ((a.mean(0) - b.mean(0)).abs() <= 5 * spread + 1e-9).all(), name


@pytest.mark.parametrize("name", RULES)
def test_unknown_arguments_and_registry_metadata(name):
    cls = rules.get(name)
    assert cls.name == name and cls.summary and cls.native_scale in ("sum", "mean")
    assert all(p.arg.isidentifier() for p in cls.params)  # a keyword; the glue derives the key
    with pytest.raises(TypeError, match="unknown argument"):
        cls(no_such_argument=1)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 5), st.integers(1, 30), st.integers(0, 2 ** 31 - 1))
def test_agrsum_keeps_exactly_the_agreeing_sum(n, p, seed):
    """Hypothesis over shapes and integer-valued matrices with many exact zeros."""
    g = torch.randint(-3, 4, (n, p), generator=gen(seed)).double()
    out = rules.get("AgrSum")()(g)
    agree = (g > 0).all(0) | (g < 0).all(0)
    assert torch.equal(out, torch.where(agree, g.sum(0), torch.zeros(p, dtype=g.dtype)))


def test_randomness_is_observed_where_expected():
    """The paper's random rules and TorchJD's random ones are seen to depend on the seed."""
    assert {"AgrRand", "PCGrad"} <= RANDOMIZED and "AgrSum" not in RANDOMIZED
    if "GradDrop" in RULES:
        assert {"GradVac", "GradDrop"} <= RANDOMIZED and not {"UPGrad", "MGDA"} & RANDOMIZED
