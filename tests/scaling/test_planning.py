"""lib.scaling.planning: shapes hit their targets, plans spend their budgets exactly and keep
infeasible rows with a reason, run configs follow the plan; and the argument checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lib.models import ModelConfig, Transformer
from lib.scaling import (
    chinchilla_flops_per_token,
    count_params,
    lr_for_widths,
    plan_sweep,
    shape_for_params,
    sweep_configs,
)

PLAN_KW = dict(vocab_size=256, seq_len=64, batch_size=8, head_dim=16, tokens_per_second=1e5)


def test_plan_sweep_spends_budgets_and_reports_infeasible():
    budgets = [1e12, 1e13]
    plan = plan_sweep(budgets, vocab_size=256, seq_len=64, batch_size=8, n_sizes=5, span=16,
                      head_dim=16, corpus_tokens=3_000_000, min_params=30_000, flops="6nd",
                      tokens_per_second=1e5)
    assert len(plan) == 10  # nothing is dropped
    step_flops = plan["flops_per_token"] * 8 * 64
    assert np.all(np.abs(plan["flops_actual"] - plan["budget"]) <= step_flops / 2 + 1e-6)
    assert np.all(plan["tokens"] == plan["steps"] * 8 * 64)
    np.testing.assert_allclose(plan["flops_per_token"], 6 * plan["n_params"])
    for _, group in plan.groupby("budget"):
        assert group["n_params"].is_monotonic_increasing
        centre = np.sqrt(group["budget"].iloc[0] / (6 * 20))
        assert group["n_params"].min() < centre < group["n_params"].max()
    bad = plan[~plan["feasible"]]
    assert not bad.empty and (bad["reason"] != "").all()
    assert plan.loc[plan["n_params"] < 30_000, "reason"].str.contains("min_params").all()
    assert plan.loc[plan["tokens"] > 3_000_000, "reason"].str.contains("epochs").all()
    assert (plan.loc[plan["feasible"], "reason"] == "").all()
    np.testing.assert_allclose(plan["est_seconds"], plan["tokens"] / 1e5)
    assert (plan["d_model"] % 16 == 0).all() and (plan["d_model"] == plan["n_heads"] * 16).all()
    assert (plan["params_source"] == "lib.models").all()
    for _, row in plan.iterrows():
        assert count_params(row["shape"]) == row["n_params"]


def test_plan_sweep_exact_flops_and_validation():
    plan = plan_sweep([1e13], vocab_size=256, seq_len=64, batch_size=8, head_dim=16,
                      flops="exact", flops_per_second=1e9)
    for _, row in plan.iterrows():
        assert row["flops_per_token"] == chinchilla_flops_per_token(row["shape"])
    np.testing.assert_allclose(plan["est_seconds"], plan["flops_actual"] / 1e9)
    with pytest.raises(ValueError, match="budgets"):
        plan_sweep([], vocab_size=256, seq_len=64, batch_size=8)
    with pytest.raises(ValueError, match="flops"):
        plan_sweep([1e13], vocab_size=256, seq_len=64, batch_size=8, flops="kaplan")
    with pytest.raises(ValueError, match="span"):
        plan_sweep([1e13], vocab_size=256, seq_len=64, batch_size=8, span=0.5)
    with pytest.raises(ValueError, match="batch_size"):
        plan_sweep([1e13], vocab_size=256, seq_len=64, batch_size=0)


def test_plan_sweep_takes_numpy_ints_and_gives_the_same_plan():
    plan = plan_sweep([1e13], **PLAN_KW)
    again = plan_sweep(np.array([1e13]), **{**PLAN_KW, "vocab_size": np.int64(256),
                                            "seq_len": np.int32(64), "batch_size": np.int64(8),
                                            "head_dim": np.int64(16)}, n_sizes=np.int64(5))
    assert again.drop(columns="shape").equals(plan.drop(columns="shape"))
    assert list(again["shape"]) == list(plan["shape"])
    assert all(type(v) in (int, bool) for s in again["shape"] for v in s.values())


@pytest.mark.parametrize("change,match", [
    ({"batch_size": 8.0}, "batch_size"),
    ({"seq_len": True}, "seq_len"),
    ({"n_sizes": 5.0}, "n_sizes"),
    ({"min_params": 3e4}, "min_params"),
    ({"corpus_tokens": 1e6}, "corpus_tokens"),
    ({"span": True}, "span"),
    ({"tokens_per_param": 0}, "tokens_per_param"),
    ({"max_epochs": -1}, "max_epochs"),
    ({"tokens_per_second": True}, "tokens_per_second"),
    ({"tokens_per_second": None, "flops_per_second": 0.0}, "flops_per_second"),
    ({"head_dim": 16.0}, "head_dim"),
    ({"aspect_ratio": float("nan")}, "aspect_ratio"),
])
def test_plan_sweep_refuses_bools_floats_for_counts_and_bad_numbers(change, match):
    with pytest.raises(ValueError, match=match):
        plan_sweep([1e13], **{**PLAN_KW, **change})


def test_shape_for_params_hits_targets():
    for target in (1e7, 1e8, 1e9, 1e10):
        shape = shape_for_params(target, vocab_size=32000, seq_len=1024, head_dim=64)
        assert shape["n_params"] == pytest.approx(target, rel=0.25)
        assert shape["d_model"] % 64 == 0 and shape["n_heads"] * 64 == shape["d_model"]
    with pytest.raises(ValueError, match="target_params"):
        shape_for_params(0, vocab_size=10, seq_len=8)
    with pytest.raises(ValueError, match="target_params"):
        shape_for_params(True, vocab_size=10, seq_len=8)
    with pytest.raises(ValueError, match="vocab_size"):
        shape_for_params(1e6, vocab_size=10.0, seq_len=8)
    with pytest.raises(ValueError, match="tie_embeddings"):
        shape_for_params(1e6, vocab_size=10, seq_len=8, tie_embeddings=0)
    assert shape_for_params(1e6, vocab_size=np.int64(10), seq_len=8) == shape_for_params(1e6, vocab_size=10, seq_len=8)


@pytest.fixture(scope="module")
def plan():
    return plan_sweep([1e12, 1e13], **PLAN_KW, corpus_tokens=3_000_000)


def test_sweep_configs_follow_the_feasible_rows(plan):
    configs = sweep_configs(plan, seeds=(0, np.int64(2)), batch_size=8, seq_len=64, corpus="c")
    feasible = plan[plan["feasible"]]
    assert len(configs) == 2 * len(feasible)
    assert [c["seed"] for c in configs[:2]] == [0, 2] and type(configs[1]["seed"]) is int
    for c in configs:
        assert c["steps"] * c["batch_size"] * c["seq_len"] in set(feasible["tokens"])
        assert c["warmup_steps"] == round(0.05 * c["steps"])
    json.dumps(configs)  # JSON-able: the run store keys runs by this JSON
    assert configs[0]["model"]["tie_embeddings"] is True
    model = Transformer(ModelConfig(**configs[0]["model"]))
    assert model.num_params() == configs[0]["n_params"]
    with pytest.raises(ValueError, match="batch_size"):
        sweep_configs(plan, batch_size=16, seq_len=64)


@pytest.mark.parametrize("change,match", [
    ({"seeds": ()}, "seeds"),
    ({"seeds": (0.5,)}, "seeds"),
    ({"seeds": (True,)}, "seeds"),
    ({"seeds": (-1,)}, "seeds"),
    ({"lr": True}, "lr"),
    ({"lr": 0}, "lr"),
    ({"warmup_frac": 1.0}, "warmup_frac"),
    ({"warmup_frac": True}, "warmup_frac"),
    ({"min_lr_ratio": 2}, "min_lr_ratio"),
    ({"eval_batches": 16.0}, "eval_batches"),
    ({"batch_size": 8.0}, "batch_size"),
    ({"seq_len": np.float64(64)}, "seq_len"),
])
def test_sweep_configs_checks_its_arguments(plan, change, match):
    with pytest.raises(ValueError, match=match):
        sweep_configs(plan, **{"batch_size": 8, "seq_len": 64, **change})


def test_sweep_configs_wants_a_plan():
    with pytest.raises(ValueError, match="plan"):
        sweep_configs({"feasible": []}, batch_size=8, seq_len=64)


def test_plan_sweep_counts_appendix_f_flops_by_default_and_shows_how_far_6n_strays():
    exact = plan_sweep([1e13, 4e13], **PLAN_KW)
    six = plan_sweep([1e13, 4e13], **PLAN_KW, flops="6nd")
    for _, row in exact.iterrows():  # default: Chinchilla Appendix F, the independent count
        assert row["flops_per_token"] == chinchilla_flops_per_token(row["shape"])
        assert row["flops_exact"] == row["flops_actual"]
    step = exact["flops_per_token"] * 8 * 64
    assert np.all(np.abs(exact["flops_exact"] - exact["budget"]) <= step / 2 + 1e-6)
    np.testing.assert_allclose(six["flops_6nd"], 6 * six["n_params"] * six["tokens"])
    ratio = six["flops_exact"] / six["budget"]  # real FLOPs of a 6N row: more than budgeted
    assert ratio.min() > 1.05 and ratio.max() / ratio.min() > 1.02
    assert (exact["tokens"] < six["tokens"]).all()


def test_lr_for_widths_is_the_stated_rule_and_sweep_configs_uses_it_per_size():
    plan = plan_sweep([1e13], **PLAN_KW)
    lrs = lr_for_widths(plan["d_model"], base_lr=1e-2, base_width=32)
    for w, lr in lrs.items():
        assert lr == pytest.approx(1e-2 * 32 / w)
    configs = sweep_configs(plan, lr=lrs, batch_size=8, seq_len=64)
    assert {c["lr"] for c in configs} == {lrs[c["model"]["d_model"]] for c in configs}
    assert len({c["lr"] for c in configs}) > 1
    with pytest.raises(ValueError, match="lacks the planned widths"):
        sweep_configs(plan, lr={999: 1e-3}, batch_size=8, seq_len=64)
    with pytest.raises(ValueError, match="base_width"):
        lr_for_widths([16], base_lr=1e-2, base_width=0)
