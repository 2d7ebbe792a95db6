"""lib.experiments.encodings_study: the extrapolation sweep trains each encoding once per seed,
evaluates every variant, and a YaRN evaluation at factor 1 is RoPE exactly."""

from __future__ import annotations

import torch

from lib.data import longctx as L
from lib.experiments import encodings_study as E


def test_sweep_shares_training_and_yarn_factor_one_is_rope():
    variants = {"rope": {"encoding": "rope"},
                "rope+yarn": {"encoding": "rope", "eval_encoding": ("yarn", {"factor": "auto"})}}
    out = E.extrapolation_sweep(variants, "passkey", 16, [16, 32], steps=3, seeds=(0,), n_eval=4,
                                task_kwargs={"n_digits": 1}, d_model=16, n_heads=2, batch_size=4,
                                depths=[0.0, 1.0], heatmap_labels=["rope"])
    assert len(out["train_seconds"]) == 1  # one training serves both variants
    assert out["models"][("rope", 0)] is out["models"][("rope+yarn", 0)]
    assert set(out["heatmap"]["label"]) == {"rope"} and len(out["heatmap"]) == 2 * 2
    assert out["by_length"].shape[0] == 4
    model = out["models"][("rope", 0)]
    x = L.passkey(2, 16, seed=5, n_digits=1).inputs
    same = E.with_encoding(model, "yarn", factor=1.0)  # YaRN at factor 1 is RoPE: frequencies and scale
    assert torch.equal(same(x).logits, model(x).logits)
    assert not torch.allclose(E.with_encoding(model, "yarn", factor=4.0)(x).logits, model(x).logits)
