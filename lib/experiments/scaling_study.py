"""Notebook 03's recipe: train an IsoFLOP plan for exactly its token budgets and draw the curves.

Each run trains with ``lib.training.train`` under a warm-up-cosine schedule fitted to its own
length and records its held-out loss in a ``lib.training.RunStore``, so a killed sweep resumes.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd

from lib.core import seed_everything
from lib.models import ModelConfig, Transformer
from lib.scaling import IsoFLOPFit, sweep_configs
from lib.schedules import WarmupCosine
from lib.training import RunStore, TrainConfig, run_sweep, train

# Notebook 03's profiles. quick: CPU, minutes (budgets of 1e10 FLOPs on the embedded corpus, one
# sweep seed and three repeat seeds at each budget's centre). full: the real sweep, meant for a GPU.
QUICK = dict(budgets=[1.5e10, 3e10, 6e10], n_sizes=5, span=8.0, tokens_per_param=100.0,
             vocab_size=64, seq_len=32, batch_size=64, head_dim=8, aspect_ratio=8.0, lr=1e-2,
             n_train_tokens=4_000_000, sweep_seeds=(0,), repeat_seeds=(0, 1, 2),
             n_bootstrap=100, threads=1)
FULL = dict(budgets=[1e15, 3e15, 1e16, 3e16], n_sizes=7, span=16.0, tokens_per_param=20.0,
            vocab_size=256, seq_len=256, batch_size=64, head_dim=64, aspect_ratio=32.0, lr=3e-3,
            n_train_tokens=400_000_000, sweep_seeds=(0, 1, 2), threads=None)


def train_isoflop_run(config: dict, data, device=None, progress: bool = False) -> dict:
    """Train one ``sweep_configs`` entry on ``data`` (a lib.data.TokenData) and return its
    metrics: ``val_loss`` (held-out nats/token at the end), ``train_loss``, ``tokens``,
    ``flops`` (6 N tokens), ``n_params_model`` and ``elapsed_s``."""
    seed_everything(config["seed"])
    model = Transformer(ModelConfig(**config["model"]))
    n_params = model.num_params()
    schedule = WarmupCosine(total_steps=config["steps"], warmup_steps=config["warmup_steps"],
                            min_lr_ratio=config["min_lr_ratio"])
    result = train(model, data, TrainConfig(
        steps=config["steps"], batch_size=config["batch_size"], seq_len=config["seq_len"],
        lr=config["lr"], schedule=schedule, eval_batches=config["eval_batches"],
        seed=config["seed"], device=device, progress=progress, log_every=max(1, config["steps"] // 20)))
    final = result.final
    return {"val_loss": final["val_loss"], "train_loss": final["train_loss"],
            "tokens": final["tokens"], "flops": 6.0 * n_params * final["tokens"],
            "n_params_model": n_params, "elapsed_s": final["elapsed_s"]}


def run_isoflop_sweep(plan: pd.DataFrame, data, *, store=None, sweep: str = "isoflop", seeds=(0,),
                      lr: float = 3e-3, batch_size: int, seq_len: int, device=None,
                      progress: bool = True, **config_kw) -> pd.DataFrame:
    """Train every feasible plan entry for every seed through ``lib.training.run_sweep`` (runs
    already done in ``store`` are skipped, so an interrupted sweep resumes) and return the
    sweep's runs (``store.frame(sweep)``; config keys and metrics as columns; ``sweep_configs``
    validates the settings)."""
    store = RunStore() if store is None else store
    corpus = config_kw.pop("corpus", getattr(data, "name", ""))
    configs = sweep_configs(plan, seeds=seeds, lr=lr, batch_size=batch_size, seq_len=seq_len,
                            corpus=corpus, **config_kw)
    return run_sweep(store, sweep, configs, partial(train_isoflop_run, data=data, device=device),
                     progress=progress)


def plot_isoflop_curves(runs: pd.DataFrame, fit: IsoFLOPFit | None = None, ax=None,
                        loss: str = "val_loss"):
    """Loss vs parameters per budget (one colour per budget; mean over seeds with min-max
    bars), the fitted parabolas in log N and their vertices. Returns the matplotlib Axes."""
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
        ax.plot(v["n_opt"], v["loss_min"], "k*", ms=11, label="parabola vertex N*(C)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor labels collide on short ranges
    ax.set_xlabel("parameters N")
    ax.set_ylabel(f"{loss} (nats/token)")
    ax.legend(fontsize=8)
    return ax
