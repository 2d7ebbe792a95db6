"""The recipes: one module per notebook, holding its quick/full settings, its study runner and
its figures. Components live in the other packages; a recipe wires them for one question.

Notebooks import their recipe module by name (``from lib.experiments import moe_lr_study``), so
each module keeps its own namespace (several have a ``summarize`` of their own results).

- ``schedules_study``   notebook 01: the schedule training study (tuned LRs, paired seeds, WSD branching)
- ``encodings_study``   notebook 02: long-context training and extrapolation, memory vs KV cache
- ``scaling_study``     notebook 03: IsoFLOP sweeps trained for exactly their budgets
- ``moe_lr_study``      notebook 04: Muon vs AdamW on an MoE model, warm-up and floor ablations
- ``predictive_study``  notebook 05: the predictive trainer against plain training
"""

from __future__ import annotations

from lib.experiments import (
    encodings_study,
    moe_lr_study,
    predictive_study,
    scaling_study,
    schedules_study,
)

__all__ = ["schedules_study", "encodings_study", "scaling_study", "moe_lr_study", "predictive_study"]
