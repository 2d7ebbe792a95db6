"""The predictive (hybrid) trainer that replaces some backward passes by predicted updates,
and the update dynamics and predictors it uses.
"""

from __future__ import annotations

from lib.predictive.dynamics import (
    COEF_CLIP,
    RSSM,
    BasisPredictor,
    EMAPredictor,
    LinearPredictor,
    NullPredictor,
    Observation,
    Predictor,
    RSSMPredictor,
    UpdateBasis,
    fit_coefficients,
    kl_gaussian,
    relative_residual,
)
from lib.predictive.trainer import (
    PHASES,
    PREDICT_LENGTHS,
    PREDICTORS,
    HybridConfig,
    HybridResult,
    HybridTrainer,
    build_predictor,
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
    "kl_gaussian",
    "RSSM",
    "RSSMPredictor",
    "PHASES",
    "PREDICT_LENGTHS",
    "HybridConfig",
    "HybridResult",
    "HybridTrainer",
    "memory_overhead",
    "PREDICTORS",
    "build_predictor",
]
