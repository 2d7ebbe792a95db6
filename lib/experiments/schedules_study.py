"""Notebook 01's recipe: the settings of its profiles, and the schedule training study.

The schedules, their vectorised curves and the torch ``LRScheduler`` adapter are components in
``lib.schedules``; the notebook draws them at ``total_steps`` with a 5% warm-up and times
``curve`` and ``ScheduledLR.step`` against torch's own schedulers (``benchmarks/bench_schedules``).

**The training study** asks which schedule gives the lowest held-out loss. Small
``lib.models.Transformer`` language models are trained with ``lib.training.train`` on the
embedded synthetic corpus under each arm of ``ARMS`` (cosine to a 10% floor, WSD with 1-sqrt and
linear cooldowns over the last 20%, constant with a short 1-sqrt cooldown over the last 10%, and
the seed's cosine-plateau example), at three run lengths. Every schedule reaches the optimizer
through ``lib.schedules.attach`` (the ``LRScheduler`` adapter ``train`` builds). The warm-up is
the same number of steps at every length, so one WSD stable phase serves every length.

1. **Tuning** (``tune_configs``): every arm at every length over a short shared grid of peak LRs,
   on the tuning seeds (kept apart from the evaluation seeds, so the chosen LR's evaluation is
   not the minimum of the same noise it was chosen on). ``best_lrs`` takes each arm's best LR per
   length and flags a best LR at the edge of the grid.
2. **Evaluation** (``eval_configs``): each arm at its own best LR on the paired evaluation seeds
   (a seed fixes the initial weights and the data order, so arms with one seed see the same
   batches). ``compare`` gives each arm's paired difference against cosine per length with its
   Student-t interval, the Holm-adjusted p-value over the family of comparisons, the seed spread
   of the paired differences and the minimum detectable effect it implies; ``hagele_verdict``
   reads the WSD (1-sqrt) rows against Hagele et al. (2024)'s claim that it matches cosine.
3. **Branching** (``BRANCHED`` arms): a stable-phase run (``Constant``) at a given LR and seed is
   trained once and checkpointed (``lib.training`` checkpoints) at each arm's branch point
   ``steps - cooldown_steps``; each length's WSD run resumes from that checkpoint and trains only
   its cooldown. A branched run is the same computation as a separate WSD run (the LR before the
   cooldown is the same), which ``tests/experiments`` checks bit for bit. ``branching_compute``
   is the closed form of the steps saved against separate runs; ``measured_branching`` reads the
   same accounting off the runs' recorded branch steps; ``compute_saved`` converts both to
   training FLOPs (``lib.scaling.run_flops_per_token``).

Every run is a row of a ``lib.training.RunStore`` sweep (``run_study`` goes through
``run_sweep``), so a killed study resumes; trunk checkpoints live under ``checkpoint_dir``.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lib.core import (
    check_bool,
    check_choice,
    check_int,
    check_positive,
    decide_difference,
    fmt_interval,
    holm,
    min_detectable_effect,
    paired_difference,
    summarize,
)
from lib.data import synthetic_corpus
from lib.models import ModelConfig, Transformer
from lib.scaling import PlannedRun, run_flops_per_token
from lib.schedules import Constant, Schedule, build
from lib.training import RunStore, TrainConfig, make_run_id, run_sweep, train

__all__ = [
    "QUICK", "FULL", "SMOKE", "ARMS", "BASELINE", "BRANCHED", "HAGELE_ARM",
    "arm_schedule", "cooldown_steps", "branch_step", "base_config", "model_config",
    "tune_configs", "eval_configs", "run_config", "run_study", "StudyResult", "planned_runs",
    "branching_check", "arms_table",
    "best_lrs", "final_losses", "compare", "hagele_verdict",
    "branching_compute", "measured_branching", "compute_saved", "conclusion_markdown",
    "plot_lr_sweep", "plot_loss_curves", "plot_final_losses", "plot_compute_saved",
]

# The study's arms: a lib.schedules registry name and its arguments; ``cooldown`` is the WSD
# cooldown as a fraction of the run (decay_steps = round(cooldown * steps)).
ARMS: dict[str, dict[str, Any]] = {
    "cosine": {"schedule": "warmup_cosine", "min_lr_ratio": 0.1},
    "wsd_1sqrt": {"schedule": "wsd", "decay": "1-sqrt", "cooldown": 0.2},
    "wsd_linear": {"schedule": "wsd", "decay": "linear", "cooldown": 0.2},
    "constant_cooldown": {"schedule": "wsd", "decay": "1-sqrt", "cooldown": 0.1},
    "cosine_plateau": {"schedule": "cosine_plateau", "min_lr_ratio": 0.1,
                       "plateaus": ((0.3, 0.2), (0.7, 0.1))},
}
BASELINE = "cosine"
HAGELE_ARM = "wsd_1sqrt"
# Arms trained by branching a cooldown off one shared stable-phase (constant LR) run.
BRANCHED = tuple(name for name, arm in ARMS.items() if arm["schedule"] == "wsd")

# quick: CPU, about a minute for the study (a 2-layer d_model 32 model, runs of 60-240 steps).
# full: the real study, meant for a GPU (4 layers, d_model 256, runs of 1k-4k steps, 5 seeds).
QUICK: dict[str, Any] = {
    # the descriptive part (schedule curves and the step-cost benchmark)
    "total_steps": 2_000, "bench_steps": 3_000, "bench_repeats": 5, "curve_steps": 1_000_000,
    # the training study
    "model": {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2},
    "corpus": {"vocab_size": 64, "n_train_tokens": 200_000, "n_val_tokens": 20_000, "seed": 0},
    "lengths": [60, 120, 240], "warmup_steps": 6, "batch_size": 16, "seq_len": 32,
    "lr_grid": [6e-3, 1.2e-2, 2.4e-2], "tune_seeds": [100], "seeds": [0, 1, 2, 3],
    "eval_batches": 16, "eval_batch_size": 16, "threads": 1, "workers": 2,
    "equivalence_margin": 0.02, "confidence": 0.95,
}
FULL: dict[str, Any] = {
    "total_steps": 20_000, "bench_steps": 20_000, "bench_repeats": 9, "curve_steps": 10_000_000,
    "model": {"vocab_size": 256, "d_model": 256, "n_layers": 4, "n_heads": 4},
    "corpus": {"vocab_size": 256, "n_train_tokens": 20_000_000, "n_val_tokens": 500_000, "seed": 0},
    "lengths": [1_000, 2_000, 4_000], "warmup_steps": 100, "batch_size": 32, "seq_len": 256,
    "lr_grid": [7.5e-4, 1.5e-3, 3e-3, 6e-3, 1.2e-2], "tune_seeds": [100, 101], "seeds": [0, 1, 2, 3, 4],
    "eval_batches": 32, "eval_batch_size": 32, "threads": None, "workers": 1,
}
# smoke: the full profile's model shape, arms, lengths' ratios, seeds and code paths on a CPU in
# minutes: a few steps per run, one sequence per step, the corners of the LR grid, one tuning seed,
# and a corpus only as long as a few steps need (the full one takes longer to build than to use).
# Two single-threaded workers: runs this short are mostly model builds and checkpoint I/O, which
# two processes overlap and two threads do not (the study took 32 s against 40 s on 2 cores).
SMOKE: dict[str, Any] = {
    "corpus": {**FULL["corpus"], "n_train_tokens": 200_000, "n_val_tokens": 20_000},
    "bench_steps": 3_000, "lengths": [3, 6, 12], "warmup_steps": 1, "batch_size": 1,
    "eval_batches": 1, "eval_batch_size": 1, "lr_grid": [FULL["lr_grid"][0], FULL["lr_grid"][-1]],
    "tune_seeds": FULL["tune_seeds"][:1], "threads": 1, "workers": 2,
}


# --------------------------------------------------------------------------- schedules


def _arm(name: str) -> dict[str, Any]:
    check_choice("arm", name, tuple(ARMS))
    return ARMS[name]


def cooldown_steps(arm: str, steps: int) -> int:
    """Cooldown length of a ``BRANCHED`` arm over a run of ``steps``: round(cooldown * steps),
    at least 1."""
    spec = _arm(arm)
    if arm not in BRANCHED:
        raise ValueError(f"arm {arm!r} has no cooldown; the branched arms are {BRANCHED}")
    steps = check_int("steps", steps, 2)
    return max(1, round(spec["cooldown"] * steps))


def branch_step(arm: str, steps: int) -> int:
    """Where a ``BRANCHED`` arm's cooldown starts (its stable phase ends): steps - cooldown."""
    return check_int("steps", steps, 2) - cooldown_steps(arm, steps)


def arm_schedule(arm: str, steps: int, warmup_steps: int) -> Schedule:
    """The ``lib.schedules`` schedule of ``arm`` over ``steps`` optimizer steps."""
    spec = dict(_arm(arm))
    steps = check_int("steps", steps, 2)
    warmup_steps = check_int("warmup_steps", warmup_steps, 0, steps - 1)
    name = spec.pop("schedule")
    if spec.pop("cooldown", None) is not None:
        spec["decay_steps"] = cooldown_steps(arm, steps)
        spec.setdefault("min_lr_ratio", 0.0)
        if steps - spec["decay_steps"] <= warmup_steps:
            raise ValueError(f"arm {arm!r} at steps={steps}: its cooldown starts at step "
                             f"{steps - spec['decay_steps']}, not after warmup_steps={warmup_steps}")
    return build(name, total_steps=steps, warmup_steps=warmup_steps, **spec)


# --------------------------------------------------------------------------- run configs

_BASE_KEYS = ("model", "corpus", "warmup_steps", "batch_size", "seq_len", "eval_batches",
              "eval_batch_size", "threads", "device")


def base_config(settings, device: str = "cpu") -> dict[str, Any]:
    """What every run of the study shares, from a ``profile_settings`` namespace (or a dict)."""
    get = settings.get if isinstance(settings, Mapping) else partial(getattr, settings)
    base = {k: get(k) for k in _BASE_KEYS if k != "device"}
    base["device"] = str(device)
    for key in ("warmup_steps", "batch_size", "seq_len", "eval_batches", "eval_batch_size"):
        base[key] = check_int(key, base[key], 0 if key == "warmup_steps" else 1)
    if base["threads"] is not None:
        base["threads"] = check_int("threads", base["threads"], 1)
    if not isinstance(base["model"], Mapping) or not isinstance(base["corpus"], Mapping):
        raise ValueError("settings 'model' and 'corpus' must be dicts (ModelConfig and "
                         "synthetic_corpus arguments)")
    base["model"], base["corpus"] = dict(base["model"]), dict(base["corpus"])
    model_config(base)  # validates the shape before any compute
    return base


def model_config(config: Mapping[str, Any]) -> ModelConfig:
    """The ``lib.models.ModelConfig`` of a run (its ``max_seq_len`` is the run's ``seq_len``)."""
    return ModelConfig(**{**config["model"], "max_seq_len": config["seq_len"]})


def _run(base: Mapping[str, Any], arm: str, steps: int, lr: float, seed: int, role: str,
         branched: bool = True) -> dict[str, Any]:
    _arm(arm)
    steps = check_int("steps", steps, 2)
    arm_schedule(arm, steps, base["warmup_steps"])  # a bad length fails here, before training
    return {**base, "arm": arm, "steps": steps, "lr": float(check_positive("lr", lr)),
            "seed": check_int("seed", seed, 0), "role": role,
            "branched": check_bool("branched", branched) and arm in BRANCHED}


def tune_configs(base: Mapping[str, Any], lengths: Sequence[int], lr_grid: Sequence[float],
                 seeds: Sequence[int], arms: Sequence[str] = tuple(ARMS)) -> list[dict[str, Any]]:
    """The LR-tuning runs: every arm x length x LR x tuning seed."""
    if not lr_grid or not seeds or not lengths:
        raise ValueError("lengths, lr_grid and seeds must be non-empty")
    return [_run(base, arm, L, lr, s, "tune") for arm in arms for L in lengths
            for lr in lr_grid for s in seeds]


def eval_configs(base: Mapping[str, Any], best: pd.DataFrame, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The evaluation runs: each (arm, steps) row of ``best`` (``best_lrs``) at its LR, every seed."""
    if len(seeds) < 2:
        raise ValueError(f"paired comparisons need at least 2 seeds, got {list(seeds)}")
    return [_run(base, row.arm, int(row.steps), float(row.lr), s, "eval")
            for row in best.itertuples() for s in seeds]


# --------------------------------------------------------------------------- running


@lru_cache(maxsize=2)
def _corpus(key: tuple):
    return synthetic_corpus(**dict(key))


def _data(config: Mapping[str, Any]):
    return _corpus(tuple(sorted(config["corpus"].items())))


def _model(config: Mapping[str, Any]) -> Transformer:
    torch.manual_seed(config["seed"])
    return Transformer(model_config(config))


def _train_config(config: Mapping[str, Any], steps: int, schedule: Schedule, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=config["batch_size"], seq_len=config["seq_len"],
                       lr=config["lr"], schedule=schedule, eval_batches=config["eval_batches"],
                       eval_batch_size=config["eval_batch_size"], seed=config["seed"],
                       device=config["device"], on_divergence="stop", progress=False, **kw)


_TRUNK_KEYS = ("model", "corpus", "warmup_steps", "batch_size", "seq_len", "eval_batches",
               "eval_batch_size", "threads", "device", "lr", "seed")


def _trunk_id(config: Mapping[str, Any]) -> str:
    return make_run_id("stable-phase", {k: config[k] for k in _TRUNK_KEYS})


def _trunk_checkpoint(config: Mapping[str, Any], at_step: int, checkpoint_dir: Path) -> Path:
    """The stable-phase run of ``config`` (its LR and seed) checkpointed at ``at_step``: trained
    on from the latest earlier checkpoint of the same run, or from scratch."""
    folder = checkpoint_dir / f"trunk-{_trunk_id(config)}"
    target = folder / f"step{at_step:09d}.pt"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    earlier = sorted(p for p in folder.glob("step*.pt") if int(p.stem[4:]) < at_step)
    work = folder / f"work-{os.getpid()}.pt"
    if earlier:
        shutil.copyfile(earlier[-1], work)
    else:
        work.unlink(missing_ok=True)
    # Constant(at_step) equals every branched arm's schedule up to its branch point; a resume
    # with more steps and this schedule continues the same stable run.
    schedule = Constant(total_steps=at_step, warmup_steps=config["warmup_steps"])
    result = train(_model(config), _data(config), _train_config(
        config, at_step, schedule, checkpoint_path=str(work), checkpoint_every=at_step + 1,
        resume=True, resume_changed_config=True))
    if result.final["diverged"]:
        work.unlink(missing_ok=True)
        raise RuntimeError(f"the stable-phase run diverged before step {at_step} at lr {config['lr']}")
    os.replace(work, target)
    return target


def run_config(config: dict[str, Any], checkpoint_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train one study run; return its metrics and loss history.

    A ``branched`` run of a ``BRANCHED`` arm resumes the stable-phase checkpoint at its branch
    point (from ``checkpoint_dir``, trained there first if missing) and trains only its cooldown.
    Metrics: ``val_loss`` (held-out nats/token), ``val_accuracy``, ``train_loss``, ``diverged``,
    ``branch_step`` (the step it started from: 0, or the stable-phase checkpoint's step),
    ``trained_steps`` (steps this run trained itself), ``tokens_per_step``, ``trunk`` (the
    stable-phase run's id, "" when not branched) and ``elapsed_s``.
    """
    if config.get("threads") is not None and str(config["device"]).startswith("cpu"):
        torch.set_num_threads(config["threads"])
    steps = config["steps"]
    schedule = arm_schedule(config["arm"], steps, config["warmup_steps"])
    start, trunk, resume_from = 0, "", None
    if config["branched"]:
        if checkpoint_dir is None:
            raise ValueError("a branched run needs a checkpoint_dir for its stable-phase checkpoints")
        # The trunk checkpoint holds exactly its branch step: _trunk_checkpoint only publishes a
        # stable phase that trained to it.
        start, trunk = branch_step(config["arm"], steps), _trunk_id(config)
        resume_from = _trunk_checkpoint(config, start, Path(checkpoint_dir))
    # checkpoint_every=0: the cooldown reads the stable-phase checkpoint and never writes it.
    extra = {"checkpoint_path": str(resume_from), "checkpoint_every": 0, "resume": True,
             "resume_changed_config": True} if resume_from is not None else {}
    result = train(_model(config), _data(config), _train_config(config, steps, schedule, **extra))
    final = result.final
    history = result.history[["step", "loss", "lr"]]
    return {"val_loss": final.get("val_loss", math.nan), "val_accuracy": final.get("val_accuracy", math.nan),
            "train_loss": final["train_loss"], "diverged": bool(final["diverged"]),
            "branch_step": start, "trained_steps": int(final["steps"]) - start,
            "tokens_per_step": config["batch_size"] * config["seq_len"], "trunk": trunk,
            "elapsed_s": final["elapsed_s"], "history": history}


def _sweep(store: RunStore, sweep: str, configs: list[dict], checkpoint_dir, progress: bool,
           workers: int = 1) -> pd.DataFrame:
    run_sweep(store, sweep, configs, partial(run_config, checkpoint_dir=checkpoint_dir), progress=progress,
              workers=workers)
    frame = store.frame(sweep)
    wanted = {make_run_id(sweep, c) for c in configs}
    rows = frame[frame["run_id"].isin(wanted)]
    missing = len(wanted) - int((rows["status"] == "done").sum())
    if missing:
        errors = rows.loc[rows["status"] != "done", "error"].dropna().tolist()
        raise RuntimeError(f"{missing} of {len(wanted)} runs of sweep {sweep!r} did not finish; first "
                           f"error: {errors[0][-500:] if errors else 'none recorded (running elsewhere?)'}")
    return rows.reset_index(drop=True)


@dataclass
class StudyResult:
    """A finished study: ``tune`` and ``eval`` (run frames), ``best`` (``best_lrs``) and
    ``histories`` (the evaluation runs' loss curves, with their ``run_id``)."""

    tune: pd.DataFrame
    eval: pd.DataFrame
    best: pd.DataFrame
    histories: pd.DataFrame


def run_study(store: RunStore, settings, checkpoint_dir: str | os.PathLike, device: str = "cpu",
              arms: Sequence[str] = tuple(ARMS), progress: bool = False) -> StudyResult:
    """Tune every arm's LR per length, then evaluate each at its best LR on the paired seeds.

    ``settings`` is the notebook's ``profile_settings`` namespace. Runs go through
    ``lib.training.run_sweep`` (sweeps ``"tune"`` and ``"eval"``), so done runs are skipped, in
    ``settings.workers`` processes (default 1). Two processes that reach the same stable-phase
    checkpoint first both train it and write the same bits (an atomic replace), so branching
    stays exact.
    """
    if not isinstance(store, RunStore):
        raise ValueError(f"store must be a lib.training.RunStore, got {type(store).__name__}")
    for arm in arms:
        _arm(arm)
    if BASELINE not in arms:
        raise ValueError(f"arms must include the baseline {BASELINE!r}, got {list(arms)}")
    base = base_config(settings, device)
    get = settings.get if isinstance(settings, Mapping) else partial(getattr, settings)
    workers = check_int("workers", get("workers", 1), 1)
    tune = _sweep(store, "tune", tune_configs(base, get("lengths"), get("lr_grid"), get("tune_seeds"), arms),
                  checkpoint_dir, progress, workers)
    best = best_lrs(tune)
    configs = eval_configs(base, best, get("seeds"))
    evaluated = _sweep(store, "eval", configs, checkpoint_dir, progress, workers)
    hist = store.histories("eval")
    hist = hist[hist["run_id"].isin(set(evaluated["run_id"]))].reset_index(drop=True)
    return StudyResult(tune=tune, eval=evaluated, best=best, histories=hist)


def planned_runs(settings) -> list[PlannedRun]:
    """One ``lib.scaling.PlannedRun`` per training run ``run_study`` will do with ``settings``.

    The stable-phase runs are planned as their own runs, and each branched run as its cooldown
    only. Evaluation runs depend on the tuned LRs; the plan assumes each branched arm needs its
    own stable-phase run per seed (the upper bound when the arms' best LRs differ).
    """
    get = settings.get if isinstance(settings, Mapping) else partial(getattr, settings)
    base = base_config(settings)
    model = model_config(base)
    tokens_per_step = base["batch_size"] * base["seq_len"]
    lengths = [check_int("lengths", L, 2) for L in get("lengths")]

    def plan(label: str, steps: int) -> PlannedRun:
        return PlannedRun(label=label, model=model, tokens=steps * tokens_per_step,
                          seq_len=base["seq_len"], batch_size=base["batch_size"])

    runs = []
    for role, lrs, seeds in (("tune", get("lr_grid"), get("tune_seeds")), ("eval", [None], get("seeds"))):
        for lr in lrs:
            for seed in seeds:
                tag = f"{role} lr={lr:g} seed={seed}" if lr is not None else f"{role} seed={seed}"
                trunk_arms = [BRANCHED] if role == "tune" else [(a,) for a in BRANCHED]
                for group in trunk_arms:
                    top = max(branch_step(a, L) for a in group for L in lengths)
                    runs.append(plan(f"{tag} stable phase ({'+'.join(group)})", top))
                for arm in ARMS:
                    for L in lengths:
                        steps = cooldown_steps(arm, L) if arm in BRANCHED else L
                        runs.append(plan(f"{tag} {arm} {L} steps", steps))
    return runs


def branching_check(evaluated: pd.DataFrame, base: Mapping[str, Any], arm: str = HAGELE_ARM,
                    metric: str = "val_loss") -> dict[str, Any]:
    """Train ``arm``'s longest evaluation run (first seed) again as one separate run, without
    branching, and compare it with the branched run: ``branched``, ``separate`` (their
    ``metric``) and ``abs_diff`` (0.0 when branching is the same computation)."""
    rows = evaluated[(evaluated["arm"] == arm) & evaluated["branched"].astype(bool)]
    if rows.empty:
        raise ValueError(f"no branched evaluation runs of arm {arm!r}")
    row = rows.sort_values(["steps", "seed"], ascending=[False, True]).iloc[0]
    config = _run(base, arm, int(row["steps"]), float(row["lr"]), int(row["seed"]), "check", branched=False)
    separate = float(run_config(config)[metric])
    return {"arm": arm, "steps": int(row["steps"]), "lr": float(row["lr"]), "seed": int(row["seed"]),
            "branch_step": int(row["branch_step"]), "branched": float(row[metric]), "separate": separate,
            "abs_diff": abs(separate - float(row[metric]))}


# --------------------------------------------------------------------------- analysis


def arms_table(lengths: Sequence[int], warmup_steps: int) -> pd.DataFrame:
    """One row per arm: its schedule's ``config()`` at the longest length, and its LR multiplier
    at the cooldown landmarks (fractions of the run), for the notebook's design table."""
    longest = max(check_int("lengths", L, 2) for L in lengths)
    rows = []
    for arm in ARMS:
        sched = arm_schedule(arm, longest, warmup_steps)
        cfg = {k: v for k, v in sched.config().items() if k not in ("total_steps", "warmup_steps")}
        marks = {f"lr at {f:.0%}": round(sched(round(f * longest)), 4) for f in (0.5, 0.8, 0.9, 1.0)}
        name = cfg.pop("name")
        rows.append({"arm": arm, "schedule": name, "arguments": ", ".join(f"{k}={v}" for k, v in cfg.items()),
                     "branched": arm in BRANCHED, **marks})
    return pd.DataFrame(rows).set_index("arm")


def best_lrs(tune: pd.DataFrame, metric: str = "val_loss") -> pd.DataFrame:
    """Per (arm, steps): the LR with the lowest mean ``metric`` over the tuning seeds (diverged
    runs count as infinitely bad), with ``at_edge`` when it is the smallest or largest LR tried."""
    ok = tune.assign(score=np.where(tune["diverged"].astype(bool), np.inf, tune[metric].astype(float)))
    means = ok.groupby(["arm", "steps", "lr"], sort=True)["score"].mean().reset_index()
    rows = []
    for (arm, steps), g in means.groupby(["arm", "steps"], sort=False):
        pick = g.loc[g["score"].idxmin()]
        lrs = sorted(g["lr"])
        rows.append({"arm": arm, "steps": int(steps), "lr": float(pick["lr"]), "tune_loss": float(pick["score"]),
                     "at_edge": len(lrs) > 1 and pick["lr"] in (lrs[0], lrs[-1])})
    order = {a: i for i, a in enumerate(ARMS)}
    out = pd.DataFrame(rows)
    return out.sort_values(["arm", "steps"], key=lambda s: s.map(order) if s.name == "arm" else s,
                           ignore_index=True)


def final_losses(frame: pd.DataFrame, metric: str = "val_loss", confidence: float = 0.95) -> pd.DataFrame:
    """Per (arm, steps): mean, std, count and Student-t interval of ``metric`` over the seeds
    (``lib.core.summarize``; diverged runs excluded)."""
    ok = frame[~frame["diverged"].astype(bool)]
    return summarize(ok, ["arm", "steps"], metric, confidence)


def compare(frame: pd.DataFrame, baseline: str = BASELINE, metric: str = "val_loss",
            confidence: float = 0.95) -> pd.DataFrame:
    """Every arm against ``baseline`` at each length, paired on seed (negative: lower loss).

    Columns: ``arm``, ``steps``, ``n``, ``mean_diff``, ``ci_low``, ``ci_high``, ``t_p``,
    ``holm_p`` (Holm over all the rows: one family), ``sd_diff`` (seed spread of the paired
    differences), ``mde`` (``lib.core.min_detectable_effect`` at 80% power from that spread)
    and ``verdict``: ``lib.core.decide_difference`` at level 1 - ``confidence`` in the baseline's
    words, "lower than <baseline>" / "higher than <baseline>" when the Holm-adjusted p-value is
    at most that level and the difference is at least the detectable effect, otherwise "cannot
    decide (difference below the detectable effect)" or "(not significant after Holm)".
    """
    rows = []
    for (arm, steps), g in frame.groupby(["arm", "steps"], sort=False):
        if arm == baseline:
            continue
        base = frame[(frame["arm"] == baseline) & (frame["steps"] == steps)]
        a, b = g.set_index("seed")[metric].astype(float), base.set_index("seed")[metric].astype(float)
        diff = paired_difference(a, b, confidence)
        sd = float((a - b).dropna().std(ddof=1))
        rows.append({"arm": arm, "steps": int(steps), **diff, "sd_diff": sd,
                     "mde": min_detectable_effect(sd, int(diff["n"]), confidence)})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["holm_p"] = holm(out["t_p"].to_numpy(float))
    words = {"lower": f"lower than {baseline}", "higher": f"higher than {baseline}"}
    out["verdict"] = [words.get(v, v) for v in (decide_difference(r.mean_diff, r.holm_p, r.mde, 1.0 - confidence)
                                                for r in out.itertuples())]
    return out[["arm", "steps", "n", "mean_diff", "ci_low", "ci_high", "t_p", "holm_p", "sd_diff", "mde",
                "verdict"]]


def hagele_verdict(comparisons: pd.DataFrame, margin: float, arm: str = HAGELE_ARM,
                   baseline: str = BASELINE) -> tuple[str, str]:
    """Does ``arm`` match ``baseline`` here (Hagele et al. 2024: WSD with a 1-sqrt cooldown
    matches cosine)? Returns ``(status, sentence)`` with status "holds", "does not hold" or
    "cannot decide".

    "does not hold": at some length ``arm`` is significantly worse (``compare``'s verdict).
    "holds": at every length the interval of the difference lies within +-``margin``
    (nats/token, an equivalence margin) or ``arm`` is significantly better. Otherwise
    "cannot decide".
    """
    margin = check_positive("margin", margin)
    rows = comparisons[comparisons["arm"] == arm].sort_values("steps")
    if rows.empty:
        raise ValueError(f"no comparison rows for arm {arm!r}")
    worse = rows[rows["verdict"] == f"higher than {baseline}"]
    better = rows["verdict"] == f"lower than {baseline}"
    within = (rows["ci_low"] >= -margin) & (rows["ci_high"] <= margin)
    detail = "; ".join(f"{r.steps} steps: {r.mean_diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}], "
                       f"detectable {r.mde:.3f}" for r in rows.itertuples())
    if len(worse):
        lengths = ", ".join(str(s) for s in worse["steps"])
        return "does not hold", (f"does not hold here: {arm} ends above {baseline} at {lengths} steps "
                                 f"(Holm-adjusted; difference in nats/token with 95% CI: {detail})")
    if (within | better).all():
        return "holds", (f"holds here: at every length {arm} is within ±{margin:g} nats/token of {baseline} "
                         f"or below it ({detail})")
    # The reason is the rows' own: a difference beyond the detectable effect that the
    # Holm-adjusted test does not confirm is a different finding from one lost in the noise.
    large = rows[rows["verdict"] == "cannot decide (not significant after Holm)"]
    if len(large):
        lengths = ", ".join(str(s) for s in large["steps"])
        side = {True: "below", False: "above"}
        sides = sorted({side[bool(d < 0)] for d in large["mean_diff"]})
        return "cannot decide", (f"cannot decide (not significant after Holm): at {lengths} steps {arm} ends "
                                 f"{' or '.join(sides)} {baseline} by more than the detectable effect, but "
                                 f"the Holm-adjusted test does not reject with {int(rows['n'].min())} paired "
                                 f"seeds, and the intervals are wider than the ±{margin:g} nats/token "
                                 f"equivalence margin ({detail})")
    return "cannot decide", (f"cannot decide (difference below the detectable effect): the intervals are "
                             f"wider than the ±{margin:g} nats/token equivalence margin and no length "
                             f"shows a significant difference ({detail})")


def branching_compute(lengths: Sequence[int], arm: str = HAGELE_ARM) -> dict[str, int]:
    """Closed form of the training steps for a family of run ``lengths`` of a branched arm.

    ``separate``: sum of the lengths (one run each, as cosine needs); ``branched``: one stable
    phase up to the latest branch point plus each length's cooldown,
    ``max_L (L - c_L) + sum_L c_L``; ``saved = separate - branched``.
    """
    lengths = [check_int("lengths", L, 2) for L in lengths]
    if not lengths:
        raise ValueError("lengths must be non-empty")
    trunk = max(branch_step(arm, L) for L in lengths)
    cool = sum(cooldown_steps(arm, L) for L in lengths)
    separate = sum(lengths)
    return {"separate": separate, "stable": trunk, "cooldowns": cool, "branched": trunk + cool,
            "saved": separate - trunk - cool}


def measured_branching(frame: pd.DataFrame) -> pd.DataFrame:
    """The same accounting read off finished runs: per branched arm and stable-phase run
    (``trunk``), ``stable`` = the latest branch step its runs resumed from, ``cooldowns`` = the
    steps they trained themselves, ``separate`` = the sum of their lengths; plus ``lengths``."""
    runs = frame[frame["branched"].astype(bool)]
    rows = []
    for (arm, trunk), g in runs.groupby(["arm", "trunk"], sort=False):
        stable, cool, separate = int(g["branch_step"].max()), int(g["trained_steps"].sum()), int(g["steps"].sum())
        rows.append({"arm": arm, "trunk": trunk, "lr": float(g["lr"].iloc[0]), "seed": int(g["seed"].iloc[0]),
                     "lengths": tuple(sorted(int(s) for s in g["steps"])), "separate": separate,
                     "stable": stable, "cooldowns": cool, "branched": stable + cool,
                     "saved": separate - stable - cool})
    return pd.DataFrame(rows)


def compute_saved(measured: pd.DataFrame, config: Mapping[str, Any]) -> pd.DataFrame:
    """Training FLOPs of each branched family against separate runs of the same lengths (the
    cosine baseline's cost): Chinchilla Appendix-F FLOPs per token x tokens, per arm (first
    stable-phase run of each arm), with ``saved_fraction`` and whether the measured steps equal
    ``branching_compute``'s closed form (``matches_closed_form``)."""
    fpt = run_flops_per_token(model_config(config), config["seq_len"])
    tokens = config["batch_size"] * config["seq_len"]
    rows = []
    for arm, g in measured.groupby("arm", sort=False):
        r = g.iloc[0]
        closed = branching_compute(r["lengths"], arm)
        rows.append({"arm": arm, "lengths": r["lengths"], "lr": r["lr"], "seed": r["seed"],
                     "separate_flops": r["separate"] * tokens * fpt, "branched_flops": r["branched"] * tokens * fpt,
                     "saved_fraction": r["saved"] / r["separate"],
                     "matches_closed_form": all(int(r[k]) == closed[k] for k in ("separate", "stable",
                                                                                  "cooldowns", "branched"))})
    return pd.DataFrame(rows)


def conclusion_markdown(losses: pd.DataFrame, comparisons: pd.DataFrame, best: pd.DataFrame,
                        hagele: tuple[str, str], saved: pd.DataFrame, seeds: Sequence[int],
                        confidence: float = 0.95) -> str:
    """The notebook's conclusion, every number formatted from the results (losses to 3 decimals)."""
    level = f"{confidence:.0%}"
    lines = [f"**Training study** ({len(seeds)} paired seeds, each arm at its own best peak LR per "
             f"length; held-out loss in nats/token, mean [{level} CI]):", ""]
    for steps, g in losses.groupby("steps"):
        cells = ", ".join(f"{r.arm} {fmt_interval(r.mean, r.ci_low, r.ci_high, 3)}" for r in g.itertuples())
        lines.append(f"* {steps} steps: {cells}.")
    lines += ["", f"**Against cosine** (paired difference, Holm over the {len(comparisons)} comparisons; "
              "detectable = the minimum detectable effect at 80% power from the seed spread):", ""]
    for r in comparisons.itertuples():
        lines.append(f"* {r.arm}, {r.steps} steps: {r.mean_diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}], "
                     f"Holm p {r.holm_p:.2f}, detectable {r.mde:.3f}: {r.verdict}.")
    edges = best[best["at_edge"]]
    if len(edges):
        lines += ["", "Best LR at the edge of the grid (the optimum may lie outside it): "
                  + ", ".join(f"{r.arm} at {r.steps} steps ({r.lr:g})" for r in edges.itertuples()) + "."]
    lines += ["", f"**Hagele et al. (2024)**, WSD with a 1-sqrt cooldown matches cosine: {hagele[1]}."]
    if len(saved):
        parts = ", ".join(f"{r.arm} {r.saved_fraction:.0%}" for r in saved.itertuples())
        ok = bool(saved["matches_closed_form"].all())
        lines += ["", f"**Branching**: one stable phase cooled down at every length saves, against separate "
                  f"runs of the same lengths, {parts} of the training FLOPs (measured from the runs' branch "
                  f"steps; {'equal to' if ok else 'DIFFERENT from'} the closed form)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def _arm_colors() -> dict[str, Any]:
    import matplotlib.pyplot as plt

    return {arm: plt.get_cmap("tab10")(i) for i, arm in enumerate(ARMS)}


def plot_lr_sweep(tune: pd.DataFrame, evaluated: pd.DataFrame | None = None, metric: str = "val_loss"):
    """Final held-out loss against peak LR, one panel per length, one line per arm (tuning
    seeds' mean); the chosen LR's evaluation mean +- 95% CI on top when ``evaluated`` is given."""
    import matplotlib.pyplot as plt

    lengths = sorted(tune["steps"].unique())
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.4), sharey=True, squeeze=False)
    colors = _arm_colors()
    ok = tune[~tune["diverged"].astype(bool)]
    for ax, steps in zip(axes[0], lengths):
        for arm, g in ok[ok["steps"] == steps].groupby("arm", sort=False):
            m = g.groupby("lr")[metric].mean()
            ax.plot(m.index, m.to_numpy(), "o-", color=colors[arm], label=arm, ms=4)
        if evaluated is not None:
            s = final_losses(evaluated[evaluated["steps"] == steps], metric)
            for r in s.itertuples():
                lr = float(evaluated.loc[(evaluated["arm"] == r.arm) & (evaluated["steps"] == steps), "lr"].iloc[0])
                ax.errorbar(lr, r.mean, yerr=r.ci, fmt="s", color=colors[r.arm], mfc="none", capsize=3, ms=7)
        ax.set_xscale("log")
        ax.set(title=f"{steps} steps", xlabel="peak LR")
    axes[0][0].set_ylabel(f"final {metric} (nats/token)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("LR sweep (tuning seeds); squares: evaluation seeds at the chosen LR, mean ± 95% CI", fontsize=9)
    return fig


def plot_loss_curves(histories: pd.DataFrame, evaluated: pd.DataFrame, window: int = 9):
    """Per length: the LR multiplier (top) and the training loss (bottom; rolling mean over
    ``window`` steps, averaged over seeds) of every arm at its chosen LR."""
    import matplotlib.pyplot as plt

    merged = histories.merge(evaluated[["run_id", "arm", "steps", "seed", "lr"]].rename(columns={"steps": "length",
                                                                                                  "lr": "peak"}),
                             on="run_id")
    lengths = sorted(merged["length"].unique())
    fig, axes = plt.subplots(2, len(lengths), figsize=(4.2 * len(lengths), 5.2), sharex="col", squeeze=False,
                             gridspec_kw={"height_ratios": [1, 2]})
    colors = _arm_colors()
    for j, length in enumerate(lengths):
        rows = merged[merged["length"] == length]
        for arm, g in rows.groupby("arm", sort=False):
            one = g[g["seed"] == g["seed"].min()].sort_values("step")
            axes[0][j].plot(one["step"], one["lr"] / one["peak"], color=colors[arm], lw=1)
            smooth = (g.sort_values("step").groupby("seed")["loss"]
                      .transform(lambda s: s.rolling(window, min_periods=1).mean()))
            curve = g.assign(smooth=smooth).groupby("step")["smooth"].mean()
            axes[1][j].plot(curve.index, curve.to_numpy(), color=colors[arm], lw=1.2, label=arm)
        axes[0][j].set(title=f"{length} steps", ylabel="lr / peak" if j == 0 else None)
        axes[1][j].set(xlabel="optimizer step", ylabel="train loss (smoothed)" if j == 0 else None)
        lo = rows["loss"].quantile(0.02)
        axes[1][j].set_ylim(lo - 0.05, rows.loc[rows["step"] > length // 5, "loss"].max() + 0.05)
    axes[1][-1].legend(fontsize=7)
    return fig


def plot_final_losses(losses: pd.DataFrame):
    """Final held-out loss (mean +- 95% CI over seeds) against run length, one line per arm."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    colors = _arm_colors()
    arms = list(losses["arm"].unique())
    for i, (arm, g) in enumerate(losses.groupby("arm", sort=False)):
        g = g.sort_values("steps")
        x = g["steps"].to_numpy(float) * (1 + 0.03 * (i - (len(arms) - 1) / 2))  # dodge the bars
        ax.errorbar(x, g["mean"], yerr=g["ci"], fmt="o-", color=colors[arm], capsize=3, label=arm, ms=4)
    ax.set_xscale("log")
    ax.set_xticks(sorted(losses["steps"].unique()), [str(s) for s in sorted(losses["steps"].unique())])
    ax.minorticks_off()
    ax.set(xlabel="run length (optimizer steps)", ylabel="final val loss (nats/token)",
           title="each schedule at its best peak LR: mean ± 95% CI over seeds")
    ax.legend(fontsize=7)
    return fig


def plot_compute_saved(saved: pd.DataFrame, lengths: Sequence[int], arm: str = HAGELE_ARM):
    """Training steps needed for the first k lengths (k = 1, 2, ...): separate runs (cosine)
    against one stable phase with a cooldown per length (``arm``), from ``branching_compute``;
    the measured saving of each branched arm is written beside it."""
    import matplotlib.pyplot as plt

    lengths = sorted(int(L) for L in lengths)
    fams = [lengths[:k] for k in range(1, len(lengths) + 1)]
    sep = [branching_compute(f, arm)["separate"] for f in fams]
    br = [branching_compute(f, arm)["branched"] for f in fams]
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    x = np.arange(len(fams))
    ax.bar(x - 0.2, sep, 0.4, label="separate runs (cosine)", color="0.6")
    ax.bar(x + 0.2, br, 0.4, label=f"branched ({arm}): stable phase + cooldowns", color="C1")
    for xi, s, b in zip(x, sep, br):
        ax.text(xi + 0.2, b, f"-{1 - b / s:.0%}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, ["+".join(str(L) for L in f) for f in fams])
    ax.set(xlabel="family of run lengths (steps)", ylabel="training steps")
    if len(saved):
        text = "\n".join(f"{r.arm}: {r.saved_fraction:.0%} saved (measured)" for r in saved.itertuples())
        ax.text(0.02, 0.97, text, transform=ax.transAxes, va="top", fontsize=7)
    ax.legend(fontsize=7, loc="center left")
    return fig
