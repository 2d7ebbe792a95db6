"""The torch side of ``lib.schedules``: one ``LRScheduler`` that plays any schedule.

``attach(optimizer, schedule)`` returns a ``ScheduledLR``; step it once per OPTIMIZER step.
Re-exported from ``lib.schedules``, so ``from lib.schedules import attach`` is the usual import.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from lib.core import check_int, check_number
from lib.schedules.base import Schedule

__all__ = ["ScheduledLR", "attach"]


class ScheduledLR(LRScheduler):
    """A torch ``LRScheduler`` playing a schedule: ``lr = peak * schedule(step)`` per group.

    Build it with ``attach``. Call ``step()`` once per optimizer step (after
    ``optimizer.step()``). ``state_dict()`` holds only plain numbers and the schedule's
    config, so ``torch.load(weights_only=True)`` reads it; ``load_state_dict`` rewrites every
    group's ``lr`` and ``initial_lr`` from the restored step and peaks, so resuming gives the
    same LRs in whichever order optimizer and scheduler states are loaded.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 peak_lrs: Any = None, start_step: int = 0) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not callable(schedule):
            raise ValueError(f"schedule must map a step to a multiplier, got {schedule!r}")
        start_step = check_int("start_step", start_step, 0)
        groups = optimizer.param_groups
        if peak_lrs is not None:
            peaks = list(peak_lrs) if isinstance(peak_lrs, (list, tuple)) else [peak_lrs] * len(groups)
            if len(peaks) != len(groups):
                raise ValueError(f"peak_lrs must be one LR or one per param group "
                                 f"({len(groups)}), got {peak_lrs!r}")
            peaks = [check_number(f"peak_lrs[{i}]", peak, 0) for i, peak in enumerate(peaks)]
            for group, peak in zip(groups, peaks):
                group["initial_lr"] = peak
        for group in groups:
            lr = group.setdefault("initial_lr", group["lr"])
            if isinstance(lr, torch.Tensor):
                group["initial_lr"] = float(lr)  # a float peak; the group's Tensor lr is filled
        self.schedule = schedule
        # A Schedule's unchecked path: the steps counted here are valid by construction.
        self._fn = schedule._scalar if isinstance(schedule, Schedule) else schedule
        self._tensor_lrs = any(isinstance(g["lr"], torch.Tensor) for g in groups)
        self._accumulation_warned = False
        super().__init__(optimizer, last_epoch=start_step - 1)

    def step(self, epoch: int | None = None) -> None:
        """Advance one optimizer step and set every group's ``lr`` to ``peak * schedule(step)``."""
        if epoch is not None:  # torch's deprecated explicit-epoch form: jump there
            self.last_epoch = check_int("epoch", epoch, 0) - 1
        count = self._step_count
        self._step_count = count + 1
        opt = self.optimizer
        if count:
            if not opt.__dict__.get("_opt_called", True) and not self._accumulation_warned:
                self._accumulation_warned = True
                warnings.warn(
                    "scheduler.step() was called without an optimizer.step() since the last "
                    "one: step the scheduler once per OPTIMIZER step (under gradient "
                    "accumulation, not per micro-batch), after optimizer.step()", UserWarning,
                    stacklevel=2)
            opt._opt_called = False
        step = self.last_epoch + 1
        self.last_epoch = step
        multiplier = self._fn(step)
        lrs = [peak * multiplier for peak in self.base_lrs]
        if self._tensor_lrs:
            self._set_tensor_lrs(lrs)
            return
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    def _set_tensor_lrs(self, lrs: list[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
                         for g in self.optimizer.param_groups]

    def lr_at(self, step: float) -> list[float]:
        """Closed form: every group's LR at optimizer step ``step`` (does not change state)."""
        multiplier = self.schedule(step) if isinstance(self.schedule, Schedule) else self._fn(step)
        return [peak * multiplier for peak in self.base_lrs]

    def get_lr(self) -> list[float]:
        """LRs for the current step (``last_epoch``), from the closed form."""
        return self.lr_at(max(self.last_epoch, 0))

    _get_closed_form_lr = get_lr

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state: step counters, peaks, last LRs and the schedule's config."""
        config = self.schedule.config() if isinstance(self.schedule, Schedule) else repr(self.schedule)
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count,
                "base_lrs": [float(p) for p in self.base_lrs],
                "_last_lr": [float(lr) for lr in self._last_lr], "schedule": config}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore step and peaks, then rewrite each group's ``lr``/``initial_lr`` to match."""
        missing = {"last_epoch", "base_lrs"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}; pass ScheduledLR.state_dict()")
        peaks = list(state_dict["base_lrs"])
        groups = self.optimizer.param_groups
        if len(peaks) != len(groups):
            raise ValueError(f"state_dict has {len(peaks)} peak LRs but the optimizer has "
                             f"{len(groups)} param groups")
        saved = state_dict.get("schedule")
        current = self.schedule.config() if isinstance(self.schedule, Schedule) else repr(self.schedule)
        if saved is not None and saved != current:
            warnings.warn(f"resuming with a different schedule: saved {saved}, now {current}",
                          UserWarning, stacklevel=2)
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        self.base_lrs = peaks
        for group, peak in zip(groups, peaks):
            group["initial_lr"] = peak
        lrs = self.lr_at(max(self.last_epoch, 0))
        if self._tensor_lrs:
            self._set_tensor_lrs(lrs)
        else:
            for group, lr in zip(groups, lrs):
                group["lr"] = lr
            self._last_lr = lrs


def attach(optimizer: torch.optim.Optimizer, schedule: Schedule, *, peak_lrs: Any = None,
           start_step: int = 0) -> ScheduledLR:
    """Drive ``optimizer``'s learning rates with ``schedule``; returns a torch ``LRScheduler``.

    Works with any optimizer (AdamW, SGD, ``torch.optim.Muon``, ...). Each param group's peak
    LR is its ``lr`` at attach time, unless the group already carries ``initial_lr`` (an
    optimizer restored from a checkpoint) or ``peak_lrs`` (one LR, or one per group) is given;
    the peak is stored as the group's ``initial_lr`` and ``scheduler.base_lrs``. On return
    each group's ``lr`` is ``peak * schedule(start_step)`` (0 at step 0 with warm-up).
    ``start_step > 0`` resumes at that optimizer step without a saved state (torch's own
    schedulers raise ``KeyError: 'initial_lr'`` there on a fresh optimizer).
    Call ``step()`` once per optimizer step, after ``optimizer.step()``.
    """
    return ScheduledLR(optimizer, schedule, peak_lrs=peak_lrs, start_step=start_step)
