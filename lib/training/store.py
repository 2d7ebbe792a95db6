"""A results store for sweeps and studies (SQLite) and a resumable sweep runner.

One row per run, keyed by ``run_id`` = a stable hash of the canonical JSON of
``(sweep, config)``: the same config in the same sweep is the same run on any machine. Every
state change (claimed -> done | failed) is one transaction, so a sweep killed at any moment
leaves each run either done with all its results, or not done; rerunning the sweep finishes
the rest and repeats nothing that was done.

    store = RunStore()                                   # data/runs.sqlite
    df = run_sweep(store, "lr-grid", [{"lr": lr, "seed": s} for lr in lrs for s in range(3)], fn)

``run_fn(config)`` returns a dict of metrics (JSON-able scalars, NaN allowed); an optional
``"history"`` entry (a DataFrame or a list of dicts, e.g. a loss curve) is stored in a
separate table and read back with ``store.history(run_id)``. An object with ``final`` and
``history`` attributes (``lib.training.TrainResult``) is accepted as well.

Claims are leases. ``claim`` marks a run ``running`` with an owner (host, pid and a token
unique to the process) and an expiry ``lease_s`` seconds ahead; while the run trains, a
heartbeat thread (``store.hold(run_id)``) pushes the expiry forward every ``lease_s / 3``
seconds. A run whose lease has expired (its process died, on any host, or hung) is claimed by
the next ``run_sweep``; on the claimer's own host a run whose process is gone (or whose pid is
now another process of ours: a reused pid) is claimed at once. Host names must therefore be
unique among the machines sharing a store, and their clocks agree to well within ``lease_s``.
Runs busy elsewhere are reported (a ``RuntimeWarning`` naming them, and
``frame.attrs["busy"]``) and left out of the frame ``run_sweep`` returns; a fit that needs
every point calls ``run_sweep(..., require_complete=True)`` or ``store.require_complete(sweep,
configs)``, which raise ``IncompleteSweep`` naming each run that is not done. A result is
recorded once: when a lease was lost and two processes finish the same run, the first result
stays (``finish`` returns False for the second).

The pieces compose for other executors: ``claim`` -> ``hold`` (heartbeat) -> ``finish`` or
``fail``; ``run_claimed`` is that sequence around one ``run_fn`` call. ``run_sweep(...,
executor="ray")`` runs it with each ``run_fn`` call as a Ray task (``lib.training.executors``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import pickle
import socket
import sqlite3
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib.core import (
    check_bool,
    check_choice,
    check_int,
    check_positive,
    data_dir,
    discard_pool,
    worker_pool,
)
from lib.training.executors import EXECUTORS, check_ray_options, run_on_ray
from lib.training.tensorboard import run_logdir, runs_dir

STATUSES = ("running", "done", "failed")
DEFAULT_LEASE_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    sweep TEXT NOT NULL,
    config TEXT NOT NULL,
    seed INTEGER,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    metrics TEXT,
    error TEXT,
    started TEXT,
    finished TEXT,
    seconds REAL,
    host TEXT,
    pid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_expires REAL
);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep);
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
    records TEXT NOT NULL
);
"""
# Columns added since the first schema: a store written before them gains them on open.
_ADDED_COLUMNS = {"owner": "TEXT", "lease_expires": "REAL"}


class IncompleteSweep(RuntimeError):
    """Some runs of a sweep are not done. ``missing`` maps each such run id to its state
    (``"running on <host> (lease until <time>)"``, ``"failed: <error>"`` or ``"not started"``)."""

    def __init__(self, message: str, missing: dict[str, str]):
        super().__init__(message)
        self.missing = dict(missing)


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON types (numpy/torch scalars, tuples, paths converted)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where} has a non-string key: {list(value)}")
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:   # 0-d numpy / torch
        return _plain(value.item(), where)
    raise ValueError(f"{where} = {value!r} ({type(value).__name__}) is not JSON-serializable; "
                     "use numbers, strings, bools, None, lists or dicts")


def canonical_json(value: Any, where: str = "config") -> str:
    """Canonical JSON (sorted keys, no whitespace) of ``value``: the basis of run ids."""
    return json.dumps(_plain(value, where), sort_keys=True, separators=(",", ":"))


def make_run_id(sweep: str, config: dict) -> str:
    """Stable 16-hex-digit id of ``(sweep, config)``; key order and tuple-vs-list do not matter."""
    return hashlib.sha256(canonical_json({"sweep": sweep, "config": config}).encode()).hexdigest()[:16]


def _check_sweep(sweep: Any) -> str:
    if not isinstance(sweep, str) or not sweep:
        raise ValueError(f"sweep must be a non-empty string, got {sweep!r}")
    return sweep


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


_TOKEN: dict[str, Any] = {"pid": None, "token": None}
# Leases this process is renewing now, as (store path, run_id): another thread of the same
# process must see them busy, while a lease of ours that nothing renews (an interrupted call) is free.
_HELD: set[tuple[str, str]] = set()
_HELD_LOCK = threading.Lock()


def _owner_token() -> str:
    """A token unique to this process (a forked child gets its own)."""
    if _TOKEN["pid"] != os.getpid():
        _TOKEN.update(pid=os.getpid(), token=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}")
    return _TOKEN["token"]


def _utc(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).isoformat(timespec="seconds")


class Lease:
    """The claim on one run, renewed by a daemon heartbeat thread every ``lease_s / 3`` seconds
    until closed (use ``with store.hold(run_id) as lease``). ``lost`` turns True when a renewal
    finds the run no longer ours (the lease expired and another process claimed it)."""

    def __init__(self, store: RunStore, run_id: str):
        self.store, self.run_id, self.lost = store, run_id, False
        self._key = (str(store.path), run_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{run_id}", daemon=True)

    def __enter__(self) -> Lease:
        with _HELD_LOCK:
            _HELD.add(self._key)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop renewing (the row keeps its state; ``finish`` or ``fail`` settles it)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        with _HELD_LOCK:
            _HELD.discard(self._key)

    def _beat(self) -> None:
        while not self._stop.wait(self.store.lease_s / 3):
            try:
                if not self.store.renew(self.run_id):
                    self.lost = True
                    return
            except sqlite3.Error:   # the file is locked for longer than the timeout: try next beat
                continue


class RunStore:
    """SQLite store of runs. ``path`` defaults to ``lib.core.data_dir() / "runs.sqlite"``.

    WAL journal: readers never block the writer and see only committed runs. Each method
    opens its own short connection, so one store object may be used from several threads
    and several processes may share the file (on a local disk; not on a network share).
    ``timeout``: seconds to wait for the write lock. ``lease_s``: how long a claim lasts
    without a heartbeat (module docstring).
    """

    def __init__(self, path: str | Path | None = None, timeout: float = 60.0,
                 lease_s: float = DEFAULT_LEASE_S):
        if path is None:
            path = data_dir() / "runs.sqlite"
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"path={str(self.path)!r} is a folder; give the SQLite file's path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = check_positive("timeout", timeout)
        self.lease_s = check_positive("lease_s", lease_s)
        self.host = socket.gethostname()
        try:
            with self._connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
            with self._transaction() as con:   # serialised, so two openers never both add a column
                have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
                for name, kind in _ADDED_COLUMNS.items():
                    if name not in have:
                        con.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
        except sqlite3.DatabaseError as err:
            raise ValueError(f"path={str(self.path)!r} is not a usable SQLite results store ({err})") from None

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    @contextmanager
    def _connect(self):
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA synchronous=FULL")   # a committed result survives a power cut too
            yield con
        finally:
            con.close()

    @contextmanager
    def _transaction(self):
        """One write transaction; ``BEGIN IMMEDIATE`` takes the write lock up front."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    @property
    def owner(self) -> str:
        """This process's owner token (what ``claim`` writes and ``renew``/``finish`` match)."""
        return _owner_token()

    def _claimable(self, run_id: str, host: str | None, pid: int | None, owner: str | None,
                   lease_expires: float | None) -> bool:
        """Whether a ``running`` row may be taken over (module docstring)."""
        if owner is not None and owner == self.owner:   # ours: free unless a thread renews it
            with _HELD_LOCK:
                return (str(self.path), run_id) not in _HELD
        if lease_expires is None or lease_expires <= time.time():
            return True
        # A live lease on our host whose process is gone, or whose pid is now ours (reused).
        return host == self.host and (pid == os.getpid() or not _pid_alive(pid))

    # ---- state changes (each one transaction) ----
    def claim(self, sweep: str, config: dict, steal: bool = False) -> tuple[str, str]:
        """Try to take ``(sweep, config)`` for this process: returns ``(run_id, outcome)``.

        Outcome ``"claimed"`` (row now ``running`` with our owner token and a lease of
        ``lease_s`` seconds; it was new, failed, or ``running`` with an expired lease or a dead
        process on this host), ``"done"`` (nothing to do) or ``"busy"`` (``running`` under a
        live lease elsewhere; ``steal=True`` takes it anyway). Keep the lease alive with
        ``hold(run_id)`` while the run trains.
        """
        _check_sweep(sweep)
        steal = check_bool("steal", steal)
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        run_id = make_run_id(sweep, config)
        config_json = canonical_json(config)
        seed = config.get("seed")
        seed = int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None
        with self._transaction() as con:
            row = con.execute("SELECT status, host, pid, owner, lease_expires FROM runs WHERE run_id = ?",
                              (run_id,)).fetchone()
            if row is not None:
                status = row[0]
                if status == "done":
                    return run_id, "done"
                if status == "running" and not steal and not self._claimable(run_id, *row[1:]):
                    return run_id, "busy"
            con.execute(
                """INSERT INTO runs (run_id, sweep, config, seed, status, started, host, pid, attempts,
                                     owner, lease_expires)
                   VALUES (?, ?, ?, ?, 'running', ?, ?, ?, 1, ?, ?)
                   ON CONFLICT (run_id) DO UPDATE SET status = 'running', started = excluded.started,
                   host = excluded.host, pid = excluded.pid, owner = excluded.owner,
                   lease_expires = excluded.lease_expires, error = NULL, finished = NULL,
                   seconds = NULL, metrics = NULL, attempts = attempts + 1""",
                (run_id, sweep, config_json, seed, _now(), self.host, os.getpid(), self.owner,
                 time.time() + self.lease_s))
        return run_id, "claimed"

    def renew(self, run_id: str) -> bool:
        """Push the lease of our ``running`` run ``lease_s`` seconds ahead; False if it is not
        ours any more (expired and claimed elsewhere, finished, or deleted)."""
        with self._transaction() as con:
            cur = con.execute("UPDATE runs SET lease_expires = ? WHERE run_id = ? AND status = 'running' "
                              "AND owner = ?", (time.time() + self.lease_s, run_id, self.owner))
            return cur.rowcount == 1

    def hold(self, run_id: str) -> Lease:
        """A ``Lease`` context manager that renews ``run_id``'s claim from a heartbeat thread."""
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"run_id must be a non-empty string, got {run_id!r}")
        return Lease(self, run_id)

    def finish(self, run_id: str, metrics: dict, seconds: float, history=None) -> bool:
        """Record a finished run: mark it done with its ``metrics`` (and optional ``history``
        records), atomically. Returns False, keeping the stored result, when another process
        recorded the run first (our lease had expired); True when this result was stored."""
        seconds = check_positive("seconds", seconds, allow_zero=True)
        metrics_json = json.dumps(_plain(metrics, "metrics"), sort_keys=True)
        records = None
        if history is not None:
            if isinstance(history, pd.DataFrame):
                history = history.to_dict(orient="records")
            if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
                raise ValueError("history must be a DataFrame or a list of dicts")
            records = json.dumps(_plain(history, "history"))
        with self._transaction() as con:
            row = con.execute("SELECT status, owner FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise ValueError(f"run_id={run_id!r} is not in {self}")
            if row[0] == "done" and row[1] != self.owner:
                return False
            con.execute("UPDATE runs SET status = 'done', metrics = ?, error = NULL, finished = ?, "
                        "seconds = ?, owner = ?, lease_expires = NULL WHERE run_id = ?",
                        (metrics_json, _now(), seconds, self.owner, run_id))
            con.execute("DELETE FROM history WHERE run_id = ?", (run_id,))
            if records is not None:
                con.execute("INSERT INTO history (run_id, records) VALUES (?, ?)", (run_id, records))
        return True

    def fail(self, run_id: str, error: str, seconds: float | None = None) -> bool:
        """Mark a run failed with the error text (a traceback). A done run, or one running under
        another process's claim, is left as it is (returns False)."""
        if seconds is not None:
            seconds = check_positive("seconds", seconds, allow_zero=True)
        with self._transaction() as con:
            cur = con.execute(
                "UPDATE runs SET status = 'failed', error = ?, finished = ?, seconds = ?, lease_expires = NULL "
                "WHERE run_id = ? AND status != 'done' AND (status != 'running' OR owner IS NULL OR owner = ?)",
                (str(error), _now(), seconds, run_id, self.owner))
            return cur.rowcount == 1

    def delete(self, sweep: str) -> int:
        """Remove every run of ``sweep``; returns how many."""
        _check_sweep(sweep)
        with self._transaction() as con:
            con.execute("DELETE FROM history WHERE run_id IN (SELECT run_id FROM runs WHERE sweep = ?)", (sweep,))
            return con.execute("DELETE FROM runs WHERE sweep = ?", (sweep,)).rowcount

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``"ok"``, or the problems it found."""
        with self._connect() as con:
            return "\n".join(row[0] for row in con.execute("PRAGMA integrity_check"))

    # ---- completeness ----
    def states(self, sweep: str, configs: Iterable[dict] | None = None) -> dict[str, str]:
        """The state of each run of ``sweep`` (of ``configs`` when given, in their order):
        ``"done"``, ``"failed: <last error line>"``, ``"running on <host> (lease until <UTC>)"``
        or ``"not started"``."""
        _check_sweep(sweep)
        with self._connect() as con:
            rows = {r[0]: r[1:] for r in con.execute(
                "SELECT run_id, status, host, lease_expires, error FROM runs WHERE sweep = ? ORDER BY rowid",
                (sweep,))}
        ids = list(rows) if configs is None else [make_run_id(sweep, c) for c in _check_configs(configs)]
        out = {}
        for rid in ids:
            if rid not in rows:
                out[rid] = "not started"
                continue
            status, host, lease, error = rows[rid]
            if status == "running":
                out[rid] = f"running on {host} (lease until {_utc(lease)})"
            elif status == "failed":
                lines = [ln for ln in str(error or "").strip().splitlines() if ln.strip()]
                out[rid] = f"failed: {lines[-1].strip() if lines else 'unknown error'}"
            else:
                out[rid] = status
        return out

    def require_complete(self, sweep: str, configs: Iterable[dict] | None = None) -> pd.DataFrame:
        """The done runs of ``sweep`` (``frame`` rows), if every run (of ``configs`` when given)
        is done; otherwise raise ``IncompleteSweep`` naming each run that is not, and why."""
        configs = None if configs is None else _check_configs(configs)
        states = self.states(sweep, configs)
        missing = {rid: st for rid, st in states.items() if st != "done"}
        if missing or not states:
            shown = "; ".join(f"{rid}: {st}" for rid, st in list(missing.items())[:20])
            more = f"; and {len(missing) - 20} more" if len(missing) > 20 else ""
            what = f"{len(missing)} of {len(states)} runs are not done: {shown}{more}" if states \
                else "it has no runs"
            raise IncompleteSweep(f"sweep {sweep!r} is incomplete: {what}. Run run_sweep again to finish "
                                  "them (runs busy elsewhere finish there) before using its results",
                                  missing)
        frame = self.frame(sweep, status="done")
        return frame[frame["run_id"].isin(set(states))].reset_index(drop=True)

    # ---- reading ----
    def get(self, run_id: str) -> dict | None:
        """The stored row of ``run_id`` (config and metrics decoded), or ``None``."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            row = con.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["config"] = json.loads(out["config"])
        out["metrics"] = json.loads(out["metrics"]) if out["metrics"] else None
        return out

    def sweeps(self) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT sweep FROM runs ORDER BY sweep")]

    def frame(self, sweep: str | None = None, status: str | None = None) -> pd.DataFrame:
        """Runs as a DataFrame: bookkeeping columns, then config keys, then metric keys.

        Nested dicts flatten to ``a.b`` columns. A metric named like a config key or a
        bookkeeping column is renamed ``metrics.<name>``. Rows are in order of first claim
        (a sweep's config order); a rerun keeps its row's place.
        """
        check_choice("status", status, (None, *STATUSES))
        query, args = "SELECT * FROM runs WHERE 1 = 1", []
        if sweep is not None:
            _check_sweep(sweep)
            query, args = query + " AND sweep = ?", [*args, sweep]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]
        with self._connect() as con:
            raw = pd.read_sql_query(query + " ORDER BY rowid", con, params=args)
        base_cols = ["run_id", "sweep", "status", "seed", "seconds", "started", "finished", "host",
                     "attempts", "error"]
        base = raw[base_cols].reset_index(drop=True)
        configs = pd.json_normalize([json.loads(c) for c in raw["config"]]) if len(raw) else pd.DataFrame()
        metrics = pd.json_normalize([json.loads(m) if isinstance(m, str) else {} for m in raw["metrics"]]) \
            if len(raw) else pd.DataFrame()
        configs = configs.drop(columns=[c for c in configs if c in base_cols])
        metrics = metrics.rename(columns={c: f"metrics.{c}" for c in metrics
                                          if c in base_cols or c in configs})
        return pd.concat([base, configs.reset_index(drop=True), metrics.reset_index(drop=True)], axis=1)

    def history(self, run_id: str) -> pd.DataFrame:
        """The history records stored with ``run_id`` (empty DataFrame if none)."""
        with self._connect() as con:
            row = con.execute("SELECT records FROM history WHERE run_id = ?", (run_id,)).fetchone()
        return pd.DataFrame(json.loads(row[0]) if row else [])

    def histories(self, sweep: str) -> pd.DataFrame:
        """All histories of ``sweep`` stacked, with a ``run_id`` column (for curve plots)."""
        _check_sweep(sweep)
        with self._connect() as con:
            rows = con.execute("SELECT h.run_id, h.records FROM history h JOIN runs r USING (run_id) "
                               "WHERE r.sweep = ? ORDER BY r.rowid", (sweep,)).fetchall()
        frames = [pd.DataFrame(json.loads(rec)).assign(run_id=rid) for rid, rec in rows]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id"])


def _split_result(result: Any) -> tuple[dict, Any]:
    """``(metrics, history)`` from what a run function returned."""
    if hasattr(result, "final") and hasattr(result, "history"):
        return dict(result.final), result.history
    if not isinstance(result, dict):
        raise TypeError(f"run_fn must return a dict of metrics (or an object with .final and "
                        f".history), got {type(result).__name__}")
    metrics = dict(result)
    return metrics, metrics.pop("history", None)


def _check_configs(configs: Iterable[dict]) -> list[dict]:
    configs = list(configs)
    for i, config in enumerate(configs):
        if not isinstance(config, dict):
            raise ValueError(f"configs[{i}] must be a dict, got {type(config).__name__}")
    return configs


def run_claimed(store: RunStore, run_id: str, config: dict, run_fn: Callable[[dict], Any],
                raise_errors: bool = False, log_dir: str | os.PathLike | None = None) -> str:
    """Run ``run_fn(config)`` for a run this process has claimed, renewing its lease meanwhile,
    and record the outcome: returns ``"done"`` or ``"failed"``. An exception marks the run failed
    with its traceback (and is re-raised with ``raise_errors``); ``KeyboardInterrupt`` marks it
    failed and propagates. ``log_dir``: the run's TensorBoard directory (``train`` logs there)."""
    start = time.perf_counter()
    try:
        with store.hold(run_id), run_logdir(log_dir):
            metrics, history = _split_result(run_fn(dict(config)))
        store.finish(run_id, metrics, time.perf_counter() - start, history)
        return "done"
    except KeyboardInterrupt:
        store.fail(run_id, "KeyboardInterrupt", time.perf_counter() - start)
        raise
    except Exception:
        store.fail(run_id, traceback.format_exc(), time.perf_counter() - start)
        if raise_errors:
            raise
        return "failed"


def _sweep_worker(path: str, sweep: str, configs: list[dict], run_fn: Callable[[dict], Any],
                  retry_failed: bool, steal: bool, log_dir: str | None, threads: int) -> None:
    """One of ``run_sweep(workers=N)``'s processes: claim and run what nobody else has, on
    ``threads`` torch threads (its share of the cores) unless ``run_fn`` sets its own."""
    import torch

    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        # Runs another worker holds are reported busy here; the parent's sweep-up collects them.
        warnings.simplefilter("ignore", RuntimeWarning)
        run_sweep(RunStore(path), sweep, configs, run_fn, progress=False, retry_failed=retry_failed,
                  steal=steal, log_dir=log_dir)


def _run_in_processes(store: RunStore, sweep: str, configs: list[dict], run_fn: Callable[[dict], Any],
                      workers: int, *, retry_failed: bool, steal: bool, log_dir: Path | None,
                      progress: bool) -> None:
    """Run ``workers`` sweep workers on ``store`` in this process's shared pool of spawned
    processes (``lib.core.worker_pool``: started once, not per sweep) and wait for them, with a
    progress bar over the sweep's done runs (read from the store)."""
    from concurrent.futures import wait

    from tqdm.auto import tqdm

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    args = (str(store.path), sweep, configs, run_fn, retry_failed, steal,
            None if log_dir is None else str(log_dir), max(1, cores // workers))
    pool = worker_pool(workers)
    bar = tqdm(total=len(configs), desc=f"{sweep} ({workers} processes)", disable=not progress)
    try:
        jobs = [pool.submit(_sweep_worker, *args) for _ in range(workers)]
        while wait(jobs, timeout=0.5).not_done:
            done = sum(st == "done" for st in store.states(sweep, configs).values())
            bar.update(done - bar.n)
    except BaseException:  # interrupted: what the workers held is a dead process's claim, rerun next call
        discard_pool(pool)
        raise
    finally:
        bar.close()
    failed = [repr(job.exception()) for job in jobs if job.exception() is not None]
    if failed:
        discard_pool(pool)  # a worker that died breaks the pool for every later sweep
        warnings.warn(f"{len(failed)} of {workers} sweep processes failed ({'; '.join(failed)}); this process "
                      "runs what they left", RuntimeWarning, stacklevel=3)


def run_sweep(store: RunStore, sweep: str, configs: Iterable[dict], run_fn: Callable[[dict], Any],
              progress: bool = True, raise_errors: bool = False, retry_failed: bool = True,
              steal: bool = False, require_complete: bool = False,
              log_dir: str | os.PathLike | None = None, executor: str = "local",
              ray_address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
              max_retries: int = 2, workers: int = 1) -> pd.DataFrame:
    """Run ``run_fn(config)`` for every config of ``sweep`` not already done; return the sweep's
    runs (``store.frame(sweep)``) without those still running.

    Skips runs that are done (and, with ``retry_failed=False``, failed ones). Reruns failed
    runs and runs whose claim has lapsed: an expired lease (the process died on any host), a
    dead process on this host, or an earlier interrupted call in this process. Runs held under
    a live lease elsewhere are left to their owner (``steal=True`` takes them) and reported: a
    ``RuntimeWarning`` with their count and ids, and ``frame.attrs["busy"]`` (their ids);
    ``frame.attrs["incomplete"]`` maps every config's run that is not done to its state.
    ``require_complete=True`` raises ``IncompleteSweep`` instead of returning an incomplete
    sweep. An exception inside ``run_fn`` marks the run failed with its traceback and the
    sweep goes on, unless ``raise_errors``; ``KeyboardInterrupt`` marks the run failed and
    stops the sweep. Every ``train`` inside a run logs to TensorBoard in
    ``<log_dir>/<sweep>/<run_id>`` (``log_dir`` defaults to ``$WORKBENCH_RUNS_DIR``; unset: no logging).

    ``executor="ray"`` runs each config as a Ray task declaring ``num_cpus`` and ``num_gpus``,
    on the cluster at ``ray_address`` (``None``: a local Ray; ``"auto"``; ``"ray://host:port"``).
    This process records each run as it finishes; a failing task is retried ``max_retries``
    times, then recorded failed while the sweep goes on (``lib.training.executors``). The
    local executor runs each config once and ignores those four settings: in this process, or
    with ``workers > 1`` in that many spawned processes that claim runs from the same store (a
    sweep of small single-threaded runs uses every core that way; ``run_fn`` must then be a
    module-level function, so a process can import it), after which this process runs whatever
    they left (a worker that died) as a sweep-up.
    """
    if not isinstance(store, RunStore):
        raise ValueError(f"store must be a RunStore, got {type(store).__name__}")
    if not callable(run_fn):
        raise ValueError("run_fn must be callable: run_fn(config: dict) -> dict of metrics")
    _check_sweep(sweep)
    progress, raise_errors = check_bool("progress", progress), check_bool("raise_errors", raise_errors)
    retry_failed, steal = check_bool("retry_failed", retry_failed), check_bool("steal", steal)
    require_complete = check_bool("require_complete", require_complete)
    check_choice("executor", executor, EXECUTORS)
    ray_address, num_cpus, num_gpus, max_retries = check_ray_options(ray_address, num_cpus, num_gpus, max_retries)
    workers = check_int("workers", workers, 1)
    if workers > 1:
        if executor != "local":
            raise ValueError(f"workers={workers} needs executor='local'; a Ray sweep sizes itself by num_cpus")
        try:
            pickle.dumps(run_fn)
        except Exception as exc:
            raise ValueError(f"workers={workers} needs run_fn to be a module-level function a spawned process "
                             f"can import; {run_fn!r} cannot be pickled ({exc})") from None
    if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
        raise ValueError(f"log_dir must be None or a path, got {type(log_dir).__name__}")
    runs = Path(log_dir) if log_dir is not None else runs_dir()
    configs = _check_configs(configs)
    seen: dict[str, int] = {}
    for i, config in enumerate(configs):
        rid = make_run_id(sweep, config)
        if rid in seen:
            raise ValueError(f"configs[{i}] repeats configs[{seen[rid]}]; add a distinguishing key "
                             "(e.g. 'seed') to repeat a run")
        seen[rid] = i
    from tqdm.auto import tqdm

    if executor == "ray":
        run_on_ray(store, sweep, configs, run_fn, split_result=_split_result, ray_address=ray_address,
                   num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries, retry_failed=retry_failed,
                   steal=steal, raise_errors=raise_errors, progress=progress, runs=runs)
    else:
        if workers > 1:
            _run_in_processes(store, sweep, configs, run_fn, workers, retry_failed=retry_failed, steal=steal,
                              log_dir=runs, progress=progress)
        counts = dict.fromkeys(("ran", "failed", "skipped", "busy"), 0)
        bar = tqdm(configs, desc=sweep, disable=not progress or workers > 1)
        for config in bar:
            if not retry_failed:
                row = store.get(make_run_id(sweep, config))
                if row is not None and row["status"] == "failed":
                    counts["skipped"] += 1
                    continue
            run_id, outcome = store.claim(sweep, config, steal=steal)
            if outcome != "claimed":
                counts["skipped" if outcome == "done" else "busy"] += 1
                continue
            outcome = run_claimed(store, run_id, config, run_fn, raise_errors=raise_errors,
                                  log_dir=runs / sweep / run_id if runs is not None else None)
            counts["ran" if outcome == "done" else "failed"] += 1
            bar.set_postfix(counts, refresh=False)
        bar.close()
    if require_complete:
        return store.require_complete(sweep, configs)
    states = store.states(sweep, configs)
    busy = [rid for rid, st in states.items() if st.startswith("running")]
    if busy:
        shown = "; ".join(f"{rid} {states[rid]}" for rid in busy[:20])
        warnings.warn(f"{len(busy)} of {len(configs)} runs of sweep {sweep!r} are still running elsewhere and "
                      f"are left out of the returned frame: {shown}{' ...' if len(busy) > 20 else ''}. "
                      "Call run_sweep again to collect them, or pass require_complete=True to refuse an "
                      "incomplete sweep", RuntimeWarning, stacklevel=2)
    frame = store.frame(sweep)
    frame = frame[frame["status"] != "running"].reset_index(drop=True)
    frame.attrs["busy"] = busy
    frame.attrs["incomplete"] = {rid: st for rid, st in states.items() if st != "done"}
    return frame
