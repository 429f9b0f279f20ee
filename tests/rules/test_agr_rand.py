"""Agr-Rand (Eq. 4) against hand-computed answers and the authors' sigma."""

import pytest
import torch
from scipy import stats

from domainbed_surgery import rules

T = torch.tensor


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def agr_rand(grads, generator=None, **kwargs):
    return rules.get("AgrRand")()(grads, generator, **kwargs)


def test_agr_rand_keeps_agreeing_sum_and_noises_conflicts():
    grads = T([[1.0, 3.0, -1.0, 5.0],
               [1.0, 1.0, -3.0, -5.0]])
    out = agr_rand(grads, gen())
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
    out = agr_rand(grads, gen(1))
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
    out = agr_rand(grads, gen())
    assert torch.isfinite(out).all()
    assert out.tolist() == [0.0, 0.0]


def test_agr_rand_is_reproducible_with_a_generator():
    g = torch.randn(3, 1000, generator=gen())
    torch.testing.assert_close(agr_rand(g, gen(5)), agr_rand(g, gen(5)))
    assert not torch.equal(agr_rand(g, gen(5)), agr_rand(g, gen(6)))


def test_generator_on_the_wrong_device_is_refused():
    meta = torch.zeros(2, 3, device="meta")
    with pytest.raises(ValueError, match="generator"):
        agr_rand(meta, torch.Generator())


def fused_agr_rand(grads, seed):
    return rules.combine_in_one_pass(rules.get("AgrRand")(), grads, gen(seed))[0]


def test_fused_noise_is_the_same_for_any_number_of_threads():
    """The fast path draws its noise in parallel column blocks, one stream each, all seeded
    from the run's generator: the thread count must not change the update."""
    grads = torch.randn(3, 3 * rules.kernels.CHUNK + 17, generator=gen(5))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused_agr_rand(grads, 1)
        torch.set_num_threads(2)
        two = fused_agr_rand(grads, 1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert not torch.equal(one, fused_agr_rand(grads, 2))  # another seed, other noise


def test_fused_noise_fills_every_part_with_the_agreeing_scale():
    """Every part of the vector (the first and the last one included) gets N(0, sigma^2)
    at its conflicting components, sigma the mean |sum| over the agreeing ones."""
    grads = torch.randn(3, 4 * rules.kernels.CHUNK, generator=gen(6))
    out = fused_agr_rand(grads, 3)
    agree = rules.agreement_mask(grads)
    torch.testing.assert_close(out[agree], grads.sum(0)[agree])
    sigma = grads.sum(0)[agree].abs().mean()
    quarter = out.numel() // 4
    for part in (slice(0, quarter), slice(3 * quarter, None)):
        noise = out[part][~agree[part]]
        assert stats.kstest((noise / sigma).numpy(), "norm").pvalue > 1e-3
