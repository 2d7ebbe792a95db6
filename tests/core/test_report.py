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


class _Kernel:
    def __init__(self, parent):
        self.parent = parent

    def get_parent(self, channel=None):
        return self.parent


class _Shell:
    def __init__(self, kernel):
        self.kernel = kernel


def _execute_request(allow_stdin):
    return {"header": {"msg_type": "execute_request"}, "msg_type": "execute_request",
            "content": {"code": "explorer()", "allow_stdin": allow_stdin}}


@pytest.mark.parametrize("shell, expected", [
    (None, True),                                              # plain Python
    (_Shell(None), True),                                      # terminal IPython: no frontend
    (_Shell(_Kernel(_execute_request(False))), True),          # nbclient (papermill) or nbval
    (_Shell(_Kernel(_execute_request(True))), False),          # JupyterLab's Run
    (_Shell(_Kernel({"header": {"msg_type": "comm_msg"}, "content": {}})), False),  # a widget callback
    (_Shell(_Kernel({})), False),                              # no request yet
], ids=["python", "terminal", "headless", "jupyterlab", "widget-callback", "no-request"])
def test_in_batch_without_the_variable_reads_the_kernel(monkeypatch, shell, expected):
    import IPython

    monkeypatch.delenv(BATCH_ENV, raising=False)
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    assert in_batch() is expected


def test_in_batch_variable_overrides_a_headless_kernel(monkeypatch):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: _Shell(_Kernel(_execute_request(False))))
    monkeypatch.setenv(BATCH_ENV, "0")
    assert in_batch() is False


def test_in_batch_is_true_in_a_real_kernel_run_by_nbclient(monkeypatch, tmp_path):
    from nbclient import NotebookClient

    # nbclient is what papermill and nbconvert --execute drive; nbval sends the same request.
    monkeypatch.delenv(BATCH_ENV, raising=False)
    nb = new_notebook(cells=[new_code_cell("from lib.core import in_batch\nprint(in_batch())")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=60, kernel_name="python3",
                   resources={"metadata": {"path": str(runtime.repo_root())}}).execute()
    assert nb.cells[0].outputs[0]["text"].strip() == "True"


SNAPSHOT = "iVBORw0KGgoSNAPSHOTofTheFigure"  # a headless run's PNG of the plotly figure


def _notebook(path, tagged=True):
    fig = go.Figure(go.Scatter(x=[0, 1], y=[2, 3]))
    cells = [
        new_markdown_cell("# 09 · A test question\n\n**Question.** Does the report show this question?\n\n"
                          "**Method.** Build it."),
        new_code_cell("fig", outputs=[
            new_output("display_data", data={
                "text/html": '<script type="module">import "https://cdn.plot.ly/plotly-4.1.1.min"</script>'}),
            new_output("display_data", data={"application/vnd.plotly.v1+json": json.loads(fig.to_json()),
                                             "text/html": '<script src="https://cdn.plot.ly/plotly.min.js"></script>',
                                             "image/png": SNAPSHOT}),
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
    assert SNAPSHOT not in page  # the live figure replaces the snapshot JupyterLab shows before drawing it
    assert (tmp_path / "site" / "assets" / "plotly.min.js").stat().st_size > 1_000_000
    assert 'href="index.html"' in page
    with pytest.raises(ValueError, match="notebooks"):
        build_report([], tmp_path / "site")
    with pytest.raises(ValueError, match="notebooks"):
        build_report([tmp_path / "missing.ipynb"], tmp_path / "site")
