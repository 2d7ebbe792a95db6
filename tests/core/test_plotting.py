"""lib.core.plotting: figures work offline and name no machine's folder.

save_plotly embeds plotly.js (the page loads nothing from the network) byte-for-byte
reproducibly; setup_plotly_for_notebooks' renderer writes the figure's JSON (JupyterLab draws
it with its bundled plotly.js), never a CDN loader, plus in headless runs plotly's PNG snapshot; save_figure and save_plotly return
paths relative to the repository root.
"""

import base64
import re

import plotly
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from lib.core import BATCH_PLOTLY_RENDERER, PLOTLY_RENDERER, plotting, runtime

CDN = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//|\bimport\s*[\"'](?:https?:)?//", re.I)


def _figure():
    return go.Figure(go.Scatter(x=[0, 1, 2], y=[1, 0, 1], name="line"))


def test_save_plotly_embeds_plotly_js_reproducibly(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.ROOT_ENV, str(tmp_path))
    path = plotting.save_plotly(_figure(), "00_test", "fig")
    assert not path.is_absolute() and path.as_posix() == "figures/00_test/fig.html"
    first = (tmp_path / path).read_bytes()
    text = first.decode()
    assert not CDN.search(text), "the page loads a script from the network"
    assert f"plotly.js v{plotly.__version__.split('.')[0]}" in text or "plotly.js v" in text
    assert len(first) > 1_000_000  # plotly.js itself (about 4.7 MB) is inside the page
    assert 'id="00_test-fig"' in text and "Plotly.newPlot" in text
    plotting.save_plotly(_figure(), "00_test", "fig")
    assert (tmp_path / path).read_bytes() == first
    with pytest.raises(ValueError, match="plotly Figure"):
        plotting.save_plotly(object(), "00_test", "fig")
    with pytest.raises(ValueError, match="name"):
        plotting.save_plotly(_figure(), "00_test", "../fig")


@pytest.fixture
def restore_renderer():
    before = pio.renderers.default
    yield
    pio.renderers.default = before


def test_live_renderer_writes_the_figure_json_only(restore_renderer, monkeypatch):
    monkeypatch.setenv("WORKBENCH_BATCH", "0")
    assert plotting.setup_plotly_for_notebooks() == PLOTLY_RENDERER == "plotly_mimetype"
    assert pio.renderers.default == PLOTLY_RENDERER
    bundle = pio.renderers._build_mime_bundle(_figure().to_dict())
    assert set(bundle) == {"application/vnd.plotly.v1+json"}
    assert "cdn" not in str(bundle).lower()


def test_headless_renderer_without_a_chromium_writes_the_json_only(restore_renderer, monkeypatch):
    monkeypatch.setenv("WORKBENCH_BATCH", "1")
    monkeypatch.setattr(plotting, "chromium_path", lambda: None)
    assert plotting.setup_plotly_for_notebooks() == PLOTLY_RENDERER


def test_headless_renderer_adds_a_png_snapshot_drawn_by_chromium(restore_renderer, monkeypatch):
    if plotting.chromium_path() is None:
        pytest.skip("no Chromium (apt-get install chromium); .ci/run installs it")
    monkeypatch.setenv("WORKBENCH_BATCH", "1")
    assert plotting.setup_plotly_for_notebooks() == BATCH_PLOTLY_RENDERER
    bundle = pio.renderers._build_mime_bundle(_figure().to_dict())
    assert set(bundle) == {"application/vnd.plotly.v1+json", "image/png"}
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000  # a drawn figure, not a blank stub
    assert "cdn" not in str(bundle["application/vnd.plotly.v1+json"]).lower()


def test_save_figure_returns_root_relative_paths(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv(runtime.ROOT_ENV, str(tmp_path))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = plotting.save_figure(fig, "00_test", "rel")
    plt.close(fig)
    assert [p.as_posix() for p in paths] == ["figures/00_test/rel.png", "figures/00_test/rel.svg"]
    assert all(not p.is_absolute() and (tmp_path / p).stat().st_size > 0 for p in paths)
    assert str(tmp_path) not in repr(paths)  # what a notebook cell displays
