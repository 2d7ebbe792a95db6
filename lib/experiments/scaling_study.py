"""Notebook 03's recipe: train an IsoFLOP plan for exactly its token budgets, fit Approaches 1,
2 and 3 with intervals that include the seed noise, and draw the figures and the explorer.

Each run trains with ``lib.training.train`` under a warm-up-cosine schedule fitted to its own
length at its size's peak LR, records its held-out loss and its smoothed training curve (for
Approach 1) in a ``lib.training.RunStore``, so a killed sweep resumes; the fits refuse an
incomplete sweep (``lib.training.IncompleteSweep``).

Per-size LR: the quick profile states a rule, lr(d) = lr (lr_base_width / d)^lr_exponent
(``lib.scaling.lr_for_widths``: 1/width as in muP, Yang et al. 2022; Porian et al. 2024 show a
single LR for every size biases the exponent); the full profile tunes each width on a short
grid of multiples of that rule (``lr_multipliers``) and keeps the best. Both profiles also run
the sweep at one constant LR, the smallest width's (``compare_lr``), to show how far the
exponent moves with the LR choice (runs whose LR the two share are trained once).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.core import (
    check_choice,
    check_int,
    check_positive,
    fmt_interval,
    in_batch,
    repo_root,
    seed_everything,
)
from lib.data import load_corpus
from lib.models import ModelConfig, Transformer
from lib.scaling import (
    IsoFLOPFit,
    ParametricFit,
    PlannedRun,
    chinchilla_flops_per_token,
    lr_for_widths,
    plan_sweep,
    sweep_configs,
)
from lib.schedules import WarmupCosine
from lib.training import EXECUTORS, RunStore, TrainConfig, run_sweep, train

# Notebook 03's profiles. quick: CPU, minutes (budgets of 1e10 FLOPs on the embedded corpus, one
# sweep seed and three repeat seeds at each budget's centre). full: the real sweep, for a GPU.
QUICK = dict(budgets=[1.5e10, 3e10, 6e10], n_sizes=5, span=8.0, tokens_per_param=100.0, flops="exact",
             vocab_size=64, seq_len=32, batch_size=64, head_dim=8, aspect_ratio=8.0,
             lr=1e-2, lr_base_width=16, lr_exponent=1.0, lr_multipliers=(), compare_lr=True,
             n_train_tokens=4_000_000, max_epochs=1.0, sweep_seeds=(0,), repeat_seeds=(0, 1, 2),
             eval_batches=16, max_steps=None, curve_points=25, n_bootstrap=2000,
             n_bootstrap_parametric=100, threads=1, workers=2,
             stdlib=True, stdlib_budgets=[2e10, 4e10, 8e10], stdlib_vocab_size=384,
             stdlib_n_sizes=4, stdlib_n_train_tokens=2_000_000, plan_corpus_tokens=None)
FULL = dict(budgets=[1e15, 3e15, 1e16, 3e16], n_sizes=7, span=16.0, tokens_per_param=20.0,
            vocab_size=256, seq_len=256, batch_size=64, head_dim=64, aspect_ratio=32.0,
            lr=3e-3, lr_base_width=256, lr_multipliers=(0.5, 1.0, 2.0),
            n_train_tokens=400_000_000, sweep_seeds=(0, 1, 2), repeat_seeds=(0, 1, 2),
            n_bootstrap_parametric=200, threads=None, workers=1, stdlib=False)
# The full profile end to end on a CPU in about a minute: its budgets' corners (smallest, one
# middle, largest: 3 are needed for the extrapolation check), every size, seed and LR multiple,
# one optimizer step of one sequence per run.
# Its corpus is small (one step per run needs little), but the plan is the full one: which rows
# are feasible is decided by the full corpus (plan_corpus_tokens), so it trains the same shapes.
SMOKE = dict(budgets=[1e15, 3e15, 3e16], max_steps=1, batch_size=1, eval_batches=1,
             n_train_tokens=1_000_000, plan_corpus_tokens=FULL["n_train_tokens"], n_bootstrap=200,
             n_bootstrap_parametric=4)


# --------------------------------------------------------------------------- plan and runs


def make_plan(settings, *, vocab_size=None, budgets=None, n_sizes=None, corpus_tokens=None,
              flops=None, device=None, tokens_per_second=None) -> pd.DataFrame:
    """The IsoFLOP plan of ``settings`` (``lib.scaling.plan_sweep`` with the profile's counts;
    Appendix-F FLOPs unless ``settings.flops`` says ``"6nd"``); the keywords override the
    corpus-dependent values."""
    s = settings
    return plan_sweep(s.budgets if budgets is None else budgets,
                      vocab_size=s.vocab_size if vocab_size is None else vocab_size,
                      seq_len=s.seq_len, batch_size=s.batch_size,
                      n_sizes=s.n_sizes if n_sizes is None else n_sizes, span=s.span,
                      tokens_per_param=s.tokens_per_param, head_dim=s.head_dim,
                      aspect_ratio=s.aspect_ratio, flops=s.flops if flops is None else flops,
                      corpus_tokens=(s.plan_corpus_tokens or s.n_train_tokens) if corpus_tokens is None
                      else corpus_tokens,
                      max_epochs=s.max_epochs, device=device, tokens_per_second=tokens_per_second)


def iso_line_spread(plan: pd.DataFrame) -> pd.DataFrame:
    """Per budget, the real (Appendix-F) FLOPs of the plan's feasible rows over the budget:
    ``real/budget min``, ``max`` and the ``spread %`` between them (a 6N plan's iso lines are
    not iso in real FLOPs)."""
    p = plan[plan["feasible"]]
    r = (p["flops_exact"] / p["budget"]).groupby(p["budget"])
    return pd.DataFrame({"real/budget min": r.min(), "max": r.max(), "spread %": 100 * (r.max() / r.min() - 1)})


def rule_lrs(plan: pd.DataFrame, settings) -> dict[int, float]:
    """The stated per-size LR rule for the plan's widths (``lib.scaling.lr_for_widths``)."""
    return lr_for_widths(plan.loc[plan["feasible"], "d_model"], base_lr=settings.lr,
                         base_width=settings.lr_base_width, exponent=settings.lr_exponent)


def constant_lrs(plan: pd.DataFrame, settings) -> dict[int, float]:
    """The comparison arm: one LR for every width, the rule's LR of the smallest width (as when
    an LR tuned on a small model serves every size). Its runs of the smallest width are the
    rule's own, so only the wider ones train again."""
    rule = rule_lrs(plan, settings)
    return dict.fromkeys(rule, rule[min(rule)])


def train_isoflop_run(config: dict, data, device=None, progress: bool = False,
                      curve_points: int = 25, max_steps: int | None = None, threads: int | None = None) -> dict:
    """Train one ``sweep_configs`` entry on ``data`` (a lib.data.TokenData) and return its
    metrics: ``val_loss`` (held-out nats/token at the end), ``train_loss``, ``tokens``,
    ``flops`` (Chinchilla Appendix F x tokens), ``flops_6nd`` (6 N tokens), ``planned_tokens``
    (the plan's D: equal to ``tokens`` unless ``max_steps`` cut the run; the fits take it, so a
    smoke run's fits see the planned design), ``n_params_model``,
    ``elapsed_s``, and a ``history`` of about ``curve_points`` points of the training curve
    (``loss``: the training loss averaged over the steps since the previous point; ``tokens``,
    ``flops`` so far), which the run store keeps for Approach 1. ``max_steps`` cuts the run
    short (smoke tests only: the run then no longer spends its budget). ``threads``: torch's
    intra-op threads on a CPU (None: leave them), set here so a worker process runs as this one."""
    if threads is not None and not str(device or "cpu").startswith("cuda"):
        torch.set_num_threads(check_int("threads", threads, 1))
    seed_everything(config["seed"])
    model_cfg = ModelConfig(**config["model"])
    model = Transformer(model_cfg)
    n_params = model.num_params()
    steps = config["steps"] if max_steps is None else min(config["steps"], max_steps)
    # A cut run (smoke) compresses the planned schedule into its steps: train() counts a schedule
    # in the steps it actually takes.
    warmup = config["warmup_steps"] if steps == config["steps"] else min(config["warmup_steps"], steps - 1)
    schedule = WarmupCosine(total_steps=steps, warmup_steps=warmup, min_lr_ratio=config["min_lr_ratio"])
    result = train(model, data, TrainConfig(
        steps=steps, batch_size=config["batch_size"], seq_len=config["seq_len"],
        lr=config["lr"], schedule=schedule, eval_batches=config["eval_batches"],
        seed=config["seed"], device=device, progress=progress, log_every=1))
    final = result.final
    fpt = chinchilla_flops_per_token(model_cfg, config["seq_len"])
    h = result.history
    window = max(1, len(h) // curve_points)
    smooth = h["loss"].rolling(window, min_periods=window).mean()
    keep = np.arange(len(h) - 1, window - 2, -window)[::-1]  # windows end at the final step
    curve = pd.DataFrame({"step": h["step"].to_numpy()[keep], "tokens": h["tokens"].to_numpy()[keep],
                          "loss": smooth.to_numpy()[keep]})
    curve["flops"] = fpt * curve["tokens"]
    return {"val_loss": final["val_loss"], "train_loss": final["train_loss"],
            "tokens": final["tokens"], "flops": fpt * final["tokens"],
            "planned_tokens": config["steps"] * config["batch_size"] * config["seq_len"],
            "flops_6nd": 6.0 * n_params * final["tokens"], "n_params_model": n_params,
            "elapsed_s": final["elapsed_s"], "history": curve.to_dict(orient="records")}


def run_isoflop_sweep(plan: pd.DataFrame, data, *, store=None, sweep: str = "isoflop", seeds=(0,),
                      lr=3e-3, batch_size: int, seq_len: int, device=None, progress: bool = True,
                      curve_points: int = 25, max_steps: int | None = None, executor: str = "local",
                      ray_address: str | None = None, workers: int = 1, threads: int | None = None,
                      **config_kw) -> pd.DataFrame:
    """Train every feasible plan entry for every seed through ``lib.training.run_sweep`` (runs
    already done in ``store`` are skipped, so an interrupted sweep resumes) and return the
    runs of this call's configs (config keys and metrics as columns; ``sweep_configs``
    validates the settings; ``lr`` a float or a {d_model: lr} map). Raises
    ``lib.training.IncompleteSweep`` naming the runs that are not done (failed, or busy in
    another process), so no fit sees a sweep with points silently missing. ``executor="ray"``
    runs each config as a Ray task on the cluster at ``ray_address``, ``workers > 1`` in that many
    local processes (``run_sweep``); each run sets ``threads`` (``train_isoflop_run``)."""
    check_choice("executor", executor, EXECUTORS)
    store = RunStore() if store is None else store
    corpus = config_kw.pop("corpus", getattr(data, "name", ""))
    configs = sweep_configs(plan, seeds=seeds, lr=lr, batch_size=batch_size, seq_len=seq_len,
                            corpus=corpus, **config_kw)
    run_fn = partial(train_isoflop_run, data=data, device=device, curve_points=curve_points,
                     max_steps=max_steps, threads=threads)
    return run_sweep(store, sweep, configs, run_fn, progress=progress, require_complete=True,
                     executor=executor, ray_address=ray_address, workers=workers)


def lr_tune_plan(plan: pd.DataFrame) -> pd.DataFrame:
    """The rows a per-size LR sweep trains: for each planned width, its run at the smallest
    budget that has it (the shortest run of that width)."""
    feasible = plan[plan["feasible"]].sort_values(["budget", "n_params"])
    return feasible.drop_duplicates("d_model").sort_index()


def tune_lrs(plan: pd.DataFrame, data, settings, *, store, sweep: str, **run_kw):
    """The full profile's per-size LR sweep: each width of ``lr_tune_plan`` at every multiple
    of its rule LR in ``settings.lr_multipliers``, seed 0. Returns (best {d_model: lr}, the
    runs with columns d_model, lr, multiplier, val_loss)."""
    rows = lr_tune_plan(plan)
    rule = rule_lrs(plan, settings)
    frames = []
    for m in settings.lr_multipliers:
        lrs = {w: rule[w] * m for w in rule}
        frames.append(run_isoflop_sweep(rows, data, store=store, sweep=sweep, seeds=(0,), lr=lrs,
                                        **run_kw).assign(multiplier=m))
    runs = pd.concat(frames, ignore_index=True)
    runs["d_model"] = runs["model.d_model"].astype(int)
    best = runs.loc[runs.groupby("d_model")["val_loss"].idxmin()]
    return {int(w): float(lr) for w, lr in zip(best["d_model"], best["lr"])}, runs


def training_curves(store: RunStore, sweep: str, runs: pd.DataFrame) -> pd.DataFrame:
    """The stored training curves of ``runs`` (rows of ``run_isoflop_sweep``), with their
    ``n_params``: the input of ``lib.scaling.fit_envelope``."""
    hist = store.histories(sweep)
    hist = hist[hist["run_id"].isin(set(runs["run_id"]))]
    return hist.merge(runs[["run_id", "n_params", "budget"]], on="run_id").dropna(subset=["loss"])


def planned_runs(settings) -> list[PlannedRun]:
    """One ``lib.scaling.PlannedRun`` per training run the notebook does with ``settings``:
    every feasible plan row per sweep seed, the extra repeat seeds at the middle budget's centre,
    the per-size LR sweep (full) and the constant-LR arm's runs whose LR differs from the
    rule's (an upper bound: the tuned LRs are not known in advance), and the python-stdlib
    sweep (quick)."""
    s = settings
    plan = make_plan(s, tokens_per_second=1.0)
    rule = rule_lrs(plan, s)

    def runs_of(rows, seeds, tag):
        out = []
        for _, row in rows[rows["feasible"]].iterrows():
            model = ModelConfig(**row["shape"])
            tokens = int(row["tokens"]) if s.max_steps is None else \
                min(int(row["steps"]), s.max_steps) * s.batch_size * s.seq_len
            out += [PlannedRun(f"{tag} C={row['budget']:.1e} N={row['n_params']} seed={seed}", model,
                               tokens, seq_len=s.seq_len, batch_size=s.batch_size) for seed in seeds]
        return out

    runs = runs_of(plan, s.sweep_seeds, "isoflop")
    extra = [x for x in s.repeat_seeds if x not in s.sweep_seeds]
    runs += runs_of(centre_rows(plan), extra, "repeat")
    if s.lr_multipliers:
        for m in s.lr_multipliers:
            runs += runs_of(lr_tune_plan(plan), (0,), f"lr-tune x{m:g}")
    if s.compare_lr:
        const = constant_lrs(plan, s)
        differ = plan[plan["d_model"].map(lambda w: rule.get(int(w)) != const.get(int(w)))]
        runs += runs_of(differ, s.sweep_seeds[:1], "constant-lr")
    if s.stdlib:
        splan = make_plan(s, vocab_size=s.stdlib_vocab_size, budgets=s.stdlib_budgets,
                          n_sizes=s.stdlib_n_sizes, corpus_tokens=s.stdlib_n_train_tokens,
                          tokens_per_second=1.0)
        runs += runs_of(splan, s.sweep_seeds, "python-stdlib")
    return runs


def centre_rows(plan: pd.DataFrame) -> pd.DataFrame:
    """The centre size of the middle budget, where the quick profile repeats seeds to measure
    the seed-to-seed noise (the full profile runs every point over its seeds)."""
    feasible = plan[plan["feasible"]]
    budgets = np.sort(feasible["budget"].unique())
    mid = feasible[feasible["budget"] == budgets[len(budgets) // 2]]
    return mid.iloc[[len(mid) // 2]]


# --------------------------------------------------------------------------- allocation at C


def flops_per_token_curve(plan: pd.DataFrame):
    """A function N -> Appendix-F training FLOPs per token, interpolated (log-log, linear
    beyond the ends) over the plan's real shapes; Approach 3's optimum at C is taken under
    this count, the one the budgets are planned with."""
    p = plan.drop_duplicates("n_params").sort_values("n_params")
    x, y = np.log(p["n_params"].to_numpy(float)), np.log(p["flops_per_token"].to_numpy(float))
    slope_lo = (y[1] - y[0]) / (x[1] - x[0]) if len(x) > 1 else 1.0
    slope_hi = (y[-1] - y[-2]) / (x[-1] - x[-2]) if len(x) > 1 else 1.0

    def fpt(n):
        ln = np.log(np.asarray(n, float))
        out = np.interp(ln, x, y)
        out = np.where(ln < x[0], y[0] + slope_lo * (ln - x[0]), out)
        out = np.where(ln > x[-1], y[-1] + slope_hi * (ln - x[-1]), out)
        return np.exp(out)

    return fpt


def _parametric_optimum(params: pd.DataFrame, C: float, fpt, n_grid: int = 400):
    """For each row of (E, A, B, alpha, beta): (N*, D*, L*) minimising L(N, C / fpt(N)) over a
    log grid of N (vectorised over rows)."""
    n = np.geomspace(1e1, 1e13, n_grid)
    d = C / fpt(n)
    P = {k: params[k].to_numpy(float)[:, None] for k in ("E", "A", "B", "alpha", "beta")}
    with np.errstate(all="ignore"):
        L = P["E"] + P["A"] / n ** P["alpha"] + P["B"] / d ** P["beta"]
    L = np.where(np.isfinite(L), L, np.inf)
    i = np.argmin(L, axis=1)
    return n[i], d[i], L[np.arange(len(i)), i]


def allocation_at(C: float, *, iso: IsoFLOPFit | None = None, par: ParametricFit | None = None,
                  env=None, fpt=None, level: float = 0.95) -> pd.DataFrame:
    """N*, D* and the predicted loss at a budget of ``C`` FLOPs (Appendix F) from each fitted
    law given, with percentile intervals from its bootstrap: Approach 2 (``iso``; no loss),
    Approach 3 (``par``, optimum of L(N, C / fpt(N)) under ``fpt`` = ``flops_per_token_curve``;
    loss) and Approach 1 (``env``; no loss). One row per approach."""
    C = check_positive("C", C)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2

    def q(v):
        # A draw whose optimum is not finite is inf: numpy's interpolation across two of them
        # computes inf - inf, a percentile of +inf that needs no warning.
        with np.errstate(invalid="ignore"):
            return float(np.nanquantile(v, lo)), float(np.nanquantile(v, hi))

    rows = []
    for name, fit in (("approach 1 (envelope)", env), ("approach 2 (IsoFLOP)", iso)):
        if fit is None:
            continue
        n, d = (float(v[0]) for v in fit.predict([C]))
        b = fit.bootstrap
        bn = 10 ** (b["log10_k_n"] + b["a"] * np.log10(C)) if b is not None else np.array([np.nan])
        bd = 10 ** (b["log10_k_d"] + b["b"] * np.log10(C)) if b is not None else np.array([np.nan])
        rows.append({"approach": name, "n_opt": n, "n_low": q(bn)[0], "n_high": q(bn)[1], "d_opt": d,
                     "d_low": q(bd)[0], "d_high": q(bd)[1], "loss": np.nan, "loss_low": np.nan,
                     "loss_high": np.nan})
    if par is not None:
        if fpt is None:
            raise ValueError("allocation_at needs fpt (flops_per_token_curve(plan)) with par")
        n, d, L = (float(v[0]) for v in _parametric_optimum(pd.DataFrame([par.params]), C, fpt))
        bn, bd, bL = _parametric_optimum(par.bootstrap, C, fpt) if par.bootstrap is not None \
            else (np.array([np.nan]),) * 3
        rows.append({"approach": "approach 3 (parametric)", "n_opt": n, "n_low": q(bn)[0], "n_high": q(bn)[1],
                     "d_opt": d, "d_low": q(bd)[0], "d_high": q(bd)[1], "loss": L,
                     "loss_low": q(bL)[0], "loss_high": q(bL)[1]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- figures


def plot_isoflop_curves(runs: pd.DataFrame, fit: IsoFLOPFit | None = None, ax=None,
                        loss: str = "val_loss"):
    """Loss vs parameters per budget (one colour per budget; mean over seeds with min-max
    bars), the fitted parabolas in log N and their vertices with their bootstrap intervals.
    Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    for col in ("budget", "n_params", loss):
        if col not in runs:
            raise ValueError(f"runs must have a {col!r} column (run_isoflop_sweep's frame)")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    grouped = runs.groupby(["budget", "n_params"])[loss].agg(["mean", "min", "max"]).reset_index()
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.85, grouped["budget"].nunique()))
    for color, (budget, g) in zip(colors, grouped.groupby("budget")):
        ax.errorbar(g["n_params"], g["mean"], yerr=[g["mean"] - g["min"], g["max"] - g["mean"]],
                    fmt="o", color=color, capsize=2, label=f"C = {budget:.1e} FLOPs")
        pts = runs[runs["budget"] == budget]
        if pts["n_params"].nunique() >= 3:
            x = np.log(pts["n_params"].to_numpy(float))
            coef = np.polyfit(x, pts[loss].to_numpy(float), 2)
            grid = np.linspace(x.min() - 0.2, x.max() + 0.2, 100)
            ax.plot(np.exp(grid), np.polyval(coef, grid), color=color, lw=1)
    if fit is not None:
        v = fit.vertices
        if "log10_n_opt_low" in v:
            # Drawn as segments, not error bars: a percentile interval need not hold its estimate.
            ax.hlines(v["loss_min"], 10 ** v["log10_n_opt_low"], 10 ** v["log10_n_opt_high"], colors="k", lw=0.8)
        ax.plot(v["n_opt"], v["loss_min"], "k*", ms=11, label="vertex N*(C), 95% interval")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor labels collide on short ranges
    ax.set_xlabel("parameters N")
    ax.set_ylabel(f"{loss} (nats/token)")
    ax.legend(fontsize=8)
    return ax


def plot_envelope(curves: pd.DataFrame, env, ax=None):
    """Approach 1: every run's smoothed training curve (loss vs FLOPs, coloured by size) and the
    lower envelope (black). Returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    sizes = np.sort(curves["n_params"].unique())
    cmap = plt.get_cmap("plasma")
    for _, g in curves.groupby("run_id", sort=False):
        k = np.searchsorted(sizes, g["n_params"].iloc[0]) / max(1, len(sizes) - 1)
        ax.plot(g["flops"], g["loss"], color=cmap(0.85 * k), lw=0.8, alpha=0.7)
    e = env.envelope
    ax.plot(e["flops"], e["loss"], "k-", lw=2, label="lower envelope")
    for n in sizes:
        ax.plot([], [], color=cmap(0.85 * np.searchsorted(sizes, n) / max(1, len(sizes) - 1)), label=f"N={n}")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (Appendix F)")
    ax.set_ylabel("training loss, smoothed (nats/token)")
    ax.legend(fontsize=7, ncol=2)
    return ax


def plot_exponents(table: pd.DataFrame, ax=None):
    """The exponent a of N* ~ C^a per estimate (rows of ``table``: a, low, high), with the
    Chinchilla value 0.5 dashed. Returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 0.45 * len(table) + 1))
    y = np.arange(len(table))
    a = table["a"].to_numpy(float)
    # Segments from low to high, not error bars: a percentile bootstrap interval of a poorly
    # determined fit need not hold the estimate itself.
    ax.hlines(y, table["low"].to_numpy(float), table["high"].to_numpy(float), lw=1.5)
    ax.plot(a, y, "o")
    ax.set_yticks(y, table.index)
    ax.set_xlabel("exponent a of the compute-optimal model size (95% interval)")
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    return ax


EXPLORER_RANGE = (-1.0, 3.0)  # log10 of C over the sweep's largest budget the slider spans


def explorer_figure(C: float, *, iso=None, par=None, env=None, fpt=None, budgets=None):
    """N*(C) from each law over a range of budgets (bands: 95% intervals), the chosen ``C``
    marked, and its N*, D* and predicted loss written out. Returns the Figure."""
    import matplotlib.pyplot as plt

    top = max(budgets) if budgets is not None else C
    grid = np.logspace(np.log10(top) + EXPLORER_RANGE[0] - 1, np.log10(top) + EXPLORER_RANGE[1], 25)
    fig, (ax, tx) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1.6, 1]})
    tables = [allocation_at(c, iso=iso, par=par, env=env, fpt=fpt) for c in grid]
    for k, name in enumerate(tables[0]["approach"]):
        rows = pd.DataFrame([t.iloc[k] for t in tables])
        line, = ax.plot(grid, rows["n_opt"], label=name)
        ax.fill_between(grid, rows["n_low"], rows["n_high"], color=line.get_color(), alpha=0.15)
    if budgets is not None:
        for b in budgets:
            ax.axvline(b, color="grey", lw=0.5, ls=":")
    ax.axvline(C, color="k", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="budget C (FLOPs, Appendix F)", ylabel="N* (parameters)")
    ax.legend(fontsize=8)
    now = allocation_at(C, iso=iso, par=par, env=env, fpt=fpt)
    lines = [f"C = {C:.2e} FLOPs"]
    for _, r in now.iterrows():
        lines += [r["approach"], f"  N* {r['n_opt']:.3g} [{r['n_low']:.3g}, {r['n_high']:.3g}]",
                  f"  D* {r['d_opt']:.3g} [{r['d_low']:.3g}, {r['d_high']:.3g}]"]
        if np.isfinite(r["loss"]):
            lines.append(f"  loss {fmt_interval(r['loss'], r['loss_low'], r['loss_high'])} nats/token")
    tx.axis("off")
    tx.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
    fig.tight_layout()
    return fig


def explorer(*, iso=None, par=None, env=None, fpt=None, budgets=None, C: float | None = None):
    """Compute budget -> N*, D* and predicted loss from the fitted laws with their intervals
    (``explorer_figure``). Live ipywidgets in JupyterLab (the first widget is the budget
    slider, log10 C); in batch (``lib.core.in_batch``) the static figure at ``C`` (default:
    ten times the largest budget). Returns the figure (batch) or the widget (live)."""
    import matplotlib.pyplot as plt

    top = float(max(budgets)) if budgets is not None else 1e12
    C = 10 * top if C is None else check_positive("C", C)
    if in_batch():
        return explorer_figure(C, iso=iso, par=par, env=env, fpt=fpt, budgets=budgets)
    import ipywidgets as widgets

    slider = widgets.FloatSlider(value=float(np.log10(C)), min=np.log10(top) + EXPLORER_RANGE[0],
                                 max=np.log10(top) + EXPLORER_RANGE[1], step=0.1,
                                 description="log10 C", continuous_update=False)

    def show(log10_C):
        plt.show(explorer_figure(10**log10_C, iso=iso, par=par, env=env, fpt=fpt, budgets=budgets))

    return widgets.interactive(show, log10_C=slider)


# --------------------------------------------------------------------------- the conclusion


def exponent_statement(name: str, a: float, low: float, high: float, reference: float = 0.5,
                       alternative: float = 0.73) -> str:
    """One sentence on an exponent's interval: which of Chinchilla's 0.5 and Kaplan's 0.73 it
    excludes, or "cannot decide" when it holds both."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{name}: a = {a:.2f}, no interval (cannot decide)"
    inside = [v for v in (reference, alternative) if low <= v <= high]
    text = f"{name}: a = {fmt_interval(a, low, high)}"
    if len(inside) == 2:
        return text + f"; holds both {reference} and {alternative}: cannot decide (interval wider than their difference)"
    if not inside:
        return text + f"; excludes both {reference} and {alternative}"
    other = alternative if inside[0] == reference else reference
    return text + f"; excludes {other}, consistent with {inside[0]}"


CORPORA = ("synthetic", "python-stdlib")


def study_corpus(settings, corpus: str = "synthetic"):
    """(data, plan overrides) for the notebook's ``corpus``: the synthetic language (known
    entropy rate) at the profile's vocabulary, or the python-stdlib corpus (BPE of
    ``stdlib_vocab_size`` tokens, entropy rate unknown) with the budgets and sizes planned
    for its larger vocabulary (``stdlib_*`` settings). Pass the overrides to ``make_plan``."""
    corpus = check_choice("corpus", corpus, CORPORA)
    s = settings
    if corpus == "synthetic":
        data = load_corpus("synthetic", vocab_size=s.vocab_size, n_train_tokens=s.n_train_tokens,
                           n_val_tokens=100_000, seed=0)
        return data, {}
    data = load_corpus("python-stdlib", vocab_size=s.stdlib_vocab_size, seq_len=s.seq_len,
                       n_train_tokens=s.stdlib_n_train_tokens, n_val_tokens=100_000, seed=0)
    return data, dict(vocab_size=data.vocab_size, budgets=s.stdlib_budgets, n_sizes=s.stdlib_n_sizes,
                      corpus_tokens=len(data.train))


# --------------------------------------------------------------------------- published data

REFERENCE_ENV = "WORKBENCH_REFERENCE_DATA"


def reference_dir() -> Path:
    """The published reference data (never copied into the repository): ``$WORKBENCH_REFERENCE_DATA``
    if set, else ``shared/reference-data`` beside the clone, as the tests' ``reference_data``
    fixture finds it."""
    override = os.environ.get(REFERENCE_ENV)
    return Path(override) if override else repo_root().parent / "shared" / "reference-data"


# --------------------------------------------------------------------------- the conclusion


def _interval_reading(name: str, err: float, low: float, high: float, unit: str) -> str:
    text = f"{name} off by {fmt_interval(err, low, high)} {unit}"
    if not (np.isfinite(low) and np.isfinite(high)):
        return text + " (no interval: cannot decide)"
    if low <= 0 <= high:
        return text + ": consistent with no error (the interval holds 0)"
    return text + ": a real miss (the interval excludes 0)"


def conclusion(*, plan, spread, seed_std, iso, env, par, extrap, lr_shift, siso, data, runs,
               chin=None, llama=None, profile="quick") -> str:
    """The notebook's conclusion as Markdown, every number formatted from the results (stable
    rounding); where an interval holds both readings it says "cannot decide"."""
    lines = []
    exact = spread["Appendix-F plan"]
    six = spread["6N plan"]
    lines.append(
        f"- **Planning** by the Appendix-F count spends every budget to within "
        f"{100 * float(np.max(np.abs(exact[['real/budget min', 'max']].to_numpy() - 1))):.0f}% "
        f"(whole optimizer steps); the same budgets planned with 6N would cost "
        f"{float(six['real/budget min'].min()):.2f}-{float(six['max'].max()):.2f}x the budget in real FLOPs, "
        f"each iso line spreading up to {float(six['spread %'].max()):.0f}%.")
    u = iso.uncertainty
    ci = iso.ci()
    lines.append(
        f"- **Noise**: the residual spread around the parabolas is {u.sigma:.2f} nats "
        f"({u.dof} degrees of freedom), the seed-to-seed std at the repeated point {seed_std:.2f}; "
        f"the Approach-2 interval is drawn from that noise, and the vertices spread "
        f"{float(iso.vertices['log10_n_opt_std'].min()):.2f}-{float(iso.vertices['log10_n_opt_std'].max()):.2f} "
        f"dex per budget.")
    eci = env.ci()
    pci = par.ci()
    for label, (a, lo, hi) in (("Approach 1 (envelope)", (env.a, eci.loc["a", "low"], eci.loc["a", "high"])),
                               ("Approach 2 (IsoFLOP)", (iso.a, ci.loc["a", "low"], ci.loc["a", "high"])),
                               ("Approach 3 (parametric)", (par.a, pci.loc["a", "low"], pci.loc["a", "high"]))):
        lines.append(f"- {exponent_statement(label, a, lo, hi)}.")
    ex = extrap.set_index("quantity")
    n = ex.loc["log10 N*"]
    lo_ = ex.loc["loss"]
    lines.append(
        f"- **Extrapolation** to the held-out largest budget ({int(n['n_heldout'])} runs): "
        f"{_interval_reading('N*', n['error'], n['low'], n['high'], 'dex')}; "
        f"{_interval_reading('the loss', lo_['error'], lo_['low'], lo_['high'], 'nats')}.")
    if lr_shift is not None:
        d, lo, hi = lr_shift
        verdict = ("cannot decide (the shift is below what this sweep's noise can detect)" if lo <= 0 <= hi
                   else "the LR choice moves the exponent beyond the noise")
        lines.append(f"- **LR choice**: per-size rule minus one constant LR moves a by "
                     f"{fmt_interval(d, lo, hi)}: {verdict}.")
    if data.entropy_rate is not None:
        lo_e, hi_e = pci.loc["E", "low"], pci.loc["E", "high"]
        holds = lo_e <= data.entropy_rate <= hi_e
        lines.append(
            f"- **Irreducible loss**: Approach 3's E = {fmt_interval(par.E, lo_e, hi_e, 1)} against the corpus's "
            f"true entropy rate {data.entropy_rate:.2f} nats/token "
            f"({'inside' if holds else 'outside'} the interval); the lowest loss reached is "
            f"{float(runs['val_loss'].min()):.2f}.")
    if siso is not None:
        sci = siso.ci()
        lines.append(f"- **Real text** (python-stdlib): "
                     f"{exponent_statement('Approach 2', siso.a, sci.loc['a', 'low'], sci.loc['a', 'high'])}.")
    if chin is not None:
        lines.append(
            f"- **The fitters reproduce published results**: on Chinchilla's points Approach 3 gives "
            f"alpha = {chin.alpha:.3f}, beta = {chin.beta:.3f}, E = {chin.E:.3f}, a = {chin.a:.3f} "
            f"(Epoch AI: 0.3478, 0.3658, 1.8172, 0.513)"
            + (f"; Approach 2 on Llama 3's IsoFLOPs gives D* ~ C^{llama.b:.2f} (paper: 0.53)" if llama is not None
               else "") + ".")
    if profile == "quick":
        lines.append(
            "- The quick profile is a toy sweep (models of thousands of parameters, hundreds of steps): "
            "it shows the mechanics and the honest width of its intervals, not Chinchilla's numbers. "
            "The full profile runs the real sweep (every point over several seeds, a tuned LR per "
            "width) on a GPU.")
    return "\n".join(lines)
