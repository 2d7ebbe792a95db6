"""lib.experiments.predictive_study: the validation protocol's helpers on a tiny language model,
and the paired speed-up summary against its target."""

from __future__ import annotations

import numpy as np
import pytest


def test_protocol_helpers_on_a_tiny_language_model(one_thread):
    from scipy import stats

    from lib.data import synthetic_corpus
    from lib.experiments.predictive_study import (
        LMTask,
        forced_real_steps,
        horizon_study,
        mean_ci,
        run_arm,
    )
    from lib.models import ModelConfig

    m, h = mean_ci([1.0, 2.0, 4.0])
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean([1, 2, 4]), scale=stats.sem([1, 2, 4]))
    assert (m - h, m + h) == pytest.approx((lo, hi))
    data = synthetic_corpus(n_train_tokens=20_000, n_val_tokens=4_000)
    task = LMTask(data, ModelConfig(vocab_size=data.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=16),
                  steps=30, batch_size=4, seq_len=16, eval_every=10, eval_batches=1,
                  hybrid=dict(warmup_steps=6, full_steps=4, max_predict_steps=3, correct_steps=2))
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
    # plain reaches the target at 10 s and 12 s; fast at 4 s and 3 s -> speedups 2.5 and 4
    assert row.loc["fast", "speedup_wall"] == pytest.approx(3.25)
    assert row.loc["fast", "speedup_steps"] == pytest.approx(2.0)
    assert row.loc["fast", "predicted_share"] == pytest.approx(0.3)
    assert row.loc["fast", "delta_vs_plain"] == pytest.approx(-0.15)
    assert row.loc["fast", "meets_goal"] and not row.loc["slow", "meets_goal"]
    assert np.isnan(row.loc["slow", "speedup_wall"]) and row.loc["slow", "seeds_reaching_target"] == 0
    assert row.loc["plain", "seeds_reaching_target"] == 2
