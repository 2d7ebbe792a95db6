"""Notebook 04's recipe: declarative optimizer / learning-rate / schedule studies of an MoE
model, run through ``lib.training``.

A run is one flat, JSON-able config dict (``study_config``): corpus, model, optimizer, peak
LR, warm-up fraction and LR floor of a warm-up + cosine schedule counted in OPTIMIZER steps
and always run to completion, seed. ``grid`` crosses axes; ``run_study`` executes a list of
configs through ``lib.training.run_sweep`` (resumable SQLite: a killed study reruns only what is
missing), optionally in several worker processes that claim runs from the same store.

Pairing: ``seed`` sets both the model initialisation and the data order, so two arms with
the same seed see the same batches in the same order from the same initial weights; arm
differences are then paired differences (``paired_difference``). ``repeat`` distinguishes
identical configs (the A/A determinism check: same seed twice must agree exactly on CPU).

Metrics (``run_config``): held-out validation ``val_loss`` (nats/token), ``val_accuracy``,
``val_perplexity`` on documents never seen in training (``lib.data`` draws train and
validation documents independently), ``train_loss``, ``tokens_per_s``, routing balance of
the trained model on validation batches (``max_load_ratio``, ``load_cv``,
``router_entropy``, ``overflow_share``), parameter counts, ``diverged``.

Analysis (``summarize``, ``paired_difference``, ``noise_floor``) selects runs from a study's
frame and hands them to ``lib.core``'s statistics (Student-t intervals, paired t and Wilcoxon
tests); ``verdict`` is ``lib.core.verdict``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lib.core import (
    check_choice,
    check_int,
    check_number,
    check_positive,
    t_critical,
    verdict,
)
from lib.core import paired_difference as paired_series_difference
from lib.core import summarize as summarize_groups
from lib.data import synthetic_corpus
from lib.models import ModelConfig, Transformer, routing_summary
from lib.schedules import WarmupCosine
from lib.training import RunStore, TrainConfig, build_optimizers, make_run_id, run_sweep, train

__all__ = [
    "QUICK", "FULL", "DEFAULTS", "OPTIMIZERS", "MLPS", "ROUTING_KEYS", "INT_KEYS",
    "study_config", "grid", "lr_grid", "aa_configs", "dense_equivalent",
    "build_model", "run_config", "run_study", "main",
    "summarize", "paired_difference", "verdict", "noise_floor", "best", "edge_lrs",
    "warmup_floor_table", "plot_lr_sensitivity", "plot_warmup_floor_heatmap",
]

DEFAULTS: dict[str, Any] = {
    # corpus (lib.data.synthetic_corpus): train and validation documents drawn independently
    "vocab_size": 128, "n_train_tokens": 300_000, "n_val_tokens": 20_000, "data_source_seed": 0,
    # model (lib.models.ModelConfig); d_ff is the hidden width of EACH expert for mlp="moe"
    "mlp": "moe", "d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 64,
    "n_experts": 4, "top_k": 2, "aux_loss_coef": 0.01, "router_noise": 0.0,
    # optimisation (lib.training.optim.build_optimizers + lib.schedules.WarmupCosine)
    "optimizer": "muon", "lr": 0.02, "adamw_lr": None, "weight_decay": 0.1,
    "adjust_lr_fn": None, "warmup": 0.05, "floor": 0.1,
    "steps": 60, "batch_size": 8, "seq_len": 64, "grad_clip": 1.0,
    "eval_batches": 8, "eval_batch_size": 16,
    # identity of the run
    "seed": 0, "repeat": 0, "device": "cpu", "threads": 1,
}
OPTIMIZERS = ("muon", "adamw")
MLPS = ("moe", "swiglu")
ROUTING_KEYS = ("max_load_ratio", "load_cv", "router_entropy", "overflow_share")


# Integer settings and their minimum (None allowed for the evaluation sizes: lib.training's
# defaults); the rest of DEFAULTS is checked below or by the component it configures.
INT_KEYS = {"vocab_size": 1, "n_train_tokens": 1, "n_val_tokens": 1, "data_source_seed": 0,
            "d_model": 1, "n_layers": 1, "n_heads": 1, "d_ff": 1, "n_experts": 1, "top_k": 1,
            "steps": 1, "batch_size": 1, "seq_len": 1, "eval_batches": 1, "eval_batch_size": 1,
            "seed": 0, "repeat": 0, "threads": 1}


def study_config(**overrides: Any) -> dict[str, Any]:
    """A complete run config: ``DEFAULTS`` updated with ``overrides`` (validated).

    Integers (numpy ones too) are stored as Python ints; other numbers are kept as given,
    since a run's id is the JSON of its config (``0`` and ``0.0`` name different runs).
    """
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown study keys {unknown}; allowed: {sorted(DEFAULTS)}")
    config = {**DEFAULTS, **overrides}
    check_choice("optimizer", config["optimizer"], OPTIMIZERS)
    check_choice("mlp", config["mlp"], MLPS)
    for key, minimum in INT_KEYS.items():
        if config[key] is not None or key not in ("eval_batches", "eval_batch_size"):
            config[key] = check_int(key, config[key], minimum)
    for key in ("warmup", "floor"):
        check_number(key, config[key], 0.0, 1.0, strict_max=True)
    check_positive("lr", config["lr"])
    for key in ("adamw_lr", "grad_clip"):
        if config[key] is not None:
            check_positive(key, config[key])
    for key in ("weight_decay", "aux_loss_coef", "router_noise"):
        check_positive(key, config[key], allow_zero=True)
    return config


def grid(base: dict[str, Any] | None = None, **axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of ``axes`` (key -> list of values) over ``base`` (a ``study_config``
    or overrides), in row-major order of the keyword arguments: ``grid(base, lr=[...], seed=[0, 1, 2])``."""
    for key, values in axes.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ValueError(f"axis {key!r} must be a list of values, got {values!r}")
    base = study_config(**(base or {}))
    keys = list(axes)
    return [study_config(**{**base, **dict(zip(keys, combo))})
            for combo in itertools.product(*(list(axes[k]) for k in keys))]


def lr_grid(center: float, n: int = 3, factor: float = 2.0) -> list[float]:
    """``n`` peak LRs spaced by ``factor`` on a log scale around ``center`` (rounded to 4
    significant digits so they are stable config keys)."""
    check_positive("center", center)
    n = check_int("n", n, 1)
    check_number("factor", factor, 1.0, strict_min=True)
    offsets = np.arange(n) - (n - 1) / 2
    return [float(f"{center * factor ** o:.4g}") for o in offsets]


def aa_configs(base: dict[str, Any], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """A/A design: ``base`` at every seed (run-to-run noise) plus ``seeds[0]`` once more with
    ``repeat=1`` (must reproduce exactly: determinism)."""
    if len(seeds) < 2:
        raise ValueError(f"an A/A study needs at least 2 seeds, got {list(seeds)}")
    runs = grid(base, seed=list(seeds))
    return runs + [study_config(**{**runs[0], "repeat": 1})]


def dense_equivalent(config: dict[str, Any]) -> dict[str, Any]:
    """The dense SwiGLU config with the MoE config's ACTIVE parameters: one MLP of width
    ``top_k * d_ff`` (the router's ``n_experts * d_model`` weights are not matched)."""
    config = study_config(**config)
    if config["mlp"] != "moe":
        raise ValueError("dense_equivalent needs an mlp='moe' config")
    return study_config(**{**config, "mlp": "swiglu", "d_ff": config["top_k"] * config["d_ff"]})


# --------------------------------------------------------------------------- running


# A study's runs share a few corpora: building one costs more than a tiny run's training.
@functools.lru_cache(maxsize=4)
def _corpus(vocab_size: int, n_train_tokens: int, n_val_tokens: int, seed: int):
    return synthetic_corpus(n_train_tokens=n_train_tokens, n_val_tokens=n_val_tokens,
                            vocab_size=vocab_size, seed=seed)


def build_model(config: dict[str, Any]):
    """The ``lib.models.Transformer`` of ``config`` (initialised from ``config['seed']``)."""
    moe = {}
    if config["mlp"] == "moe":
        moe = {"n_experts": config["n_experts"], "top_k": config["top_k"],
               "aux_loss_coef": config["aux_loss_coef"], "router_noise": config["router_noise"]}
    model_config = ModelConfig(vocab_size=config["vocab_size"], d_model=config["d_model"],
                               n_layers=config["n_layers"], n_heads=config["n_heads"], d_ff=config["d_ff"],
                               max_seq_len=config["seq_len"], mlp=config["mlp"], moe=moe)
    torch.manual_seed(config["seed"])
    return Transformer(model_config)


def run_config(config: dict[str, Any]) -> dict[str, Any]:
    """Train one config to the end of its schedule; return its metrics (and loss history)."""
    config = study_config(**config)
    torch.set_num_threads(config["threads"])
    data = _corpus(config["vocab_size"], config["n_train_tokens"], config["n_val_tokens"],
                   config["data_source_seed"])
    model = build_model(config).to(config["device"])
    steps = config["steps"]
    schedule = WarmupCosine(total_steps=steps, warmup_steps=round(config["warmup"] * steps),
                            min_lr_ratio=config["floor"])
    optimizers, schedulers = build_optimizers(
        model, kind=config["optimizer"], lr=config["lr"], adamw_lr=config["adamw_lr"],
        weight_decay=config["weight_decay"], adjust_lr_fn=config["adjust_lr_fn"], schedule=schedule)
    train_config = TrainConfig(steps=steps, batch_size=config["batch_size"], seq_len=config["seq_len"],
                               schedule=schedule, grad_clip=config["grad_clip"],
                               eval_batches=config["eval_batches"], eval_batch_size=config["eval_batch_size"],
                               seed=config["seed"], device=config["device"], on_divergence="stop",
                               progress=False)
    result = train(model, data, train_config, optimizers=optimizers, schedulers=schedulers)
    metrics = {k: result.final.get(k, math.nan) for k in
               ("val_loss", "val_accuracy", "val_perplexity", "train_loss", "tokens_per_s", "elapsed_s")}
    metrics["diverged"] = bool(result.final["diverged"])
    metrics["params"] = model.num_params()
    metrics["active_params"] = int(model.flops_per_token() / 6)
    metrics.update(dict.fromkeys(ROUTING_KEYS, math.nan))
    if config["mlp"] == "moe" and not metrics["diverged"]:
        stats = []
        model.eval()
        with torch.no_grad():
            for x, _ in data.eval_batches(config["seq_len"], config["eval_batch_size"], max_batches=2):
                model(x.to(config["device"]))
                stats.append(routing_summary(model))
        metrics.update({k: float(np.mean([s[k] for s in stats])) for k in ROUTING_KEYS})
    metrics["history"] = result.history[["step", "loss", "lr"]]
    return metrics


def run_study(store, sweep: str, configs: Sequence[dict[str, Any]], workers: int = 1,
              progress: bool = False) -> pd.DataFrame:
    """Run ``configs`` as ``sweep`` in ``store`` (a ``lib.training.RunStore``); return their rows
    (done runs of exactly these configs, one per config, as ``store.frame`` columns).

    Done runs are skipped, so calling again resumes. ``workers > 1`` starts that many
    processes (spawn) that claim runs from the same SQLite store; each run is single-threaded
    by default (``threads``), which is how small models use a multi-core CPU best.
    """

    if not isinstance(store, RunStore):
        raise ValueError(f"store must be a lib.training.RunStore, got {type(store).__name__}")
    workers = check_int("workers", workers, 1)
    configs = [study_config(**c) for c in configs]
    if workers > 1:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(configs, f)
        cmd = [sys.executable, "-c", "from lib.experiments.moe_lr_study import main; main()",
               str(store.path), sweep, f.name]
        procs = [subprocess.Popen(cmd) for _ in range(workers)]
        failed = [p.wait() for p in procs]
        Path(f.name).unlink(missing_ok=True)
        if any(failed):
            warnings.warn(f"sweep workers exited with codes {failed}; their unfinished runs run here",
                          RuntimeWarning, stacklevel=2)
    # Single process, or a sweep-up of anything a worker left failed.
    run_sweep(store, sweep, configs, run_config, progress=progress)
    frame = store.frame(sweep)
    wanted = {make_run_id(sweep, c) for c in configs}
    return frame[(frame["status"] == "done") & frame["run_id"].isin(wanted)].reset_index(drop=True)


# --------------------------------------------------------------------------- analysis


def _select(frame: pd.DataFrame, where: dict[str, Any]) -> pd.DataFrame:
    missing = [k for k in where if k not in frame]
    if missing:
        raise ValueError(f"columns {missing} are not in the frame; it has {list(frame.columns)}")
    mask = np.ones(len(frame), dtype=bool)
    for key, value in where.items():
        col = frame[key]
        mask &= np.isclose(col.astype(float), float(value)) if isinstance(value, float) else (col == value).to_numpy()
    return frame[mask]


def summarize(frame: pd.DataFrame, by: Sequence[str] | str, metric: str = "val_loss",
              confidence: float = 0.95) -> pd.DataFrame:
    """Per group ``by``: ``mean``, ``std``, ``count`` of ``metric`` and a Student-t
    ``confidence`` interval (``ci`` half-width, ``ci_low``, ``ci_high``); diverged runs are
    excluded from the statistics and counted in ``diverged``."""

    by = [by] if isinstance(by, str) else list(by)
    ok = frame[~frame.get("diverged", pd.Series(False, index=frame.index)).astype(bool)]
    out = summarize_groups(ok.dropna(subset=[metric]), by, metric, confidence)
    if "diverged" in frame:
        n_div = frame.groupby(by)["diverged"].sum().rename("diverged").reset_index()
        out = out.merge(n_div, on=by, how="outer").fillna({"count": 0, "diverged": 0})
    return out


def paired_difference(frame: pd.DataFrame, a: dict[str, Any], b: dict[str, Any], metric: str = "val_loss",
                      pair_on: str = "seed", confidence: float = 0.95) -> dict[str, float]:
    """Paired comparison of arm ``a`` minus arm ``b`` (each a dict of column -> value that
    selects its runs), matched on ``pair_on`` (same seed = same init and data order).

    Returns ``lib.core.paired_difference`` of the two arms' ``metric``: ``n`` pairs,
    ``mean_diff`` (negative: ``a`` has the lower ``metric``), its Student-t ``ci_low`` /
    ``ci_high``, the paired t-test ``t_p`` and the Wilcoxon signed-rank ``wilcoxon_p``.
    ``verdict`` (``lib.core.verdict``) reads it in words.
    """
    runs_a = _select(frame, a).set_index(pair_on)[metric]
    runs_b = _select(frame, b).set_index(pair_on)[metric]
    try:
        return paired_series_difference(runs_a, runs_b, confidence)
    except ValueError as err:
        raise ValueError(f"{err} (arms a={a}, b={b} paired on {pair_on!r})") from None


def noise_floor(frame: pd.DataFrame, metric: str = "val_loss", confidence: float = 0.95) -> dict[str, float]:
    """A/A noise of an ``aa_configs`` sweep: ``seed_std`` (std of ``metric`` across seeds,
    repeat 0), ``ci`` (the ``confidence`` Student-t half-width of the mean over those seeds)
    and ``repeat_max_abs_diff`` (same seed run twice: 0 means bit-for-bit deterministic)."""
    first = frame[frame["repeat"] == 0]
    n = len(first)
    if n < 2:
        raise ValueError(f"need >= 2 seeds in the A/A frame, found {n}")
    std = float(first[metric].std(ddof=1))
    repeats = frame[frame["repeat"] > 0]
    diffs = [abs(float(r[metric]) - float(first.loc[first["seed"] == r["seed"], metric].iloc[0]))
             for _, r in repeats.iterrows()]
    return {"seeds": n, "mean": float(first[metric].mean()), "seed_std": std,
            "ci": t_critical(n, confidence) * std / math.sqrt(n),
            "repeat_max_abs_diff": max(diffs) if diffs else math.nan}


def best(summary: pd.DataFrame, by: Sequence[str] | str = ()) -> pd.DataFrame:
    """Rows of a ``summarize`` table with the lowest ``mean`` (per group ``by``)."""
    by = [by] if isinstance(by, str) else list(by)
    ok = summary.dropna(subset=["mean"])
    if not by:
        return ok.loc[[ok["mean"].idxmin()]]
    return ok.loc[ok.groupby(by)["mean"].idxmin()].reset_index(drop=True)


def edge_lrs(summary: pd.DataFrame, by: Sequence[str] | str = "optimizer", factor: float = 2.0) -> dict[tuple, float]:
    """For every group ``by`` of a ``summarize(frame, [*by, "lr"])`` table whose best mean sits at
    the edge of its LR grid, the next LR outwards (``factor`` beyond the edge): an optimum at the
    boundary of a grid is not an optimum yet. Groups with an interior best, or whose next LR was
    already tried (e.g. it diverged), are left out. Keys are tuples of the ``by`` values."""
    by = [by] if isinstance(by, str) else list(by)
    check_number("factor", factor, 1.0, strict_min=True)
    out = {}
    for key, rows in summary.groupby(by):
        key = key if isinstance(key, tuple) else (key,)
        tried = sorted(float(v) for v in rows["lr"])
        ok = rows.dropna(subset=["mean"])
        if len(tried) < 2 or ok.empty:
            continue
        best_lr = float(ok.loc[ok["mean"].idxmin(), "lr"])
        nxt = best_lr * factor if best_lr == tried[-1] else best_lr / factor if best_lr == tried[0] else None
        if nxt is not None and not np.isclose(tried, nxt).any():
            out[key] = float(f"{nxt:.4g}")
    return out


def plot_lr_sensitivity(frame: pd.DataFrame, metric: str = "val_loss", hue: str = "optimizer", ax=None):
    """Mean +/- 95% CI of ``metric`` against peak LR (log axis), one line per ``hue``."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5.5, 3.8))[1]
    table = summarize(frame, [hue, "lr"], metric)
    for name, rows in table.groupby(hue):
        rows = rows.sort_values("lr")
        ax.errorbar(rows["lr"], rows["mean"], yerr=rows["ci"], marker="o", capsize=3, label=str(name))
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(f"{metric} (mean ± 95% CI)")
    ax.legend(title=hue)
    return ax


def warmup_floor_table(frame: pd.DataFrame, reference: dict[str, float], metric: str = "val_loss") -> pd.DataFrame:
    """Paired difference of every (warmup, floor) cell against the ``reference`` cell."""
    rows = []
    for (w, f), _ in frame.groupby(["warmup", "floor"]):
        d = paired_difference(frame, {"warmup": float(w), "floor": float(f)}, reference, metric)
        rows.append({"warmup": w, "floor": f, **d})
    return pd.DataFrame(rows)


def plot_warmup_floor_heatmap(frame: pd.DataFrame, reference: dict[str, float], metric: str = "val_loss", ax=None):
    """Heatmap over warm-up x floor of the paired mean difference in ``metric`` against the
    ``reference`` cell (annotated with the 95% CI half-width)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    ax = ax or plt.subplots(figsize=(5.0, 3.8))[1]
    table = warmup_floor_table(frame, reference, metric)
    table["half"] = (table["ci_high"] - table["ci_low"]) / 2
    mean = table.pivot(index="warmup", columns="floor", values="mean_diff")
    half = table.pivot(index="warmup", columns="floor", values="half")
    labels = mean.map(lambda v: f"{v:+.3f}") + "\n±" + half.map(lambda v: f"{v:.3f}")
    lim = float(np.nanmax(np.abs(mean.to_numpy()))) or 1e-9
    sns.heatmap(mean, annot=labels, fmt="", cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, ax=ax,
                cbar_kws={"label": f"Δ {metric} vs reference"})
    ax.set_xticklabels([f"{float(t.get_text()):.0%}" for t in ax.get_xticklabels()])
    ax.set_yticklabels([f"{float(t.get_text()):.0%}" for t in ax.get_yticklabels()], rotation=0)
    ax.set_xlabel("LR floor (fraction of peak)")
    ax.set_ylabel("warm-up (fraction of steps)")
    return ax


def main(argv: Sequence[str] | None = None) -> None:
    """Worker entry (``run_study(workers=N)`` starts N): ``main([STORE, SWEEP, CONFIGS.json])``
    runs (claims) the sweep's missing runs.

    Several such processes on one store share the work; ``run_study(workers=n)`` starts them.
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("store", help="SQLite results file (lib.training.RunStore)")
    parser.add_argument("sweep", help="sweep name")
    parser.add_argument("configs", help="JSON file holding a list of study configs")
    args = parser.parse_args(argv)
    configs = json.loads(Path(args.configs).read_text())
    run_sweep(RunStore(args.store), args.sweep, [study_config(**c) for c in configs], run_config,
              progress=False)


if __name__ == "__main__":
    main()


# Notebook 04's profiles. quick: CPU, minutes (a 2-layer 4-expert MoE, 60 steps, 3 paired seeds).
# full: the real study, meant for a GPU (6 layers, 8 experts, 2,000 steps, 5 paired seeds).
QUICK = {"base": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 64, "n_experts": 4, "top_k": 2,
                  "steps": 60, "batch_size": 8, "seq_len": 64, "vocab_size": 128},
         "seeds": [0, 1, 2], "muon_lrs": lr_grid(0.16, 3), "adamw_lrs": lr_grid(0.016, 3),
         "warmups": [0.0, 0.05, 0.1], "floors": [0.0, 0.05, 0.1], "ablate": ["muon"], "ablate_lr_factors": [1],
         "max_extensions": 2}
FULL = {"base": {"d_model": 384, "n_layers": 6, "n_heads": 8, "d_ff": 768, "n_experts": 8, "top_k": 2,
                 "steps": 2000, "batch_size": 32, "seq_len": 256, "vocab_size": 256,
                 "n_train_tokens": 20_000_000, "n_val_tokens": 500_000, "eval_batches": 32},
        "seeds": [0, 1, 2, 3, 4], "muon_lrs": lr_grid(0.02, 5), "adamw_lrs": lr_grid(4e-3, 5),
        "warmups": [0.0, 0.02, 0.05, 0.1], "floors": [0.0, 0.05, 0.1], "ablate": ["muon", "adamw"],
        "ablate_lr_factors": [1, 2], "max_extensions": 3}
