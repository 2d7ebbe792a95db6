"""Compute-optimal scaling: FLOPs and parameter accounting, IsoFLOP sweep planning, and
scaling-law fits (N parameters, D tokens, C FLOPs, loss in nats/token).

- ``lib.scaling.flops``: C = 6 N D (``flops_6nd``), Chinchilla's Appendix-F FLOPs per token
  (``flops_breakdown``, ``chinchilla_flops_per_token``), the analytic parameter count of
  ``lib.models.Transformer`` (``count_params``) and Chinchilla's Table 3;
- ``lib.scaling.planning``: model shapes for target sizes (``shape_for_params``), measured
  throughput, IsoFLOP plans (``plan_sweep``) and their run configs (``sweep_configs``);
- ``lib.scaling.fit``: Chinchilla's Approach 3 (``fit_parametric``, ``ParametricFit``, the
  closed-form ``optimal_allocation`` and ``chinchilla_table``) and Approach 2
  (``fit_isoflop``, ``IsoFLOPFit``), with the published parameters they are checked against;
- ``lib.scaling.bootstrap``: Approach-2 intervals that include the seed noise
  (``isoflop_bootstrap``, a parametric bootstrap from the sweep's measured noise);
- ``lib.scaling.envelope``: Approach 1, the lower envelope of the training curves
  (``fit_envelope``, ``EnvelopeFit``), and the held-out-budget ``extrapolation_check``;
- ``lib.scaling.cost``: what a notebook's planned runs (``PlannedRun``) will cost on this
  device (``estimate_cost``, a ``CostEstimate``), the outer-limit check (``check_budget``) and
  both as a notebook's first step (``costed_start``).

Training a plan's runs is ``lib.experiments.scaling_study``.
"""

from __future__ import annotations

from lib.scaling.bootstrap import (
    NOISE_SOURCES,
    IsoFLOPBootstrap,
    isoflop_bootstrap,
)
from lib.scaling.cost import (
    LIMIT_HOURS,
    CostEstimate,
    PlannedRun,
    check_budget,
    costed_start,
    estimate_cost,
    run_flops_per_token,
)
from lib.scaling.envelope import (
    EnvelopeFit,
    extrapolation_check,
    fit_envelope,
)
from lib.scaling.fit import (
    EPOCH_2024,
    HOFFMANN_2022,
    HOFFMANN_GRID,
    HUBER_DELTA,
    PUBLISHED_EXPONENTS,
    IsoFLOPFit,
    ParametricFit,
    chinchilla_table,
    fit_isoflop,
    fit_parabola,
    fit_parametric,
    fit_parametric_grid,
    huber,
    optimal_allocation,
    parametric_objective,
)
from lib.scaling.flops import (
    CHINCHILLA_TABLE3,
    MLP_MATRICES,
    chinchilla_flops_per_token,
    count_params,
    default_d_ff,
    flops_6nd,
    flops_breakdown,
)
from lib.scaling.planning import (
    lr_for_widths,
    measure_training_throughput,
    plan_sweep,
    real_num_params,
    shape_for_params,
    sweep_configs,
)

__all__ = [
    "CHINCHILLA_TABLE3",
    "MLP_MATRICES",
    "flops_6nd",
    "flops_breakdown",
    "chinchilla_flops_per_token",
    "count_params",
    "default_d_ff",
    "shape_for_params",
    "real_num_params",
    "measure_training_throughput",
    "plan_sweep",
    "sweep_configs",
    "lr_for_widths",
    "HUBER_DELTA",
    "HOFFMANN_2022",
    "EPOCH_2024",
    "PUBLISHED_EXPONENTS",
    "HOFFMANN_GRID",
    "huber",
    "parametric_objective",
    "ParametricFit",
    "fit_parametric",
    "fit_parametric_grid",
    "optimal_allocation",
    "chinchilla_table",
    "fit_parabola",
    "IsoFLOPFit",
    "fit_isoflop",
    "LIMIT_HOURS",
    "PlannedRun",
    "CostEstimate",
    "run_flops_per_token",
    "estimate_cost",
    "check_budget",
    "costed_start",
    "NOISE_SOURCES",
    "IsoFLOPBootstrap",
    "isoflop_bootstrap",
    "EnvelopeFit",
    "fit_envelope",
    "extrapolation_check",
]
