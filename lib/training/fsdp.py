"""FSDP2 for models larger than one GPU: per-block sharding and sharded checkpoints.

``TrainConfig(parallel="fsdp")`` makes ``train`` call ``shard_model`` on its model: every block
of ``model.blocks`` (or of each ``nn.ModuleList`` in a model without one) becomes its own
``torch.distributed.fsdp.fully_shard`` unit, then the root takes what is left (embeddings, the
final norm, the head). Each rank holds 1/world of every parameter, gradient and optimizer
moment; a unit's full weights exist only while its forward or backward runs, so peak memory is
the shards plus about one block. On CUDA the units compute in bf16 and reduce gradients in fp32
(``mixed_precision_policy``); elsewhere they keep the parameters' dtype.

A sharded checkpoint is a folder at ``checkpoint_path``::

    meta.pt            lib.training.checkpoint file: step, history, schedulers, RNG, run
                       description, and the name of the shard folder it belongs to
    shards-<step>-<id>/  torch.distributed.checkpoint (DCP) files of the model and optimizers

Every rank writes its own shards (``dcp.save``); only then does rank 0 replace ``meta.pt``
atomically, and only after that are older shard folders removed. A crash at any moment leaves
``meta.pt`` naming a complete shard folder (the old or the new one), which keeps the
training loop's exact-resume guarantee.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from lib.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

# torch.distributed's fsdp, tensor and checkpoint packages cost ~0.5 s to import, paid by every
# notebook kernel and worker process although only a parallel='fsdp' run uses them: each
# function imports what it needs.
if TYPE_CHECKING:
    from torch.distributed.fsdp import MixedPrecisionPolicy

__all__ = ["PARALLEL", "META_FILE", "mixed_precision_policy", "shard_model", "is_sharded",
           "clip_sharded_grad_norm", "sharded_checkpoint_exists", "save_sharded_checkpoint",
           "load_sharded_meta", "load_sharded_state", "full_model_state_dict"]

PARALLEL = ("ddp", "fsdp")  # TrainConfig.parallel: how train() spreads a run over processes
META_FILE = "meta.pt"
_SHARDS_PREFIX = "shards-"


def mixed_precision_policy(device: torch.device | str) -> MixedPrecisionPolicy:
    """bf16 compute with fp32 gradient reduction on CUDA (the reduction sums world-many
    gradients, where bf16's 8-bit mantissa would lose the small ones); the parameters' own dtype
    elsewhere, since CPUs gain nothing from bf16 matmuls and gloo reduces in fp32 anyway."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if torch.device(device).type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` has been through ``fully_shard`` (``shard_model``)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported: nothing can be sharded yet
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def _units(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        return list(blocks)
    return [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]


def shard_model(model: nn.Module, device: torch.device | str | None = None,
                mp_policy: MixedPrecisionPolicy | None = None) -> nn.Module:
    """``fully_shard`` each block of ``model``, then the model itself, over all ranks of the
    default process group; returns ``model`` (sharded in place; a sharded model is returned as
    it is). Build optimizers after this call: sharding replaces the parameters by DTensors.

    ``device`` (default: where the parameters are) picks the mesh and ``mp_policy`` (default
    ``mixed_precision_policy(device)``)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("parallel='fsdp' needs torch.distributed initialised: launch with torchrun "
                         "(e.g. torchrun --nproc_per_node 2 -m lib.training ...) and call "
                         "torch.distributed.init_process_group first")
    if is_sharded(model):
        return model
    if mp_policy is not None and not isinstance(mp_policy, MixedPrecisionPolicy):
        raise ValueError(f"mp_policy must be None or a MixedPrecisionPolicy, got {type(mp_policy).__name__}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = mp_policy if mp_policy is not None else mixed_precision_policy(device)
    for unit in _units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def clip_sharded_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """``clip_grad_norm_`` over sharded gradients; returns the global norm as a float (each rank
    holds part of the norm, so it is reduced across ranks before it is read)."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm)
    return (norm.full_tensor() if isinstance(norm, DTensor) else norm).item()


def _check_folder(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a file; a parallel='fsdp' checkpoint is a folder "
                              f"(holding {META_FILE} and its shards): use another checkpoint_path")
    return path


def sharded_checkpoint_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a complete sharded checkpoint (a ``meta.pt``); a file at ``path``
    (a single-process checkpoint) is a ``CheckpointError``."""
    path = _check_folder(Path(path))
    return (path / META_FILE).is_file()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_sharded_checkpoint(path: str | os.PathLike, model: nn.Module,
                            optimizers: Sequence[torch.optim.Optimizer], meta: Mapping[str, Any]) -> Path:
    """Every rank calls this together: the model's and optimizers' shards go to a new shard
    folder, then rank 0 writes ``meta`` (plain data) to ``meta.pt`` atomically, naming that
    folder, and removes the older ones. Returns the folder ``path``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = _check_folder(Path(path))
    if not isinstance(meta, Mapping):
        raise ValueError(f"meta must be a mapping, got {type(meta).__name__}")
    name = [f"{_SHARDS_PREFIX}{int(meta.get('step', 0)):08d}-{uuid.uuid4().hex[:8]}"]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(name, src=0)  # one folder for all ranks
    shards = path / name[0]
    if _rank() == 0:
        shards.mkdir(parents=True, exist_ok=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, list(optimizers))
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=shards)
    _barrier()  # every rank's shards are on disk before meta.pt names them
    if _rank() == 0:
        save_checkpoint(path / META_FILE, {**meta, "shards": name[0]})
        for old in path.glob(f"{_SHARDS_PREFIX}*"):
            if old.name != name[0] and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return path


def load_sharded_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` dict of the sharded checkpoint at ``path`` (checksum verified; the weights
    stay on disk until ``load_sharded_state``)."""
    path = _check_folder(Path(path))
    meta = load_checkpoint(path / META_FILE)
    shards = meta.get("shards")
    if not isinstance(shards, str) or not (path / shards / ".metadata").is_file():
        raise CheckpointError(f"checkpoint {path}: {META_FILE} names shard folder {shards!r}, "
                              "which is missing or incomplete")
    return meta


def load_sharded_state(path: str | os.PathLike, meta: Mapping[str, Any], model: nn.Module,
                       optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Every rank calls this together: load the shards named by ``meta`` (``load_sharded_meta``)
    into ``model`` and ``optimizers`` in place. A model or optimizer of another shape is a
    ``CheckpointError`` naming the folder."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    shards = Path(path) / str(meta["shards"])
    try:
        model_sd, optim_sd = get_state_dict(model, list(optimizers))
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=shards)
        set_state_dict(model, list(optimizers), model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {shards} does not fit this model and its optimizers: {e}") from e


def full_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every rank calls this together: the full (unsharded) weights on CPU, as a plain
    ``state_dict`` that ``load_state_dict`` of an unsharded model takes, on rank 0 (an empty
    dict on the others). An unsharded model gives its own ``state_dict``."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
