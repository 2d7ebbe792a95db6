"""Shared measurement helpers for the benchmarks: paired timing and the kernel floor.

- ``paired_times`` runs competing functions interleaved, repeat after repeat, so drift on a
  shared machine hits all of them alike; ``paired_ratio`` summarises one pair as the median of
  the per-repeat ratios with their spread (min..max), not a ratio of two medians.
- ``choice_check`` asks whether a measured choice (the MoE dispatch, the projection split) is
  within a slack of every implementation it could have picked, against an A/A control (the
  picked implementation timed as its own contender): "met", "not met" or "cannot decide".
- ``KernelFloor`` records the heavy kernels (matrix multiplies and fused attention) one call
  of a function launches, forward and backward, through a ``TorchDispatchMode``, and replays
  exactly those calls with the same tensors. The replay's time is the floor of any
  implementation that launches the same kernels: everything else (element-wise ops, indexing,
  allocation, Python) is what an implementation can still win on. ``ceiling = peer time /
  our floor`` bounds the speed-up over a peer that the same arithmetic allows on this machine.
- ``peak_memory`` is the peak of the allocator's bytes during one call (torch's profiler).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from lib.core import t_interval

aten = torch.ops.aten

# Kernels whose cost is arithmetic, not overhead: GEMMs and fused attention (CPU and CUDA).
HEAVY_PACKETS = {
    aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten._grouped_mm,
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention_for_cpu_backward,
    aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_efficient_attention_backward,
    aten._scaled_dot_product_cudnn_attention, aten._scaled_dot_product_cudnn_attention_backward,
}
GEMM_PACKETS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten._grouped_mm}


def sync(device: torch.device | str | None = None) -> None:
    if torch.device(device or "cpu").type == "cuda":
        torch.cuda.synchronize()


def calls_per_block(fn: Callable[[], object], minimum: int = 1, block_s: float = 0.02,
                    device: torch.device | str | None = None) -> int:
    """How many calls of ``fn`` fill about ``block_s`` seconds (at least ``minimum``), from one
    timed call after one untimed one: ``paired_times``' ``steps`` for short calls, whose blocks
    of a few calls leave a round's ratio to the timer's and the scheduler's noise."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return max(minimum, math.ceil(block_s / max(time.perf_counter() - t0, 1e-9)))


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` contenders in which each one directly follows every other equally often
    (a Williams design: ``n`` rows for even ``n``, ``2 n`` for odd), and each one runs first in
    as many rows as any other. A contender's cost depends on what ran just before it (caches, the
    allocator's free lists), so the orders must balance predecessors, not only positions: a
    cyclic rotation keeps every contender behind the same neighbour."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(i + r) % n for i in first] for r in range(n)]
    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]


def paired_times(fns: dict[str, Callable[[], object]], repeats: int, steps: int,
                 device: torch.device | str | None = None, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each function, one entry per repeat; functions run interleaved, round
    ``r`` in the order ``balanced_orders(len(fns))[r % len(...)]``, so that over a whole cycle of
    rounds every function runs first, and right after each other function, equally often."""
    if repeats < 1 or steps < 1:
        raise ValueError(f"repeats and steps must be >= 1, got {repeats}, {steps}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    orders = balanced_orders(len(items))
    for r in range(repeats):
        for i in orders[r % len(orders)]:
            k, fn = items[i]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            times[k].append((time.perf_counter() - t0) / steps)
    return times


def paired_ratio(times: dict[str, list[float]], faster: str, slower: str) -> tuple[float, float, float]:
    """Speed-up of ``faster`` over ``slower`` (time_slower / time_faster) per repeat:
    (median, min, max)."""
    ratios = [s / f for f, s in zip(times[faster], times[slower], strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def choice_check(times: dict[str, list[float]], chosen: str, control: str, alternatives: Sequence[str],
                 slack: float = 0.05, confidence: float = 0.95) -> dict:
    """Whether a measured choice is within ``slack`` of the fastest alternative, from paired repeats.

    ``times`` (``paired_times``) holds ``chosen`` (the choice as it runs, e.g. ``auto``),
    ``control`` (the implementation it picked, run as a separate contender: the same kernels,
    so their ratio is an A/A comparison) and ``alternatives`` (every implementation it could
    have picked, ``control`` among them). For each alternative the per-repeat ratio
    ``time_chosen / time_alternative`` is summarised as the geometric mean with its Student-t
    interval (on the log ratios). The A/A interval's half-width is the smallest difference the
    noise of this run resolves (it also holds the choice's own overhead: looking up its cached
    pick). Returns ``{"ratios": {alternative: (ratio, low, high)}, "aa": (ratio, low, high),
    "resolution": fraction, "pick": (fastest other alternative, ratio, low, high) of ``control``
    against it (None without one), "verdict": "met" | "not met" | "cannot decide"}``: met when
    every upper bound is at most ``1 + slack``, not met when some lower bound exceeds it,
    otherwise the noise cannot tell."""
    if control not in alternatives:
        raise ValueError(f"control must be one of alternatives {list(alternatives)}, got {control!r}")
    missing = [k for k in (chosen, *alternatives) if k not in times]
    if missing:
        raise ValueError(f"times has no entries for {missing}")

    def ratio(one: str, other: str) -> tuple[float, float, float]:
        logs = [math.log(a / b) for a, b in zip(times[one], times[other], strict=True)]
        mean, half = t_interval(logs, confidence)
        return math.exp(mean), math.exp(mean - half), math.exp(mean + half)

    ratios = {alt: ratio(chosen, alt) for alt in alternatives}
    bound = 1.0 + slack
    if any(low > bound for _, low, _ in ratios.values()):
        verdict = "not met"
    elif all(high <= bound for _, _, high in ratios.values()):
        verdict = "met"
    else:  # includes too few repeats for an interval (NaN bounds)
        verdict = "cannot decide"
    aa = ratios[control]
    others = [alt for alt in alternatives if alt != control]
    pick = None
    if others:  # the picked implementation's own row against the fastest other one
        rival = min(others, key=lambda alt: statistics.median(times[alt]))
        pick = (rival, *ratio(control, rival))
    return {"ratios": ratios, "aa": aa, "resolution": (aa[2] - aa[1]) / 2, "pick": pick, "verdict": verdict}


class KernelFloor(TorchDispatchMode):
    """Record the heavy kernel calls (``HEAVY_PACKETS``) a function makes, then replay them.

    >>> with KernelFloor() as floor:
    ...     step()
    >>> floor.gemm_flops, floor.replay_seconds()

    Arguments are kept by reference (the replay reuses the very tensors, so shapes, strides
    and dtypes are those of the real call). Works through autograd's backward, which runs on
    the calling thread's dispatch state.
    """

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.overloadpacket in HEAVY_PACKETS:
            detach = lambda a: a.detach() if isinstance(a, torch.Tensor) else a  # noqa: E731
            self.calls.append((func, tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()}))
        return out

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for func, _, _ in self.calls:
            out[func.overloadpacket.__name__] = out.get(func.overloadpacket.__name__, 0) + 1
        return out

    @property
    def gemm_flops(self) -> int:
        """2 m n k summed over the recorded GEMMs (grouped GEMMs: over their groups)."""
        total = 0
        for func, args, _ in self.calls:
            packet = func.overloadpacket
            if packet not in GEMM_PACKETS:
                continue
            a, b = (args[1], args[2]) if packet in (aten.addmm, aten.baddbmm) else (args[0], args[1])
            if packet is aten._grouped_mm:
                # 2-D x 3-D (rows grouped by offsets) or 2-D x 2-D (the reduction dim grouped):
                # either way every output element of every group costs 2 x (shared dim).
                if b.dim() == 3:
                    total += 2 * a.shape[0] * a.shape[1] * b.shape[2]
                else:
                    total += 2 * a.shape[0] * a.shape[1] * b.shape[1]
            else:
                batch = a.shape[0] if a.dim() == 3 else 1
                total += 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
        return total

    @torch.no_grad()
    def replay(self) -> None:
        for func, args, kwargs in self.calls:
            func(*args, **kwargs)

    def replay_seconds(self, repeats: int = 5, device: torch.device | str | None = None) -> float:
        """Median seconds of one replay of every recorded call."""
        self.replay()
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            self.replay()
            sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes allocated during one call of ``fn`` (after a warm-up call), above what was
    allocated before it: the running sum of the allocator events torch's profiler records
    (CPU allocator, and the CUDA caching allocator on CUDA), freed blocks counted off. This
    includes the buffers compiled kernels allocate, which Python-level tracing misses."""
    fn()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def record(fn: Callable[[], object]) -> KernelFloor:
    """Run ``fn`` once under a ``KernelFloor`` and return the recorder."""
    with KernelFloor() as floor:
        fn()
    return floor
