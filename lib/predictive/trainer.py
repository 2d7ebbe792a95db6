"""The predictive (hybrid) trainer: some optimizer steps are replaced by predicted updates.

After real training steps a predictor forecasts the next weight updates; during a *Predict*
phase those forecasts are added to the weights with no backward pass (optionally one
forward pass to catch divergence), and *Correct* steps measure how far the forecast was from
the real update. Four phases, every transition logged:

    Warmup --(warmup_steps done)--> Full --(confidence >= threshold)--> Predict
    Predict --(length reached)--> Correct --(confidence ok)--> Predict | --(low)--> Full
    Predict --(loss diverged | confidence fell)--> Full

Predictors share one protocol (``Predictor``). Most of them (``BasisPredictor``) predict an
update per tensor as ``a * u + b * m``, two coefficients on a basis that the trainer keeps:
``u`` the last applied update and ``m`` an EMA of applied updates (``UpdateBasis``). That
keeps a prediction at two scalars per tensor, lets the trainer score every forecast against
the real update from dot products alone (no extra parameter-sized buffer), and covers the
controls: the null predictor (a = b = 0, i.e. "skip the step"), linear extrapolation
(a = LR ratio) and the EMA extrapolator (b = LR ratio / bias correction). The update basis,
the predictor protocol, the predictors and their registry (``PREDICTORS``,
``build_predictor``) and the learned RSSM live in ``lib.predictive.dynamics``; this module
holds the trainer, its config and result, and ``memory_overhead``. The validation protocol
and its figures are a recipe: ``lib.experiments.predictive_study``.

Honesty rules built in: predicted deltas are added to the very ``nn.Parameter`` tensors the
optimizer updates (tests check it); every overhead (basis bookkeeping, predictor fitting,
forward-only checks) is inside the timed step; ``memory_overhead`` counts what the trainer
adds on top of plain training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from lib.core import (
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_number,
    check_positive,
)
from lib.predictive.dynamics import (
    Observation,
    Predictor,
    UpdateBasis,
    fit_coefficients,
    relative_residual,
)
from lib.training import TrainConfig

PHASES = ("warmup", "full", "predict", "correct")
PREDICT_LENGTHS = ("confidence", "max")
# A schedule's step-to-step LR ratio is clipped to this: it scales forecasts, and a ratio from a
# near-zero multiplier (the first warm-up steps) would otherwise make one forecast enormous.
MAX_LR_RATIO = 4.0
# TrainConfig settings the hybrid trainer does not read (see HybridConfig): they must keep their defaults.
TRAIN_SETTINGS_UNSUPPORTED = ("schedule", "grad_accum", "checkpoint_path", "checkpoint_every", "compile")


def lr_ratio(schedule: Callable[[int], float], step: int) -> float:
    """``schedule(step) / schedule(step - 1)`` clipped to [0, ``MAX_LR_RATIO``]; 1 at step 0 or
    after a zero multiplier. Predictors scale an extrapolated update by it."""
    prev = float(schedule(step - 1)) if step > 0 else 0.0
    return float(np.clip(float(schedule(step)) / prev, 0.0, MAX_LR_RATIO)) if prev > 0 else 1.0


# --------------------------------------------------------------------------- the trainer
@dataclass
class HybridConfig:
    """Settings of a ``HybridTrainer`` run: the training settings it shares with plain training
    (``train``, a ``lib.training.TrainConfig``) and its phase lengths and gates. All lengths in
    optimizer steps.

    Of ``train`` the trainer reads ``steps`` (optimizer steps, predicted ones included),
    ``grad_clip`` (on real steps) and ``eval_every``. A trainer that skips backward passes
    cannot run ``lib.training.train``'s loop, so the rest reaches it ready-made, built from the
    same ``TrainConfig`` by the caller (as ``lib.experiments.predictive_study.LMTask`` does):
    data (``batch_size``, ``seq_len``, ``seed``) and ``device`` through ``loss_fn`` and the
    model, the optimizer (``lr``, ``weight_decay``, ``betas``) as ``optimizer``, evaluation
    (``eval_batches``, ``eval_batch_size``) as ``eval_fn``, and the LR schedule as
    ``schedule``, an argument of its own because predicted steps follow it too. So
    ``train.schedule``, ``grad_accum``, checkpointing and ``compile`` must keep their defaults
    (a ValueError otherwise, rather than silently ignoring them); ``train``'s logging,
    progress-bar and divergence settings have no effect (the Predict phase has its own
    divergence check, below).

    ``predict_length``: "confidence" (round(max_predict_steps * conf^2) clamped to
    [min_predict_steps, max_predict_steps]: confident predictors predict longer) or "max"
    (always max_predict_steps, for controlled comparisons with the same step pattern across
    predictors). ``divergence_tolerance``: a forward-checked predict step whose loss exceeds
    the mean of the last ``reference_window`` real-step losses by this fraction ends the
    Predict phase. Each step's batch is unseen until that step, so this is a held-out check.
    ``basis_beta``: EMA decay of the update basis; ``fit_every``: fit the predictor on every
    n-th real step of Full/Correct phases.
    """

    train: TrainConfig
    warmup_steps: int = 20
    full_steps: int = 10
    max_predict_steps: int = 10
    min_predict_steps: int = 1
    correct_steps: int = 2
    confidence_threshold: float = 0.85
    predict_length: str = "confidence"
    check_loss: bool = True
    divergence_tolerance: float = 0.1
    reference_window: int = 5
    basis_beta: float = 0.9
    fit_every: int = 1

    def __post_init__(self):
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a lib.training.TrainConfig, got {type(self.train).__name__}")
        defaults = {f.name: f.default for f in fields(TrainConfig)}
        changed = [n for n in TRAIN_SETTINGS_UNSUPPORTED if getattr(self.train, n) != defaults[n]]
        if changed:
            raise ValueError(f"the hybrid trainer does not implement TrainConfig's {changed}; leave them at their defaults")
        for name in ("max_predict_steps", "min_predict_steps", "correct_steps", "reference_window", "fit_every"):
            setattr(self, name, check_int(name, getattr(self, name), 1))
        for name in ("warmup_steps", "full_steps"):
            setattr(self, name, check_int(name, getattr(self, name), 0))
        check_int("train.eval_every", self.train.eval_every, 0)
        if self.min_predict_steps > self.max_predict_steps:
            raise ValueError(f"min_predict_steps={self.min_predict_steps} exceeds max_predict_steps={self.max_predict_steps}")
        self.confidence_threshold = check_fraction("confidence_threshold", self.confidence_threshold)
        self.predict_length = check_choice("predict_length", self.predict_length, PREDICT_LENGTHS)
        self.check_loss = check_bool("check_loss", self.check_loss)
        self.divergence_tolerance = check_positive("divergence_tolerance", self.divergence_tolerance)
        self.basis_beta = check_number("basis_beta", self.basis_beta, 0.0, 1.0, strict_min=True, strict_max=True)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the run (``train.steps``)."""
        return self.train.steps


@dataclass
class HybridResult:
    """``history``: one row per optimizer step; ``transitions``: (step, from, to, reason);
    ``evals``: (step, real_steps, wall_s, val_loss); ``memory``: bytes added over plain
    training; ``elapsed_s``: training wall-clock (evaluation excluded)."""

    history: pd.DataFrame
    transitions: pd.DataFrame
    evals: pd.DataFrame
    memory: dict
    elapsed_s: float
    predictor: str = "plain"
    extra: dict = field(default_factory=dict)

    @property
    def real_steps(self) -> list[int]:
        return self.history.loc[self.history["real"], "step"].tolist()

    @property
    def predicted_share(self) -> float:
        """Fraction of optimizer steps that skipped the backward pass."""
        return float((~self.history["backward"]).mean())


class HybridTrainer:
    """Run ``config.train.steps`` optimizer steps, some of them predicted.

    ``loss_fn(model, step) -> scalar loss`` must be a pure function of ``step`` for its data
    (same data order in every arm). ``schedule(step) -> LR multiplier`` (e.g. a
    ``lib.schedules`` object) scales each param group's initial ``lr``; it is indexed by the
    global step, predicted steps included (None: a constant LR). ``predictor=None`` is plain
    training through the same code path (no basis, no overhead). ``eval_fn(model) -> float``
    (held-out loss) runs every ``config.train.eval_every`` steps and at the end, outside the
    timed region.
    ``sync`` is called before reading the clock (pass ``torch.cuda.synchronize`` on GPU).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[nn.Module, int], Tensor], config: HybridConfig,
                 predictor: Predictor | None = None, schedule: Callable[[int], float] | None = None,
                 eval_fn: Callable[[nn.Module], float] | None = None,
                 sync: Callable[[], None] | None = None):
        if not isinstance(config, HybridConfig):
            raise ValueError(f"config must be a HybridConfig, got {type(config).__name__}")
        if predictor is not None and not isinstance(predictor, Predictor):
            raise ValueError(f"predictor must be a lib.predictive.Predictor or None, got {type(predictor).__name__}")
        self.model, self.optimizer, self.loss_fn, self.config = model, optimizer, loss_fn, config
        self.predictor, self.eval_fn = predictor, eval_fn
        self.schedule = schedule if schedule is not None else (lambda step: 1.0)
        self.sync = sync or (lambda: None)
        self.params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        self.peak_lrs = [g["lr"] for g in optimizer.param_groups]
        self.basis = UpdateBasis(self.params, config.basis_beta) if predictor is not None else None
        if predictor is not None:
            predictor.bind(self.basis)

    # ---- helpers
    def _lr_mult(self, step: int) -> float:
        return float(self.schedule(step))

    def _lr_ratio(self, step: int) -> float:
        return lr_ratio(self.schedule, step)

    def _predict_length(self, conf: float) -> int:
        c = self.config
        if c.predict_length == "max":
            return c.max_predict_steps
        return int(np.clip(round(c.max_predict_steps * conf * conf), c.min_predict_steps, c.max_predict_steps))

    def _real_step(self, step: int, horizon: int, fit: bool) -> dict:
        row = {"real": True, "backward": True}
        mult = self._lr_mult(step)
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs):
            group["lr"] = peak * mult
        forecast, fit_s = None, 0.0
        if self.basis is not None:
            if self.predictor.ready:
                forecast = self.predictor.forecast_coefficients(horizon, self._lr_ratio(step))
            self.basis.snapshot()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model, step)
        loss.backward()
        grad_norms = None
        if self.basis is not None:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            grad_norms = torch.stack(torch._foreach_norm(grads)).cpu().numpy()
        if self.config.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.train.grad_clip)
        self.optimizer.step()
        row["loss"] = float(loss.detach())
        if self.basis is not None:
            dots = self.basis.real_update()
            residual = relative_residual(dots, forecast) if forecast is not None else float("nan")
            self.predictor.observe(Observation(
                step=step, loss=row["loss"], lr_mult=mult, gap=horizon,
                coefficients=fit_coefficients(dots), update_norms=np.sqrt(dots["dd"]),
                grad_norms=grad_norms, residual=residual, horizon=horizon))
            row.update(update_norm=float(np.sqrt(dots["dd"].sum())), residual=residual, horizon=horizon)
            if fit:
                t_fit = time.perf_counter()
                self.predictor.fit()
                fit_s = time.perf_counter() - t_fit
        row["fit_s"] = fit_s
        return row

    def _predict_step(self, step: int, k: int) -> dict | None:
        """One predicted step (k-th of the rollout); None if the loss check says diverged."""
        row = {"real": False, "backward": False, "horizon": k}
        if self.config.check_loss:
            with torch.no_grad():
                loss = float(self.loss_fn(self.model, step))
            reference = float(np.mean(self._recent_losses[-self.config.reference_window:]))
            row["loss"] = loss
            if not math.isfinite(loss) or loss > reference * (1.0 + self.config.divergence_tolerance):
                self._diverged = (loss, reference)
                return None
        delta = self.predictor.next_update(self.basis, k, self._lr_ratio(step))
        if delta is None:
            self._diverged = None
            return None
        row["update_norm"] = self.basis.apply(delta)
        predicted_loss = getattr(self.predictor, "predicted_loss", None)
        if predicted_loss is not None:
            row["predicted_loss"] = predicted_loss(k)
        return row

    # ---- the loop
    def run(self, progress: bool = False) -> HybridResult:
        c, pred = self.config, self.predictor
        eval_every = c.train.eval_every
        rows, transitions, evals = [], [], []
        phase = "warmup" if c.warmup_steps > 0 else "full"
        phase_steps, predict_len, k, last_real = 0, 0, 0, -1
        self._recent_losses: list[float] = []
        wall = 0.0
        n_real = 0

        def move(step, new, reason):
            nonlocal phase, phase_steps
            transitions.append({"step": step, "from": phase, "to": new, "reason": reason})
            phase, phase_steps = new, 0

        def evaluate(step):
            if self.eval_fn is not None:
                self.model.eval()
                val = float(self.eval_fn(self.model))
                self.model.train()
                evals.append({"step": step, "real_steps": n_real, "wall_s": wall, "val_loss": val})

        self.model.train()
        if eval_every:
            evaluate(0)
        for step in range(c.total_steps):
            self.sync()
            t0 = time.perf_counter()
            row = None
            if phase == "predict":
                k += 1
                row = self._predict_step(step, k)
                if row is None:  # diverged: fall back to Full, this step becomes a real one
                    info = self._diverged
                    reason = (f"divergence: loss {info[0]:.4g} > {info[1]:.4g} x (1 + {c.divergence_tolerance:g})"
                              if info else "predictor returned no update")
                    move(step, "full", reason)
                    phase_steps = 0
            if row is None:
                row = self._real_step(step, horizon=step - last_real if last_real >= 0 else 1,
                                      fit=phase in ("full", "correct") and (n_real % c.fit_every == 0))
                last_real = step
                n_real += 1
                self._recent_losses.append(row["loss"])
            self.sync()
            row["step_s"] = time.perf_counter() - t0
            wall += row["step_s"]
            phase_for_row = phase
            phase_steps += 1
            # transitions (decided after the step, take effect on the next one)
            conf = pred.confidence() if pred is not None else float("nan")
            if pred is not None:
                if phase == "warmup" and phase_steps >= c.warmup_steps:
                    move(step + 1, "full", f"warmup of {c.warmup_steps} steps done")
                elif phase in ("full", "correct") and pred.ready and phase_steps >= (c.full_steps if phase == "full" else c.correct_steps):
                    if conf >= c.confidence_threshold:
                        predict_len, k = self._predict_length(conf), 0
                        pred.start_rollout([self._lr_mult(s) for s in range(step + 1, step + predict_len + 2)])
                        move(step + 1, "predict", f"confidence {conf:.3f} >= {c.confidence_threshold:g}; length {predict_len}")
                    elif phase == "correct":
                        move(step + 1, "full", f"confidence {conf:.3f} < {c.confidence_threshold:g} after correction")
                elif phase == "predict" and k >= predict_len:
                    move(step + 1, "correct", f"predict length {predict_len} reached")
            elif phase == "warmup" and phase_steps >= c.warmup_steps:
                move(step + 1, "full", f"warmup of {c.warmup_steps} steps done")
            row.update(step=step, phase=phase_for_row, lr_mult=self._lr_mult(step), confidence=conf, wall_s=wall)
            rows.append(row)
            if eval_every and (step + 1) % eval_every == 0 and step + 1 < c.total_steps:
                evaluate(step + 1)
            if progress and (step + 1) % max(c.total_steps // 10, 1) == 0:
                print(f"step {step + 1}/{c.total_steps} phase={phase} loss={row.get('loss', float('nan')):.4f}")
        evaluate(c.total_steps)
        cols = ["step", "phase", "real", "backward", "loss", "lr_mult", "update_norm", "residual",
                "horizon", "confidence", "predicted_loss", "fit_s", "step_s", "wall_s"]
        history = pd.DataFrame(rows).reindex(columns=cols)
        history[["real", "backward"]] = history[["real", "backward"]].astype(bool)
        return HybridResult(
            history=history,
            transitions=pd.DataFrame(transitions, columns=["step", "from", "to", "reason"]),
            evals=pd.DataFrame(evals, columns=["step", "real_steps", "wall_s", "val_loss"]),
            memory=memory_overhead(self), elapsed_s=wall,
            predictor=pred.name if pred is not None else "plain")


def memory_overhead(trainer: HybridTrainer) -> dict:
    """Bytes a ``HybridTrainer`` holds on top of plain training with the same optimizer.

    ``basis_bytes`` (u, m, snapshot: 3 x fp32 parameters), ``predictor_bytes`` (its model,
    optimizer state and history), ``transient_bytes`` (the flat predicted delta and one
    temporary while it is formed, alive only during a predict step).
    """
    param_bytes = sum(p.numel() * p.element_size() for p in trainer.params)
    if trainer.basis is None:
        return {"param_bytes": param_bytes, "basis_bytes": 0, "predictor_bytes": 0,
                "transient_bytes": 0, "total_bytes": 0, "total_over_params": 0.0}
    basis = trainer.basis.nbytes
    predictor = int(trainer.predictor.nbytes)
    transient = 2 * trainer.basis.u.numel() * trainer.basis.u.element_size()
    total = basis + predictor + transient
    return {"param_bytes": param_bytes, "basis_bytes": basis, "predictor_bytes": predictor,
            "transient_bytes": transient, "total_bytes": total,
            "total_over_params": total / param_bytes}

