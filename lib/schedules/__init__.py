"""Learning-rate schedules as closed forms, and the torch ``LRScheduler`` that plays them.

- ``base``:         ``Schedule`` (validation, warm-up, the floor past ``total_steps``), the
                    ``SCHEDULES`` registry and ``build(name, **kwargs)``
- ``decays``:       the concrete schedules (``WarmupCosine``, ``CosinePlateau``, ``WSD``, ...),
                    each a frozen dataclass registered under its ``build`` name
- ``lr_scheduler``: ``ScheduledLR`` / ``attach``, the torch ``LRScheduler`` adapter

Every registered schedule is exported here (``from lib.schedules import WSD``); ``decays``'s
``__all__`` is read from the registry, so adding a schedule is one decorated class.
"""

from __future__ import annotations

from lib.schedules import decays
from lib.schedules.base import (
    SCHEDULES,
    Schedule,
    build,
)
from lib.schedules.decays import *  # noqa: F403 - every registered schedule, see decays.__all__
from lib.schedules.lr_scheduler import (
    ScheduledLR,
    attach,
)

__all__ = ["Schedule", *decays.__all__, "SCHEDULES", "build", "ScheduledLR", "attach"]
