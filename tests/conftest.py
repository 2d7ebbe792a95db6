"""Shared test fixtures.

The fitters' acceptance tests read published scaling-law data from ``shared/reference-data``,
which lives beside the clone (never copied into it). Where it is absent those tests are skipped
*loudly*: the run ends with one line naming them, and with ``WORKBENCH_REQUIRE_REFERENCE_DATA=1``
(set by ``.ci/run``) they fail instead, so CI cannot pass without having run them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_ENV = "WORKBENCH_REFERENCE_DATA"
REQUIRE_ENV = "WORKBENCH_REQUIRE_REFERENCE_DATA"


def reference_dir() -> Path:
    """``$WORKBENCH_REFERENCE_DATA`` if set, else ``../shared/reference-data`` beside the clone."""
    override = os.environ.get(REFERENCE_ENV)
    return Path(override) if override else ROOT.parent / "shared" / "reference-data"


_missing: list[str] = []


@pytest.fixture
def reference_data(request) -> Path:
    """The published reference data; skips (or fails, when CI requires it) where it is absent."""
    path = reference_dir()
    if path.is_dir():
        return path
    message = (f"reference data absent at {path} (set {REFERENCE_ENV} to its folder): "
               "the fitters' acceptance check did not run")
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message + f"; {REQUIRE_ENV}=1 requires it")
    _missing.append(request.node.nodeid)
    pytest.skip(message)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # Under xdist each worker records its own skips; the controller sees them as skip reports.
    names = list(_missing)
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        if "reference data absent" in reason and report.nodeid not in names:
            names.append(report.nodeid)
    if names:
        terminalreporter.write_line(
            f"REFERENCE DATA ABSENT: {len(names)} acceptance test(s) did not run "
            f"({', '.join(n.split('::')[-1] for n in names)}); looked in {reference_dir()}",
            red=True, bold=True)


@pytest.fixture
def one_thread():
    """Tiny models are dominated by thread hand-offs on a busy 2-core box: use one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
