"""The benchmark's paired comparisons (domainbed_surgery.bench.paired), on known answers."""

import pytest
from scipy import stats

from domainbed_surgery.bench.paired import compare, paired_ratio


def test_paired_ratio_is_the_median_of_per_repetition_ratios():
    # ratios 2, 2, 3; the ratio of medians would be 4 / 2 = 2 here but 9 / 3 = 3 for the max
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0


def test_pairing_removes_drift_that_unpaired_medians_keep():
    """The machine slows down in the last three repetitions; the algorithm is 1 ms faster
    than the reference in every repetition, yet its median time is the larger."""
    ours = [0.100, 0.100, 0.200, 0.200, 0.200]
    ref = [0.101, 0.101, 0.101, 0.201, 0.201]
    result = compare(ours, ref)
    assert sorted(ours)[2] > sorted(ref)[2]  # unpaired: 200 ms against 101 ms
    assert result["median_diff_ms"] == pytest.approx(-1.0)
    assert result["faster_share"] == pytest.approx(0.8)


def test_compare_known_answer():
    # differences -1, 0, -2 s; Wilcoxon drops the zero: ranks 1 and 2 both negative, so
    # W+ = 0 and the exact one-sided p is 1/2^2
    result = compare([1.0, 2.0, 3.0], [2.0, 2.0, 5.0], erm=[1.0, 1.0, 2.0])
    assert result["median_diff_ms"] == -1000.0
    assert result["median_diff_erm_steps"] == -1.0  # -1/1, 0/1, -2/2
    assert result["faster_share"] == pytest.approx(2 / 3)
    assert result["wilcoxon_p_faster"] == pytest.approx(0.25)


def test_compare_six_faster_repetitions_give_the_smallest_p():
    result = compare([1.0] * 6, [2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert result["wilcoxon_p_faster"] == pytest.approx(1 / 64)
    assert result["median_diff_erm_steps"] is None  # no ERM times given


def test_compare_slower_gives_large_p():
    assert compare([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])["wilcoxon_p_faster"] > 0.5


def test_compare_without_enough_differences_has_no_p():
    assert compare([1.0, 1.0], [1.0, 2.0])["wilcoxon_p_faster"] is None


@pytest.mark.parametrize("a, b", [([], []), ([1.0], [1.0, 2.0])])
def test_paired_times_must_match(a, b):
    with pytest.raises(ValueError, match="same number"):
        compare(a, b)
    with pytest.raises(ValueError, match="same number"):
        paired_ratio(a, b)


@pytest.mark.parametrize("n", [6, 10, 44])
def test_confidence_interval_is_the_binomial_order_statistics(n):
    """The 95% interval of the median difference is [d_(k), d_(n-k+1)] of the sorted
    differences, k the largest with P(Binomial(n, 1/2) <= k - 1) <= 0.025 (so its coverage
    is at least 95% whatever their distribution): d_(16) and d_(29) for 44 repetitions."""
    ref = [0.0] * n
    ours = [0.001 * (i + 1) for i in reversed(range(n))]  # differences 1 .. n ms, unsorted
    k = max(k for k in range(1, n) if stats.binom.cdf(k - 1, n, 0.5) <= 0.025)
    result = compare(ours, ref)
    assert result["ci95_low_ms"] == pytest.approx(k)
    assert result["ci95_high_ms"] == pytest.approx(n - k + 1)
    assert 1 - 2 * stats.binom.cdf(k - 1, n, 0.5) >= 0.95
    if n == 44:
        assert (k, n - k + 1) == (16, 29)


def test_confidence_interval_needs_six_repetitions():
    result = compare([1.0] * 5, [2.0] * 5)
    assert result["ci95_low_ms"] is None and result["ci95_high_ms"] is None
    assert compare([1.0] * 6, [2.0] * 6)["ci95_high_ms"] == pytest.approx(-1000.0)
