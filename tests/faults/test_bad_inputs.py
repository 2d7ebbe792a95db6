"""Fault injection: bad inputs across the public API raise a ValueError naming the argument,
before any compute; degenerate scaling fits raise with the reason."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lib import core, data, encodings, models, scaling, schedules, training
from lib.models import ModelConfig, Transformer
from lib.training import TrainConfig, train

pytestmark = pytest.mark.faults


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=32, d_model=32, n_layers=1, n_heads=2, max_seq_len=16), **kw})


ENC = dict(d_model=32, n_heads=2, head_dim=16, max_seq_len=64)
tmp = Path(tempfile.gettempdir())

# (what, call, a regex the message must match: the argument's name)
BAD_INPUTS = [
    # schedules
    ("schedules.WarmupCosine total_steps=0", lambda: schedules.WarmupCosine(total_steps=0), "total_steps"),
    ("schedules.WarmupCosine total_steps=True", lambda: schedules.WarmupCosine(total_steps=True), "total_steps"),
    ("schedules.WarmupCosine warmup>total", lambda: schedules.WarmupCosine(total_steps=10, warmup_steps=11), "warmup_steps"),
    ("schedules.WarmupCosine min_lr_ratio=1.5", lambda: schedules.WarmupCosine(total_steps=10, min_lr_ratio=1.5), "min_lr_ratio"),
    ("schedules.WSD decay='cubic'", lambda: schedules.WSD(total_steps=10, warmup_steps=1, decay_steps=2, decay="cubic"), "decay"),
    ("schedules.WSD decay_steps=-1", lambda: schedules.WSD(total_steps=10, warmup_steps=1, decay_steps=-1), "decay_steps"),
    ("schedules.CosineRestarts num_cycles=0", lambda: schedules.CosineRestarts(total_steps=10, num_cycles=0), "num_cycles"),
    ("schedules.InverseSqrt timescale=0", lambda: schedules.InverseSqrt(total_steps=10, timescale=0), "timescale"),
    ("schedules.build unknown", lambda: schedules.build("cosine-ish", total_steps=10), "cosine-ish"),
    ("schedules.curve steps=-1", lambda: schedules.WarmupCosine(total_steps=10).curve(-1), "steps"),
    ("schedules.attach start_step=-1", lambda: schedules.attach(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), schedules.Constant(total_steps=5), start_step=-1), "start_step"),
    # encodings
    ("encodings.build_encoding unknown", lambda: encodings.build_encoding("ropey", **ENC), "ropey"),
    ("encodings.build_encoding max_seq_len=0", lambda: encodings.build_encoding("rope", **{**ENC, "max_seq_len": 0}), "max_seq_len"),
    ("encodings.rope base=-1", lambda: encodings.build_encoding("rope", base=-1.0, **ENC), "base"),
    ("encodings.yarn factor=0", lambda: encodings.build_encoding("yarn", factor=0.0, **ENC), "factor"),
    ("encodings.alibi_slopes n_heads=0", lambda: encodings.alibi_slopes(0), "n_heads"),
    ("encodings.collision_report max_offset=0", lambda: encodings.collision_report(encodings.build_encoding("rope", **ENC), max_offset=0), "max_offset"),
    # models
    ("models.ModelConfig n_heads not dividing", lambda: tiny(n_heads=3), "n_heads"),
    ("models.ModelConfig dropout=1.0", lambda: tiny(dropout=1.0), "dropout"),
    ("models.ModelConfig vocab_size=0", lambda: tiny(vocab_size=0), "vocab_size"),
    ("models.ModelConfig attn_impl", lambda: tiny(attn_impl="fast"), "attn_impl"),
    ("models.ModelConfig mlp", lambda: tiny(mlp="relu"), "mlp"),
    ("models.ModelConfig tie_embeddings=1", lambda: tiny(tie_embeddings=1), "tie_embeddings"),
    ("models.ModelConfig n_kv_heads=3", lambda: tiny(n_heads=4, n_kv_heads=3), "n_kv_heads"),
    ("models.MoEFeedForward top_k>n_experts", lambda: models.MoEFeedForward(32, 64, n_experts=2, top_k=3), "top_k"),
    ("models.MoEFeedForward dispatch", lambda: models.MoEFeedForward(32, 64, dispatch="fastest"), "dispatch"),
    ("models.forward 1-D idx", lambda: Transformer(tiny())(torch.zeros(4, dtype=torch.long)), "idx"),
    # training
    ("training.TrainConfig log_every=0", lambda: TrainConfig(steps=3, log_every=0), "log_every"),
    ("training.TrainConfig seed=None", lambda: TrainConfig(steps=3, seed=None), "seed"),
    ("training.TrainConfig eval_every='10'", lambda: TrainConfig(steps=3, eval_every="10"), "eval_every"),
    ("training.TrainConfig grad_clip='1'", lambda: TrainConfig(steps=3, grad_clip="1"), "grad_clip"),
    ("training.TrainConfig lr=True", lambda: TrainConfig(steps=3, lr=True), "lr"),
    ("training.TrainConfig seed=1.5", lambda: TrainConfig(steps=3, seed=1.5), "seed"),
    ("training.TrainConfig eval_batches=0", lambda: TrainConfig(steps=3, eval_batches=0), "eval_batches"),
    ("training.TrainConfig steps=np.float64", lambda: TrainConfig(steps=np.float64(3)), "steps"),
    ("training.TrainConfig grad_accum", lambda: TrainConfig(steps=3, batch_size=6, grad_accum=4), "grad_accum"),
    ("training.TrainConfig on_divergence", lambda: TrainConfig(steps=3, on_divergence="ignore"), "on_divergence"),
    ("training.TrainConfig betas", lambda: TrainConfig(steps=3, betas=(0.9, 1.0)), "betas"),
    ("training.build_optimizers kind", lambda: training.build_optimizers(Transformer(tiny()), kind="sgd"), "kind"),
    ("training.evaluate seq_len=0", lambda: training.evaluate(Transformer(tiny()), None, 0), "seq_len"),
    ("training.RunStore lease_s=0", lambda: training.RunStore(tmp / "x.sqlite", lease_s=0), "lease_s"),
    # scaling
    ("scaling.flops_6nd negative", lambda: scaling.flops_6nd(-1.0, 10), "model_or_n|N|n"),
    ("scaling.plan_sweep budgets empty", lambda: scaling.plan_sweep([], vocab_size=64, seq_len=32, batch_size=8), "budgets"),
    ("scaling.fit_parametric negative loss", lambda: scaling.fit_parametric([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, -4, 5]), "loss"),
    ("scaling.fit_isoflop n_bootstrap=-1", lambda: scaling.fit_isoflop([1e18] * 3 + [1e19] * 3, [1, 2, 3] * 2, [3, 2, 3] * 2, n_bootstrap=-1), "n_bootstrap"),
    ("scaling.shape_for_params target<=0", lambda: scaling.shape_for_params(0, vocab_size=64, seq_len=32), "target_params"),
    ("scaling.optimal_allocation C<=0", lambda: scaling.optimal_allocation(scaling.HOFFMANN_2022, [0.0]), "C"),
    # data
    ("data.synthetic_corpus vocab_size=4", lambda: data.synthetic_corpus(n_train_tokens=1000, n_val_tokens=100, vocab_size=4), "vocab_size"),
    ("data.synthetic_corpus n_train_tokens=1.5e3", lambda: data.synthetic_corpus(n_train_tokens=1.5e3), "n_train_tokens"),
    ("data.TokenData ids >= vocab", lambda: data.TokenData(np.array([0, 1, 40]), np.array([0, 1, 2]), 32), "train"),
    ("data.TokenData float arrays", lambda: data.TokenData(np.zeros(8), np.zeros(8, dtype=int), 32), "train"),
    ("data.make_task unknown", lambda: data.make_task("copying", 2, 32), "task"),
    ("data.make_task n=0", lambda: data.make_task("passkey", 0, 64), "n"),
    ("data.TokenData.batch seq_len too long", lambda: data.TokenData(np.arange(10) % 4, np.arange(10) % 4, 4).batch("train", 0, 2, 50), "seq_len"),
    ("data.TokenData.batch split", lambda: data.TokenData(np.arange(10) % 4, np.arange(10) % 4, 4).batch("test", 0, 2, 4), "split"),
    # stats
    ("core.t_interval confidence=1.5", lambda: core.t_interval([1.0, 2.0, 3.0], confidence=1.5), "confidence"),
    ("core.wilson_interval successes>trials", lambda: core.wilson_interval(5, 3), "successes"),
    ("core.holm p>1", lambda: core.holm([0.1, 1.5]), "pvalues"),
    ("core.min_detectable_effect power=1", lambda: core.min_detectable_effect(1.0, 5, power=1.0), "power"),
    ("core.summarize metric missing", lambda: core.summarize(pd.DataFrame({"g": [1, 1], "m": [1.0, 2.0]}), "g", "loss"), "loss"),
    ("core.seed_everything seed=-1", lambda: core.seed_everything(-1), "seed"),
    ("core.profile_settings profile", lambda: core.profile_settings("medium", quick={}, full={}), "profile"),]


def test_the_table_covers_every_layer():
    packages = {what.split(".")[0] for what, _, _ in BAD_INPUTS}
    assert len(BAD_INPUTS) >= 40
    assert {"schedules", "encodings", "models", "training", "scaling", "data", "core"} <= packages


@pytest.mark.parametrize("what, call, match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_a_value_error_naming_the_argument(what, call, match):
    with pytest.raises(ValueError) as err:
        call()
    assert re.search(match, str(err.value)), f"{what}: the message does not name {match!r}: {err.value}"


# ------------------------------------------------------------------ checks before any compute

class Data:
    """A TokenData stand-in whose splits and ids are set per test."""

    def __init__(self, train_len=4000, val_len=400, vocab=32, bad_from=None, targets_masked=False):
        rng = np.random.default_rng(0)
        self.train = rng.integers(0, vocab, train_len)
        self.val = rng.integers(0, vocab, val_len)
        self.vocab_size = vocab
        self.targets_masked = targets_masked
        self.batches = 0

    def batch(self, split, step, batch_size, seq_len, seed=0, rank=0, world_size=1):
        self.batches += 1
        arr = self.train if split == "train" else self.val
        starts = np.random.default_rng([seed, step]).integers(0, len(arr) - seq_len - 1, batch_size)
        rows = torch.from_numpy(arr[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
        x, y = rows[:, :-1], rows[:, 1:].clone()
        if self.targets_masked:
            y[:, ::2] = -100
        return x, y

    def eval_batches(self, seq_len, batch_size, max_batches=None):
        n = (len(self.val) - 1) // seq_len
        for b in range(min(-(-n // batch_size), max_batches or 10**9)):
            starts = np.arange(b * batch_size, min((b + 1) * batch_size, n)) * seq_len
            rows = torch.from_numpy(self.val[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
            yield rows[:, :-1], rows[:, 1:]


class CountForwards(Transformer):
    calls = 0

    def forward(self, *args, **kwargs):
        CountForwards.calls += 1
        return super().forward(*args, **kwargs)


def _train(data, model=None, **kw):
    CountForwards.calls = 0
    torch.manual_seed(0)
    model = model or CountForwards(tiny())
    return train(model, data, TrainConfig(**{"steps": 3, "batch_size": 4, "seq_len": 8, "progress": False, **kw}))


@pytest.mark.parametrize("data, kw, match", [
    (Data(), {"seq_len": 32}, r"seq_len=32 exceeds the model's max_seq_len=16"),
    (Data(val_len=8), {}, r"val.*seq_len|seq_len.*val"),
    (Data(vocab=40), {}, r"first training batch's inputs holds token ids in \[\d+, 3\d\], outside .*vocab_size=32"),
    (data.TokenData(np.arange(4000) % 32, np.arange(8) % 32, 32), {}, r"the val split has 8 tokens, too few for seq_len=8"),
])
def test_train_refuses_data_that_does_not_fit_before_any_step(data, kw, match, tmp_path):
    ckpt = tmp_path / "run.pt"
    with pytest.raises(ValueError, match=match):
        _train(data, checkpoint_path=str(ckpt), checkpoint_every=1, **kw)
    assert CountForwards.calls == 0 and not ckpt.exists()


def test_masked_targets_pass_the_vocabulary_check():
    result = _train(Data(targets_masked=True))
    assert result.final["steps"] == 3 and CountForwards.calls > 0


# ------------------------------------------------------------------ degenerate fits

def test_isoflop_fit_on_constant_loss_raises_with_the_reason():
    C, N = [1e18] * 3 + [1e19] * 3, [1e6, 2e6, 4e6] * 2
    with pytest.raises(ValueError, match=r"loss at budget 1e\+18 is flat in N: .*no minimum"):
        scaling.fit_isoflop(C, N, [3.0] * 6, n_bootstrap=0)
    with pytest.raises(ValueError, match="distinct sizes"):
        scaling.fit_isoflop(C, [1e6, 1e6, 2e6] * 2, [3.0, 2.9, 3.1] * 2, n_bootstrap=0)
    # a real (if shallow) minimum still fits: curvature 1e-3 of the loss is far above float noise
    x = np.log(np.array(N, float))
    loss = 3.0 + 1e-3 * (x - x[:3].mean()) ** 2
    fit = scaling.fit_isoflop(C, N, loss, n_bootstrap=0)
    assert fit.vertices["n_opt"].iloc[0] == pytest.approx(np.exp(x[:3].mean()), rel=1e-6)


def test_parametric_fit_on_identical_or_constant_points_raises():
    with pytest.raises(ValueError, match=r"5 distinct \(N, D\) points .* got 1 among 5"):
        scaling.fit_parametric([1e6] * 5, [1e9] * 5, [3.0] * 5)
    with pytest.raises(ValueError, match="N takes the single value"):
        scaling.fit_parametric([1e6] * 5, [1e9, 2e9, 3e9, 4e9, 5e9], [3.0, 2.9, 2.8, 2.7, 2.6])
    N, D = [1e6, 2e6, 4e6, 8e6, 16e6], [4e9, 1e9, 3e9, 2e9, 5e9]
    with pytest.raises(ValueError, match="loss is constant"):
        scaling.fit_parametric(N, D, [3.0] * 5)
    with pytest.raises(ValueError, match="loss is constant"):
        scaling.fit_parametric_grid(N, D, [3.0] * 5)
