"""Measured choice between implementations that compute the same function.

Where two kernels compute the same values (the MoE layer's dispatch paths, a fused or a split
projection) and which one is faster depends on the shape and the machine, the choice is made
by timing them once: ``fastest(key, candidates)`` runs each candidate (a zero-argument
callable doing a forward and, for a training forward, its backward), interleaved, and keeps
the one with the lowest median time relative to each round's mean (``relative_times``) for
``key`` (a tuple naming the device and the shape). The
result is cached in-process, and on disk when ``$WORKBENCH_DISPATCH_CACHE`` names a JSON file
(for example ``build/dispatch.json``), so later processes on the same machine reuse it and the
same seed keeps giving the same numbers.

The candidates differ only in floating-point summation order (tested per caller), which is
enough to change a run's bits. So ``choose`` (what the models call) times only when the choice
persists across processes, that is when ``$WORKBENCH_DISPATCH_CACHE`` is set: otherwise two
processes could time differently, pick different kernels, and a run resumed in a new process
would not reproduce the uninterrupted one. Without the cache the caller's static rule decides
(measured on a 2-core CPU); ``invoke bench`` sets the cache. Processes sharing a cache file keep
the first choice written for a key. Under ``torch.use_deterministic_algorithms(True)`` the
static rule always decides. Under ``torch.compile`` or inside a ``TorchDispatchMode`` (a FLOP
counter) nothing is timed: a cached choice is used, else the static rule.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Hashable
from pathlib import Path

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack as _dispatch_mode_stack

from lib.core import check_int

CACHE_ENV = "WORKBENCH_DISPATCH_CACHE"
# Calibration: interleaved rounds (one call per candidate each) filling about this many seconds,
# within these bounds. Three rounds of single ~1 ms calls picked a path 25% slower than the
# other in one of five fresh processes on a shared 2-core CPU; a tenth of a second of rounds
# is paid once per shape and cache file.
CALIBRATION_BUDGET_S = 0.1
CALIBRATION_ROUNDS = (5, 50)

_CHOICES: dict[str, str] = {}
_LOADED_FROM: str | None = None
# The hot path: the caller's key tuple -> the choice ``choose`` returned for it (cached or
# measured, never the static fallback, which a later calibration may replace). Every forward
# asks; the full lookup (key text, environment, cache file) took 19 us of a 140 us projection
# forward at d=64 with caches cold from the backward before it. Emptied whenever _CHOICES changes.
_RESOLVED: dict[tuple, str] = {}


def measured_choice_allowed() -> bool:
    """False under ``torch.compile`` (timing inside a trace is meaningless), inside a
    ``TorchDispatchMode`` (FLOP counters and kernel recorders would count the timing runs) and
    when torch's deterministic mode is on (a timed choice could differ between runs)."""
    return (not torch.compiler.is_compiling() and not torch.are_deterministic_algorithms_enabled()
            and not _dispatch_mode_stack())


def choose(key: tuple[Hashable, ...], make_candidates: Callable[[], dict[str, Callable[[], object]]],
           static: str, device: torch.device | str = "cpu") -> str:
    """The implementation to run for ``key``: ``static`` in deterministic mode; else the cached
    choice; else, where timing is allowed (``measured_choice_allowed``), the fastest of
    ``make_candidates()`` (built only then); else ``static``. A choice once made for ``key``
    holds for the rest of the process (until ``clear_dispatch_choices``), even if
    ``$WORKBENCH_DISPATCH_CACHE`` is pointed elsewhere: a run never changes kernels midway."""
    if torch.are_deterministic_algorithms_enabled():
        return static
    choice = _RESOLVED.get(key)
    if choice is not None:
        return choice
    choice = cached_choice(key)
    if choice is None:
        if _cache_path() is None or not measured_choice_allowed():
            return static
        # Building and timing the candidates may draw random inputs: the caller's RNG streams
        # (dropout, data order) must not depend on whether this process has calibrated yet, or a
        # resumed run would differ from an uninterrupted one.
        device = torch.device(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            choice = fastest(key, make_candidates(), device)
    _RESOLVED[key] = choice
    return choice


def _cache_path() -> Path | None:
    path = os.environ.get(CACHE_ENV)
    return Path(path) if path else None


def _key(key: tuple[Hashable, ...]) -> str:
    return "|".join(str(k) for k in key)


def _load() -> None:
    global _LOADED_FROM
    raw = os.environ.get(CACHE_ENV)  # compared as text: every auto forward passes here
    if not raw or raw == _LOADED_FROM:
        return
    _LOADED_FROM, path = raw, Path(raw)
    if path.exists():
        try:
            _CHOICES.update({str(k): str(v) for k, v in json.loads(path.read_text()).items()})
            _RESOLVED.clear()
        except (OSError, ValueError):
            pass  # an unreadable cache is recalibrated, then rewritten


def _save(key: str, choice: str) -> str:
    """Record ``choice`` for ``key`` in the disk cache, if any, and return the choice that holds:
    one another process wrote for ``key`` first wins, so processes sharing a cache agree."""
    path = _cache_path()
    if path is None:
        return choice
    on_disk: dict[str, str] = {}
    if path.exists():
        try:
            on_disk = {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError):
            pass
    choice = on_disk.get(key, choice)
    _CHOICES.update({**on_disk, key: choice})
    _RESOLVED.clear()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_CHOICES, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return choice


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_rounds(candidates: dict[str, Callable[[], object]], device: torch.device,
                 repeats: int | None) -> dict[str, list[float]]:
    """Seconds of each candidate's call in each round: two warm-up calls each, then ``repeats``
    interleaved rounds, every other one in reverse order (A B, B A, ...), so load from other
    processes and what ran just before fall on all of them alike. ``repeats=None`` sizes the
    rounds from the second warm-up call to fill about ``CALIBRATION_BUDGET_S``, within
    ``CALIBRATION_ROUNDS``."""
    round_s = 0.0
    for fn in candidates.values():
        fn()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        round_s += time.perf_counter() - t0
    if repeats is None:
        low, high = CALIBRATION_ROUNDS
        repeats = min(high, max(low, int(CALIBRATION_BUDGET_S / max(round_s, 1e-9))))
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            candidates[name]()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
    return samples


def time_candidates(candidates: dict[str, Callable[[], object]], device: torch.device | str = "cpu",
                    repeats: int | None = None) -> dict[str, float]:
    """Median seconds per call of each candidate over interleaved rounds (``repeats``, or
    enough to fill about ``CALIBRATION_BUDGET_S`` when None), after two warm-up calls each."""
    if repeats is not None:
        repeats = check_int("repeats", repeats, 1)
    samples = _time_rounds(candidates, torch.device(device), repeats)
    return {name: statistics.median(v) for name, v in samples.items()}


def relative_times(samples: dict[str, list[float]]) -> dict[str, float]:
    """Each candidate's median over rounds of its time relative to the round's geometric mean:
    a paired score, so a slow moment of the machine, which slows a whole round, cancels (the
    medians of raw times let one such round decide between candidates a few percent apart)."""
    names = list(samples)
    rounds = len(samples[names[0]])
    scores: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        mean_log = statistics.fmean(math.log(max(samples[n][r], 1e-12)) for n in names)
        for n in names:
            scores[n].append(math.exp(math.log(max(samples[n][r], 1e-12)) - mean_log))
    return {name: statistics.median(v) for name, v in scores.items()}


def fastest(key: tuple[Hashable, ...], candidates: dict[str, Callable[[], object]],
            device: torch.device | str = "cpu") -> str:
    """The name of the fastest candidate for ``key``, timed on first use and cached."""
    if not candidates:
        raise ValueError("candidates must name at least one implementation")
    _load()
    k = _key(key)
    choice = _CHOICES.get(k)
    if choice in candidates:
        return choice
    if len(candidates) == 1:
        choice = next(iter(candidates))
    else:
        scores = relative_times(_time_rounds(candidates, torch.device(device), None))
        choice = min(scores, key=scores.get)
    _CHOICES[k] = _save(k, choice)
    _RESOLVED.clear()
    return _CHOICES[k]


def cached_choice(key: tuple[Hashable, ...]) -> str | None:
    """The cached choice for ``key``, or None before it was measured."""
    _load()
    return _CHOICES.get(_key(key))


def dispatch_choices() -> dict[str, str]:
    """Every cached choice (key text -> candidate name)."""
    _load()
    return dict(_CHOICES)


def clear_dispatch_choices() -> None:
    """Forget the in-process choices (the disk cache, if any, is left as it is)."""
    global _LOADED_FROM
    _CHOICES.clear()
    _RESOLVED.clear()
    _LOADED_FROM = None
