"""tasks.py: notebook selection, failure reporting, the results table."""

import json
import re

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
    for empty in (",", " , "):   # no prefix at all: a clear error, not an empty run
        with pytest.raises(Exit, match="names no notebook; give comma-separated prefixes"):
            tasks._notebooks(empty)


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


def test_lab_command_takes_port_ip_no_browser_and_allows_root(monkeypatch):
    monkeypatch.setattr(tasks.os, "geteuid", lambda: 0)
    cmd = tasks.lab_command(port=9999, ip="0.0.0.0", no_browser=True)
    assert cmd[1:4] == ["-m", "jupyter", "lab"]
    assert {"--port=9999", "--ip=0.0.0.0", "--no-browser", "--allow-root"} <= set(cmd)
    assert f"--notebook-dir={tasks.NOTEBOOKS}" in cmd
    monkeypatch.setattr(tasks.os, "geteuid", lambda: 1000)
    cmd = tasks.lab_command()
    assert "--allow-root" not in cmd and "--no-browser" not in cmd and "--port=8888" in cmd


def test_refresh_writes_the_kernel_metadata_jupyterlab_writes():
    from jupyter_client.kernelspec import KernelSpecManager

    nb = {"metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                       "language_info": {"name": "python", "version": "3.11.7"}}, "cells": []}
    tasks._normalise_kernel_metadata(nb)
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert nb["metadata"]["kernelspec"] == {"display_name": spec.display_name, "language": "python",
                                            "name": "python3"}
    info = nb["metadata"]["language_info"]
    assert info["version"] == "3.11.7" and info["pygments_lexer"] == "ipython3"
    assert info["codemirror_mode"] == {"name": "ipython", "version": 3}


def test_execute_runs_notebooks_in_batch_mode(tmp_path, monkeypatch):
    import nbformat

    monkeypatch.delenv("WORKBENCH_BATCH", raising=False)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from lib.core import in_batch\nassert in_batch(), 'live mode'")]
    book = tmp_path / "98_batch.ipynb"
    nbformat.write(nb, book)
    status, _, detail = tasks._execute(book, tmp_path / "ran.ipynb", {}, 120, False)
    assert (status, detail) == ("ok", "")


def test_headless_runs_pin_the_cpu_kernels_so_outputs_match_across_machines():
    """papermill and nbval (not the unit tests) run every CPU library on a kernel path that is the same on AMD and
    Intel CPUs: ATen on AVX2, MKL in its COMPATIBLE reproducibility branch (its AVX2 branch falls back to AUTO on an
    AMD EPYC, and an Intel Xeon then computed other bits), NumPy on its AVX2 loops. Each library is asked what it
    runs, so a pin that a library ignores fails here."""
    import os
    import platform
    import subprocess
    import sys

    import torch

    assert {k: tasks.NOTEBOOK_ENV[k] for k in tasks.REPRODUCIBLE_CPU} == {
        k: os.environ.get(k, v) for k, v in tasks.REPRODUCIBLE_CPU.items()}
    if platform.machine() not in ("x86_64", "AMD64") or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("the pins name x86 vector units; this CPU has neither AVX2 nor AVX-512")
    probe = ("import torch; torch.manual_seed(0); a = torch.randn(300, 300, dtype=torch.float64).float(); "
             "print(torch.backends.cpu.get_cpu_capability(), (a @ a).sum().item())")
    env = dict(os.environ, **tasks.NOTEBOOK_ENV)
    pinned = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    again = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert pinned.stdout.split()[0] == "AVX2"
    assert pinned.stdout == again.stdout
    # MKL logs the branch it actually runs with every call.
    mkl = subprocess.run([sys.executable, "-c", "import torch; a = torch.ones(64, 64); print((a @ a).sum().item())"],
                         env=dict(env, MKL_VERBOSE="1"), capture_output=True, text=True, check=True)
    branches = set(re.findall(r"CNR:(\S+)", mkl.stdout + mkl.stderr))
    assert branches == {"COMPATIBLE"}, branches
    simd = subprocess.run([sys.executable, "-c", "import numpy._core._multiarray_umath as m; print(sorted(k for k, v in "
                           "m.__cpu_features__.items() if v))"], env=env, capture_output=True, text=True, check=True)
    assert "'X86_V4'" not in simd.stdout and "'AVX512_SPR'" not in simd.stdout, simd.stdout
