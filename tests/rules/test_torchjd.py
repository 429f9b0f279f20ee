"""TorchJD's aggregators as rules: TorchJD itself is the oracle; a few values by hand."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domainbed_surgery import rules
from domainbed_surgery.rules import torchjd as tj
from domainbed_surgery.surgery.hparams import rule_from_hparams

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


@pytest.mark.parametrize("name", [n for n in WRAPPED if issubclass(rules.get(n), rules.GramianRule)])
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
    rule = rule_from_hparams(rules.get("CAGrad"), {"cagrad_c": 0.8})
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
    root = tj.gram_square_root(g @ g.T).root
    torch.testing.assert_close(root @ root.T, g @ g.T)
    assert torch.linalg.matrix_rank(root) == 2


def test_square_root_keeps_zero_rows_zero_and_small_rows_whole():
    """The root of the Gram matrix used to leave a zero gradient at ~1e-16 (ConFIG then
    normalized it into a unit direction) and to lose a gradient 1e8 times smaller."""
    g = torch.randn(3, 50, generator=gen(0), dtype=torch.float64)
    g[1] = 0.0
    root = tj.gram_square_root(g @ g.T)
    assert torch.equal(root.root[1], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(root.root @ root.root.T, g @ g.T)
    h = torch.randn(3, 50, generator=gen(1), dtype=torch.float64)
    h[2] *= 1e-8
    root = tj.gram_square_root(h @ h.T).root
    torch.testing.assert_close(root.norm(dim=1), h.norm(dim=1), rtol=1e-12, atol=0)
    cos = lambda a, i, j: (a[i] @ a[j]) / (a[i].norm() * a[j].norm())  # noqa: E731
    assert cos(root, 0, 2).item() == pytest.approx(cos(h, 0, 2).item(), abs=1e-9)


# -- each rule against TorchJD itself, where it is hard ------------------------------------
def sensitivity(name: str, g: torch.Tensor, seed: int) -> float:
    """How far TorchJD is from itself on the same gradients: in another column order, and
    perturbed at 1e-14 relative (an iterative solver's tolerance shows up there)."""
    base = theirs(name, g, seed)
    perm = torch.randperm(g.shape[1], generator=gen(5))
    permuted = torch.empty_like(base)
    permuted[perm] = theirs(name, g[:, perm], seed)
    noisy = theirs(name, g * (1 + 1e-14 * torch.randn(g.shape, generator=gen(7), dtype=g.dtype)), seed)
    return max((permuted - base).norm().item(), (noisy - base).norm().item())


def check_against_torchjd(name: str, g: torch.Tensor, seed: int) -> None:
    """``name``'s result on ``g`` is TorchJD's, as the rule's ``equals_torchjd`` says."""
    mode = rules.get(name).equals_torchjd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = rules.get(name)()(g, gen(seed))
        if mode == "at unit scale":
            s = g.norm(dim=1).max()
            expected = s * theirs(name, g / s, seed)
        else:
            expected = theirs(name, g, seed)
        tol = 1e-7 * expected.norm().item() + 1e-300
        if mode == "within solver tolerance":
            tol += 20 * sensitivity(name, g, seed)
    assert (ours - expected).norm().item() <= tol, (name, mode, ours, expected)


@st.composite
def hard_matrices(draw):
    """Conflicting domain gradients with zero rows, norms up to 1e8 apart and tiny traces."""
    n = draw(st.integers(2, 4))
    g = torch.randn(n, draw(st.integers(3, 40)), generator=gen(draw(st.integers(0, 10 ** 6))),
                    dtype=torch.float64)
    g[1] = -0.5 * g[0] + 0.5 * g[1]
    scales = draw(st.lists(st.sampled_from([0.0, 1e-8, 1e-4, 1.0]), min_size=n, max_size=n)
                  .filter(lambda s: any(s)))
    overall = draw(st.sampled_from([1e-6, 1e-3, 1.0, 1e3]))
    return g * torch.tensor(scales, dtype=torch.float64)[:, None] * overall


@pytest.mark.parametrize("name", WRAPPED)
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(g=hard_matrices(), seed=st.integers(0, 1000))
def test_every_torchjd_rule_is_torchjd_as_it_says_on_hard_matrices(name, g, seed):
    if g.shape[0] < rules.get(name).min_domains:
        return
    check_against_torchjd(name, g, seed)


def test_config_with_a_zero_domain_gradient_is_torchjds():
    """The audit's case: TorchJD's result has equal cosines 0.774/0.774 with rows 0 and 2."""
    g = torch.randn(3, 50, generator=gen(0), dtype=torch.float64)
    g[1] = 0.0
    ours, expected = rules.get("ConFIG")()(g), theirs("ConFIG", g, 0)
    torch.testing.assert_close(ours, expected)
    cos = [torch.nn.functional.cosine_similarity(ours, g[i], dim=0).item() for i in (0, 2)]
    assert cos[0] == pytest.approx(cos[1], abs=1e-9)
    far = torch.randn(3, 50, generator=gen(2), dtype=torch.float64) * torch.tensor([[1e8], [1.0], [1.0]],
                                                                               dtype=torch.float64)
    torch.testing.assert_close(rules.get("ConFIG")()(far), theirs("ConFIG", far, 0), rtol=1e-7, atol=0)


def test_nashmtl_with_a_zero_domain_gradient_is_torchjds():
    g = torch.randn(3, 50, generator=gen(4), dtype=torch.float64)
    g[1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, expected = rules.get("NashMTL")()(g, gen(0)), theirs("NashMTL", g, 0)
    torch.testing.assert_close(ours, expected, rtol=1e-7, atol=0)


@pytest.mark.parametrize("name", ["UPGrad", "DualProj", "CAGrad", "GradVac"])
def test_unit_scale_rules_are_scale_invariant_where_torchjd_is_not(name):
    """Small domain gradients (norms ~1e-3 to 1e-5, as late in training): TorchJD's absolute
    eps change the method (UPGrad/DualProj: the plain mean; CAGrad: no step; GradVac:
    shrunken cosines); ours gives c times the result at unit scale."""
    g = torch.randn(3, 40, generator=gen(6), dtype=torch.float64)
    g[1] = -1.5 * g[0] + 0.3 * g[1]  # the mean conflicts with g[0]: every rule acts
    g = g / g.norm(dim=1).max()
    c = 1e-5 if name == "GradVac" else 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        at_unit, small = rules.get(name)()(g, gen(0)), rules.get(name)()(c * g, gen(0))
        torchjd_small = theirs(name, c * g, 0)
    torch.testing.assert_close(small, c * at_unit, rtol=1e-9, atol=0)
    torch.testing.assert_close(at_unit, theirs(name, g, 0), rtol=1e-6, atol=0)
    assert (torchjd_small - c * at_unit).norm() > 0.05 * (c * at_unit).norm()
    if name in ("UPGrad", "DualProj"):
        torch.testing.assert_close(torchjd_small, c * g.mean(dim=0))
    if name == "CAGrad":
        assert torch.equal(torchjd_small, torch.zeros_like(torchjd_small))
