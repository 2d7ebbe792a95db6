"""Learning-rate schedules as closed forms, and the torch ``LRScheduler`` that plays them.
"""

from __future__ import annotations

from lib.schedules.decays import (
    SCHEDULES,
    WSD,
    Constant,
    CosinePlateau,
    CosineRestarts,
    InverseSqrt,
    Schedule,
    WarmupCosine,
    WarmupLinear,
    build,
)
from lib.schedules.lr_scheduler import (
    ScheduledLR,
    attach,
)

__all__ = [
    "Schedule",
    "CosinePlateau",
    "WarmupCosine",
    "WSD",
    "WarmupLinear",
    "InverseSqrt",
    "Constant",
    "CosineRestarts",
    "SCHEDULES",
    "build",
    "ScheduledLR",
    "attach",
]
