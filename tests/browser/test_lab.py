"""JupyterLab as a new user meets it: it starts (``invoke lab``'s command line, as root too),
opening a notebook leaves it unmodified, notebook 01 runs top to bottom, and every explorer
(a cell tagged "explorer") is live: dragging its first slider redraws its figure.

The suite is sized to finish in about two minutes on 2 cores. Notebook 01 runs top to bottom
(Run All) at tiny sizes: the throwaway copy's ``parameters`` cell shrinks the quick profile
(``TINY_01``), so every cell and code path runs, on a few hundred steps instead of a minute or
two of training. Notebook 02's explorer runs after its setup cells (the ``parameters`` cell and the
code cell after it). The explorers of 03, 04 and 05 need the results of their notebooks'
studies, so by default each is called, as its notebook calls it, on small synthetic inputs in
one scratch notebook (``SYNTHETIC_EXPLORERS``); ``WORKBENCH_BROWSER_FULL=1`` runs the real
notebooks instead, every cell above the explorer first (many minutes).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
BOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
FULL_ENV = "WORKBENCH_BROWSER_FULL"
# Limits that catch a hang, not a speed target: notebook 01's Run All at TINY_01 took 13-15 s on an
# idle 2-core machine, the whole suite 51 s (01 at its own quick profile, WORKBENCH_BROWSER_FULL=1:
# 50-110 s, more than twice that on a busy machine).
OPEN_S, RUN_ALL_S, CELL_S, REDRAW_S = 90, 480, 120, 30
# Appended to the copied 01's parameters cell: the quick profile at a few hundred steps (2 seeds,
# 2 LRs, runs of 8-32 steps, short benchmarks), so Run All exercises every cell in seconds.
TINY_01 = """
# tests/browser: tiny sizes, every cell still runs
from lib.experiments import schedules_study as _study
_study.QUICK.update(total_steps=400, bench_steps=300, bench_repeats=3, curve_steps=100_000,
                    corpus={**_study.QUICK["corpus"], "n_train_tokens": 20_000, "n_val_tokens": 4_000},
                    lengths=[8, 16, 32], warmup_steps=2, batch_size=4, seq_len=16, lr_grid=[1.2e-2, 2.4e-2],
                    seeds=[0, 1], eval_batches=2, eval_batch_size=4)
"""
# The explorers of 03, 04 and 05 called on small synthetic inputs (the shapes their unit tests
# use), one cell each after a setup cell, keyed by notebook prefix.
SYNTHETIC_SETUP = """import numpy as np
import pandas as pd
from lib import scaling
from lib.experiments import moe_lr_study, predictive_study, scaling_study

law = scaling.ParametricFit.from_params(scaling.EPOCH_2024)
lr_frame = pd.DataFrame([{"seed": seed, "arm": arm, "lr": lr, "val_loss": 3.0 + 0.1 * i + 0.01 * seed,
                          "diverged": False, "warmup": 0.05, "floor": 0.1}
                         for seed in range(2)
                         for arm, lrs in (("muon", (0.05, 0.1, 0.2)), ("adamw", (0.005, 0.01, 0.02)))
                         for i, lr in enumerate(lrs)])
table = pd.DataFrame({"arm": ["linear"], "seeds_reaching_target": [1], "seeds": [2],
                      "wall_to_target_s": [3.0], "speedup_wall": [1.5]})
horizon = pd.DataFrame({"predictor": ["linear"] * 5, "anchor": 0, "k": [1, 2, 3, 4, 5], "latency_s": 0.1,
                        "step_error": [0.4, 0.6, 0.8, 0.9, 1.0], "cum_error": [0.4, 0.5, 0.6, 0.7, 0.8]})
"""
SYNTHETIC_EXPLORERS = {
    "03": "scaling_study.explorer(par=law, fpt=lambda n: 6.0 * np.asarray(n, float), budgets=[1e18, 1e20])",
    "04": "explorer = moe_lr_study.explorer(lr_frame, lr_frame.iloc[:0])",
    "05": "explorer = predictive_study.explorer(table, horizon, predictor=\"linear\")",
}
EXPLORER_TAG = "explorer"

# Reads what the figure of a cell's output shows: image data, plotly traces, or SVG markup.
FIGURE_JS = """cell => {
  const out = cell.querySelector('.jp-Cell-outputArea');
  if (!out) return '';
  const parts = [];
  out.querySelectorAll('img').forEach(i => parts.push(i.src));
  out.querySelectorAll('.js-plotly-plot').forEach(p => parts.push(JSON.stringify(p.data || [])));
  out.querySelectorAll('svg').forEach(s => parts.push(s.outerHTML));
  return parts.join('|');
}"""


def _cells(book: Path) -> list[dict]:
    return json.loads(book.read_text(encoding="utf-8"))["cells"]


def _tagged(book: Path, tag: str) -> list[int]:
    return [i for i, c in enumerate(_cells(book)) if tag in c.get("metadata", {}).get("tags", [])]


def _setup_cells(book: Path) -> list[int]:
    cells = _cells(book)
    params = _tagged(book, "parameters")
    start = params[0] if params else 0
    code = [i for i in range(start, len(cells)) if cells[i]["cell_type"] == "code"]
    return code[:2]


class Notebook:
    """A notebook open in JupyterLab, driven through its menus and keyboard."""

    def __init__(self, watch, lab, book: Path):
        self.watch, self.page, self.book = watch, watch.page, book
        self.n_cells = len(_cells(book))
        start = time.monotonic()
        self.page.goto(lab.notebook_url(book.name))
        self.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=OPEN_S * 1000)
        self._until(lambda: self.cells.count() == self.n_cells and self.idle(), OPEN_S,
                    f"{book.name} did not finish loading with an idle kernel")
        # JupyterLab marks a notebook dirty for a moment while it loads and the kernel starts; one
        # whose metadata it rewrites, or whose plotly outputs it re-snapshots, stays dirty. By the
        # time the kernel is idle a clean notebook's mark has gone (measured: under 0.05 s after),
        # so 3 s tells the two apart without waiting out a notebook that stays dirty.
        tab = self.page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty")
        deadline = time.monotonic() + 3
        while tab.count() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.dirty_on_open = tab.count() > 0
        self.open_s = time.monotonic() - start

    @property
    def cells(self):
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")

    def idle(self) -> bool:
        status = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator")
        return status.count() > 0 and status.first.get_attribute("data-status") == "idle"

    def _until(self, predicate, seconds: float, message: str, poll: float = 0.25):
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > deadline:
                shot = self.watch.shot(f"timeout-{self.book.stem}")
                pytest.fail(f"{message} within {seconds} s (screenshot: {shot})")
            time.sleep(poll)

    def menu(self, menu: str, item: str) -> None:
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).first.click()

    def clear_outputs(self) -> None:
        self.menu("Edit", "Clear Outputs of All Cells")
        self._until(lambda: self.page.locator(
            ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputPrompt", has_text=re.compile(r"\[\d+\]")).count() == 0,
            10, "outputs did not clear")

    def prompt(self, i: int) -> str:
        return self.cells.nth(i).locator(".jp-InputPrompt").inner_text().strip()

    def run_cell(self, i: int) -> None:
        """Run cell ``i`` (outputs cleared first) and wait until it has finished."""
        self.cells.nth(i).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Control+Enter")
        self._until(lambda: re.fullmatch(r"\[\d+\]:", self.prompt(i)) is not None and self.idle(), CELL_S,
                    f"{self.book.name} cell {i} did not finish")

    def _finished(self, code: list[int]) -> bool:
        """Every cell ran, or the run stopped (an error leaves the cells after it unrun)."""
        prompts = [self.prompt(i) for i in code]
        return self.idle() and not any("*" in p for p in prompts) and any(re.fullmatch(r"\[\d+\]:", p) for p in prompts)

    def run_all(self) -> None:
        # The outputs were cleared first: until a cell has run, _finished stays False.
        self.menu("Run", "Run All Cells")
        code = [i for i, c in enumerate(_cells(self.book)) if c["cell_type"] == "code"]
        self._until(lambda: self._finished(code), RUN_ALL_S, f"{self.book.name} did not run to the end", poll=1.0)

    def run_all_above(self, i: int) -> None:
        self.cells.nth(i).locator(".jp-InputPrompt").click()
        self.menu("Run", "Run All Above Selected Cell")
        code = [j for j, c in enumerate(_cells(self.book)[:i]) if c["cell_type"] == "code"]
        self._until(lambda: self._finished(code), RUN_ALL_S, f"{self.book.name} did not run up to cell {i}", poll=1.0)

    def error_of(self, i: int) -> str | None:
        """The traceback a cell shows, or None."""
        area = self.cells.nth(i).locator(".jp-Cell-outputArea")
        if area.count() == 0:  # a markdown cell
            return None
        text = area.inner_text()
        return text if "Traceback (most recent call last)" in text or re.search(r"^\w+Error\b", text, re.M) else None

    def errors(self) -> dict[int, str]:
        code = [i for i, c in enumerate(_cells(self.book)) if c["cell_type"] == "code"]
        return {i: e for i in code if (e := self.error_of(i)) is not None}

    def figure(self, i: int) -> str:
        return self.cells.nth(i).evaluate(FIGURE_JS)


def drag_first_slider(nb: Notebook, i: int, dx: int = 80) -> None:
    handle = nb.cells.nth(i).locator(".jp-Cell-outputArea .noUi-handle, .jp-Cell-outputArea .slider .ui-slider-handle").first
    if handle.count() == 0:
        pytest.fail(f"{nb.book.name}: the explorer (cell {i}) shows no slider; is it live outside batch "
                    "runs (lib.core.in_batch)?")
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    nb.page.mouse.move(x, y)
    nb.page.mouse.down()
    nb.page.mouse.move(x + dx, y, steps=8)
    nb.page.mouse.up()


def check_explorer_redraws(nb: Notebook, i: int, name: str | None = None) -> None:
    """Drag the first slider of the explorer in cell ``i``; its figure must change. ``name``
    (default: the notebook's) names the screenshots."""
    cell = nb.cells.nth(i)
    name = name or nb.book.stem
    nb._until(lambda: nb.figure(i) != "", REDRAW_S, f"{nb.book.name}: the explorer (cell {i}) drew no figure")
    cell.scroll_into_view_if_needed()
    nb.watch.shot(f"{name}-explorer-before")
    before = nb.figure(i)
    drag_first_slider(nb, i)
    nb._until(lambda: nb.figure(i) not in ("", before), REDRAW_S,
              f"{nb.book.name}: dragging the explorer's first slider (cell {i}) did not change its figure")
    nb.watch.shot(f"{name}-explorer-after")
    assert nb.error_of(i) is None, nb.error_of(i)


def _shrink_parameters(book: Path, extra: str) -> None:
    """Append ``extra`` to the ``parameters`` cell of the copy ``book``, the rest byte for byte."""
    nb = json.loads(book.read_text(encoding="utf-8"))
    cell = nb["cells"][_tagged(book, "parameters")[0]]
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    cell["source"] = (source.rstrip("\n") + "\n" + extra).splitlines(keepends=True)
    book.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def schedules_run(open_page, lab, timings):
    """Notebook 01 (its copy, at TINY_01 unless WORKBENCH_BROWSER_FULL=1) opened in JupyterLab,
    then run top to bottom (Run All)."""
    if os.environ.get(FULL_ENV) != "1":
        _shrink_parameters(lab.root / "notebooks" / BOOKS[0].name, TINY_01)
    watch = open_page()
    with timings.phase("01_open"):
        nb = Notebook(watch, lab, BOOKS[0])
    watch.shot("01-opened")
    start = time.monotonic()
    with timings.phase("01_run_all"):
        nb.clear_outputs()
        nb.run_all()
    nb.run_all_s = time.monotonic() - start
    watch.shot("01-ran")
    yield nb
    watch.close()


@pytest.fixture(scope="module")
def synthetic_explorers(open_page, lab, timings):
    """The scratch notebook of SYNTHETIC_EXPLORERS, opened in JupyterLab and run (Run All); yields
    it and the cell index of each notebook prefix's explorer."""
    import nbformat

    cells = [nbformat.v4.new_code_cell(SYNTHETIC_SETUP)]
    index = {}
    for prefix, source in SYNTHETIC_EXPLORERS.items():
        index[prefix] = len(cells)
        cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": [EXPLORER_TAG]}))
    # 01's metadata (kernelspec, language_info), which JupyterLab leaves as it is: a notebook
    # whose metadata it rewrites on open stays dirty, and opening waits for that to settle.
    nb = nbformat.v4.new_notebook(cells=cells, metadata=json.loads(BOOKS[0].read_text())["metadata"])
    book = lab.root / "notebooks" / "explorers_synthetic.ipynb"
    nbformat.write(nb, book)
    watch = open_page()
    try:
        with timings.phase("explorers_03_04_05_open_run"):
            opened = Notebook(watch, lab, book)
            opened.run_all()
        errors = opened.errors()
        assert not errors, f"the synthetic explorers failed: {json.dumps(errors)[:3000]}"
        yield opened, index
    finally:
        watch.close()


def test_jupyterlab_starts_and_opens_a_notebook_unmodified(schedules_run):
    nb = schedules_run
    assert BOOKS[0].name.startswith("01_")
    assert not nb.dirty_on_open, ("opening 01 in JupyterLab marked it modified: its metadata differs from what "
                                  "JupyterLab writes (see tests/test_notebooks.py)")


def test_notebook_01_runs_top_to_bottom(schedules_run):
    nb = schedules_run
    errors = nb.errors()
    assert not errors, f"cells of 01 failed in JupyterLab: {json.dumps(errors)[:3000]}"
    code = [i for i, c in enumerate(_cells(nb.book)) if c["cell_type"] == "code"]
    unrun = [i for i in code if not re.fullmatch(r"\[\d+\]:", nb.prompt(i))]
    assert not unrun, f"cells of 01 that did not run: {unrun}"
    assert not [e for e in nb.watch.errors if "favicon" not in e], nb.watch.errors
    assert not nb.watch.network, f"JupyterLab or 01 fetched from the network: {nb.watch.network[:5]}"


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.stem)
def test_explorer_slider_redraws_the_figure(book, open_page, lab, request):
    explorers = _tagged(book, EXPLORER_TAG)
    if not explorers:
        pytest.skip(f"{book.name} has no cell tagged '{EXPLORER_TAG}' yet")
    i = explorers[0]
    timings = request.getfixturevalue("timings")
    if book == BOOKS[0]:
        with timings.phase("01_explorer"):
            check_explorer_redraws(request.getfixturevalue("schedules_run"), i)
        return
    prefix = book.name[:2]
    if prefix in SYNTHETIC_EXPLORERS and os.environ.get(FULL_ENV) != "1":
        nb, index = request.getfixturevalue("synthetic_explorers")
        with timings.phase(f"{prefix}_explorer"):
            check_explorer_redraws(nb, index[prefix], name=book.stem)
        return
    watch = open_page()
    try:
        with timings.phase(f"{prefix}_explorer"):
            nb = Notebook(watch, lab, book)
            # No plotly output here, so nothing but metadata could mark it modified on open.
            assert not nb.dirty_on_open, f"opening {book.name} in JupyterLab marked it modified"
            nb.clear_outputs()
            if os.environ.get(FULL_ENV) == "1":
                nb.run_all_above(i)
            else:
                for j in _setup_cells(book):
                    nb.run_cell(j)
                    assert nb.error_of(j) is None, f"{book.name} setup cell {j} failed: {nb.error_of(j)}"
            nb.run_cell(i)
            error = nb.error_of(i)
            if error and "NameError" in error and os.environ.get(FULL_ENV) != "1":
                missing = re.search(r"name '(\w+)' is not defined", error)
                pytest.skip(f"{book.name}'s explorer (cell {i}) needs '{missing.group(1) if missing else '?'}' from "
                            f"earlier cells; {FULL_ENV}=1 runs every cell above it first")
            assert error is None, f"{book.name}'s explorer (cell {i}) failed: {error}"
            check_explorer_redraws(nb, i)
    finally:
        watch.close()
