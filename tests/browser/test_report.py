"""The ``invoke report`` site in a browser, offline: the index and every notebook's page load
with every image drawn, no console error and no request to the network; the index shows each
notebook's question and answer, and interactive figures are drawn by the site's own plotly.js."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
BOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _load(watch, path: Path):
    watch.page.goto(path.resolve().as_uri())
    watch.page.wait_for_load_state("load")
    broken = watch.page.evaluate(
        "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 120))")
    return broken, watch.page.evaluate("document.images.length")


def test_index_lists_every_question_with_its_answer_and_figures(report_site, open_page):
    watch = open_page()
    try:
        broken, n_images = _load(watch, report_site)
        watch.shot("report-index")
        assert not broken, f"images that did not load: {broken}"
        sections = watch.page.locator("section.notebook")
        assert sections.count() == len(BOOKS)
        for i, book in enumerate(BOOKS):
            section = sections.nth(i)
            assert section.get_attribute("id") == book.stem
            assert section.locator("h2 a.page").get_attribute("href") == f"{book.stem}.html"
            assert section.locator("h3", has_text="Question").count() == 1
            question = section.locator("h3:text-is('Question') + *").inner_text()
            assert len(question) > 40, f"{book.stem}: no question found in its first cell"
        assert n_images >= len(BOOKS)
        assert not watch.errors, watch.errors
        assert not watch.network, f"the index fetched from the network: {watch.network[:5]}"
    finally:
        watch.close()


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.stem)
def test_notebook_page_loads_offline_with_every_image(book, report_site, open_page):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    watch = open_page()
    try:
        cells = json.loads(book.read_text())["cells"]
        plotly_outputs = sum(1 for c in cells for o in c.get("outputs", [])
                             if "application/vnd.plotly.v1+json" in o.get("data", {}))
        broken, n_images = _load(watch, report_site.parent / f"{book.stem}.html")
        try:  # plotly draws after load
            watch.page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= "
                                         f"{plotly_outputs}", timeout=10_000)
        except PlaywrightTimeout:  # the count is asserted below, with the numbers
            pass
        watch.shot(f"report-{book.stem}")
        assert not broken, f"{book.stem}: images that did not load: {broken}"
        assert not watch.errors, f"{book.stem}: console errors: {watch.errors}"
        assert not watch.network, f"{book.stem}: fetched from the network: {watch.network[:5]}"
        expected_images = sum(1 for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
                              and "application/vnd.plotly.v1+json" not in o["data"])  # drawn live, not as its snapshot
        assert n_images >= expected_images
        drawn = watch.page.locator(".js-plotly-plot .main-svg").count()
        assert drawn >= plotly_outputs, f"{book.stem}: {plotly_outputs} plotly figures, {drawn} drawn"
    finally:
        watch.close()
