"""Notebook 01's recipe: the settings of its quick and full profiles.

Every schedule, its vectorised curve and the torch ``LRScheduler`` adapter are components in
``lib.schedules``; the notebook draws them at ``total_steps`` with a 5% warm-up, and times
``curve`` and ``ScheduledLR.step`` against torch's own scheduler (``benchmarks/bench_schedules``).
"""

from __future__ import annotations

__all__ = ["QUICK", "FULL"]

# quick: CPU, under a minute. full: longer curves and a longer benchmark.
QUICK = {"total_steps": 2_000, "bench_steps": 3_000, "bench_repeats": 5, "curve_steps": 1_000_000}
FULL = {"total_steps": 20_000, "bench_steps": 20_000, "bench_repeats": 9, "curve_steps": 10_000_000}
