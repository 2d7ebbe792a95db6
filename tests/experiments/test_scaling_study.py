"""lib.experiments.scaling_study: every IsoFLOP run trains exactly its planned tokens, and a
re-run resumes without retraining."""

from __future__ import annotations

import numpy as np
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
    np.testing.assert_array_equal(merged["n_params_model"], merged["n_params"])
    np.testing.assert_allclose(merged["flops"], 6 * merged["n_params"] * merged["tokens"])
    assert np.isfinite(runs["val_loss"]).all()
    first = store.frame("t")["finished"].tolist()
    again = scaling_study.run_isoflop_sweep(plan, data, **kw)  # resumes: nothing is retrained
    assert again["finished"].tolist() == first
    with pytest.raises(ValueError, match="batch_size"):
        scaling.sweep_configs(plan, batch_size=8, seq_len=16)
