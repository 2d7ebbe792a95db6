"""lib.core.stats against independent references: closed-form Student-t quantiles (df 1 and 2),
scipy's ``t.interval``, ``ttest_rel`` and ``wilcoxon``, and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lib.core import paired_difference, summarize, t_critical, t_interval, verdict

BAD_CONFIDENCE = [0, 0.0, 1, 1.0, 95, -0.1, math.nan, math.inf, True, "0.95", None]


def _t_df1(confidence):
    """Quantile of the two-sided interval for df = 1 (Cauchy): tan(pi * confidence / 2)."""
    return math.tan(math.pi * confidence / 2)


def _t_df2(confidence):
    """df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so t = a sqrt(2 / (1 - a^2)) with a = confidence."""
    return confidence * math.sqrt(2 / (1 - confidence ** 2))


# ---------------------------------------------------------------- t_critical
@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_t_critical_matches_closed_forms_and_scipy(confidence):
    assert t_critical(2, confidence) == pytest.approx(_t_df1(confidence), rel=1e-10)
    assert t_critical(3, confidence) == pytest.approx(_t_df2(confidence), rel=1e-10)
    for n in (4, 10, 1000):
        assert t_critical(n, confidence) == pytest.approx(stats.t.interval(confidence, n - 1)[1], rel=1e-12)
    assert t_critical(10**7, confidence) == pytest.approx(stats.norm.ppf(0.5 + confidence / 2), rel=1e-5)


def test_t_critical_is_nan_below_two_values_and_validates_confidence():
    assert math.isnan(t_critical(1)) and math.isnan(t_critical(0))
    for bad in BAD_CONFIDENCE:
        with pytest.raises(ValueError, match="^confidence must be"):
            t_critical(5, bad)


# ---------------------------------------------------------------- t_interval
def test_t_interval_hand_case():
    # [1, 2, 3]: mean 2, sample sd 1, so the half-width is t(df=2) / sqrt(3).
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(_t_df2(0.95) / math.sqrt(3), rel=1e-12)
    assert half == pytest.approx(2.4841377, abs=1e-6)
    mean, half = t_interval(np.array([4, 6]), confidence=0.5)  # df 1: tan(pi/4) = 1, sem = 1
    assert (mean, half) == pytest.approx((5.0, 1.0), rel=1e-12)


@pytest.mark.parametrize("n,confidence", [(2, 0.95), (3, 0.9), (5, 0.95), (12, 0.99), (40, 0.8)])
def test_t_interval_matches_scipy_t_interval(n, confidence):
    values = np.random.default_rng(n).normal(3.0, 0.7, size=n)
    mean, half = t_interval(values.tolist(), confidence)
    lo, hi = stats.t.interval(confidence, n - 1, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean(), rel=1e-14)
    assert (mean - half, mean + half) == pytest.approx((lo, hi), rel=1e-12)


def test_t_interval_drops_non_finite_values_and_has_no_width_below_two():
    assert t_interval([1.0, math.nan, 2.0, 3.0, math.inf, -math.inf]) == t_interval([1.0, 2.0, 3.0])
    mean, half = t_interval([4.5])
    assert mean == 4.5 and math.isnan(half)              # undefined, never zero
    mean, half = t_interval([math.nan, 7.0])
    assert mean == 7.0 and math.isnan(half)
    assert all(math.isnan(x) for x in t_interval([]))
    assert all(math.isnan(x) for x in t_interval([math.nan]))
    assert t_interval(v for v in (1.0, 2.0, 3.0)) == t_interval([1.0, 2.0, 3.0])  # any iterable


def test_t_interval_validates_confidence():
    for bad in BAD_CONFIDENCE:
        with pytest.raises(ValueError, match="^confidence must be"):
            t_interval([1.0, 2.0, 3.0], bad)


# ---------------------------------------------------------------- summarize
def _frame():
    rng = np.random.default_rng(0)
    rows = [{"opt": opt, "lr": lr, "seed": s, "loss": 3 + lr + rng.normal(0, 0.05)}
            for opt in ("muon", "adamw") for lr in (0.01, 0.02) for s in range(4)]
    rows.append({"opt": "sgd", "lr": 0.1, "seed": 0, "loss": 4.0})  # one run: no interval
    return pd.DataFrame(rows)


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_summarize_per_group_against_scipy(confidence):
    frame = _frame()
    table = summarize(frame, ["opt", "lr"], "loss", confidence)
    assert list(table.columns) == ["opt", "lr", "mean", "std", "count", "ci", "ci_low", "ci_high"]
    assert len(table) == 5
    for _, row in table.iterrows():
        values = frame[(frame["opt"] == row["opt"]) & (frame["lr"] == row["lr"])]["loss"].to_numpy()
        assert row["count"] == len(values) and row["mean"] == pytest.approx(values.mean(), rel=1e-14)
        if len(values) < 2:
            assert math.isnan(row["ci"]) and math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])
            continue
        lo, hi = stats.t.interval(confidence, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)
        assert row["ci"] == pytest.approx((hi - lo) / 2, rel=1e-12)
        assert row["std"] == pytest.approx(values.std(ddof=1), rel=1e-12)


def test_summarize_agrees_with_t_interval_and_accepts_one_column():
    frame = _frame()
    table = summarize(frame, "opt", "loss").set_index("opt")
    for opt, group in frame.groupby("opt"):
        mean, half = t_interval(group["loss"])
        assert table.loc[opt, "mean"] == pytest.approx(mean, rel=1e-14)
        if len(group) > 1:
            assert table.loc[opt, "ci"] == pytest.approx(half, rel=1e-12)


def test_summarize_names_missing_columns_and_validates_confidence():
    frame = _frame()
    with pytest.raises(ValueError, match=r"columns \['nope'\] are not in the frame"):
        summarize(frame, ["opt", "nope"], "loss")
    with pytest.raises(ValueError, match=r"columns \['val_loss'\]"):
        summarize(frame, "opt", "val_loss")
    for bad in BAD_CONFIDENCE:
        with pytest.raises(ValueError, match="^confidence must be"):
            summarize(frame, "opt", "loss", bad)


# ---------------------------------------------------------------- paired_difference
def _pairs(n=6, shift=-0.05, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(3.0, 0.1, size=n)
    a = pd.Series(base + shift + rng.normal(0, 0.02, size=n), index=range(n))
    b = pd.Series(base, index=range(n))
    return a, b


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_paired_difference_against_scipy(confidence):
    a, b = _pairs()
    out = paired_difference(a, b, confidence)
    diff = (a - b).to_numpy()
    lo, hi = stats.t.interval(confidence, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
    assert out["n"] == 6 and out["mean_diff"] == pytest.approx(diff.mean(), rel=1e-13)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)
    assert out["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert out["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
    # paired t = one-sample t of the differences
    t = diff.mean() / stats.sem(diff)
    assert out["t_p"] == pytest.approx(2 * stats.t.sf(abs(t), len(diff) - 1), rel=1e-10)


def test_paired_difference_pairs_on_shared_labels_only():
    a = pd.Series({"s0": 1.0, "s1": 2.0, "s2": 3.5, "s3": 9.9})   # s3 has no partner
    b = pd.Series({"s2": 3.0, "s0": 1.2, "s1": 2.1, "s9": 0.0})   # other order, s9 has none
    out = paired_difference(a, b)
    diff = np.array([1.0 - 1.2, 2.0 - 2.1, 3.5 - 3.0])
    assert out["n"] == 3 and out["mean_diff"] == pytest.approx(diff.mean(), rel=1e-13)
    ref = stats.ttest_rel([1.0, 2.0, 3.5], [1.2, 2.1, 3.0]).pvalue
    assert out["t_p"] == pytest.approx(ref, rel=1e-12)
    half = _t_df2(0.95) * diff.std(ddof=1) / math.sqrt(3)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((diff.mean() - half, diff.mean() + half), rel=1e-12)


def test_paired_difference_hand_cases():
    # All n differences of one sign: the exact Wilcoxon p is its minimum, 2 / 2**n.
    a, b = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0]), pd.Series([1.5, 2.7, 3.1, 4.9, 5.2])
    assert paired_difference(a, b)["wilcoxon_p"] == pytest.approx(2 / 2**5)
    # A constant non-zero difference: no spread, so no t-test (NaN), but a zero-width interval.
    out = paired_difference(pd.Series([2.0, 3.0, 4.0]), pd.Series([1.0, 2.0, 3.0]))
    assert out["mean_diff"] == 1.0 and out["ci_low"] == out["ci_high"] == 1.0 and math.isnan(out["t_p"])
    # No difference at all: neither test has anything to rank or scale.
    same = paired_difference(pd.Series([1.0, 2.0]), pd.Series([1.0, 2.0]))
    assert same["mean_diff"] == 0.0 and math.isnan(same["t_p"]) and math.isnan(same["wilcoxon_p"])
    # NaN on one side drops that pair.
    out = paired_difference(pd.Series([1.0, math.nan, 3.0, 5.0]), pd.Series([0.0, 1.0, 2.0, 3.0]))
    assert out["n"] == 3 and out["mean_diff"] == pytest.approx(4 / 3)


def test_paired_difference_refuses_what_cannot_be_paired():
    with pytest.raises(ValueError, match="one value per pairing label"):
        paired_difference(pd.Series([1.0, 2.0], index=[0, 0]), pd.Series([1.0, 2.0], index=[0, 1]))
    with pytest.raises(ValueError, match="one value per pairing label"):
        paired_difference(pd.Series([1.0, 2.0]), pd.Series([1.0, 2.0], index=[1, 1]))
    with pytest.raises(ValueError, match=r"need >= 2 paired values, found 1"):
        paired_difference(pd.Series([1.0, 2.0], index=[0, 1]), pd.Series([1.0, 2.0], index=[1, 2]))
    with pytest.raises(ValueError, match=r"found 0"):
        paired_difference(pd.Series([1.0]), pd.Series([2.0], index=[5]))
    a, b = _pairs()
    for bad in BAD_CONFIDENCE:
        with pytest.raises(ValueError, match="^confidence must be"):
            paired_difference(a, b, bad)


# ---------------------------------------------------------------- verdict
def test_verdict_reads_the_interval_of_a_minus_b():
    assert verdict({"ci_low": -0.3, "ci_high": -0.1}) == "a better"
    assert verdict({"ci_low": 0.1, "ci_high": 0.3}) == "a worse"
    assert verdict({"ci_low": -0.1, "ci_high": 0.1}) == "no detectable difference"
    assert verdict({"ci_low": -0.1, "ci_high": 0.0}) == "no detectable difference"  # touching 0 is not below it
    assert verdict({"ci_low": math.nan, "ci_high": math.nan}) == "no detectable difference"
    a, b = _pairs(shift=-0.3)
    assert verdict(paired_difference(a, b)) == "a better" and verdict(paired_difference(b, a)) == "a worse"


def test_wilson_interval_matches_the_closed_form_and_stays_in_unit_interval():
    from lib.core.stats import wilson_interval
    k, n, z = 3, 3, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    est, lo, hi = wilson_interval(k, n)
    assert est == 1.0 and lo == pytest.approx(centre - half, rel=1e-9) and hi == pytest.approx(1.0)
    assert 0 <= wilson_interval(0, 5)[1] <= wilson_interval(0, 5)[2] <= 1
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(4, 3)


def test_holm_matches_the_step_down_definition():
    from lib.core.stats import holm
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted finite: 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm(p)[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm(p)[4])
    with pytest.raises(ValueError, match="pvalues"):
        holm([1.5])


def test_min_detectable_effect_gives_the_stated_power_by_simulation():
    from lib.core.stats import min_detectable_effect
    rng = np.random.default_rng(0)
    n, sd = 8, 0.3
    mde = min_detectable_effect(sd, n)
    from scipy import stats as st
    hits = [st.ttest_1samp(rng.normal(mde, sd, n), 0).pvalue < 0.05 for _ in range(4000)]
    assert 0.76 < np.mean(hits) < 0.84   # the t approximation of the noncentral t, within noise
    assert math.isnan(min_detectable_effect(sd, 1))


def test_decide_difference_needs_both_holm_significance_and_the_detectable_effect():
    from lib.core.stats import decide_difference
    below, not_sig = ("cannot decide (difference below the detectable effect)",
                      "cannot decide (not significant after Holm)")
    assert decide_difference(-0.3, 0.01, 0.1) == "lower" and decide_difference(0.3, 0.01, 0.1) == "higher"
    assert decide_difference(0.1, 0.05, 0.1) == "higher"          # both bounds are inclusive
    assert decide_difference(-0.05, 0.001, 0.1) == below          # significant, but inside the A/A noise
    assert decide_difference(0.3, 0.2, 0.1) == not_sig            # large, but Holm does not reject
    assert decide_difference(0.3, float("nan"), 0.1) == not_sig   # no test (zero spread)
    assert decide_difference(0.3, 0.001, float("nan")) == below   # nothing is detectable without noise
    assert decide_difference(-0.3, 0.04, 0.1, alpha=0.01) == not_sig
    for kw, name in ((dict(mean_diff=float("nan")), "mean_diff"), (dict(p_adjusted=1.5), "p_adjusted"),
                     (dict(mde=-0.1), "mde"), (dict(alpha=0.0), "alpha")):
        with pytest.raises(ValueError, match=name):
            decide_difference(**{**dict(mean_diff=0.1, p_adjusted=0.01, mde=0.05), **kw})


def test_median_censored_counts_every_seed():
    from lib.core.stats import median_censored
    assert median_censored([1.0, 2.0, 9.0], [True, True, False]) == 2.0
    assert median_censored([1.0, 2.0, 3.0, 4.0], [True, False, False, True]) == math.inf
    with pytest.raises(ValueError, match="reached"):
        median_censored([1.0], [True, False])
