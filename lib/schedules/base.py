"""What every schedule shares: the ``Schedule`` base class, the ``SCHEDULES`` registry and ``build``.

A schedule is a small, frozen, picklable dataclass mapping an optimizer step (``0, 1, 2, ...``;
fractional steps evaluate the same closed form) to a multiplier of the peak learning rate:

    sched = WarmupCosine(total_steps=10_000, warmup_steps=500, min_lr_ratio=0.1)
    sched(250)                      # 0.5   (scalar, plain Python)
    sched.curve(np.arange(10_001))  # float64 array, the same numbers, vectorised numpy

The base does everything but the shape: it validates the shared arguments and the steps, applies
the linear warm-up (from exactly 0 at step 0: ``step / warmup_steps``, as in transformers) and
holds ``min_lr_ratio`` from ``total_steps`` on. A concrete schedule (``lib.schedules.decays``)
only says what happens in between. Construction cost is independent of ``total_steps``: nothing
is tabulated.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar

import numpy as np

from lib.core import Registry, check_fraction, check_int, check_number

__all__ = ["Schedule", "SCHEDULES", "build"]

SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


def _as_steps(steps: Any) -> np.ndarray:
    """Steps as a float64 array; NaN, inf or negative steps are a ValueError."""
    arr = np.asarray(steps)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"steps must be numbers (optimizer steps), got dtype {arr.dtype}")
    if arr.size and not (arr.min() >= 0 and (arr.dtype.kind in "iu" or arr.max() < np.inf)):
        raise ValueError("steps must be finite and >= 0 (optimizer steps)")  # NaN fails min >= 0
    return arr.astype(np.float64, copy=False)


class Schedule:
    """Base of every schedule: scalar ``__call__``, vectorised ``curve``, ``lr_at``, ``config``.

    A subclass is a frozen dataclass registered with ``@SCHEDULES.register("name")`` (which sets
    its ``name``). Its fields start with ``total_steps`` and ``warmup_steps``; a ``min_lr_ratio``
    field is the floor it holds from ``total_steps`` on (a schedule without one, such as
    ``InverseSqrt``, follows its shape for ever). It implements the shape after warm-up only:

    - ``_shape(step: float) -> float`` for ``warmup_steps <= step`` (and ``step < total_steps``
      when it has a floor), without validation: ``attach`` calls it once per optimizer step;
    - ``_shape_curve(steps: ndarray) -> ndarray`` on a 1-D float64 array of steps (not to be
      modified), returning a new float64 array of the same length. It is given every step,
      warm-up and past-the-end ones included (the base overwrites those), so it must stay
      finite and warning-free there.
    """

    name: ClassVar[str] = ""
    total_steps: int
    warmup_steps: int

    def __post_init__(self) -> None:
        """Validate the arguments every schedule shares (frozen dataclass: set via object)."""
        total = check_int("total_steps", self.total_steps, 1)
        object.__setattr__(self, "total_steps", total)
        object.__setattr__(self, "warmup_steps", check_int("warmup_steps", self.warmup_steps, 0, total - 1))
        if "min_lr_ratio" in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            object.__setattr__(self, "min_lr_ratio", check_fraction("min_lr_ratio", self.min_lr_ratio))

    @property
    def _floor(self) -> float | None:
        """The value held from ``total_steps`` on: ``min_lr_ratio``, or None without one."""
        return getattr(self, "min_lr_ratio", None)

    def __call__(self, step: float) -> float:
        """LR multiplier (fraction of the peak LR) at optimizer step ``step`` (>= 0)."""
        return float(self._scalar(check_number("step", step, 0)))

    def curve(self, steps: Any) -> np.ndarray:
        """LR multipliers at an array of optimizer steps (float64, same shape), vectorised.

        Equal to ``[self(s) for s in steps]`` (to floating-point rounding of numpy's cos).
        """
        arr = _as_steps(steps)
        if not arr.size:
            return arr.copy()
        return self._vector(arr.reshape(-1)).reshape(arr.shape)

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

    def _scalar(self, step: float) -> float:
        """The multiplier at a step already known to be a number >= 0 (the per-step hot path)."""
        w = self.warmup_steps
        if step < w:
            return step / w
        if step >= self.total_steps and self._floor is not None:
            return self._floor
        return self._shape(step)

    def _vector(self, steps: np.ndarray) -> np.ndarray:
        """``_scalar`` over a non-empty 1-D float64 array of valid steps."""
        out = self._shape_curve(steps)
        if self._floor is not None:
            out[steps >= self.total_steps] = self._floor
        w = self.warmup_steps
        if w:
            warm = steps < w
            out[warm] = steps[warm] / w
        return out

    def _shape(self, step: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _shape_curve(self, steps: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def build(name: str, **kwargs: Any) -> Schedule:
    """Build a schedule by registry name (``SCHEDULES``), e.g.
    ``build("wsd", total_steps=1000, warmup_steps=50, decay_steps=200)``."""
    cls = SCHEDULES.get_entry(name)
    allowed = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"{name} takes {sorted(allowed)}; unknown arguments {unknown}")
    return cls(**kwargs)
