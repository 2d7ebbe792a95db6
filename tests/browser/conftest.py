"""Browser tests: Playwright driving the system Chromium (Debian's ``chromium`` package).

Playwright's own browser download is unreachable here, so the tests launch
``/usr/bin/chromium`` (or ``$WORKBENCH_CHROMIUM``) headless, with the flags that keep it off
the network. Where Chromium or Playwright is missing the tests are skipped *loudly*: the run
ends with one line saying the browser tests did not run. Under CI (``WORKBENCH_REQUIRE_BROWSER=1``
or ``WORKBENCH_REQUIRE_LOCKED=1``, both set by ``.ci/run``) they fail instead.

Fixtures: ``browser`` (one Chromium per session), ``lab`` (a JupyterLab started with
``tasks.lab_command`` on a free port with a token, serving copies of the notebooks in a
throwaway workbench root, so nothing in the checkout is modified), ``report_site`` (the
``invoke report`` site built from the committed notebooks, in a thread that starts with the
session), ``timings`` (``with timings.phase(name):`` records a phase's wall-clock seconds).
Screenshots go to ``build/browser/``; the phases' timings to ``build/browser/timings.json``,
their total is printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lib.core import chromium_path

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "browser"
REQUIRE_ENVS = ("WORKBENCH_REQUIRE_BROWSER", "WORKBENCH_REQUIRE_LOCKED")
SKIP_PHRASE = "browser tests did not run"
# As root in a container: no sandbox; no GPU; and no background connections, which this
# machine's closed network refuses many at a time.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
LAB_START_S = 90

_skipped: list[str] = []


class Timings:
    """Wall-clock seconds per phase of the browser suite, from the first browser fixture on."""

    def __init__(self):
        self.start = time.monotonic()
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.monotonic() - start, 2)

    def summary(self) -> dict:
        return {"total_s": round(time.monotonic() - self.start, 2), "phases_s": self.phases}


_timings: list[Timings] = []


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return ("no Chromium found (apt-get install -y chromium, or set $WORKBENCH_CHROMIUM to a "
                "Chromium executable)")
    return None


@pytest.fixture(scope="session")
def browser_available() -> None:
    why = _missing()
    if why is None:
        return
    message = f"{SKIP_PHRASE}: {why}"
    if any(os.environ.get(name) == "1" for name in REQUIRE_ENVS):
        pytest.fail(message + f"; CI ({' or '.join(REQUIRE_ENVS)}=1) requires them")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _require_browser(request, browser_available):
    """Every browser test needs Chromium; the skip (or CI failure) is decided once per session."""
    return None


def pytest_runtest_logreport(report):
    if report.skipped and SKIP_PHRASE in str(report.longrepr):
        _skipped.append(report.nodeid)


@pytest.fixture(scope="session")
def timings(browser_available) -> Timings:
    _timings.append(Timings())
    return _timings[-1]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _timings:
        summary = _timings[-1].summary()
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / "timings.json").write_text(json.dumps(summary, indent=1) + "\n")
        phases = ", ".join(f"{k} {v:.1f}" for k, v in summary["phases_s"].items())
        terminalreporter.write_line(f"browser suite: {summary['total_s']:.1f} s in all ({phases}; "
                                    f"{(SHOTS / 'timings.json').relative_to(ROOT)})")
    names = list(_skipped)
    for report in terminalreporter.stats.get("skipped", []):
        if SKIP_PHRASE in str(report.longrepr) and report.nodeid not in names:
            names.append(report.nodeid)
    if names:
        why = _missing() or "see the skip reasons"
        terminalreporter.write_line(
            f"BROWSER TESTS DID NOT RUN: {len(names)} test(s) skipped ({why}); "
            f"CI installs Chromium in .ci/run and fails instead of skipping", red=True, bold=True)


@pytest.fixture(scope="session")
def browser(browser_available, timings, _report_build):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        with timings.phase("chromium_launch"):
            chromium = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageWatch:
    """A page (in its own browser context) with its console errors, uncaught exceptions and
    requests to the network; ``shot(name)`` saves a screenshot under ``build/browser/``."""

    def __init__(self, context, allowed_hosts=("127.0.0.1", "localhost")):
        self.context = context
        page = self.page = context.new_page()
        self.errors, self.network = [], []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

        def request(r):
            url = r.url
            if url.startswith(("file:", "data:", "blob:", "about:")):
                return
            host = url.split("//", 1)[-1].split("/", 1)[0].split(":", 1)[0]
            if host not in allowed_hosts:
                self.network.append(url)
        page.on("request", request)

    def shot(self, name: str) -> Path:
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="session")
def open_page(browser):
    """``open_page()`` -> a ``PageWatch`` in a fresh browser context (close it when done)."""
    return lambda: PageWatch(browser.new_context(viewport={"width": 1400, "height": 1000}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_settings(settings_dir: Path) -> None:
    """User settings for a test JupyterLab: every cell in the DOM (the tests address cells by
    index), no autosave, no news or update checks (they would go to the network)."""
    files = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
    }
    for rel, value in files.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


class Lab:
    """A running JupyterLab: its URL, token and the workbench root it serves."""

    def __init__(self, url: str, token: str, root: Path, log: Path):
        self.url, self.token, self.root, self.log = url, token, root, log

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}&reset"


@pytest.fixture(scope="session")
def lab(browser_available, tmp_path_factory, timings, _report_build):
    sys.path.insert(0, str(ROOT))
    import tasks

    root = tmp_path_factory.mktemp("lab-root")
    shutil.copytree(ROOT / "notebooks", root / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (root / "benchmarks").symlink_to(ROOT / "benchmarks")  # notebook 01 imports bench_schedules
    settings = root / "lab-settings"
    _lab_settings(settings)
    port, token = _free_port(), secrets.token_hex(16)
    # As a user's JupyterLab: live explorers (no $WORKBENCH_BATCH), the inline matplotlib backend
    # (no $MPLBACKEND), figures and stores in the throwaway root ($WORKBENCH_ROOT).
    env = {k: v for k, v in os.environ.items() if k not in ("WORKBENCH_BATCH", "MPLBACKEND")}
    env.update({"WORKBENCH_ROOT": str(root), "JUPYTERLAB_SETTINGS_DIR": str(settings),
                "JUPYTERLAB_WORKSPACES_DIR": str(root / "lab-workspaces"),
                "JUPYTER_CONFIG_DIR": str(root / "jupyter-config"), "PYTHONHASHSEED": "0"})
    cmd = tasks.lab_command(port=port, ip="127.0.0.1", no_browser=True, notebook_dir=root / "notebooks")
    cmd += [f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False"]
    log = SHOTS / "jupyterlab.log"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        deadline = started + LAB_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within {LAB_START_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        timings.phases["jupyterlab_start"] = round(time.monotonic() - started, 2)
        yield Lab(url, token, root, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def _report_build(browser_available, timings):
    """The report site, built in a thread beside JupyterLab's start and notebook 01's run (it
    reads the committed notebooks only): the report tests need not wait for it afterwards."""
    from lib.core import build_report

    def build() -> Path:
        with timings.phase("report_build"):
            books = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
            return build_report(books, SHOTS / "report")

    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(build)


@pytest.fixture(scope="session")
def report_site(_report_build, timings) -> Path:
    with timings.phase("report_wait"):
        return _report_build.result(timeout=300)
