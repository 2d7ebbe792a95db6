"""The training loop, optimizers (fused AdamW, Muon parameter groups) and the SQLite results
store with its resumable sweep runner.
"""

from __future__ import annotations

from lib.training.loop import (
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
