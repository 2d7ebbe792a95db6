"""The one training loop every notebook uses.

``train(model, data, TrainConfig(steps=..., batch_size=..., seq_len=...))`` runs AdamW (or any
optimizers you pass) with a ``lib.schedules`` schedule stepped once per OPTIMIZER step, so
gradient accumulation splits each step's batch into micro-batches without changing the data
seen or the schedule's length. Batches come from ``data.batch(split, step, ...)``, a pure
function of the step, which makes checkpoint/resume exact and DDP sharding trivial.

What it does for you: gradient clipping, bf16 autocast on CUDA, held-out evaluation every
``eval_every`` steps (loss, accuracy, perplexity), a tqdm bar, NaN/divergence detection with
a clear message, atomic checkpoints and exact resume, DDP when ``torch.distributed`` is
initialised (``torchrun ... -m lib.training``), and callbacks (``on_step_start``,
``on_step_end``, ``on_eval``) for extensions such as the predictive trainer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from lib.core import (
    autocast,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_positive,
    check_seed,
    pick_device,
)
from lib.data import synthetic_corpus
from lib.models import ModelConfig, Transformer
from lib.schedules import WarmupCosine, attach
from lib.training.optim import adamw, check_betas


class TrainingDiverged(RuntimeError):
    """The training loss became NaN/inf, or exceeded both ``divergence_factor`` x its best value
    and its first value."""


@dataclass
class TrainConfig:
    """Settings of one training run. Counts are in optimizer steps unless named otherwise.

    ``batch_size`` is sequences per optimizer step (per process under DDP); ``grad_accum``
    splits it into that many micro-batches. ``schedule`` is a ``lib.schedules`` object whose
    ``total_steps`` should equal ``steps``; ``None`` gives warm-up 5% + cosine to a 10% floor.
    ``lr`` is the peak LR of the default AdamW (ignored when optimizers are passed in).
    """

    steps: int
    batch_size: int = 16
    seq_len: int = 64
    grad_accum: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Any = None
    grad_clip: float | None = 1.0
    eval_every: int = 0
    eval_batches: int | None = 8
    eval_batch_size: int | None = None
    seed: int = 0
    device: str | None = None
    divergence_factor: float = 10.0
    on_divergence: str = "raise"
    checkpoint_path: str | None = None
    checkpoint_every: int = 0
    resume: bool = True
    log_every: int = 1
    progress: bool = True
    desc: str = "train"
    compile: bool = False  # torch.compile the training forward: fuses element-wise work (GPU: large
    #                        gains; CPU: needs a C++ compiler); the first steps pay the compilation

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every"):
            setattr(self, name, check_int(name, getattr(self, name), 1))
        if self.batch_size % self.grad_accum:
            raise ValueError(f"grad_accum={self.grad_accum} must divide batch_size={self.batch_size}")
        self.lr = check_positive("lr", self.lr)
        self.weight_decay = check_positive("weight_decay", self.weight_decay, allow_zero=True)
        self.betas = check_betas(self.betas)
        if self.grad_clip is not None:
            self.grad_clip = check_positive("grad_clip", self.grad_clip)
        self.eval_every = check_int("eval_every", self.eval_every, 0)
        self.checkpoint_every = check_int("checkpoint_every", self.checkpoint_every, 0)
        for name in ("eval_batches", "eval_batch_size"):
            if getattr(self, name) is not None:
                setattr(self, name, check_int(name, getattr(self, name), 1))
        self.seed = check_seed("seed", self.seed)
        self.divergence_factor = check_number("divergence_factor", self.divergence_factor, 1.0, strict_min=True)
        check_choice("on_divergence", self.on_divergence, ("raise", "stop"))
        for name in ("resume", "progress", "compile"):
            setattr(self, name, check_bool(name, getattr(self, name)))
        if self.checkpoint_path is not None and not isinstance(self.checkpoint_path, (str, os.PathLike)):
            raise ValueError(f"checkpoint_path must be None or a path, got {self.checkpoint_path!r}")
        if self.schedule is not None and getattr(self.schedule, "total_steps", self.steps) != self.steps:
            raise ValueError(f"schedule.total_steps={self.schedule.total_steps} differs from steps={self.steps}: "
                             "a schedule is counted in optimizer steps and must span the run")

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum


@dataclass
class TrainState:
    """What callbacks see. Setting ``stop = True`` ends the run after the current step."""

    config: TrainConfig
    model: nn.Module
    data: Any
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any]
    device: torch.device
    step: int = 0
    loss: float = float("nan")
    tokens: int = 0
    history: list[dict] = field(default_factory=list)
    stop: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    """``history``: one row per logged step (train loss, lr, grad norm, eval columns);
    ``final``: final held-out metrics and run totals."""

    history: pd.DataFrame
    final: dict
    model: nn.Module
    elapsed_s: float


def _ddp() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def default_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1,
                      betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW (``adamw``: fused where torch supports it) with weight decay on matrices only
    (norm gains, biases and 1-D params excluded)."""
    lr = check_positive("lr", lr)
    weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
    betas = check_betas(betas)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return adamw([g for g in groups if g["params"]], lr=lr, betas=betas)


def default_schedule(steps: int):
    """Warm-up 5% of steps, cosine to a 10% floor."""
    steps = check_int("steps", steps, 1)
    return WarmupCosine(total_steps=steps, warmup_steps=max(1, round(0.05 * steps)) if steps > 1 else 0,
                        min_lr_ratio=0.1)


@torch.no_grad()
def evaluate(model: nn.Module, data, seq_len: int, batch_size: int = 16,
             max_batches: int | None = None, device=None) -> dict[str, float]:
    """Held-out metrics over deterministic validation windows: token-weighted mean ``loss``
    (nats/token), next-token ``accuracy`` and ``perplexity`` = exp(loss)."""
    seq_len, batch_size = check_int("seq_len", seq_len, 1), check_int("batch_size", batch_size, 1)
    if max_batches is not None:
        max_batches = check_int("max_batches", max_batches, 1)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        for x, y in data.eval_batches(seq_len, batch_size, max_batches):
            x, y = x.to(device), y.to(device)
            with autocast(device):
                logits = model(x).logits
            logits = logits.float()
            total_loss += torch.nn.functional.cross_entropy(
                logits.view(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
            count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the validation split yielded no batches: it is shorter than seq_len + 1")
    loss = total_loss / count
    return {"loss": loss, "accuracy": correct / count, "perplexity": math.exp(min(loss, 700.0))}


def _callback(callbacks: Sequence[Any], name: str, *args) -> None:
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(*args)


def _save_checkpoint(path: Path, state: TrainState) -> None:
    """Atomic: write to a temporary file in the same folder, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": state.step,
        "tokens": state.tokens,
        "model": _unwrap(state.model).state_dict(),
        "optimizers": [opt.state_dict() for opt in state.optimizers],
        "schedulers": [s.state_dict() for s in state.schedulers],
        "history": state.history,
        "torch_rng": torch.get_rng_state(),
        "config": {k: v for k, v in asdict(state.config).items() if k != "schedule"},
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, state: TrainState) -> None:
    payload = torch.load(path, map_location=state.device, weights_only=False)
    _unwrap(state.model).load_state_dict(payload["model"])
    if len(payload["optimizers"]) != len(state.optimizers):
        raise ValueError(f"checkpoint {path} holds {len(payload['optimizers'])} optimizers, "
                         f"this run has {len(state.optimizers)}")
    for opt, sd in zip(state.optimizers, payload["optimizers"], strict=True):
        opt.load_state_dict(sd)
    for sched, sd in zip(state.schedulers, payload["schedulers"], strict=True):
        sched.load_state_dict(sd)
    state.step, state.tokens, state.history = payload["step"], payload["tokens"], payload["history"]
    torch.set_rng_state(payload["torch_rng"])


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train(model: nn.Module, data, config: TrainConfig, optimizers=None, schedulers=None,
          callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train ``model`` on ``data`` for ``config.steps`` optimizer steps; see module docstring.

    ``optimizers``: one optimizer or a list (e.g. Muon + AdamW from ``lib.training.optim``); default
    AdamW. ``schedulers``: matching ``LRScheduler``s; default ``lib.schedules.attach`` of
    ``config.schedule`` to each optimizer.
    """

    if not hasattr(data, "batch") or not hasattr(data, "eval_batches"):
        raise ValueError("data must provide batch(split, step, ...) and eval_batches(...) (see lib.data.TokenData)")
    rank, world = _ddp()
    device = pick_device(config.device)
    model = model.to(device)
    model.train()
    if optimizers is None:
        optimizers = [default_optimizer(model, config.lr, config.weight_decay, config.betas)]
    elif isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    optimizers = list(optimizers)
    if schedulers is None:
        schedule = config.schedule if config.schedule is not None else default_schedule(config.steps)
        schedulers = [attach(opt, schedule) for opt in optimizers]
    schedulers = list(schedulers) if isinstance(schedulers, (list, tuple)) else [schedulers]
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # Only the training forward is compiled: checkpoints and evaluation see the plain module.
    forward = torch.compile(net) if config.compile else net
    state = TrainState(config=config, model=net, data=data, optimizers=optimizers,
                       schedulers=schedulers, device=device)
    ckpt = Path(config.checkpoint_path) if config.checkpoint_path else None
    if ckpt is not None and config.resume and ckpt.exists():
        _load_checkpoint(ckpt, state)
    params = [p for p in model.parameters() if p.requires_grad]
    tokens_per_step = config.batch_size * config.seq_len * world
    eval_bs = config.eval_batch_size or config.micro_batch_size
    best, first = float("inf"), None
    diverged = None
    elapsed_before = state.history[-1]["elapsed_s"] if state.history else 0.0
    start = time.perf_counter()

    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=state.step, desc=config.desc,
               disable=not config.progress or rank != 0, leave=False, dynamic_ncols=True)
    while state.step < config.steps and not state.stop:
        step = state.step
        _callback(callbacks, "on_step_start", state)
        x, y = data.batch("train", step, config.batch_size, config.seq_len, seed=config.seed,
                          rank=rank, world_size=world)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        mb = config.micro_batch_size
        for i in range(config.grad_accum):
            sync = i == config.grad_accum - 1 or world == 1
            ctx = net.no_sync() if not sync and world > 1 else contextlib.nullcontext()
            with ctx, autocast(device):
                out = forward(x[i * mb:(i + 1) * mb], y[i * mb:(i + 1) * mb])
                loss = out.loss / config.grad_accum
            loss.backward()
            loss_sum += loss.item()
        grad_norm = (torch.nn.utils.clip_grad_norm_(params, config.grad_clip).item()
                     if config.grad_clip else float("nan"))
        lr = optimizers[0].param_groups[0]["lr"]
        for opt in optimizers:
            opt.step()
        for sched in schedulers:
            sched.step()
        state.step, state.loss = step + 1, loss_sum
        state.tokens += tokens_per_step
        first = loss_sum if first is None else first
        # Diverged: NaN/inf, or above divergence_factor x the best loss *and* above the first one
        # (a spike on a near-zero loss, e.g. a memorised retrieval task, is not a divergence).
        if not math.isfinite(loss_sum) or (step >= 1 and loss_sum > max(config.divergence_factor * best, first)):
            diverged = (f"training diverged at step {step}: loss {loss_sum:.4g} "
                        f"(best so far {best:.4g}, lr {lr:.3g}); lower the LR, lengthen warm-up "
                        f"or tighten grad_clip")
        best = min(best, loss_sum)
        row = None
        if step % config.log_every == 0 or state.step == config.steps or diverged:
            row = {"step": state.step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
                   "tokens": state.tokens,
                   "elapsed_s": elapsed_before + time.perf_counter() - start}
            state.history.append(row)
        do_eval = config.eval_every and (state.step % config.eval_every == 0 or state.step == config.steps)
        if do_eval and not diverged:
            metrics = evaluate(model, data, config.seq_len, eval_bs, config.eval_batches, device)
            if row is None:
                row = {"step": state.step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
                       "tokens": state.tokens, "elapsed_s": elapsed_before + time.perf_counter() - start}
                state.history.append(row)
            row.update({f"val_{k}": v for k, v in metrics.items()})
            _callback(callbacks, "on_eval", state, metrics)
        _callback(callbacks, "on_step_end", state)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}", refresh=False)
        if diverged:
            break
        if ckpt is not None and rank == 0 and config.checkpoint_every and state.step % config.checkpoint_every == 0:
            _save_checkpoint(ckpt, state)
    bar.close()
    elapsed = elapsed_before + time.perf_counter() - start
    if diverged and config.on_divergence == "raise":
        raise TrainingDiverged(diverged)
    final = {"steps": state.step, "tokens": state.tokens, "train_loss": state.loss,
             "elapsed_s": elapsed, "tokens_per_s": state.tokens / elapsed if elapsed > 0 else float("nan"),
             "diverged": bool(diverged)}
    if not diverged:
        final.update({f"val_{k}": v for k, v in
                      evaluate(model, data, config.seq_len, eval_bs, config.eval_batches, device).items()})
    if ckpt is not None and rank == 0 and config.checkpoint_every:
        _save_checkpoint(ckpt, state)
    return TrainResult(history=pd.DataFrame(state.history), final=final, model=model, elapsed_s=elapsed)


# ------------------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> None:
    """Train a ``lib.models.Transformer`` on the embedded synthetic corpus from the command line.

    Single process:   python -m lib.training --config run.json --out weights.pt
    Data parallel:    torchrun --nproc_per_node 2 -m lib.training --config run.json --out weights.pt
    ``run.json`` holds {"model": {ModelConfig fields}, "train": {TrainConfig fields},
    "corpus": {synthetic_corpus kwargs}}; rank 0 writes the final weights and metrics.
    """

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON file with model/train/corpus sections")
    parser.add_argument("--out", required=True, help="where rank 0 writes the final state_dict")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.config).read_text())
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        torch.manual_seed(spec.get("init_seed", 0))
        model = Transformer(ModelConfig(**spec.get("model", {})))
        data = synthetic_corpus(**spec.get("corpus", {}))
        result = train(model, data, TrainConfig(**{"progress": False, **spec.get("train", {})}))
        if _ddp()[0] == 0:
            torch.save(model.state_dict(), args.out)
            Path(args.out).with_suffix(".json").write_text(json.dumps(result.final, indent=1))
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
