"""Compute-optimal scaling: FLOPs accounting, IsoFLOP sweep plans, and running the sweep.

The user's question: given a training budget C (FLOPs), how many parameters N and how many
tokens D? Units: N parameters (count, embeddings included, as in Chinchilla), D tokens, C
floating-point operations, times in seconds.

- ``flops_6nd(model_or_n, tokens)``: C = 6 N D (forward 2ND + backward 4ND).
- ``chinchilla_flops_per_token(config)``: Hoffmann et al. (2022) Appendix F, per token, all
  matrix multiplies including attention and embeddings, x3 for forward + backward.
- ``count_params(config)``: the analytic parameter count of ``lib.models.Transformer``.
- ``shape_for_params`` / ``plan_sweep``: an IsoFLOP plan with real shapes and real counts,
  wall-time estimates, and infeasible entries reported with a reason.
- ``run_isoflop_sweep``: train each entry for exactly its token budget with ``lib.train`` (a
  warm-up-cosine schedule fitted to its own length) and record its held-out loss in a
  ``lib.runs`` store, resumably; ``plot_isoflop_curves`` draws the result.

The fits (Approaches 2 and 3, closed-form allocation, Chinchilla tables) live in
``lib.scaling_fit`` and are re-exported here.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from lib.scaling_fit import (  # noqa: F401  (re-exported: one import for notebooks)
    EPOCH_2024,
    HOFFMANN_2022,
    PUBLISHED_EXPONENTS,
    IsoFLOPFit,
    ParametricFit,
    chinchilla_table,
    fit_isoflop,
    fit_parametric,
    fit_parametric_grid,
    optimal_allocation,
)

# Chinchilla Table 3 (approach 1): parameters, FLOPs, tokens.
CHINCHILLA_TABLE3 = pd.DataFrame({
    "n_params": [400e6, 1e9, 10e9, 67e9, 175e9],
    "flops": [1.92e19, 1.21e20, 1.23e22, 5.76e23, 3.85e24],
    "tokens": [8.0e9, 20.2e9, 205.1e9, 1.5e12, 3.7e12],
})
MLP_MATRICES = {"swiglu": 3, "gelu": 2, "relu": 2, "dense": 2}


def _positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _num_params(model_or_n) -> float:
    if hasattr(model_or_n, "num_params"):
        n = model_or_n.num_params()
    else:
        n = model_or_n
    if not isinstance(n, (int, float, np.integer, np.floating)) or isinstance(n, bool) or not n > 0:
        raise ValueError("model_or_n must be a positive parameter count or an object whose "
                         f"num_params() returns one, got {model_or_n!r}")
    return float(n)


def flops_6nd(model_or_n, tokens) -> float | np.ndarray:
    """Training FLOPs C = 6 N D for N parameters (a count, or any object with ``num_params()``)
    trained on ``tokens`` tokens (a number or array)."""
    n = _num_params(model_or_n)
    d = np.asarray(tokens, dtype=float)
    if np.any(~np.isfinite(d)) or np.any(d < 0):
        raise ValueError("tokens must be finite and non-negative")
    out = 6.0 * n * d
    return float(out) if out.ndim == 0 else out


def _shape(config, seq_len):
    get = lambda k, default=None: getattr(config, k, default) if not isinstance(config, dict) \
        else config.get(k, default)
    V, d, L, h = (get(k) for k in ("vocab_size", "d_model", "n_layers", "n_heads"))
    for name, v in (("vocab_size", V), ("d_model", d), ("n_layers", L), ("n_heads", h)):
        _positive_int(f"config.{name}", v)
    if d % h:
        raise ValueError(f"config.n_heads={h} must divide config.d_model={d}")
    h_kv = get("n_kv_heads") or h
    f = get("d_ff") or int(64 * math.ceil(8 * d / 3 / 64))
    mlp = get("mlp", "swiglu")
    if mlp not in MLP_MATRICES:
        raise ValueError(f"config.mlp must be one of {sorted(MLP_MATRICES)} for dense FLOPs "
                         f"accounting, got {mlp!r} (MoE: count active experts separately)")
    s = seq_len if seq_len is not None else get("max_seq_len", get("seq_len"))
    s = _positive_int("seq_len", s)
    return V, d, L, h, h_kv, d // h, f, MLP_MATRICES[mlp], s, bool(get("tie_embeddings", True))


def flops_breakdown(config, seq_len: int | None = None) -> dict[str, float]:
    """Forward FLOPs per token by component, Chinchilla Appendix F (multiply-add = 2 FLOPs).

    ``config``: an object or dict with vocab_size, d_model, n_layers, n_heads, optional
    n_kv_heads (grouped-query attention), d_ff, mlp ("swiglu": 3 matrices, "gelu": 2) and
    max_seq_len (or pass ``seq_len``). Per sequence of s tokens, per layer, with key size k and
    h heads: QKV 2 s d (h k + 2 h_kv k), logits 2 s^2 (h k), softmax 3 h s^2, values
    2 s^2 (h k), output 2 s (h k) d, MLP 2 s m d f (m matrices); plus embeddings 2 s V d and
    final logits 2 s d V. Everything is divided by s (per token). Attention is counted over the
    full s x s matrix as in the paper (no causal halving).
    """
    V, d, L, h, h_kv, k, f, m, s, _ = _shape(config, seq_len)
    per_layer = {
        "qkv": 2 * d * (h * k + 2 * h_kv * k),
        "attention_logits": 2 * s * (h * k),
        "softmax": 3 * h * s,
        "attention_values": 2 * s * (h * k),
        "attention_output": 2 * (h * k) * d,
        "mlp": 2 * m * d * f,
    }
    out = {"embeddings": 2.0 * V * d}
    out.update({name: float(L * v) for name, v in per_layer.items()})
    out["final_logits"] = 2.0 * d * V
    return out


def chinchilla_flops_per_token(config, seq_len: int | None = None, training: bool = True) -> float:
    """FLOPs per token by Chinchilla's Appendix F (see ``flops_breakdown``); ``training=True``
    multiplies the forward count by 3 (backward = 2 x forward)."""
    fwd = sum(flops_breakdown(config, seq_len).values())
    return 3.0 * fwd if training else fwd


def count_params(config) -> int:
    """Analytic parameter count of ``lib.models.Transformer(config)`` (tied embedding once):
    embedding V d, per layer 2 RMSNorms (2 d), QKV d (h k + 2 h_kv k), output (h k) d, MLP
    m d f; final norm d; an untied head adds V d."""
    V, d, L, h, h_kv, k, f, m, _, tied = _shape(config, 1)
    per_layer = 2 * d + d * (h * k + 2 * h_kv * k) + h * k * d + m * d * f
    return V * d + L * per_layer + d + (0 if tied else V * d)


# --------------------------------------------------------------------------- shapes and plans


def _default_d_ff(d_model, multiple=64):
    return (multiple * np.ceil(8 * np.asarray(d_model) / 3 / multiple)).astype(int)


def shape_for_params(target_params: float, *, vocab_size: int, seq_len: int, head_dim: int = 64,
                     width_multiple: int | None = None, aspect_ratio: float = 32.0,
                     max_layers: int = 64, max_d_model: int = 16384,
                     tie_embeddings: bool = True) -> dict:
    """The transformer shape (lib.models conventions) whose parameter count is closest to
    ``target_params`` (in log), preferring d_model / n_layers near ``aspect_ratio``.

    d_model is a multiple of ``width_multiple`` (default: ``head_dim``) and of ``head_dim``;
    n_heads = d_model / head_dim; d_ff = 8/3 d_model rounded up to 64. Returns a dict of
    ModelConfig fields plus ``n_params`` (analytic count).
    """
    if not target_params > 0:
        raise ValueError(f"target_params must be positive, got {target_params!r}")
    for name, v in (("vocab_size", vocab_size), ("seq_len", seq_len), ("head_dim", head_dim),
                    ("max_layers", max_layers), ("max_d_model", max_d_model)):
        _positive_int(name, v)
    width_multiple = head_dim if width_multiple is None else _positive_int("width_multiple", width_multiple)
    step = math.lcm(width_multiple, head_dim)
    if not aspect_ratio > 0:
        raise ValueError(f"aspect_ratio must be positive, got {aspect_ratio!r}")
    widths = np.arange(step, max_d_model + 1, step)
    if widths.size == 0:
        raise ValueError(f"max_d_model={max_d_model} is below the width step {step}")
    layers = np.arange(1, max_layers + 1)
    d, L = np.meshgrid(widths, layers, indexing="ij")
    f = _default_d_ff(d)
    # lib.models: per layer 2d + 4 d^2 (MHA) + 3 d f; embeddings V d (+ V d untied); final d.
    n = vocab_size * d * (1 if tie_embeddings else 2) + L * (2 * d + 4 * d * d + 3 * d * f) + d
    score = np.abs(np.log(n / target_params)) + 0.25 * np.abs(np.log(d / L / aspect_ratio))
    i, j = np.unravel_index(np.argmin(score), score.shape)
    d_model, n_layers = int(d[i, j]), int(L[i, j])
    shape = {"vocab_size": vocab_size, "d_model": d_model, "n_layers": n_layers,
             "n_heads": d_model // head_dim, "d_ff": int(f[i, j]), "max_seq_len": seq_len,
             "tie_embeddings": tie_embeddings}
    shape["n_params"] = count_params(shape)
    return shape


def real_num_params(shape: dict) -> tuple[int, str]:
    """Parameter count of ``lib.models.Transformer`` for ``shape`` (built on the meta device,
    no memory); falls back to ``count_params`` when lib.models is unavailable. Returns
    (count, source) with source "lib.models" or "analytic"."""
    try:
        import torch

        from lib.models import ModelConfig, Transformer
    except ImportError:
        return count_params(shape), "analytic"
    fields = {k: v for k, v in shape.items() if k != "n_params"}
    with torch.device("meta"):
        model = Transformer(ModelConfig(**fields))
    return int(model.num_params()), "lib.models"


def measure_training_throughput(shape: dict, *, batch_size: int, device=None, steps: int = 3,
                                seed: int = 0) -> float:
    """Training tokens/second of ``lib.models.Transformer(shape)`` on ``device`` (AdamW steps on
    random tokens; the first step is a warm-up and is not timed)."""
    import torch

    from lib.models import ModelConfig, Transformer
    from lib.runtime import autocast, pick_device
    from lib.train import adamw

    device = pick_device(device) if not isinstance(device, torch.device) else device
    _positive_int("batch_size", batch_size)
    _positive_int("steps", steps)
    torch.manual_seed(seed)
    cfg = ModelConfig(**{k: v for k, v in shape.items() if k != "n_params"})
    model = Transformer(cfg).to(device)
    opt = adamw(model.parameters(), lr=1e-4)  # as lib.train trains
    x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.max_seq_len), device=device)
    elapsed = 0.0
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(device):
            loss = model(x, targets=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            elapsed += time.perf_counter() - t0
    return steps * batch_size * cfg.max_seq_len / elapsed


def plan_sweep(budgets, *, vocab_size: int, seq_len: int, batch_size: int, n_sizes: int = 5,
               span: float = 8.0, tokens_per_param: float = 20.0, head_dim: int = 64,
               width_multiple: int | None = None, aspect_ratio: float = 32.0,
               flops: str = "6nd", corpus_tokens: int | None = None, max_epochs: float = 1.0,
               min_params: int = 0, min_steps: int = 10, tokens_per_second: float | None = None,
               flops_per_second: float | None = None, device=None) -> pd.DataFrame:
    """An IsoFLOP sweep plan: ``n_sizes`` model sizes per budget (FLOPs), log-spaced over a
    factor ``span`` around the expected optimum N = sqrt(C / (6 tokens_per_param)).

    Each target size is mapped to a real shape (``shape_for_params``) and its real parameter
    count (lib.models when importable); tokens = the count that spends the budget exactly
    (C / (6 N) with ``flops="6nd"``, C / Chinchilla-FLOPs-per-token with ``flops="exact"``),
    rounded to whole optimizer steps of ``batch_size`` x ``seq_len`` tokens (``flops_actual``
    is what those steps really cost). Wall time (``est_seconds``): tokens /
    ``tokens_per_second`` if given, else FLOPs / ``flops_per_second``; if neither is given the
    achieved training FLOP/s is measured once on ``device`` with one of the plan's shapes
    (``plan.attrs["flops_per_second"]``).

    Infeasible rows stay in the frame with ``feasible=False`` and a ``reason``: below
    ``min_params``, duplicate shape within a budget, fewer than ``min_steps`` steps, or more
    tokens than ``corpus_tokens`` x ``max_epochs``.
    """
    budgets = np.asarray(budgets, dtype=float).ravel()
    if budgets.size == 0 or np.any(~np.isfinite(budgets)) or np.any(budgets <= 0):
        raise ValueError("budgets must be a non-empty array of positive FLOP counts")
    for name, v in (("vocab_size", vocab_size), ("seq_len", seq_len), ("batch_size", batch_size),
                    ("n_sizes", n_sizes), ("min_steps", min_steps)):
        _positive_int(name, v)
    if not span >= 1:
        raise ValueError(f"span must be >= 1 (largest / smallest size), got {span!r}")
    if not tokens_per_param > 0:
        raise ValueError(f"tokens_per_param must be positive, got {tokens_per_param!r}")
    if flops not in ("6nd", "exact"):
        raise ValueError(f"flops must be '6nd' or 'exact', got {flops!r}")
    if corpus_tokens is not None:
        _positive_int("corpus_tokens", corpus_tokens)
    if not max_epochs > 0:
        raise ValueError(f"max_epochs must be positive, got {max_epochs!r}")
    for name, v in (("tokens_per_second", tokens_per_second), ("flops_per_second", flops_per_second)):
        if v is not None and not v > 0:
            raise ValueError(f"{name} must be positive or None, got {v!r}")
    tokens_per_step = batch_size * seq_len
    rows = []
    for c in budgets:
        n_center = math.sqrt(c / (6.0 * tokens_per_param))
        targets = n_center * np.geomspace(1 / math.sqrt(span), math.sqrt(span), n_sizes)
        seen = set()
        for target in targets:
            shape = shape_for_params(target, vocab_size=vocab_size, seq_len=seq_len,
                                     head_dim=head_dim, width_multiple=width_multiple,
                                     aspect_ratio=aspect_ratio)
            n_params, source = real_num_params(shape)
            fpt = 6.0 * n_params if flops == "6nd" else chinchilla_flops_per_token(shape)
            steps = int(round(c / fpt / tokens_per_step))
            tokens = steps * tokens_per_step
            reasons = []
            key = (shape["d_model"], shape["n_layers"])
            if key in seen:
                reasons.append("duplicate shape in this budget")
            seen.add(key)
            if n_params < min_params:
                reasons.append(f"below min_params={min_params}")
            if steps < min_steps:
                reasons.append(f"{steps} steps < min_steps={min_steps}")
            if corpus_tokens is not None and tokens > corpus_tokens * max_epochs:
                reasons.append(f"needs {tokens / corpus_tokens:.2f} epochs of the corpus "
                               f"(> max_epochs={max_epochs})")
            rows.append({"budget": c, "target_params": target, "n_params": n_params,
                         "params_source": source, **{k: shape[k] for k in
                         ("d_model", "n_layers", "n_heads", "d_ff")},
                         "steps": steps, "tokens": tokens, "tokens_per_param": tokens / n_params,
                         "flops_per_token": fpt, "flops_actual": fpt * tokens,
                         "feasible": not reasons, "reason": "; ".join(reasons),
                         "_shape": shape})
    plan = pd.DataFrame(rows)
    if tokens_per_second is None and flops_per_second is None:
        flops_per_second = _measured_flops_per_second(rows, batch_size, device)
    if tokens_per_second is not None:
        plan["est_seconds"] = plan["tokens"] / tokens_per_second
    else:
        plan["est_seconds"] = plan["flops_actual"] / flops_per_second
    plan.attrs["flops_per_second"] = flops_per_second
    plan["shape"] = [{k: v for k, v in s.items() if k != "n_params"} for s in plan.pop("_shape")]
    return plan


def _measured_flops_per_second(rows, batch_size, device, max_params=2e6):
    """Achieved training FLOP/s from one micro-benchmark of the plan's median shape (capped
    at ``max_params`` to stay cheap on a CPU; small shapes run less efficiently, so estimates
    for larger ones err long). NaN when lib.models is unavailable."""
    candidates = sorted((r for r in rows if r["n_params"] <= max_params), key=lambda r: r["n_params"])
    if not candidates:
        candidates = [min(rows, key=lambda r: r["n_params"])]
    row = candidates[len(candidates) // 2]
    try:
        tps = measure_training_throughput(row["_shape"], batch_size=batch_size, device=device,
                                          steps=2)
    except ImportError:
        return float("nan")
    return tps * row["flops_per_token"]


# --------------------------------------------------------------------------- running a sweep


def sweep_configs(plan: pd.DataFrame, *, seeds=(0,), lr: float = 3e-3, warmup_frac: float = 0.05,
                  min_lr_ratio: float = 0.1, batch_size: int, seq_len: int, eval_batches: int = 16,
                  corpus: str = "") -> list[dict]:
    """One JSON-able run config per feasible plan row and seed (infeasible rows are skipped:
    they stay visible in the plan). Each run trains ``steps`` optimizer steps of
    ``batch_size`` x ``seq_len`` tokens, i.e. exactly its planned token budget, with a
    warm-up-cosine schedule fitted to its own length (``warmup_frac`` of its steps, floor
    ``min_lr_ratio``) and peak ``lr``. ``corpus`` names the data so a store never mixes
    corpora."""
    if not isinstance(plan, pd.DataFrame) or "feasible" not in plan:
        raise ValueError("plan must be a DataFrame returned by plan_sweep")
    seeds = [int(s) for s in seeds]
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds must be non-negative integers, got {seeds!r}")
    if not 0 <= warmup_frac < 1:
        raise ValueError(f"warmup_frac must be in [0, 1), got {warmup_frac!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    configs = []
    for _, row in plan[plan["feasible"]].iterrows():
        if int(row["tokens"]) != int(row["steps"]) * batch_size * seq_len:
            raise ValueError("plan was made with a different batch_size or seq_len than given")
        for seed in seeds:
            configs.append({"budget": float(row["budget"]), "n_params": int(row["n_params"]),
                            "model": {k: (int(v) if isinstance(v, (int, np.integer)) else v)
                                      for k, v in row["shape"].items()},
                            "steps": int(row["steps"]), "batch_size": batch_size, "seq_len": seq_len,
                            "lr": float(lr), "warmup_steps": int(round(warmup_frac * row["steps"])),
                            "min_lr_ratio": float(min_lr_ratio), "eval_batches": int(eval_batches),
                            "corpus": corpus, "seed": seed})
    return configs


def train_isoflop_run(config: dict, data, device=None, progress: bool = False) -> dict:
    """Train one ``sweep_configs`` entry on ``data`` (a lib.data.TokenData) and return its
    metrics: ``val_loss`` (held-out nats/token at the end), ``train_loss``, ``tokens``,
    ``flops`` (6 N tokens), ``n_params`` and ``elapsed_s``."""
    from lib.models import ModelConfig, Transformer
    from lib.runtime import seed_everything
    from lib.schedules import WarmupCosine
    from lib.train import TrainConfig, train

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
    """Train every feasible plan entry for every seed through ``lib.runs.run_sweep`` (runs
    already done in ``store`` are skipped, so an interrupted sweep resumes) and return the
    sweep's runs (``store.frame(sweep)``; config keys and metrics as columns)."""
    from functools import partial

    from lib.runs import RunStore, run_sweep

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
