"""lib.experiments.moe_lr_study: declarative grids, A/A and paired statistics (against closed forms / scipy's
one-sample forms), and a tiny end-to-end resumable study."""

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from lib.core import verdict
from lib.experiments import moe_lr_study as studies
from lib.training import RunStore, make_run_id

matplotlib.use("Agg")

TINY = {"vocab_size": 32, "n_train_tokens": 20_000, "n_val_tokens": 4_000, "d_model": 16,
        "n_layers": 1, "n_heads": 2, "d_ff": 16, "steps": 6, "batch_size": 2, "seq_len": 16,
        "eval_batches": 2, "eval_batch_size": 4}


def test_config_validation_and_grid():
    with pytest.raises(ValueError, match="unknown study keys"):
        studies.study_config(learning_rate=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        studies.study_config(optimizer="sgd")
    with pytest.raises(ValueError, match="warmup"):
        studies.study_config(warmup=1.5)
    with pytest.raises(ValueError, match="axis"):
        studies.grid(seed="012")
    runs = studies.grid({"optimizer": "adamw"}, lr=[0.1, 0.2], seed=[0, 1, 2])
    assert [(r["lr"], r["seed"]) for r in runs] == [(0.1, 0), (0.1, 1), (0.1, 2), (0.2, 0), (0.2, 1), (0.2, 2)]
    assert all(r["optimizer"] == "adamw" for r in runs)
    assert studies.lr_grid(0.02, 3) == [0.01, 0.02, 0.04]
    assert studies.lr_grid(1e-3, 2, factor=4) == [5e-4, 2e-3]
    aa = studies.aa_configs(studies.study_config(), [0, 1, 2])
    assert [(r["seed"], r["repeat"]) for r in aa] == [(0, 0), (1, 0), (2, 0), (0, 1)]


def test_config_values_are_checked_like_everywhere_else(tmp_path):
    config = studies.study_config(seed=np.int64(2), steps=np.int32(8), warmup=0)
    assert type(config["seed"]) is int and type(config["steps"]) is int  # JSON-able, same run id
    assert config["warmup"] == 0 and type(config["warmup"]) is int       # 0 and 0.0 name different runs
    assert make_run_id("s", config) == make_run_id("s", {**config, "seed": 2, "steps": 8})
    bad = [("seed", True), ("seed", 1.0), ("seed", -1), ("steps", 0), ("steps", 6.0), ("d_model", "64"),
           ("lr", 0.0), ("lr", float("nan")), ("lr", True), ("floor", 1.0), ("warmup", -0.1),
           ("grad_clip", 0.0), ("adamw_lr", -1e-3), ("weight_decay", -0.1), ("mlp", "dense"),
           ("eval_batches", 0), ("threads", None), ("ns_dtype", "fp16"), ("ns_dtype", None)]
    for key, value in bad:
        with pytest.raises(ValueError, match=key):
            studies.study_config(**{key: value})
    assert studies.study_config(eval_batches=None, grad_clip=None)["eval_batches"] is None
    for kwargs, name in ((dict(center=0.0), "center"), (dict(center=0.1, n=2.0), "n"),
                         (dict(center=0.1, factor=1.0), "factor")):
        with pytest.raises(ValueError, match=name):
            studies.lr_grid(**kwargs)
    with pytest.raises(ValueError, match="workers"):
        studies.run_study(RunStore(tmp_path / "runs.sqlite"), "s", [], workers=0)


def test_ns_dtype_reaches_newton_schulz(monkeypatch):
    """A config's ``ns_dtype`` names the dtype ExpertMuon orthogonalises in ("auto": fp32 here)."""
    import lib.training.optim as optim

    seen = []
    real = optim.newton_schulz
    monkeypatch.setattr(optim, "newton_schulz", lambda g, *a: seen.append(a[-1]) or real(g, *a))
    for name, dtype in (("bfloat16", torch.bfloat16), ("auto", torch.float32)):
        seen.clear()
        studies.run_config({**TINY, "steps": 1, "ns_dtype": name})
        assert seen and set(seen) == {dtype}
    assert studies.SMOKE["base"]["ns_dtype"] == "bfloat16"   # the full profile's GPU dtype


def test_dense_equivalent_matches_active_parameters():
    moe = studies.study_config(**TINY, n_experts=4, top_k=2)
    dense = studies.dense_equivalent(moe)
    assert dense["mlp"] == "swiglu" and dense["d_ff"] == 2 * moe["d_ff"]
    active_moe = studies.build_model(moe).flops_per_token() / 6
    active_dense = studies.build_model(dense).flops_per_token() / 6
    router = moe["n_layers"] * moe["n_experts"] * moe["d_model"]
    assert active_moe - active_dense == router


def _frame(diffs, base=3.0, noise=(0.0, 0.01, -0.02, 0.015)):
    rows = []
    for seed, (d, e) in enumerate(zip(diffs, noise)):
        rows.append({"seed": seed, "arm": "a", "lr": 0.1, "val_loss": base + e + d, "diverged": False})
        rows.append({"seed": seed, "arm": "b", "lr": 0.1, "val_loss": base + e, "diverged": False})
    return pd.DataFrame(rows)


def test_paired_difference_closed_form():
    diffs = np.array([-0.05, -0.03, -0.04, -0.06])
    out = studies.paired_difference(_frame(diffs), {"arm": "a"}, {"arm": "b"})
    n, mean, sd = 4, diffs.mean(), diffs.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    assert out["n"] == 4
    assert out["mean_diff"] == pytest.approx(mean)
    assert out["ci_low"] == pytest.approx(mean - half) and out["ci_high"] == pytest.approx(mean + half)
    tstat = mean / (sd / math.sqrt(n))  # paired t = one-sample t of the differences
    assert out["t_p"] == pytest.approx(2 * stats.t.sf(abs(tstat), n - 1))
    assert out["wilcoxon_p"] == pytest.approx(2 / 2**4)  # all 4 differences negative: exact minimum
    with pytest.raises(ValueError, match="columns"):
        studies.paired_difference(_frame(diffs), {"nope": 1}, {"arm": "b"})
    assert studies.verdict(out) == "a better"
    assert studies.verdict(studies.paired_difference(_frame(diffs), {"arm": "b"}, {"arm": "a"})) == "a worse"
    mixed = studies.paired_difference(_frame([0.05, -0.05, 0.01, -0.02]), {"arm": "a"}, {"arm": "b"})
    assert studies.verdict(mixed) == "no detectable difference"
    assert studies.verdict is verdict  # one reading of a paired difference, lib.core's
    at_90 = studies.paired_difference(_frame(diffs), {"arm": "a"}, {"arm": "b"}, confidence=0.9)
    lo, hi = stats.t.interval(0.9, n - 1, loc=mean, scale=stats.sem(diffs))
    assert (at_90["ci_low"], at_90["ci_high"]) == pytest.approx((lo, hi))
    with pytest.raises(ValueError, match="confidence"):
        studies.paired_difference(_frame(diffs), {"arm": "a"}, {"arm": "b"}, confidence=95)
    doubled = pd.concat([_frame(diffs), _frame(diffs)])  # two runs per seed: the arms are not paired
    with pytest.raises(ValueError, match=r"one value per pairing label.*a=\{'arm': 'a'\}"):
        studies.paired_difference(doubled, {"arm": "a"}, {"arm": "b"})
    with pytest.raises(ValueError, match="need >= 2 paired values, found 1.*paired on 'seed'"):
        studies.paired_difference(_frame(diffs[:1]), {"arm": "a"}, {"arm": "b"})


def test_summarize_excludes_diverged_and_noise_floor():
    frame = _frame([0.0, 0.0, 0.0, 0.0])
    frame.loc[0, "diverged"] = True
    frame.loc[0, "val_loss"] = float("nan")
    table = studies.summarize(frame, "arm")
    a = table[table["arm"] == "a"].iloc[0]
    assert a["count"] == 3 and a["diverged"] == 1
    vals = np.array([3.01, 2.98, 3.015])
    assert a["mean"] == pytest.approx(vals.mean())
    assert a["ci"] == pytest.approx(stats.t.ppf(0.975, 2) * vals.std(ddof=1) / math.sqrt(3))
    aa = pd.DataFrame({"seed": [0, 1, 2, 0], "repeat": [0, 0, 0, 1], "val_loss": [3.0, 3.1, 2.9, 3.0]})
    floor = studies.noise_floor(aa)
    assert floor["seed_std"] == pytest.approx(0.1) and floor["repeat_max_abs_diff"] == 0.0
    lo, hi = stats.t.interval(0.9, 2, loc=3.0, scale=stats.sem([3.0, 3.1, 2.9]))
    assert studies.noise_floor(aa, confidence=0.9)["ci"] == pytest.approx((hi - lo) / 2)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((a["mean"] - a["ci"], a["mean"] + a["ci"]))
    with pytest.raises(ValueError, match="confidence"):
        studies.summarize(frame, "arm", confidence=1.0)
    assert studies.best(studies.summarize(_frame([0.1] * 4), "arm"))["arm"].item() == "b"


def test_tiny_study_end_to_end_resumable_and_deterministic(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    configs = studies.aa_configs(studies.study_config(**TINY), [0, 1]) + [
        studies.study_config(**TINY, optimizer="adamw", lr=3e-3, seed=s) for s in (0, 1)]
    frame = studies.run_study(store, "tiny", configs)
    assert len(frame) == 5 and (frame["status"] == "done").all()
    assert np.isfinite(frame["val_loss"]).all() and (frame["val_perplexity"] > 1).all()
    assert (frame["max_load_ratio"] >= 1).all() and (frame["tokens_per_s"] > 0).all()
    aa = frame[frame["optimizer"] == "muon"]
    assert studies.noise_floor(aa)["repeat_max_abs_diff"] == 0.0  # same seed: identical
    assert aa["val_loss"].nunique() == 2                            # different seeds differ
    stamp = store.frame("tiny")["finished"].tolist()
    again = studies.run_study(store, "tiny", configs)                # resumes: nothing reruns
    assert store.frame("tiny")["finished"].tolist() == stamp and len(again) == 5
    hist = store.histories("tiny")
    assert {"step", "loss", "lr"} <= set(hist.columns)
    # Warm-up counted in optimizer steps: 5% of 6 steps rounds to 0, so lr starts at peak.
    first = hist.groupby("run_id").first()
    assert np.allclose(sorted(set(first["lr"].round(6))), [3e-3, 0.02])
    d = studies.paired_difference(frame, {"optimizer": "muon", "repeat": 0}, {"optimizer": "adamw"})
    assert d["n"] == 2
    subset = studies.run_study(store, "tiny", configs[:2])           # rows of just these configs
    assert subset["seed"].tolist() == [0, 1] and (subset["optimizer"] == "muon").all()


def test_plots_draw():
    rows = []
    for w in (0.0, 0.05):
        for f in (0.0, 0.1):
            for s in range(3):
                rows.append({"optimizer": "muon", "lr": 0.02, "warmup": w, "floor": f, "seed": s,
                             "val_loss": 3 + w - f + 0.01 * s * (1 + w), "diverged": False})
    frame = pd.DataFrame(rows)
    ax = studies.plot_lr_sensitivity(frame)
    assert ax.get_xscale() == "log"
    table = studies.warmup_floor_table(frame, {"warmup": 0.05, "floor": 0.1})
    cell = table[(table["warmup"] == 0.0) & (table["floor"] == 0.0)].iloc[0]
    assert cell["mean_diff"] == pytest.approx(0.0 - 0.05 + 0.1 - 0.01 * 1 * 0.05)
    studies.plot_warmup_floor_heatmap(frame, {"warmup": 0.05, "floor": 0.1})


def test_edge_lrs_extends_only_boundary_optima():
    rows = [("muon", 0.01, 3.0), ("muon", 0.02, 2.9), ("muon", 0.04, 2.8),       # best at top edge
            ("adamw", 0.001, 3.0), ("adamw", 0.002, 2.7), ("adamw", 0.004, 2.9),  # interior
            ("sgd", 0.1, 2.5), ("sgd", 0.2, 2.6), ("sgd", 0.05, math.nan)]        # bottom edge, next diverged
    table = pd.DataFrame(rows, columns=["optimizer", "lr", "mean"])
    assert studies.edge_lrs(table) == {("muon",): 0.08}
    assert studies.edge_lrs(table.drop(index=8)) == {("muon",): 0.08, ("sgd",): 0.05}


def test_holm_family_decisions_read_the_detectable_effect():
    # Three comparisons with known paired differences; Holm multiplies the smallest p by 3.
    rows = []
    for seed, e in enumerate((0.0, 0.01, -0.02, 0.015)):
        for arm, d in (("base", 0.0), ("big", -0.5 + 0.001 * seed), ("tiny", 0.001 * (-1) ** seed),
                       ("mid", (0.1, -0.05, 0.08, -0.03)[seed])):
            rows.append({"seed": seed, "arm": arm, "val_loss": 3.0 + e + d, "diverged": False})
    frame = pd.DataFrame(rows)
    pairs = {name: ({"arm": name}, {"arm": "base"}) for name in ("big", "tiny", "mid")}
    table = studies.compare(frame, pairs, mde=0.02)
    raw = table["t_p"].to_numpy()
    order = np.argsort(raw)
    expected = np.minimum(np.maximum.accumulate((3 - np.arange(3)) * raw[order]), 1.0)
    assert table["p_holm"].to_numpy()[order] == pytest.approx(expected)
    decisions = dict(zip(table["comparison"], table["decision"]))
    assert decisions["big"] == "a better"
    assert decisions["tiny"] == "cannot decide (difference below the detectable effect)"
    assert decisions["mid"] == "cannot decide (not significant after Holm)"  # |0.025| >= mde, p large
    noise = {"seed_std": 0.01}
    n = 4
    sd = math.sqrt(2) * 0.01
    closed = (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert studies.detectable_effect(noise, n) == pytest.approx(closed)
    with pytest.raises(ValueError, match="alpha"):
        studies.decide({"mean_diff": 0.1}, 0.01, 0.05, alpha=1.5)


def test_arms_label_their_own_runs_and_plan_every_run():
    base = studies.study_config(**TINY)
    configs = [studies.arm_config(base, arm, lr=0.01, seed=0) for arm in studies.ARMS]
    frame = pd.DataFrame(configs)
    assert studies.label_arms(frame)["arm"].tolist() == list(studies.ARMS)
    moonlight = studies.arm_config(base, "muon_moonlight", lr=0.01)
    assert moonlight["adjust_lr_fn"] == "match_rms_adamw" and moonlight["adamw_lr"] is None
    assert studies.arm_config(base, "muon_no_wd")["weight_decay"] == 0.0
    assert studies.arm_config(base, "dense")["d_ff"] == TINY["d_ff"] * base["top_k"]
    with pytest.raises(ValueError, match="arm"):
        studies.arm_config(base, "sgd")
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        studies.study_config(adjust_lr_fn="rms")
    settings = {**studies.QUICK, "base": TINY, "seeds": [0, 1]}
    planned = studies.planned_configs(settings, base)
    n_lr = sum(len(studies.arm_lr_grid(settings, a)) for a in settings["arms"]) * 2
    # A/A (2 seeds + repeat; its 2 seeds are also in the Muon grid), LR sweeps, factorial (its
    # baseline and claim cells are in the Muon and claim grids), balance (aux 1e-2 is the
    # baseline): each run once.
    n_fac = (len(settings["warmups"]) * len(settings["floors"]) - 2) * 2
    assert len(planned) == 1 + n_lr + n_fac + (len(studies.BALANCE) - 1) * 2
    runs = studies.planned_runs(settings, base)
    assert len(runs) == len(planned) and len({r.label for r in runs}) == len(runs)
    assert all(r.tokens == TINY["steps"] * TINY["batch_size"] * TINY["seq_len"] for r in runs)


def test_balance_arms_log_routing_trajectories(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    base = studies.study_config(**TINY, routing_every=2)
    frame = studies.label_balance(studies.run_study(store, "bal", studies.balance_configs(base, 0.02, [0, 1])))
    assert sorted(frame["balance"]) == sorted(list(studies.BALANCE) * 2)
    hist = store.histories("bal")
    logged = hist.dropna(subset=["max_load_ratio"])
    assert sorted(set(logged["step"])) == [2, 4, 6]
    assert (logged["dropped_share"] == 0).all() and (logged["max_load_ratio"] >= 1 - 1e-6).all()
    assert (logged["router_entropy"] <= math.log(base["n_experts"]) + 1e-6).all()
    # The aux-free bias moves the selection: its routing differs from aux 0's at the same seed.
    traj = studies.routing_trajectories(hist, frame)
    assert set(traj["stat"]) == set(studies.ROUTING_TRAJECTORY_KEYS)
    piv = traj[traj["stat"] == "load_cv"].pivot(index="step", columns="balance", values="mean")
    assert not np.allclose(piv["aux 0"], piv["aux-free bias"])
    studies.plot_routing(traj)


def test_conclusion_and_explorer_render_from_the_results(monkeypatch):
    rows = []
    for seed, e in enumerate((0.0, 0.01, -0.02)):
        for arm, lr, d in (("muon", 0.1, 0.0), ("muon", 0.2, 0.05), ("adamw", 0.01, 0.5), ("adamw", 0.02, 0.4 + 0.01 * seed)):
            rows.append({"seed": seed, "arm": arm, "lr": lr, "val_loss": 3.0 + e + d, "diverged": False,
                         "warmup": 0.05, "floor": 0.1})
    frame = pd.DataFrame(rows)
    best = studies.best_lrs(frame)
    assert dict(zip(best["arm"], best["lr"])) == {"adamw": 0.02, "muon": 0.1}
    assert dict(zip(best["arm"], best["at_edge"])) == {"adamw": True, "muon": True}
    noise = {"seeds": 3, "seed_std": 0.015, "repeat_max_abs_diff": 0.0}
    mde = studies.detectable_effect(noise, 3)
    opt = studies.compare(frame, {"muon - adamw": ({"arm": "muon", "lr": 0.1}, {"arm": "adamw", "lr": 0.02})}, mde)
    tiny = studies.compare(frame, {"muon 0.2 - muon 0.1": ({"arm": "muon", "lr": 0.2}, {"arm": "muon", "lr": 0.1})}, mde)
    routing = pd.DataFrame({"max_load_ratio": [1.25], "router_entropy": [1.1]}, index=["aux 1e-2"])
    text = studies.conclusion({"profile": "quick", "steps": 60, "n_seeds": 3, "n_experts": 4, "noise": noise,
                               "mde": mde, "best": best, "optimizers": opt, "factorial": tiny, "claim": tiny,
                               "balance": tiny, "routing_final": routing})
    assert f"**{mde:.3f} nats/token**" in text and "-0.410 [" in text and "**muon lower**" in text
    assert "at the grid edge" in text and "1.25 / 1.10" in text and f"{math.log(4):.2f}" in text
    monkeypatch.setenv("WORKBENCH_BATCH", "1")
    fig = studies.explorer(frame, frame.iloc[:0].assign(warmup=[], floor=[]), arm="adamw")
    assert "adamw at LR 0.02, warm-up 5%, floor 10%: val loss 3.407" in fig.axes[0].get_title()  # middle of its grid
    with pytest.raises(ValueError, match="arm"):
        studies.explorer(frame, frame, arm="dense")


def test_run_study_hands_a_ray_executor_to_run_sweep_and_validates_it(monkeypatch, tmp_path):
    store = RunStore(tmp_path / "r.sqlite")
    configs = [studies.study_config(seed=s, steps=2) for s in (0, 1)]
    with pytest.raises(ValueError, match="executor"):
        studies.run_study(store, "s", configs, executor="threads")
    calls = []
    monkeypatch.setattr(studies, "run_sweep", lambda store, sweep, configs, fn, **kw: calls.append(kw))
    from lib.training import IncompleteSweep

    with pytest.raises(IncompleteSweep):  # the stand-in ran nothing
        studies.run_study(store, "s", configs, workers=2, executor="ray", ray_address="ray://head:10001")
    assert calls[0]["executor"] == "ray" and calls[0]["ray_address"] == "ray://head:10001"
    assert all(c.get("executor", "local") == "local" for c in calls[1:])  # the sweep-up runs here


def test_run_study_refuses_to_return_a_sweep_with_a_failed_run(monkeypatch, tmp_path):
    from lib.training import IncompleteSweep

    store = RunStore(tmp_path / "r.sqlite")
    configs = [studies.study_config(seed=s, steps=2) for s in (0, 1)]

    def run_config(config):
        if config["seed"] == 1:
            raise RuntimeError("out of memory")
        return {"val_loss": 3.0}

    monkeypatch.setattr(studies, "run_config", run_config)
    with pytest.raises(IncompleteSweep, match="1 of 2 runs are not done"):
        studies.run_study(store, "s", configs)
    states = store.states("s", configs)
    assert states[make_run_id("s", configs[0])] == "done"
    assert states[make_run_id("s", configs[1])].startswith("failed") and "out of memory" in states[make_run_id("s", configs[1])]


def test_explorer_live_lr_slider_follows_the_arm_and_every_move_redraws(monkeypatch):
    import matplotlib.pyplot as plt

    rows = [{"seed": seed, "arm": arm, "lr": lr, "val_loss": 3.0 + d / 10 + 0.01 * seed, "diverged": False,
             "warmup": 0.05, "floor": 0.1}
            for seed in range(2)
            for arm, lrs in (("muon", (0.05, 0.1, 0.2)), ("adamw", (0.005, 0.01, 0.02, 0.04)))
            for d, lr in enumerate(lrs)]
    frame = pd.DataFrame(rows)
    titles = []
    monkeypatch.setattr(plt, "show", lambda fig=None, *a, **k: titles.append(fig.axes[0].get_title()))
    monkeypatch.setenv("WORKBENCH_BATCH", "0")
    widget = studies.explorer(frame, frame.iloc[:0], arm="muon")
    arm_w, lr_w = widget.children[0], widget.children[1]
    assert list(lr_w.options) == [0.05, 0.1, 0.2] and lr_w.value == 0.1  # muon's own grid, in its middle
    assert titles[-1].startswith("muon at LR 0.1,") and "val loss 3.105" in titles[-1]
    lr_w.value = 0.2
    assert titles[-1].startswith("muon at LR 0.2,") and "val loss 3.205" in titles[-1]
    arm_w.value = "adamw"
    assert list(lr_w.options) == [0.005, 0.01, 0.02, 0.04] and lr_w.value == 0.02
    assert titles[-1].startswith("adamw at LR 0.02,")
    lr_w.value = 0.04
    assert titles[-1].startswith("adamw at LR 0.04,") and "val loss 3.305" in titles[-1]
    plt.close("all")

