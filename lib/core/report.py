"""How a notebook shows its results: batch detection, conclusions rendered from numbers, and
the static report site of the executed notebooks.

Every number a conclusion states is computed, never typed: a notebook's closing cells call
``show_markdown`` with a text formatted from the run's results, and those cells carry
``# NBVAL_CHECK_OUTPUT`` so CI sees a stale sentence as a failing output.

``in_batch()`` tells a live JupyterLab session (explorers are live ipywidgets) from a headless
run under papermill, nbval or ``invoke`` (the same cell draws a static figure instead), with or
without ``$WORKBENCH_BATCH``.

``build_report(notebooks, out_dir)`` (``invoke report``) writes one HTML page per executed
notebook (nbconvert's lab template, images embedded, plotly figures drawn by a local copy of
plotly.js) and an index of the questions, answers and figures, readable offline: nothing is
loaded from the network. A notebook's question is the ``**Question.**`` paragraph of its first
cell; its answer is the Markdown output of the code cell tagged ``conclusion`` (the
``show_markdown`` text its results formatted), or, failing that, the markdown cell tagged
``conclusion`` or headed "Conclusion".
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from lib.core.runtime import repo_root

__all__ = ["BATCH_ENV", "CONCLUSION_TAG", "in_batch", "show_markdown", "fmt_interval",
           "notebook_summary", "build_report"]

BATCH_ENV = "WORKBENCH_BATCH"
CONCLUSION_TAG = "conclusion"


def in_batch() -> bool:
    """True when the notebook runs headlessly (papermill, nbval, ``jupyter nbconvert --execute``,
    ``invoke run/test/refresh``); False in a JupyterLab (or other frontend) session.

    ``$WORKBENCH_BATCH`` decides when it is set ("1"/"true" or "0"/"false"). Otherwise: no
    IPython kernel (plain Python, terminal IPython) has no frontend to draw widgets, so it counts
    as batch; and a kernel whose current execute request has ``allow_stdin`` false counts as
    batch. Headless clients (nbclient, which papermill and nbconvert use, and nbval) send it
    false because no one can answer ``input()``; JupyterLab (and Notebook 7, built on it) sends
    it true (tests/browser checks the explorers are live there). Voila also executes through
    nbclient: set ``WORKBENCH_BATCH=0`` there for live explorers.
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
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return True
    return _request_forbids_stdin(kernel)


def _request_forbids_stdin(kernel) -> bool:
    """Whether the execute request the kernel is answering says no frontend reads stdin. A
    widget callback answers a comm message, which has no such field: that counts as live."""
    try:
        parent = kernel.get_parent("shell")
    except (AttributeError, TypeError):  # ipykernel < 6 kept it as an attribute
        parent = getattr(kernel, "_parent_header", None)
    if not isinstance(parent, dict):
        return False
    content = parent.get("content")
    msg_type = parent.get("header", {}).get("msg_type", parent.get("msg_type"))
    return (msg_type == "execute_request" and isinstance(content, dict)
            and content.get("allow_stdin") is False)


def show_markdown(text: str) -> None:
    """Display ``text`` as Markdown in a notebook. Returns None, so a cell ending with this call
    shows the text once (a returned object would be displayed again as the cell's result)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    from IPython.display import Markdown, display

    display(Markdown(text))


def fmt_interval(mean: float, low: float, high: float, digits: int = 2) -> str:
    """``"m [lo, hi]"`` rounded to ``digits``; a missing bound prints as "n/a"."""
    def f(x: float) -> str:
        return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"
    return f"{f(mean)} [{f(low)}, {f(high)}]"


# ------------------------------------------------------------------------------ the report site

_NETWORK_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//[^>]*>\s*</script>"
                             r"|<script\b[^>]*>\s*import\s*[\"'](?:https?:)?//[^<]*</script>", re.I)
_PLOTLY_MIME = "application/vnd.plotly.v1+json"
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# nbconvert's lab template, minus everything it would fetch from a CDN (require.js, MathJax,
# mermaid, the widget manager); plotly.js comes from the site's own assets/ folder.
_PAGE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block extra_css %}
{%- if resources.workbench_plotly -%}<script src="assets/plotly.min.js"></script>{%- endif -%}
<style>nav.workbench { font: 14px sans-serif; padding: 8px 16px; border-bottom: 1px solid #ddd; }</style>
{% endblock extra_css %}
{%- block body_header -%}
{{ super() }}
<nav class="workbench"><a href="index.html">&larr; all notebooks</a></nav>
{%- endblock body_header -%}
"""


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _markdown_html(text: str) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    return markdown2html_mistune(text)


def _conclusion(nb) -> tuple[str | None, str]:
    """The answer's Markdown and where it came from."""
    for cell in nb.cells:
        if CONCLUSION_TAG in cell.get("metadata", {}).get("tags", []):
            if cell.cell_type == "markdown":
                return _source(cell), "the markdown cell tagged 'conclusion'"
            texts = ["".join(out.get("data", {}).get("text/markdown", ""))
                     for out in cell.get("outputs", [])]
            texts = [t for t in texts if t.strip()]
            if texts:
                return "\n\n".join(texts), "the Markdown output of the cell tagged 'conclusion'"
    for cell in reversed(nb.cells):
        if cell.cell_type == "markdown" and re.match(r"\s*#+\s*Conclusion", _source(cell), re.I):
            return (re.sub(r"^\s*#+\s*Conclusions?\s*\n", "", _source(cell), flags=re.I),
                    "the markdown cell headed 'Conclusion' (no cell is tagged 'conclusion')")
    return None, "no cell is tagged 'conclusion'"


def notebook_summary(path: str | os.PathLike) -> dict:
    """Title, question and answer (Markdown) of an executed notebook, and where the answer came from."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    first = next((_source(c) for c in nb.cells if c.cell_type == "markdown"), "")
    title = re.search(r"^#\s+(.+)$", first, re.M)
    question = re.search(r"\*\*Question\.\*\*\s*(.+?)(?:\n\s*\n|\Z)", first, re.S)
    answer, origin = _conclusion(nb)
    return {"name": Path(path).stem, "title": title.group(1).strip() if title else Path(path).stem,
            "question": question.group(1).strip() if question else "", "answer": answer,
            "answer_from": origin}


def _offline_outputs(nb) -> bool:
    """Give plotly outputs an HTML form drawn by the local plotly.js in place of their JSON and PNG
    snapshot, and drop live-widget views;
    True when the notebook has a plotly figure."""
    import plotly.io as pio

    has_plotly = False
    for i, cell in enumerate(nb.cells):
        for j, out in enumerate(cell.get("outputs", [])):
            data = out.get("data", {})
            if _PLOTLY_MIME in data:
                fig = pio.from_json(json.dumps(data[_PLOTLY_MIME]), skip_invalid=True)
                data["text/html"] = pio.to_html(fig, include_plotlyjs=False, full_html=False,
                                                div_id=f"plotly-{i}-{j}")
                del data[_PLOTLY_MIME]
                data.pop("image/png", None)  # the snapshot JupyterLab shows until the live figure draws
                has_plotly = True
            data.pop(_WIDGET_MIME, None)
            if "text/html" in data:  # an output written by an online renderer: drop its CDN loads
                text = "".join(data["text/html"]) if isinstance(data["text/html"], list) else data["text/html"]
                data["text/html"] = _NETWORK_SCRIPT.sub("", text)
    nb.metadata.pop("widgets", None)
    return has_plotly


def build_report(notebooks: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write the offline report site of executed ``notebooks`` into ``out_dir``; return its index page.

    Each notebook becomes ``<name>.html``; ``figures/<name>/*.png`` are copied beside them for
    the index, and ``assets/plotly.min.js`` is the plotly.js every interactive figure uses.
    """
    import jinja2
    import nbformat
    import plotly
    from nbconvert import HTMLExporter

    books = [Path(b) for b in notebooks]
    if not books:
        raise ValueError("notebooks must name at least one .ipynb file")
    missing = [str(b) for b in books if b.suffix != ".ipynb" or not b.is_file()]
    if missing:
        raise ValueError(f"notebooks must be existing .ipynb files, got {missing}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "assets").mkdir(exist_ok=True)
    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
                    out / "assets" / "plotly.min.js")
    exporter = HTMLExporter(template_name="lab", embed_images=True,
                            extra_loaders=[jinja2.DictLoader({"workbench_page.html.j2": _PAGE_TEMPLATE})],
                            template_file="workbench_page.html.j2")
    cards = []
    for book in books:
        nb = nbformat.read(str(book), as_version=4)
        summary = notebook_summary(book)
        has_plotly = _offline_outputs(nb)
        body, _ = exporter.from_notebook_node(
            nb, resources={"metadata": {"name": summary["title"]}, "workbench_plotly": has_plotly})
        (out / f"{book.stem}.html").write_text(body, encoding="utf-8")
        figures = []
        source_figures = repo_root() / "figures" / book.stem
        if source_figures.is_dir():
            (out / "figures" / book.stem).mkdir(parents=True, exist_ok=True)
            for png in sorted(source_figures.glob("*.png")):
                shutil.copyfile(png, out / "figures" / book.stem / png.name)
                figures.append(f"figures/{book.stem}/{png.name}")
        cards.append(_card(summary, f"{book.stem}.html", figures))
    index = out / "index.html"
    index.write_text(_INDEX.format(cards="\n".join(cards)), encoding="utf-8")
    return index


def _card(summary: dict, page: str, figures: list[str]) -> str:
    answer = (_markdown_html(summary["answer"]) if summary["answer"]
              else f"<p class='missing'>No answer: {html.escape(summary['answer_from'])}.</p>")
    thumbs = "".join(f'<a href="{f}"><img src="{f}" alt="{html.escape(Path(f).stem)}"></a>'
                     for f in figures)
    return (f'<section class="notebook" id="{summary["name"]}">'
            f'<h2><a class="page" href="{page}">{html.escape(summary["title"])}</a></h2>'
            f'<h3>Question</h3>{_markdown_html(summary["question"])}'
            f'<h3>Answer</h3><div class="answer">{answer}'
            f'<p class="origin">(from {html.escape(summary["answer_from"])})</p></div>'
            f'<h3>Figures</h3><div class="figures">{thumbs}</div></section>')


_INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>LLM workbench: report</title>
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
section.notebook {{ border-top: 1px solid #ccc; padding: 1em 0; }}
h3 {{ margin-bottom: 0.2em; font-size: 1em; text-transform: uppercase; color: #666; }}
.figures img {{ height: 160px; margin: 4px; border: 1px solid #eee; }}
.origin, .missing {{ color: #888; font-size: 0.85em; }}
code {{ background: #f4f4f4; padding: 0 3px; }}
</style></head><body>
<h1>LLM workbench: five questions</h1>
<p>Each notebook states a question, runs its experiment through <code>lib/</code> and concludes;
its page shows the executed notebook. Generated by <code>invoke report</code>; readable offline.</p>
{cards}
</body></html>
"""
