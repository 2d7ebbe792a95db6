"""Watch training runs live in TensorBoard.

``TensorBoardLogger(log_dir)`` is a ``train`` callback that writes, through torch's
``SummaryWriter``, one scalar per logged step for

- ``train/loss``, ``train/grad_norm`` (before clipping; absent when ``grad_clip`` is None),
  ``train/tokens_per_s`` (between logged steps) and ``train/tokens``;
- ``train/lr/<optimizer>/<group>``: the LR each param group of each optimizer used in the step;
- ``val/<metric>`` at every evaluation (loss, accuracy, perplexity);
- ``moe/<statistic>``: the routing statistics of ``lib.models.routing_summary`` (load ratio,
  load CV, router entropy, overflow, balance and z losses), averaged over the MoE layers and the
  step's training forwards only (evaluation forwards are not counted). Models without MoE layers
  log none.

Sweeps write one run directory per run id: ``run_sweep(..., log_dir=...)`` (or
``$WORKBENCH_RUNS_DIR``, which ``invoke lab`` sets to ``build/runs``) runs each config inside
``run_logdir(<log_dir>/<sweep>/<run_id>)``, and ``train`` adds a logger for the active run
directory by itself, so a notebook's run function needs no change. ``invoke board`` starts
TensorBoard on that folder.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator
from pathlib import Path

from lib.models import moe_layers

__all__ = ["RUNS_ENV", "TensorBoardLogger", "runs_dir", "run_logdir", "active_logdir"]

RUNS_ENV = "WORKBENCH_RUNS_DIR"

_ACTIVE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("workbench_logdir", default=None)


def runs_dir() -> Path | None:
    """The runs directory sweeps log to by default: ``$WORKBENCH_RUNS_DIR``, or None (no logging)."""
    value = os.environ.get(RUNS_ENV, "").strip()
    return Path(value) if value else None


@contextlib.contextmanager
def run_logdir(path: str | os.PathLike | None) -> Iterator[Path | None]:
    """Make ``path`` the run directory every ``train`` call inside the block logs to.

    ``None`` turns logging off inside the block (a run nested in a logged one logs nowhere)."""
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be None or a path, got {type(path).__name__}")
    value = Path(path) if path is not None else None
    token = _ACTIVE.set(value)
    try:
        yield value
    finally:
        _ACTIVE.reset(token)


def active_logdir() -> Path | None:
    """The run directory set by the innermost ``run_logdir`` block, or None."""
    return _ACTIVE.get()


def _group_tags(optimizers) -> list[list[str]]:
    tags = []
    for i, opt in enumerate(optimizers):
        name = f"{i}_{type(opt).__name__.lower()}"
        tags.append([f"train/lr/{name}/{group.get('name', j)}" for j, group in enumerate(opt.param_groups)])
    return tags


class TensorBoardLogger:
    """A ``train`` callback writing the run's scalars to ``log_dir`` (see the module docstring).

    Call ``close()`` (``train`` does, through ``on_train_end``) to flush the last events; the
    writer also flushes every ``flush_secs`` seconds, so a live TensorBoard follows the run.
    """

    def __init__(self, log_dir: str | os.PathLike, flush_secs: int = 10):
        if not isinstance(log_dir, (str, os.PathLike)):
            raise ValueError(f"log_dir must be a path, got {type(log_dir).__name__}")
        if not isinstance(flush_secs, int) or isinstance(flush_secs, bool) or flush_secs < 1:
            raise ValueError(f"flush_secs must be an int >= 1, got {flush_secs!r}")
        self.log_dir = Path(log_dir)
        self.flush_secs = flush_secs
        self._writer = None
        self._hooks: list | None = None  # forward hooks on the MoE layers, set at the first step
        self._routing: list[dict[str, float]] = []
        self._lrs: list[list[float]] = []
        self._last: tuple[int, float] | None = None  # (tokens, elapsed_s) of the last logged row

    @property
    def writer(self):
        """The ``torch.utils.tensorboard.SummaryWriter`` (opened on first use)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=self.flush_secs)
        return self._writer

    def _record_routing(self, module, inputs, output) -> None:
        if module.training:
            stats = module.last_stats
            self._routing.append({k: float(v) for k, v in stats.items() if k != "load"})

    def on_step_start(self, state) -> None:
        if self._hooks is None:
            model = getattr(state.model, "module", state.model)  # DDP wraps the model
            self._hooks = [m.register_forward_hook(self._record_routing) for m in moe_layers(model)]
        self._routing.clear()
        self._lrs = [[float(g["lr"]) for g in opt.param_groups] for opt in state.optimizers]

    def on_step_end(self, state) -> None:
        row = state.history[-1] if state.history else None
        if row is None or row.get("step") != state.step:
            return  # not a logged step (log_every)
        w, step = self.writer, state.step
        w.add_scalar("train/loss", row["loss"], step)
        if math.isfinite(row.get("grad_norm", float("nan"))):
            w.add_scalar("train/grad_norm", row["grad_norm"], step)
        w.add_scalar("train/tokens", row["tokens"], step)
        tokens0, elapsed0 = self._last if self._last is not None else (0, 0.0)
        if self._last is None and len(state.history) > 1:  # resumed: measure from the previous row
            tokens0, elapsed0 = state.history[-2]["tokens"], state.history[-2]["elapsed_s"]
        dt = row["elapsed_s"] - elapsed0
        if dt > 0:
            w.add_scalar("train/tokens_per_s", (row["tokens"] - tokens0) / dt, step)
        self._last = (row["tokens"], row["elapsed_s"])
        for tags, lrs in zip(_group_tags(state.optimizers), self._lrs):
            for tag, lr in zip(tags, lrs):
                w.add_scalar(tag, lr, step)
        if self._routing:
            for key in self._routing[0]:
                w.add_scalar(f"moe/{key}", sum(r[key] for r in self._routing) / len(self._routing), step)

    def on_eval(self, state, metrics: dict) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"val/{key}", float(value), state.step)
        self.writer.flush()

    def on_train_end(self, state) -> None:
        self.close()

    def close(self) -> None:
        """Remove the routing hooks and flush and close the event file."""
        for hook in self._hooks or ():
            hook.remove()
        self._hooks = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

