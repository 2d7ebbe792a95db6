"""LLM training research workbench.

Packages by concern, lowest layer first (a module imports its siblings and lower layers only;
docs/ARCHITECTURE.md draws the layers):

- ``lib.core``         runtime (devices, seeds, profiles, paths), plotting, checks, stats, registry
- ``lib.schedules``    learning-rate schedules and their torch ``LRScheduler`` adapter
- ``lib.data``         the synthetic language, text corpora and tokenizers, long-context tasks
- ``lib.encodings``    positional encodings, their diagnostics, the transformers adapter
- ``lib.models``       the transformer, its MoE layer and loss, transformers interop
- ``lib.training``     the training loop, optimizers, the results store and sweeps
- ``lib.scaling``      FLOPs accounting, sweep planning, scaling-law fits
- ``lib.predictive``   the predictive (hybrid) trainer and its predictors
- ``lib.experiments``  one recipe module per notebook (settings, study runner, figures)

``import lib`` imports no package; import the one you need (``from lib import schedules``).
"""

__version__ = "0.1.0"
