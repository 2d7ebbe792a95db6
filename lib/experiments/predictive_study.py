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
- ``plain_matched``: plain training with as many real gradient steps as the forced arms
  and a schedule fitted to that budget (the compute-matched control).

Speedup = plain's wall-clock to a fixed held-out target / the arm's, paired by seed; the
target is plain's worst final held-out loss over seeds times (1 + ``target_slack``).

Every arm runs through ``lib.predictive.HybridTrainer`` (plain ones with no predictor), so
all share one code path and one clock. An ``LMTask`` holds the run's ``lib.training.TrainConfig``
(steps, batch, sequence length, LR, evaluation, data seed, device) and builds from it what
the trainer takes ready-made: the loss and evaluation functions, the model, AdamW and the
schedule. Intervals are ``lib.core.t_interval`` (Student-t over seeds).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pandas as pd
import torch

from lib.core import (
    autocast,
    check_choice,
    check_int,
    check_positive,
    check_seed,
    pick_device,
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
from lib.training import TrainConfig, default_optimizer, default_schedule, evaluate

ARMS = ("plain", "null", "linear", "ema", "rssm", "rssm_gated", "plain_matched")
# Held-out batches of 16 sequences in both profiles, whatever their training batch size.
EVAL_BATCH_SIZE = 16

# Sizes of the notebook's and the benchmark's two profiles (``lib.core.profile_settings``).
QUICK = dict(d_model=32, n_layers=2, n_heads=2, seq_len=32, batch_size=16, steps=160, lr=3e-3,
             warmup_steps=32, full_steps=8, max_predict_steps=4, correct_steps=4, eval_every=16,
             eval_batches=8, seeds=(0, 1, 2), horizon=6, anchor_every=16, train_tokens=200_000,
             threads=1)
FULL = dict(d_model=256, n_layers=6, n_heads=8, seq_len=256, batch_size=32, steps=2000, lr=1e-3,
            warmup_steps=200, full_steps=50, max_predict_steps=8, correct_steps=8, eval_every=100,
            eval_batches=16, horizon=20, anchor_every=100, train_tokens=20_000_000, threads=None)


@dataclass
class LMTask:
    """A small LM training problem on a ``lib.data.TokenData``.

    ``train``: the run's ``lib.training.TrainConfig``: ``steps``, ``batch_size`` (sequences per
    step), ``seq_len``, ``lr`` (AdamW's peak, with its ``weight_decay`` and ``betas``),
    ``grad_clip``, ``eval_every`` / ``eval_batches`` / ``eval_batch_size``, ``seed`` (the data
    order; model seeds are per run) and ``device``. Its ``schedule`` stays None: each arm gets
    a warm-up + cosine schedule fitted to its own step budget. ``hybrid``: ``HybridConfig``
    phase settings of every predictor arm; ``gated``: what the gated arm changes; ``rssm``:
    ``RSSMPredictor`` settings.
    """

    data: object
    model_config: object
    train: TrainConfig
    hybrid: dict = field(default_factory=lambda: dict(
        warmup_steps=40, full_steps=10, max_predict_steps=4, correct_steps=4))
    gated: dict = field(default_factory=lambda: dict(confidence_threshold=0.5, min_predict_steps=2))
    rssm: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a lib.training.TrainConfig, got {type(self.train).__name__}")
        check_int("train.eval_every", self.train.eval_every, 1)  # the protocol compares eval curves
        if self.train.schedule is not None:
            raise ValueError("train.schedule must be None: every arm fits a schedule to its own step budget")
        for name in ("hybrid", "gated", "rssm"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(f"{name} must be a dict of settings, got {getattr(self, name)!r}")
        phase_settings = {f.name for f in fields(HybridConfig)} - {"train"}
        unknown = sorted(set(self.hybrid) - phase_settings) + sorted(set(self.gated) - phase_settings)
        if unknown:
            raise ValueError(f"hybrid / gated set {unknown}, which are not HybridConfig phase settings "
                             f"{sorted(phase_settings)} (steps and evaluation are train's)")
        for arm in ("null", "rssm_gated"):  # fail here, not mid-protocol, on a bad phase setting
            self.hybrid_config(arm, self.train.steps)

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

    def build_optimizer(self, model):
        t = self.train
        return default_optimizer(model, t.lr, t.weight_decay, t.betas)

    def hybrid_config(self, arm: str, steps: int) -> HybridConfig:
        """The ``HybridConfig`` of ``arm`` over ``steps`` optimizer steps: forced arms predict
        from the first chance (threshold 0) for the full length, so they share one step pattern."""
        kw = dict(self.hybrid)
        if arm == "rssm_gated":
            kw.update(self.gated)
        elif arm not in ("plain", "plain_matched"):
            kw.update(confidence_threshold=0.0, predict_length="max")
        return HybridConfig(train=replace(self.train, steps=steps), **kw)


def make_task(settings, device="cpu") -> LMTask:
    """The LM task of a profile (a ``QUICK``/``FULL``-shaped mapping or namespace) on the
    embedded synthetic corpus."""

    s = settings if isinstance(settings, Mapping) else vars(settings)
    data = synthetic_corpus(n_train_tokens=s["train_tokens"], n_val_tokens=max(s["train_tokens"] // 10, 20_000))
    config = ModelConfig(vocab_size=data.vocab_size, d_model=s["d_model"], n_layers=s["n_layers"],
                         n_heads=s["n_heads"], max_seq_len=s["seq_len"])
    train = TrainConfig(steps=s["steps"], batch_size=s["batch_size"], seq_len=s["seq_len"], lr=s["lr"],
                        eval_every=s["eval_every"], eval_batches=s["eval_batches"], eval_batch_size=EVAL_BATCH_SIZE,
                        device=str(device))
    return LMTask(data, config, train,
                  hybrid={k: s[k] for k in ("warmup_steps", "full_steps", "max_predict_steps", "correct_steps")})


def forced_real_steps(task: LMTask) -> int:
    """Real gradient steps of a forced-pattern hybrid run without divergence fallbacks."""
    c = task.hybrid_config("null", task.train.steps)
    real, step = min(c.warmup_steps + c.full_steps, c.total_steps), c.warmup_steps + c.full_steps
    while step < c.total_steps:
        step += min(c.max_predict_steps, c.total_steps - step)
        n = min(c.correct_steps, max(c.total_steps - step, 0))
        real, step = real + n, step + n
    return real


def run_arm(task: LMTask, arm: str, seed: int) -> HybridResult:
    """One training run of ``arm`` (see ``ARMS``) with model seed ``seed``."""

    check_choice("arm", arm, ARMS)
    steps = forced_real_steps(task) if arm == "plain_matched" else task.train.steps
    model = task.build_model(seed)
    optimizer = task.build_optimizer(model)
    name = {"plain_matched": "plain", "rssm_gated": "rssm"}.get(arm, arm)
    predictor = build_predictor(name, **(dict(task.rssm, seed=seed) if name == "rssm" else {}))
    sync = torch.cuda.synchronize if task.device.type == "cuda" else None
    trainer = HybridTrainer(model, optimizer, task.loss_fn(), task.hybrid_config(arm, steps),
                            predictor=predictor, schedule=default_schedule(steps),
                            eval_fn=task.eval_fn(), sync=sync)
    result = trainer.run()
    result.predictor = arm
    if predictor is not None and hasattr(predictor, "fit_seconds"):
        result.extra.update(fit_s=predictor.fit_seconds, predict_s=predictor.predict_seconds)
    return result


def run_protocol(task: LMTask, arms=ARMS, seeds=(0, 1, 2), progress: bool = False) -> dict:
    """All arms x seeds, interleaved per seed so machine noise hits every arm alike.

    Returns {"results": {(arm, seed): HybridResult}, "evals": DataFrame, "history": DataFrame}.
    """
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"arms must be drawn from {ARMS}, got {bad}")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or len(seeds) < 1:
        raise ValueError(f"seeds must be a non-empty sequence of seeds, got {seeds!r}")
    seeds = [check_seed(f"seeds[{i}]", s) for i, s in enumerate(seeds)]
    results, evals, history = {}, [], []
    for seed in seeds:
        for arm in arms:
            t0 = time.perf_counter()
            res = run_arm(task, arm, seed)
            results[(arm, seed)] = res
            evals.append(res.evals.assign(arm=arm, seed=seed))
            history.append(res.history.assign(arm=arm, seed=seed))
            if progress:
                print(f"seed {seed} {arm:>13}: val {res.evals['val_loss'].iloc[-1]:.4f} "
                      f"train {res.elapsed_s:.1f}s (total {time.perf_counter() - t0:.1f}s)")
    return {"results": results, "evals": pd.concat(evals, ignore_index=True),
            "history": pd.concat(history, ignore_index=True)}


def _first_reach(evals: pd.DataFrame, target: float) -> tuple[float, float]:
    hit = evals[evals["val_loss"] <= target]
    if hit.empty:
        return float("nan"), float("nan")
    row = hit.iloc[0]
    return float(row["step"]), float(row["wall_s"])


def summarize(protocol: dict, target_slack: float = 0.01, speedup_goal: float = 1.3) -> tuple[pd.DataFrame, float]:
    """The speedup table (one row per arm) and the held-out target used.

    Target = plain's worst final held-out loss over seeds x (1 + target_slack), so plain
    reaches it in every seed. Speedups are paired per seed (plain's time to target / the
    arm's); an arm that never reaches the target has no speedup. ``delta_vs_plain`` and
    ``delta_vs_matched`` are paired per-seed differences of final loss (nats/token) against
    ``plain`` and ``plain_matched`` (mean and 95% t half-width). ``meets_goal``: mean speedup
    >= ``speedup_goal`` and mean final loss at most ``target_slack`` (relative) above plain's.
    """
    check_positive("target_slack", target_slack, allow_zero=True)
    check_positive("speedup_goal", speedup_goal)
    results = protocol["results"]
    arms = list(dict.fromkeys(a for a, _ in results))
    seeds = sorted({s for _, s in results})
    if "plain" not in arms:
        raise ValueError("the protocol must include the 'plain' arm")
    plain_final = np.mean([results[("plain", s)].evals["val_loss"].iloc[-1] for s in seeds])
    target = max(results[("plain", s)].evals["val_loss"].iloc[-1] for s in seeds) * (1 + target_slack)
    final_of = lambda arm, s: results[(arm, s)].evals["val_loss"].iloc[-1]
    rows = []
    for arm in arms:
        per = {"final": [], "wall": [], "steps_to": [], "wall_to": [], "speedup": [], "speedup_steps": [],
               "share": [], "moved": [], "real": []}
        for s in seeds:
            r = results[(arm, s)]
            step_to, wall_to = _first_reach(r.evals, target)
            p_step, p_wall = _first_reach(results[("plain", s)].evals, target)
            per["final"].append(r.evals["val_loss"].iloc[-1])
            per["wall"].append(r.elapsed_s)
            per["steps_to"].append(step_to)
            per["wall_to"].append(wall_to)
            per["speedup"].append(p_wall / wall_to)
            per["speedup_steps"].append(p_step / step_to)
            per["share"].append(r.predicted_share)
            pred = r.history[~r.history["backward"]]
            per["moved"].append(float((pred["update_norm"] > 0).mean()) if len(pred) else float("nan"))
            per["real"].append(int(r.history["real"].sum()))
        final, final_ci = t_interval(per["final"])
        speed, speed_ci = t_interval(per["speedup"])
        d_plain = t_interval([final_of(arm, s) - final_of("plain", s) for s in seeds])
        d_matched = (t_interval([final_of(arm, s) - final_of("plain_matched", s) for s in seeds])
                     if "plain_matched" in arms else (float("nan"), float("nan")))
        rows.append({
            "arm": arm, "final_val_loss": final, "final_ci": final_ci,
            "final_vs_plain": final / plain_final - 1,
            "delta_vs_plain": d_plain[0], "delta_vs_plain_ci": d_plain[1],
            "delta_vs_matched": d_matched[0], "delta_vs_matched_ci": d_matched[1], "train_wall_s": np.mean(per["wall"]),
            "real_steps": np.mean(per["real"]), "predicted_share": np.mean(per["share"]),
            "moved_on_predicted": np.nanmean(per["moved"]) if np.isfinite(per["moved"]).any() else float("nan"),
            "seeds_reaching_target": int(np.isfinite(per["wall_to"]).sum()),
            "steps_to_target": np.nanmean(per["steps_to"]) if np.isfinite(per["steps_to"]).any() else float("nan"),
            "wall_to_target_s": np.nanmean(per["wall_to"]) if np.isfinite(per["wall_to"]).any() else float("nan"),
            "speedup_wall": speed, "speedup_wall_ci": speed_ci,
            "speedup_steps": t_interval(per["speedup_steps"])[0],
            "meets_goal": bool(speed >= speedup_goal and final / plain_final - 1 <= target_slack),
        })
    return pd.DataFrame(rows), float(target)


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


def horizon_study(task: LMTask, predictors=("null", "linear", "ema", "rssm"), seed: int = 0,
                  horizon: int = 8, anchor_every: int = 10, start: int | None = None) -> pd.DataFrame:
    """Prediction error and latency against horizon along one plain training run.

    At each anchor step every predictor rolls out ``horizon`` updates on a copy of the basis
    (weights untouched); then the real steps are taken and compared. Returns one row per
    (predictor, anchor, k): ``step_error`` = ||pred_k - real_k|| / ||real_k||,
    ``cum_error`` = ||sum pred - sum real|| / ||sum real|| over steps 1..k, and
    ``latency_s`` (seconds to produce all k predictions of that rollout).
    """

    horizon = check_int("horizon", horizon, 1)
    anchor_every = check_int("anchor_every", anchor_every, 1)
    check_seed("seed", seed)
    if "plain" in predictors:
        raise ValueError("predictors must name predictors (lib.predictive.PREDICTORS); 'plain' has none")
    steps = task.train.steps
    start = task.hybrid["warmup_steps"] + 20 if start is None else check_int("start", start, 0)
    model = task.build_model(seed)
    optimizer = task.build_optimizer(model)
    schedule = default_schedule(steps)
    grad_clip = task.train.grad_clip
    peaks = [g["lr"] for g in optimizer.param_groups]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    basis = UpdateBasis(params)
    preds = {name: build_predictor(name, **(dict(task.rssm, seed=seed) if name == "rssm" else {}))
             for name in predictors}
    for p in preds.values():
        p.bind(basis)
    loss_fn = task.loss_fn()
    active, rows = [], []
    for step in range(steps):
        mult = schedule(step)
        if step >= start and (step - start) % anchor_every == 0 and step + horizon <= steps:
            for name, p in preds.items():
                if not p.ready:
                    continue
                shadow = basis.shadow()
                t0 = time.perf_counter()
                p.start_rollout([schedule(s) for s in range(step, step + horizon + 1)])
                deltas = []
                for k in range(1, horizon + 1):
                    d = p.next_update(shadow, k, lr_ratio(schedule, step + k - 1)).clone()
                    shadow.absorb(d)
                    deltas.append(d)
                    rows.append({"predictor": name, "anchor": step, "k": k, "latency_s": time.perf_counter() - t0})
                active.append({"name": name, "anchor": step, "deltas": deltas, "real_sum": torch.zeros_like(basis.u),
                               "pred_sum": torch.zeros_like(basis.u), "rows": rows[-horizon:]})
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
            pred = a["deltas"][k - 1]
            a["real_sum"] += real
            a["pred_sum"] += pred
            a["rows"][k - 1].update(step_error=float((pred - real).norm() / real.norm()),
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
