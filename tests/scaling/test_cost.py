"""lib.scaling.cost: planned FLOPs against closed forms, hours against given throughputs, one
measurement per distinct shape, the budget check's message."""

import pytest
import torch

import lib.scaling.cost as cost_mod
from lib.models import ModelConfig, Transformer
from lib.scaling import (
    CostEstimate,
    PlannedRun,
    check_budget,
    costed_start,
    estimate_cost,
    run_flops_per_token,
)

SMALL = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
WIDE = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, max_seq_len=32)


def appendix_f(V, d, L, h, f, s, m=3):
    """Chinchilla Appendix F training FLOPs per token, written out (key size k = d / h)."""
    k = d // h
    per_layer = 2 * 3 * d * h * k + 2 * s * h * k + 3 * h * s + 2 * s * h * k + 2 * h * k * d + 2 * m * d * f
    return 3.0 * (2 * V * d + L * per_layer + 2 * d * V)


def test_flops_per_token_is_appendix_f_at_the_training_length():
    assert run_flops_per_token(SMALL) == pytest.approx(appendix_f(64, 32, 2, 4, SMALL.d_ff, 32), rel=1e-12)
    assert run_flops_per_token(SMALL, 16) == pytest.approx(appendix_f(64, 32, 2, 4, SMALL.d_ff, 16), rel=1e-12)


def test_moe_counts_its_router_and_active_experts():
    moe = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=32, mlp="moe",
                      moe={"n_experts": 4, "top_k": 2})
    router = 3 * 2 * 2 * 32 * 4   # x3 training, L=2 layers, 2 d E forward
    assert run_flops_per_token(moe) == pytest.approx(appendix_f(64, 32, 2, 4, 2 * 48, 32) + router, rel=1e-12)
    shared = ModelConfig(**{**moe.to_dict(), "moe": {"n_experts": 4, "top_k": 1, "shared_expert": True}})
    assert run_flops_per_token(shared) == pytest.approx(appendix_f(64, 32, 2, 4, 2 * 48, 32) + router, rel=1e-12)


def test_given_throughputs_give_exact_hours_and_totals():
    runs = [PlannedRun("a", SMALL, 1_000_000), PlannedRun("b", WIDE, 3_000_000, seq_len=16)]
    est = estimate_cost(runs, "cpu", flops_per_second=1e9)
    flops = run_flops_per_token(SMALL) * 1e6 + run_flops_per_token(WIDE, 16) * 3e6
    assert est.n_runs == 2 and est.total_tokens == 4_000_000
    assert est.total_flops == pytest.approx(flops, rel=1e-12)
    assert est.hours == pytest.approx(flops / 1e9 / 3600, rel=1e-12)
    assert list(est.table()["n_params"]) == [Transformer(SMALL).num_params(), Transformer(WIDE).num_params()]
    assert list(est.table()["seq_len"]) == [32, 16]
    by_tokens = estimate_cost(runs, "cpu", tokens_per_second=2000.0)
    assert by_tokens.hours == pytest.approx(4e6 / 2000 / 3600, rel=1e-12)
    assert set(by_tokens.table()["throughput"]) == {"given"}
    assert "2 planned runs on cpu" in str(est) and "b" in str(est)


def test_no_runs_costs_nothing():
    est = estimate_cost([], "cpu")
    assert est.n_runs == 0 and est.hours == 0.0 and not est.over_budget
    assert "0 planned runs" in str(est)


def test_one_measurement_per_distinct_shape_and_derived_after_the_time_budget(monkeypatch):
    calls = []

    def fake(shape, *, batch_size, device, steps, seed):
        calls.append((shape["d_model"], shape["max_seq_len"], batch_size, steps))
        return 1000.0 * shape["d_model"]

    monkeypatch.setattr(cost_mod, "measure_training_throughput", fake)
    runs = [PlannedRun("a0", SMALL, 10_000), PlannedRun("a1", SMALL, 20_000), PlannedRun("b", WIDE, 10_000)]
    est = estimate_cost(runs, "cpu", measure_steps=2, measure_tokens=128)
    assert sorted(calls) == [(32, 32, 4, 2), (64, 32, 4, 2)]   # 128 tokens / 32 per sequence
    assert list(est.table()["tokens_per_second"]) == [32_000.0, 32_000.0, 64_000.0]
    calls.clear()
    est = estimate_cost(runs, "cpu", max_measure_s=0.0)
    assert calls == [(32, 32, 32, 3)]   # the cheapest shape only, at CPU_MEASURE_TOKENS
    table = est.table()
    assert list(table["throughput"]) == ["measured", "measured", "derived"]
    achieved = 32_000.0 * run_flops_per_token(SMALL)   # the derived run gets the same FLOP/s
    assert table["tokens_per_second"][2] == pytest.approx(achieved / run_flops_per_token(WIDE), rel=1e-12)


def test_a_real_measurement_is_positive_and_leaves_torch_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    est = estimate_cost([PlannedRun("tiny", SMALL, 50_000)], "cpu", measure_steps=1, measure_tokens=64)
    assert torch.equal(torch.rand(3), expected)
    row = est.table().iloc[0]
    assert row["throughput"] == "measured" and row["tokens_per_second"] > 0
    assert est.hours == pytest.approx(50_000 / row["tokens_per_second"] / 3600)


def test_check_budget_refuses_over_the_limit_naming_the_numbers():
    est = estimate_cost([PlannedRun("big", SMALL, 10**9)], "cpu", tokens_per_second=1e4, limit_hours=6.0)
    assert est.over_budget and est.hours == pytest.approx(1e9 / 1e4 / 3600, rel=1e-12)
    with pytest.raises(ValueError, match=r"estimated 27\.8 h for 1 runs .* exceeds the limit of 6 h.*allow_over_budget"):
        check_budget(est)
    assert check_budget(est, allow_over=True) is est
    ok = estimate_cost([PlannedRun("small", SMALL, 10**4)], "cpu", tokens_per_second=1e4)
    assert check_budget(ok) is ok and "within the limit" in str(ok)



def test_costed_start_refuses_over_the_limit_and_a_smoke_run_measures_briefly(monkeypatch):
    seen, real = [], cost_mod.estimate_cost

    def given_throughput(runs, device=None, **kw):  # records what costed_start asked for
        seen.append(kw)
        return real(runs, device, tokens_per_second=1e4)

    monkeypatch.setattr(cost_mod, "estimate_cost", given_throughput)
    with pytest.raises(ValueError, match="exceeds the limit"):
        costed_start([PlannedRun("big", SMALL, 10**9)], "cpu")
    assert costed_start([PlannedRun("big", SMALL, 10**9)], "cpu", allow_over=True).over_budget
    costed_start([PlannedRun("small", SMALL, 10)], "cpu", smoke=True)
    assert seen == [{}, {}, {"max_measure_s": cost_mod.SMOKE_MEASURE_S}]
    with pytest.raises(ValueError, match="smoke"):
        costed_start([], "cpu", smoke="yes")

@pytest.mark.parametrize("make, match", [
    (lambda: PlannedRun("", SMALL, 10), "label"),
    (lambda: PlannedRun("x", SMALL.to_dict(), 10), "model"),
    (lambda: PlannedRun("x", SMALL, -1), "tokens"),
    (lambda: PlannedRun("x", SMALL, 1.5), "tokens"),
    (lambda: PlannedRun("x", SMALL, True), "tokens"),
    (lambda: PlannedRun("x", SMALL, 10, seq_len=0), "seq_len"),
    (lambda: PlannedRun("x", SMALL, 10, batch_size="8"), "batch_size"),
    (lambda: estimate_cost(PlannedRun("x", SMALL, 10), "cpu"), "runs"),
    (lambda: estimate_cost(["x"], "cpu"), "runs"),
    (lambda: estimate_cost([], "cpu", measure_steps=0), "measure_steps"),
    (lambda: estimate_cost([], "cpu", limit_hours=0), "limit_hours"),
    (lambda: estimate_cost([], "cpu", tokens_per_second=1.0, flops_per_second=1.0), "not both"),
    (lambda: estimate_cost([], "cpu", tokens_per_second=-1.0), "tokens_per_second"),
    (lambda: check_budget("3 h"), "estimate"),
    (lambda: check_budget(estimate_cost([], "cpu"), allow_over="yes"), "allow_over"),
])
def test_bad_inputs_raise_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_estimate_is_a_frozen_value():
    est = estimate_cost([PlannedRun("a", SMALL, 10)], "cpu", tokens_per_second=1.0)
    assert isinstance(est, CostEstimate)
    with pytest.raises(AttributeError):
        est.limit_hours = 100.0
