"""lib.training: atomic results store, resumable sweeps (killed mid-way), concurrent use."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lib.core import summarize
from lib.training import IncompleteSweep, RunStore, make_run_id, run_sweep

ROOT = Path(__file__).resolve().parent.parent

# A sweep script run in subprocesses: each run logs "start i" / "end i" to a shared file.
SWEEP_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from lib.training import RunStore, run_sweep
    db, log, n, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

    def run(config):
        with open(log, "a") as f:
            f.write(f"start {config['i']} {os.getpid()}\\n")
        time.sleep(pause)
        with open(log, "a") as f:
            f.write(f"end {config['i']} {os.getpid()}\\n")
        return {"square": config["i"] ** 2}

    run_sweep(RunStore(db), "grid", [{"i": i} for i in range(n)], run, progress=False)
""")


def _sweep_process(tmp_path, n, pause):
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "runs.sqlite"),
                             str(tmp_path / "log.txt"), str(n), str(pause)], env=env)


def _log(tmp_path) -> list[tuple[str, int]]:
    lines = (tmp_path / "log.txt").read_text().split()
    return [(lines[k], int(lines[k + 1])) for k in range(0, len(lines), 3)]


def test_run_id_is_canonical():
    a = make_run_id("s", {"lr": 1e-3, "betas": (0.9, 0.95), "seed": 1})
    assert a == make_run_id("s", {"seed": np.int64(1), "betas": [0.9, 0.95], "lr": np.float64(1e-3)})
    assert a != make_run_id("t", {"lr": 1e-3, "betas": (0.9, 0.95), "seed": 1})
    assert a != make_run_id("s", {"lr": 2e-3, "betas": (0.9, 0.95), "seed": 1})
    assert len(a) == 16 and int(a, 16) >= 0


def test_sweep_records_results_skips_done_and_retries_failed(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    calls = []

    def run(config):
        calls.append(config["x"])
        if config["x"] == 2 and len(calls) < 5:
            raise RuntimeError("boom")
        return {"y": config["x"] * 10, "nested": {"a": config["x"]},
                "history": pd.DataFrame({"step": [0, 1], "loss": [3.0, 2.0 - config["x"]]})}

    configs = [{"x": x, "seed": 7} for x in range(4)]
    df = run_sweep(store, "demo", configs, run, progress=False)
    assert calls == [0, 1, 2, 3]
    assert list(df["status"]) == ["done", "done", "failed", "done"]
    assert "RuntimeError: boom" in df.loc[2, "error"]
    assert df.loc[df.status == "done", "y"].tolist() == [0, 10, 30]
    assert df["nested.a"].tolist()[:2] == [0, 1] and (df["seed"] == 7).all()
    assert (df.loc[df.status == "done", "seconds"] >= 0).all()
    df = run_sweep(store, "demo", configs, run, progress=False)            # only the failed one reruns
    assert calls == [0, 1, 2, 3, 2] and (df["status"] == "done").all()
    assert df.set_index("x").loc[2, "attempts"] == 2 and df.set_index("x").loc[0, "attempts"] == 1
    assert df.set_index("x").loc[2, "error"] is None
    hist = store.history(make_run_id("demo", configs[3]))
    assert hist.to_dict("list") == {"step": [0, 1], "loss": [3.0, -1.0]}
    assert len(store.histories("demo")) == 8
    assert store.sweeps() == ["demo"] and len(store.frame()) == 4
    assert store.delete("demo") == 4 and store.frame().empty


def test_errors_can_raise_and_bad_results_fail(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(ZeroDivisionError):
        run_sweep(store, "r", [{"a": 1}], lambda c: {"v": 1 / 0}, progress=False, raise_errors=True)
    assert store.frame("r")["status"].tolist() == ["failed"]
    df = run_sweep(store, "r", [{"a": 1}], lambda c: {"v": 1 / 0}, progress=False, retry_failed=False)
    assert df["attempts"].tolist() == [1]
    df = run_sweep(store, "bad", [{"a": 1}, {"a": 2}], lambda c: 3.0 if c["a"] == 1 else {"v": object()},
                   progress=False)
    assert df["status"].tolist() == ["failed", "failed"]
    assert "must return a dict" in df.loc[0, "error"] and "not JSON-serializable" in df.loc[1, "error"]


def test_frame_values_and_name_collisions(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    df = run_sweep(store, "c", [{"lr": 0.1}], lambda c: {"lr": 0.05, "loss": float("nan"), "status": 1},
                   progress=False)
    row = df.iloc[0]
    assert row["lr"] == 0.1 and row["metrics.lr"] == 0.05 and row["metrics.status"] == 1
    assert row["status"] == "done" and math.isnan(row["loss"])
    assert store.get(row["run_id"])["config"] == {"lr": 0.1}
    assert store.get("nope") is None


def test_summarize_of_a_store_frame_matches_scipy_t_interval(tmp_path):
    """Sweep frames are summarised by lib.core.summarize (the store keeps no statistics of its own)."""
    rng = np.random.default_rng(0)
    losses = rng.normal(size=10)
    configs = [{"lr": lr, "seed": s} for lr in (1, 2) for s in range(5)]
    df = run_sweep(RunStore(tmp_path / "runs.sqlite"), "t", configs,
                   lambda c: {"loss": float(losses[(c["lr"] - 1) * 5 + c["seed"]])}, progress=False)
    out = summarize(df, "lr", "loss").set_index("lr")
    for lr in (1, 2):
        sample = df.loc[df.lr == lr, "loss"]
        lo, hi = stats.ttest_1samp(sample, 0.0).confidence_interval(0.95)
        assert out.loc[lr, "mean"] == pytest.approx(sample.mean())
        assert out.loc[lr, "ci"] == pytest.approx((hi - lo) / 2)
        assert (out.loc[lr, "ci_low"], out.loc[lr, "ci_high"]) == pytest.approx((lo, hi))
    with pytest.raises(ValueError, match="columns"):
        summarize(df, "wd", "loss")


def test_bad_input(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="not a usable SQLite"):
        RunStore(junk)
    with pytest.raises(ValueError, match="folder"):
        RunStore(tmp_path)
    store = RunStore(tmp_path / "ok.sqlite")
    fn = lambda c: {}
    with pytest.raises(ValueError, match="repeats configs"):
        run_sweep(store, "s", [{"a": 1}, {"a": 1}], fn, progress=False)
    with pytest.raises(ValueError, match=r"configs\[1\] must be a dict"):
        run_sweep(store, "s", [{"a": 1}, [("a", 2)]], fn, progress=False)
    with pytest.raises(ValueError, match="not JSON-serializable"):
        run_sweep(store, "s", [{"a": object()}], fn, progress=False)
    with pytest.raises(ValueError, match="sweep"):
        run_sweep(store, "", [{"a": 1}], fn, progress=False)
    with pytest.raises(ValueError, match="status"):
        store.frame(status="ok")
    assert store.frame().empty


@pytest.mark.parametrize("call, match", [
    (lambda store: RunStore(store.path, timeout=True), "timeout"),
    (lambda store: RunStore(store.path, timeout=0), "timeout"),
    (lambda store: RunStore(store.path, lease_s=float("inf")), "lease_s"),
    (lambda store: store.hold(None), "run_id"),
    (lambda store: run_sweep(store, "s", [{"a": 1}], lambda c: {}, progress=False, require_complete=1),
     "require_complete"),
    (lambda store: store.require_complete("s", [3]), r"configs\[0\]"),
    (lambda store: store.claim("s", {"a": 1}, steal=1), "steal"),
    (lambda store: store.claim(3, {"a": 1}), "sweep"),
    (lambda store: store.finish(store.claim("s", {"a": 2})[0], {}, seconds=True), "seconds"),
    (lambda store: store.fail("x", "boom", seconds=-1.0), "seconds"),
    (lambda store: store.delete(None), "sweep"),
    (lambda store: store.histories(""), "sweep"),
    (lambda store: run_sweep(store, "s", [{"a": 1}], lambda c: {}, progress="no"), "progress"),
    (lambda store: run_sweep(store, "s", [{"a": 1}], lambda c: {}, progress=False, retry_failed=0),
     "retry_failed"),
])
def test_arguments_are_checked_by_name(tmp_path, call, match):
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(ValueError, match=match):
        call(store)


def test_numpy_numbers_are_accepted(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite", timeout=np.float32(5))
    run_id, outcome = store.claim("s", {"seed": np.int64(3)}, steal=np.bool_(False))
    assert outcome == "claimed" and store.get(run_id)["seed"] == 3
    store.finish(run_id, {"loss": 1.0}, seconds=np.int64(2))
    assert store.get(run_id)["seconds"] == 2.0


def test_killed_sweep_resumes_without_losing_or_repeating_runs(tmp_path):
    n = 8
    proc = _sweep_process(tmp_path, n, pause=0.3)
    db = tmp_path / "runs.sqlite"
    deadline = time.time() + 60
    done = 0
    while done < 3 and time.time() < deadline:
        time.sleep(0.05)
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as con:
                    done = con.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()[0]
            except sqlite3.OperationalError:   # schema not created yet
                pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = RunStore(db)
    before = store.frame("grid")
    done_before = set(before.loc[before.status == "done", "i"])
    assert 3 <= len(done_before) < n
    assert (before.status == "running").sum() <= 1            # the run the kill interrupted
    # resume in this process: the dead process's "running" run is taken over
    ran = []
    df = run_sweep(store, "grid", [{"i": i} for i in range(n)],
                   lambda c: ran.append(c["i"]) or {"square": c["i"] ** 2}, progress=False)
    assert (df.status == "done").all() and len(df) == n
    assert sorted(df["i"]) == list(range(n)) and (df["square"] == df["i"] ** 2).all()
    assert not set(ran) & done_before and set(ran) | done_before == set(range(n))
    starts = [i for kind, i in _log(tmp_path) if kind == "start"]
    assert all(starts.count(i) == 1 for i in done_before)       # nothing done was repeated


def test_concurrent_sweeps_share_work_and_readers_never_fail(tmp_path):
    n = 12
    RunStore(tmp_path / "runs.sqlite")                          # create the schema first
    procs = [_sweep_process(tmp_path, n, pause=0.05) for _ in range(2)]
    reader = RunStore(tmp_path / "runs.sqlite")
    reads = 0
    while any(p.poll() is None for p in procs):
        df = reader.frame("grid")                                # must never raise or see partial rows
        if (df.status == "done").any():
            assert df.loc[df.status == "done", "square"].notna().all()
        reads += 1
        time.sleep(0.02)
    assert [p.returncode for p in procs] == [0, 0] and reads > 0
    df = reader.frame("grid")
    assert (df.status == "done").all() and sorted(df["i"]) == list(range(n))
    ends = [i for kind, i in _log(tmp_path) if kind == "end"]
    assert sorted(ends) == list(range(n))                        # each run executed exactly once


def test_interrupts_and_runs_owned_elsewhere(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def interrupted(config):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(store, "k", [{"a": 1}, {"a": 2}], interrupted, progress=False)
    df = store.frame("k")
    assert df["status"].tolist() == ["failed"] and df.loc[0, "error"] == "KeyboardInterrupt"
    # an interrupted run is ours and nothing renews it: the next sweep takes it
    df = run_sweep(store, "k", [{"a": 1}, {"a": 2}], lambda c: {"v": c["a"]}, progress=False)
    assert (df["status"] == "done").all() and df["attempts"].tolist() == [2, 1]


def _hold_elsewhere(path, run_id, lease_s, host="elsewhere", pid=1, owner="elsewhere:1:abc"):
    """Make ``run_id`` a running run claimed by another process with a lease ``lease_s`` ahead."""
    with sqlite3.connect(path) as con:
        con.execute("UPDATE runs SET status = 'running', host = ?, pid = ?, owner = ?, lease_expires = ?, "
                    "metrics = NULL WHERE run_id = ?", (host, pid, owner, time.time() + lease_s, run_id))


def test_runs_busy_elsewhere_are_reported_and_never_returned(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    configs = [{"a": 1}, {"a": 2}, {"a": 3}]
    run_sweep(store, "k", configs, lambda c: {"v": c["a"]}, progress=False)
    busy = make_run_id("k", configs[0])
    _hold_elsewhere(path, busy, lease_s=600)
    ran = []
    with pytest.warns(RuntimeWarning, match=rf"1 of 3 runs of sweep 'k' are still running elsewhere.*{busy}"):
        df = run_sweep(store, "k", configs, lambda c: ran.append(c["a"]) or {"v": c["a"]}, progress=False)
    assert ran == [] and df["a"].tolist() == [2, 3] and (df["status"] == "done").all()
    assert df.attrs["busy"] == [busy] and list(df.attrs["incomplete"]) == [busy]
    assert df.attrs["incomplete"][busy].startswith("running on elsewhere (lease until 20")
    with pytest.raises(IncompleteSweep, match=rf"1 of 3 runs are not done: {busy}: running on elsewhere") as err:
        run_sweep(store, "k", configs, lambda c: {"v": c["a"]}, progress=False, require_complete=True)
    assert list(err.value.missing) == [busy] and isinstance(err.value, RuntimeError)
    with pytest.raises(IncompleteSweep, match=busy):
        store.require_complete("k")
    assert store.require_complete("k", configs[1:])["a"].tolist() == [2, 3]
    # a failed run and a run never started are named too
    assert store.fail(make_run_id("k", configs[1]), "late") is False   # a done run stays done
    store.fail(store.claim("k", {"a": 4})[0], "Traceback ...\nRuntimeError: out of memory")
    with pytest.raises(IncompleteSweep) as err:
        store.require_complete("k", [*configs, {"a": 4}, {"a": 5}])
    assert list(err.value.missing.values())[1:] == ["failed: RuntimeError: out of memory", "not started"]
    with pytest.raises(IncompleteSweep, match="has no runs"):
        store.require_complete("nothing")
    # steal takes a live lease
    df = run_sweep(store, "k", configs, lambda c: {"v": c["a"]}, progress=False, steal=True)
    assert df.set_index("a")["status"].to_dict() == {1: "done", 2: "done", 3: "done", 4: "failed"}
    assert df.attrs["busy"] == [] and df["v"].tolist()[:3] == [1, 2, 3]
    assert df.set_index("a").loc[1, "host"] == store.host
    assert len(store.require_complete("k", configs)) == 3


def test_expired_leases_and_reused_pids_are_reclaimed(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    configs = [{"a": 1}, {"a": 2}, {"a": 3}]
    run_sweep(store, "k", configs, lambda c: {"v": c["a"]}, progress=False)
    ids = [make_run_id("k", c) for c in configs]
    _hold_elsewhere(path, ids[0], lease_s=-1.0)                       # died on another host: expired
    _hold_elsewhere(path, ids[1], lease_s=600, host=store.host, pid=os.getpid())   # our pid, not our token
    _hold_elsewhere(path, ids[2], lease_s=600, host=store.host, pid=1)  # pid 1 is alive: wait for the lease
    assert [store.claim("k", c)[1] for c in configs] == ["claimed", "claimed", "busy"]
    _hold_elsewhere(path, ids[2], lease_s=-1.0, host=store.host, pid=1)
    assert store.claim("k", configs[2])[1] == "claimed"
    assert [store.get(i)["owner"] for i in ids] == [store.owner] * 3


def test_heartbeat_renews_the_lease_and_notices_losing_it(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite", lease_s=0.15)
    run_id, outcome = store.claim("h", {"a": 1})
    assert outcome == "claimed"
    first = store.get(run_id)["lease_expires"]
    with store.hold(run_id) as lease:
        time.sleep(0.6)                                       # four lease lengths: only renewal keeps it
        now = time.time()
        assert store.get(run_id)["lease_expires"] > max(now, first)
        assert store.claim("h", {"a": 1})[1] == "busy"        # held by a live heartbeat of this process
        assert not lease.lost
        _hold_elsewhere(store.path, run_id, lease_s=600)      # expired and taken elsewhere meanwhile
        time.sleep(0.2)
        assert lease.lost
    assert store.get(run_id)["owner"] == "elsewhere:1:abc"
    assert store.claim("h", {"a": 1})[1] == "busy"


def test_a_result_is_recorded_once_and_fail_never_overwrites_done(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run_id, _ = store.claim("r", {"a": 1})
    with sqlite3.connect(store.path) as con:                  # another process recorded it first
        con.execute("UPDATE runs SET status = 'done', metrics = '{\"v\": 1}', owner = 'x' WHERE run_id = ?",
                    (run_id,))
    assert store.finish(run_id, {"v": 2}, 1.0) is False and store.get(run_id)["metrics"] == {"v": 1}
    assert store.fail(run_id, "late failure") is False and store.get(run_id)["status"] == "done"
    other, _ = store.claim("r", {"a": 2})
    _hold_elsewhere(store.path, other, lease_s=600)
    assert store.fail(other, "not ours") is False and store.get(other)["status"] == "running"
    mine, _ = store.claim("r", {"a": 3})
    assert store.finish(mine, {"v": 3}, 1.0) is True and store.finish(mine, {"v": 4}, 1.0) is True
    with pytest.raises(ValueError, match="is not in"):
        store.finish("0" * 16, {}, 1.0)
    assert store.integrity_check() == "ok"


def test_a_store_written_before_leases_is_upgraded(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as con:
        con.executescript("""CREATE TABLE runs (run_id TEXT PRIMARY KEY, sweep TEXT NOT NULL,
            config TEXT NOT NULL, seed INTEGER, status TEXT NOT NULL, metrics TEXT, error TEXT,
            started TEXT, finished TEXT, seconds REAL, host TEXT, pid INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE history (run_id TEXT PRIMARY KEY, records TEXT NOT NULL);""")
        con.execute("INSERT INTO runs (run_id, sweep, config, status, host, pid, attempts) "
                    "VALUES (?, 'old', '{\"a\":1}', 'running', 'gone-host', 7, 1)", (make_run_id("old", {"a": 1}),))
    store = RunStore(path)
    RunStore(path)                                            # opening twice adds nothing twice
    df = run_sweep(store, "old", [{"a": 1}], lambda c: {"v": 1}, progress=False)
    assert df["status"].tolist() == ["done"] and df["attempts"].tolist() == [2]
    assert store.integrity_check() == "ok"


def test_workers_run_a_sweep_in_other_processes_with_the_same_results(tmp_path):
    # ``dict`` is a run_fn a spawned process can import: its metrics are the config itself.
    configs = [{"seed": i, "x": 0.5 * i} for i in range(6)]
    here = run_sweep(RunStore(tmp_path / "one.sqlite"), "s", configs, dict, progress=False)
    there = run_sweep(RunStore(tmp_path / "two.sqlite"), "s", configs, dict, progress=False, workers=2)
    assert (there["status"] == "done").all() and len(there) == len(configs)
    assert there["run_id"].tolist() == here["run_id"].tolist()  # claimed in config order
    assert there["metrics.x"].tolist() == here["metrics.x"].tolist() == [c["x"] for c in configs]
    def pids(name):
        with sqlite3.connect(tmp_path / name) as con:
            return {pid for (pid,) in con.execute("SELECT pid FROM runs")}

    assert pids("one.sqlite") == {os.getpid()} and os.getpid() not in pids("two.sqlite")


def _die_in_a_worker(config):
    """A run_fn whose worker process dies on config 1 (the sweep-up in the parent runs it)."""
    import multiprocessing

    if config["seed"] == 1 and multiprocessing.parent_process() is not None:
        os._exit(3)
    return dict(config)


def test_a_dead_worker_is_reported_its_runs_swept_up_and_the_next_sweep_gets_new_processes(tmp_path):
    configs = [{"seed": i} for i in range(4)]
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.warns(RuntimeWarning, match="sweep processes failed"):
        df = run_sweep(store, "s", configs, _die_in_a_worker, progress=False, workers=2)
    assert (df["status"] == "done").all() and len(df) == 4
    later = run_sweep(store, "t", configs, dict, progress=False, workers=2)
    assert (later["status"] == "done").all() and later["metrics.seed"].tolist() == [0, 1, 2, 3]


def test_workers_refuse_a_run_fn_a_process_cannot_import_and_a_ray_sweep(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(ValueError, match="workers=2 needs run_fn to be a module-level function"):
        run_sweep(store, "s", [{"seed": 0}], lambda c: {"y": 1.0}, workers=2)
    with pytest.raises(ValueError, match="workers=2 needs executor='local'"):
        run_sweep(store, "s", [{"seed": 0}], dict, workers=2, executor="ray")
    with pytest.raises(ValueError, match="workers"):
        run_sweep(store, "s", [{"seed": 0}], dict, workers=0)
    assert store.frame("s").empty  # refused before any run
