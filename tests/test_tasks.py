"""tasks.py: notebook selection, failure reporting, the results table."""

import json

import pytest
from invoke import Exit

import tasks


def test_only_selects_notebooks_and_rejects_unknown_prefixes():
    books = tasks._notebooks(None)
    assert books == sorted(books)
    if books:
        prefix = books[0].name[:2]
        assert all(b.name.startswith(prefix) for b in tasks._notebooks(prefix))
    with pytest.raises(Exit, match="names no notebook"):
        tasks._notebooks("99")


def test_failed_cell_names_the_cell_and_error(tmp_path):
    nb = {"cells": [
        {"cell_type": "markdown", "source": "# title"},
        {"cell_type": "code", "source": "x = 1", "outputs": []},
        {"cell_type": "code", "source": "train(model)\nmore", "outputs": [
            {"output_type": "error", "ename": "ValueError", "evalue": "lr must be positive"}]},
    ]}
    path = tmp_path / "out.ipynb"
    path.write_text(json.dumps(nb))
    msg = tasks._failed_cell(path)
    assert "code cell 2" in msg and "ValueError: lr must be positive" in msg and "train(model)" in msg
    assert "no output notebook" in tasks._failed_cell(tmp_path / "missing.ipynb")


def test_table_lists_every_notebook():
    text = tasks._table([("01_a.ipynb", "ok", 1.5), ("02_bb.ipynb", "FAILED", 20.0)])
    assert "01_a.ipynb" in text and "FAILED" in text and "20.0" in text


def test_refresh_strips_volatile_metadata():
    nb = {"metadata": {"papermill": {"duration": 3}}, "cells": [
        {"metadata": {"papermill": {"start_time": "t"}, "tags": ["parameters"]}}]}
    tasks._strip_volatile_metadata(nb)
    assert nb == {"metadata": {}, "cells": [{"metadata": {"tags": ["parameters"]}}]}


def test_execute_runs_papermill_and_names_the_failing_cell(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "quick"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("assert profile == 'full', f'got {profile}'")]
    book = tmp_path / "99_failing.ipynb"
    nbformat.write(nb, book)
    status, secs, detail = tasks._execute(book, tmp_path / "ran.ipynb", {"profile": "quick"}, 120, False)
    assert status == "FAILED" and "AssertionError: got quick" in detail and secs > 0
    status, _, detail = tasks._execute(book, tmp_path / "ran.ipynb", {"profile": "full"}, 120, False)
    assert (status, detail) == ("ok", "")
