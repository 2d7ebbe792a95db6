"""lib.experiments.predictive_study: the validation protocol's helpers on a tiny language model,
and the paired speed-up summary against its target."""

from __future__ import annotations

import numpy as np
import pytest

from lib.training import TrainConfig


def _tiny_task(**train):
    from lib.data import synthetic_corpus
    from lib.experiments.predictive_study import LMTask
    from lib.models import ModelConfig

    data = synthetic_corpus(n_train_tokens=20_000, n_val_tokens=4_000)
    model = ModelConfig(vocab_size=data.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
    settings = {**dict(steps=30, batch_size=4, seq_len=16, eval_every=10, eval_batches=1, device="cpu"), **train}
    return LMTask(data, model, TrainConfig(**settings),
                  hybrid=dict(warmup_steps=6, full_steps=4, max_predict_steps=3, correct_steps=2))


def test_protocol_helpers_on_a_tiny_language_model(one_thread):
    from lib.experiments.predictive_study import forced_real_steps, horizon_study, run_arm

    task = _tiny_task()
    # 6+4 real, then (3 predicted + 2 real) x 4 = 20 -> 10 + 8 = 18 real steps
    assert forced_real_steps(task) == 18
    res = run_arm(task, "null", seed=0)
    assert int(res.history["real"].sum()) == 18 and res.evals["step"].tolist() == [0, 10, 20, 30]
    matched = run_arm(task, "plain_matched", seed=0)
    assert len(matched.history) == 18 and matched.predicted_share == 0
    hs = horizon_study(task, predictors=("null", "linear"), horizon=3, anchor_every=5, start=10)
    null = hs[hs["predictor"] == "null"]
    assert np.allclose(null["step_error"], 1.0) and np.allclose(null["cum_error"], 1.0)
    assert sorted(hs["k"].unique()) == [1, 2, 3] and (hs["latency_s"] > 0).all()


def test_summarize_computes_paired_speedups_against_the_target():
    import pandas as pd

    from lib.experiments.predictive_study import summarize
    from lib.predictive import HybridResult

    def result(vals, walls, share):
        n = 10
        hist = pd.DataFrame({"step": range(n), "real": [i >= share for i in range(n)],
                             "backward": [i >= share for i in range(n)], "update_norm": 1.0})
        evals = pd.DataFrame({"step": [0, 5, 10], "real_steps": 0, "wall_s": walls, "val_loss": vals})
        return HybridResult(hist, pd.DataFrame(), evals, {}, walls[-1])

    results = {
        ("plain", 0): result([5.0, 4.0, 3.0], [0.0, 5.0, 10.0], 0),
        ("plain", 1): result([5.0, 4.0, 3.5], [0.0, 6.0, 12.0], 0),
        ("fast", 0): result([5.0, 3.0, 2.9], [0.0, 4.0, 8.0], 3),   # reaches 3.535 at 4 s
        ("fast", 1): result([5.0, 3.4, 3.3], [0.0, 3.0, 6.0], 3),   # at 3 s
        ("slow", 0): result([5.0, 4.5, 4.0], [0.0, 5.0, 10.0], 5),  # never
        ("slow", 1): result([5.0, 4.5, 4.0], [0.0, 5.0, 10.0], 5),
    }
    table, target = summarize({"results": results}, target_slack=0.01, speedup_goal=1.3)
    assert target == pytest.approx(3.5 * 1.01)
    row = table.set_index("arm")

    def cross(l0, l1, x0, x1):  # where the straight line between two evaluations meets the target
        return x0 + (l0 - target) / (l0 - l1) * (x1 - x0)

    plain_wall = [cross(4.0, 3.0, 5.0, 10.0), cross(4.0, 3.5, 6.0, 12.0)]
    fast_wall = [cross(5.0, 3.0, 0.0, 4.0), cross(5.0, 3.4, 0.0, 3.0)]
    plain_step = [cross(4.0, 3.0, 5, 10), cross(4.0, 3.5, 5, 10)]
    fast_step = [cross(5.0, 3.0, 0, 5), cross(5.0, 3.4, 0, 5)]
    assert row.loc["fast", "speedup_wall"] == pytest.approx(np.median(np.divide(plain_wall, fast_wall)))
    assert row.loc["fast", "speedup_steps"] == pytest.approx(np.median(np.divide(plain_step, fast_step)))
    assert row.loc["plain", "steps_to_target"] == pytest.approx(np.median(plain_step))
    assert row.loc["fast", "predicted_share"] == pytest.approx(0.3)
    assert row.loc["fast", "delta_vs_plain"] == pytest.approx(-0.15)
    assert row.loc["fast", "meets_goal"] and not row.loc["slow", "meets_goal"]
    # Never reached: every seed censored, the median time is "not reached" (inf), speedup 0.
    assert row.loc["slow", "speedup_wall"] == 0 and row.loc["slow", "seeds_reaching_target"] == 0
    assert row.loc["slow", "censored"] == 2 and np.isinf(row.loc["slow", "wall_to_target_s"])
    assert row.loc["plain", "seeds_reaching_target"] == 2 and row.loc["plain", "censored"] == 0


def test_time_to_target_interpolates_and_censored_seeds_count():
    import pandas as pd

    from lib.experiments.predictive_study import summarize, time_to_target
    from lib.predictive import HybridResult

    evals = pd.DataFrame({"step": [0, 8, 16], "wall_s": [0.0, 1.0, 3.0], "val_loss": [5.0, 4.0, 3.0]})
    assert time_to_target(evals, 3.5) == pytest.approx((12.0, 2.0))   # halfway between the last two
    assert time_to_target(evals, 5.0) == (0.0, 0.0)
    assert all(np.isnan(time_to_target(evals, 2.0)))

    def result(final):
        hist = pd.DataFrame({"step": range(4), "real": True, "backward": True, "update_norm": 1.0})
        ev = pd.DataFrame({"step": [0, 10], "real_steps": 0, "wall_s": [0.0, 1.0], "val_loss": [5.0, final]})
        return HybridResult(hist, pd.DataFrame(), ev, {}, 1.0)

    # plain's worst final loss 3.0 -> target 3.03; the arm misses it in one seed of three.
    results = {("plain", s): result(3.0) for s in range(3)}
    results.update({("arm", 0): result(2.0), ("arm", 1): result(3.0), ("arm", 2): result(4.0)})
    row = summarize({"results": results})[0].set_index("arm").loc["arm"]
    reach = [time_to_target(results[("arm", s)].evals, 3.03)[0] for s in range(2)]
    assert row["censored"] == 1 and row["steps_to_target"] == pytest.approx(max(reach))  # median of 3 with one +inf


def test_every_arm_gets_the_lr_grid_and_is_read_at_its_best(one_thread):
    from lib.experiments.predictive_study import run_protocol

    task = _tiny_task()
    protocol = run_protocol(task, arms=("plain", "plain_matched"), seeds=(0, 1), lrs=(1e-3, 1e-2))
    lt = protocol["lr_table"]
    assert len(lt) == 4 and set(lt["seeds"]) == {2}
    for arm in ("plain", "plain_matched"):
        rows = lt[lt["arm"] == arm]
        assert protocol["best_lr"][arm] == rows.loc[rows["final_val_loss"].idxmin(), "lr"]
        for seed in (0, 1):
            res = protocol["results"][(arm, seed)]
            assert res.extra["lr"] == protocol["best_lr"][arm]
            assert res is protocol["all"][(arm, protocol["best_lr"][arm], seed)]
    finals = {k: r.evals["val_loss"].iloc[-1] for k, r in protocol["all"].items()}
    assert finals[("plain", 1e-3, 0)] != finals[("plain", 1e-2, 0)]   # the LR reached the optimizer


def test_planned_runs_cover_every_arm_lr_and_seed():
    from lib.core import profile_settings
    from lib.experiments.predictive_study import ARMS, FULL, QUICK, SMOKE, planned_runs

    for profile, smoke in (("quick", False), ("full", False), ("full", True)):
        s = profile_settings(profile, quick=QUICK, full=FULL, smoke=smoke, smoke_steps=SMOKE)
        runs = planned_runs(s)
        assert len(runs) == len(ARMS) * len(s.lrs) * len(s.seeds) + 1
        assert runs[0].model.d_model == s.d_model and runs[0].tokens == s.steps * s.batch_size * s.seq_len
    assert SMOKE["jump"] >= 10 and FULL["jump"] >= 10 and QUICK["jump"] >= 10


def test_perweight_arm_jumps_once_per_cycle_and_oracle_bounds_the_basis_predictors(one_thread):
    from lib.experiments.predictive_study import forced_real_steps, horizon_study, run_arm

    task = _tiny_task(steps=60)
    task.perweight.update(jump=10, every=2, history=2)
    task.hybrid.update(warmup_steps=12, full_steps=4)
    cfg = task.hybrid_config("perweight", 60)
    assert cfg.max_predict_steps == 10 and cfg.correct_steps == 10 and not cfg.check_loss
    res = run_arm(task, "perweight", seed=0)
    h = res.history
    assert int(h["real"].sum()) == forced_real_steps(task, "perweight")
    pred = h[~h["backward"]]
    moved = pred[pred["update_norm"] > 0]
    # Predict phases at steps 16, 36 and 56 (the last one cut by the end of the run): one jump each.
    assert len(pred) == 24 and len(moved) == 3 and (moved["horizon"] == 1).all()
    hs = horizon_study(task, predictors=("null", "linear", "ema", "oracle"), horizon=3, anchor_every=5, start=20)
    first = hs[hs["k"] == 1].pivot(index="anchor", columns="predictor", values="step_error")
    assert (first["oracle"] <= first[["null", "linear", "ema"]].min(axis=1) + 1e-6).all()


def test_the_task_shares_train_config_settings_with_every_arm():
    from lib.experiments.predictive_study import EVAL_BATCH_SIZE, QUICK, make_task

    task = _tiny_task(lr=1e-3, grad_clip=0.5, seed=3)
    for arm in ("plain", "null", "rssm_gated", "perweight", "plain_matched"):
        cfg = task.hybrid_config(arm, 18)
        assert cfg.train.steps == 18 and cfg.train.grad_clip == 0.5 and cfg.train.eval_every == 10
        assert cfg.train.seed == 3 and cfg.train.batch_size == 4
    forced, gated = task.hybrid_config("ema", 30), task.hybrid_config("rssm_gated", 30)
    assert forced.confidence_threshold == 0.0 and forced.predict_length == "max"
    assert gated.confidence_threshold == 0.5 and gated.predict_length == "confidence"
    model = task.build_model(0)
    assert {g["lr"] for g in task.build_optimizer(model).param_groups} == {1e-3}
    assert {g["lr"] for g in task.build_optimizer(model, 4e-3).param_groups} == {4e-3}
    quick = make_task(dict(QUICK, train_tokens=20_000))
    assert quick.train.steps == QUICK["steps"] and quick.train.eval_batch_size == EVAL_BATCH_SIZE
    assert quick.hybrid["warmup_steps"] == QUICK["warmup_steps"] and str(quick.device) == "cpu"


def test_task_and_protocol_inputs_are_validated():
    from lib.data import synthetic_corpus
    from lib.experiments.predictive_study import (
        LMTask,
        horizon_study,
        run_arm,
        run_protocol,
        summarize,
    )
    from lib.schedules import WarmupCosine

    task = _tiny_task()
    with pytest.raises(ValueError, match="train must be a lib.training.TrainConfig"):
        LMTask(task.data, task.model_config, dict(steps=30))
    with pytest.raises(ValueError, match="eval_every"):
        _tiny_task(eval_every=0)
    with pytest.raises(ValueError, match="schedule"):
        _tiny_task(schedule=WarmupCosine(total_steps=30, warmup_steps=3))
    with pytest.raises(ValueError, match="grad_accum"):
        _tiny_task(grad_accum=2)
    with pytest.raises(ValueError, match="total_steps"):
        LMTask(synthetic_corpus(n_train_tokens=20_000, n_val_tokens=4_000), task.model_config,
               task.train, hybrid=dict(total_steps=30))
    with pytest.raises(ValueError, match="max_predict_steps"):
        LMTask(task.data, task.model_config, task.train, hybrid=dict(max_predict_steps=0))
    with pytest.raises(ValueError, match="arm"):
        run_arm(task, "oracle", 0)
    with pytest.raises(ValueError, match="lr"):
        run_arm(task, "plain", 0, lr=0.0)
    with pytest.raises(ValueError, match="lrs"):
        run_protocol(task, lrs=())
    with pytest.raises(ValueError, match="jump"):
        LMTask(task.data, task.model_config, task.train, perweight=dict(jump=5, every=5))
    with pytest.raises(ValueError, match="seed"):
        run_arm(task, "plain", -1)
    with pytest.raises(ValueError, match="arms"):
        run_protocol(task, arms=("plain", "oracle"))
    for seeds in ((), (0, 1.0), (True,), "01"):
        with pytest.raises(ValueError, match="seeds"):
            run_protocol(task, seeds=seeds)
    for kw in (dict(horizon=0), dict(anchor_every=2.0), dict(start=-1), dict(predictors=("plain",))):
        with pytest.raises(ValueError, match=next(iter(kw))):
            horizon_study(task, **kw)
    for kw in (dict(target_slack=-0.1), dict(speedup_goal=0), dict(speedup_goal=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(kw))):
            summarize({"results": {}}, **kw)


def test_conclusion_timing_and_explorer_render_from_the_results(monkeypatch):
    import pandas as pd

    from lib.experiments.predictive_study import (
        aa_noise,
        comparisons,
        conclusion,
        explorer,
        summarize,
        timing_summary,
    )
    from lib.predictive import HybridResult

    def result(vals, walls):
        hist = pd.DataFrame({"step": range(4), "real": True, "backward": True, "update_norm": 1.0})
        ev = pd.DataFrame({"step": [0, 5, 10], "real_steps": 0, "wall_s": walls, "val_loss": vals})
        return HybridResult(hist, pd.DataFrame(), ev, {}, walls[-1])

    results = {("plain", s): result([5.0, 4.0, 3.0], [0.0, 5.0, 10.0]) for s in (0, 1)}
    results.update({("fast", s): result([5.0, 3.0, 2.99], [0.0, 2.0, 4.0]) for s in (0, 1)})
    protocol = {"results": results, "best_lr": {"plain": 1e-3, "fast": 2e-3}}
    table, target = summarize(protocol)
    lr_table = pd.DataFrame({"arm": ["plain", "fast"], "lr": [1e-3, 2e-3], "best": True, "at_edge": [False, True]})
    horizon = pd.DataFrame({"null": [1.0, 1.0], "linear": [0.4, 0.7], "oracle": [0.3, 0.5]}, index=[1, 2])
    noise = aa_noise(protocol)
    text = conclusion(table, target, lr_table, horizon, dict(profile="quick", steps=10, seeds=(0, 1), lrs=(1e-3, 2e-3)),
                      comparisons(protocol, noise), noise)
    assert f"{target:.3f} nats/token" in text and "fast 0.002" in text and "edge of the grid for fast" in text
    assert "oracle 0.50" in text.replace("linear 0.70, ", "") and "bounds every" in text
    # Without verdicts (a notebook whose committed outputs predate them) the same differences,
    # with no verdict and no noise line.
    plain_text = conclusion(table, target, lr_table, horizon,
                            dict(profile="quick", steps=10, seeds=(0, 1), lrs=(1e-3, 2e-3)))
    assert "Verdicts" not in plain_text and "Holm-adjusted p" not in plain_text
    assert [line for line in text.splitlines() if line.startswith("- **Target**")] == \
        [line for line in plain_text.splitlines() if line.startswith("- **Target**")]
    with pytest.raises(ValueError, match="verdicts and noise"):
        conclusion(table, target, lr_table, horizon, dict(profile="quick", steps=10, seeds=(0, 1), lrs=(1e-3,)),
                   noise=noise)
    costs = pd.DataFrame({"arm": ["plain", "fast"], "real_step_s": [1.0, 1.0], "predicted_step_s": [float("nan"), 0.1],
                          "real_over_plain": [1.0, 1.1], "predicted_over_plain": [float("nan"), 0.1]})
    timing = timing_summary(table, costs)
    assert "met by fast" in timing and f"{table.set_index('arm').loc['fast', 'speedup_wall']:.2f}x" in timing
    table.loc[:, "meets_goal"] = False
    assert "no arm gets there" in timing_summary(table, costs)
    study = pd.DataFrame({"predictor": ["linear"] * 2, "anchor": 0, "k": [1, 2], "latency_s": 0.1,
                          "step_error": [0.4, 0.8], "cum_error": [0.4, 0.7]})
    monkeypatch.setenv("WORKBENCH_BATCH", "1")
    fig = explorer(table, study, predictor="linear")
    assert "cumulative error at k=2: 0.70" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="predictor"):
        explorer(table, study, predictor="rssm")


def _finals_protocol(finals: dict, best_lr: dict):
    """A protocol-like dict whose runs end at the given final held-out losses:
    ``finals[(arm, lr)]`` lists one final loss per seed; each arm is read at ``best_lr[arm]``."""
    import pandas as pd

    from lib.predictive import HybridResult

    def result(final):
        hist = pd.DataFrame({"step": range(4), "real": True, "backward": True, "update_norm": 1.0})
        ev = pd.DataFrame({"step": [0, 10], "real_steps": 0, "wall_s": [0.0, 1.0], "val_loss": [6.0, final]})
        return HybridResult(hist, pd.DataFrame(), ev, {}, 1.0)

    everything = {(arm, lr, s): result(v) for (arm, lr), vals in finals.items() for s, v in enumerate(vals)}
    results = {(arm, s): r for (arm, lr, s), r in everything.items() if lr == best_lr[arm]}
    return {"results": results, "all": everything, "best_lr": best_lr}


# Six seeds whose difficulty every arm shares (what pairing on the seed removes), and fixed
# zero-mean wiggles, so each case's truth is known exactly.
_SEED = np.array([0.0, 0.3, 0.6, 0.9, 1.2, 1.5])
_WIGGLE = np.array([0.02, -0.01, 0.0, -0.02, 0.01, 0.0])


def test_comparisons_call_a_clear_gap_and_refuse_noise_and_apply_holm():
    from scipy import stats

    from lib.experiments.predictive_study import aa_noise, comparisons

    plain = 3.0 + _SEED
    borderline = plain + 0.07 + np.array([0.05, -0.06, 0.04, -0.05, 0.08, -0.06])
    finals = {("plain", 1e-3): plain, ("plain", 5e-4): plain + 0.2 + _WIGGLE,
              ("plain", 2e-3): plain + 0.1 - 2 * _WIGGLE[::-1],
              ("plain_matched", 1e-3): plain + 0.3 + _WIGGLE[::-1],
              ("good", 1e-3): plain - 0.5 + _WIGGLE,           # far below plain, far beyond the noise
              ("same", 1e-3): plain + 0.01 + 0.1 * _WIGGLE,    # a real but tiny gap, inside the A/A noise
              ("borderline", 1e-3): borderline,
              ("noisy", 1e-3): plain + 3 * _WIGGLE[::-1]}     # no gap at all, a wider spread
    protocol = _finals_protocol(finals, {arm: 1e-3 for arm, _ in finals})
    noise = aa_noise(protocol)
    # Paired A/A: plain at its best LR against both neighbours, variances pooled.
    pooled = np.sqrt(np.mean([np.var(_WIGGLE, ddof=1), np.var(2 * _WIGGLE, ddof=1)]))
    n = len(_SEED)
    assert noise["source"] == "paired" and noise["neighbour_lrs"] == [5e-4, 2e-3]
    assert noise["paired_std"] == pytest.approx(pooled)
    assert noise["seed_std"] == pytest.approx(np.std(plain, ddof=1))   # unpaired: the seed difficulty
    assert noise["mde"] == pytest.approx((stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * pooled / np.sqrt(n))
    table = comparisons(protocol, noise)
    assert len(table) == 8 and set(table["baseline"]) == {"plain", "plain_matched"}
    row = table.set_index(["arm", "baseline"])
    assert row.loc[("good", "plain"), "verdict"] == "lower"
    assert row.loc[("good", "plain"), "mean_diff"] == pytest.approx(-0.5)
    # Significant even after Holm (the gap barely varies), yet smaller than the A/A noise lets
    # this design detect: not a finding.
    same = row.loc[("same", "plain")]
    assert same["p_holm"] < 0.05 and abs(same["mean_diff"]) < noise["mde"]
    assert same["verdict"] == "cannot decide (difference below the detectable effect)"
    assert row.loc[("same", "plain_matched"), "verdict"] == "lower"
    # Unadjusted the borderline gap passes (p < 0.05) and it exceeds the MDE; Holm over the
    # family of eight does not reject it.
    b = row.loc[("borderline", "plain")]
    assert b["t_p"] == pytest.approx(stats.ttest_rel(borderline, plain).pvalue)
    assert b["t_p"] < 0.05 < b["p_holm"] and abs(b["mean_diff"]) > noise["mde"]
    assert b["verdict"] == "cannot decide (not significant after Holm)"
    rank = int((table["t_p"] <= b["t_p"]).sum())   # Holm multiplies the k-th smallest p by at least m - k + 1
    assert b["p_holm"] >= (len(table) - rank + 1) * b["t_p"] - 1e-12


def test_aa_noise_without_a_neighbouring_lr_falls_back_to_the_unpaired_bound():
    from lib.core import min_detectable_effect
    from lib.experiments.predictive_study import aa_noise, comparisons

    plain = 3.0 + _SEED
    protocol = _finals_protocol({("plain", 1e-3): plain, ("arm", 1e-3): plain - 0.05},
                                {"plain": 1e-3, "arm": 1e-3})
    noise = aa_noise(protocol)
    sd = np.std(plain, ddof=1)
    assert noise["source"] == "unpaired" and np.isnan(noise["paired_std"])
    assert noise["mde"] == pytest.approx(min_detectable_effect(np.sqrt(2) * sd, len(plain)))
    # A constant 0.05 gap: no spread, so no test; far below the conservative MDE.
    assert comparisons(protocol, noise)["verdict"].tolist() == ["cannot decide (difference below the detectable effect)"]
    for bad, match in (({"results": {}}, "plain"), ({}, "protocol"), ([], "protocol")):
        with pytest.raises(ValueError, match=match):
            aa_noise(bad)
    with pytest.raises(ValueError, match="power"):
        aa_noise(protocol, power=1.0)
    with pytest.raises(ValueError, match="noise"):
        comparisons(protocol, {"mde": 0.1})


def test_conclusion_states_the_detectable_effect_before_the_verdicts():
    import pandas as pd

    from lib.experiments.predictive_study import aa_noise, comparisons, conclusion, summarize

    plain = 3.0 + _SEED
    finals = {("plain", 1e-3): plain, ("plain", 2e-3): plain + 0.1 + _WIGGLE,
              ("plain_matched", 1e-3): plain + 0.3 + _WIGGLE[::-1], ("good", 1e-3): plain - 0.5 + _WIGGLE,
              ("same", 1e-3): plain + 0.5 * _WIGGLE}
    protocol = _finals_protocol(finals, {arm: 1e-3 for arm, _ in finals})
    table, target = summarize(protocol)
    noise = aa_noise(protocol)
    verdicts = comparisons(protocol, noise)
    lr_table = pd.DataFrame({"arm": list(dict.fromkeys(a for a, _ in finals)), "lr": 1e-3, "best": True,
                             "at_edge": False})
    horizon = pd.DataFrame({"null": [1.0], "oracle": [0.5]}, index=[1])
    settings = dict(profile="quick", steps=10, seeds=tuple(range(len(_SEED))), lrs=(1e-3, 2e-3))
    text = conclusion(table, target, lr_table, horizon, settings, verdicts, noise)
    mde = f"**{noise['mde']:.3f} nats/token**"
    assert mde in text and text.index(mde) < text.index("- **Verdicts.**")
    assert f"neighbouring peak LR 0.002 on the same seeds, is {noise['paired_std']:.3f}" in text
    assert f"Holm over all {len(verdicts)}" in text and "`good` lower than plain" in text
    assert "`good` lower than plain_matched; `same` lower than plain_matched" in text
    assert "Cannot decide: 1 of 4 (1 difference below the detectable effect)" in text
    good = verdicts.set_index(["arm", "baseline"]).loc[("good", "plain")]
    assert f"paired vs plain -0.500 ± {good['ci_high'] - good['mean_diff']:.3f} (Holm-adjusted p < 0.001: **lower**)" in text


def test_explorer_live_starts_mid_horizon_and_redraws_on_every_control(monkeypatch):
    import matplotlib.pyplot as plt
    import pandas as pd

    from lib.experiments.predictive_study import explorer

    table = pd.DataFrame({"arm": ["linear"], "seeds_reaching_target": [1], "seeds": [2],
                          "wall_to_target_s": [3.0], "speedup_wall": [1.5]})
    study = pd.DataFrame({"predictor": ["linear"] * 3 + ["oracle"] * 3, "anchor": 0, "k": [1, 2, 3] * 2,
                          "latency_s": 0.1, "step_error": [0.4, 0.8, 0.9, 0.1, 0.2, 0.3],
                          "cum_error": [0.4, 0.7, 0.8, 0.1, 0.15, 0.25]})
    titles = []
    monkeypatch.setattr(plt, "show", lambda fig=None, *a, **k: titles.append(fig.axes[0].get_title()))
    monkeypatch.setenv("WORKBENCH_BATCH", "0")
    widget = explorer(table, study, predictor="linear")
    predictor_w, horizon_w = widget.children[0], widget.children[1]
    assert horizon_w.value == 2 and titles[-1].startswith("linear: cumulative error at k=2: 0.70; target in 1/2")
    horizon_w.value = 3  # a drag to the right now moves the slider
    assert titles[-1].startswith("linear: cumulative error at k=3: 0.80")
    horizon_w.value = 1
    assert titles[-1].startswith("linear: cumulative error at k=1: 0.40")
    predictor_w.value = "oracle"
    assert titles[-1] == "oracle: cumulative error at k=1: 0.10"
    plt.close("all")
