"""The one training loop every notebook uses.

``train(model, data, TrainConfig(steps=..., batch_size=..., seq_len=...))`` runs AdamW (or any
optimizers you pass) with a ``lib.schedules`` schedule stepped once per OPTIMIZER step, so
gradient accumulation splits each step's batch into micro-batches without changing the data
seen or the schedule's length. Batches come from ``data.batch(split, step, ...)``, a pure
function of the step, which makes checkpoint/resume exact and DDP sharding trivial.

What it does for you: gradient clipping, bf16 autocast on CUDA, held-out evaluation every
``eval_every`` steps (loss, accuracy, perplexity), a tqdm bar, NaN/divergence detection with
a clear message, atomic checkpoints and exact resume, DDP when ``torch.distributed`` is
initialised (``torchrun ... -m lib.training``) or FSDP2 with ``parallel="fsdp"`` (sharded
weights and checkpoints, ``lib.training.fsdp``), and callbacks (``on_step_start``,
``on_step_end``, ``on_eval``, ``on_train_end``) for extensions such as the predictive trainer
and the TensorBoard logger (added by itself inside a ``lib.training.run_logdir`` block).

Checkpoints (``checkpoint_path`` + ``checkpoint_every``; file format in
``lib.training.checkpoint``) hold the weights, optimizer and scheduler states, the step, the
last loss, the divergence detector's state, the torch RNG states (CPU, and CUDA when in use)
and a description of the run: the ``RESUME_COMPARED`` fields of ``TrainConfig`` (the schedule
by its ``config()``), the model's class and ``config`` dataclass, and each optimizer's class
and param-group hyper-parameters (all but the live ``lr`` and execution flags such as
``fused``/``foreach``). A resumed run is bit-identical to an uninterrupted one and reports the
same ``final`` metrics (timings aside); a finished checkpoint returns its run's ``final``
without training. Resuming with a different description raises a ``ValueError`` listing each
differing field (saved -> current) unless ``resume_changed_config=True``, which keeps the
weights, optimizer moments, step and history and continues with the current settings
(current param-group hyper-parameters and schedule peaks). Not compared, as they do not
change the trajectory or the final metrics: ``eval_every``, ``log_every``, ``device``,
``compile``, ``on_divergence``, ``progress``, ``desc`` and the checkpoint/resume settings.
A diverged state is never saved: with ``on_divergence="stop"`` the last good checkpoint stays.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
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
    check_token_ids,
    pick_device,
)
from lib.data import synthetic_corpus
from lib.models import ModelConfig, Transformer
from lib.schedules import WarmupCosine, attach
from lib.training.checkpoint import (
    CheckpointError,
    config_differences,
    load_checkpoint,
    save_checkpoint,
)
from lib.training.fsdp import (
    PARALLEL,
    clip_sharded_grad_norm,
    full_model_state_dict,
    is_sharded,
    load_sharded_meta,
    load_sharded_state,
    save_sharded_checkpoint,
    shard_model,
    sharded_checkpoint_exists,
)
from lib.training.optim import adamw, check_betas
from lib.training.tensorboard import TensorBoardLogger, active_logdir


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

    ``resume=True`` continues from ``checkpoint_path`` when it exists; a checkpoint made with
    other settings (see the module docstring) is a ``ValueError`` unless
    ``resume_changed_config=True``. ``steps`` below the checkpoint's step is always an error.

    ``parallel`` says how a run under ``torchrun`` spreads over its processes: ``"ddp"`` (each
    process holds the whole model; a single process trains alone) or ``"fsdp"`` (FSDP2: each
    process holds a shard of every block, and ``checkpoint_path`` is a folder of sharded
    checkpoints; needs ``torch.distributed`` initialised). Both train on the same global batch,
    ``batch_size`` x world size, and follow the same trajectory up to float rounding.
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
    resume_changed_config: bool = False
    log_every: int = 1
    progress: bool = True
    desc: str = "train"
    compile: bool = False  # torch.compile the training forward: fuses element-wise work (GPU: large
    #                        gains; CPU: needs a C++ compiler); the first steps pay the compilation
    parallel: str = "ddp"

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
        check_choice("parallel", self.parallel, PARALLEL)
        for name in ("resume", "resume_changed_config", "progress", "compile"):
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
            x, y = to_device((x, y), device)
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


def to_device(tensors: Sequence[torch.Tensor], device) -> tuple[torch.Tensor, ...]:
    """Copy a batch's tensors to ``device``. To CUDA they go through pinned (page-locked) host
    memory with ``non_blocking=True``, so the copy overlaps the GPU's work on the previous step
    (from pageable memory a "non-blocking" copy is synchronous); elsewhere a plain ``.to``."""
    device = torch.device(device)
    if device.type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) if t.device.type == "cpu"
                     else t.to(device, non_blocking=True) for t in tensors)
    return tuple(t.to(device) for t in tensors)


def _callback(callbacks: Sequence[Any], name: str, *args) -> None:
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(*args)


# TrainConfig fields a checkpoint must agree on to be resumed (they change the trajectory or the
# final metrics); the others (eval_every, log_every, device, compile, on_divergence, progress,
# desc, checkpoint_*, resume*) are not compared.
RESUME_COMPARED = ("steps", "batch_size", "seq_len", "grad_accum", "lr", "weight_decay", "betas",
                   "schedule", "grad_clip", "seed", "eval_batches", "eval_batch_size", "divergence_factor")
# Param-group entries that are not hyper-parameters of the run: the live LR and execution flags.
_GROUP_KEYS_IGNORED = frozenset({"params", "lr", "foreach", "fused", "capturable", "differentiable"})


def _plain(value: Any) -> Any:
    """``value`` as plain data (numbers, strings, lists, dicts) that ``weights_only`` loads and
    ``==`` compares: tuples become lists, tensors numbers, objects their ``config()`` or repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if callable(getattr(value, "config", None)):
        return _plain(value.config())
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if callable(getattr(value, "item", None)):  # numpy scalars
        return _plain(value.item())
    return repr(value)


def _describe_run(config: TrainConfig, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> dict:
    """The flat description a checkpoint stores and a resume compares (module docstring)."""
    desc = {f"train.{name}": _plain(getattr(config, name)) for name in RESUME_COMPARED}
    desc["train.schedule"] = _plain(config.schedule if config.schedule is not None
                                    else default_schedule(config.steps))
    net = _unwrap(model)
    desc["model.class"] = type(net).__name__
    model_config = getattr(net, "config", None)
    if is_dataclass(model_config) and not isinstance(model_config, type):
        desc.update({f"model.{k}": _plain(v) for k, v in asdict(model_config).items()})
    for i, opt in enumerate(optimizers):
        desc[f"optimizer[{i}].class"] = type(opt).__name__
        for j, group in enumerate(opt.param_groups):
            desc[f"optimizer[{i}].group[{j}].n_params"] = sum(p.numel() for p in group["params"])
            desc.update({f"optimizer[{i}].group[{j}].{k}": _plain(v) for k, v in group.items()
                         if k not in _GROUP_KEYS_IGNORED})
    return desc


def _save_state(path: Path, state: TrainState, description: dict, detector: dict, final: dict | None) -> None:
    """Checkpoint ``state`` (``final``: the finished run's metrics, None while unfinished). A
    sharded model's weights and optimizer states go to its shards (every rank calls this)."""
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    sharded = is_sharded(state.model)
    payload = {
        "step": state.step,
        "tokens": state.tokens,
        "loss": state.loss,
        "detector": dict(detector),
        "model": None if sharded else _unwrap(state.model).state_dict(),
        "optimizers": [None if sharded else opt.state_dict() for opt in state.optimizers],
        "schedulers": [s.state_dict() for s in state.schedulers],
        "history": state.history,
        "rng": {"torch": torch.get_rng_state(), "cuda": list(cuda_rng)},
        "config": description,
        "final": final,
    }
    if sharded:
        save_sharded_checkpoint(path, state.model, state.optimizers, payload)
    else:
        save_checkpoint(path, payload)


_PAYLOAD_KEYS = ("step", "tokens", "loss", "detector", "model", "optimizers", "schedulers", "history",
                 "rng", "config", "final")


def _restore_state(path: Path, state: TrainState, description: dict) -> tuple[dict, dict | None]:
    """Load ``path`` into ``state``; returns the divergence detector's state and the saved
    ``final`` metrics (None unless the checkpoint is a finished run with the same settings)."""
    config = state.config
    sharded = is_sharded(state.model)
    payload = load_sharded_meta(path) if sharded else load_checkpoint(path, map_location=state.device)
    missing = [k for k in _PAYLOAD_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}: not written by lib.training.train")
    changes = config_differences(payload["config"], description)
    if changes and not config.resume_changed_config:
        raise CheckpointError(
            f"checkpoint {path} was made with other settings (saved -> current): {'; '.join(changes)}. "
            "Use another checkpoint_path, resume=False to start over, or resume_changed_config=True to "
            "continue its weights and optimizer state under the current settings")
    if payload["step"] > config.steps:
        raise CheckpointError(f"checkpoint {path} is at step {payload['step']}, beyond steps={config.steps}")
    current = [[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] for opt in state.optimizers]
    if sharded:  # the weights and optimizer states, from every rank's shards
        load_sharded_state(path, payload, state.model, state.optimizers)
    else:
        try:
            _unwrap(state.model).load_state_dict(payload["model"])
        except (RuntimeError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {e}") from e
    if len(payload["optimizers"]) != len(state.optimizers) or len(payload["schedulers"]) != len(state.schedulers):
        raise CheckpointError(f"checkpoint {path} holds {len(payload['optimizers'])} optimizers and "
                              f"{len(payload['schedulers'])} schedulers, this run has {len(state.optimizers)} "
                              f"and {len(state.schedulers)}")
    try:
        for opt, sd in zip(state.optimizers, payload["optimizers"], strict=True):
            if not sharded:
                opt.load_state_dict(sd)
        if changes:  # resume_changed_config: the current hyper-parameters and peaks win
            for opt, groups in zip(state.optimizers, current, strict=True):
                for group, now in zip(opt.param_groups, groups, strict=True):
                    group.update({k: v for k, v in now.items() if k not in ("lr", "initial_lr")})
        for sched, sd in zip(state.schedulers, payload["schedulers"], strict=True):
            if changes:
                now = sched.state_dict()
                sd = {**sd, **{k: now[k] for k in ("base_lrs", "schedule") if k in now}}
            sched.load_state_dict(sd)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path}: optimizer/scheduler state does not fit this run: {e}") from e
    state.step, state.tokens, state.loss = payload["step"], payload["tokens"], payload["loss"]
    state.history = list(payload["history"])
    torch.set_rng_state(payload["rng"]["torch"].cpu())
    if torch.cuda.is_available():
        for i, rng in enumerate(payload["rng"]["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng.cpu(), i)
    final = payload["final"] if payload["final"] is not None and not changes else None
    return dict(payload["detector"]), final


def _check_data_fits(model: nn.Module, data, config: TrainConfig, rank: int, world: int) -> None:
    """Before any compute: ``seq_len`` fits the model's ``max_seq_len`` and both splits, and the
    first training and validation batches hold ids inside the model's vocabulary."""
    model_config = getattr(_unwrap(model), "config", None)
    max_len = getattr(model_config, "max_seq_len", None)
    if isinstance(max_len, int) and config.seq_len > max_len:
        raise ValueError(f"seq_len={config.seq_len} exceeds the model's max_seq_len={max_len}; train at "
                         f"seq_len <= {max_len} or build the model with max_seq_len >= {config.seq_len}")
    # Drawing the first batches raises the data's own ValueError when a split is too short.
    x, y = data.batch("train", 0, config.batch_size, config.seq_len, seed=config.seed, rank=rank, world_size=world)
    eval_bs = config.eval_batch_size or config.micro_batch_size
    val = next(iter(data.eval_batches(config.seq_len, eval_bs, 1)), None)
    if val is None:
        raise ValueError(f"the validation split yields no batches for seq_len={config.seq_len}")
    vocab = getattr(model_config, "vocab_size", None)
    if isinstance(vocab, int):
        check_token_ids("the first training batch's inputs", x, vocab)
        check_token_ids("the first training batch's targets", y, vocab, ignore_index=-100)
        check_token_ids("the first validation batch's inputs", val[0], vocab)
        check_token_ids("the first validation batch's targets", val[1], vocab, ignore_index=-100)


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
    _check_data_fits(model, data, config, rank, world)
    device = pick_device(config.device)
    model = model.to(device)
    model.train()
    sharded = config.parallel == "fsdp"
    if sharded:  # before the optimizers are built: sharding replaces the parameters
        if optimizers is not None and not is_sharded(model):
            raise ValueError("parallel='fsdp' with optimizers passed in: call lib.training.shard_model(model) "
                             "first and build the optimizers on its sharded parameters")
        model = shard_model(model, device)
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
    if world > 1 and not sharded:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # Only the training forward is compiled: checkpoints and evaluation see the plain module.
    forward = torch.compile(net) if config.compile else net
    state = TrainState(config=config, model=net, data=data, optimizers=optimizers,
                       schedulers=schedulers, device=device)
    ckpt = Path(config.checkpoint_path) if config.checkpoint_path else None
    save = ckpt is not None and (rank == 0 or sharded) and config.checkpoint_every > 0
    description = _describe_run(config, model, optimizers) if ckpt is not None else {}
    detector = {"best": float("inf"), "first": None}  # the divergence test's memory, checkpointed
    if ckpt is not None and config.resume and (sharded_checkpoint_exists(ckpt) if sharded else ckpt.exists()):
        detector, finished = _restore_state(ckpt, state, description)
        if finished is not None:  # a finished run with the same settings: report it, train nothing
            return TrainResult(history=pd.DataFrame(state.history), final=dict(finished), model=model,
                               elapsed_s=finished["elapsed_s"])
    if active_logdir() is not None and rank == 0:  # inside a logged sweep run: watch it in TensorBoard
        callbacks = [*callbacks, TensorBoardLogger(active_logdir())]
    params = [p for p in model.parameters() if p.requires_grad]
    tokens_per_step = config.batch_size * config.seq_len * world
    eval_bs = config.eval_batch_size or config.micro_batch_size
    best, first = detector["best"], detector["first"]
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
        x, y = to_device((x, y), device)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        mb = config.micro_batch_size
        for i in range(config.grad_accum):
            sync = i == config.grad_accum - 1 or world == 1
            if sharded:  # FSDP2 has no no_sync(): it skips the reduce-scatter by this flag
                net.set_requires_gradient_sync(sync)
            ctx = net.no_sync() if not sync and world > 1 and not sharded else contextlib.nullcontext()
            with ctx, autocast(device):
                out = forward(x[i * mb:(i + 1) * mb], y[i * mb:(i + 1) * mb])
                loss = out.loss / config.grad_accum
            loss.backward()
            loss_sum += loss.item()
        if sharded and config.grad_clip:
            grad_norm = clip_sharded_grad_norm(params, config.grad_clip)
        else:
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
            diverged = (f"training diverged at step {step + 1}: loss {loss_sum:.4g} "
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
        if save and state.step % config.checkpoint_every == 0:
            _save_state(ckpt, state, description, {"best": best, "first": first}, None)
    bar.close()
    _callback(callbacks, "on_train_end", state)
    elapsed = elapsed_before + time.perf_counter() - start
    if diverged and config.on_divergence == "raise":
        raise TrainingDiverged(diverged)
    final = {"steps": state.step, "tokens": state.tokens, "train_loss": state.loss,
             "elapsed_s": elapsed, "tokens_per_s": state.tokens / elapsed if elapsed > 0 else float("nan"),
             "diverged": bool(diverged)}
    if not diverged:
        final.update({f"val_{k}": v for k, v in
                      evaluate(model, data, config.seq_len, eval_bs, config.eval_batches, device).items()})
    if save and not diverged:  # a diverged state is never resumable: the last good checkpoint stays
        _save_state(ckpt, state, description, {"best": best, "first": first},
                    final if state.step == config.steps else None)
    return TrainResult(history=pd.DataFrame(state.history), final=final, model=model, elapsed_s=elapsed)


# ------------------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> None:
    """Train a ``lib.models.Transformer`` on the embedded synthetic corpus from the command line.

    Single process:   python -m lib.training --config run.json --out weights.pt
    Data parallel:    torchrun --nproc_per_node 2 -m lib.training --config run.json --out weights.pt
    Sharded (FSDP2):  the same, with "parallel": "fsdp" in the "train" section
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
        weights = full_model_state_dict(model)  # a sharded model gathers on every rank, to rank 0
        if _ddp()[0] == 0:
            torch.save(weights, args.out)
            Path(args.out).with_suffix(".json").write_text(json.dumps(result.final, indent=1))
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
