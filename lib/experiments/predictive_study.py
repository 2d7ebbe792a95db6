"""Validation protocol of the predictive trainer (notebook 05, ``benchmarks/bench_predictive.py``).

Measured the way the literature measures such methods (NiNo, WNN): held-out loss against
optimizer steps and wall-clock for the same model, data order and optimizer, several seeds,
every overhead inside the clock. Arms:

- ``plain``: AdamW, warm-up + cosine schedule fitted to its own ``steps`` budget.
- ``null`` / ``linear`` / ``ema`` / ``rssm``: the hybrid trainer over the same ``steps`` and
  schedule, with a *forced* phase pattern (confidence threshold 0, fixed predict length) so
  all predictors skip the backward pass on the same steps; the null predictor is the
  "skip the step" control.
- ``rssm_gated``: the RSSM with the confidence gate as designed (threshold, length rule).
- ``perweight``: ``lib.predictive.PerWeightPredictor``, per-weight jumps of ``jump`` steps
  (at least 10) applied every ``jump + correct`` steps, from a small network shared by all
  weights and trained online on the run's own snapshots (no forward checks on its no-op steps).
- ``plain_matched``: plain training with as many real gradient steps as the forced arms
  and a schedule fitted to that budget (the compute-matched control).

Every arm is swept over the same peak-LR grid (``lrs``) with the same seeds and compared at its
own best LR (lowest mean final held-out loss), so no baseline is handicapped by an LR tuned for
another arm. Time to target is read off each run's evaluation curve by linear interpolation
between the two evaluations that bracket the target (in steps and in wall-clock), so the
evaluation interval does not quantise it. Every seed counts: a seed that never reaches the
target is right-censored and medians are over all seeds (``lib.core.median_censored``).
Speedup = plain's wall-clock to the held-out target / the arm's, per seed (0 for a censored
seed), median over seeds; the target is plain's worst final held-out loss over seeds (at its
best LR) times (1 + ``target_slack``).

Every arm runs through ``lib.predictive.HybridTrainer`` (plain ones with no predictor), so
all share one code path and one clock. An ``LMTask`` holds the run's ``lib.training.TrainConfig``
(steps, batch, sequence length, LR, evaluation, data seed, device) and builds from it what
the trainer takes ready-made: the loss and evaluation functions, the model, AdamW and the
schedule. Intervals are ``lib.core.t_interval`` (Student-t over seeds).

Verdicts (``aa_noise``, ``comparisons``): every predictor arm's final held-out loss against
``plain``'s and ``plain_matched``'s, paired on the seed, as one family of paired t-tests
Holm-adjusted together (``lib.core.holm``). An arm is called "lower" / "higher" only when its
adjusted p-value rejects and the difference is at least the minimum detectable effect of the
A/A noise (``lib.core.min_detectable_effect``, ``lib.core.decide_difference``); otherwise the
answer is "cannot decide".
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pandas as pd
import torch

from lib.core import (
    autocast,
    check_choice,
    check_confidence,
    check_int,
    check_number,
    check_positive,
    check_seed,
    decide_difference,
    holm,
    in_batch,
    median_censored,
    min_detectable_effect,
    paired_difference,
    pick_device,
    process_map,
    t_interval,
)
from lib.data import synthetic_corpus
from lib.models import ModelConfig, Transformer
from lib.predictive import (
    HybridConfig,
    HybridResult,
    HybridTrainer,
    Observation,
    UpdateBasis,
    build_predictor,
    fit_coefficients,
    lr_ratio,
)
from lib.scaling import PlannedRun
from lib.training import TrainConfig, default_optimizer, default_schedule, evaluate

# The embedded synthetic corpus's vocabulary (``lib.data.synthetic_corpus``'s default), for
# planning runs without building the corpus.
_VOCAB = 256
ARMS = ("plain", "null", "linear", "ema", "rssm", "rssm_gated", "perweight", "plain_matched")
# Predictors of the horizon study: the registered ones plus the in-family oracle (the best
# two-scalar coefficients per tensor in hindsight, a bound on every a*u + b*m predictor).
HORIZON_PREDICTORS = ("null", "linear", "ema", "rssm", "perweight", "oracle")
# Held-out batches of 16 sequences in both profiles, whatever their training batch size (the
# smoke run of the full profile evaluates on smaller ones).
EVAL_BATCH_SIZE = 16

# Sizes of the notebook's and the benchmark's two profiles (``lib.core.profile_settings``).
# ``lr`` is the centre of the LR grid ``lrs`` every arm is swept over; ``jump`` / ``snapshot_every``
# / ``history`` are the per-weight predictor's (its Predict phase is one jump of ``jump`` steps,
# then ``jump`` real steps); ``workers`` processes share the runs (each single-threaded).
QUICK = dict(d_model=32, n_layers=2, n_heads=2, seq_len=32, batch_size=16, steps=160, lr=6e-3,
             lrs=(3e-3, 6e-3, 1.2e-2), warmup_steps=32, full_steps=8, max_predict_steps=4, correct_steps=4,
             eval_every=8, eval_batches=8, seeds=(0, 1, 2), horizon=10, anchor_every=16, train_tokens=200_000,
             jump=10, snapshot_every=5, history=4, eval_batch_size=EVAL_BATCH_SIZE, threads=1, workers=2)
FULL = dict(d_model=256, n_layers=6, n_heads=8, seq_len=256, batch_size=32, steps=2000, lr=1e-3,
            lrs=(5e-4, 1e-3, 2e-3), warmup_steps=200, full_steps=50, max_predict_steps=8, correct_steps=8,
            eval_every=25, eval_batches=16, horizon=20, anchor_every=100, train_tokens=20_000_000,
            jump=20, snapshot_every=10, history=4, threads=None, workers=1)
# The full profile cut to a CPU smoke run: its model shapes, arms, LR grid ends and code paths,
# 30 steps of one sequence, 2 seeds, phases short enough that every predictor (the per-weight
# one's single jump included; the gated RSSM in the higher-LR runs, where its confidence clears
# the gate) gets to predict. Two single-threaded workers: two workers at
# torch's default thread count oversubscribe a 2-core CPU and ran the protocol 7x slower.
SMOKE = dict(steps=30, batch_size=1, lrs=(5e-4, 2e-3), warmup_steps=6, full_steps=4, max_predict_steps=4,
             correct_steps=4, eval_every=15, eval_batches=1, eval_batch_size=2, seeds=(0, 1), horizon=10,
             anchor_every=10, train_tokens=200_000, jump=10, snapshot_every=2, history=2, workers=2, threads=1)


@dataclass
class LMTask:
    """A small LM training problem on a ``lib.data.TokenData``.

    ``train``: the run's ``lib.training.TrainConfig``: ``steps``, ``batch_size`` (sequences per
    step), ``seq_len``, ``lr`` (AdamW's peak, with its ``weight_decay`` and ``betas``),
    ``grad_clip``, ``eval_every`` / ``eval_batches`` / ``eval_batch_size``, ``seed`` (the data
    order; model seeds are per run) and ``device``. Its ``schedule`` stays None: each arm gets
    a warm-up + cosine schedule fitted to its own step budget. ``hybrid``: ``HybridConfig``
    phase settings of every predictor arm; ``gated``: what the gated arm changes; ``rssm``:
    ``RSSMPredictor`` settings; ``perweight``: ``PerWeightPredictor`` settings (its arm's
    Predict phase is one jump of ``jump`` steps followed by ``jump`` real steps, with no
    forward checks: its other predicted steps add nothing).
    """

    data: object
    model_config: object
    train: TrainConfig
    hybrid: dict = field(default_factory=lambda: dict(
        warmup_steps=40, full_steps=10, max_predict_steps=4, correct_steps=4))
    gated: dict = field(default_factory=lambda: dict(confidence_threshold=0.5, min_predict_steps=2))
    rssm: dict = field(default_factory=dict)
    perweight: dict = field(default_factory=lambda: dict(jump=10, every=5, history=4))

    def __post_init__(self):
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a lib.training.TrainConfig, got {type(self.train).__name__}")
        check_int("train.eval_every", self.train.eval_every, 1)  # the protocol compares eval curves
        if self.train.schedule is not None:
            raise ValueError("train.schedule must be None: every arm fits a schedule to its own step budget")
        for name in ("hybrid", "gated", "rssm", "perweight"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(f"{name} must be a dict of settings, got {getattr(self, name)!r}")
        phase_settings = {f.name for f in fields(HybridConfig)} - {"train"}
        unknown = sorted(set(self.hybrid) - phase_settings) + sorted(set(self.gated) - phase_settings)
        if unknown:
            raise ValueError(f"hybrid / gated set {unknown}, which are not HybridConfig phase settings "
                             f"{sorted(phase_settings)} (steps and evaluation are train's)")
        for arm in ("null", "rssm_gated", "perweight"):  # fail here, not mid-protocol, on a bad setting
            self.hybrid_config(arm, self.train.steps)
        self.build_predictor("perweight", 0)

    @property
    def device(self) -> torch.device:
        return pick_device(self.train.device)

    def loss_fn(self):
        t, device = self.train, self.device

        def loss(model, step):
            x, y = self.data.batch("train", step, t.batch_size, t.seq_len, seed=t.seed)
            with autocast(device):
                return model(x.to(device), y.to(device)).loss
        return loss

    def eval_fn(self):
        t, device = self.train, self.device
        batch_size = t.eval_batch_size or t.micro_batch_size
        return lambda model: evaluate(model, self.data, t.seq_len, batch_size, t.eval_batches, device=device)["loss"]

    def build_model(self, seed: int):
        torch.manual_seed(check_seed("seed", seed))
        return Transformer(copy.deepcopy(self.model_config)).to(self.device)

    def build_optimizer(self, model, lr: float | None = None):
        """AdamW at peak ``lr`` (default: ``train.lr``)."""
        t = self.train
        return default_optimizer(model, t.lr if lr is None else check_positive("lr", lr), t.weight_decay, t.betas)

    def build_predictor(self, name: str, seed: int):
        """The predictor ``name`` with this task's settings (None for plain training)."""
        kwargs = {"rssm": dict(self.rssm, seed=seed), "perweight": dict(self.perweight, seed=seed)}.get(name, {})
        return build_predictor(name, **kwargs)

    def hybrid_config(self, arm: str, steps: int) -> HybridConfig:
        """The ``HybridConfig`` of ``arm`` over ``steps`` optimizer steps: forced arms predict
        from the first chance (threshold 0) for the full length, so they share one step pattern."""
        kw = dict(self.hybrid)
        if arm == "rssm_gated":
            kw.update(self.gated)
        elif arm not in ("plain", "plain_matched"):
            kw.update(confidence_threshold=0.0, predict_length="max")
        if arm == "perweight":
            jump = self.perweight.get("jump", 10)
            kw.update(max_predict_steps=jump, min_predict_steps=1, correct_steps=jump, check_loss=False)
        return HybridConfig(train=replace(self.train, steps=steps), **kw)


def make_task(settings, device="cpu") -> LMTask:
    """The LM task of a profile (a ``QUICK``/``FULL``-shaped mapping or namespace) on the
    embedded synthetic corpus."""

    s = settings if isinstance(settings, Mapping) else vars(settings)
    data = synthetic_corpus(n_train_tokens=s["train_tokens"], n_val_tokens=max(s["train_tokens"] // 10, 20_000))
    config = ModelConfig(vocab_size=data.vocab_size, d_model=s["d_model"], n_layers=s["n_layers"],
                         n_heads=s["n_heads"], max_seq_len=s["seq_len"])
    train = TrainConfig(steps=s["steps"], batch_size=s["batch_size"], seq_len=s["seq_len"], lr=s["lr"],
                        eval_every=s["eval_every"], eval_batches=s["eval_batches"],
                        eval_batch_size=s.get("eval_batch_size", EVAL_BATCH_SIZE),
                        device=str(device))
    return LMTask(data, config, train,
                  hybrid={k: s[k] for k in ("warmup_steps", "full_steps", "max_predict_steps", "correct_steps")},
                  perweight=dict(jump=s["jump"], every=s["snapshot_every"], history=s["history"]))


def pattern_real_steps(steps: int, warmup: int, full: int, predict: int, correct: int) -> int:
    """Real gradient steps of a forced phase pattern (``warmup`` + ``full`` real steps, then
    cycles of ``predict`` predicted and ``correct`` real steps) over ``steps`` optimizer steps."""
    real, step = min(warmup + full, steps), warmup + full
    while step < steps:
        step += min(predict, steps - step)
        n = min(correct, max(steps - step, 0))
        real, step = real + n, step + n
    return real


def forced_real_steps(task: LMTask, arm: str = "null") -> int:
    """Real gradient steps of a forced-pattern hybrid run of ``arm`` without divergence fallbacks."""
    c = task.hybrid_config(check_choice("arm", arm, ARMS), task.train.steps)
    return pattern_real_steps(c.total_steps, c.warmup_steps, c.full_steps, c.max_predict_steps, c.correct_steps)


def run_arm(task: LMTask, arm: str, seed: int, lr: float | None = None) -> HybridResult:
    """One training run of ``arm`` (see ``ARMS``) with model seed ``seed`` at peak ``lr``
    (default: the task's)."""

    check_choice("arm", arm, ARMS)
    steps = forced_real_steps(task) if arm == "plain_matched" else task.train.steps
    model = task.build_model(seed)
    optimizer = task.build_optimizer(model, lr)
    name = {"plain_matched": "plain", "rssm_gated": "rssm"}.get(arm, arm)
    predictor = task.build_predictor(name, seed)
    sync = torch.cuda.synchronize if task.device.type == "cuda" else None
    trainer = HybridTrainer(model, optimizer, task.loss_fn(), task.hybrid_config(arm, steps),
                            predictor=predictor, schedule=default_schedule(steps),
                            eval_fn=task.eval_fn(), sync=sync)
    result = trainer.run()
    result.predictor = arm
    result.extra["lr"] = float(task.train.lr if lr is None else lr)
    if predictor is not None and hasattr(predictor, "fit_seconds"):
        result.extra.update(fit_s=predictor.fit_seconds, predict_s=predictor.predict_seconds)
    return result


_WORKER_TASK: LMTask | None = None


def _init_worker(task: LMTask) -> None:
    global _WORKER_TASK
    _WORKER_TASK = task


def _run_in_worker(arm: str, seed: int, lr: float) -> HybridResult:
    return run_arm(_WORKER_TASK, arm, seed, lr)


def run_protocol(task: LMTask, arms=ARMS, seeds=(0, 1, 2), lrs: Sequence[float] | None = None,
                 workers: int = 1, threads: int | None = 1, progress: bool = False) -> dict:
    """All arms x peak LRs ``lrs`` (default: the task's one LR) x seeds, interleaved per seed so
    machine noise hits every arm alike, each arm then taken at its own best LR.

    ``workers > 1`` runs that many processes (spawned, ``threads`` each) that share the runs;
    every run keeps its own clock. Returns {"results": {(arm, seed): HybridResult at the arm's
    best LR}, "evals", "history" (DataFrames of those), "best_lr": {arm: lr}, "lr_table" (mean
    and 95% CI of the final held-out loss per arm and LR), "all": {(arm, lr, seed): result}}.
    """
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"arms must be drawn from {ARMS}, got {bad}")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or len(seeds) < 1:
        raise ValueError(f"seeds must be a non-empty sequence of seeds, got {seeds!r}")
    seeds = [check_seed(f"seeds[{i}]", s) for i, s in enumerate(seeds)]
    lrs = [task.train.lr] if lrs is None else [check_positive(f"lrs[{i}]", v) for i, v in enumerate(lrs)]
    if not lrs:
        raise ValueError("lrs must hold at least one peak LR")
    workers = check_int("workers", workers, 1)
    jobs = [(arm, seed, lr) for seed in seeds for lr in lrs for arm in arms]
    if workers > 1:
        done = process_map(_run_in_worker, jobs, workers, threads or None, initializer=_init_worker,
                           initargs=(task,))
    else:
        done = []
        for arm, seed, lr in jobs:
            t0 = time.perf_counter()
            done.append(run_arm(task, arm, seed, lr))
            if progress:
                res = done[-1]
                print(f"seed {seed} lr {lr:g} {arm:>13}: val {res.evals['val_loss'].iloc[-1]:.4f} "
                      f"train {res.elapsed_s:.1f}s (total {time.perf_counter() - t0:.1f}s)")
    everything = {(arm, lr, seed): res for (arm, seed, lr), res in zip(jobs, done)}
    rows = [{"arm": arm, "lr": lr, "seed": seed, "final": res.evals["val_loss"].iloc[-1]}
            for (arm, lr, seed), res in everything.items()]
    finals = pd.DataFrame(rows)
    lr_table = []
    for (arm, lr), g in finals.groupby(["arm", "lr"], sort=False):
        m, ci = t_interval(g["final"])
        lr_table.append({"arm": arm, "lr": lr, "final_val_loss": m, "ci": ci, "seeds": len(g)})
    lr_table = pd.DataFrame(lr_table)
    best_lr = {arm: float(g.loc[g["final_val_loss"].idxmin(), "lr"]) for arm, g in lr_table.groupby("arm", sort=False)}
    lr_table["best"] = [best_lr[a] == lr for a, lr in zip(lr_table["arm"], lr_table["lr"])]
    lr_table["at_edge"] = [bool(lr in (min(lrs), max(lrs)) and len(lrs) > 1) for lr in lr_table["lr"]]
    results = {(arm, seed): everything[(arm, best_lr[arm], seed)] for arm in arms for seed in seeds}
    return {"results": results,
            "evals": pd.concat([r.evals.assign(arm=a, seed=s) for (a, s), r in results.items()], ignore_index=True),
            "history": pd.concat([r.history.assign(arm=a, seed=s) for (a, s), r in results.items()], ignore_index=True),
            "best_lr": best_lr, "lr_table": lr_table, "all": everything}


def time_to_target(evals: pd.DataFrame, target: float) -> tuple[float, float]:
    """(step, wall_s) at which an evaluation curve first reaches ``target``, linearly
    interpolated between the two evaluations that bracket it; (nan, nan) if it never does."""
    loss = evals["val_loss"].to_numpy(dtype=float)
    hit = np.flatnonzero(loss <= target)
    if hit.size == 0:
        return float("nan"), float("nan")
    i = int(hit[0])
    step, wall = evals["step"].to_numpy(dtype=float), evals["wall_s"].to_numpy(dtype=float)
    if i == 0 or loss[i - 1] == loss[i]:
        return float(step[i]), float(wall[i])
    frac = (loss[i - 1] - target) / (loss[i - 1] - loss[i])
    return float(step[i - 1] + frac * (step[i] - step[i - 1])), float(wall[i - 1] + frac * (wall[i] - wall[i - 1]))


def summarize(protocol: dict, target_slack: float = 0.01, speedup_goal: float = 1.3) -> tuple[pd.DataFrame, float]:
    """The speedup table (one row per arm, each at its best LR) and the held-out target used.

    Target = plain's worst final held-out loss over seeds x (1 + target_slack), so plain
    reaches it in every seed. Times to target are interpolated (``time_to_target``); every seed
    counts: ``steps_to_target`` / ``wall_to_target_s`` are medians over all seeds with the
    seeds that never reach the target right-censored (``lib.core.median_censored``: inf when
    half or more never reach it), and ``censored`` counts those seeds. ``speedup_wall`` /
    ``speedup_steps``: median over seeds of plain's time to target / the arm's, paired per
    seed (0 for a censored seed). ``delta_vs_plain`` and ``delta_vs_matched`` are paired
    per-seed differences of final loss (nats/token) against ``plain`` and ``plain_matched``
    (mean and 95% t half-width). ``meets_goal``: median wall-clock speedup >= ``speedup_goal``
    and mean final loss at most ``target_slack`` (relative) above plain's.
    """
    check_positive("target_slack", target_slack, allow_zero=True)
    check_positive("speedup_goal", speedup_goal)
    results = protocol["results"]
    arms = list(dict.fromkeys(a for a, _ in results))
    seeds = sorted({s for _, s in results})
    if "plain" not in arms:
        raise ValueError("the protocol must include the 'plain' arm")
    best_lr = protocol.get("best_lr", {})
    plain_final = np.mean([results[("plain", s)].evals["val_loss"].iloc[-1] for s in seeds])
    target = max(results[("plain", s)].evals["val_loss"].iloc[-1] for s in seeds) * (1 + target_slack)
    final_of = lambda arm, s: results[(arm, s)].evals["val_loss"].iloc[-1]
    rows = []
    for arm in arms:
        per = {"final": [], "wall": [], "steps_to": [], "wall_to": [], "speedup": [], "speedup_steps": [],
               "share": [], "moved": [], "real": []}
        for s in seeds:
            r = results[(arm, s)]
            step_to, wall_to = time_to_target(r.evals, target)
            p_step, p_wall = time_to_target(results[("plain", s)].evals, target)
            reached = np.isfinite(wall_to)
            per["final"].append(r.evals["val_loss"].iloc[-1])
            per["wall"].append(r.elapsed_s)
            per["steps_to"].append(step_to)
            per["wall_to"].append(wall_to)
            per["speedup"].append(p_wall / wall_to if reached and wall_to > 0 else 0.0)
            per["speedup_steps"].append(p_step / step_to if reached and step_to > 0 else 0.0)
            per["share"].append(r.predicted_share)
            pred = r.history[~r.history["backward"]]
            per["moved"].append(float((pred["update_norm"] > 0).mean()) if len(pred) else float("nan"))
            per["real"].append(int(r.history["real"].sum()))
        reached = np.isfinite(per["wall_to"])
        final, final_ci = t_interval(per["final"])
        d_plain = t_interval([final_of(arm, s) - final_of("plain", s) for s in seeds])
        d_matched = (t_interval([final_of(arm, s) - final_of("plain_matched", s) for s in seeds])
                     if "plain_matched" in arms else (float("nan"), float("nan")))
        speed = float(np.median(per["speedup"]))
        rows.append({
            "arm": arm, "lr": best_lr.get(arm, float("nan")), "final_val_loss": final, "final_ci": final_ci,
            "final_vs_plain": final / plain_final - 1,
            "delta_vs_plain": d_plain[0], "delta_vs_plain_ci": d_plain[1],
            "delta_vs_matched": d_matched[0], "delta_vs_matched_ci": d_matched[1], "train_wall_s": np.mean(per["wall"]),
            "real_steps": np.mean(per["real"]), "predicted_share": np.mean(per["share"]),
            "moved_on_predicted": np.nanmean(per["moved"]) if np.isfinite(per["moved"]).any() else float("nan"),
            "seeds": len(seeds), "seeds_reaching_target": int(reached.sum()), "censored": int((~reached).sum()),
            "steps_to_target": median_censored(np.nan_to_num(per["steps_to"], nan=0.0), reached),
            "wall_to_target_s": median_censored(np.nan_to_num(per["wall_to"], nan=0.0), reached),
            "speedup_wall": speed, "speedup_steps": float(np.median(per["speedup_steps"])),
            "speedup_wall_min": float(np.min(per["speedup"])), "speedup_wall_max": float(np.max(per["speedup"])),
            "meets_goal": bool(speed >= speedup_goal and final / plain_final - 1 <= target_slack),
        })
    return pd.DataFrame(rows), float(target)


def _finals(protocol: dict, arm: str, lr: float | None = None) -> pd.Series:
    """Final held-out loss of ``arm`` per seed: at its best LR (``protocol["results"]``), or at
    peak ``lr`` (``protocol["all"]``)."""
    if lr is None:
        runs = {s: r for (a, s), r in protocol["results"].items() if a == arm}
    else:
        runs = {s: r for (a, v, s), r in protocol["all"].items() if a == arm and v == lr}
    return pd.Series({s: float(r.evals["val_loss"].iloc[-1]) for s, r in sorted(runs.items())}, dtype=float)


def aa_noise(protocol: dict, confidence: float = 0.95, power: float = 0.8) -> dict:
    """The A/A noise of the protocol's paired comparisons and the minimum detectable effect (MDE,
    nats/token) it implies, from runs the protocol already made: no extra run, no extra time.

    Every comparison pairs two arms on the model seed (same initialisation, same batches), so its
    noise is the seed-to-seed spread of a *paired* difference. A same-config A/A cannot measure
    that: two plain runs with one seed are bitwise identical on a CPU. The nearest A/A the
    protocol holds is plain at its best LR against plain at each neighbouring peak LR of the
    grid, paired on the seed: two plain trainings one hyperparameter apart, whose mean gap (the
    LR's effect) does not enter the spread. ``paired_std`` pools those differences' variances
    and ``mde = lib.core.min_detectable_effect(paired_std, seeds, confidence, power)``.

    ``seed_std`` (plain at its best LR across seeds, unpaired) is returned beside it but not
    used where a neighbour exists: it also holds each seed's difficulty, which every arm shares
    and pairing removes, so ``sqrt(2) * seed_std`` (notebook 04's bound) would overstate the
    paired noise. With one swept LR (no neighbour) the MDE falls back to that conservative
    bound (also where no neighbour has two finite paired seeds); ``source`` says which was used
    ("paired" / "unpaired").
    """
    confidence = check_confidence(confidence)
    power = check_number("power", power, 0.0, 1.0, strict_min=True, strict_max=True)
    if not isinstance(protocol, Mapping) or "results" not in protocol:
        raise ValueError("protocol must be a run_protocol result (a dict with 'results')")
    plain = _finals(protocol, "plain")
    if plain.empty:
        raise ValueError("protocol must include the 'plain' arm")
    best = float(protocol.get("best_lr", {}).get("plain", math.nan))
    grid = sorted({v for a, v, _ in protocol.get("all", {}) if a == "plain"})
    neighbours = []
    if best in grid:
        i = grid.index(best)
        neighbours = [grid[j] for j in (i - 1, i + 1) if 0 <= j < len(grid)]
    # A diverged run (non-finite loss) leaves its seed out of that pair's spread.
    gaps = [(plain - _finals(protocol, "plain", v)).replace([np.inf, -np.inf], np.nan).dropna() for v in neighbours]
    variances = [float(g.var(ddof=1)) for g in gaps if len(g) > 1]
    n = len(plain)
    seed_std = float(plain.std(ddof=1)) if n > 1 else math.nan
    paired_std = math.sqrt(float(np.mean(variances))) if variances else math.nan
    source = "paired" if math.isfinite(paired_std) else "unpaired"
    spread = paired_std if source == "paired" else math.sqrt(2.0) * seed_std
    return {"arm": "plain", "lr": best, "seeds": n, "seed_std": seed_std, "neighbour_lrs": neighbours,
            "paired_std": paired_std, "source": source, "confidence": confidence, "power": power,
            "mde": min_detectable_effect(spread, n, confidence, power)}


def comparisons(protocol: dict, noise: dict) -> pd.DataFrame:
    """Every predictor arm (all but ``plain`` and ``plain_matched``, each at its best LR) against
    ``plain`` and against ``plain_matched``: final held-out loss, arm minus baseline, paired on
    the seed, as one family.

    Per row: ``arm``, ``baseline``, ``lib.core.paired_difference``'s ``n``, ``mean_diff``
    (nats/token; negative: the arm ends lower), ``ci_low`` / ``ci_high`` and paired-t ``t_p``;
    ``p_holm`` (Holm over every row, ``lib.core.holm``), ``mde`` (``aa_noise``) and ``verdict``
    (``lib.core.decide_difference`` at level 1 - ``noise["confidence"]``, the level of the
    MDE and of the intervals): "lower" / "higher" or "cannot decide (...)".
    """
    if not isinstance(noise, Mapping) or not {"mde", "confidence"} <= set(noise):
        raise ValueError("noise must be an aa_noise result (a dict with 'mde' and 'confidence')")
    confidence = check_confidence(noise["confidence"])
    if not isinstance(protocol, Mapping) or "results" not in protocol:
        raise ValueError("protocol must be a run_protocol result (a dict with 'results')")
    arms = list(dict.fromkeys(a for a, _ in protocol["results"]))
    if "plain" not in arms:
        raise ValueError("protocol must include the 'plain' arm")
    baselines = [b for b in ("plain", "plain_matched") if b in arms]
    finals = {arm: _finals(protocol, arm) for arm in arms}
    rows = [{"arm": arm, "baseline": base, **paired_difference(finals[arm], finals[base], confidence)}
            for arm in arms if arm not in baselines for base in baselines]
    columns = ["arm", "baseline", "n", "mean_diff", "ci_low", "ci_high", "t_p", "p_holm", "mde", "verdict"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["t_p"].to_numpy(dtype=float))
    table["mde"] = float(noise["mde"])
    table["verdict"] = [decide_difference(r.mean_diff, r.p_holm, r.mde, 1.0 - confidence)
                        for r in table.itertuples()]
    return table[columns]


def loss_at_wall(protocol: dict, wall_s: float | None = None) -> pd.DataFrame:
    """Held-out loss of each arm at equal training wall-clock (linear interpolation of its
    eval curve; default budget: the shortest mean run among the arms), mean and CI over seeds."""
    evals = protocol["evals"]
    if wall_s is not None:
        check_positive("wall_s", wall_s)
    budget = wall_s if wall_s is not None else evals.groupby(["arm", "seed"])["wall_s"].max().groupby("arm").mean().min()
    rows = []
    for arm, group in evals.groupby("arm", sort=False):
        vals = [np.interp(budget, g["wall_s"], g["val_loss"]) for _, g in group.groupby("seed")]
        m, ci = t_interval(vals)
        rows.append({"arm": arm, "wall_budget_s": budget, "val_loss": m, "ci": ci})
    return pd.DataFrame(rows)


def step_costs(protocol: dict) -> pd.DataFrame:
    """Median seconds of real and predicted steps per arm, and their ratio to plain's step."""
    h = protocol["history"]
    plain = h[h["arm"] == "plain"]["step_s"].median()
    out = h.groupby(["arm", "real"], sort=False)["step_s"].median().unstack()
    out = out.rename(columns={True: "real_step_s", False: "predicted_step_s"})
    return out.assign(real_over_plain=out.get("real_step_s") / plain,
                      predicted_over_plain=out.get("predicted_step_s", np.nan) / plain).reset_index()


def memory_table(protocol: dict) -> pd.DataFrame:
    """Bytes each arm adds over plain training, beside the model's and AdamW's own bytes."""
    rows = []
    for (arm, seed), r in protocol["results"].items():
        if seed != min(s for a, s in protocol["results"] if a == arm):
            continue
        m = r.memory
        rows.append({"arm": arm, "params_MB": m["param_bytes"] / 1e6, "adamw_state_MB": 2 * m["param_bytes"] / 1e6,
                     "basis_MB": m["basis_bytes"] / 1e6, "predictor_MB": m["predictor_bytes"] / 1e6,
                     "transient_MB": m["transient_bytes"] / 1e6, "added_MB": m["total_bytes"] / 1e6,
                     "added_over_params": m["total_over_params"]})
    return pd.DataFrame(rows)


def horizon_study(task: LMTask, predictors=HORIZON_PREDICTORS, seed: int = 0,
                  horizon: int = 8, anchor_every: int = 10, start: int | None = None,
                  lr: float | None = None) -> pd.DataFrame:
    """Prediction error and latency against horizon along one plain training run.

    At each anchor step every predictor rolls out ``horizon`` updates on a copy of the basis
    (weights untouched); then the real steps are taken and compared. Returns one row per
    (predictor, anchor, k): ``step_error`` = ||pred_k - real_k|| / ||real_k|| (NaN for a jump
    predictor, whose whole forecast lands at k = 1), ``cum_error`` = ||sum pred - sum real|| /
    ||sum real|| over steps 1..k, and ``latency_s`` (seconds to produce all k predictions).

    ``"oracle"`` is the in-family bound: at each k the best coefficients ``a, b`` per tensor in
    hindsight (least squares of the real update on its own rolled-forward basis), so no
    predictor of the form ``a u + b m`` can score below it.
    """

    horizon = check_int("horizon", horizon, 1)
    anchor_every = check_int("anchor_every", anchor_every, 1)
    check_seed("seed", seed)
    if "plain" in predictors:
        raise ValueError("predictors must name predictors (lib.predictive.PREDICTORS) or 'oracle'; 'plain' has none")
    steps = task.train.steps
    # Default: 20 steps after the warm-up, or as late as still leaves one whole rollout.
    start = (max(min(task.hybrid["warmup_steps"] + 20, steps - horizon), 0) if start is None
             else check_int("start", start, 0))
    model = task.build_model(seed)
    optimizer = task.build_optimizer(model, lr)
    schedule = default_schedule(steps)
    grad_clip = task.train.grad_clip
    peaks = [g["lr"] for g in optimizer.param_groups]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    basis = UpdateBasis(params)
    preds = {name: task.build_predictor(name, seed) for name in predictors if name != "oracle"}
    for p in preds.values():
        p.bind(basis)
    loss_fn = task.loss_fn()
    active, rows = [], []
    for step in range(steps):
        mult = schedule(step)
        if step >= start and (step - start) % anchor_every == 0 and step + horizon <= steps:
            for name in predictors:
                p = preds.get(name)
                if p is not None and not p.ready:
                    continue
                shadow = basis.shadow()
                t0 = time.perf_counter()
                deltas = []
                if p is not None:
                    p.start_rollout([schedule(s) for s in range(step, step + horizon + 1)])
                    for k in range(1, horizon + 1):
                        d = p.next_update(shadow, k, lr_ratio(schedule, step + k - 1)).clone()
                        shadow.absorb(d)
                        deltas.append(d)
                for k in range(1, horizon + 1):
                    rows.append({"predictor": name, "anchor": step, "k": k, "latency_s": time.perf_counter() - t0})
                active.append({"name": name, "anchor": step, "deltas": deltas, "shadow": shadow,
                               "jump": bool(getattr(p, "jump_predictor", False)),
                               "real_sum": torch.zeros_like(basis.u), "pred_sum": torch.zeros_like(basis.u),
                               "rows": rows[-horizon:]})
        for g, peak in zip(optimizer.param_groups, peaks):
            g["lr"] = peak * mult
        basis.snapshot()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, step)
        loss.backward()
        gnorms = torch.stack(torch._foreach_norm([q.grad for q in params])).cpu().numpy()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        dots = basis.real_update()
        real = basis.u
        for a in list(active):
            k = step - a["anchor"] + 1
            if a["name"] == "oracle":  # best a, b per tensor for this real update, in hindsight
                sh = a["shadow"]
                hind = {"dd": dots["dd"], "du": sh.segment_dot(real, sh.u).double().cpu().numpy(),
                        "dm": sh.segment_dot(real, sh.m).double().cpu().numpy(),
                        "uu": sh.segment_dot(sh.u, sh.u).double().cpu().numpy(),
                        "um": sh.segment_dot(sh.u, sh.m).double().cpu().numpy(),
                        "mm": sh.segment_dot(sh.m, sh.m).double().cpu().numpy()}
                pred = sh.combine(fit_coefficients(hind))
                sh.absorb(pred)
            else:
                pred = a["deltas"][k - 1]
            a["real_sum"] += real
            a["pred_sum"] += pred
            step_error = float("nan") if a["jump"] else float((pred - real).norm() / real.norm())
            a["rows"][k - 1].update(step_error=step_error,
                                    cum_error=float((a["pred_sum"] - a["real_sum"]).norm() / a["real_sum"].norm()))
            if k == horizon:
                active.remove(a)
        obs = Observation(step=step, loss=float(loss.detach()), lr_mult=mult, gap=1, coefficients=fit_coefficients(dots),
                          update_norms=np.sqrt(dots["dd"]), grad_norms=gnorms)
        for p in preds.values():
            p.observe(obs)
            if step >= task.hybrid["warmup_steps"]:
                p.fit()
    return pd.DataFrame(rows, columns=["predictor", "anchor", "k", "latency_s", "step_error", "cum_error"])


def horizon_table(study: pd.DataFrame) -> pd.DataFrame:
    """Mean cumulative relative error (rows: horizon k, columns: predictor) of a
    ``horizon_study``: how far each predictor's summed forecast is from the summed real updates."""
    return study.groupby(["predictor", "k"])["cum_error"].mean().unstack(0)


def planned_runs(settings) -> list[PlannedRun]:
    """One ``lib.scaling.PlannedRun`` per training run of notebook 05 in a profile: every arm at
    every LR and seed (the compute-matched arm on its real steps, the others on all their
    steps' tokens, forward-checked predicted steps included), plus the horizon study's run."""
    s = settings if isinstance(settings, Mapping) else vars(settings)
    config = ModelConfig(vocab_size=_VOCAB, d_model=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"],
                         max_seq_len=s["seq_len"])
    tokens = s["batch_size"] * s["seq_len"]
    task_steps = {"plain_matched": pattern_real_steps(s["steps"], s["warmup_steps"], s["full_steps"],
                                                      s["max_predict_steps"], s["correct_steps"])}
    runs = [PlannedRun(f"{arm}/lr{lr:g}/seed{seed}", config, task_steps.get(arm, s["steps"]) * tokens,
                       seq_len=s["seq_len"], batch_size=s["batch_size"])
            for seed in s["seeds"] for lr in s["lrs"] for arm in ARMS]
    runs.append(PlannedRun("horizon study", config, s["steps"] * tokens, seq_len=s["seq_len"], batch_size=s["batch_size"]))
    return runs


def _fmt(x: float, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return "not reached" if math.isinf(x) else f"{x:.{digits}f}"


def _speedup(median_steps: float, speedup: float) -> str:
    """A speedup read from the medians; none where the median seed never reached the target."""
    return f"{speedup:.2f}x" if math.isfinite(median_steps) else "none (the median seed never reached the target)"


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def conclusion(table: pd.DataFrame, target: float, lr_table: pd.DataFrame, horizon: pd.DataFrame,
               settings, verdicts: pd.DataFrame | None = None, noise: dict | None = None) -> str:
    """Notebook 05's conclusion as Markdown from the quantities that are deterministic given the
    seeds (losses, steps, censoring, prediction errors, best LRs): the speedup ``table`` and
    ``target`` (``summarize``), the LR sweep (``protocol["lr_table"]``), the cumulative-error
    table of the horizon study (``horizon_table``), the A/A ``noise`` (``aa_noise``) and the
    paired ``verdicts`` read against it (``comparisons``); without them (both None) the
    differences are listed without verdicts. The wall-clock reading is ``timing_summary``."""
    if (verdicts is None) != (noise is None):
        raise ValueError("verdicts and noise go together: pass both (comparisons, aa_noise) or neither")
    s = settings if isinstance(settings, Mapping) else vars(settings)
    rows = table.set_index("arm")
    plain = rows.loc["plain"]
    decided = {} if verdicts is None else {(r.arm, r.baseline): r for r in verdicts.itertuples()}

    def reading(arm, baseline):
        r = decided.get((arm, baseline))
        return "" if r is None else f" (Holm-adjusted p {_p(r.p_holm)}: **{r.verdict}**)"

    at_edge = lr_table[lr_table["best"] & lr_table["at_edge"]]["arm"].tolist()
    lines = [f"*Computed from this run ({s['profile']} profile{' (smoke)' if s.get('smoke') else ''}: "
             f"{s['steps']} optimizer steps, {len(s['seeds'])} seeds, every arm swept over peak LRs "
             f"{', '.join(f'{v:g}' for v in s['lrs'])}).*", ""]
    best_bits = ", ".join(f"{a} {lr:g}" for a, lr in zip(table["arm"], table["lr"]))
    lines.append(f"- **Tuned baselines.** Best peak LR per arm (lowest mean final loss over seeds): {best_bits}"
                 + (f"; at the edge of the grid for {', '.join(at_edge)}, so those optima may lie outside it."
                    if at_edge else "; every optimum is inside the grid."))
    if noise is not None:
        lines += _verdict_lines(verdicts, noise)
    lines.append(f"- **Target** {target:.3f} nats/token (plain's worst final loss over seeds at its best LR, +1%); "
                 f"plain reaches it at a median step of {_fmt(plain['steps_to_target'], 1)} "
                 "(steps interpolated between evaluations).")
    for arm, r in rows.iterrows():
        if arm == "plain":
            continue
        lines.append(
            f"  - `{arm}`: final {r['final_val_loss']:.3f} ± {_fmt(r['final_ci'], 3)}; paired vs plain "
            f"{r['delta_vs_plain']:+.3f} ± {_fmt(r['delta_vs_plain_ci'], 3)}{reading(arm, 'plain')}, vs the compute-matched control "
            f"{r['delta_vs_matched']:+.3f} ± {_fmt(r['delta_vs_matched_ci'], 3)}"
            f"{reading(arm, 'plain_matched')}; {int(r['real_steps'])} real steps; "
            f"target reached in {int(r['seeds_reaching_target'])} of {int(r['seeds'])} seeds "
            f"({int(r['censored'])} censored), median step {_fmt(r['steps_to_target'], 1)}, median step speedup "
            f"{_speedup(r['steps_to_target'], r['speedup_steps'])}.")
    k = int(horizon.index.max())
    err = horizon.loc[k]
    order = ", ".join(f"{name} {err[name]:.2f}" for name in err.sort_values().index)
    lines.append(f"- **How predictable are the updates?** Relative error of the summed forecast over {k} steps "
                 f"(1 = the null predictor): {order}. The in-family oracle (the best two coefficients per tensor "
                 f"in hindsight) bounds every `a u + b m` predictor: none of them can get below "
                 f"{err.get('oracle', float('nan')):.2f} at this horizon.")
    lines.append("- **Caveats.** One synthetic corpus, small models, short runs; the wall-clock reading below "
                 "depends on the machine and its load.")
    return "\n".join(lines)


def _verdict_lines(verdicts: pd.DataFrame, noise: dict) -> list[str]:
    """The noise, its minimum detectable effect and the verdicts, as conclusion bullets."""
    lines = []
    level, power = 1 - noise["confidence"], noise["power"]
    if noise["source"] == "paired":
        lrs = " and ".join(f"{v:g}" for v in noise["neighbour_lrs"])
        plural = "s" if len(noise["neighbour_lrs"]) > 1 else ""
        spread = (f"The A/A spread of a paired difference, plain at its best LR against plain at the "
                  f"neighbouring peak LR{plural} {lrs} on the same seeds, is {_fmt(noise['paired_std'], 3)} nats/token "
                  f"(plain's unpaired seed-to-seed spread, {_fmt(noise['seed_std'], 3)}, also holds each seed's "
                  f"difficulty, which every arm shares and pairing removes)")
    else:
        spread = (f"Plain's seed-to-seed spread at its best LR is {_fmt(noise['seed_std'], 3)} nats/token "
                  f"(no neighbouring peak LR to pair plain against, so no paired A/A: the MDE takes the spread "
                  f"of a difference of two independent runs, the conservative bound)")
    lines.append(f"- **Noise and what it lets us see.** {spread}. With {noise['seeds']} paired seeds the minimum "
                 f"detectable effect (two-sided {level:.0%}, power {power:.0%}) is **{_fmt(noise['mde'], 3)} "
                 f"nats/token**. Each predictor arm's final loss is compared with plain's and the compute-matched "
                 f"control's (paired t-tests, Holm over all {len(verdicts)}); only a Holm-significant difference "
                 f"at least that large gets a verdict, anything else is \"cannot decide\", not a ranking.")
    called = [f"`{r.arm}` {r.verdict} than {r.baseline}" for r in verdicts.itertuples()
              if not r.verdict.startswith("cannot")]
    undecided = verdicts["verdict"][verdicts["verdict"].str.startswith("cannot")].value_counts()
    why = ", ".join(f"{int(k)} {v.removeprefix('cannot decide (').rstrip(')')}" for v, k in undecided.items())
    lines.append(f"- **Verdicts.** Decided: {'; '.join(called) or 'none'}. Cannot decide: "
                 f"{int(undecided.sum())} of {len(verdicts)}{f' ({why})' if why else ''}.")
    return lines


def timing_summary(table: pd.DataFrame, costs: pd.DataFrame, speedup_goal: float = 1.3) -> str:
    """The wall-clock reading of the protocol as Markdown (machine-dependent, so kept apart
    from ``conclusion``): whether any arm meets the goal, each arm's median wall-clock speedup
    to the target with its range over seeds, and the cost of its steps against a plain step."""
    met = table.loc[table["meets_goal"], "arm"].tolist()
    lines = ["**Goal (>= {:g}x wall-clock to the held-out target at no worse final loss): {}.**".format(
        speedup_goal, "met by " + ", ".join(met) if met else "no arm gets there"), ""]
    c = costs.set_index("arm")
    for _, r in table.iterrows():
        if r["arm"] == "plain":
            continue
        cost = c.loc[r["arm"], "real_over_plain"] if r["arm"] in c.index else float("nan")
        pred = c.loc[r["arm"], "predicted_over_plain"] if r["arm"] in c.index and "predicted_over_plain" in c else float("nan")
        lines.append(f"- `{r['arm']}`: median wall-clock speedup {r['speedup_wall']:.2f}x (seeds "
                     f"{r['speedup_wall_min']:.2f}-{r['speedup_wall_max']:.2f}x; a censored seed counts as 0); "
                     f"a real step costs {_fmt(cost)}x a plain one, a predicted step {_fmt(pred)}x.")
    return "\n".join(lines)


def explorer(table: pd.DataFrame, study: pd.DataFrame, predictor: str = "linear"):
    """Predictor and horizon -> its measured prediction error (step and cumulative, from the
    horizon study) and its arm's time to target (from the protocol table). Live ipywidgets in
    JupyterLab (displayed here and returned); in batch (``lib.core.in_batch``) the static
    figure of ``predictor`` (returned; the notebook's inline backend shows it)."""
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(study["predictor"]))
    check_choice("predictor", predictor, tuple(names))
    horizons = sorted(set(int(k) for k in study["k"]))
    rows = table.set_index("arm")

    def draw(predictor=predictor, horizon=horizons[-1]):
        g = study[study["predictor"] == predictor].groupby("k")[["step_error", "cum_error"]].mean()
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot(g.index, g["cum_error"], marker="o", label="cumulative error")
        if g["step_error"].notna().any():
            ax.plot(g.index, g["step_error"], marker="s", label="per-step error")
        ax.axhline(1.0, color="k", ls=":", lw=0.8)
        ax.axvline(horizon, color="tab:red", lw=0.8)
        cum = g["cum_error"].get(horizon, float("nan"))
        text = f"{predictor}: cumulative error at k={horizon}: {cum:.2f}"
        if predictor in rows.index:
            r = rows.loc[predictor]
            text += (f"; target in {int(r['seeds_reaching_target'])}/{int(r['seeds'])} seeds, median "
                     f"{_fmt(r['wall_to_target_s'])} s, speedup {r['speedup_wall']:.2f}x")
        ax.set(xlabel="horizon k (steps)", ylabel="relative error (1 = null)")
        ax.set_title(text, fontsize=8)
        ax.legend(fontsize=8)
        return fig

    if in_batch():
        return draw()
    import ipywidgets as widgets

    def show(predictor, horizon):
        plt.show(draw(predictor, horizon))

    from IPython.display import display

    widget = widgets.interactive(show, predictor=widgets.Dropdown(options=names, value=predictor, description="predictor"),
                                 # In the middle, so a drag either way redraws (the static
                                 # figure stays at the longest horizon, its headline number).
                                 horizon=widgets.SelectionSlider(options=horizons, value=horizons[len(horizons) // 2],
                                                                 description="horizon"))
    display(widget)
    return widget


# --------------------------------------------------------------------------- figures
PHASE_COLORS = {"warmup": "#cccccc", "full": "#a6cee3", "predict": "#fdbf6f", "correct": "#b2df8a"}


def plot_phase_timeline(result: HybridResult, ax=None, title: str | None = None):
    """Training loss and confidence of one run over optimizer steps, phases as coloured spans."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    h = result.history
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.2))
    runs = (h["phase"] != h["phase"].shift()).cumsum()
    for _, seg in h.groupby(runs):
        ax.axvspan(seg["step"].iloc[0] - 0.5, seg["step"].iloc[-1] + 0.5, color=PHASE_COLORS[seg["phase"].iloc[0]], lw=0)
    ax.plot(h["step"], h["loss"], color="k", lw=0.8, label="train loss (forward-checked on predicted steps)")
    ax.set(xlabel="optimizer step", ylabel="loss (nats/token)", title=title or f"phases of a {result.predictor} run")
    ax2 = ax.twinx()
    ax2.plot(h["step"], h["confidence"], color="tab:red", lw=1.0, label="confidence")
    ax2.set(ylim=(0, 1.05), ylabel="confidence")
    ax2.grid(False)
    handles = [Patch(color=c, label=p) for p, c in PHASE_COLORS.items()]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0],
              loc="upper right", fontsize=7, ncol=3)
    return ax.figure


def plot_loss_curves(protocol: dict, target: float | None = None):
    """Held-out loss of every arm against optimizer steps and training wall-clock; mean over
    seeds with a min-max band."""
    import matplotlib.pyplot as plt

    evals = protocol["evals"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for arm, g in evals.groupby("arm", sort=False):
        by_step = g.groupby("step")["val_loss"]
        line, = axes[0].plot(by_step.mean().index, by_step.mean(), label=arm, lw=1.2)
        axes[0].fill_between(by_step.mean().index, by_step.min(), by_step.max(), color=line.get_color(), alpha=0.15)
        wall = g.groupby("step")["wall_s"].mean()
        axes[1].plot(wall, by_step.mean(), color=line.get_color(), lw=1.2)
        axes[1].fill_between(wall, by_step.min(), by_step.max(), color=line.get_color(), alpha=0.15)
    for ax, xlabel in zip(axes, ("optimizer step", "training wall-clock (s, evaluation excluded)")):
        if target is not None:
            ax.axhline(target, color="k", ls="--", lw=0.8)
        ax.set(xlabel=xlabel, ylabel="held-out loss (nats/token)")
        lo = evals["val_loss"].min()
        ax.set_ylim(lo - 0.05, lo + 1.2)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_horizon(study: pd.DataFrame):
    """Step and cumulative relative prediction error, and rollout latency, against horizon."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, g in study.groupby("predictor", sort=False):
        agg = g.groupby("k").agg(step=("step_error", "mean"), cum=("cum_error", "mean"),
                                 latency=("latency_s", "median"))
        axes[0].plot(agg.index, agg["step"], marker="o", label=name)
        axes[1].plot(agg.index, agg["cum"], marker="o", label=name)
        axes[2].plot(agg.index, agg["latency"] * 1e3, marker="o", label=name)
    axes[0].set(xlabel="horizon k (steps)", ylabel="||pred_k - real_k|| / ||real_k||", title="per-step error")
    axes[1].set(xlabel="horizon k (steps)", ylabel="relative error of the summed update", title="cumulative error")
    axes[2].set(xlabel="horizon k (steps)", ylabel="ms to predict k steps", title="rollout latency")
    for ax in axes[:2]:
        ax.axhline(1.0, color="k", ls=":", lw=0.8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
