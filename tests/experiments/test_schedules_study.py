"""lib.experiments.schedules_study: the schedule training study on a tiny config, the WSD branching
accounting against its closed form, branched runs equal to separate runs, and the verdicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lib.core import decide_difference, profile_settings
from lib.experiments import schedules_study as S
from lib.scaling import run_flops_per_token
from lib.schedules import WSD, CosinePlateau, WarmupCosine
from lib.training import RunStore

TINY = {
    "model": {"vocab_size": 32, "d_model": 16, "n_layers": 1, "n_heads": 2},
    "corpus": {"vocab_size": 32, "n_train_tokens": 20_000, "n_val_tokens": 4_000, "seed": 0},
    "lengths": [10, 20], "warmup_steps": 2, "batch_size": 4, "seq_len": 16,
    "lr_grid": [3e-3, 1e-2], "tune_seeds": [7], "seeds": [0, 1],
    "eval_batches": 2, "eval_batch_size": 4, "threads": 1,
}


def closed_form(lengths, fraction):
    """Branching by hand: one stable phase to the latest branch point, plus every cooldown."""
    cool = [max(1, round(fraction * L)) for L in lengths]
    trunk = max(L - c for L, c in zip(lengths, cool))
    return {"separate": sum(lengths), "stable": trunk, "cooldowns": sum(cool), "branched": trunk + sum(cool)}


@pytest.mark.parametrize("lengths", [[100, 200, 400], [60, 120, 240], [1000, 3000], [7, 50, 51]])
@pytest.mark.parametrize("arm", S.BRANCHED)
def test_branching_compute_is_the_closed_form(lengths, arm):
    got = S.branching_compute(lengths, arm)
    want = closed_form(lengths, S.ARMS[arm]["cooldown"])
    assert {k: got[k] for k in want} == want
    assert got["saved"] == want["separate"] - want["branched"]


def test_branching_saves_the_stable_phases_of_all_but_the_longest_run():
    # 20% cooldowns at lengths L, 2L, 4L: separate 7L, branched 0.8 * 4L + 0.2 * 7L = 4.6L.
    got = S.branching_compute([100, 200, 400], "wsd_1sqrt")
    assert (got["separate"], got["branched"]) == (700, 460)
    assert math.isclose(got["saved"] / got["separate"], 1 - 4.6 / 7)


def test_arm_schedules_are_the_lib_schedules_they_name():
    steps = np.arange(260)
    np.testing.assert_array_equal(S.arm_schedule("cosine", 240, 6).curve(steps),
                                  WarmupCosine(240, 6, 0.1).curve(steps))
    np.testing.assert_array_equal(S.arm_schedule("wsd_1sqrt", 240, 6).curve(steps),
                                  WSD(240, 6, 48, decay="1-sqrt").curve(steps))
    np.testing.assert_array_equal(S.arm_schedule("wsd_linear", 240, 6).curve(steps),
                                  WSD(240, 6, 48, decay="linear").curve(steps))
    np.testing.assert_array_equal(S.arm_schedule("constant_cooldown", 240, 6).curve(steps),
                                  WSD(240, 6, 24, decay="1-sqrt").curve(steps))
    np.testing.assert_array_equal(S.arm_schedule("cosine_plateau", 240, 6).curve(steps),
                                  CosinePlateau(240, 6, 0.1, [(0.3, 0.2), (0.7, 0.1)]).curve(steps))


def test_bad_arms_and_lengths_are_value_errors_before_training():
    with pytest.raises(ValueError, match="arm"):
        S.arm_schedule("adam", 100, 5)
    with pytest.raises(ValueError, match="cooldown starts"):
        S.arm_schedule("wsd_1sqrt", 5, 4)          # cooldown from step 4 = the end of warm-up
    with pytest.raises(ValueError, match="no cooldown"):
        S.cooldown_steps("cosine", 100)
    base = S.base_config(TINY)
    with pytest.raises(ValueError, match="lr"):
        S.tune_configs(base, [10], [-1.0], [0])
    with pytest.raises(ValueError, match="seeds"):
        S.eval_configs(base, pd.DataFrame({"arm": ["cosine"], "steps": [10], "lr": [1e-3]}), [0])
    with pytest.raises(ValueError, match="d_model"):
        S.base_config({**TINY, "model": {**TINY["model"], "d_model": 15}})


def test_profiles_resolve_and_smoke_keeps_the_full_shapes():
    for profile, smoke in (("quick", False), ("full", False), ("full", True)):
        cfg = profile_settings(profile, quick=S.QUICK, full=S.FULL, smoke=smoke, smoke_steps=S.SMOKE)
        S.base_config(cfg)
        for L in cfg.lengths:                        # every length gives valid schedules for every arm
            for arm in S.ARMS:
                S.arm_schedule(arm, L, cfg.warmup_steps)
        assert len(cfg.seeds) >= 3 and len(cfg.lengths) == 3
    smoke = profile_settings("full", quick=S.QUICK, full=S.FULL, smoke=True, smoke_steps=S.SMOKE)
    assert smoke.model == S.FULL["model"] and smoke.seeds == S.FULL["seeds"]
    assert smoke.seq_len == S.FULL["seq_len"]


def test_planned_runs_count_every_run_of_the_design():
    cfg = profile_settings("quick", quick=S.QUICK, full=S.FULL)
    runs = S.planned_runs(cfg)
    n_arms, n_len = len(S.ARMS), len(cfg.lengths)
    per_tune_unit = 1 + n_arms * n_len                      # a shared stable phase + every run
    per_eval_seed = len(S.BRANCHED) + n_arms * n_len        # a stable phase per branched arm
    assert len(runs) == len(cfg.lr_grid) * len(cfg.tune_seeds) * per_tune_unit + len(cfg.seeds) * per_eval_seed
    tokens_per_step = cfg.batch_size * cfg.seq_len
    trunk = [r for r in runs if r.label.startswith("tune") and "stable phase" in r.label][0]
    assert trunk.tokens == max(S.branch_step(a, L) for a in S.BRANCHED for L in cfg.lengths) * tokens_per_step
    assert all(r.model.max_seq_len == cfg.seq_len and r.model.d_model == cfg.model["d_model"] for r in runs)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    store = RunStore(tmp / "runs.sqlite")
    result = S.run_study(store, TINY, tmp / "ckpt")
    return store, tmp, result


@pytest.mark.slow
def test_study_runs_every_arm_at_its_own_best_lr(tiny_study):
    store, _, study = tiny_study
    n_arms = len(S.ARMS)
    assert len(study.tune) == n_arms * 2 * 2 and len(study.eval) == n_arms * 2 * 2
    assert (study.tune["status"] == "done").all() and (study.eval["status"] == "done").all()
    assert np.isfinite(study.eval["val_loss"]).all()
    # the chosen LR is the tuning minimum of each (arm, steps), and the evaluation used it
    for row in study.best.itertuples():
        rows = study.tune[(study.tune["arm"] == row.arm) & (study.tune["steps"] == row.steps)]
        assert row.lr == rows.loc[rows["val_loss"].idxmin(), "lr"]
        used = study.eval[(study.eval["arm"] == row.arm) & (study.eval["steps"] == row.steps)]
        assert set(used["lr"]) == {row.lr} and sorted(used["seed"]) == TINY["seeds"]
    assert set(study.best["at_edge"]) <= {True, False}


@pytest.mark.slow
def test_every_run_follows_its_schedule_through_the_lr_scheduler(tiny_study):
    _, _, study = tiny_study
    for row in study.eval.itertuples():
        hist = study.histories[study.histories["run_id"] == row.run_id].sort_values("step")
        sched = S.arm_schedule(row.arm, row.steps, TINY["warmup_steps"])
        assert hist["step"].tolist() == list(range(1, row.steps + 1))   # branched: trunk rows included
        # the LR logged at step s (1-based, after the update) is the one the update used: step s - 1
        np.testing.assert_allclose(hist["lr"], row.lr * sched.curve(hist["step"] - 1), rtol=1e-12, atol=0)


@pytest.mark.slow
def test_measured_branching_equals_the_closed_form(tiny_study):
    _, _, study = tiny_study
    measured = S.measured_branching(study.tune)
    # one family per branched arm and stable-phase run (LR x tuning seed), all lengths in each
    assert len(measured) == len(S.BRANCHED) * len(TINY["lr_grid"]) * len(TINY["tune_seeds"])
    for row in measured.itertuples():
        assert row.lengths == tuple(TINY["lengths"])
        want = closed_form(TINY["lengths"], S.ARMS[row.arm]["cooldown"])
        assert (row.separate, row.stable, row.cooldowns, row.branched) == tuple(want.values())
    saved = S.compute_saved(measured, S.base_config(TINY))
    assert saved["matches_closed_form"].all()
    fpt = run_flops_per_token(S.model_config(S.base_config(TINY)), TINY["seq_len"])
    tokens = TINY["batch_size"] * TINY["seq_len"]
    for row in saved.itertuples():
        want = closed_form(TINY["lengths"], S.ARMS[row.arm]["cooldown"])
        assert math.isclose(row.separate_flops, want["separate"] * tokens * fpt)
        assert math.isclose(row.saved_fraction, 1 - want["branched"] / want["separate"])


@pytest.mark.slow
def test_a_branched_run_is_bit_identical_to_a_separate_run(tiny_study):
    _, _, study = tiny_study
    check = S.branching_check(study.eval, S.base_config(TINY))
    assert check["branch_step"] == S.branch_step(check["arm"], check["steps"]) > 0
    assert check["abs_diff"] == 0.0


@pytest.mark.slow
def test_the_study_resumes_without_retraining(tiny_study):
    store, tmp, study = tiny_study
    before = store.frame()["finished"].tolist()
    again = S.run_study(store, TINY, tmp / "ckpt")
    assert store.frame()["finished"].tolist() == before
    pd.testing.assert_frame_equal(again.best, study.best)


@pytest.mark.slow
def test_compare_is_a_holm_corrected_paired_t_test(tiny_study):
    _, _, study = tiny_study
    comp = S.compare(study.eval)
    assert len(comp) == (len(S.ARMS) - 1) * len(TINY["lengths"]) and S.BASELINE not in set(comp["arm"])
    e = study.eval
    for row in comp.itertuples():
        a = e[(e["arm"] == row.arm) & (e["steps"] == row.steps)].set_index("seed")["val_loss"].sort_index()
        b = e[(e["arm"] == S.BASELINE) & (e["steps"] == row.steps)].set_index("seed")["val_loss"].sort_index()
        assert math.isclose(row.mean_diff, float((a - b).mean()), abs_tol=1e-12)
        if (a - b).std() > 0:
            assert math.isclose(row.t_p, stats.ttest_rel(a, b).pvalue, rel_tol=1e-9)
    p = comp["t_p"].to_numpy()
    m = np.isfinite(p).sum()
    order = np.argsort(p)
    manual = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order][:m]), 1)
    np.testing.assert_allclose(comp["holm_p"].to_numpy()[order][:m], manual)
    words = {"lower": "lower than cosine", "higher": "higher than cosine"}
    for row in comp.itertuples():  # the shared rule, in this study's words
        verdict = decide_difference(row.mean_diff, row.holm_p, row.mde, 0.05)
        assert row.verdict == words.get(verdict, verdict)


def test_a_significant_difference_below_the_detectable_effect_is_not_a_finding():
    # mean / standard error = 3.2 over 5 seeds: the paired t-test rejects (p = 0.033), but the
    # effect detectable at 80% power is (t_.975 + t_.8) = 3.72 standard errors, so it is not decided.
    diffs = [-0.05 + 0.02207 * k for k in (-2, -1, 0, 1, 2)]
    row = synthetic_comparisons({100: diffs}).iloc[0]
    se = np.std(diffs, ddof=1) / math.sqrt(5)
    assert row.t_p == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue) and row.holm_p <= 0.05
    assert row.mde == pytest.approx((stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * se)
    assert abs(row.mean_diff) < row.mde
    assert row.verdict == "cannot decide (difference below the detectable effect)"


def synthetic_comparisons(diffs: dict[int, list[float]], arm: str = "wsd_1sqrt") -> pd.DataFrame:
    rows = []
    for steps, d in diffs.items():
        for seed, x in enumerate(d):
            rows += [{"arm": "cosine", "steps": steps, "seed": seed, "val_loss": 3.0 + 0.1 * seed},
                     {"arm": arm, "steps": steps, "seed": seed, "val_loss": 3.0 + 0.1 * seed + x}]
    return S.compare(pd.DataFrame(rows))


def test_hagele_verdict_reads_the_numbers():
    worse = synthetic_comparisons({100: [0.20, 0.21, 0.19, 0.20, 0.22], 200: [0.0, 0.01, -0.01, 0.0, 0.005]})
    assert worse.loc[worse["steps"] == 100, "verdict"].item() == "higher than cosine"
    assert S.hagele_verdict(worse, 0.02)[0] == "does not hold"
    same = synthetic_comparisons({100: [0.001, -0.001, 0.002, 0.0, -0.002], 200: [0.0, 0.001, -0.001, 0.0, 0.0005]})
    status, text = S.hagele_verdict(same, 0.02)
    assert status == "holds" and "±0.02" in text
    noisy = synthetic_comparisons({100: [0.3, -0.3, 0.2, -0.25, 0.1], 200: [0.0, 0.001, -0.001, 0.0, 0.0005]})
    assert noisy.loc[noisy["steps"] == 100, "verdict"].item().startswith("cannot decide")
    assert S.hagele_verdict(noisy, 0.02)[0] == "cannot decide"
    with pytest.raises(ValueError, match="margin"):
        S.hagele_verdict(same, 0.0)


def test_hagele_verdict_gives_the_rows_reason_when_holm_does_not_confirm_a_large_difference():
    # Four lengths, each 0.1 below cosine (beyond its detectable effect, unadjusted p ~ 0.016):
    # Holm over the four does not reject, which is not "below the detectable effect".
    spread = [-0.07, 0.07, 0.0, -0.035, 0.035]
    comp = synthetic_comparisons({n: [-0.1 + e for e in spread] for n in (50, 100, 200, 400)})
    assert (comp["verdict"] == "cannot decide (not significant after Holm)").all(), comp
    assert (comp["mean_diff"].abs() >= comp["mde"]).all() and (comp["t_p"] < 0.05).all()
    status, text = S.hagele_verdict(comp, 0.02)
    assert status == "cannot decide"
    assert text.startswith("cannot decide (not significant after Holm)")
    assert "below cosine by more than the detectable effect" in text and "5 paired seeds" in text
    assert "difference below the detectable effect" not in text


@pytest.mark.slow
def test_conclusion_states_the_computed_numbers(tiny_study):
    _, _, study = tiny_study
    losses = S.final_losses(study.eval)
    comp = S.compare(study.eval)
    saved = S.compute_saved(S.measured_branching(study.tune), S.base_config(TINY))
    text = S.conclusion_markdown(losses, comp, study.best, S.hagele_verdict(comp, 0.02), saved, TINY["seeds"])
    row = losses.iloc[0]
    assert f"{row['mean']:.3f}" in text and f"{comp.iloc[0]['mean_diff']:+.3f}" in text
    assert f"{saved.iloc[0]['saved_fraction']:.0%}" in text and "equal to the closed form" in text
