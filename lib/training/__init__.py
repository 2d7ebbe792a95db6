"""The training loop, its checksummed checkpoints, optimizers (fused AdamW, Muon parameter
groups) and the SQLite results store with its resumable sweep runner.
"""

from __future__ import annotations

from lib.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    config_differences,
    load_checkpoint,
    save_checkpoint,
)
from lib.training.loop import (
    RESUME_COMPARED,
    TrainConfig,
    TrainingDiverged,
    TrainResult,
    TrainState,
    default_optimizer,
    default_schedule,
    evaluate,
    main,
    train,
)
from lib.training.optim import (
    ADJUST_LR_FNS,
    KINDS,
    NS_DTYPES,
    ROLES,
    ExpertMuon,
    adamw,
    build_optimizers,
    describe_roles,
    newton_schulz,
    param_roles,
)
from lib.training.store import (
    STATUSES,
    RunStore,
    canonical_json,
    make_run_id,
    run_sweep,
)

__all__ = [
    "TrainingDiverged",
    "TrainConfig",
    "TrainState",
    "TrainResult",
    "default_optimizer",
    "default_schedule",
    "evaluate",
    "train",
    "main",
    "RESUME_COMPARED",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "config_differences",
    "KINDS",
    "adamw",
    "ADJUST_LR_FNS",
    "ROLES",
    "NS_DTYPES",
    "newton_schulz",
    "ExpertMuon",
    "param_roles",
    "build_optimizers",
    "describe_roles",
    "STATUSES",
    "canonical_json",
    "make_run_id",
    "RunStore",
    "run_sweep",
]
