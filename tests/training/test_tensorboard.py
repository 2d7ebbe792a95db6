"""lib.training.tensorboard: the event files read back with TensorBoard's own EventAccumulator
hold the run's losses, per-group LRs (against the schedule's closed form), grad norms, tokens/s,
validation metrics and MoE routing statistics; sweeps write one run directory per run id."""

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lib.data import synthetic_corpus
from lib.models import ModelConfig, Transformer, routing_summary
from lib.schedules import WarmupCosine
from lib.training import (
    RunStore,
    TensorBoardLogger,
    TrainConfig,
    active_logdir,
    make_run_id,
    run_logdir,
    run_sweep,
    train,
)

DATA = synthetic_corpus(n_train_tokens=20_000, n_val_tokens=4_000, vocab_size=32, seed=0)
STEPS, PEAK = 8, 2e-3
SCHEDULE = WarmupCosine(total_steps=STEPS, warmup_steps=2, min_lr_ratio=0.1)


def _model(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, max_seq_len=16, **kw))


def _config(**kw):
    base = dict(steps=STEPS, batch_size=4, seq_len=16, lr=PEAK, schedule=SCHEDULE, progress=False,
                eval_every=4, eval_batches=2, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _scalars(path):
    acc = EventAccumulator(str(path))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_logger_writes_what_the_run_did(tmp_path):
    result = train(_model(), DATA, _config(), callbacks=[TensorBoardLogger(tmp_path / "run")])
    tags = _scalars(tmp_path / "run")
    hist = result.history
    steps = list(range(1, STEPS + 1))
    assert [s for s, _ in tags["train/loss"]] == steps
    assert [v for _, v in tags["train/loss"]] == pytest.approx(hist["loss"].tolist(), rel=1e-6)
    assert [v for _, v in tags["train/grad_norm"]] == pytest.approx(hist["grad_norm"].tolist(), rel=1e-6)
    # The LR each group used in step s (1-based) is the schedule's closed form at step s - 1;
    # the default AdamW has a decayed and a no-decay group, both logged.
    lr_tags = sorted(t for t in tags if t.startswith("train/lr/"))
    assert lr_tags == ["train/lr/0_adamw/0", "train/lr/0_adamw/1"]
    expected = [PEAK * SCHEDULE(s - 1) for s in steps]
    for tag in lr_tags:
        assert [v for _, v in tags[tag]] == pytest.approx(expected, rel=1e-6)
    assert expected[0] == 0.0 and expected[2] == pytest.approx(PEAK)  # warm-up from 0, then the peak
    tokens = [v for _, v in tags["train/tokens"]]
    assert tokens == [s * 4 * 16 for s in steps]
    rate = dict(tags["train/tokens_per_s"])
    assert all(v > 0 and math.isfinite(v) for v in rate.values())
    assert rate[1] == pytest.approx(64 / hist["elapsed_s"].iloc[0], rel=1e-5)
    evals = hist.dropna(subset=["val_loss"])
    assert [s for s, _ in tags["val/loss"]] == evals["step"].tolist() == [4, 8]
    assert [v for _, v in tags["val/loss"]] == pytest.approx(evals["val_loss"].tolist(), rel=1e-6)
    assert {"val/accuracy", "val/perplexity"} <= set(tags)
    assert not any(t.startswith("moe/") for t in tags)  # a dense model has no routing statistics


def test_moe_routing_statistics_are_those_of_the_training_forward(tmp_path):
    model = _model(mlp="moe", moe={"n_experts": 4, "top_k": 2})
    seen = []

    class Probe:  # routing_summary right after the step's training forward (before any eval)
        def on_step_end(self, state):
            if state.step == STEPS - 1:
                seen.append(routing_summary(model))

    train(model, DATA, _config(eval_every=0), callbacks=[TensorBoardLogger(tmp_path), Probe()])
    tags = _scalars(tmp_path)
    moe = {t.split("/", 1)[1]: dict(v) for t, v in tags.items() if t.startswith("moe/")}
    assert {"max_load_ratio", "load_cv", "router_entropy", "balance_loss", "z_loss"} <= set(moe)
    for key, value in seen[0].items():
        assert moe[key][STEPS - 1] == pytest.approx(value, rel=1e-5), key
    # top-2 of 4 experts: the load ratio lies in [1, 4/2] and the entropy below ln 4
    assert all(1.0 - 1e-6 <= v <= 2.0 + 1e-6 for v in moe["max_load_ratio"].values())
    assert all(0 < v < math.log(4) for v in moe["router_entropy"].values())


def test_sweeps_write_one_run_directory_per_run_id(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    configs = [{"lr": 1e-3, "seed": 0}, {"lr": 3e-3, "seed": 0}]

    def run(cfg):
        assert active_logdir() is not None
        return train(_model(), DATA, _config(steps=4, schedule=None, lr=cfg["lr"], eval_every=0))

    run_sweep(store, "tb", configs, run, progress=False, log_dir=tmp_path / "runs")
    dirs = sorted(p.name for p in (tmp_path / "runs" / "tb").iterdir())
    assert dirs == sorted(make_run_id("tb", c) for c in configs)
    for cfg in configs:
        tags = _scalars(tmp_path / "runs" / "tb" / make_run_id("tb", cfg))
        assert [s for s, _ in tags["train/loss"]] == [1, 2, 3, 4]
        assert max(v for _, v in tags["train/lr/0_adamw/0"]) == pytest.approx(cfg["lr"])
    assert active_logdir() is None  # the block ended with the sweep


def test_no_logging_outside_a_run_directory_and_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_RUNS_DIR", raising=False)
    store = RunStore(tmp_path / "runs.sqlite")
    run_sweep(store, "quiet", [{"seed": 0}],
              lambda cfg: train(_model(), DATA, _config(steps=2, schedule=None, eval_every=0)),
              progress=False)
    assert not any(tmp_path.glob("**/events.out.tfevents.*"))
    with run_logdir(tmp_path / "x"):
        assert active_logdir() == tmp_path / "x"
        with run_logdir(None):
            assert active_logdir() is None
    with pytest.raises(ValueError, match="log_dir"):
        TensorBoardLogger(3)
    with pytest.raises(ValueError, match="flush_secs"):
        TensorBoardLogger(tmp_path, flush_secs=0)
    with pytest.raises(ValueError, match="log_dir"):
        run_sweep(store, "quiet", [{"seed": 0}], lambda cfg: {}, log_dir=5)
