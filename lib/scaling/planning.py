"""IsoFLOP sweep plans, from budgets to the run configs a sweep trains.

- ``shape_for_params``: the real model shape (lib.models conventions) closest to a target
  parameter count; ``real_num_params``: its parameter count from lib.models itself;
- ``measure_training_throughput``: training tokens/second of a shape on a device;
- ``plan_sweep``: one row per (budget, size) with its token budget, steps and estimated wall
  time, infeasible entries kept and explained;
- ``lr_for_widths``: the stated per-size LR rule (lr proportional to 1/width, muP);
- ``sweep_configs``: the JSON-able run configs of a plan's feasible rows
  (``lib.experiments.scaling_study`` trains them).

FLOPs and analytic parameter counts come from ``lib.scaling.flops``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch

from lib.core import (
    autocast,
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_number,
    check_positive,
    check_positive_array,
    check_seed,
    pick_device,
)
from lib.models import ModelConfig, Transformer
from lib.scaling.flops import chinchilla_flops_per_token, count_params, default_d_ff
from lib.training import adamw


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
    target_params = check_positive("target_params", target_params)
    vocab_size, seq_len, head_dim, max_layers, max_d_model = (
        check_int(name, v, 1) for name, v in (
            ("vocab_size", vocab_size), ("seq_len", seq_len), ("head_dim", head_dim),
            ("max_layers", max_layers), ("max_d_model", max_d_model)))
    width_multiple = head_dim if width_multiple is None else check_int("width_multiple", width_multiple, 1)
    aspect_ratio = check_positive("aspect_ratio", aspect_ratio)
    tie_embeddings = check_bool("tie_embeddings", tie_embeddings)
    step = math.lcm(width_multiple, head_dim)
    widths = np.arange(step, max_d_model + 1, step)
    if widths.size == 0:
        raise ValueError(f"max_d_model={max_d_model} is below the width step {step}")
    layers = np.arange(1, max_layers + 1)
    d, L = np.meshgrid(widths, layers, indexing="ij")
    f = default_d_ff(d)
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
    no memory). Returns (count, "lib.models"): the source names where the count came from
    (plans record it in ``params_source``)."""
    fields = {k: v for k, v in shape.items() if k != "n_params"}
    with torch.device("meta"):
        model = Transformer(ModelConfig(**fields))
    return int(model.num_params()), "lib.models"


def measure_training_throughput(shape: dict, *, batch_size: int, device=None, steps: int = 3,
                                seed: int = 0) -> float:
    """Training tokens/second of ``lib.models.Transformer(shape)`` on ``device`` (AdamW steps on
    random tokens; the first step is a warm-up and is not timed)."""
    device = pick_device(device) if not isinstance(device, torch.device) else device
    batch_size = check_int("batch_size", batch_size, 1)
    steps = check_int("steps", steps, 1)
    torch.manual_seed(check_seed("seed", seed))
    cfg = ModelConfig(**{k: v for k, v in shape.items() if k != "n_params"})
    model = Transformer(cfg).to(device)
    opt = adamw(model.parameters(), lr=1e-4)  # as lib.training trains
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
               flops: str = "exact", corpus_tokens: int | None = None, max_epochs: float = 1.0,
               min_params: int = 0, min_steps: int = 10, tokens_per_second: float | None = None,
               flops_per_second: float | None = None, device=None) -> pd.DataFrame:
    """An IsoFLOP sweep plan: ``n_sizes`` model sizes per budget (FLOPs), log-spaced over a
    factor ``span`` around the expected optimum N = sqrt(C / (6 tokens_per_param)).

    Each target size is mapped to a real shape (``shape_for_params``) and its real parameter
    count (lib.models when importable); tokens = the count that spends the budget exactly
    (C / Chinchilla-FLOPs-per-token with ``flops="exact"``, the default, or C / (6 N) with
    ``flops="6nd"``), rounded to whole optimizer steps of ``batch_size`` x ``seq_len`` tokens
    (``flops_actual`` is what those steps cost by the plan's own count; ``flops_exact`` and
    ``flops_6nd`` by each count, so a 6N plan shows how far its rows stray from the budget in
    real FLOPs). Wall time (``est_seconds``): tokens /
    ``tokens_per_second`` if given, else FLOPs / ``flops_per_second``; if neither is given the
    achieved training FLOP/s is measured once on ``device`` with one of the plan's shapes
    (``plan.attrs["flops_per_second"]``).

    Infeasible rows stay in the frame with ``feasible=False`` and a ``reason``: below
    ``min_params``, duplicate shape within a budget, fewer than ``min_steps`` steps, or more
    tokens than ``corpus_tokens`` x ``max_epochs``.
    """
    budgets = check_positive_array("budgets", budgets)
    vocab_size, seq_len, batch_size, n_sizes, min_steps = (
        check_int(name, v, 1) for name, v in (
            ("vocab_size", vocab_size), ("seq_len", seq_len), ("batch_size", batch_size),
            ("n_sizes", n_sizes), ("min_steps", min_steps)))
    span = check_number("span", span, 1)   # largest / smallest size
    tokens_per_param = check_positive("tokens_per_param", tokens_per_param)
    flops = check_choice("flops", flops, ("6nd", "exact"))
    if corpus_tokens is not None:
        corpus_tokens = check_int("corpus_tokens", corpus_tokens, 1)
    max_epochs = check_positive("max_epochs", max_epochs)
    min_params = check_int("min_params", min_params, 0)
    if tokens_per_second is not None:
        tokens_per_second = check_positive("tokens_per_second", tokens_per_second)
    if flops_per_second is not None:
        flops_per_second = check_positive("flops_per_second", flops_per_second)
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
                         "flops_exact": chinchilla_flops_per_token(shape) * tokens,
                         "flops_6nd": 6.0 * n_params * tokens,
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
    for larger ones err long)."""
    candidates = sorted((r for r in rows if r["n_params"] <= max_params), key=lambda r: r["n_params"])
    if not candidates:
        candidates = [min(rows, key=lambda r: r["n_params"])]
    row = candidates[len(candidates) // 2]
    tps = measure_training_throughput(row["_shape"], batch_size=batch_size, device=device, steps=2)
    return tps * row["flops_per_token"]


def lr_for_widths(widths, *, base_lr: float, base_width: int, exponent: float = 1.0) -> dict[int, float]:
    """The per-size peak-LR rule lr(d) = ``base_lr`` (``base_width`` / d)^``exponent``: with
    the default exponent 1, Adam's hidden-layer LR scales as 1/width as in muP (Yang et al.
    2022, Tensor Programs V), the rule Porian et al. (2024) find necessary for unbiased
    compute-optimal exponents. Returns {d_model: lr} for ``sweep_configs``."""
    base_lr = check_positive("base_lr", base_lr)
    base_width = check_int("base_width", base_width, 1)
    exponent = check_number("exponent", exponent)
    widths = sorted({check_int("widths", w, 1) for w in np.asarray(widths).ravel().tolist()})
    return {w: base_lr * (base_width / w) ** exponent for w in widths}


def _plain(value):
    """A numpy scalar as the Python one: configs must be JSON (the run store hashes it)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return int(value) if isinstance(value, np.integer) else value


def sweep_configs(plan: pd.DataFrame, *, seeds=(0,), lr=3e-3, warmup_frac: float = 0.05,
                  min_lr_ratio: float = 0.1, batch_size: int, seq_len: int, eval_batches: int = 16,
                  corpus: str = "") -> list[dict]:
    """One JSON-able run config per feasible plan row and seed (infeasible rows are skipped:
    they stay visible in the plan). Each run trains ``steps`` optimizer steps of
    ``batch_size`` x ``seq_len`` tokens, i.e. exactly its planned token budget, with a
    warm-up-cosine schedule fitted to its own length (``warmup_frac`` of its steps, floor
    ``min_lr_ratio``) and peak ``lr``: one float for every size, or a mapping d_model -> peak
    LR (a per-size LR, e.g. ``lr_for_widths``; every planned width must be in it).
    ``corpus`` names the data so a store never mixes corpora."""
    if not isinstance(plan, pd.DataFrame) or "feasible" not in plan:
        raise ValueError("plan must be a DataFrame returned by plan_sweep")
    seeds = [check_seed("seeds", s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    feasible_widths = sorted({int(w) for w in plan.loc[plan["feasible"], "d_model"]})
    if isinstance(lr, dict):
        missing = [w for w in feasible_widths if w not in lr]
        if missing:
            raise ValueError(f"lr maps d_model to a peak LR but lacks the planned widths {missing}")
        lr_of = {int(w): check_positive(f"lr[{w}]", v) for w, v in lr.items()}
    else:
        lr_of = dict.fromkeys(feasible_widths, check_positive("lr", lr))
    warmup_frac = check_fraction("warmup_frac", warmup_frac, strict_max=True)
    min_lr_ratio = check_fraction("min_lr_ratio", min_lr_ratio)
    batch_size = check_int("batch_size", batch_size, 1)
    seq_len = check_int("seq_len", seq_len, 1)
    eval_batches = check_int("eval_batches", eval_batches, 1)
    configs = []
    for _, row in plan[plan["feasible"]].iterrows():
        if int(row["tokens"]) != int(row["steps"]) * batch_size * seq_len:
            raise ValueError("plan was made with a different batch_size or seq_len than given")
        for seed in seeds:
            configs.append({"budget": float(row["budget"]), "n_params": int(row["n_params"]),
                            "model": {k: _plain(v) for k, v in row["shape"].items()},
                            "steps": int(row["steps"]), "batch_size": batch_size, "seq_len": seq_len,
                            "lr": lr_of[int(row["d_model"])], "warmup_steps": int(round(warmup_frac * row["steps"])),
                            "min_lr_ratio": min_lr_ratio, "eval_batches": eval_batches,
                            "corpus": corpus, "seed": seed})
    return configs


