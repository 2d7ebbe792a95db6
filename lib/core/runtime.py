"""Shared notebook plumbing: repository paths, device choice, seeding and run profiles.

Every notebook starts with a tagged ``parameters`` cell holding ``profile = "quick"`` (a CPU
run of minutes) or ``"full"`` (the real experiment, meant for a GPU) and an optional
``device``. ``profile_settings`` turns that into the concrete sizes the notebook uses.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from lib.core.checks import check_int

PROFILES = ("quick", "full")
DEVICE_ENV = "WORKBENCH_DEVICE"
ROOT_ENV = "WORKBENCH_ROOT"


def repo_root() -> Path:
    """The workbench's root folder (the one holding ``pyproject.toml`` and ``lib/``).

    Found from the installed package, so it is the same whichever directory a kernel starts
    in (papermill and nbval start kernels in different folders). ``$WORKBENCH_ROOT``
    overrides it.
    """
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).resolve()
    here = Path(__file__).resolve().parents[2]  # lib/core/runtime.py -> the root
    if (here / "pyproject.toml").exists():
        return here
    for parent in [Path.cwd(), *Path.cwd().parents]:
        if (parent / "pyproject.toml").exists() and (parent / "lib").is_dir():
            return parent
    return here


def data_dir() -> Path:
    """``<root>/data``, created on demand."""
    path = repo_root() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir(notebook: str | None = None) -> Path:
    """``<root>/figures`` or ``<root>/figures/<notebook>``, created on demand."""
    path = repo_root() / "figures"
    if notebook:
        path = path / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def pick_device(preferred: str | None = None):
    """Choose the compute device: ``preferred`` > ``$WORKBENCH_DEVICE`` > CUDA > MPS > CPU.

    ``preferred`` may be ``None``/``"auto"`` or any string torch accepts (``"cpu"``,
    ``"cuda:1"``). Asking for a device that is not available is a ``ValueError``.
    """
    import torch

    choice = preferred if preferred not in (None, "", "auto") else os.environ.get(DEVICE_ENV)
    if choice in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(choice)
    except RuntimeError as err:
        raise ValueError(f"device={choice!r} is not a device torch knows ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={choice!r} requested but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={choice!r} requested but MPS is not available here")
    return device


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch (all devices); return a NumPy ``Generator`` on ``seed``."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    import torch

    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))
    return np.random.default_rng(int(seed))


def keyed_rng(*words: int) -> np.random.Generator:
    """A PCG64 generator keyed by integers (seed, stream, split, ...): bit-stable across
    platforms and numpy versions, and independent streams for different keys."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(w) for w in words])))


def _start_process(threads: int | None, initializer: Callable | None, initargs: tuple) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if initializer is not None:
        initializer(*initargs)


def process_map(fn: Callable, items: Iterable[tuple], workers: int = 1, threads: int | None = None,
                initializer: Callable | None = None, initargs: tuple = ()) -> list:
    """``[fn(*item) for item in items]``, in order, in ``workers`` spawned processes when more
    than one: how independent small CPU jobs (training runs of tiny models) use every core.

    Each process first sets torch's intra-op threads to ``threads`` (None: torch's default) and
    calls ``initializer(*initargs)``; ``fn``, the items and the results travel by pickle, so
    ``fn`` must be a module-level function (or a ``functools.partial`` of one). With
    ``workers=1`` the jobs run here, and neither ``threads`` nor ``initializer`` is applied.
    """
    workers = check_int("workers", workers, 1)
    if threads is not None:
        threads = check_int("threads", threads, 1)
    items = [tuple(item) for item in items]
    if workers == 1 or len(items) <= 1:
        return [fn(*item) for item in items]
    if initializer is None:
        pool = worker_pool(workers, threads)
        try:
            return list(pool.map(fn, *zip(*items)))
        except BaseException:  # a dead worker or an interrupt: its jobs must not outlive this call
            discard_pool(pool)
            raise
    # An initializer gives the processes state of this call's own: a pool of their own.
    with _new_pool(min(workers, len(items)), threads, initializer, initargs) as pool:
        return list(pool.map(fn, *zip(*items)))


# Pools of spawned processes, kept for the rest of this process: a spawned process spends ~3 s
# importing torch and the workbench, more than a notebook's small runs take, and a notebook
# starts one sweep after another. A pool serves only callers that would spawn the same processes
# (same environment variables, working directory and import path).
_POOLS: dict[tuple, Any] = {}


def _new_pool(workers: int, threads: int | None, initializer: Callable | None = None, initargs: tuple = ()):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked child would inherit this process's torch threads and locks.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_process, initargs=(threads, initializer, initargs))


def worker_pool(workers: int, threads: int | None = None):
    """A ``concurrent.futures.ProcessPoolExecutor`` of ``workers`` spawned processes, each on
    ``threads`` torch threads (None: torch's default), shared by every call in this process that
    asks for the same pair, so its processes start once. ``discard_pool`` ends one (a job that
    must be stopped, a worker that died); a changed environment gets a new one."""
    workers = check_int("workers", workers, 1)
    if threads is not None:
        threads = check_int("threads", threads, 1)
    key = (workers, threads)
    spawned_as = (tuple(sorted(os.environ.items())), os.getcwd(), tuple(sys.path))
    held = _POOLS.get(key)
    if held is not None and held[1] != spawned_as:
        discard_pool(held[0])
        held = None
    if held is None:
        if not _POOLS:
            import atexit

            atexit.register(_close_pools)
        held = _POOLS[key] = (_new_pool(workers, threads), spawned_as)
    return held[0]


def _close_pools() -> None:
    """At exit: idle pools shut down in order (left to the garbage collector, they complain)."""
    for pool, _ in list(_POOLS.values()):
        discard_pool(pool)


def discard_pool(pool) -> None:
    """Stop a ``worker_pool``'s processes now, running jobs included, and forget the pool."""
    for key, (held, _) in list(_POOLS.items()):
        if held is pool:
            del _POOLS[key]
    # The executor stops idle workers only; a running job would go on claiming runs. Python 3.14
    # has terminate_workers(); before it, the executor's process table is the only handle.
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def autocast(device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, a no-op elsewhere (CPU runs stay in fp32 for exactness)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def profile_settings(profile: str, quick: Mapping[str, Any], full: Mapping[str, Any], *,
                     smoke: bool = False, smoke_steps: Mapping[str, Any] | None = None) -> SimpleNamespace:
    """Resolve a notebook's sizes for ``profile`` ("quick" for a CPU, "full" for a GPU).

    ``full`` may list only what differs from ``quick``. ``smoke=True`` (full profile only)
    keeps the full profile's shapes, grids, seeds and code paths and applies ``smoke_steps``,
    the few keys (step counts, corner-of-grid subsets) that make it finish in about a minute on
    a CPU. Returns a namespace with every key plus ``profile`` and ``smoke``.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if not isinstance(smoke, bool):
        raise ValueError(f"smoke must be True or False, got {smoke!r}")
    if smoke and profile != "full":
        raise ValueError(f"smoke=True runs the full profile cut short; use profile='full', got {profile!r}")
    unknown = set(full) - set(quick)
    if unknown:
        raise ValueError(f"full profile sets keys the quick profile lacks: {sorted(unknown)}")
    unknown = set(smoke_steps or {}) - set(quick)
    if unknown:
        raise ValueError(f"smoke_steps sets keys the quick profile lacks: {sorted(unknown)}")
    values = dict(quick)
    if profile == "full":
        values.update(full)
    if smoke:
        values.update(smoke_steps or {})
    return SimpleNamespace(profile=profile, smoke=smoke, **values)


def describe_environment() -> dict[str, str]:
    """Versions and device, for the header cell of every notebook."""
    import platform

    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(pick_device()),
        "threads": str(torch.get_num_threads()),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a declared dependency
        pass
    return info
