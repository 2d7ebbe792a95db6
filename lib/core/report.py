"""How a notebook shows its results: batch detection and conclusions rendered from numbers.

Every number a conclusion states is computed, never typed: a notebook's closing cells call
``show_markdown`` with a text formatted from the run's results, and those cells carry
``# NBVAL_CHECK_OUTPUT`` so CI sees a stale sentence as a failing output.

``in_batch()`` tells a live JupyterLab session (explorers are live ipywidgets) from a headless
run under papermill, nbval or ``invoke`` (the same cell draws a static figure instead).
"""

from __future__ import annotations

import math
import os

__all__ = ["BATCH_ENV", "in_batch", "show_markdown", "fmt_interval"]

BATCH_ENV = "WORKBENCH_BATCH"


def in_batch() -> bool:
    """True when the notebook runs headlessly (papermill, nbval, ``invoke run/test/refresh``).

    ``$WORKBENCH_BATCH`` decides when it is set ("1"/"true" or "0"/"false"); otherwise a kernel
    with no IPython shell (plain Python) counts as batch.
    """
    value = os.environ.get(BATCH_ENV)
    if value is not None:
        text = value.strip().lower()
        if text in ("1", "true", "yes"):
            return True
        if text in ("0", "false", "no", ""):
            return False
        raise ValueError(f"${BATCH_ENV} must be 1/true/yes or 0/false/no, got {value!r}")
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with the notebook extras
        return True
    return get_ipython() is None


def show_markdown(text: str):
    """Display ``text`` as Markdown in a notebook (and return the display object)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    from IPython.display import Markdown, display

    md = Markdown(text)
    display(md)
    return md


def fmt_interval(mean: float, low: float, high: float, digits: int = 2) -> str:
    """``"m [lo, hi]"`` rounded to ``digits``; a missing bound prints as "n/a"."""
    def f(x: float) -> str:
        return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"
    return f"{f(mean)} [{f(low)}, {f(high)}]"
