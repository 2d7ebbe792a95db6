"""Where a sweep's runs execute: in the calling process (``"local"``) or as Ray tasks (``"ray"``).

``run_sweep(store, sweep, configs, run_fn, executor="ray")`` sends every config that is not
done to a Ray cluster as one task with ``num_cpus`` CPUs and ``num_gpus`` GPUs declared, so
Ray places as many runs side by side as the cluster holds. The driver (the process calling
``run_sweep``) stays the only writer of the results store: it claims each run before
submitting it, keeps the lease alive while the task runs, and records the run as its result
arrives (``ray.wait``), each in one transaction. So the store works exactly as with the local
executor: a driver killed at any moment leaves finished runs done and the rest claimable
(its process is gone), and the next ``run_sweep`` skips the first and resubmits the second.
The workers need no access to the store, only to what ``run_fn`` reads.

A task whose ``run_fn`` raises (or whose worker dies) is retried by Ray up to ``max_retries``
times; after the last attempt the run is recorded failed with the remote traceback and the
sweep goes on. At most as many runs are in flight as the cluster's resources fit when the
sweep starts, so runs are claimed only when they can start.

``ray_address``: ``None`` starts a local Ray for the sweep (shut down after it), ``"auto"``
joins the cluster this machine belongs to (``ray start --head`` / ``ray start --address``),
``"ray://host:port"`` connects through Ray Client. When Ray is already initialised in this
process, the sweep uses that connection and leaves it open. Ray is an optional dependency
(``pip install -e ".[ray]"``); the local executor does not need it.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib.core import check_int, check_positive
from lib.training.tensorboard import run_logdir

__all__ = ["EXECUTORS", "check_ray_options", "run_on_ray"]

EXECUTORS = ("local", "ray")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")   # Ray colours the remote traceback for terminals


def check_ray_options(ray_address: Any, num_cpus: Any, num_gpus: Any,
                      max_retries: Any) -> tuple[str | None, float, float, int]:
    """The Ray executor's settings as plain values, or a ``ValueError`` naming the bad one."""
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise ValueError(f"ray_address must be None (start a local Ray), 'auto' (the running cluster) or "
                         f"'ray://host:port', got {ray_address!r}")
    return (ray_address, check_positive("num_cpus", num_cpus),
            check_positive("num_gpus", num_gpus, allow_zero=True), check_int("max_retries", max_retries, 0))


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError("executor='ray' needs Ray: pip install -e \".[ray]\" (or pip install ray)") from err
    return ray


def _execute(run_fn: Callable[[dict], Any], config: dict, split_result: Callable, log_dir: str | None):
    """The body of one Ray task: ``(metrics, history, seconds)`` of ``run_fn(config)``; the
    result is split on the worker so a returned model never crosses the network."""
    start = time.perf_counter()
    with run_logdir(log_dir):
        metrics, history = split_result(run_fn(dict(config)))
    if hasattr(history, "to_dict"):  # a DataFrame travels as plain records
        history = history.to_dict(orient="records")
    return metrics, history, time.perf_counter() - start


def _slots(resources: dict, num_cpus: float, num_gpus: float) -> int:
    """How many tasks of this shape the cluster fits at once (at least one)."""
    fits = [int(resources.get("CPU", 0) / num_cpus)]
    if num_gpus > 0:
        fits.append(int(resources.get("GPU", 0) / num_gpus))
    return max(1, min(fits))


def run_on_ray(store, sweep: str, configs: list[dict], run_fn: Callable[[dict], Any], *,
               split_result: Callable, ray_address: str | None = None, num_cpus: float = 1.0,
               num_gpus: float = 0.0, max_retries: int = 2, retry_failed: bool = True,
               steal: bool = False, raise_errors: bool = False, progress: bool = True,
               runs: Path | None = None) -> dict[str, int]:
    """Run every config of ``sweep`` that is not done as a Ray task and record each in ``store``
    as it finishes (module docstring); returns the counts ``ran``, ``failed``, ``skipped`` and
    ``busy``. ``run_sweep(..., executor="ray")`` validates the arguments and calls this.

    ``split_result(result) -> (metrics, history)`` reads what ``run_fn`` returned. ``runs``: the
    TensorBoard root (each run logs to ``runs/<sweep>/<run_id>``; the workers must see it).
    With ``raise_errors`` the first failed run stops the sweep: the runs still in flight are
    cancelled and recorded failed, and the run's exception is raised. An interrupt of the
    driver does the same and propagates.
    """
    from tqdm.auto import tqdm

    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_address, logging_level=logging.WARNING)
    counts = dict.fromkeys(("ran", "failed", "skipped", "busy"), 0)
    in_flight: dict[Any, tuple[str, Any]] = {}   # task ref -> (run_id, its lease)
    bar = tqdm(total=len(configs), desc=sweep, disable=not progress)
    try:
        task = ray.remote(_execute).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                                            retry_exceptions=True)
        fn_ref = ray.put(run_fn)   # serialised once, not once per task
        window = _slots(ray.cluster_resources(), num_cpus, num_gpus)
        pending = iter(configs)

        def submit_next() -> bool:
            """Claim and submit the next config that needs running; False when none is left."""
            for config in pending:
                if not retry_failed:
                    (state,) = store.states(sweep, [config]).values()
                    if state.startswith("failed"):
                        counts["skipped"] += 1
                        bar.update(1)
                        continue
                run_id, outcome = store.claim(sweep, config, steal=steal)
                if outcome != "claimed":
                    counts["skipped" if outcome == "done" else "busy"] += 1
                    bar.update(1)
                    continue
                lease = store.hold(run_id).__enter__()
                log_dir = str(runs / sweep / run_id) if runs is not None else None
                in_flight[task.remote(fn_ref, config, split_result, log_dir)] = (run_id, lease)
                return True
            return False

        while len(in_flight) < window and submit_next():
            pass
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                run_id, lease = in_flight.pop(ref)
                try:
                    error = _record(ray, store, run_id, ref, max_retries)
                finally:
                    lease.close()
                counts["failed" if error is not None else "ran"] += 1
                bar.update(1)
                bar.set_postfix(counts, refresh=False)
                if error is not None and raise_errors:
                    raise error
            while len(in_flight) < window and submit_next():
                pass
    except BaseException as stop:
        for ref, (run_id, lease) in in_flight.items():
            ray.cancel(ref)
            lease.close()
            store.fail(run_id, f"cancelled: the sweep's driver stopped ({type(stop).__name__}) while this "
                               "run was in flight on Ray")
        in_flight.clear()
        raise
    finally:
        bar.close()
        if started:
            ray.shutdown()
    return counts


def _record(ray, store, run_id: str, ref, max_retries: int) -> BaseException | None:
    """Store the outcome of the task ``ref``: ``None`` when the run is done, else the exception
    to raise under ``raise_errors`` (the run is then recorded failed)."""
    try:
        metrics, history, seconds = ray.get(ref)
    except ray.exceptions.RayError as err:
        store.fail(run_id, f"failed on Ray after {max_retries + 1} attempt(s) (max_retries={max_retries}):\n"
                           + _ANSI.sub("", str(err)))
        cause = err.as_instanceof_cause() if isinstance(err, ray.exceptions.RayTaskError) else err
        return cause
    try:
        store.finish(run_id, metrics, seconds, history)
    except Exception as err:   # results the store refuses (not JSON-able): failed, as locally
        store.fail(run_id, traceback.format_exc())
        return err
    return None
