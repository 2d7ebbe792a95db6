"""What a notebook's training runs will cost before they start: planned FLOPs, tokens and an
estimated wall time on the current device, checked against the outer time limit.

- ``PlannedRun(label, model, tokens)``: one training run a notebook will do (a
  ``lib.models.ModelConfig`` trained on ``tokens`` tokens; optional ``seq_len`` and
  ``batch_size`` where they differ from the model's ``max_seq_len`` and the default);
- ``estimate_cost(runs, device)``: a ``CostEstimate``: FLOPs per run by Chinchilla's
  Appendix-F count (``lib.scaling.flops``; an MoE layer counts its router and its active
  experts), the number of runs, the total tokens, a training throughput measured over a few
  real AdamW steps per distinct model shape on ``device``, and the estimated hours;
- ``check_budget(estimate, allow_over=False)``: raises a ``ValueError`` naming the estimate and
  the limit when the estimate exceeds it.

A notebook's full profile prints the estimate and refuses to start over the limit unless its
``allow_over_budget`` parameter is set; ``invoke run --profile full --dry-run`` prints it for
every notebook without training.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from lib.core import check_bool, check_int, check_number, check_positive, pick_device
from lib.models import ModelConfig, Transformer
from lib.scaling.flops import chinchilla_flops_per_token
from lib.scaling.planning import measure_training_throughput

__all__ = ["LIMIT_HOURS", "PlannedRun", "CostEstimate", "run_flops_per_token", "estimate_cost",
           "check_budget", "costed_start"]

LIMIT_HOURS = 6.0          # the outer limit of one notebook's full profile
CPU_MEASURE_TOKENS = 1024  # tokens per timed step off CUDA: a CPU's tokens/s barely depends on batch
SMOKE_MEASURE_S = 2.0      # a smoke run exercises the costing path; its numbers are not the point
DEFAULT_BATCH = 8          # sequences per timed step on CUDA when a run gives no batch_size


@dataclass(frozen=True)
class PlannedRun:
    """One training run a notebook will do: ``model`` trained on ``tokens`` tokens.

    ``label`` names it in the cost table. ``seq_len`` is the training sequence length (default
    ``model.max_seq_len``); ``batch_size`` the sequences per optimizer step, used to measure
    throughput at the run's own batch on CUDA (default: 8).
    """

    label: str
    model: ModelConfig
    tokens: int
    seq_len: int | None = None
    batch_size: int | None = None

    def __post_init__(self):
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"label must be a non-empty string, got {self.label!r}")
        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"model must be a lib.models.ModelConfig, got {type(self.model).__name__}")
        object.__setattr__(self, "tokens", check_int("tokens", self.tokens, 0))
        if self.seq_len is not None:
            object.__setattr__(self, "seq_len", check_int("seq_len", self.seq_len, 1))
        if self.batch_size is not None:
            object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size, 1))

    @property
    def train_len(self) -> int:
        """The training sequence length: ``seq_len``, else the model's ``max_seq_len``."""
        return self.seq_len if self.seq_len is not None else self.model.max_seq_len


def run_flops_per_token(model: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token of ``model`` at ``seq_len`` by Chinchilla's Appendix F.

    An MoE layer counts as the dense SwiGLU of its active experts (``top_k``, plus the shared
    expert) plus its router (2 d_model n_experts forward FLOPs per token), x3 for training.
    """
    if not isinstance(model, ModelConfig):
        raise ValueError(f"model must be a lib.models.ModelConfig, got {type(model).__name__}")
    seq_len = model.max_seq_len if seq_len is None else check_int("seq_len", seq_len, 1)
    fields = model.to_dict()
    router = 0.0
    if model.mlp == "moe":
        # The same defaults as lib.models.MoEFeedForward.
        n_experts = int(model.moe.get("n_experts", 8))
        active = int(model.moe.get("top_k", 2)) + int(bool(model.moe.get("shared_expert", False)))
        fields.update(mlp="swiglu", d_ff=active * model.d_ff)
        router = 3.0 * model.n_layers * 2.0 * model.d_model * n_experts
    return chinchilla_flops_per_token(fields, seq_len) + router


@dataclass(frozen=True)
class CostEstimate:
    """The cost of a list of ``PlannedRun``: per-run ``rows`` (a DataFrame, see ``table``),
    totals, the device it was estimated on and the limit it is checked against."""

    rows: pd.DataFrame
    device: str
    limit_hours: float

    @property
    def n_runs(self) -> int:
        return len(self.rows)

    @property
    def total_tokens(self) -> int:
        return int(self.rows["tokens"].sum()) if self.n_runs else 0

    @property
    def total_flops(self) -> float:
        return float(self.rows["flops"].sum()) if self.n_runs else 0.0

    @property
    def hours(self) -> float:
        """Estimated wall time of all runs, one after another, in hours."""
        return float(self.rows["hours"].sum()) if self.n_runs else 0.0

    @property
    def over_budget(self) -> bool:
        return self.hours > self.limit_hours

    def table(self) -> pd.DataFrame:
        """One row per run: label, n_params, seq_len, tokens, flops_per_token, flops,
        tokens_per_second, throughput ("measured", "derived" from a measured shape's FLOP/s
        when the measuring time ran out, or "given") and hours."""
        return self.rows.copy()

    def summary(self) -> str:
        """One line: runs, FLOPs, tokens, estimated hours against the limit."""
        verdict = "OVER the limit" if self.over_budget else "within the limit"
        return (f"{self.n_runs} planned runs on {self.device}: {self.total_flops:.3g} FLOPs, "
                f"{self.total_tokens:.3g} tokens, estimated {_fmt_hours(self.hours)} "
                f"(limit {_fmt_hours(self.limit_hours)}): {verdict}")

    def __str__(self) -> str:
        if not self.n_runs:
            return self.summary()
        shown = self.rows
        if len(shown) > 20:  # a long grid: its head and tail say enough
            shown = pd.concat([shown.head(12), shown.tail(6)])
        text = shown.to_string(index=False, formatters={
            "n_params": "{:,}".format, "tokens": "{:.3g}".format, "flops_per_token": "{:.3g}".format,
            "flops": "{:.3g}".format, "tokens_per_second": "{:,.0f}".format, "hours": "{:.3g}".format})
        lines = text.splitlines()
        if len(shown) < self.n_runs:
            lines.insert(13, f"  ... {self.n_runs - len(shown)} more runs ...")
        return "\n".join([self.summary(), *lines])


def _fmt_hours(hours: float) -> str:
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:.2f} h"


def _shape_key(run: PlannedRun, batch: int) -> str:
    return json.dumps([run.model.to_dict(), run.train_len, batch], sort_keys=True, default=str)


def estimate_cost(runs: Sequence[PlannedRun], device=None, *, measure_steps: int = 3,
                  limit_hours: float = LIMIT_HOURS, tokens_per_second: float | None = None,
                  flops_per_second: float | None = None, measure_tokens: int | None = None,
                  max_measure_s: float = 30.0, seed: int = 0) -> CostEstimate:
    """The cost of ``runs`` (``PlannedRun``) on ``device`` (default: ``pick_device()``).

    Throughput: ``tokens_per_second`` (one number for every run) or ``flops_per_second`` (the
    achieved training FLOP/s; each run's tokens/s is it over its FLOPs per token) when given,
    which makes the estimate deterministic; otherwise measured per distinct model shape with
    ``lib.scaling.measure_training_throughput`` (``measure_steps`` timed AdamW steps after an
    untimed warm-up, bf16 autocast on CUDA) at the run's batch on CUDA and at about
    ``measure_tokens`` tokens per step elsewhere (default ``CPU_MEASURE_TOKENS``). Shapes are
    measured from the cheapest up; once ``max_measure_s`` seconds are spent, the remaining
    shapes get the achieved FLOP/s of the largest measured one (their ``throughput`` is
    "derived"). torch's random state is left as it was.

    Hours assume the runs go one after another on this device.
    """
    if isinstance(runs, PlannedRun) or not isinstance(runs, Sequence):
        raise ValueError(f"runs must be a list of PlannedRun, got {type(runs).__name__}")
    bad = [i for i, r in enumerate(runs) if not isinstance(r, PlannedRun)]
    if bad:
        raise ValueError(f"runs must hold only PlannedRun; entries {bad[:5]} are not")
    measure_steps = check_int("measure_steps", measure_steps, 1)
    limit_hours = check_positive("limit_hours", limit_hours)
    if tokens_per_second is not None and flops_per_second is not None:
        raise ValueError("give tokens_per_second or flops_per_second, not both")
    if tokens_per_second is not None:
        tokens_per_second = check_positive("tokens_per_second", tokens_per_second)
    if flops_per_second is not None:
        flops_per_second = check_positive("flops_per_second", flops_per_second)
    if measure_tokens is not None:
        measure_tokens = check_int("measure_tokens", measure_tokens, 1)
    max_measure_s = check_number("max_measure_s", max_measure_s, 0)
    device = device if isinstance(device, torch.device) else pick_device(device)

    params: dict[str, int] = {}
    flops_per_token = [run_flops_per_token(r.model, r.train_len) for r in runs]
    for r in runs:
        key = json.dumps(r.model.to_dict(), sort_keys=True, default=str)
        if key not in params:
            with torch.device("meta"):  # the real count, no memory
                params[key] = int(Transformer(r.model).num_params())

    if tokens_per_second is not None:
        tps = [tokens_per_second] * len(runs)
        how = ["given"] * len(runs)
    elif flops_per_second is not None:
        tps = [flops_per_second / f for f in flops_per_token]
        how = ["given"] * len(runs)
    else:
        tps, how = _measure(runs, flops_per_token, device, measure_steps, measure_tokens,
                            max_measure_s, seed)

    rows = pd.DataFrame({
        "label": [r.label for r in runs],
        "n_params": [params[json.dumps(r.model.to_dict(), sort_keys=True, default=str)] for r in runs],
        "seq_len": [r.train_len for r in runs],
        "tokens": [r.tokens for r in runs],
        "flops_per_token": flops_per_token,
        "flops": [f * r.tokens for f, r in zip(flops_per_token, runs)],
        "tokens_per_second": tps,
        "throughput": how,
        "hours": [r.tokens / t / 3600.0 for r, t in zip(runs, tps)],
    })
    return CostEstimate(rows=rows, device=_device_name(device), limit_hours=limit_hours)


def _measure(runs, flops_per_token, device, steps, measure_tokens, max_measure_s, seed):
    """Measured tokens/s per run (one measurement per distinct shape), and how each was got."""
    shapes: dict[str, tuple[PlannedRun, int, float]] = {}
    keys = []
    for run, fpt in zip(runs, flops_per_token):
        if device.type == "cuda":
            batch = run.batch_size or DEFAULT_BATCH
            if measure_tokens is not None:
                batch = max(1, min(batch, measure_tokens // run.train_len))
        else:
            batch = max(1, (measure_tokens or CPU_MEASURE_TOKENS) // run.train_len)
        key = _shape_key(run, batch)
        shapes.setdefault(key, (run, batch, fpt))
        keys.append(key)
    measured: dict[str, float] = {}
    derived_from: float | None = None   # achieved FLOP/s of the largest shape measured so far
    spent = 0.0
    fork = [torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):  # measuring must not shift a notebook's seeds
        for key, (run, batch, fpt) in sorted(shapes.items(), key=lambda kv: (kv[1][2], kv[0])):
            if measured and spent >= max_measure_s:
                break
            shape = dict(run.model.to_dict(), max_seq_len=run.train_len)
            t0 = time.perf_counter()
            measured[key] = measure_training_throughput(shape, batch_size=batch, device=device,
                                                        steps=steps, seed=seed)
            spent += time.perf_counter() - t0
            derived_from = measured[key] * fpt
    tps, how = [], []
    for key, fpt in zip(keys, flops_per_token):
        if key in measured:
            tps.append(measured[key])
            how.append("measured")
        else:
            tps.append(derived_from / fpt)
            how.append("derived")
    return tps, how


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def check_budget(estimate: CostEstimate, allow_over: bool = False) -> CostEstimate:
    """Return ``estimate`` if it is within its limit (or ``allow_over``); otherwise raise a
    ``ValueError`` naming the estimated hours, the limit, the runs and FLOPs, and the way out."""
    if not isinstance(estimate, CostEstimate):
        raise ValueError(f"estimate must be a CostEstimate from estimate_cost, got {type(estimate).__name__}")
    allow_over = check_bool("allow_over", allow_over)
    if estimate.over_budget and not allow_over:
        raise ValueError(
            f"estimated {estimate.hours:.3g} h for {estimate.n_runs} runs "
            f"({estimate.total_flops:.3g} FLOPs, {estimate.total_tokens:.3g} tokens) on {estimate.device} "
            f"exceeds the limit of {estimate.limit_hours:g} h; use a faster device, cut the runs, or set "
            "allow_over_budget=True to run anyway")
    return estimate



def costed_start(runs: Sequence[PlannedRun], device=None, *, allow_over: bool = False,
                 smoke: bool = False) -> CostEstimate:
    """A full-profile notebook's first step: ``estimate_cost(runs, device)`` then
    ``check_budget`` (raises over the outer limit unless ``allow_over``). A ``smoke`` run measures
    throughput for at most ``SMOKE_MEASURE_S`` seconds (the remaining shapes are derived), since
    it only proves the path works. Print the result for the cost table."""
    allow_over, smoke = check_bool("allow_over", allow_over), check_bool("smoke", smoke)
    kw = {"max_measure_s": SMOKE_MEASURE_S} if smoke else {}
    return check_budget(estimate_cost(runs, device, **kw), allow_over=allow_over)
