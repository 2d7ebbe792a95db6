"""lib.training checkpoints: exact resume (weights and final metrics), settings compared on resume,
no diverged state saved, corrupt/foreign files named in a ValueError, weights_only-loadable."""

import re
import shutil

import numpy as np
import pytest
import torch

from lib.models import ModelConfig, Transformer
from lib.schedules import WarmupCosine
from lib.training import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    config_differences,
    load_checkpoint,
    save_checkpoint,
    train,
)
from tests.training.test_loop import ToyData, config

TIMINGS = ("elapsed_s", "tokens_per_s")


def model(seed=0, **kw):
    torch.manual_seed(seed)
    shape = dict(vocab_size=32, d_model=32, n_layers=1, n_heads=2, max_seq_len=16)
    return Transformer(ModelConfig(**{**shape, **kw}))


def metrics(result):
    return {k: v for k, v in result.final.items() if k not in TIMINGS}


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


class StopAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        state.stop = state.stop or state.step == self.step


class Steps:
    def __init__(self):
        self.seen = []

    def on_step_start(self, state):
        self.seen.append(state.step)


@pytest.fixture(scope="module")
def data():
    return ToyData()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """A finished 8-step run with a checkpoint, and its result."""
    path = tmp_path_factory.mktemp("finished") / "run.pt"
    result = train(model(), data, config(steps=8, checkpoint_path=str(path), checkpoint_every=4))
    return path, result


@pytest.fixture
def ckpt(tmp_path, finished):
    path = tmp_path / "run.pt"
    shutil.copy(finished[0], path)
    return path


def test_interrupted_run_resumes_to_identical_weights_and_final_metrics(tmp_path, data):
    """Dropout draws from the torch RNG, so this also checks that its state is restored."""
    kw = dict(steps=8, eval_every=3, grad_accum=2)
    reference = train(model(dropout=0.1), data, config(**kw))
    path = tmp_path / "run.pt"
    stopped = train(model(dropout=0.1), data, config(checkpoint_path=str(path), checkpoint_every=2, **kw),
                    callbacks=[StopAt(3)])
    assert stopped.final["steps"] == 3 and load_checkpoint(path)["step"] == 3
    steps = Steps()
    resumed = train(model(seed=7, dropout=0.1), data, config(checkpoint_path=str(path), checkpoint_every=2, **kw),
                    callbacks=[steps])
    assert steps.seen == list(range(3, 8))
    assert same_weights(reference.model, resumed.model)
    assert metrics(resumed) == metrics(reference) and np.isfinite(resumed.final["train_loss"])
    for column in ("step", "loss", "lr", "grad_norm", "val_loss"):
        np.testing.assert_array_equal(resumed.history[column], reference.history[column])


def test_rerun_on_a_finished_checkpoint_reports_the_finished_run_without_training(data, finished):
    path, first = finished
    steps = Steps()
    again = train(model(seed=3), data, config(steps=8, checkpoint_path=str(path), checkpoint_every=4),
                  callbacks=[steps])
    assert steps.seen == [] and again.final == first.final and np.isfinite(again.final["train_loss"])
    assert same_weights(first.model, again.model)
    assert len(again.history) == 8


@pytest.mark.parametrize("train_kw, model_kw, field", [
    (dict(lr=1e-3), {}, "train.lr"),
    (dict(seed=1), {}, "train.seed"),
    (dict(batch_size=4), {}, "train.batch_size"),
    (dict(seq_len=8), {}, "train.seq_len"),
    (dict(steps=6), {}, "train.steps"),
    (dict(steps=10), {}, "train.steps"),
    (dict(weight_decay=0.0), {}, "weight_decay"),
    (dict(eval_batches=1), {}, "train.eval_batches"),
    (dict(schedule=WarmupCosine(total_steps=8, warmup_steps=2)), {}, "train.schedule"),
    ({}, dict(dropout=0.1), "model.dropout"),
    ({}, dict(d_model=64), "model.d_model"),
])
def test_resuming_with_changed_settings_names_each_field(data, ckpt, train_kw, model_kw, field):
    cfg = config(**{"steps": 8, "checkpoint_path": str(ckpt), "checkpoint_every": 4, **train_kw})
    with pytest.raises(ValueError, match=re.escape(field)) as err:
        train(model(**model_kw), data, cfg)
    assert str(ckpt) in str(err.value) and "->" in str(err.value)


def test_settings_that_do_not_change_the_run_are_not_compared(data, ckpt, finished):
    again = train(model(), data, config(steps=8, checkpoint_path=str(ckpt), checkpoint_every=1, log_every=3,
                                        eval_every=2, desc="other", on_divergence="stop"))
    assert again.final == finished[1].final


def test_resume_changed_config_continues_under_the_new_settings(tmp_path, data):
    path = tmp_path / "run.pt"
    schedule = WarmupCosine(total_steps=8, warmup_steps=2)
    train(model(), data, config(steps=8, schedule=schedule, checkpoint_path=str(path), checkpoint_every=2),
          callbacks=[StopAt(4)])
    with pytest.raises(ValueError, match="resume_changed_config"):
        train(model(), data, config(steps=8, lr=1e-3, schedule=schedule, checkpoint_path=str(path)))
    resumed = train(model(), data, config(steps=8, lr=1e-3, schedule=schedule, checkpoint_path=str(path),
                                          checkpoint_every=2, resume_changed_config=True))
    lrs = resumed.history["lr"].to_numpy()
    np.testing.assert_allclose(lrs[:4], 3e-3 * schedule.curve(np.arange(4)), rtol=1e-12)  # the saved steps
    np.testing.assert_allclose(lrs[4:], 1e-3 * schedule.curve(np.arange(4, 8)), rtol=1e-12)  # the new peak
    assert resumed.final["steps"] == 8
    with pytest.raises(ValueError, match="beyond steps=6"):  # cannot un-train, even when forced
        train(model(), data, config(steps=6, checkpoint_path=str(path), resume_changed_config=True))
    with pytest.raises(ValueError, match="resume_changed_config"):
        config(resume_changed_config="yes")


def test_a_diverged_run_keeps_its_last_good_checkpoint(tmp_path, data):
    path = tmp_path / "run.pt"
    kw = dict(steps=16, grad_clip=None, schedule=WarmupCosine(total_steps=16, warmup_steps=4),
              checkpoint_path=str(path), checkpoint_every=2)
    diverged = train(model(), data, config(lr=5.0, on_divergence="stop", **kw))
    assert diverged.final["diverged"]
    saved = load_checkpoint(path)
    assert 0 < saved["step"] < diverged.final["steps"] and np.isfinite(saved["loss"])
    steps = Steps()
    rerun = train(model(), data, config(lr=1.0, resume_changed_config=True, **kw), callbacks=[steps])
    assert steps.seen[0] == saved["step"]
    assert not rerun.final["diverged"] and rerun.final["steps"] == 16


def _flip(raw, at):
    raw = bytearray(raw)
    raw[at] ^= 0xFF
    return bytes(raw)


@pytest.mark.parametrize("damage", ["truncated", "zero_bytes", "random_bytes", "flip_mid", "flip_3/4",
                                    "foreign_state_dict", "other_model"])
def test_damaged_or_foreign_files_raise_a_value_error_naming_the_path(tmp_path, data, ckpt, damage):
    raw = ckpt.read_bytes()
    if damage == "truncated":
        ckpt.write_bytes(raw[: len(raw) // 2])
    elif damage == "zero_bytes":
        ckpt.write_bytes(b"")
    elif damage == "random_bytes":
        ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "flip_mid":
        ckpt.write_bytes(_flip(raw, len(raw) // 2))
    elif damage == "flip_3/4":
        ckpt.write_bytes(_flip(raw, 3 * len(raw) // 4))
    elif damage == "foreign_state_dict":
        torch.save(model().state_dict(), ckpt)
    else:  # another model's checkpoint: different shapes, even when changed settings are allowed
        ckpt.unlink()
        train(model(d_model=64), data, config(steps=2, checkpoint_path=str(ckpt), checkpoint_every=1))
    if damage != "other_model":
        with pytest.raises(CheckpointError, match=re.escape(str(ckpt))):
            load_checkpoint(ckpt)
    for force in (False, True):
        with pytest.raises(ValueError, match=re.escape(str(ckpt))):
            train(model(), data, config(steps=8, checkpoint_path=str(ckpt), checkpoint_every=4,
                                        resume_changed_config=force))


def test_the_file_is_plain_data_for_weights_only_loading(ckpt):
    envelope = torch.load(ckpt, weights_only=True)
    assert envelope["format"] == CHECKPOINT_FORMAT and len(envelope["sha256"]) == 64
    payload = load_checkpoint(ckpt)
    assert payload["step"] == 8 and payload["config"]["train.lr"] == 3e-3
    assert payload["config"]["model.d_model"] == 32 and payload["config"]["optimizer[0].class"] == "AdamW"
    assert np.isfinite(payload["loss"]) and payload["final"]["steps"] == 8


def test_save_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "sub" / "x.pt"
    save_checkpoint(path, {"a": torch.arange(3), "b": [1.5, None, "s"]})
    save_checkpoint(path, {"a": torch.arange(4), "b": {"k": (1, 2)}})
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]  # no temporary file left
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["a"], torch.arange(4)) and loaded["b"] == {"k": (1, 2)}
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="mapping"):
        save_checkpoint(path, [1, 2])


def test_config_differences_lists_each_field_old_and_new():
    assert config_differences({"a": 1, "b": 2}, {"a": 1, "b": 2}) == []
    assert config_differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["b: 2 -> 3", "c: '<absent>' -> 4"]
