"""Fault injection: SIGKILL sweeps and training at random moments, corrupt checkpoints.

A killed sweep loses no finished run and repeats none, and its SQLite file stays intact; a run
claimed on another host whose process dies is retried once its lease lapses, and not before;
a killed training run resumes bit-identically to an uninterrupted one; truncated, empty,
bit-flipped, foreign and other-model checkpoints are refused with an error naming the file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.models import ModelConfig, Transformer
from lib.training import (
    CheckpointError,
    RunStore,
    TrainConfig,
    load_checkpoint,
    make_run_id,
    run_sweep,
    train,
)

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

SWEEP_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from lib.training import RunStore, run_sweep
    db, log, configs, host, lease_s = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    store = RunStore(db, lease_s=lease_s)
    if host != "-":
        store.host = host                      # stands in for another machine sharing the file

    def run(config):
        with open(log, "a") as f:
            f.write(f"start {config['i']}\\n")
        time.sleep(config["pause"])
        return {"square": config["i"] ** 2, "history": [{"step": k, "loss": 1 / (k + 1)} for k in range(3)]}

    run_sweep(store, "grid", configs, run, progress=False)
""")


def _sweep(tmp_path, log, configs, host="-", lease_s=60.0):
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "runs.sqlite"), str(log),
                             json.dumps(configs), host, str(lease_s)], env=ENV)


def _wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _started(log: Path) -> list[int]:
    return [int(w) for w in log.read_text().split()[1::2]] if log.exists() else []


def test_a_sweep_killed_at_random_moments_loses_and_repeats_nothing(tmp_path):
    rng = np.random.default_rng(2026)
    configs = [{"i": i, "pause": float(rng.uniform(0.01, 0.12))} for i in range(16)]
    db = tmp_path / "runs.sqlite"
    done_before: set[int] = set()
    interrupted = 0
    for attempt in range(4):
        log = tmp_path / f"log{attempt}.txt"
        proc = _sweep(tmp_path, log, configs)
        _wait_for(lambda: _started(log) or proc.poll() is not None, what="the sweep's first run")  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.3))      # mid-run, between runs, or inside a commit
        interrupted += proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = RunStore(db)
        assert store.integrity_check() == "ok"
        frame = store.frame("grid")
        done = frame[frame.status == "done"]
        assert done_before <= set(done["i"]), "a finished run was lost"
        assert not set(_started(log)) & done_before, "a finished run was run again"
        assert (done["square"] == done["i"] ** 2).all()
        assert all(len(store.history(rid)) == 3 for rid in done["run_id"])
        assert (frame.status == "running").sum() <= 1       # at most the run the kill interrupted
        done_before = set(done["i"])
    assert interrupted >= 3 and len(done_before) < len(configs)
    ran = []
    df = run_sweep(RunStore(db), "grid", configs, lambda c: ran.append(c["i"]) or {"square": c["i"] ** 2},
                   progress=False)
    assert (df.status == "done").all() and sorted(df["i"]) == list(range(len(configs)))
    assert not set(ran) & done_before and set(ran) | done_before == set(range(len(configs)))
    assert (df["square"] == df["i"] ** 2).all() and RunStore(db).integrity_check() == "ok"


def test_a_run_of_a_dead_process_on_another_host_is_retried_when_its_lease_lapses(tmp_path):
    lease_s = 2.0
    configs = [{"i": 0, "pause": 120.0}, {"i": 1, "pause": 0.0}]
    log = tmp_path / "log.txt"
    proc = _sweep(tmp_path, log, configs[:1], host="other-host", lease_s=lease_s)
    try:
        _wait_for(lambda: _started(log) == [0], what="the other host's run")
        store = RunStore(tmp_path / "runs.sqlite")
        busy = make_run_id("grid", configs[0])
        first = store.get(busy)["lease_expires"]
        time.sleep(1.5 * lease_s)              # longer than a lease: only the heartbeat keeps it
        assert proc.poll() is None and store.get(busy)["lease_expires"] > first
        with pytest.warns(RuntimeWarning, match=f"1 of 2 runs .* still running elsewhere.*{busy} running on other-host"):
            df = run_sweep(store, "grid", configs, lambda c: {"square": 0}, progress=False)
        assert df["i"].tolist() == [1] and df.attrs["busy"] == [busy]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = time.time()
    assert store.claim("grid", configs[0])[1] == "busy"      # its lease has not lapsed yet
    _wait_for(lambda: store.claim("grid", configs[0])[1] == "claimed", timeout=lease_s + 10, what="the lease")
    assert time.time() - killed <= lease_s + 2.0
    assert store.finish(busy, {"square": 0}, 1.0)
    assert len(store.require_complete("grid", configs)) == 2


TRAIN_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from lib.data import synthetic_corpus
    from lib.models import ModelConfig, Transformer
    from lib.training import TrainConfig, train
    ckpt, out, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    data = synthetic_corpus(n_train_tokens=20_000, n_val_tokens=2_000, vocab_size=32, seed=0)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=2, max_seq_len=16,
                                    dropout=0.1))                 # dropout: the RNG state must resume too

    class Slow:
        def on_step_end(self, state):
            time.sleep(pause)

    saving = dict(checkpoint_path=ckpt, checkpoint_every=1) if ckpt != "-" else {}
    result = train(model, data, TrainConfig(steps=30, batch_size=8, seq_len=16, eval_every=10, eval_batches=2,
                                            seed=3, progress=False, **saving), callbacks=[Slow()])
    timings = ("elapsed_s", "tokens_per_s")
    torch.save({"state": model.state_dict(), "final": {k: v for k, v in result.final.items() if k not in timings},
                "history": result.history.drop(columns=["elapsed_s"]).to_dict("list")}, out)
""")


def _train(tmp_path, ckpt, out, pause):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(ckpt), str(out), str(pause)], env=ENV)


def _step(ckpt: Path) -> int:
    try:
        return load_checkpoint(ckpt)["step"]
    except CheckpointError:
        return -1


def test_training_killed_mid_run_resumes_bit_identically(tmp_path):
    rng = np.random.default_rng(7)
    reference = _train(tmp_path, "-", tmp_path / "reference.pt", 0.0)
    ckpt = tmp_path / "run.pt"
    reached = 0
    for _ in range(2):                          # kill, resume, kill again, resume to the end
        proc = _train(tmp_path, ckpt, tmp_path / "never.pt", 0.05)
        _wait_for(lambda: _step(ckpt) > reached or proc.poll() is not None,  # noqa: B023
                  timeout=180, what="a new checkpoint")
        time.sleep(rng.uniform(0.0, 0.4))
        assert proc.poll() is None, "the run ended before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reached = _step(ckpt)
        assert 0 < reached < 30
    assert not (tmp_path / "never.pt").exists()
    resumed = _train(tmp_path, ckpt, tmp_path / "resumed.pt", 0.0)
    assert reference.wait(timeout=120) == 0 and resumed.wait(timeout=120) == 0
    a, b = torch.load(tmp_path / "reference.pt"), torch.load(tmp_path / "resumed.pt")
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    np.testing.assert_equal(b["final"], a["final"])          # NaN == NaN here (unevaluated rows)
    np.testing.assert_equal(b["history"], a["history"])
    assert a["final"]["steps"] == 30 and np.isfinite(a["final"]["val_loss"])


# ------------------------------------------------------------------ corrupt checkpoints

class Data:
    vocab_size = 32

    def __init__(self):
        stream = np.arange(4000) % 32
        self.train, self.val = stream[:3000], stream[3000:]

    def batch(self, split, step, batch_size, seq_len, seed=0, rank=0, world_size=1):
        arr = self.train if split == "train" else self.val
        starts = np.random.default_rng([seed, step]).integers(0, len(arr) - seq_len - 1, batch_size)
        rows = torch.from_numpy(arr[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
        return rows[:, :-1], rows[:, 1:]

    def eval_batches(self, seq_len, batch_size, max_batches=None):
        yield self.batch("val", 0, batch_size, seq_len)


def _model(d_model=32):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=32, d_model=d_model, n_layers=1, n_heads=2, max_seq_len=16))


def _config(path, **kw):
    return TrainConfig(**{"steps": 4, "batch_size": 4, "seq_len": 8, "progress": False,
                          "checkpoint_path": str(path), "checkpoint_every": 2, **kw})


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "good.pt"
    train(_model(), Data(), _config(path, steps=2))
    return path.read_bytes()


def _flip(raw: bytes) -> bytes:
    mid = len(raw) // 2
    return raw[:mid] + bytes(b ^ 0xFF for b in raw[mid:mid + 64]) + raw[mid + 64:]


@pytest.mark.parametrize("damage, match", [
    (lambda raw: raw[: len(raw) // 2], "not a readable torch file"),
    (lambda raw: b"", r"empty \(0 bytes\)"),
    (_flip, "corrupt|not a readable torch file"),
    (lambda raw: np.random.default_rng(0).bytes(len(raw)), "not a readable torch file"),
], ids=["truncated", "zero-byte", "bit-flipped", "random-bytes"])
def test_damaged_checkpoints_are_refused_naming_the_file(tmp_path, good_checkpoint, damage, match):
    path = tmp_path / "damaged.pt"
    path.write_bytes(damage(good_checkpoint))
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=match) as err:   # a resume refuses it too, before training
        train(_model(), Data(), _config(path))
    assert str(path) in str(err.value) and path.read_bytes() == before   # and leaves the file as it was


def test_another_models_or_tools_checkpoint_is_refused_naming_the_file(tmp_path):
    other = tmp_path / "other.pt"
    train(_model(d_model=16), Data(), _config(other, steps=2))
    with pytest.raises(CheckpointError, match=r"made with other settings.*model\.d_model: 16 -> 32") as err:
        train(_model(), Data(), _config(other))
    assert str(other) in str(err.value)
    with pytest.raises(CheckpointError, match="does not fit this model") as err:
        train(_model(), Data(), _config(other, resume_changed_config=True))
    assert str(other) in str(err.value)
    foreign = tmp_path / "state_dict.pt"
    torch.save(_model().state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a .* file") as err:
        train(_model(), Data(), _config(foreign))
    assert str(foreign) in str(err.value)


def test_the_store_file_survives_a_reader_during_kills(tmp_path):
    """Readers of a store being killed and resumed never see a partial row."""
    configs = [{"i": i, "pause": 0.02} for i in range(10)]
    log = tmp_path / "log.txt"
    proc = _sweep(tmp_path, log, configs)
    reader = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        while proc.poll() is None:
            if (tmp_path / "runs.sqlite").exists():
                try:
                    reader = reader or RunStore(tmp_path / "runs.sqlite")
                except ValueError:             # the schema is being created
                    continue
                frame = reader.frame("grid")
                if (frame.status == "done").any():
                    assert frame.loc[frame.status == "done", "square"].notna().all()
                if len(_started(log)) >= 4:
                    proc.send_signal(signal.SIGKILL)
            time.sleep(0.01)
    proc.wait()
    assert reader is not None and reader.integrity_check() == "ok"
