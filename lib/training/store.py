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
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import sqlite3
import time
import traceback
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib.core import check_bool, check_choice, check_positive, data_dir

STATUSES = ("running", "done", "failed")

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
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep);
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
    records TEXT NOT NULL
);
"""


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


class RunStore:
    """SQLite store of runs. ``path`` defaults to ``lib.core.data_dir() / "runs.sqlite"``.

    WAL journal: readers never block the writer and see only committed runs. Each method
    opens its own short connection, so one store object may be used from several threads
    and several processes may share the file (on a local disk; not on a network share).
    """

    def __init__(self, path: str | Path | None = None, timeout: float = 60.0):
        if path is None:
            path = data_dir() / "runs.sqlite"
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"path={str(self.path)!r} is a folder; give the SQLite file's path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = check_positive("timeout", timeout)
        self.host = socket.gethostname()
        try:
            with self._connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise ValueError(f"path={str(self.path)!r} is not a usable SQLite results store ({err})") from None

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    @contextmanager
    def _connect(self):
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            con.execute("PRAGMA foreign_keys=ON")
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

    # ---- state changes (each one transaction) ----
    def claim(self, sweep: str, config: dict, steal: bool = False) -> tuple[str, str]:
        """Try to take ``(sweep, config)`` for this process: returns ``(run_id, outcome)``.

        Outcome ``"claimed"`` (row now ``running`` with our pid; it was new, failed, or a
        ``running`` left by a dead process on this host), ``"done"`` (nothing to do) or
        ``"busy"`` (``running`` in a live process, or on another host unless ``steal``).
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
            row = con.execute("SELECT status, host, pid FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None:
                status, host, pid = row
                if status == "done":
                    return run_id, "done"
                if status == "running" and not steal:
                    ours = host == self.host and pid == os.getpid()
                    if host != self.host or (not ours and _pid_alive(pid)):
                        return run_id, "busy"
            con.execute(
                """INSERT INTO runs (run_id, sweep, config, seed, status, started, host, pid, attempts)
                   VALUES (?, ?, ?, ?, 'running', ?, ?, ?, 1)
                   ON CONFLICT (run_id) DO UPDATE SET status = 'running', started = excluded.started,
                   host = excluded.host, pid = excluded.pid, error = NULL, finished = NULL,
                   seconds = NULL, metrics = NULL, attempts = attempts + 1""",
                (run_id, sweep, config_json, seed, _now(), self.host, os.getpid()))
        return run_id, "claimed"

    def finish(self, run_id: str, metrics: dict, seconds: float, history=None) -> None:
        """Mark a run done with its ``metrics`` (and optional ``history`` records), atomically."""
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
            cur = con.execute("UPDATE runs SET status = 'done', metrics = ?, error = NULL, finished = ?, "
                              "seconds = ? WHERE run_id = ?", (metrics_json, _now(), seconds, run_id))
            if cur.rowcount != 1:
                raise ValueError(f"run_id={run_id!r} is not in {self}")
            con.execute("DELETE FROM history WHERE run_id = ?", (run_id,))
            if records is not None:
                con.execute("INSERT INTO history (run_id, records) VALUES (?, ?)", (run_id, records))

    def fail(self, run_id: str, error: str, seconds: float | None = None) -> None:
        """Mark a run failed with the error text (a traceback)."""
        if seconds is not None:
            seconds = check_positive("seconds", seconds, allow_zero=True)
        with self._transaction() as con:
            con.execute("UPDATE runs SET status = 'failed', error = ?, finished = ?, seconds = ? "
                        "WHERE run_id = ?", (str(error), _now(), seconds, run_id))

    def delete(self, sweep: str) -> int:
        """Remove every run of ``sweep``; returns how many."""
        _check_sweep(sweep)
        with self._transaction() as con:
            con.execute("DELETE FROM history WHERE run_id IN (SELECT run_id FROM runs WHERE sweep = ?)", (sweep,))
            return con.execute("DELETE FROM runs WHERE sweep = ?", (sweep,)).rowcount

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


def run_sweep(store: RunStore, sweep: str, configs: Iterable[dict], run_fn: Callable[[dict], Any],
              progress: bool = True, raise_errors: bool = False, retry_failed: bool = True,
              steal: bool = False) -> pd.DataFrame:
    """Run ``run_fn(config)`` for every config of ``sweep`` not already done; return ``store.frame(sweep)``.

    Skips runs that are done (and, with ``retry_failed=False``, failed ones). Reruns failed
    runs and runs left ``running`` by a process that died (killed, crashed, or an earlier
    interrupted call in this process). Runs ``running`` in another live process or on another
    host are left to it (``steal=True`` takes them). An exception inside ``run_fn`` marks the
    run failed with its traceback and the sweep goes on, unless ``raise_errors``;
    ``KeyboardInterrupt`` marks the run failed and stops the sweep.
    """
    if not isinstance(store, RunStore):
        raise ValueError(f"store must be a RunStore, got {type(store).__name__}")
    if not callable(run_fn):
        raise ValueError("run_fn must be callable: run_fn(config: dict) -> dict of metrics")
    _check_sweep(sweep)
    progress, raise_errors = check_bool("progress", progress), check_bool("raise_errors", raise_errors)
    retry_failed, steal = check_bool("retry_failed", retry_failed), check_bool("steal", steal)
    configs = list(configs)
    seen: dict[str, int] = {}
    for i, config in enumerate(configs):
        if not isinstance(config, dict):
            raise ValueError(f"configs[{i}] must be a dict, got {type(config).__name__}")
        rid = make_run_id(sweep, config)
        if rid in seen:
            raise ValueError(f"configs[{i}] repeats configs[{seen[rid]}]; add a distinguishing key "
                             "(e.g. 'seed') to repeat a run")
        seen[rid] = i
    from tqdm.auto import tqdm

    counts = dict.fromkeys(("ran", "failed", "skipped", "busy"), 0)
    bar = tqdm(configs, desc=sweep, disable=not progress)
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
        start = time.perf_counter()
        try:
            metrics, history = _split_result(run_fn(dict(config)))
            store.finish(run_id, metrics, time.perf_counter() - start, history)
            counts["ran"] += 1
        except KeyboardInterrupt:
            store.fail(run_id, "KeyboardInterrupt", time.perf_counter() - start)
            raise
        except Exception:
            store.fail(run_id, traceback.format_exc(), time.perf_counter() - start)
            counts["failed"] += 1
            if raise_errors:
                raise
        bar.set_postfix(counts, refresh=False)
    bar.close()
    return store.frame(sweep)

