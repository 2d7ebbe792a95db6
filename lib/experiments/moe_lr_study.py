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

Arms (``ARMS``): named optimizer / schedule / model variants, each a set of config keys and
the LR grid it is swept over (``arm_config``, ``label_arms``): Muon (torch's shape scaling,
weight decay 0.1), Muon under the seed's claimed schedule, Muon without weight decay (the
seed), Muon with Moonlight's ``match_rms_adamw`` scaling sharing one LR with its AdamW half
(swept on AdamW's grid), AdamW alone, and the dense model of equal active parameters. Every arm
is swept over its whole grid with the same seeds and compared at its own best LR.
``BALANCE``: the load-balancing arms (Switch aux loss 0 / 1e-3 / 1e-2, DeepSeek-V3's
aux-loss-free bias); every MoE run logs its routing statistics over training in its history
(``ROUTING_TRAJECTORY_KEYS``).

Analysis (``summarize``, ``paired_difference``, ``noise_floor``) selects runs from a study's
frame and hands them to ``lib.core``'s statistics (Student-t intervals, paired t and Wilcoxon
tests). ``compare`` runs one family of paired comparisons, Holm-adjusts its p-values
(``lib.core.holm``) and reads each against the minimum detectable effect of the A/A runs
(``detectable_effect``, ``decide``): below it the answer is "cannot decide". ``verdict`` is
``lib.core.verdict``. ``conclusion`` renders the notebook's conclusion from those results.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from lib.core import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_positive,
    decide_difference,
    holm,
    in_batch,
    min_detectable_effect,
    t_critical,
    verdict,
)
from lib.core import paired_difference as paired_series_difference
from lib.core import summarize as summarize_groups
from lib.data import synthetic_corpus
from lib.models import ModelConfig, Transformer, routing_summary
from lib.scaling import PlannedRun
from lib.schedules import WarmupCosine
from lib.training import (
    EXECUTORS,
    RunStore,
    TrainConfig,
    build_optimizers,
    run_sweep,
    train,
)

__all__ = [
    "QUICK", "FULL", "SMOKE", "DEFAULTS", "OPTIMIZERS", "MLPS", "NS_DTYPE_NAMES", "ROUTING_KEYS", "ROUTING_TRAJECTORY_KEYS",
    "INT_KEYS", "ARMS", "BALANCE", "REFERENCE", "CLAIM",
    "study_config", "grid", "lr_grid", "aa_configs", "dense_equivalent", "arm_config", "arm_lr_grid",
    "label_arms", "label_balance", "balance_configs", "factorial_configs", "planned_configs", "planned_runs",
    "model_config", "build_model", "run_config", "run_study",
    "summarize", "paired_difference", "verdict", "noise_floor", "best", "edge_lrs",
    "detectable_effect", "decide", "compare", "best_lrs", "warmup_floor_table",
    "routing_trajectories", "conclusion", "lr_sweep",
    "plot_lr_sensitivity", "plot_warmup_floor_heatmap", "plot_routing", "explorer",
]

DEFAULTS: dict[str, Any] = {
    # corpus (lib.data.synthetic_corpus): train and validation documents drawn independently
    "vocab_size": 128, "n_train_tokens": 300_000, "n_val_tokens": 20_000, "data_source_seed": 0,
    # model (lib.models.ModelConfig); d_ff is the hidden width of EACH expert for mlp="moe"
    "mlp": "moe", "d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 64,
    "n_experts": 4, "top_k": 2, "aux_loss_coef": 0.01, "router_noise": 0.0, "aux_free_bias": False,
    # optimisation (lib.training.optim.build_optimizers + lib.schedules.WarmupCosine)
    "optimizer": "muon", "lr": 0.02, "adamw_lr": None, "weight_decay": 0.1,
    "adjust_lr_fn": None, "ns_dtype": "auto", "warmup": 0.05, "floor": 0.1,
    "steps": 60, "batch_size": 8, "seq_len": 64, "grad_clip": 1.0,
    "eval_batches": 8, "eval_batch_size": 16, "routing_every": 5,
    # identity of the run
    "seed": 0, "repeat": 0, "device": "cpu", "threads": 1,
}
OPTIMIZERS = ("muon", "adamw")
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")  # Muon's shape scalings (lib.training.build_optimizers)
# Newton-Schulz dtypes by name (a config is JSON): "auto" is bf16 on CUDA and fp32 elsewhere.
NS_DTYPE_NAMES = ("auto", "bfloat16", "float32")
MLPS = ("moe", "swiglu")
ROUTING_KEYS = ("max_load_ratio", "load_cv", "router_entropy", "overflow_share")
# Logged over training (training batches, every ``routing_every`` steps) in each MoE run's history.
# ``dropped_share`` is 0 by construction (the layer is dropless); ``overflow_share`` is what a
# capacity-factor-1 Switch layer would have dropped.
ROUTING_TRAJECTORY_KEYS = ("max_load_ratio", "load_cv", "router_entropy", "dropped_share", "overflow_share")
# The seed study's baseline schedule and its claimed improvement (fractions of the run).
REFERENCE = {"warmup": 0.05, "floor": 0.1}
CLAIM = {"warmup": 0.1, "floor": 0.05}
_MOE = {"mlp": "moe", "aux_loss_coef": 0.01, "aux_free_bias": False}
# Named arms: the config keys that make the arm, and the profile key of the LR grid it is swept on.
ARMS: dict[str, tuple[dict[str, Any], str]] = {
    "muon": ({**_MOE, "optimizer": "muon", "adjust_lr_fn": None, "weight_decay": 0.1, **REFERENCE}, "muon_lrs"),
    "muon_claim": ({**_MOE, "optimizer": "muon", "adjust_lr_fn": None, "weight_decay": 0.1, **CLAIM}, "muon_lrs"),
    "muon_no_wd": ({**_MOE, "optimizer": "muon", "adjust_lr_fn": None, "weight_decay": 0.0, **REFERENCE}, "muon_lrs"),
    "muon_moonlight": ({**_MOE, "optimizer": "muon", "adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.1,
                        **REFERENCE}, "adamw_lrs"),
    "adamw": ({**_MOE, "optimizer": "adamw", "adjust_lr_fn": None, "weight_decay": 0.1, **REFERENCE}, "adamw_lrs"),
    "dense": ({"mlp": "swiglu", "optimizer": "muon", "adjust_lr_fn": None, "weight_decay": 0.1, **REFERENCE},
              "muon_lrs"),
}
# Load-balancing arms (at the Muon arm's best LR): Switch aux loss coefficients and DeepSeek-V3's
# aux-loss-free selection bias (with no aux loss).
BALANCE: dict[str, dict[str, Any]] = {
    "aux 0": {"aux_loss_coef": 0.0, "aux_free_bias": False},
    "aux 1e-3": {"aux_loss_coef": 1e-3, "aux_free_bias": False},
    "aux 1e-2": {"aux_loss_coef": 0.01, "aux_free_bias": False},
    "aux-free bias": {"aux_loss_coef": 0.0, "aux_free_bias": True},
}


# Integer settings and their minimum (None allowed for the evaluation sizes: lib.training's
# defaults); the rest of DEFAULTS is checked below or by the component it configures.
INT_KEYS = {"vocab_size": 1, "n_train_tokens": 1, "n_val_tokens": 1, "data_source_seed": 0,
            "d_model": 1, "n_layers": 1, "n_heads": 1, "d_ff": 1, "n_experts": 1, "top_k": 1,
            "steps": 1, "batch_size": 1, "seq_len": 1, "eval_batches": 1, "eval_batch_size": 1,
            "routing_every": 1, "seed": 0, "repeat": 0, "threads": 1}


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
    check_bool("aux_free_bias", config["aux_free_bias"])
    check_choice("adjust_lr_fn", config["adjust_lr_fn"], ADJUST_LR_FNS)
    check_choice("ns_dtype", config["ns_dtype"], NS_DTYPE_NAMES)
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


def arm_config(base: dict[str, Any], arm: str, **overrides: Any) -> dict[str, Any]:
    """The config of ``arm`` (a key of ``ARMS``) over ``base``, with ``overrides`` (lr, seed, ...).

    The dense arm gets the MoE's active MLP width (``dense_equivalent``)."""
    check_choice("arm", arm, tuple(ARMS))
    config = study_config(**{**base, **ARMS[arm][0], **overrides})
    if arm == "dense":
        moe = study_config(**{**config, "mlp": "moe"})
        config = study_config(**{**config, "d_ff": moe["top_k"] * moe["d_ff"]})
    return config


def arm_lr_grid(settings, arm: str) -> list[float]:
    """The LR grid ``arm`` is swept over in a profile (``settings``: a namespace or mapping)."""
    check_choice("arm", arm, tuple(ARMS))
    s = settings if isinstance(settings, dict) else vars(settings)
    return list(s[ARMS[arm][1]])


def label_arms(frame: pd.DataFrame, arms: Sequence[str] | None = None) -> pd.DataFrame:
    """``frame`` with an ``arm`` column: the name of the ``ARMS`` entry each run matches (NaN
    where none does, e.g. the factorial's other schedule cells)."""
    out = frame.copy()
    out["arm"] = None
    for name in arms or ARMS:
        spec = {k: v for k, v in ARMS[name][0].items() if k in out}
        out.loc[_mask(out, spec), "arm"] = name
    return out


def factorial_configs(base: dict[str, Any], lr: float, warmups: Sequence[float], floors: Sequence[float],
                      seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The warm-up x floor factorial of the Muon arm at peak LR ``lr``, every seed."""
    return grid(arm_config(base, "muon", lr=lr), warmup=list(warmups), floor=list(floors), seed=list(seeds))


def balance_configs(base: dict[str, Any], lr: float, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The load-balancing arms (``BALANCE``) of the Muon arm at peak LR ``lr``, every seed."""
    return [arm_config(base, "muon", lr=lr, seed=s, **spec) for spec in BALANCE.values() for s in seeds]


def label_balance(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``balance`` column: the ``BALANCE`` arm each run matches (None elsewhere)."""
    out = frame.copy()
    out["balance"] = None
    for name, spec in BALANCE.items():
        out.loc[_mask(out, spec), "balance"] = name
    return out


def planned_configs(settings, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Every config notebook 04 runs before any grid extension (the factorial and the balance
    ablation at the Muon arm's central LR, since the best LR is known only after the sweep).
    Duplicates (the same run planned by two phases) appear once, as the store runs them once."""
    s = settings if isinstance(settings, dict) else vars(settings)
    muon_centre = s["muon_lrs"][len(s["muon_lrs"]) // 2]
    configs = aa_configs(arm_config(base, "muon", lr=muon_centre), s["seeds"])
    for arm in s["arms"]:
        configs += [arm_config(base, arm, lr=lr, seed=seed) for lr in arm_lr_grid(s, arm) for seed in s["seeds"]]
    configs += factorial_configs(base, muon_centre, s["warmups"], s["floors"], s["seeds"])
    configs += balance_configs(base, muon_centre, s["seeds"])
    unique = {json.dumps(c, sort_keys=True): c for c in configs}
    return list(unique.values())


def planned_runs(settings, base: dict[str, Any] | None = None) -> list[PlannedRun]:
    """One ``lib.scaling.PlannedRun`` per training run of ``planned_configs`` (label: the
    arm or phase, LR and seed)."""
    s = settings if isinstance(settings, dict) else vars(settings)
    base = study_config(**(base if base is not None else s["base"]))
    runs = []
    for c in planned_configs(s, base):
        model = model_config(c)
        label = (f"{c['mlp']}/{c['optimizer']}/{c['adjust_lr_fn'] or 'torch'}/wd{c['weight_decay']:g}/"
                 f"w{c['warmup']:g}-f{c['floor']:g}/aux{c['aux_loss_coef']:g}{'+bias' if c['aux_free_bias'] else ''}"
                 f"/lr{c['lr']:g}/seed{c['seed']}/r{c['repeat']}")
        runs.append(PlannedRun(label, model, c["steps"] * c["batch_size"] * c["seq_len"],
                               seq_len=c["seq_len"], batch_size=c["batch_size"]))
    return runs


# --------------------------------------------------------------------------- running


# A study's runs share a few corpora: building one costs more than a tiny run's training.
@functools.lru_cache(maxsize=4)
def _corpus(vocab_size: int, n_train_tokens: int, n_val_tokens: int, seed: int):
    return synthetic_corpus(n_train_tokens=n_train_tokens, n_val_tokens=n_val_tokens,
                            vocab_size=vocab_size, seed=seed)


def model_config(config: dict[str, Any]) -> ModelConfig:
    """The ``lib.models.ModelConfig`` of a study config."""
    config = study_config(**config)
    moe = {}
    if config["mlp"] == "moe":
        moe = {"n_experts": config["n_experts"], "top_k": config["top_k"],
               "aux_loss_coef": config["aux_loss_coef"], "router_noise": config["router_noise"],
               "aux_free_bias": config["aux_free_bias"]}
    return ModelConfig(vocab_size=config["vocab_size"], d_model=config["d_model"],
                       n_layers=config["n_layers"], n_heads=config["n_heads"], d_ff=config["d_ff"],
                       max_seq_len=config["seq_len"], mlp=config["mlp"], moe=moe)


def build_model(config: dict[str, Any]):
    """The ``lib.models.Transformer`` of ``config`` (initialised from ``config['seed']``)."""
    torch.manual_seed(config["seed"])
    return Transformer(model_config(config))


class _RoutingLog:
    """Training callback: routing statistics of the last training forward, every ``every``
    optimizer steps (and the last), written into that step's history row."""

    def __init__(self, every: int, steps: int):
        self.every, self.steps = every, steps

    def on_step_end(self, state) -> None:
        if state.step % self.every and state.step != self.steps:
            return
        if state.history and state.history[-1]["step"] == state.step:
            stats = routing_summary(state.model)
            state.history[-1].update({k: stats.get(k, math.nan) for k in ROUTING_TRAJECTORY_KEYS})


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
        weight_decay=config["weight_decay"], adjust_lr_fn=config["adjust_lr_fn"], schedule=schedule,
        ns_dtype=config["ns_dtype"] if config["ns_dtype"] == "auto" else getattr(torch, config["ns_dtype"]))
    train_config = TrainConfig(steps=steps, batch_size=config["batch_size"], seq_len=config["seq_len"],
                               schedule=schedule, grad_clip=config["grad_clip"],
                               eval_batches=config["eval_batches"], eval_batch_size=config["eval_batch_size"],
                               seed=config["seed"], device=config["device"], on_divergence="stop",
                               progress=False)
    callbacks = [_RoutingLog(config["routing_every"], steps)] if config["mlp"] == "moe" else []
    result = train(model, data, train_config, optimizers=optimizers, schedulers=schedulers, callbacks=callbacks)
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
    columns = ["step", "loss", "lr"] + [k for k in ROUTING_TRAJECTORY_KEYS if k in result.history]
    metrics["history"] = result.history[columns]
    return metrics


def run_study(store, sweep: str, configs: Sequence[dict[str, Any]], workers: int = 1,
              progress: bool = False, executor: str = "local", ray_address: str | None = None) -> pd.DataFrame:
    """Run ``configs`` as ``sweep`` in ``store`` (a ``lib.training.RunStore``); return their rows
    (done runs of exactly these configs, one per config, as ``store.frame`` columns).

    Done runs are skipped, so calling again resumes; a run that is still not done afterwards
    (it failed, or another process holds it) raises ``lib.training.IncompleteSweep`` naming it,
    so no comparison is drawn from a sweep with runs missing. ``workers > 1`` starts that many
    processes that claim runs from the same SQLite store (``lib.training.run_sweep``); each run
    is single-threaded by default (``threads``), which is how small models use a multi-core CPU best.
    ``executor="ray"`` runs each config as a Ray task on the cluster at ``ray_address``
    instead (``lib.training.run_sweep``; ``workers`` is then unused).
    """

    if not isinstance(store, RunStore):
        raise ValueError(f"store must be a lib.training.RunStore, got {type(store).__name__}")
    workers = check_int("workers", workers, 1)
    check_choice("executor", executor, EXECUTORS)
    configs = [study_config(**c) for c in configs]
    if executor == "ray":
        run_sweep(store, sweep, configs, run_config, progress=progress, executor="ray", ray_address=ray_address)
    # Local (in ``workers`` processes, then here), or a sweep-up of anything a Ray task left failed.
    run_sweep(store, sweep, configs, run_config, progress=progress, workers=workers if executor == "local" else 1)
    if not configs:
        return store.frame(sweep).iloc[0:0]
    # A run that failed twice, or is still busy elsewhere, must stop the analysis, not vanish from it.
    return store.require_complete(sweep, configs)


# --------------------------------------------------------------------------- analysis


def _mask(frame: pd.DataFrame, where: dict[str, Any]) -> np.ndarray:
    missing = [k for k in where if k not in frame]
    if missing:
        raise ValueError(f"columns {missing} are not in the frame; it has {list(frame.columns)}")
    mask = np.ones(len(frame), dtype=bool)
    for key, value in where.items():
        col = frame[key]
        if value is None:
            mask &= col.isna().to_numpy()
        elif isinstance(value, float) and not isinstance(value, bool):
            mask &= np.isclose(pd.to_numeric(col, errors="coerce").astype(float), value)
        else:
            mask &= (col == value).to_numpy()
    return mask


def _select(frame: pd.DataFrame, where: dict[str, Any]) -> pd.DataFrame:
    return frame[_mask(frame, where)]


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



def lr_sweep(store, base: dict[str, Any], settings, workers: int = 1, sweep: str = "study",
             log=print, **run_kw) -> pd.DataFrame:
    """Every arm of ``settings.arms`` over its whole LR grid and every seed, widened by a
    factor 2 outwards (up to ``settings.max_extensions`` times) wherever an arm's best LR sits
    at the edge of its grid; returns the labelled frame (``label_arms``) of those runs.
    ``run_kw`` (``executor``, ``ray_address``) goes to ``run_study``."""
    s = settings if isinstance(settings, dict) else vars(settings)
    configs = [arm_config(base, arm, lr=lr, seed=seed) for arm in s["arms"] for lr in arm_lr_grid(s, arm)
               for seed in s["seeds"]]
    for extension in range(s["max_extensions"] + 1):
        frame = label_arms(run_study(store, sweep, configs, workers=workers, **run_kw), s["arms"])
        edges = edge_lrs(summarize(frame.dropna(subset=["arm"]), ["arm", "lr"]), "arm")
        if not edges or extension == s["max_extensions"]:
            return frame
        log(f"optimum at the grid edge, adding {({k[0]: v for k, v in edges.items()})}")
        configs += [arm_config(base, arm, lr=lr, seed=seed) for (arm,), lr in edges.items() for seed in s["seeds"]]
    return frame


def plot_routing(trajectories: pd.DataFrame, by: str = "balance"):
    """Routing statistics over training (mean over seeds, band = 95% CI), one panel per statistic."""
    import matplotlib.pyplot as plt

    stats = list(dict.fromkeys(trajectories["stat"]))
    fig, axes = plt.subplots(1, len(stats), figsize=(3.3 * len(stats), 3.2), squeeze=False)
    for ax, stat in zip(axes[0], stats):
        part = trajectories[trajectories["stat"] == stat]
        for name, rows in part.groupby(by, sort=False):
            rows = rows.sort_values("step")
            line, = ax.plot(rows["step"], rows["mean"], lw=1.2, label=str(name))
            ax.fill_between(rows["step"], rows["ci_low"].fillna(rows["mean"]), rows["ci_high"].fillna(rows["mean"]),
                            color=line.get_color(), alpha=0.15, lw=0)
        ax.set(xlabel="optimizer step", title=stat.replace("_", " "))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _explorer_text(lr_frame: pd.DataFrame, factorial: pd.DataFrame, arm: str, lr: float, warmup: float,
                   floor: float) -> str:
    if np.isclose(warmup, REFERENCE["warmup"]) and np.isclose(floor, REFERENCE["floor"]) or arm == "muon_claim":
        rows = _select(lr_frame, {"arm": arm, "lr": float(lr)})
    else:
        rows = _select(factorial, {"lr": float(lr), "warmup": float(warmup), "floor": float(floor)}) \
            if arm == "muon" else factorial.iloc[:0]
    if rows.empty:
        return (f"{arm} at LR {lr:.3g}, warm-up {warmup:.0%}, floor {floor:.0%}: not measured "
                f"(the factorial ran for muon at its best LR only)")
    m, half = summarize_groups(rows.assign(g=0), "g", "val_loss").iloc[0][["mean", "ci"]]
    return f"{arm} at LR {lr:.3g}, warm-up {warmup:.0%}, floor {floor:.0%}: val loss {m:.3f} ± {half:.3f} ({len(rows)} seeds)"


def explorer(lr_frame: pd.DataFrame, factorial: pd.DataFrame, arm: str = "muon"):
    """Optimizer arm, peak LR, warm-up and floor -> the measured validation loss (mean and 95%
    CI over seeds), beside the arm's LR curve. Live ipywidgets in JupyterLab (displayed here
    and returned); in batch (``lib.core.in_batch``) the static figure of ``arm``'s default
    view (returned; the notebook's inline backend shows it)."""
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if a in set(lr_frame["arm"].dropna())]
    check_choice("arm", arm, tuple(arms))
    warmups = sorted(set(float(w) for w in factorial["warmup"])) or [REFERENCE["warmup"]]
    floors = sorted(set(float(f) for f in factorial["floor"])) or [REFERENCE["floor"]]

    def grid(arm):
        return sorted(set(float(v) for v in lr_frame.loc[lr_frame["arm"] == arm, "lr"]))

    def draw(arm=arm, lr=None, warmup=REFERENCE["warmup"], floor=REFERENCE["floor"]):
        rows = lr_frame[lr_frame["arm"] == arm]
        lrs = grid(arm)
        lr = lrs[len(lrs) // 2] if lr is None or not np.isclose(lrs, lr).any() else lr
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        table = summarize(rows, "lr").sort_values("lr")
        ax.errorbar(table["lr"], table["mean"], yerr=table["ci"], marker="o", capsize=3, label=arm)
        ax.axvline(lr, color="k", ls=":", lw=0.8)
        ax.set(xscale="log", xlabel="peak learning rate", ylabel="val loss (mean ± 95% CI)")
        ax.set_title(_explorer_text(lr_frame, factorial, arm, lr, warmup, floor), fontsize=8)
        ax.legend(fontsize=8)
        return fig

    if in_batch():
        return draw()
    import ipywidgets as widgets

    arm_w = widgets.Dropdown(options=arms, value=arm, description="arm")
    # Each arm swept its own LR grid: the slider offers the chosen arm's grid only (pooled grids
    # left most positions unmeasured for any one arm), starting in its middle as the batch figure.
    lrs = grid(arm)
    lr_w = widgets.SelectionSlider(options=lrs, value=lrs[len(lrs) // 2], description="peak LR")

    def follow_arm(change):
        lrs = grid(change["new"])
        lr_w.options = lrs  # resets to the first LR; the middle is the batch figure's
        lr_w.value = lrs[len(lrs) // 2]

    arm_w.observe(follow_arm, names="value")
    warm_w = widgets.SelectionSlider(options=warmups, value=min(warmups, key=lambda w: abs(w - REFERENCE["warmup"])),
                                     description="warm-up")
    floor_w = widgets.SelectionSlider(options=floors, value=min(floors, key=lambda f: abs(f - REFERENCE["floor"])),
                                      description="floor")

    def show(arm, lr, warmup, floor):
        fig = draw(arm, lr, warmup, floor)
        plt.show(fig)

    from IPython.display import display

    widget = widgets.interactive(show, arm=arm_w, lr=lr_w, warmup=warm_w, floor=floor_w)
    display(widget)
    return widget


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


def detectable_effect(noise: dict[str, float], n: int, confidence: float = 0.95, power: float = 0.8) -> float:
    """The minimum detectable effect (nats/token) of a paired comparison over ``n`` seeds, from
    the A/A runs' seed-to-seed spread (``noise_floor``): ``lib.core.min_detectable_effect`` with
    the spread of a difference of two independent runs, ``sqrt(2) * seed_std``.

    Pairing on the seed can only shrink that spread (the arms share initialisation and data
    order), so this is the conservative bound; the A/A runs cannot measure the paired spread
    itself, since two runs of one config with one seed are identical on a CPU.
    """
    return min_detectable_effect(math.sqrt(2.0) * noise["seed_std"], check_int("n", n, 1), confidence, power)


def decide(difference: dict[str, float], p_adjusted: float, mde: float, alpha: float = 0.05) -> str:
    """The reading of one paired difference (a minus b, lower is better) within its family,
    ``lib.core.decide_difference`` in this study's words: "a better" / "a worse" when the
    Holm-adjusted p-value is at most ``alpha`` and ``|mean_diff|`` is at least the minimum
    detectable effect ``mde``; otherwise "cannot decide (difference below the detectable
    effect)" or "cannot decide (not significant after Holm)"."""
    verdict = decide_difference(difference["mean_diff"], p_adjusted, mde, alpha)
    return {"lower": "a better", "higher": "a worse"}.get(verdict, verdict)


def compare(frame: pd.DataFrame, pairs: dict[str, tuple[dict[str, Any], dict[str, Any]]], mde: float,
            metric: str = "val_loss", alpha: float = 0.05, confidence: float = 0.95) -> pd.DataFrame:
    """One family of paired comparisons: ``pairs`` maps a name to (selector of arm a, selector
    of arm b). Per row: ``paired_difference`` (a minus b), the Holm-adjusted paired-t p-value
    over the family (``p_holm``), the minimum detectable effect ``mde`` and ``decision``
    (``decide``)."""
    rows = [{"comparison": name, **paired_difference(frame, a, b, metric, confidence=confidence)}
            for name, (a, b) in pairs.items()]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = holm(table["t_p"].to_numpy())
    table["mde"] = mde
    table["decision"] = [decide(r, r["p_holm"], mde, alpha) for r in table.to_dict("records")]
    return table


def best_lrs(frame: pd.DataFrame, metric: str = "val_loss") -> pd.DataFrame:
    """Per arm (an ``arm`` column, see ``label_arms``): the LR with the lowest mean ``metric``
    over seeds, with that mean, its CI and whether it sits at the edge of the arm's grid."""
    table = summarize(frame.dropna(subset=["arm"]), ["arm", "lr"], metric)
    out = best(table, "arm")
    edges = table.groupby("arm")["lr"].agg(["min", "max"])
    out["at_edge"] = [bool(np.isclose(r["lr"], edges.loc[r["arm"]]).any()) for _, r in out.iterrows()]
    return out


def routing_trajectories(histories: pd.DataFrame, frame: pd.DataFrame, by: str = "balance") -> pd.DataFrame:
    """Mean and 95% CI over seeds of each routing statistic at each logged step, per group
    ``by`` of ``frame`` (runs joined to ``histories`` on ``run_id``)."""
    keep = [k for k in ROUTING_TRAJECTORY_KEYS if k in histories]
    joined = histories.merge(frame[["run_id", by, "seed"]], on="run_id").dropna(subset=keep[:1])
    parts = []
    for key in keep:
        part = summarize_groups(joined, [by, "step"], key)
        parts.append(part.assign(stat=key))
    return pd.concat(parts, ignore_index=True)


def conclusion(results: dict[str, Any]) -> str:
    """Notebook 04's conclusion as Markdown, every number formatted from ``results``: ``noise``
    (``noise_floor``), ``mde`` (float), ``best`` (``best_lrs``), ``optimizers``, ``factorial``,
    ``claim`` and ``balance`` (``compare`` tables), ``n_seeds``, ``steps``, ``profile``."""
    noise, mde, n, best_table = results["noise"], results["mde"], results["n_seeds"], results["best"]
    f = lambda x, d=3: "n/a" if x is None or not math.isfinite(x) else f"{x:.{d}f}"
    signed = lambda x: "n/a" if not math.isfinite(x) else f"{x:+.3f}"

    def p_text(p):
        return "n/a" if not math.isfinite(p) else "< 0.01" if p < 0.01 else f"{p:.2f}"

    def reading(r):  # "a better" names a: the first arm of the comparison "a - b"
        first = str(r["comparison"]).split(" - ")[0]
        return {"a better": f"{first} lower", "a worse": f"{first} higher"}.get(r["decision"], r["decision"])

    def row_text(r):
        return (f"{signed(r['mean_diff'])} [{signed(r['ci_low'])}, {signed(r['ci_high'])}], "
                f"Holm-adjusted p {p_text(r['p_holm'])}: **{reading(r)}**")

    lines = [f"*Computed from this run ({results['profile']} profile: {results['steps']} optimizer steps, "
             f"{n} paired seeds).*", "",
             f"- **Noise and what it lets us see.** The A/A runs spread by {f(noise['seed_std'])} nats/token "
             f"(seed-to-seed std over {noise['seeds']} seeds; the repeated seed reproduces "
             f"{'exactly' if noise['repeat_max_abs_diff'] == 0 else 'to ' + f(noise['repeat_max_abs_diff'], 6)}). "
             f"With {n} paired seeds the minimum detectable effect (two-sided 5%, power 80%) is "
             f"**{f(mde)} nats/token**; every verdict below is read against it, and a difference below it "
             f"is \"cannot decide\", not a ranking."]
    best_bits = ", ".join(f"{r['arm']} {r['lr']:.3g} ({f(r['mean'])}{', at the grid edge' if r['at_edge'] else ''})"
                          for _, r in best_table.iterrows())
    lines.append(f"- **Best peak LR per arm** (mean val loss): {best_bits}. Each arm is compared at its own best LR.")
    for _, r in results["claim"].iterrows():
        lines.append(f"- **The seed's claim** ({r['comparison']}): {row_text(r)}.")
    opt = "; ".join(f"{r['comparison']}: {row_text(r)}" for _, r in results["optimizers"].iterrows())
    lines.append(f"- **Optimizers and model** (Holm over {len(results['optimizers'])} comparisons): {opt}.")
    fac = results["factorial"]
    counts = fac["decision"].value_counts()
    decided = fac[~fac["decision"].str.startswith("cannot")]
    dec_text = "; ".join(f"{r['comparison']}: {row_text(r)}" for _, r in decided.iterrows()) or "none"
    lines.append(f"- **Warm-up x floor factorial** ({len(fac)} cells against 5% warm-up / 10% floor at Muon's best LR, "
                 f"Holm over the family): {int(counts.drop([c for c in counts.index if not c.startswith('cannot')]).sum())} "
                 f"cannot be decided; decided: {dec_text}.")
    bal = "; ".join(f"{r['comparison']}: {row_text(r)}" for _, r in results["balance"].iterrows())
    final = results["routing_final"]
    routing = ", ".join(f"{arm} {f(r['max_load_ratio'], 2)} / {f(r['router_entropy'], 2)}" for arm, r in final.iterrows())
    lines.append(f"- **Load balancing** (val loss against aux 1e-2, Holm over {len(results['balance'])}): {bal}. "
                 f"Routing at the last logged step (max/mean expert load / router entropy in nats, mean over seeds; "
                 f"1 and ln E = {math.log(results['n_experts']):.2f} are perfect balance): {routing}.")
    return "\n".join(lines)


# Notebook 04's profiles. quick: CPU, minutes (a 2-layer 4-expert MoE, 60 steps, 3 paired seeds).
# full: the real study, meant for a GPU (6 layers, 8 experts, 2,000 steps, 5 paired seeds).
# ``arms`` are swept over their LR grids (``ARMS``); the warm-up x floor factorial runs at the Muon
# arm's best LR times each of ``ablate_lr_factors``; the balance ablation at its best LR.
QUICK = {"base": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 64, "n_experts": 4, "top_k": 2,
                  "steps": 60, "batch_size": 8, "seq_len": 64, "vocab_size": 128},
         "seeds": [0, 1, 2], "arms": list(ARMS), "muon_lrs": lr_grid(0.16, 3), "adamw_lrs": lr_grid(0.016, 3),
         "warmups": [0.0, 0.05, 0.1], "floors": [0.0, 0.05, 0.1], "ablate_lr_factors": [1],
         "max_extensions": 1}
FULL = {"base": {"d_model": 384, "n_layers": 6, "n_heads": 8, "d_ff": 768, "n_experts": 8, "top_k": 2,
                 "steps": 2000, "batch_size": 32, "seq_len": 256, "vocab_size": 256,
                 "n_train_tokens": 20_000_000, "n_val_tokens": 500_000, "eval_batches": 32, "routing_every": 25},
        "seeds": [0, 1, 2, 3, 4], "muon_lrs": lr_grid(0.02, 5), "adamw_lrs": lr_grid(4e-3, 5),
        "warmups": [0.0, 0.02, 0.05, 0.1], "floors": [0.0, 0.05, 0.1], "ablate_lr_factors": [1, 2],
        "max_extensions": 3}
# The full profile cut to a CPU smoke run: the same model shapes, arms and code paths; one step of a
# small batch (Muon's Newton-Schulz on the full expert stacks is most of a run's time on a CPU),
# 2 seeds (a paired test needs 2), the ends of the LR grids, and of the factorial the cells of the
# seed's baseline and claim. Newton-Schulz runs in bf16, the dtype the full profile gets on its GPU
# ("auto"); on a CPU with AVX512-BF16 that also halves its time against fp32.
SMOKE = {"base": {**FULL["base"], "steps": 1, "batch_size": 2, "n_train_tokens": 200_000, "n_val_tokens": 50_000,
                  "eval_batches": 1, "eval_batch_size": 2, "routing_every": 1, "ns_dtype": "bfloat16"},
         "seeds": [0, 1], "muon_lrs": FULL["muon_lrs"][::4], "adamw_lrs": FULL["adamw_lrs"][::4],
         "warmups": [REFERENCE["warmup"], CLAIM["warmup"]], "floors": [CLAIM["floor"], REFERENCE["floor"]],
         "ablate_lr_factors": [1], "max_extensions": 0}
