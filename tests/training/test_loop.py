"""lib.training: schedule per optimizer step, gradient accumulation, exact resume, divergence, DDP."""

import copy
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from lib.models import ModelConfig, Transformer
from lib.schedules import WarmupCosine
from lib.training import TrainConfig, TrainingDiverged, evaluate, load_checkpoint, train


class ToyData:
    """A learnable stream (noisy counting mod 32) following the lib.data.TokenData contract."""

    vocab_size = 32
    entropy_rate = None

    def __init__(self, n=20_000, seed=0):
        rng = np.random.default_rng(seed)
        stream = (np.arange(n) + (rng.random(n) < 0.1) * rng.integers(0, 32, n)) % 32
        self.train, self.val = stream[: n * 3 // 4], stream[n * 3 // 4:]

    def batch(self, split, step, batch_size, seq_len, seed=0, rank=0, world_size=1):
        arr = self.train if split == "train" else self.val
        rng = np.random.default_rng([seed, step])
        starts = rng.integers(0, len(arr) - seq_len - 1, size=batch_size * world_size)
        starts = starts[rank * batch_size:(rank + 1) * batch_size]
        idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
        chunk = torch.from_numpy(arr[idx].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]

    def eval_batches(self, seq_len, batch_size, max_batches=None):
        n_windows = (len(self.val) - 1) // seq_len
        for b, start in enumerate(range(0, n_windows, batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            rows = np.arange(start, min(start + batch_size, n_windows)) * seq_len
            idx = rows[:, None] + np.arange(seq_len + 1)[None, :]
            chunk = torch.from_numpy(self.val[idx].astype(np.int64))
            yield chunk[:, :-1], chunk[:, 1:]


def model(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=2, max_seq_len=16, **kw))


def config(**kw):
    base = dict(steps=12, batch_size=8, seq_len=16, lr=3e-3, progress=False, eval_batches=2, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_learns_and_reports_metrics():
    data = ToyData()
    m = model()
    before = evaluate(m, data, 16, 8, 4)
    result = train(m, data, config(steps=60, eval_every=20))
    assert result.final["val_loss"] < before["loss"] - 0.5
    assert result.final["val_perplexity"] == pytest.approx(np.exp(result.final["val_loss"]))
    assert 0 <= result.final["val_accuracy"] <= 1 and result.final["tokens"] == 60 * 8 * 16
    assert result.history["val_loss"].notna().sum() == 3  # steps 20, 40, 60


def test_schedule_is_stepped_once_per_optimizer_step_under_accumulation():
    data = ToyData()
    schedule = WarmupCosine(total_steps=12, warmup_steps=3, min_lr_ratio=0.1)
    runs = [train(model(), data, config(grad_accum=g, schedule=schedule)) for g in (1, 4)]
    expected = 3e-3 * schedule.curve(np.arange(12))
    for r in runs:  # the LR used at each optimizer step follows the schedule, whatever grad_accum
        np.testing.assert_allclose(r.history["lr"].to_numpy(), expected, rtol=1e-12)
    # and accumulation over 4 micro-batches gives the same weights as one full batch
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


class CrashAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            raise KeyboardInterrupt("simulated crash")


def test_resume_after_a_crash_gives_identical_weights(tmp_path):
    data = ToyData()
    reference = train(model(), data, config())
    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(model(), data, config(checkpoint_path=str(ckpt), checkpoint_every=4), callbacks=[CrashAt(7)])
    assert load_checkpoint(ckpt)["step"] == 4
    # a fresh process would rebuild the model from another init: resume must overwrite it
    resumed = train(model(seed=123), data, config(checkpoint_path=str(ckpt), checkpoint_every=4))
    for a, b in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(reference.history["lr"], resumed.history["lr"])
    assert list(resumed.history["step"]) == list(range(1, 13))


def test_divergence_stops_with_a_clear_message():
    data = ToyData()
    with pytest.raises(TrainingDiverged, match="diverged at step"):
        train(model(), data, config(steps=40, lr=50.0, grad_clip=None,
                                    schedule=WarmupCosine(total_steps=40)))
    result = train(model(), data, config(steps=40, lr=50.0, grad_clip=None, on_divergence="stop",
                                         schedule=WarmupCosine(total_steps=40)))
    assert result.final["diverged"] and result.final["steps"] < 40


class ScriptedLoss(torch.nn.Module):
    """A "model" whose training loss follows a script (one value per step)."""

    def __init__(self, losses):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.losses, self.calls = list(losses), 0

    def forward(self, x, y=None):
        value = self.losses[min(self.calls, len(self.losses) - 1)]
        self.calls += 1
        return types.SimpleNamespace(loss=self.w * 0 + value, logits=torch.zeros(*x.shape, ToyData.vocab_size))


def test_a_spike_on_a_near_zero_loss_is_not_a_divergence():
    """10x the best loss but below the first loss (a memorised task's spike) trains on; above
    both, or NaN, stops."""
    spike = [3.0, 0.5, 0.01, 0.005, 0.2, 0.004, 0.004, 0.004]
    result = train(ScriptedLoss(spike), ToyData(), config(steps=8, on_divergence="stop"))
    assert not result.final["diverged"] and result.final["steps"] == 8
    for losses in ([3.0, 0.5, 6.0, 0.1], [3.0, 0.5, float("nan"), 0.1]):   # the third step diverges
        with pytest.raises(TrainingDiverged, match="diverged at step 3:"):
            train(ScriptedLoss(losses), ToyData(), config(steps=4))
        stopped = train(ScriptedLoss(losses), ToyData(), config(steps=4, on_divergence="stop"))
        assert stopped.history["step"].iloc[-1] == 3 and stopped.final["steps"] == 3


def test_callbacks_see_every_step_and_can_stop():
    seen = []

    class Recorder:
        def on_step_start(self, state):
            seen.append(("start", state.step))

        def on_step_end(self, state):
            seen.append(("end", state.step))
            state.stop = state.step == 5

    result = train(model(), ToyData(), config(), callbacks=[Recorder()])
    assert seen[:4] == [("start", 0), ("end", 1), ("start", 1), ("end", 2)]
    assert result.final["steps"] == 5


@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), "steps"), (dict(grad_accum=3), "grad_accum"), (dict(lr=-1.0), "lr"),
    (dict(schedule=WarmupCosine(total_steps=99)), "total_steps"), (dict(on_divergence="x"), "on_divergence"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        config(**kw)


@pytest.mark.parametrize("kw, match", [
    (dict(seed="a"), r"seed must be an integer >= 0, got 'a'"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.0), "seed"),                                # a float is not an integer
    (dict(lr=True), r"lr must be a finite number > 0.0, got True"),   # a bool is not a number
    (dict(lr=float("nan")), "lr"),
    (dict(steps=12.0), "steps must be an integer"),
    (dict(batch_size=True), "batch_size"),
    (dict(grad_accum=2.0), "grad_accum"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(weight_decay=False), "weight_decay"),
    (dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    (dict(betas=(0.9,)), "betas"),
    (dict(grad_clip=0), "grad_clip"),
    (dict(eval_every=1.5), "eval_every"),
    (dict(eval_batches=0), "eval_batches"),
    (dict(eval_batch_size=True), "eval_batch_size"),
    (dict(checkpoint_every=-1), "checkpoint_every"),
    (dict(log_every=0), "log_every"),
    (dict(divergence_factor=1), "divergence_factor"),
    (dict(divergence_factor=True), "divergence_factor"),
    (dict(resume=1), "resume"),
    (dict(progress="no"), "progress"),
    (dict(checkpoint_path=3), "checkpoint_path"),
])
def test_config_values_are_checked_by_name(kw, match):
    with pytest.raises(ValueError, match=match):
        config(**kw)


def test_config_takes_numpy_numbers_as_plain_python():
    cfg = config(steps=np.int64(12), batch_size=np.int32(8), seed=np.int64(3), lr=np.float32(0.5),
                 betas=[0.9, np.float64(0.99)], grad_clip=1)
    assert (cfg.steps, cfg.batch_size, cfg.seed) == (12, 8, 3)
    assert all(type(v) is int for v in (cfg.steps, cfg.batch_size, cfg.seed))
    assert cfg.lr == 0.5 and type(cfg.lr) is float and cfg.betas == (0.9, 0.99) and cfg.grad_clip == 1.0
    json.dumps({k: v for k, v in vars(cfg).items() if k != "schedule"})  # checkpoint-safe types


def test_evaluate_and_default_optimizer_check_their_arguments():
    from lib.training import default_optimizer, default_schedule

    net = model()
    with pytest.raises(ValueError, match="seq_len"):
        evaluate(net, ToyData(), seq_len=16.0)
    with pytest.raises(ValueError, match="max_batches"):
        evaluate(net, ToyData(), seq_len=16, max_batches=0)
    with pytest.raises(ValueError, match="lr"):
        default_optimizer(net, lr=True)
    with pytest.raises(ValueError, match="betas"):
        default_optimizer(net, lr=1e-3, betas=(1.5, 0.9))
    with pytest.raises(ValueError, match="steps"):
        default_schedule(10.0)
    assert default_schedule(np.int64(10)).total_steps == 10


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    spec = {"model": dict(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=16),
            "corpus": dict(n_train_tokens=20_000, n_val_tokens=4_000, vocab_size=64),
            "train": dict(steps=5, batch_size=4, seq_len=16, eval_batches=1, device="cpu")}
    single = dict(spec, train=dict(spec["train"], batch_size=8))
    (tmp_path / "ddp.json").write_text(json.dumps(spec))
    (tmp_path / "single.json").write_text(json.dumps(single))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(29500 + os.getpid() % 1000), "-m", "lib.training",
                    "--config", str(tmp_path / "ddp.json"), "--out", str(tmp_path / "ddp.pt")],
                   check=True, env=env, timeout=240)
    subprocess.run([sys.executable, "-m", "lib.training", "--config", str(tmp_path / "single.json"),
                    "--out", str(tmp_path / "single.pt")], check=True, env=env, timeout=240)
    a, b = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not __import__("shutil").which(os.environ.get("CXX", "g++")),
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_follows_eager():
    """compile=True trains the same model to the same losses (fused kernels round differently,
    so not bitwise) and leaves the returned module uncompiled with the same state_dict keys."""
    data = ToyData()
    eager = train(model(), data, config(steps=4, eval_batches=1))
    compiled = train(model(), data, config(steps=4, eval_batches=1, compile=True))
    np.testing.assert_allclose(compiled.history["loss"], eager.history["loss"], rtol=1e-4)
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())
    with pytest.raises(ValueError, match="compile"):
        config(compile="yes")


def test_default_optimizer_is_fused_adamw_matching_the_per_tensor_loop():
    from lib.training import adamw, default_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    reference = copy.deepcopy(model)
    fused = default_optimizer(model, lr=1e-2)
    loop = torch.optim.AdamW([{"params": [p for p in reference.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                              {"params": [p for p in reference.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.95), foreach=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    x = torch.randn(16, 6)
    for _ in range(5):
        for m, opt in ((model, fused), (reference, loop)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # An explicit foreach/fused choice is the caller's.
    assert not adamw([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, foreach=False).defaults["fused"]


def test_adamw_lives_with_the_optimizers():
    from lib import training
    from lib.training import loop, optim

    assert training.adamw is optim.adamw is loop.adamw
