"""lib.models.dispatch (the measured choice between equivalent kernels) and its two callers:
the MoE layer's "auto" dispatch and the fused/split projection. The choice must pick the
faster candidate, cache it (in-process and on disk), time nothing where timing is not allowed,
and every candidate must compute the same function (so the choice never changes results
beyond float summation order)."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lib.models import (
    CACHE_ENV,
    MoEFeedForward,
    cached_choice,
    clear_dispatch_choices,
    dispatch_choices,
    fastest,
    grouped_mm_available,
    measured_choice_allowed,
    relative_times,
    split_projection,
    time_candidates,
)
from lib.models.dispatch import CALIBRATION_ROUNDS, choose


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    clear_dispatch_choices()
    yield
    clear_dispatch_choices()


def sleeper(seconds, calls, name):
    def fn():
        calls.append(name)
        time.sleep(seconds)
    return fn


def test_fastest_picks_the_faster_candidate_and_caches_it():
    calls = []
    choice = fastest(("t", 1), {"slow": sleeper(0.02, calls, "slow"), "quick": sleeper(0.0, calls, "quick")})
    assert choice == "quick" and calls.count("slow") == calls.count("quick") >= 2
    calls.clear()
    assert fastest(("t", 1), {"slow": sleeper(0.02, calls, "slow"), "quick": sleeper(0.0, calls, "quick")}) == "quick"
    assert calls == [] and cached_choice(("t", 1)) == "quick" and dispatch_choices() == {"t|1": "quick"}
    with pytest.raises(ValueError, match="at least one"):
        fastest(("t", 2), {})


def test_calibration_rounds_fill_the_budget_within_their_bounds():
    low, high = CALIBRATION_ROUNDS
    calls = []
    quick = time_candidates({"a": sleeper(0.0, calls, "a"), "b": sleeper(0.0, calls, "b")})
    assert set(quick) == {"a", "b"} and calls.count("a") == calls.count("b") == 2 + high
    calls.clear()
    time_candidates({"a": sleeper(0.03, calls, "a"), "b": sleeper(0.0, calls, "b")})
    assert calls.count("a") == 2 + low  # 0.03 s a round: the floor, not 0.1 / 0.03 = 3 rounds
    calls.clear()
    time_candidates({"a": sleeper(0.0, calls, "a")}, repeats=3)
    assert calls.count("a") == 5
    with pytest.raises(ValueError, match="repeats"):
        time_candidates({"a": sleeper(0.0, calls, "a")}, repeats=0)


def test_relative_times_pair_each_round_so_slow_rounds_cancel():
    # b is 5% faster in every round; two rounds in five run 3x slower for both (machine load).
    scores = relative_times({"a": [1.0, 1.0, 3.0, 3.0, 1.0], "b": [0.95, 0.95, 2.85, 2.85, 0.95]})
    assert scores["b"] / scores["a"] == pytest.approx(0.95)
    # b is faster in four rounds of five, but load fell on more of its calls than of a's: the
    # medians of raw times pick a, the paired score picks b.
    uneven = {"a": [1.0, 1.0, 1.0, 3.0, 3.0], "b": [0.95, 0.95, 3.0, 2.85, 2.85]}
    assert statistics.median(uneven["a"]) < statistics.median(uneven["b"])
    scores = relative_times(uneven)
    assert scores["b"] < scores["a"]


def test_disk_cache_is_written_and_read_back(tmp_path, monkeypatch):
    path = tmp_path / "build" / "dispatch.json"
    monkeypatch.setenv(CACHE_ENV, str(path))
    calls = []
    fastest(("disk",), {"a": sleeper(0.02, calls, "a"), "b": sleeper(0.0, calls, "b")})
    assert json.loads(path.read_text()) == {"disk": "b"}
    clear_dispatch_choices()  # a new process: only the file remains
    calls.clear()
    assert fastest(("disk",), {"a": sleeper(0.0, calls, "a"), "b": sleeper(0.02, calls, "b")}) == "b"
    assert calls == []
    # Another process wrote its choice for a key while this one was timing it: the first one holds.
    def quick_while_another_process_writes():
        path.write_text(json.dumps({"disk": "b", "race": "slow"}))

    assert fastest(("race",), {"slow": sleeper(0.02, calls, "slow"), "quick": quick_while_another_process_writes}) == "slow"
    assert json.loads(path.read_text()) == {"disk": "b", "race": "slow"}


def test_nothing_is_timed_without_a_cache_in_deterministic_mode_or_inside_a_dispatch_mode(tmp_path, monkeypatch):
    def never():
        raise AssertionError("timed where it must not be")

    assert choose(("no cache",), never, "static") == "static"  # a choice that would not persist
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "dispatch.json"))

    assert measured_choice_allowed()
    with FlopCounterMode(display=False):
        assert not measured_choice_allowed()
        assert choose(("flops",), never, "static") == "static"
    fastest(("flops",), {"cached": lambda: None})
    with FlopCounterMode(display=False):
        assert choose(("flops",), never, "static") == "cached"  # a cached choice still applies
    torch.use_deterministic_algorithms(True)
    try:
        assert choose(("flops",), never, "static") == "static"
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("train", [True, False])
def test_moe_auto_runs_the_measured_path_exactly_and_touches_no_grad(train, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "dispatch.json"))  # auto measures only with a cache
    torch.manual_seed(0)
    layer = MoEFeedForward(d_model=32, d_ff=48, n_experts=4, top_k=2, aux_loss_coef=0.0)
    x = torch.randn(2, 64, 32, requires_grad=train)
    with torch.set_grad_enabled(train):
        out = layer(x)
    choice = layer.last_dispatch
    expected = {"padded", "grouped"} if grouped_mm_available("cpu") else {"padded", "sorted"}
    assert choice in expected
    assert [k for k in dispatch_choices() if k.startswith("moe|")] and all(p.grad is None for p in layer.parameters())
    fixed = MoEFeedForward(d_model=32, d_ff=48, n_experts=4, top_k=2, aux_loss_coef=0.0, dispatch=choice)
    fixed.load_state_dict(layer.state_dict())
    with torch.set_grad_enabled(train):
        assert torch.equal(out, fixed(x))  # auto is exactly the path it names
    others = {}
    for mode in expected | {"sorted", "dense"}:
        other = MoEFeedForward(d_model=32, d_ff=48, n_experts=4, top_k=2, aux_loss_coef=0.0, dispatch=mode)
        other.load_state_dict(layer.state_dict())
        y = other(x.detach().requires_grad_())
        y.square().sum().backward()
        others[mode] = (y, other.w_gate.grad, other.w_down.grad)
    for mode, values in others.items():
        for a, b in zip(values, others[choice], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=mode)


def test_split_projection_impls_are_the_same_function(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "dispatch.json"))  # auto measures only with a cache
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 40, bias=False)
    x = torch.randn(64, 16, requires_grad=True)
    grads = {}
    for impl in ("fused", "split", "auto"):
        pieces = split_projection(x, linear, (24, 8, 8), impl)
        gx, gw = torch.autograd.grad([p.square().sum() for p in pieces], [x, linear.weight])
        grads[impl] = (*pieces, gx, gw)
    assert linear.weight.grad is None and len(dispatch_choices()) == 1
    for a, b in zip(grads["fused"], grads["split"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    choice = next(iter(dispatch_choices().values()))
    for a, b in zip(grads["auto"], grads[choice], strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="impl must be one of"):
        split_projection(x, linear, (24, 8, 8), "fast")
