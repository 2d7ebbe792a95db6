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
    # plain reaches the target at 10 s and 12 s; fast at 4 s and 3 s -> speedups 2.5 and 4
    assert row.loc["fast", "speedup_wall"] == pytest.approx(3.25)
    assert row.loc["fast", "speedup_steps"] == pytest.approx(2.0)
    assert row.loc["fast", "predicted_share"] == pytest.approx(0.3)
    assert row.loc["fast", "delta_vs_plain"] == pytest.approx(-0.15)
    assert row.loc["fast", "meets_goal"] and not row.loc["slow", "meets_goal"]
    assert np.isnan(row.loc["slow", "speedup_wall"]) and row.loc["slow", "seeds_reaching_target"] == 0
    assert row.loc["plain", "seeds_reaching_target"] == 2


def test_the_task_shares_train_config_settings_with_every_arm():
    from lib.experiments.predictive_study import EVAL_BATCH_SIZE, QUICK, make_task

    task = _tiny_task(lr=1e-3, grad_clip=0.5, seed=3)
    for arm in ("plain", "null", "rssm_gated", "plain_matched"):
        cfg = task.hybrid_config(arm, 18)
        assert cfg.train.steps == 18 and cfg.train.grad_clip == 0.5 and cfg.train.eval_every == 10
        assert cfg.train.seed == 3 and cfg.train.batch_size == 4
    forced, gated = task.hybrid_config("ema", 30), task.hybrid_config("rssm_gated", 30)
    assert forced.confidence_threshold == 0.0 and forced.predict_length == "max"
    assert gated.confidence_threshold == 0.5 and gated.predict_length == "confidence"
    model = task.build_model(0)
    assert {g["lr"] for g in task.build_optimizer(model).param_groups} == {1e-3}
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
