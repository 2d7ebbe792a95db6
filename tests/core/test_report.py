"""lib.core.report: batch detection, and the report site (questions, answers from the cell
tagged "conclusion", plotly figures drawn by a local plotly.js, nothing loaded from a CDN)."""

import json
import re

import nbformat
import plotly.graph_objects as go
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from lib.core import BATCH_ENV, CONCLUSION_TAG, build_report, in_batch, notebook_summary, runtime

NETWORK = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//|\bimport\s*[\"'](?:https?:)?//"
                     r"|<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//", re.I)


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_in_batch_follows_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(BATCH_ENV, value)
    assert in_batch() is expected


def test_in_batch_rejects_an_unknown_value(monkeypatch):
    monkeypatch.setenv(BATCH_ENV, "maybe")
    with pytest.raises(ValueError, match=BATCH_ENV):
        in_batch()


def _notebook(path, tagged=True):
    fig = go.Figure(go.Scatter(x=[0, 1], y=[2, 3]))
    cells = [
        new_markdown_cell("# 09 · A test question\n\n**Question.** Does the report show this question?\n\n"
                          "**Method.** Build it."),
        new_code_cell("fig", outputs=[
            new_output("display_data", data={
                "text/html": '<script type="module">import "https://cdn.plot.ly/plotly-4.1.1.min"</script>'}),
            new_output("display_data", data={"application/vnd.plotly.v1+json": json.loads(fig.to_json()),
                                             "text/html": '<script src="https://cdn.plot.ly/plotly.min.js"></script>'}),
        ]),
        new_markdown_cell("## Conclusion\n\nThe prose conclusion."),
        new_code_cell("show_markdown(text)", outputs=[
            new_output("display_data", data={"text/markdown": "**Answer.** Computed: 0.42.",
                                             "text/plain": "<IPython.core.display.Markdown object>"})]),
    ]
    if tagged:
        cells[-1].metadata["tags"] = [CONCLUSION_TAG]
    nb = new_notebook(cells=cells)
    nbformat.write(nb, str(path))
    return path


def test_summary_takes_the_answer_from_the_cell_tagged_conclusion(tmp_path):
    summary = notebook_summary(_notebook(tmp_path / "09_test.ipynb"))
    assert summary["title"] == "09 · A test question"
    assert summary["question"] == "Does the report show this question?"
    assert summary["answer"] == "**Answer.** Computed: 0.42."
    untagged = notebook_summary(_notebook(tmp_path / "10_test.ipynb", tagged=False))
    assert untagged["answer"].strip() == "The prose conclusion."
    assert "no cell is tagged" in untagged["answer_from"]


def test_report_site_is_offline_and_indexes_questions_and_answers(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.ROOT_ENV, str(tmp_path))
    (tmp_path / "figures" / "09_test").mkdir(parents=True)
    (tmp_path / "figures" / "09_test" / "curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    book = _notebook(tmp_path / "09_test.ipynb")
    index = build_report([book], tmp_path / "site")
    text = index.read_text()
    assert "Does the report show this question?" in text and "Computed: 0.42." in text
    assert 'src="figures/09_test/curve.png"' in text and (tmp_path / "site/figures/09_test/curve.png").exists()
    page = (tmp_path / "site" / "09_test.html").read_text()
    assert not NETWORK.search(page), NETWORK.search(page).group(0)
    assert not NETWORK.search(text)
    assert '<script src="assets/plotly.min.js"></script>' in page and 'id="plotly-1-1"' in page
    assert (tmp_path / "site" / "assets" / "plotly.min.js").stat().st_size > 1_000_000
    assert 'href="index.html"' in page
    with pytest.raises(ValueError, match="notebooks"):
        build_report([], tmp_path / "site")
    with pytest.raises(ValueError, match="notebooks"):
        build_report([tmp_path / "missing.ipynb"], tmp_path / "site")
