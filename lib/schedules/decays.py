"""Learning-rate schedules as closed forms, and one torch ``LRScheduler`` that plays them.

A schedule is a small, frozen, picklable object mapping an optimizer step (``0, 1, 2, ...``;
fractional steps evaluate the same closed form) to a multiplier of the peak learning rate:

    sched = WarmupCosine(total_steps=10_000, warmup_steps=500, min_lr_ratio=0.1)
    sched(250)                      # 0.5   (scalar, plain Python)
    sched.curve(np.arange(10_001))  # float64 array, the same numbers, vectorised numpy

``attach(optimizer, sched)`` returns a real ``torch.optim.lr_scheduler.LRScheduler`` whose
``step()`` must be called once per OPTIMIZER step (not per micro-batch under gradient
accumulation). Warm-up is linear from exactly 0 at step 0 (``step / warmup_steps``, as in
transformers). Every decaying schedule stays at its floor past ``total_steps``.

Construction cost is independent of ``total_steps``: nothing is tabulated.
"""

from __future__ import annotations

import bisect
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "Schedule", "CosinePlateau", "WarmupCosine", "WSD", "WarmupLinear", "InverseSqrt",
    "Constant", "CosineRestarts", "SCHEDULES", "build",
]


# ----------------------------------------------------------------------------- validation
def _check_int(name: str, value: Any, minimum: int) -> int:
    """An integer (or integer-valued float such as ``1e9``) >= ``minimum``, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if not isinstance(value, numbers.Integral):
        if not math.isfinite(value) or not float(value).is_integer():
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _check_ratio(name: str, value: Any) -> float:
    """A real number in [0, 1] (NaN rejected), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_warmup(warmup_steps: Any, total_steps: int) -> int:
    warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
    if warmup_steps >= total_steps:
        raise ValueError(
            f"warmup_steps must be < total_steps ({total_steps}), got {warmup_steps}")
    return warmup_steps


def _as_steps(steps: Any) -> np.ndarray:
    """Steps as a float64 array; NaN, inf or negative steps are a ValueError."""
    arr = np.asarray(steps)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"steps must be numbers (optimizer steps), got dtype {arr.dtype}")
    if arr.size and not (arr.min() >= 0 and (arr.dtype.kind in "iu" or arr.max() < np.inf)):
        raise ValueError("steps must be finite and >= 0 (optimizer steps)")  # NaN fails min >= 0
    return arr.astype(np.float64, copy=False)


class Schedule:
    """Base of every schedule: scalar ``__call__``, vectorised ``curve``, ``config``.

    Subclasses are frozen dataclasses implementing ``_scalar(step: float) -> float`` (no
    validation: this is the per-step hot path of ``attach``) and ``_vector(steps) -> array``.
    """

    name: ClassVar[str] = ""
    total_steps: int

    def __post_init__(self) -> None:
        """Validate the arguments every schedule shares (frozen dataclass: set via object)."""
        names = {f.name for f in fields(self)}  # type: ignore[arg-type]
        object.__setattr__(self, "total_steps", _check_int("total_steps", self.total_steps, 1))
        if "warmup_steps" in names:
            object.__setattr__(self, "warmup_steps",
                               _check_warmup(self.warmup_steps, self.total_steps))
        if "min_lr_ratio" in names:
            object.__setattr__(self, "min_lr_ratio", _check_ratio("min_lr_ratio", self.min_lr_ratio))

    def __call__(self, step: float) -> float:
        """LR multiplier (fraction of the peak LR) at optimizer step ``step`` (>= 0)."""
        if isinstance(step, bool) or not isinstance(step, numbers.Real) or not (
                math.isfinite(step) and step >= 0):
            raise ValueError(f"step must be a finite number >= 0 (optimizer steps), got {step!r}")
        return float(self._scalar(step))

    def curve(self, steps: Any) -> np.ndarray:
        """LR multipliers at an array of optimizer steps (float64, same shape), vectorised.

        Equal to ``[self(s) for s in steps]`` (to floating-point rounding of numpy's cos).
        """
        arr = _as_steps(steps)
        return self._vector(arr) if arr.size else arr.copy()

    def lr_at(self, step: float, peak_lr: float) -> float:
        """Learning rate at ``step`` for a group whose peak LR is ``peak_lr``."""
        return peak_lr * self(step)

    def config(self) -> dict[str, Any]:
        """Registry name plus constructor arguments: ``build(**sched.config())`` rebuilds it."""
        out: dict[str, Any] = {"name": self.name}
        for f in fields(self):  # type: ignore[arg-type]
            if f.init:
                out[f.name] = getattr(self, f.name)
        return out

    def _scalar(self, step: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _vector(self, steps: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _warmup_vector(steps: np.ndarray, out: np.ndarray, warmup_steps: int) -> np.ndarray:
    """Overwrite the warm-up part of ``out`` with ``step / warmup_steps``."""
    if warmup_steps:
        warm = steps < warmup_steps
        out[warm] = steps[warm] / warmup_steps
    return out


# ------------------------------------------------------------------------------ schedules
@dataclass(frozen=True)
class WarmupCosine(Schedule):
    """Linear warm-up, then one half-cosine from the peak down to ``min_lr_ratio`` at
    ``total_steps`` (optimizer steps, warm-up included); the floor from then on.

    Equals transformers' ``get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=...)`` on
    steps ``0..total_steps`` (past the end transformers' cosine climbs back up; ours stays flat).
    """

    name: ClassVar[str] = "warmup_cosine"
    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def _scalar(self, step: float) -> float:
        w = self.warmup_steps
        if step < w:
            return step / w
        if step >= self.total_steps:
            return self.min_lr_ratio
        progress = (step - w) / (self.total_steps - w)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return factor * (1 - self.min_lr_ratio) + self.min_lr_ratio

    def _vector(self, steps: np.ndarray) -> np.ndarray:
        w = self.warmup_steps
        progress = np.subtract(steps, w)
        progress /= self.total_steps - w
        np.clip(progress, 0.0, 1.0, out=progress)
        progress *= np.pi
        out = np.cos(progress, out=progress)
        half_range = 0.5 * (1.0 - self.min_lr_ratio)
        out *= half_range
        out += half_range + self.min_lr_ratio
        return _warmup_vector(steps, out, w)


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

    name: ClassVar[str] = "cosine_plateau"
    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    plateaus: tuple = ()
    # (start, length, from_level, to_level) per piece, in post-warm-up steps; derived.
    _pieces: tuple = field(init=False, repr=False, compare=False)
    _starts: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        total = self.total_steps
        object.__setattr__(self, "plateaus", self._check_plateaus(self.plateaus))
        n = total - self.warmup_steps
        floor = self.min_lr_ratio
        # Whole-step plateau bounds (floor, like the original's int()); 1e-9 absorbs 0.3*N noise.
        bounds = [(math.floor(s * n + 1e-9), math.floor(ln * n + 1e-9)) for s, ln in self.plateaus]
        cosine_steps = n - sum(length for _, length in bounds)  # the global cosine's length
        pieces, pos, level, removed = [], 0, 1.0, 0
        for start, length in bounds:
            effective = start - removed  # position on the global cosine (plateau time removed)
            progress = min(1.0, effective / cosine_steps) if cosine_steps > 0 else 1.0
            plateau_level = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
            pieces.append((pos, start - pos, level, plateau_level))       # half-cosine down
            pieces.append((start, length, plateau_level, plateau_level))  # flat
            pos, level, removed = start + length, plateau_level, removed + length
        pieces.append((pos, n - pos, level, floor))  # last half-cosine ends at the floor
        pieces.append((n, 1, floor, floor))          # past total_steps: the floor
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
            if len(item) != 2 or not all(
                    isinstance(v, numbers.Real) and not isinstance(v, bool) for v in item):
                raise ValueError(f"plateaus[{i}] must be (start_fraction, length_fraction), got {item!r}")
            start, length = float(item[0]), float(item[1])
            if not (0.0 <= start < 1.0 and 0.0 < length <= 1.0 and start + length <= 1.0 + 1e-12):
                raise ValueError(
                    f"plateaus[{i}] = {item!r} out of range: need 0 <= start_fraction < 1, "
                    "0 < length_fraction and start_fraction + length_fraction <= 1 "
                    "(fractions of the post-warm-up steps)")
            out.append((start, length))
        out.sort()
        for (s0, l0), (s1, l1) in zip(out, out[1:]):
            if s1 < s0 + l0 - 1e-12:
                raise ValueError(f"plateaus overlap: {(s0, l0)} and {(s1, l1)}")
        return tuple(out)

    def _scalar(self, step: float) -> float:
        w = self.warmup_steps
        if step < w:
            return step / w
        u = step - w
        u0, length, a, b = self._pieces[bisect.bisect_right(self._starts, u) - 1]
        return b + (a - b) * (0.5 * (1.0 + math.cos(math.pi * min(u - u0, length) / length)))

    def _vector(self, steps: np.ndarray) -> np.ndarray:
        u = np.maximum(steps - self.warmup_steps, 0.0).ravel()
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
        return _warmup_vector(steps, out.reshape(steps.shape), self.warmup_steps)


@dataclass(frozen=True)
class WSD(Schedule):
    """Warmup-Stable-Decay (MiniCPM; Hagele et al. 2024): linear warm-up, flat at the peak,
    then a cooldown over the last ``decay_steps`` to ``min_lr_ratio`` at ``total_steps``.

    ``decay``: ``"1-sqrt"`` (1 - sqrt(progress); Hagele et al.'s best), ``"linear"`` or
    ``"cosine"``. Equals transformers' ``get_wsd_schedule(num_training_steps=total_steps)``
    after warm-up (its warm-up starts at ``min_lr_ratio``; ours starts at 0 like every schedule).
    """

    name: ClassVar[str] = "wsd"
    DECAYS: ClassVar[tuple] = ("1-sqrt", "linear", "cosine")
    total_steps: int
    warmup_steps: int
    decay_steps: int
    decay: str = "1-sqrt"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        total = self.total_steps
        decay_steps = _check_int("decay_steps", self.decay_steps, 1)
        if decay_steps > total - self.warmup_steps:
            raise ValueError(f"decay_steps must be <= total_steps - warmup_steps "
                             f"({total - self.warmup_steps}), got {decay_steps}")
        object.__setattr__(self, "decay_steps", decay_steps)
        if self.decay not in self.DECAYS:
            raise ValueError(f"decay must be one of {self.DECAYS}, got {self.decay!r}")

    @staticmethod
    def _shape(decay: str, progress, lib):
        if decay == "1-sqrt":
            return 1.0 - lib.sqrt(progress)
        if decay == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + lib.cos(math.pi * progress))

    def _scalar(self, step: float) -> float:
        w = self.warmup_steps
        if step < w:
            return step / w
        decay_start = self.total_steps - self.decay_steps
        if step < decay_start:
            return 1.0
        if step >= self.total_steps:
            return self.min_lr_ratio
        factor = self._shape(self.decay, (step - decay_start) / self.decay_steps, math)
        return factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio

    def _vector(self, steps: np.ndarray) -> np.ndarray:
        decay_start = self.total_steps - self.decay_steps
        progress = np.clip((steps - decay_start) / self.decay_steps, 0.0, 1.0)
        out = self._shape(self.decay, progress, np) * (1.0 - self.min_lr_ratio) + self.min_lr_ratio
        out[steps < decay_start] = 1.0
        return _warmup_vector(steps, out, self.warmup_steps)


@dataclass(frozen=True)
class WarmupLinear(Schedule):
    """Linear warm-up, then linear decay to ``min_lr_ratio`` at ``total_steps``.

    With ``min_lr_ratio=0`` equals transformers' ``get_linear_schedule_with_warmup``.
    """

    name: ClassVar[str] = "linear"
    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def _scalar(self, step: float) -> float:
        w = self.warmup_steps
        if step < w:
            return step / w
        factor = max(0.0, (self.total_steps - step) / (self.total_steps - w))
        return factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio

    def _vector(self, steps: np.ndarray) -> np.ndarray:
        w = self.warmup_steps
        factor = np.maximum(0.0, (self.total_steps - steps) / (self.total_steps - w))
        out = factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio
        return _warmup_vector(steps, out, w)


@dataclass(frozen=True)
class InverseSqrt(Schedule):
    """Linear warm-up, then ``1 / sqrt((step + timescale - warmup_steps) / timescale)``.

    ``timescale`` defaults to ``warmup_steps`` (or 10 000 without warm-up), as in
    transformers' ``get_inverse_sqrt_schedule``, which it equals. It never reaches a floor:
    ``total_steps`` only sets the planned run length (plots, validation).
    """

    name: ClassVar[str] = "inverse_sqrt"
    total_steps: int
    warmup_steps: int = 0
    timescale: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.timescale is None:
            object.__setattr__(self, "timescale", self.warmup_steps or 10_000)
        object.__setattr__(self, "timescale", _check_int("timescale", self.timescale, 1))

    def _scalar(self, step: float) -> float:
        w = self.warmup_steps
        if step < w:
            return step / w
        return 1.0 / math.sqrt((step + (self.timescale - w)) / self.timescale)

    def _vector(self, steps: np.ndarray) -> np.ndarray:
        w = self.warmup_steps
        out = 1.0 / np.sqrt((np.maximum(steps, w) + (self.timescale - w)) / self.timescale)
        return _warmup_vector(steps, out, w)


@dataclass(frozen=True)
class Constant(Schedule):
    """Linear warm-up, then the peak LR for ever (transformers'
    ``get_constant_schedule_with_warmup``)."""

    name: ClassVar[str] = "constant"
    total_steps: int
    warmup_steps: int = 0

    def _scalar(self, step: float) -> float:
        return step / self.warmup_steps if step < self.warmup_steps else 1.0

    def _vector(self, steps: np.ndarray) -> np.ndarray:
        return _warmup_vector(steps, np.ones_like(steps), self.warmup_steps)


@dataclass(frozen=True)
class CosineRestarts(Schedule):
    """Linear warm-up, then ``num_cycles`` half-cosines, each restarting at the peak (hard
    restarts), down to ``min_lr_ratio``; the floor from ``total_steps`` on. With
    ``min_lr_ratio=0`` equals transformers'
    ``get_cosine_with_hard_restarts_schedule_with_warmup``."""

    name: ClassVar[str] = "cosine_restarts"
    total_steps: int
    warmup_steps: int = 0
    num_cycles: int = 1
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "num_cycles", _check_int("num_cycles", self.num_cycles, 1))

    def _scalar(self, step: float) -> float:
        w = self.warmup_steps
        if step < w:
            return step / w
        progress = (step - w) / (self.total_steps - w)
        if progress >= 1.0:
            return self.min_lr_ratio
        factor = 0.5 * (1.0 + math.cos(math.pi * ((self.num_cycles * progress) % 1.0)))
        return factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio

    def _vector(self, steps: np.ndarray) -> np.ndarray:
        w = self.warmup_steps
        progress = (steps - w) / (self.total_steps - w)
        factor = 0.5 * (1.0 + np.cos(np.pi * np.mod(self.num_cycles * progress, 1.0)))
        out = factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio
        out[progress >= 1.0] = self.min_lr_ratio
        return _warmup_vector(steps, out, w)


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in
    (WarmupCosine, CosinePlateau, WSD, WarmupLinear, InverseSqrt, Constant, CosineRestarts)
}


def build(name: str, **kwargs: Any) -> Schedule:
    """Build a schedule by registry name (``SCHEDULES``), e.g.
    ``build("wsd", total_steps=1000, warmup_steps=50, decay_steps=200)``."""
    if name not in SCHEDULES:
        raise ValueError(f"name must be one of {sorted(SCHEDULES)}, got {name!r}")
    cls = SCHEDULES[name]
    allowed = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"{name} takes {sorted(allowed)}; unknown arguments {unknown}")
    return cls(**kwargs)
