"""The predictive (hybrid) trainer, which replaces some backward passes by predicted updates,
and the update dynamics and predictors it uses.

- ``trainer``   ``HybridTrainer``, its ``HybridConfig`` (phase settings beside a
                ``lib.training.TrainConfig``) and ``HybridResult``, ``memory_overhead``
- ``dynamics``  ``UpdateBasis`` and its algebra, the ``Predictor`` protocol, the predictors
                and their registry (``PREDICTORS``, ``build_predictor``), the ``RSSM``
- ``perweight`` ``PerWeightPredictor`` (registered as ``"perweight"``): per-weight jumps of
                10+ steps from a small shared network trained online on the run's snapshots

The validation protocol and its figures are notebook 05's recipe,
``lib.experiments.predictive_study``.
"""

from __future__ import annotations

from lib.predictive.dynamics import (
    COEF_CLIP,
    PREDICTORS,
    RSSM,
    BasisPredictor,
    EMAPredictor,
    LinearPredictor,
    NullPredictor,
    Observation,
    Predictor,
    RSSMPredictor,
    UpdateBasis,
    build_predictor,
    fit_coefficients,
    kl_gaussian,
    relative_residual,
)
from lib.predictive.perweight import PerWeightNet, PerWeightPredictor
from lib.predictive.trainer import (
    MAX_LR_RATIO,
    PHASES,
    PREDICT_LENGTHS,
    HybridConfig,
    HybridResult,
    HybridTrainer,
    lr_ratio,
    memory_overhead,
)

__all__ = [
    "COEF_CLIP",
    "UpdateBasis",
    "fit_coefficients",
    "relative_residual",
    "Observation",
    "Predictor",
    "BasisPredictor",
    "NullPredictor",
    "LinearPredictor",
    "EMAPredictor",
    "PREDICTORS",
    "build_predictor",
    "kl_gaussian",
    "RSSM",
    "RSSMPredictor",
    "PerWeightNet",
    "PerWeightPredictor",
    "PHASES",
    "PREDICT_LENGTHS",
    "MAX_LR_RATIO",
    "lr_ratio",
    "HybridConfig",
    "HybridResult",
    "HybridTrainer",
    "memory_overhead",
]
