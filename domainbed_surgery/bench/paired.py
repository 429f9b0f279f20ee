"""Paired step-time comparisons: algorithm against reference, repetition by repetition.

The benchmark runs every algorithm once per repetition, interleaved, so the i-th times of
two algorithms were measured seconds apart under the same machine load. On a shared VM
whose speed drifts by several percent between minutes, the difference of two medians
mixes that drift into the comparison; the median of the per-repetition differences does
not, and a Wilcoxon signed-rank test on them says whether "faster" is more than noise. A
distribution-free 95% confidence interval of that median (binomial order statistics) says
how large a difference the repetitions leave open either way.
"""

from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence

from scipy import stats

__all__ = ["PAIRED_COLUMNS", "paired_ratio", "compare"]

PAIRED_COLUMNS = ("setting", "algorithm", "reference", "steps", "median_diff_ms",
                  "ci95_low_ms", "ci95_high_ms", "median_diff_erm_steps", "faster_share",
                  "wilcoxon_p_faster")


def _check(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"paired times need the same number (>= 1) of repetitions, got "
                         f"{len(a)} and {len(b)}")


def paired_ratio(times: Sequence[float], erm: Sequence[float]) -> float:
    """Median over repetitions of ``times[i] / erm[i]``: the ratio to ERM, drift removed."""
    _check(times, erm)
    return statistics.median(t / e for t, e in zip(times, erm))


def compare(times: Sequence[float], reference: Sequence[float],
            erm: Optional[Sequence[float]] = None) -> dict:
    """``times`` against ``reference`` (seconds, one per repetition, same repetitions).

    ``median_diff_ms``: median of ``times[i] - reference[i]`` (negative: faster);
    ``ci95_low_ms``/``ci95_high_ms``: a 95% confidence interval of that median, from the
    order statistics of the differences (``scipy.stats.quantile_test``: exact binomial
    coverage >= 95%, no assumption on their distribution; None with fewer than 6
    repetitions, where no such interval is finite);
    ``median_diff_erm_steps``: the same difference in units of that repetition's ERM step
    (None without ``erm``); ``faster_share``: the fraction of repetitions where ``times`` was
    below ``reference``; ``wilcoxon_p_faster``: one-sided Wilcoxon signed-rank p-value for
    "``times`` is faster" (None with fewer than 2 non-zero differences).
    """
    _check(times, reference)
    diffs = [t - r for t, r in zip(times, reference)]
    scaled = None
    if erm is not None:
        _check(times, erm)
        scaled = statistics.median(d / e for d, e in zip(diffs, erm))
    p = None
    if sum(d != 0 for d in diffs) >= 2:
        p = float(stats.wilcoxon(diffs, alternative="less").pvalue)
        p = None if math.isnan(p) else p
    low = high = None
    if len(diffs) >= 6:
        ci = stats.quantile_test(diffs, q=0, p=0.5).confidence_interval(0.95)
        low, high = float(ci.low) * 1e3, float(ci.high) * 1e3
    return {"median_diff_ms": statistics.median(diffs) * 1e3,
            "ci95_low_ms": low, "ci95_high_ms": high,
            "median_diff_erm_steps": scaled,
            "faster_share": sum(d < 0 for d in diffs) / len(diffs),
            "wilcoxon_p_faster": p}
