"""Statistics every study reports: Student-t intervals, paired differences, per-group summaries.

One implementation, one argument name: ``confidence`` is the two-sided level (0.95 gives a 95%
interval). Intervals over fewer than two values have an undefined (NaN) half-width, never zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

from lib.core.checks import check_confidence, check_int, check_number

__all__ = [
    "t_critical", "t_interval", "summarize", "paired_difference", "verdict", "wilson_interval",
    "holm", "min_detectable_effect", "decide_difference", "median_censored",
]


def t_critical(n: int, confidence: float = 0.95) -> float:
    """The two-sided Student-t quantile for a mean over ``n`` values (NaN for n < 2)."""
    check_confidence(confidence)
    return float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) if n > 1 else math.nan


def t_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean of the finite ``values`` and the half-width of its Student-t interval.

    Non-finite values (diverged runs) are dropped; an empty input gives (nan, nan) and a single
    value (mean, nan).
    """
    check_confidence(confidence)
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    if v.size < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), t_critical(v.size, confidence) * float(v.std(ddof=1)) / math.sqrt(v.size)


def summarize(frame: pd.DataFrame, by: Sequence[str] | str, metric: str,
              confidence: float = 0.95) -> pd.DataFrame:
    """Per group ``by``: ``mean``, ``std``, ``count`` of ``metric``, the Student-t half-width
    ``ci`` and its bounds ``ci_low`` / ``ci_high`` (NaN where a group has one value)."""
    check_confidence(confidence)
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, metric] if c not in frame]
    if missing:
        raise ValueError(f"columns {missing} are not in the frame; it has {list(frame.columns)}")
    g = frame.groupby(by)[metric].agg(["mean", "std", "count"]).reset_index()
    t = np.array([t_critical(int(n), confidence) for n in g["count"]], dtype=float)
    g["ci"] = t * g["std"] / np.sqrt(g["count"])
    g["ci_low"], g["ci_high"] = g["mean"] - g["ci"], g["mean"] + g["ci"]
    return g


def paired_difference(a: pd.Series, b: pd.Series, confidence: float = 0.95) -> dict[str, float]:
    """``a - b`` over the index labels both share (e.g. seeds): ``n``, ``mean_diff``, its
    Student-t ``ci_low`` / ``ci_high``, the paired t-test ``t_p`` and the Wilcoxon signed-rank
    ``wilcoxon_p`` (two-sided; with n pairs its smallest possible value is 2 / 2**n)."""
    check_confidence(confidence)
    if a.index.has_duplicates or b.index.has_duplicates:
        raise ValueError("each side must hold one value per pairing label")
    diff = (a - b).dropna()
    n = len(diff)
    if n < 2:
        raise ValueError(f"need >= 2 paired values, found {n}")
    mean, half = t_interval(diff.to_numpy(), confidence)
    sd = float(diff.std(ddof=1))
    t_p = float(_scipy_stats.ttest_rel(a[diff.index], b[diff.index]).pvalue) if sd > 0 else math.nan
    w_p = float(_scipy_stats.wilcoxon(diff.to_numpy()).pvalue) if (diff != 0).any() else math.nan
    return {"n": n, "mean_diff": mean, "ci_low": mean - half, "ci_high": mean + half,
            "t_p": t_p, "wilcoxon_p": w_p}


def verdict(difference: dict[str, float]) -> str:
    """Plain reading of a ``paired_difference`` (a minus b, lower is better): "a better" if its
    interval lies below 0, "a worse" if above 0, else "no detectable difference"."""
    if difference["ci_high"] < 0:
        return "a better"
    if difference["ci_low"] > 0:
        return "a worse"
    return "no detectable difference"


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """Accuracy ``successes / trials`` with its Wilson score interval (always inside [0, 1]).

    Returns ``(p_hat, low, high)``; ``trials == 0`` gives NaNs. Computed by SciPy's
    ``binomtest(...).proportion_ci(method="wilson")``.
    """
    check_confidence(confidence)
    trials = check_int("trials", trials, minimum=0)
    successes = check_int("successes", successes, minimum=0, maximum=max(trials, 0))
    if trials == 0:
        return math.nan, math.nan, math.nan
    ci = _scipy_stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return successes / trials, float(ci.low), float(ci.high)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values for one family of comparisons (same order as given).

    Reject comparison i at level alpha when ``holm(p)[i] <= alpha``; this controls the
    family-wise error rate. NaN p-values stay NaN and do not count towards the family size.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}")
    finite = np.isfinite(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError("pvalues must lie in [0, 1]")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(finite)
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def min_detectable_effect(sd: float, n: int, confidence: float = 0.95, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test over ``n`` pairs detects with
    probability ``power``, given the spread ``sd`` of paired differences (e.g. from A/A runs):
    ``(t_{1-a/2, n-1} + t_{power, n-1}) * sd / sqrt(n)``. NaN for n < 2."""
    check_confidence(confidence)
    power = check_number("power", power, 0.0, 1.0, strict_min=True, strict_max=True)
    n = check_int("n", n, minimum=1)
    sd = float(sd)
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd < 0:
        raise ValueError(f"sd must be >= 0, got {sd}")
    return (t_critical(n, confidence) + float(_scipy_stats.t.ppf(power, n - 1))) * sd / math.sqrt(n)


def decide_difference(mean_diff: float, p_adjusted: float, mde: float, alpha: float = 0.05) -> str:
    """The verdict on one paired difference ``a - b`` (lower is better) within a family of
    comparisons whose p-values were adjusted together (``holm``).

    "lower" / "higher" (a against b) only when ``p_adjusted <= alpha`` *and* ``|mean_diff|`` is
    at least the minimum detectable effect ``mde`` (``min_detectable_effect`` from the A/A
    noise); otherwise "cannot decide (difference below the detectable effect)" when
    ``|mean_diff| < mde`` (or ``mde`` is NaN: nothing is detectable; or the difference is 0), else "cannot decide (not
    significant after Holm)". Both gates, because over a few seeds a paired test can reject on a
    spread that happens to be small: a difference the A/A noise could produce is not a finding.
    """
    mean_diff = check_number("mean_diff", mean_diff)
    alpha = check_number("alpha", alpha, 0.0, 1.0, strict_min=True, strict_max=True)
    p_adjusted, mde = float(p_adjusted), float(mde)
    if math.isfinite(p_adjusted) and not 0.0 <= p_adjusted <= 1.0:
        raise ValueError(f"p_adjusted must lie in [0, 1] or be NaN, got {p_adjusted}")
    if mde < 0 or math.isinf(mde):
        raise ValueError(f"mde must be a finite number >= 0 or NaN, got {mde}")
    detectable = math.isfinite(mde) and mean_diff != 0 and abs(mean_diff) >= mde  # 0: the seeds agree
    if detectable and math.isfinite(p_adjusted) and p_adjusted <= alpha:
        return "lower" if mean_diff < 0 else "higher"
    if not detectable:
        return "cannot decide (difference below the detectable effect)"
    return "cannot decide (not significant after Holm)"


def median_censored(values: Sequence[float], reached: Sequence[bool]) -> float:
    """Median over every seed of a time-to-target where some seeds never reached the target.

    A seed with ``reached=False`` counts as later than every seed that did (right-censored at
    +inf), so the median is finite only when more than half the seeds reached the target; it
    returns ``inf`` otherwise, which a report should print as "not reached".
    """
    v = np.asarray(values, dtype=float)
    r = np.asarray(reached, dtype=bool)
    if v.shape != r.shape or v.ndim != 1:
        raise ValueError(f"values and reached must be 1-D and the same length, got {v.shape} and {r.shape}")
    if v.size == 0:
        raise ValueError("values must not be empty")
    if (~np.isfinite(v[r])).any():
        raise ValueError("a seed that reached the target must have a finite time")
    return float(np.median(np.where(r, v, np.inf)))
