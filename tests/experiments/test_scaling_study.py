"""lib.experiments.scaling_study: every IsoFLOP run trains exactly its planned tokens, and a
re-run resumes without retraining."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib import scaling
from lib.data import synthetic_corpus
from lib.experiments import scaling_study
from lib.scaling import plan_sweep
from lib.training import RunStore


def test_run_isoflop_sweep_spends_exactly_the_planned_tokens_and_resumes(tmp_path):
    data = synthetic_corpus(n_train_tokens=50_000, n_val_tokens=5_000, vocab_size=32, seed=0)
    plan = plan_sweep([5e7], vocab_size=32, seq_len=16, batch_size=4, n_sizes=2, span=6,
                      head_dim=8, aspect_ratio=8, tokens_per_param=5, corpus_tokens=len(data.train),
                      tokens_per_second=1e4)
    assert plan["feasible"].all()
    store = RunStore(tmp_path / "runs.sqlite")
    kw = dict(store=store, sweep="t", batch_size=4, seq_len=16, progress=False, eval_batches=2)
    runs = scaling_study.run_isoflop_sweep(plan, data, **kw)
    assert (runs["status"] == "done").all() and len(runs) == 2
    merged = runs.merge(plan[["n_params", "steps", "tokens"]], on="n_params", suffixes=("", "_plan"))
    np.testing.assert_array_equal(merged["tokens"], merged["tokens_plan"])  # trained exactly D
    np.testing.assert_array_equal(merged["planned_tokens"], merged["tokens_plan"])
    np.testing.assert_array_equal(merged["n_params_model"], merged["n_params"])
    np.testing.assert_allclose(merged["flops_6nd"], 6 * merged["n_params"] * merged["tokens"])
    np.testing.assert_allclose(merged["flops"], merged["budget"], rtol=0.05)  # Appendix F spends it
    assert np.isfinite(runs["val_loss"]).all()
    first = store.frame("t")["finished"].tolist()
    again = scaling_study.run_isoflop_sweep(plan, data, **kw)  # resumes: nothing is retrained
    assert again["finished"].tolist() == first
    with pytest.raises(ValueError, match="batch_size"):
        scaling.sweep_configs(plan, batch_size=8, seq_len=16)



def test_a_run_cut_by_max_steps_trains_exactly_those_steps(tmp_path):
    """The full profile's smoke mode cuts every run to ``max_steps``; the cut run still trains
    (its schedule spans the steps it takes), and spends only those steps' tokens."""
    data = synthetic_corpus(n_train_tokens=50_000, n_val_tokens=5_000, vocab_size=32, seed=0)
    plan = plan_sweep([5e7], vocab_size=32, seq_len=16, batch_size=4, n_sizes=2, span=6,
                      head_dim=8, aspect_ratio=8, tokens_per_param=5, corpus_tokens=len(data.train),
                      tokens_per_second=1e4)
    assert (plan["steps"] > 2).all()
    runs = scaling_study.run_isoflop_sweep(plan, data, store=RunStore(tmp_path / "runs.sqlite"), sweep="t",
                                           batch_size=4, seq_len=16, progress=False, eval_batches=1,
                                           max_steps=2)
    assert (runs["status"] == "done").all() and (runs["tokens"] == 2 * 4 * 16).all()
    merged = runs.merge(plan[["n_params", "tokens"]], on="n_params", suffixes=("", "_plan"))
    np.testing.assert_array_equal(merged["planned_tokens"], merged["tokens_plan"])  # what the fits take
    assert np.isfinite(runs["val_loss"]).all()

def _tiny_plan(data, budgets=(5e7, 1e8, 2e8)):
    return plan_sweep(list(budgets), vocab_size=32, seq_len=16, batch_size=4, n_sizes=3, span=6,
                      head_dim=8, aspect_ratio=8, tokens_per_param=5, corpus_tokens=len(data.train),
                      tokens_per_second=1e4)


def test_runs_record_appendix_f_flops_and_a_training_curve_for_approach_1(tmp_path):
    data = synthetic_corpus(n_train_tokens=200_000, n_val_tokens=5_000, vocab_size=32, seed=0)
    plan = _tiny_plan(data, budgets=(5e7, 1e8))
    store = RunStore(tmp_path / "runs.sqlite")
    runs = scaling_study.run_isoflop_sweep(plan, data, store=store, sweep="t", batch_size=4, seq_len=16,
                                           progress=False, eval_batches=2, curve_points=5)
    for _, r in runs.iterrows():
        model = {k.split(".", 1)[1]: r[k] for k in runs if k.startswith("model.")}
        fpt = scaling.chinchilla_flops_per_token(model, 16)
        assert r["flops"] == pytest.approx(fpt * r["tokens"])  # the budget's own count
        assert r["flops"] == pytest.approx(r["budget"], rel=0.1)
        assert r["flops_6nd"] == 6 * r["n_params"] * r["tokens"]
    curves = scaling_study.training_curves(store, "t", runs)
    assert set(curves["run_id"]) == set(runs["run_id"])
    last = curves.groupby("run_id").tail(1).set_index("run_id")
    np.testing.assert_allclose(last["tokens"], runs.set_index("run_id").loc[last.index, "tokens"])
    assert (curves.groupby("run_id").size() >= 4).all()
    env = scaling.fit_envelope(curves, n_bootstrap=0)
    assert set(env.envelope["run_id"]) <= set(runs["run_id"])


def test_fits_refuse_an_incomplete_sweep(tmp_path):
    from lib.training import IncompleteSweep

    data = synthetic_corpus(n_train_tokens=50_000, n_val_tokens=5_000, vocab_size=32, seed=0)
    plan = _tiny_plan(data, budgets=(5e7,))
    bad = plan.copy()
    shapes = list(bad["shape"])
    shapes[0] = {**shapes[0], "n_heads": 3}  # cannot build
    bad["shape"] = shapes
    with pytest.raises(IncompleteSweep, match="not done"):
        scaling_study.run_isoflop_sweep(bad, data, store=RunStore(tmp_path / "r.sqlite"), sweep="t",
                                        batch_size=4, seq_len=16, progress=False, eval_batches=2)


def test_lr_rule_tuning_rows_and_planned_runs_match_the_profiles():
    from lib.core import runtime

    quick = runtime.profile_settings("quick", quick=scaling_study.QUICK, full=scaling_study.FULL)
    plan = scaling_study.make_plan(quick, tokens_per_second=1.0)
    rule = scaling_study.rule_lrs(plan, quick)
    for w, lr in rule.items():  # lr proportional to 1/width, equal to lr at the base width
        assert lr == pytest.approx(quick.lr * quick.lr_base_width / w)
    tune = scaling_study.lr_tune_plan(plan)
    assert sorted(tune["d_model"]) == sorted(rule)
    runs = scaling_study.planned_runs(quick)
    n_sweep = int(plan["feasible"].sum()) * len(quick.sweep_seeds)
    assert len([r for r in runs if r.label.startswith("isoflop")]) == n_sweep
    assert len([r for r in runs if r.label.startswith("repeat")]) == len(quick.repeat_seeds) - 1
    assert any(r.label.startswith("python-stdlib") for r in runs)
    feasible = plan[plan["feasible"]]
    assert sum(r.tokens for r in runs if r.label.startswith("isoflop")) == feasible["tokens"].sum()
    smoke = runtime.profile_settings("full", quick=scaling_study.QUICK, full=scaling_study.FULL, smoke=True,
                                     smoke_steps=scaling_study.SMOKE)
    full = runtime.profile_settings("full", quick=scaling_study.QUICK, full=scaling_study.FULL)
    sp, fp = scaling_study.make_plan(smoke, tokens_per_second=1.0), scaling_study.make_plan(full, tokens_per_second=1.0)
    # Smoke keeps the full profile's shapes (at its corner budgets), seeds and LR grid.
    assert set(map(tuple, sp[["d_model", "n_layers"]].to_numpy())) <= set(map(tuple, fp[["d_model", "n_layers"]].to_numpy()))
    assert smoke.sweep_seeds == full.sweep_seeds and smoke.lr_multipliers == full.lr_multipliers
    assert all(r.tokens <= smoke.max_steps * smoke.batch_size * smoke.seq_len for r in scaling_study.planned_runs(smoke))


def test_allocation_at_matches_the_closed_form_under_6n():
    law = scaling.ParametricFit.from_params(scaling.EPOCH_2024)
    fpt = lambda n: 6.0 * np.asarray(n, float)  # under C = 6ND the grid optimum is the closed form
    table = scaling_study.allocation_at(1e21, par=law, fpt=fpt).iloc[0]
    n_true, d_true = law.optimal_allocation(1e21)
    assert table["n_opt"] == pytest.approx(n_true[0], rel=0.05)
    assert table["d_opt"] == pytest.approx(d_true[0], rel=0.05)
    assert table["loss"] == pytest.approx(law.predict(n_true, d_true)[0], abs=1e-3)
    with pytest.raises(ValueError, match="fpt"):
        scaling_study.allocation_at(1e21, par=law)


def test_exponent_statement_says_cannot_decide_when_the_interval_holds_both():
    assert "cannot decide" in scaling_study.exponent_statement("a2", 0.6, 0.2, 0.9)
    assert "consistent with 0.5" in scaling_study.exponent_statement("a2", 0.5, 0.45, 0.55)
    assert "excludes both" in scaling_study.exponent_statement("a2", 0.6, 0.58, 0.62)


def test_explorer_draws_its_static_figure_in_batch(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("WORKBENCH_BATCH", "1")
    rng = np.random.default_rng(0)
    C = np.repeat([1e18, 1e19, 1e20], 5)
    N = np.sqrt(C / 120) * np.tile(np.geomspace(0.3, 3, 5), 3)
    law = scaling.ParametricFit.from_params(scaling.EPOCH_2024)
    loss = law.predict(N, C / (6 * N)) + 0.005 * rng.standard_normal(N.size)
    iso = scaling.fit_isoflop(C, N, loss, n_bootstrap=50)
    fig = scaling_study.explorer(iso=iso, par=law, fpt=lambda n: 6.0 * np.asarray(n, float), budgets=[1e18, 1e20])
    assert isinstance(fig, matplotlib.figure.Figure)
    assert "N*" in fig.axes[1].texts[0].get_text()


def test_sweep_executor_is_validated_first_and_handed_to_run_sweep(monkeypatch):
    data = synthetic_corpus(n_train_tokens=20_000, n_val_tokens=5_000, vocab_size=32, seed=0)
    plan = _tiny_plan(data, budgets=(5e7,))
    with pytest.raises(ValueError, match="executor"):
        scaling_study.run_isoflop_sweep(plan, data, store=RunStore(), executor="dask", batch_size=4, seq_len=16)
    seen = {}

    def fake_run_sweep(store, sweep, configs, run_fn, **kw):
        seen.update(kw, n=len(list(configs)))
        return pd.DataFrame()

    monkeypatch.setattr(scaling_study, "run_sweep", fake_run_sweep)
    scaling_study.run_isoflop_sweep(plan, data, store=RunStore(), executor="ray", ray_address="auto",
                                    batch_size=4, seq_len=16, progress=False)
    assert seen["executor"] == "ray" and seen["ray_address"] == "auto" and seen["require_complete"]
    assert seen["n"] == int(plan["feasible"].sum())


def test_exponent_plot_draws_an_interval_that_excludes_its_estimate():
    """A percentile bootstrap of a poorly determined fit can give an interval that misses the
    estimate (the full profile's one-step smoke fit does); the plot draws it as it is."""
    import matplotlib

    matplotlib.use("Agg")
    table = pd.DataFrame({"a": [0.5, 0.02], "low": [0.4, 0.43], "high": [0.6, 0.9]}, index=["ok", "odd"])
    ax = scaling_study.plot_exponents(table)
    segments = ax.collections[0].get_segments()
    np.testing.assert_allclose([seg[:, 0] for seg in segments], [[0.4, 0.6], [0.43, 0.9]])


def test_explorer_live_redraws_n_star_when_the_budget_slider_moves(monkeypatch):
    import matplotlib.pyplot as plt

    law = scaling.ParametricFit.from_params(scaling.EPOCH_2024)
    texts = []
    monkeypatch.setattr(plt, "show", lambda fig=None, *a, **k: texts.append(fig.axes[1].texts[0].get_text()))
    monkeypatch.setenv("WORKBENCH_BATCH", "0")
    widget = scaling_study.explorer(par=law, fpt=lambda n: 6.0 * np.asarray(n, float), budgets=[1e18, 1e20])
    slider = widget.children[0]
    assert slider.description == "log10 C" and slider.value == pytest.approx(21.0)
    assert texts[-1].startswith("C = 1.00e+21 FLOPs")
    slider.value = 22.0
    assert texts[-1].startswith("C = 1.00e+22 FLOPs")
    n_star = [float(t.split("N* ")[1].split()[0]) for t in texts[-2:]]
    assert n_star[1] > n_star[0]  # a larger budget buys a larger compute-optimal model
    plt.close("all")
