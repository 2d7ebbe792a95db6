"""The concrete schedules, each registered in ``SCHEDULES`` under its ``build`` name.

Every class here gives only its shape after warm-up (``_shape`` and ``_shape_curve``);
``lib.schedules.base.Schedule`` adds the warm-up, the floor past ``total_steps`` and the
validation of steps and shared arguments. ``__all__`` is read from the registry, so a new
decorated class is exported from ``lib.schedules`` with no other edit.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from lib.core import check_choice, check_fraction, check_int, check_number
from lib.schedules.base import SCHEDULES, Schedule


@SCHEDULES.register("warmup_cosine", set_name=True)
@dataclass(frozen=True)
class WarmupCosine(Schedule):
    """Linear warm-up, then one half-cosine from the peak down to ``min_lr_ratio`` at
    ``total_steps`` (optimizer steps, warm-up included); the floor from then on.

    Equals transformers' ``get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=...)`` on
    steps ``0..total_steps`` (past the end transformers' cosine climbs back up; ours stays flat).
    """

    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def _shape(self, step: float) -> float:
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return factor * (1 - self.min_lr_ratio) + self.min_lr_ratio

    def _shape_curve(self, steps: np.ndarray) -> np.ndarray:
        # In place on one buffer: this is the curve benchmarked over 10M steps.
        progress = np.subtract(steps, self.warmup_steps)
        progress /= self.total_steps - self.warmup_steps
        progress *= np.pi
        out = np.cos(progress, out=progress)
        half_range = 0.5 * (1.0 - self.min_lr_ratio)
        out *= half_range
        out += half_range + self.min_lr_ratio
        return out


@SCHEDULES.register("cosine_plateau", set_name=True)
@dataclass(frozen=True)
class CosinePlateau(Schedule):
    """Warm-up + cosine decay with flat plateaus (the seed's Cosine-Plateau schedule).

    ``plateaus`` are ``(start_fraction, length_fraction)`` of the post-warm-up steps
    ``N = total_steps - warmup_steps``, rounded down to whole steps as in the original.
    A plateau holds the value, at its start, of ONE global cosine (peak -> floor) laid over the
    post-warm-up steps with all plateau time removed. Between plateaus each segment is its own
    half-cosine from the previous level down to the next plateau's level; the last segment ends
    at the floor (``min_lr_ratio``) at ``total_steps``. After warm-up the LR never rises.
    Without plateaus this is exactly ``WarmupCosine``'s shape.
    """

    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    plateaus: tuple = ()
    # (start, length, from_level, to_level) per piece, in post-warm-up steps; derived.
    _pieces: tuple = field(init=False, repr=False, compare=False)
    _starts: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "plateaus", self._check_plateaus(self.plateaus))
        n = self.total_steps - self.warmup_steps
        floor = self.min_lr_ratio
        # Whole-step plateau bounds (floor, like the original's int()); 1e-9 absorbs 0.3*N noise.
        bounds = [(math.floor(s * n + 1e-9), math.floor(ln * n + 1e-9)) for s, ln in self.plateaus]
        cosine_steps = n - sum(length for _, length in bounds)  # the global cosine's length
        pieces, pos, level, removed = [], 0, 1.0, 0
        for start, length in bounds:
            effective = start - removed  # position on the global cosine (plateau time removed)
            # Plateaus filling every post-warm-up step leave a zero-length global cosine: each
            # then sits at its start, the peak (the limit of (0, 1 - eps) as eps -> 0).
            progress = min(1.0, effective / cosine_steps) if cosine_steps > 0 else 0.0
            plateau_level = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
            pieces.append((pos, start - pos, level, plateau_level))       # half-cosine down
            pieces.append((start, length, plateau_level, plateau_level))  # flat
            pos, level, removed = start + length, plateau_level, removed + length
        pieces.append((pos, n - pos, level, floor))  # last half-cosine ends at the floor
        # A flat piece from the end on, so a step there never lands in a zero-length last
        # segment (a plateau ending at N) and divides by its length.
        pieces.append((n, 1, floor, floor))
        object.__setattr__(self, "_pieces", tuple(pieces))
        object.__setattr__(self, "_starts", tuple(p[0] for p in pieces))

    @staticmethod
    def _check_plateaus(plateaus: Any) -> tuple:
        try:
            items = [tuple(p) for p in plateaus]
        except TypeError:
            raise ValueError(
                f"plateaus must be a sequence of (start_fraction, length_fraction), got {plateaus!r}"
            ) from None
        out = []
        for i, item in enumerate(items):
            if len(item) != 2:
                raise ValueError(f"plateaus[{i}] must be (start_fraction, length_fraction), got {item!r}")
            start = check_fraction(f"plateaus[{i}] start_fraction", item[0], strict_max=True)
            length = check_number(f"plateaus[{i}] length_fraction", item[1], 0.0, 1.0, strict_min=True)
            if start + length > 1.0 + 1e-12:
                raise ValueError(f"plateaus[{i}] = {item!r} ends past the last step: need "
                                 "start_fraction + length_fraction <= 1 (fractions of the "
                                 "post-warm-up steps)")
            out.append((start, length))
        out.sort()
        for (s0, l0), (s1, l1) in zip(out, out[1:]):
            if s1 < s0 + l0 - 1e-12:
                raise ValueError(f"plateaus overlap: {(s0, l0)} and {(s1, l1)}")
        return tuple(out)

    def _shape(self, step: float) -> float:
        u = step - self.warmup_steps
        u0, length, a, b = self._pieces[bisect.bisect_right(self._starts, u) - 1]
        return b + (a - b) * (0.5 * (1.0 + math.cos(math.pi * min(u - u0, length) / length)))

    def _shape_curve(self, steps: np.ndarray) -> np.ndarray:
        u = np.maximum(steps - self.warmup_steps, 0.0)
        order = None
        if u.size > 1 and not (u[1:] >= u[:-1]).all():  # evaluate sorted, then put back
            order = np.argsort(u, kind="stable")
            u = u[order]
        out = np.empty_like(u)
        bounds = np.searchsorted(u, self._starts[1:] + (math.inf,), side="left")
        lo = 0
        for (u0, length, a, b), hi in zip(self._pieces, bounds):  # one slice per piece
            if hi > lo:
                x = np.subtract(u[lo:hi], u0, out=out[lo:hi])
                np.minimum(x, length, out=x)
                x *= np.pi
                x /= length
                np.cos(x, out=x)
                x += 1.0
                x *= 0.5
                x *= a - b
                x += b
            lo = hi
        if order is not None:
            out[order] = out.copy()
        return out


@SCHEDULES.register("wsd", set_name=True)
@dataclass(frozen=True)
class WSD(Schedule):
    """Warmup-Stable-Decay (MiniCPM; Hagele et al. 2024): linear warm-up, flat at the peak,
    then a cooldown over the last ``decay_steps`` to ``min_lr_ratio`` at ``total_steps``.

    ``decay``: ``"1-sqrt"`` (1 - sqrt(progress); Hagele et al.'s best), ``"linear"`` or
    ``"cosine"``. Equals transformers' ``get_wsd_schedule(num_training_steps=total_steps)``
    after warm-up (its warm-up starts at ``min_lr_ratio``; ours starts at 0 like every schedule).
    """

    DECAYS: ClassVar[tuple] = ("1-sqrt", "linear", "cosine")
    total_steps: int
    warmup_steps: int
    decay_steps: int
    decay: str = "1-sqrt"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "decay_steps", check_int(
            "decay_steps", self.decay_steps, 1, self.total_steps - self.warmup_steps))
        check_choice("decay", self.decay, self.DECAYS)

    @staticmethod
    def _cooldown(decay: str, progress, lib):
        """The cooldown factor (1 -> 0) at ``progress`` in [0, 1]; ``lib`` is math or numpy."""
        if decay == "1-sqrt":
            return 1.0 - lib.sqrt(progress)
        if decay == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + lib.cos(math.pi * progress))

    def _shape(self, step: float) -> float:
        decay_start = self.total_steps - self.decay_steps
        if step < decay_start:
            return 1.0
        factor = self._cooldown(self.decay, (step - decay_start) / self.decay_steps, math)
        return factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio

    def _shape_curve(self, steps: np.ndarray) -> np.ndarray:
        decay_start = self.total_steps - self.decay_steps
        progress = np.clip((steps - decay_start) / self.decay_steps, 0.0, 1.0)  # sqrt needs >= 0
        out = self._cooldown(self.decay, progress, np) * (1.0 - self.min_lr_ratio) + self.min_lr_ratio
        out[steps < decay_start] = 1.0
        return out


@SCHEDULES.register("linear", set_name=True)
@dataclass(frozen=True)
class WarmupLinear(Schedule):
    """Linear warm-up, then linear decay to ``min_lr_ratio`` at ``total_steps``.

    With ``min_lr_ratio=0`` equals transformers' ``get_linear_schedule_with_warmup``.
    """

    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def _shape(self, step: float) -> float:
        factor = (self.total_steps - step) / (self.total_steps - self.warmup_steps)
        return factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio

    def _shape_curve(self, steps: np.ndarray) -> np.ndarray:
        factor = (self.total_steps - steps) / (self.total_steps - self.warmup_steps)
        return factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio


@SCHEDULES.register("inverse_sqrt", set_name=True)
@dataclass(frozen=True)
class InverseSqrt(Schedule):
    """Linear warm-up, then ``1 / sqrt((step + timescale - warmup_steps) / timescale)``.

    ``timescale`` defaults to ``warmup_steps`` (or 10 000 without warm-up), as in
    transformers' ``get_inverse_sqrt_schedule``, which it equals. It never reaches a floor:
    ``total_steps`` only sets the planned run length (plots, validation).
    """

    total_steps: int
    warmup_steps: int = 0
    timescale: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.timescale is None:
            object.__setattr__(self, "timescale", self.warmup_steps or 10_000)
        object.__setattr__(self, "timescale", check_int("timescale", self.timescale, 1))

    def _shape(self, step: float) -> float:
        return 1.0 / math.sqrt((step + (self.timescale - self.warmup_steps)) / self.timescale)

    def _shape_curve(self, steps: np.ndarray) -> np.ndarray:
        w = self.warmup_steps
        # From the end of warm-up only: earlier steps could make the root's argument negative.
        return 1.0 / np.sqrt((np.maximum(steps, w) + (self.timescale - w)) / self.timescale)


@SCHEDULES.register("constant", set_name=True)
@dataclass(frozen=True)
class Constant(Schedule):
    """Linear warm-up, then the peak LR for ever (transformers'
    ``get_constant_schedule_with_warmup``)."""

    total_steps: int
    warmup_steps: int = 0

    def _shape(self, step: float) -> float:
        return 1.0

    def _shape_curve(self, steps: np.ndarray) -> np.ndarray:
        return np.ones_like(steps)


@SCHEDULES.register("cosine_restarts", set_name=True)
@dataclass(frozen=True)
class CosineRestarts(Schedule):
    """Linear warm-up, then ``num_cycles`` half-cosines, each restarting at the peak (hard
    restarts), down to ``min_lr_ratio``; the floor from ``total_steps`` on. With
    ``min_lr_ratio=0`` equals transformers'
    ``get_cosine_with_hard_restarts_schedule_with_warmup``."""

    total_steps: int
    warmup_steps: int = 0
    num_cycles: int = 1
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "num_cycles", check_int("num_cycles", self.num_cycles, 1))

    def _shape(self, step: float) -> float:
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        factor = 0.5 * (1.0 + math.cos(math.pi * ((self.num_cycles * progress) % 1.0)))
        return factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio

    def _shape_curve(self, steps: np.ndarray) -> np.ndarray:
        progress = (steps - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        factor = 0.5 * (1.0 + np.cos(np.pi * np.mod(self.num_cycles * progress, 1.0)))
        return factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio


__all__ = [cls.__name__ for cls in SCHEDULES.values() if cls.__module__ == __name__]
