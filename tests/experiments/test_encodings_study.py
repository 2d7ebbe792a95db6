"""lib.experiments.encodings_study: the extrapolation sweep trains each encoding once per seed and
evaluates every variant on the same samples; criterion training stops where it should; the
suite's accuracies, Wilson intervals, paired comparisons and Holm correction equal SciPy and
lib.core computed independently; perplexity by position has its closed form on a uniform model;
the plan counts every run; the explorer is live or static as the session asks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as scipy_stats

from lib.core import decide_difference, holm, profile_settings
from lib.data import longctx as L
from lib.data import synthetic_corpus
from lib.experiments import encodings_study as E
from lib.models import ModelConfig

TINY = dict(d_model=16, n_heads=2, batch_size=4)


@pytest.mark.slow
def test_sweep_and_perplexity_train_in_worker_processes_to_the_same_bits():
    variants = {"rope": {"encoding": "rope"}, "alibi": {"encoding": "alibi"},
                "rope+yarn": {"encoding": "rope", "eval_encoding": ("yarn", {"factor": "auto"})}}
    kw = dict(steps=3, seeds=(0, 1), n_eval=4, task_kwargs={"n_digits": 1}, **TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each worker runs on
    try:
        here = E.extrapolation_sweep(variants, "passkey", 16, [16, 32], **kw)
        lm_here = E.perplexity_by_position(variants, 16, 2, 3, seeds=(0,), n_windows=2, batch_size=2,
                                           n_tokens=5_000, d_model=16)
    finally:
        torch.set_num_threads(threads)
    there = E.extrapolation_sweep(variants, "passkey", 16, [16, 32], workers=2, threads=1, **kw)
    lm_there = E.perplexity_by_position(variants, 16, 2, 3, seeds=(0,), n_windows=2, batch_size=2,
                                        n_tokens=5_000, d_model=16, workers=2, threads=1)
    pd.testing.assert_frame_equal(here["by_length"], there["by_length"])
    pd.testing.assert_frame_equal(here["examples"], there["examples"])
    cols = ["label", "seed", "steps", "reached"]
    pd.testing.assert_frame_equal(here["train_seconds"][cols], there["train_seconds"][cols])
    assert len(there["train_seconds"]) == 4  # rope and alibi x 2 seeds: rope+yarn shares rope's runs
    pd.testing.assert_frame_equal(lm_here, lm_there)


def test_sweep_shares_training_and_yarn_factor_one_is_rope():
    variants = {"rope": {"encoding": "rope"},
                "rope+yarn": {"encoding": "rope", "eval_encoding": ("yarn", {"factor": "auto"})}}
    out = E.extrapolation_sweep(variants, "passkey", 16, [16, 32], steps=3, seeds=(0,), n_eval=4,
                                task_kwargs={"n_digits": 1}, depths=[0.0, 1.0], heatmap_labels=["rope"], **TINY)
    assert len(out["train_seconds"]) == 1  # one training serves both variants
    assert out["models"][("rope", 0)] is out["models"][("rope+yarn", 0)]
    assert set(out["heatmap"]["label"]) == {"rope"} and len(out["heatmap"]) == 2 * 2
    assert out["by_length"].shape[0] == 4
    # per-sample scores agree with the by-length means; at 1x (factor 1) YaRN is RoPE exactly
    ex = out["examples"].groupby(["label", "length"])["exact"].mean()
    bl = out["by_length"].set_index(["label", "length"])["exact_match"]
    np.testing.assert_allclose(ex.loc[bl.index], bl)
    assert (out["examples"].query("length == 16").groupby("example")["exact"].nunique() == 1).all()
    model = out["models"][("rope", 0)]
    x = L.passkey(2, 16, seed=5, n_digits=1).inputs
    same = E.with_encoding(model, "yarn", factor=1.0)  # YaRN at factor 1 is RoPE: frequencies and scale
    assert torch.equal(same(x).logits, model(x).logits)
    assert not torch.allclose(E.with_encoding(model, "yarn", factor=4.0)(x).logits, model(x).logits)


def test_longrope_at_eval_is_rope_up_to_the_training_length_and_differs_beyond():
    result = E.train_on_task("rope", "niah", 32, 2, 0, **TINY)
    model = result.model.eval()
    short = L.niah(2, 32, seed=1).inputs
    long = L.niah(2, 64, seed=1).inputs  # its first 32 tokens are a prefix, not a 32-token task
    lr = E.with_encoding(model, "longrope", factor=2.0)  # original length = max_seq_len = 32
    assert not torch.equal(lr(short).logits, model(short).logits)  # attention factor > 1 everywhere
    plain = E.with_encoding(model, "longrope", factor=1.0)  # factor 1: ones, attention factor 1
    assert torch.equal(plain(short).logits, model(short).logits)
    # a call past the original length uses the long factors at every position (as transformers'
    # longrope update): the first 32 logits change with the call's length, RoPE's do not (causal)
    torch.testing.assert_close(model(long).logits[:, :32], model(long[:, :32]).logits, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(lr(long).logits[:, :32], lr(long[:, :32]).logits, rtol=1e-4, atol=1e-5)


def test_criterion_training_stops_at_the_first_check_that_reaches_the_target():
    easy = E.train_on_task("rope", "variable_tracking", 32, 40, 0, task_kwargs={"n_hops": 1},
                           target_accuracy=0.0, check_every=5, n_check=8, **TINY)
    assert easy.final["steps"] == 5 and easy.final["reached"] is True
    hard = E.train_on_task("rope", "variable_tracking", 32, 6, 0, task_kwargs={"n_hops": 1},
                           target_accuracy=1.0, check_every=4, n_check=64, **TINY)
    assert hard.final["steps"] == 6 and hard.final["reached"] is False  # the cap, and it says so
    assert E.train_on_task("rope", "variable_tracking", 32, 3, 0, **TINY).final["reached"] is None
    with pytest.raises(ValueError, match="target_accuracy"):
        E.train_on_task("rope", "niah", 32, 3, 0, target_accuracy=1.5, **TINY)


def _examples(correct: dict[str, np.ndarray], seeds=(0, 1), length=32, task="niah") -> pd.DataFrame:
    rows = []
    for label, table in correct.items():
        for s in seeds:
            for i, c in enumerate(table[s]):
                rows.append({"task": task, "label": label, "length": length, "seed": s, "example": i,
                             "exact": bool(c)})
    return pd.DataFrame(rows)


def test_accuracy_table_pools_seeds_and_uses_wilson_intervals():
    rng = np.random.default_rng(0)
    correct = {"rope": rng.random((2, 40)) < 0.7, "alibi": rng.random((2, 40)) < 0.2}
    acc = E.accuracy_table(_examples(correct)).set_index("label")
    for label, table in correct.items():
        k, n = int(table.sum()), table.size
        ci = scipy_stats.binomtest(k, n).proportion_ci(method="wilson")
        row = acc.loc[label]
        assert (row["successes"], row["trials"], row["seeds"]) == (k, n, 2)
        assert row["low"] == pytest.approx(ci.low) and row["high"] == pytest.approx(ci.high)
        assert row["seed_sd"] == pytest.approx(np.std(table.mean(1), ddof=1))
        assert 0 <= row["low"] <= row["accuracy"] <= row["high"] <= 1


def test_comparisons_are_paired_t_tests_with_holm_and_decide_only_when_significant():
    rng = np.random.default_rng(1)
    rope = rng.random((2, 60)) < 0.5
    correct = {"rope": rope, "same": rope.copy(), "better": np.ones_like(rope),
               "noisy": np.where(rng.random(rope.shape) < 0.1, ~rope, rope)}
    cmp = E.compare_to_reference(_examples(correct)).set_index("label")
    assert set(cmp.index) == {"same", "better", "noisy"}
    assert cmp.loc["same", "diff"] == 0 and cmp.loc["same", "p"] == 1.0
    # identical answers: a zero difference is never "detectable"
    assert cmp.loc["same", "decision"] == "cannot decide (difference below the detectable effect)"
    assert cmp.loc["better", "decision"] == "better"
    assert cmp.loc["better", "diff"] == pytest.approx(1 - rope.mean())
    for label in ("better", "noisy"):
        ref = scipy_stats.ttest_rel(correct[label].ravel().astype(float), rope.ravel().astype(float))
        assert cmp.loc[label, "p"] == pytest.approx(ref.pvalue, rel=1e-10)
    np.testing.assert_allclose(cmp["p_holm"], holm(cmp["p"].to_numpy()))
    assert cmp.loc["noisy", "mde"] > 0 and cmp["n"].eq(120).all()
    # the shared rule (lib.core.decide_difference) on the reference minus the label
    for _, r in cmp.iterrows():
        verdict = decide_difference(-r["diff"], r["p_holm"], r["mde"])
        assert r["decision"] == {"lower": "better", "higher": "worse"}.get(verdict, verdict)
    if cmp.loc["noisy", "p_holm"] > 0.05:
        assert cmp.loc["noisy", "decision"].startswith("cannot decide")
    with pytest.raises(ValueError, match="reference"):
        E.compare_to_reference(_examples(correct), reference="yarn")


def test_suite_conclusion_states_the_numbers_and_cannot_decide():
    rng = np.random.default_rng(2)
    rope = rng.random((2, 50)) < 0.6
    ex = pd.concat([_examples({"rope": rope, "same": rope.copy(), "better": np.ones_like(rope)}, length=n)
                    for n in (32, 64)])
    acc, cmp = E.accuracy_table(ex), E.compare_to_reference(ex)
    training = pd.DataFrame({"task": "niah", "label": ["rope", "rope", "same", "same", "better", "better"],
                             "seed": [0, 1] * 3, "steps": [100, 200, 150, 150, 300, 300],
                             "reached": [True, True, True, True, False, True]})
    text = E.suite_conclusion(acc, cmp, E.training_table(training, 300), None, 32)
    r = acc[(acc["label"] == "rope") & (acc["length"] == 64)].iloc[0]
    assert f"{r['accuracy']:.2f} [{r['low']:.2f}, {r['high']:.2f}] at 2x" in text
    assert "cannot decide (difference below the detectable effect): same (+0.00" in text
    assert "better than rope" in text and "better (1/2)" in text and "rope 150" in text


def test_position_buckets_and_uniform_model_loss_by_position():
    assert E.position_buckets(32, 8) == [(0, 32), (32, 64), (64, 128), (128, 256)]
    assert E.position_buckets(10, 3) == [(0, 10), (10, 20), (20, 30)]

    class Uniform(torch.nn.Module):
        config = ModelConfig(vocab_size=32, d_model=8, n_layers=1, n_heads=1, max_seq_len=16)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, idx):
            return type("Out", (), {"logits": torch.zeros(*idx.shape, 32)})()

    data = synthetic_corpus(n_train_tokens=5_000, n_val_tokens=5_000, vocab_size=32, seed=0)
    per_pos = E.loss_by_position(Uniform(), data, 48, n_windows=4, batch_size=2)
    np.testing.assert_allclose(per_pos, math.log(32), rtol=1e-6)
    frame = E.perplexity_by_position({"rope": {"encoding": "rope"}, "yarn": {"encoding": "rope", "eval_encoding":
                                      ("yarn", {"factor": "auto"})}}, 16, 4, 2, (0,), n_windows=2, batch_size=2,
                                     n_tokens=5_000, d_model=16, n_heads=2)
    assert list(frame["bucket"].unique()) == ["0-16", "16-32", "32-64"] and len(frame) == 6
    np.testing.assert_allclose(frame["perplexity"], np.exp(frame["loss"]))


def test_planned_runs_count_every_training_run_and_smoke_keeps_the_full_shapes():
    quick = profile_settings("quick", quick=E.QUICK, full=E.FULL)
    runs = E.planned_runs(quick)
    distinct = {(v["encoding"], str(v.get("encoding_kwargs"))) for v in E.suite_variants(False).values()}
    assert len(runs) == len(distinct) * (len(quick.tasks) * len(quick.seeds) + len(quick.lm_seeds))
    task_run = next(r for r in runs if r.label.startswith("niah/rope/"))
    assert task_run.tokens == quick.max_steps * quick.batch_size * quick.train_len
    assert task_run.model.d_model == quick.d_model and task_run.train_len == quick.train_len
    smoke = profile_settings("full", quick=E.QUICK, full=E.FULL, smoke=True, smoke_steps=E.SMOKE)
    full = profile_settings("full", quick=E.QUICK, full=E.FULL)
    for key in ("train_len", "d_model", "tasks", "seeds", "ratios", "extra_variants", "lm_seeds", "depths"):
        assert getattr(smoke, key) == getattr(full, key)
    assert smoke.max_steps < full.max_steps and len(E.planned_runs(smoke)) == len(E.planned_runs(full))


def test_explorer_is_a_figure_in_batch_and_a_widget_led_by_a_slider_live(monkeypatch):
    import ipywidgets
    import matplotlib.figure
    import matplotlib.pyplot as plt

    monkeypatch.setenv("WORKBENCH_BATCH", "1")
    fig = E.explorer("longrope", base=5e5, factor=8.0, length=64)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    plt.close(fig)
    monkeypatch.setenv("WORKBENCH_BATCH", "0")
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    widget = E.explorer("rope", length=64)
    assert isinstance(widget, ipywidgets.interactive)
    assert isinstance(widget.children[0], ipywidgets.IntSlider) and widget.children[0].description == "length"
    with pytest.raises(ValueError, match="encoding"):
        E.explorer_figure("alibi")
    plt.close("all")


def test_training_table_counts_seeds_that_never_reach_the_criterion_as_censored():
    training = pd.DataFrame({"task": "niah", "label": ["a"] * 3 + ["b"] * 2, "seed": [0, 1, 2, 0, 1],
                             "steps": [100, 300, 300, 80, 300], "reached": [True, False, False, True, False]})
    table = E.training_table(training, 300).set_index("label")
    # a: two of three seeds ran to the cap without reaching it, so the median is "not reached",
    # where counting them at the cap would report 300 steps.
    assert math.isinf(table.loc["a", "median_steps"]) and table.loc["a", "reached"] == 1
    assert math.isinf(table.loc["b", "median_steps"])
    reached = training.assign(reached=True, steps=[100, 120, 140, 80, 90])
    assert E.training_table(reached, 300).set_index("label").loc["a", "median_steps"] == 120
    ex = _examples({"rope": np.ones((2, 4), bool), "a": np.ones((2, 4), bool)}, length=32)
    text = E.suite_conclusion(E.accuracy_table(ex), E.compare_to_reference(ex),
                              E.training_table(training[training["label"] == "a"], 300), None, 32)
    assert "a not reached" in text and "a (1/3)" in text


def test_every_eval_time_extension_of_rope_weights_resolves_its_factor_and_keeps_the_trained_base():
    """The full suite's context extensions applied to RoPE-trained weights at evaluation (PI,
    NTK, dynamic NTK, YaRN, LongRoPE, Llama 3): each clone keeps the weights, resolves "auto" to
    length / train_len, rotates with the encoding built directly at that factor (whose
    frequencies tests/encodings checks against transformers), and Llama 3 keeps base 10,000."""
    from lib.encodings import build_encoding
    from lib.models import Transformer

    train_len, length = 16, 64
    model = Transformer(E._model_config("rope", None, train_len, d_model=32, n_layers=1, n_heads=2,
                                        vocab_size=32)).eval()
    extensions = {label: v["eval_encoding"] for label, v in E.suite_variants(True).items() if "eval_encoding" in v}
    assert {"rope_linear", "rope_ntk", "rope_dynamic", "yarn", "longrope", "llama3"} <= {e[0] for e in extensions.values()}
    tokens = torch.randint(0, 32, (1, length))
    for label, (name, kwargs) in extensions.items():
        clone = E._eval_model(model, (name, kwargs), length, train_len)
        assert clone.config.encoding == name, label
        factor = clone.config.encoding_kwargs["factor"]
        assert factor == (length / train_len if kwargs["factor"] == "auto" else kwargs["factor"]), label
        direct = build_encoding(name, d_model=32, n_heads=2, head_dim=16, max_seq_len=train_len,
                                **clone.config.encoding_kwargs)
        torch.testing.assert_close(clone.encoding.inverse_frequencies(), direct.inverse_frequencies(),
                                   rtol=0, atol=0, msg=label)
        for p, q in zip(model.parameters(), clone.parameters()):
            assert torch.equal(p, q), label
        with torch.no_grad():
            out = clone(tokens)
        assert torch.isfinite(getattr(out, "logits", out)).all(), label
    assert extensions["rope + llama3@eval"][1]["base"] == 10_000.0
