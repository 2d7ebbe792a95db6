"""The one figure helper every notebook saves through, plus the house plot style.

``save_figure(fig, "01_schedules", "warmup_cosine")`` writes
``figures/01_schedules/warmup_cosine.png`` and ``.svg`` under the repository root, whatever
the kernel's working directory. Files are byte-for-byte reproducible: no dates, no software
stamps, a fixed SVG hash salt, so re-running a notebook does not churn git.
Plotly figures go through ``save_plotly``: one self-contained HTML page with plotly.js embedded,
so it opens offline; ``setup_plotly_for_notebooks`` picks how notebook outputs carry them. Both return paths relative to the repository root, so a notebook that
displays them shows no machine's checkout folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from lib.core.report import in_batch
from lib.core.runtime import figures_dir, repo_root

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FORMATS = ("png", "svg")


def use_style(context: str = "notebook") -> None:
    """Seaborn's whitegrid theme with deterministic SVG output."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context=context, style="whitegrid", palette="colorblind")
    mpl.rcParams["svg.hashsalt"] = "llm-workbench"
    mpl.rcParams["figure.dpi"] = 100
    mpl.rcParams["savefig.dpi"] = 120
    mpl.rcParams["savefig.bbox"] = "tight"


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{kind} must be a simple file name (letters, digits, '_', '-', '.'), got {value!r}"
        )


def save_figure(fig, notebook: str, name: str, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Save a matplotlib figure (or seaborn grid) to ``figures/<notebook>/<name>.<fmt>``.

    Returns the written paths relative to the repository root (``repo_root() / path`` is the
    file), so a cell that displays them shows no absolute path. Output is deterministic (see
    module docstring).
    """
    import matplotlib as mpl

    _check_name("notebook", notebook)
    _check_name("name", name)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"formats must be drawn from {FORMATS}, got {bad}")
    fig = getattr(fig, "figure", fig)  # seaborn FacetGrid/JointGrid expose .figure
    if not hasattr(fig, "savefig"):
        raise ValueError(f"save_figure needs a matplotlib Figure, got {type(fig).__name__}")
    out_dir = figures_dir(notebook)
    paths = []
    with mpl.rc_context({"svg.hashsalt": "llm-workbench"}):
        for fmt in formats:
            path = out_dir / f"{name}.{fmt}"
            metadata = {"Date": None} if fmt == "svg" else {"Software": None}
            fig.savefig(path, format=fmt, metadata=metadata, bbox_inches="tight")
            paths.append(path.relative_to(repo_root()))
    return paths


def save_plotly(fig, notebook: str, name: str) -> Path:
    """Save a plotly figure as ``figures/<notebook>/<name>.html`` with plotly.js embedded.

    The page loads nothing from the network (no CDN), and is byte-for-byte reproducible (a fixed
    div id). Returns its path relative to the repository root.
    """
    _check_name("notebook", notebook)
    _check_name("name", name)
    if not hasattr(fig, "to_html"):
        raise ValueError(f"save_plotly needs a plotly Figure, got {type(fig).__name__}")
    path = figures_dir(notebook) / f"{name}.html"
    html = fig.to_html(include_plotlyjs=True, full_html=True, div_id=f"{notebook}-{name}")
    path.write_text(html, encoding="utf-8")
    return path.relative_to(repo_root())


# JupyterLab renders this MIME type with the plotly.js bundled in its jupyterlab-plotly
# extension (shipped inside the plotly wheel), so a figure needs no network and its output is
# the figure's JSON only. The "notebook" renderer would instead embed all of plotly.js (about
# 4.7 MB) in the first figure's committed output, and "notebook_connected" imports it from a CDN.
PLOTLY_RENDERER = "plotly_mimetype"
# Headless runs add plotly's own PNG snapshot (kaleido, drawing with a Chromium). jupyterlab-plotly
# shows an output's stored PNG until the pointer enters it; an output without one it draws at
# once and then writes its own snapshot into, which marks a freshly opened notebook modified.
BATCH_PLOTLY_RENDERER = "plotly_mimetype+png"
CHROMIUM_ENV = "WORKBENCH_CHROMIUM"


def chromium_path() -> str | None:
    """The Chromium that headless figures and the browser tests use: ``$WORKBENCH_CHROMIUM``,
    else Debian's ``/usr/bin/chromium``, else ``chromium`` (or ``chromium-browser``) on PATH;
    None when there is none (``apt-get install chromium``)."""
    for candidate in (os.environ.get(CHROMIUM_ENV), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def setup_plotly_for_notebooks() -> str:
    """Render plotly figures offline, in JupyterLab and in headless (papermill/nbval) runs, and
    return the renderer chosen.

    Live (JupyterLab): ``PLOTLY_RENDERER``, the figure's JSON. Headless, with a Chromium
    (``chromium_path``): ``BATCH_PLOTLY_RENDERER``, the JSON plus a PNG snapshot, so committed
    notebooks open in JupyterLab unmodified; without one, the JSON alone. ``invoke report``
    turns the JSON into an offline HTML figure.
    """
    import plotly.io as pio

    renderer = PLOTLY_RENDERER
    browser = chromium_path()
    if browser is not None and in_batch():
        os.environ.setdefault("BROWSER_PATH", browser)  # where kaleido looks first
        renderer = BATCH_PLOTLY_RENDERER
    pio.renderers.default = renderer
    return renderer
