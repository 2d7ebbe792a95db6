"""LLM training research workbench.

Components live in flat modules, one concern each (see STYLE in the README):

- ``lib.runtime``   device selection, seeding, quick/full profiles, repository paths
- ``lib.plotting``  the one figure helper every notebook saves through
- ``lib.schedules`` learning-rate schedules and their torch ``LRScheduler`` adapter
- ``lib.models``    a small decoder-only transformer with pluggable encodings and MLPs
- ``lib.data``      the embedded synthetic corpus, local text, tokenizers, batching
- ``lib.train``     the one training loop
- ``lib.runs``      the SQLite results store and resumable sweep runner
- ``lib.encodings`` positional encodings, ``lib.diagnostics`` and ``lib.longctx`` for notebook 02
- ``lib.scaling``   FLOPs accounting, sweep planning and scaling-law fits (notebook 03)
- ``lib.moe`` and ``lib.optim``  Mixture-of-Experts layers and Muon/AdamW grouping (notebook 04)
- ``lib.predictive``  the predictive (hybrid) trainer (notebook 05)

Modules are imported lazily so ``import lib`` stays cheap.
"""

from __future__ import annotations

import importlib
from pathlib import Path

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent


def __getattr__(name: str):
    """``lib.<module>`` imports the module on first use (``import lib`` stays cheap)."""
    if not name.startswith("_") and (_HERE / f"{name}.py").exists():
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'lib' has no attribute {name!r}")
