"""The full profile, proven to run: every notebook executed by papermill with profile="full",
smoke=True (the full configuration's shapes, grids, seeds and code paths, cut to a few steps),
and the cost table of every notebook's full profile (`invoke run --profile full --dry-run`).

The notebooks run against a throw-away workbench root ($WORKBENCH_ROOT): figures and stores land
there, never over the committed figures/ or a real full run's store in data/. That root links
to the real code, benchmarks and tokenizer caches, and `shared/` beside it to the real one.
The smoke runs (marker `full_profile`) are part of `invoke test` (`--fast` leaves them out),
which runs them one at a time after the other unit tests.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import lib.scaling.cost as cost_mod
import tasks
from lib import experiments
from lib.core import profile_settings
from lib.scaling import CostEstimate, PlannedRun

ROOT = Path(tasks.ROOT)
BOOKS = tasks._notebooks(None)
# Seconds per notebook: each takes 1.5 to 5 minutes on 2 idle cores; a loaded machine may need
# more ($WORKBENCH_SMOKE_TIMEOUT).
SMOKE_TIMEOUT = int(os.environ.get("WORKBENCH_SMOKE_TIMEOUT", 1200))
# Left out of the throw-away root: outputs (made fresh there) and the repository's own state.
NOT_LINKED = {"figures", "data", "build", ".git"}


def parameters_cell(book: Path) -> str:
    """The source of a notebook's cell tagged ``parameters``."""
    for cell in json.loads(book.read_text())["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return "".join(cell["source"])
    return ""


def defines(source: str, name: str) -> bool:
    return any(line.split("=")[0].strip() == name for line in source.splitlines() if "=" in line)


def cell_timings(executed: Path) -> str:
    """Where a papermill run got to: each code cell's status and seconds (the slowest five and
    the one running when it stopped)."""
    cells = []
    for i, cell in enumerate(json.loads(executed.read_text())["cells"]):
        meta = cell.get("metadata", {}).get("papermill", {})
        if cell.get("cell_type") == "code" and meta.get("status") != "pending":
            first = "".join(cell.get("source", "")).strip().splitlines()[:1]
            cells.append((i, meta.get("status"), meta.get("duration") or 0.0, first[0][:40] if first else ""))
    running = [f"cell {i} {src!r} {status}" for i, status, _, src in cells if status == "running"]
    slowest = sorted(cells, key=lambda c: -c[2])[:5]
    return "; ".join(running + [f"cell {i} {src!r} {secs:.0f} s" for i, _, secs, src in slowest])


@pytest.fixture
def scratch_root(tmp_path, monkeypatch) -> Path:
    """A workbench root whose figures/ and data/ are empty and private to this test."""
    root = tmp_path / "workbench"
    root.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED:
            (root / entry.name).symlink_to(entry)
    (root / "figures").mkdir()
    (root / "data").mkdir()
    for cache in ("cache", "tokenizers"):  # caches are content-keyed and written atomically: shared
        (ROOT / "data" / cache).mkdir(parents=True, exist_ok=True)
        (root / "data" / cache).symlink_to(ROOT / "data" / cache)
    if (ROOT.parent / "shared").is_dir():   # notebook 03 reads ../shared/reference-data
        (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    monkeypatch.setenv("WORKBENCH_ROOT", str(root))
    monkeypatch.setenv("WORKBENCH_BATCH", "1")
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    return root


@pytest.mark.slow
@pytest.mark.full_profile
@pytest.mark.parametrize("book", BOOKS, ids=[b.stem for b in BOOKS])
def test_full_profile_runs_end_to_end_in_smoke_mode(book, scratch_root, tmp_path):
    params = parameters_cell(book)
    # Without a smoke parameter papermill would inject it unread and run the real full profile.
    assert defines(params, "smoke"), (
        f"{book.name}: its parameters cell defines no `smoke` (needed: smoke = False, passed to "
        "runtime.profile_settings(..., smoke=smoke, smoke_steps=SMOKE))")
    output = tmp_path / book.name
    # Nothing compares a smoke run's outputs, so it runs on the CPU's fastest kernels.
    status, seconds, detail = tasks._execute(book, output, {"profile": "full", "smoke": True},
                                             SMOKE_TIMEOUT, False, pin_cpu=False)
    if status != "ok" and output.exists():   # keep the partial notebook where a person can open it
        kept = ROOT / "build" / "full-smoke-failed" / book.name
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(output, kept)
        detail += f"; cells: {cell_timings(output)}; partial notebook: {kept}"
    assert status == "ok", f"{book.name} (profile=full, smoke=True) failed after {seconds:.0f} s: {detail}"
    executed = json.loads(output.read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert injected and "smoke = True" in "".join(injected[0]["source"])
    written = [p for p in (scratch_root / "figures").rglob("*") if p.is_file()]
    assert written, f"{book.name} wrote no figure under the throw-away root"


@pytest.mark.parametrize("book", BOOKS, ids=[b.stem for b in BOOKS])
def test_each_notebook_names_its_recipe_module(book):
    assert tasks.study_module(book) in experiments.__all__


def test_dry_run_prints_every_notebooks_cost_table(monkeypatch, capsys):
    """Every recipe's full-profile ``planned_runs`` costed (throughput injected: no training)."""
    monkeypatch.setattr(cost_mod, "measure_training_throughput", lambda shape, **kw: 1e5)
    tasks._dry_run(BOOKS, "full", "cpu", smoke=False)
    out = capsys.readouterr().out
    for book in BOOKS:
        assert f"== {book.name} (profile=full)" in out
        assert "FAILED" not in out.split(f"== {book.name}")[1].split("==")[0], out
    with_runs = [b for b in BOOKS if hasattr(getattr(experiments, tasks.study_module(b)), "planned_runs")]
    body = out.split("\nattention:")[0]   # the closing summary repeats over-limit lines
    assert body.count("planned runs on cpu") == len(with_runs)
    for book in set(BOOKS) - set(with_runs):
        assert "defines no planned_runs(settings) yet" in out.split(f"== {book.name}")[1]


@pytest.mark.parametrize("name", experiments.__all__)
def test_planned_runs_cover_the_full_profile_and_cost_something(name):
    module = getattr(experiments, name)
    if not hasattr(module, "planned_runs"):
        pytest.skip(f"lib.experiments.{name} has no planned_runs(settings) yet")
    full = profile_settings("full", quick=module.QUICK, full=module.FULL)
    runs = module.planned_runs(full)
    assert isinstance(runs, list) and all(isinstance(r, PlannedRun) for r in runs)
    assert len({r.label for r in runs}) == len(runs), "labels must name runs uniquely"
    estimate = cost_mod.estimate_cost(runs, "cpu", flops_per_second=1e12)
    assert isinstance(estimate, CostEstimate)
    if hasattr(module, "SMOKE"):
        smoke = module.planned_runs(profile_settings("full", quick=module.QUICK, full=module.FULL, smoke=True,
                                                     smoke_steps=module.SMOKE))
        # the smoke run keeps the shapes: each of its models is one the full profile trains
        shapes = {json.dumps(r.model.to_dict(), sort_keys=True, default=str) for r in runs}
        assert {json.dumps(r.model.to_dict(), sort_keys=True, default=str) for r in smoke} <= shapes
        assert sum(r.tokens for r in smoke) <= estimate.total_tokens


def test_run_flags_for_the_full_profile_only_and_dry_run_trains_nothing(monkeypatch, capsys):
    from invoke import Context, Exit

    for flags in ({"smoke": True}, {"allow_over_budget": True}):
        with pytest.raises(Exit, match="--profile full only"):
            tasks.run(Context(), profile="quick", **flags)
    monkeypatch.setattr(tasks, "_execute", lambda *a, **k: pytest.fail("a dry run executed a notebook"))
    monkeypatch.setattr(cost_mod, "measure_training_throughput", lambda shape, **kw: 1e5)
    tasks.run(Context(), profile="full", only="01", dry_run=True, smoke=True)
    assert "== 01_schedules.ipynb (profile=full, smoke)" in capsys.readouterr().out
