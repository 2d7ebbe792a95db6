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

from lib.core.checks import check_confidence

__all__ = ["t_critical", "t_interval", "summarize", "paired_difference", "verdict"]


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
