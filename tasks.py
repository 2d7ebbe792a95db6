"""The workbench's one entry point (invoke).

    invoke lab [--port 8888] [--ip localhost] [--no-browser]
                                               JupyterLab on notebooks/ (adds --allow-root as root)
    invoke board [--port 6006]                 TensorBoard on the runs directory (build/runs)
    invoke report [--source notebooks]         a static offline HTML site of the executed
                                               notebooks in build/report/
    invoke run [--profile quick|full] [--only 01,03] [--device cuda]
                                               execute notebooks headlessly (papermill) into build/
    invoke run --profile full --dry-run        each notebook's planned runs, FLOPs and hours; no training
    invoke refresh [--only 01]                 re-execute notebooks in place (quick profile)
    invoke test [--fast] [--latest]            unit tests, then nbval over every notebook
                                               (--latest: in a throwaway env of the newest releases)
    invoke lock                                re-resolve constraints.txt, the tested environment
    invoke bench [--only schedules]            run benchmarks/ and print their tables
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from invoke import Exit, task

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build"
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
LOCK = ROOT / "constraints.txt"
# The torch release the lock pins: a local CPU wheel on the CI machines, and the release a GPU
# user's CUDA build (2.13.0+cuXXX) must match, since `==2.13.0` admits any local build label.
LOCKED_TORCH = "2.13.0"
# Outer wall-clock limits per notebook (seconds): papermill can hang after the last cell.
TIMEOUT = {"quick": 20 * 60, "full": 6 * 60 * 60}
# The quick profile's budget per notebook on 2 idle cores, and where `invoke refresh` records
# what each notebook took.
QUICK_BUDGET_S = 180
TIMINGS = NOTEBOOKS / "timings.json"
# Headless executions (papermill, nbval) set this, so an explorer cell draws its static figure
# instead of live widgets (lib.core.in_batch reads it; JupyterLab sessions leave it unset).
BATCH = {"WORKBENCH_BATCH": "1"}
# The committed outputs are nbval's reference, so headless runs must compute the same bits on any
# x86 CPU CI lands on, AMD or Intel. By default each library picks kernels for the CPU it finds,
# and training amplifies a changed last bit into changed verdicts. The pins: ATen's AVX2 kernels;
# MKL's COMPATIBLE branch of conditional numerical reproducibility, the only branch MKL honours on
# non-Intel CPUs (on an AMD EPYC, MKL_CBWR=AVX2 runs its AUTO branch, "CNR:AUTO" in MKL_VERBOSE's
# log, so an Intel Xeon pinned to AVX2 computed other bits); oneDNN's AVX2 path; OpenBLAS's Haswell
# kernels for NumPy and SciPy; NumPy's AVX2 loops (its AVX-512 targets differ between an EPYC and
# a Sapphire Rapids Xeon). An explicit setting in the environment wins. Notebook executions only:
# torch.compile's CPU code generation does not follow the ATen pin, and the unit tests that compare
# compiled with eager code fail under it.
REPRODUCIBLE_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2",
                    "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}
NOTEBOOK_ENV = {**BATCH, **{k: os.environ.get(k, v) for k, v in REPRODUCIBLE_CPU.items()}}
# The kernelspec as JupyterLab writes it when it opens a notebook (ipykernel's python3 kernel):
# refresh writes the same, so opening a refreshed notebook does not mark it modified.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
RUNS = BUILD / "runs"
RUNS_ENV = "WORKBENCH_RUNS_DIR"  # lib.training.tensorboard's runs directory for sweeps


def _notebooks(only: str | None) -> list[Path]:
    books = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        if not wanted:
            raise Exit(f"--only {only!r} names no notebook; give comma-separated prefixes, e.g. 01,03",
                       code=2)
        unknown = [w for w in wanted if not any(b.name.startswith(w) for b in books)]
        if unknown:
            names = ", ".join(b.name for b in books)
            raise Exit(f"--only names no notebook for {unknown}; notebooks are: {names}", code=2)
        books = [b for b in books if any(b.name.startswith(w) for w in wanted)]
    return books


def _failed_cell(path: Path) -> str:
    """Describe the first cell of an executed notebook whose output is an error."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):
        return "no output notebook was written"
    code_index = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        code_index += 1
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first_line = "".join(cell.get("source", "")).strip().splitlines()[:1]
                return (f"code cell {code_index} ({first_line[0][:60] if first_line else ''!r}): "
                        f"{out.get('ename')}: {str(out.get('evalue'))[:200]}")
    return "no cell holds an error (the kernel died or papermill was stopped)"


def _execute(book: Path, output: Path, parameters: dict, timeout: int, progress: bool,
             pin_cpu: bool = True) -> tuple[str, float, str]:
    """Run ``book`` with papermill into ``output``; returns (status, seconds, what failed).
    ``pin_cpu=False`` leaves the CPU libraries on their fastest kernels (``REPRODUCIBLE_CPU``
    costs 2.5-3.5x on MKL's matrix products), for runs whose outputs nothing compares."""
    cmd = [sys.executable, "-m", "papermill", str(book), str(output), "--cwd", str(NOTEBOOKS),
           "--kernel", "python3", "--language", "python"]
    for key, value in parameters.items():
        cmd += ["-p", key, str(value)]
    cmd += ["--progress-bar" if progress else "--no-progress-bar"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, timeout=timeout, capture_output=not progress, text=True,
                              env=dict(os.environ, **(NOTEBOOK_ENV if pin_cpu else BATCH)))
        ok = proc.returncode == 0
        detail = "" if ok else _failed_cell(output)
        if not ok and proc.stderr and "no output notebook" in detail:
            detail += ": " + proc.stderr.strip().splitlines()[-1][:300]
    except subprocess.TimeoutExpired:
        ok, detail = False, f"stopped by the outer wall-clock limit ({timeout} s)"
    return ("ok" if ok else "FAILED"), time.perf_counter() - start, detail


def _table(rows: list[tuple[str, str, float]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'notebook':<{width}}  status   seconds", f"{'-' * width}  ------  --------"]
    lines += [f"{name:<{width}}  {status:<6}  {secs:8.1f}" for name, status, secs in rows]
    return "\n".join(lines)


def lab_command(port: int = 8888, ip: str = "localhost", no_browser: bool = False,
                notebook_dir: Path = NOTEBOOKS) -> list[str]:
    """The ``jupyter lab`` command line of ``invoke lab`` (``--allow-root`` when run as root)."""
    cmd = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={notebook_dir}", f"--port={int(port)}",
           f"--ip={ip}"]
    if no_browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # Jupyter refuses to start as root without it (containers, CI)
    return cmd


@task(help={
    "port": "port to serve on (default 8888)",
    "ip": "address to listen on (default localhost; 0.0.0.0 for every interface)",
    "no_browser": "do not open a browser",
})
def lab(c, port: int = 8888, ip: str = "localhost", no_browser: bool = False):
    """Start JupyterLab on notebooks/; sweeps run in it log to TensorBoard (see `invoke board`)."""
    env = {RUNS_ENV: os.environ.get(RUNS_ENV, str(RUNS))}
    c.run(shlex.join(lab_command(port, ip, no_browser)), pty=True, env=env)


@task(help={"port": "port to serve on (default 6006)", "ip": "address to listen on (default localhost)",
            "logdir": "the runs directory (default $WORKBENCH_RUNS_DIR or build/runs)"})
def board(c, port: int = 6006, ip: str = "localhost", logdir: str | None = None):
    """Start TensorBoard on the runs directory (one run directory per sweep run id)."""
    path = Path(logdir or os.environ.get(RUNS_ENV) or RUNS)
    path.mkdir(parents=True, exist_ok=True)
    c.run(shlex.join([sys.executable, "-m", "tensorboard.main", "--logdir", str(path),
                      "--port", str(int(port)), "--host", ip]), pty=True)


@task(help={"source": "folder of executed notebooks (default notebooks/, the committed outputs; "
                      "or build/quick after `invoke run`)",
            "out": "output folder (default build/report)"})
def report(c, source: str | None = None, out: str | None = None):
    """Write a static HTML site of the executed notebooks, readable offline, to build/report/."""
    from lib.core import build_report

    src = Path(source) if source else NOTEBOOKS
    books = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not books:
        raise Exit(f"--source {src} holds no notebooks named NN_*.ipynb", code=2)
    index = build_report(books, Path(out) if out else BUILD / "report")
    print(f"report: {index}")


@task(help={
    "profile": "quick (CPU, minutes) or full (GPU, the real experiment)",
    "only": "comma-separated notebook prefixes, e.g. 01,03",
    "device": "force a device (cpu, cuda, cuda:1, mps); default: best available",
    "timeout": "outer wall-clock limit per notebook in seconds (default by profile)",
    "dry_run": "print each notebook's planned runs, FLOPs and estimated hours on this device; train nothing",
    "smoke": "with --profile full: the full configuration cut to a few steps (the CPU smoke test)",
    "allow_over_budget": "with --profile full: start even when the estimate exceeds the 6 h limit",
})
def run(c, profile: str = "quick", only: str | None = None, device: str | None = None,
        timeout: int | None = None, progress: bool = True, dry_run: bool = False, smoke: bool = False,
        allow_over_budget: bool = False):
    """Execute notebooks headlessly with papermill into build/; figures land in figures/."""
    if profile not in TIMEOUT:
        raise Exit(f"--profile must be one of {sorted(TIMEOUT)}, got {profile!r}", code=2)
    if (smoke or allow_over_budget) and profile != "full":
        raise Exit("--smoke and --allow-over-budget apply to --profile full only", code=2)
    books = _notebooks(only)
    if dry_run:
        _dry_run(books, profile, device, smoke)
        return
    out_dir = BUILD / (f"{profile}-smoke" if smoke else profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"profile": profile}
    if device:
        parameters["device"] = device
    if smoke:
        parameters["smoke"] = True
    if allow_over_budget:
        parameters["allow_over_budget"] = True
    rows, failures = [], []
    for i, book in enumerate(books, 1):
        print(f"[{i}/{len(books)}] {book.name} (profile={profile})", flush=True)
        status, secs, detail = _execute(book, out_dir / book.name, parameters,
                                        timeout or TIMEOUT[profile], progress)
        rows.append((book.name, status, secs))
        if detail:
            failures.append(f"{book.name}: {detail}")
    print()
    print(_table(rows))
    print(f"\nexecuted notebooks: {out_dir}\nfigures: {ROOT / 'figures'}")
    if failures:
        print("\nfailures:\n  " + "\n  ".join(failures))
        raise Exit(f"{len(failures)} of {len(books)} notebooks failed", code=1)


def study_module(book: Path) -> str | None:
    """The ``lib.experiments`` recipe module a notebook imports (None if it imports none)."""
    sources = "\n".join("".join(cell.get("source", "")) for cell in json.loads(book.read_text())["cells"]
                        if cell.get("cell_type") == "code")
    found = re.search(r"from\s+lib\.experiments\s+import\s+(\w+)|lib\.experiments\.(\w+)", sources)
    return (found.group(1) or found.group(2)) if found else None


def _dry_run(books: list[Path], profile: str, device: str | None, smoke: bool) -> None:
    """Print every notebook's cost estimate (``lib.scaling.estimate_cost`` of its study module's
    ``planned_runs(settings)``) without training; a module without ``planned_runs`` is named."""
    import importlib

    from lib import scaling
    from lib.core import profile_settings

    problems = []
    for book in books:
        print(f"== {book.name} (profile={profile}{', smoke' if smoke else ''})", flush=True)
        name = study_module(book)
        module = importlib.import_module(f"lib.experiments.{name}") if name else None
        if module is None or not hasattr(module, "planned_runs"):
            where = f"lib.experiments.{name}" if name else "the notebook imports no lib.experiments module: it"
            print(f"   no cost estimate: {where} defines no planned_runs(settings) yet\n")
            problems.append(f"{book.name}: no planned_runs")
            continue
        try:
            settings = profile_settings(profile, quick=module.QUICK, full=module.FULL, smoke=smoke,
                                        smoke_steps=getattr(module, "SMOKE", None))
            estimate = scaling.estimate_cost(module.planned_runs(settings), device)
        except Exception as err:  # one broken recipe must not hide the others' estimates
            print(f"   FAILED: {type(err).__name__}: {err}\n")
            problems.append(f"{book.name}: {type(err).__name__}: {err}")
            continue
        print(estimate, end="\n\n", flush=True)
        if estimate.over_budget:
            problems.append(f"{book.name}: {estimate.summary()}")
    if problems:
        print("attention:\n  " + "\n  ".join(problems))


@task(help={"only": "comma-separated notebook prefixes, e.g. 01,03"})
def refresh(c, only: str | None = None, timeout: int | None = None):
    """Re-execute notebooks in place (quick profile) so committed outputs match the code."""
    from lib.core import CHROMIUM_ENV, chromium_path

    books = _notebooks(only)
    if chromium_path() is None:  # before any compute: the committed plotly outputs need their snapshots
        raise Exit("invoke refresh writes the committed outputs, whose plotly figures carry a PNG snapshot "
                   f"drawn by a Chromium: apt-get install chromium, or set ${CHROMIUM_ENV}", code=2)
    rows, failures = [], []
    for i, book in enumerate(books, 1):
        print(f"[{i}/{len(books)}] refreshing {book.name}", flush=True)
        tmp = BUILD / "refresh" / book.name
        tmp.parent.mkdir(parents=True, exist_ok=True)
        status, secs, detail = _execute(book, tmp, {}, timeout or TIMEOUT["quick"], True)
        rows.append((book.name, status, secs))
        if status == "ok":
            nb = json.loads(tmp.read_text())
            cells = _cell_seconds(nb)
            _strip_volatile_metadata(nb)
            _normalise_kernel_metadata(nb)
            book.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            _record_timing(book, secs, cells)
        else:
            failures.append(f"{book.name}: {detail}")
    print()
    print(_table(rows))
    if failures:
        print("\nfailures (left unchanged):\n  " + "\n  ".join(failures))
        raise Exit(f"{len(failures)} of {len(books)} notebooks failed", code=1)


def _cell_seconds(nb: dict) -> dict[str, float]:
    """Each code cell's papermill duration (s), keyed by its index, before the durations are
    stripped from the committed notebook (they change on every run and would churn its diff)."""
    out = {}
    for i, cell in enumerate(nb["cells"]):
        seconds = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if cell.get("cell_type") == "code" and seconds is not None:
            out[str(i)] = round(float(seconds), 1)
    return out


def _record_timing(book: Path, seconds: float, cells: dict[str, float]) -> None:
    """Write how long ``invoke refresh`` took for ``book`` (quick profile) into TIMINGS, with
    the machine it ran on: the committed evidence for the quick profile's time budget
    (``QUICK_BUDGET_S``, checked by tests/test_notebooks.py). Written atomically."""
    timings = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    slowest = sorted(cells.items(), key=lambda kv: -kv[1])[:5]
    timings[book.stem] = {"seconds": round(seconds, 1), "cpus": os.cpu_count(),
                          "date": time.strftime("%Y-%m-%d"), "slowest_cells": dict(slowest)}
    tmp = TIMINGS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(timings.items())), indent=1) + "\n")
    os.replace(tmp, TIMINGS)


def _normalise_kernel_metadata(nb: dict) -> None:
    """Write the kernelspec and language_info as JupyterLab and ipykernel write them."""
    meta = nb.setdefault("metadata", {})
    meta["kernelspec"] = dict(KERNELSPEC)
    info = meta.setdefault("language_info", {})
    info.update({"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
                 "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
                 "pygments_lexer": "ipython3"})
    info.setdefault("version", ".".join(map(str, sys.version_info[:3])))


def _strip_volatile_metadata(nb: dict) -> None:
    """Drop papermill's per-run timings so refreshed notebooks diff only where outputs change."""
    nb.get("metadata", {}).pop("papermill", None)
    for cell in nb.get("cells", []):
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)


@task(help={
    "fast": "unit tests only: no full-profile smoke runs, no nbval over the notebooks",
    "workers": "pytest-xdist workers for the unit tests (default 2)",
    "only": "comma-separated notebook prefixes for nbval, e.g. 01,03",
    "latest": "run the suite in a throwaway env (build/latest-env) of the newest releases",
    "latest_torch": "with --latest, let torch float too (may pull a multi-GB CUDA build)",
})
def test(c, fast: bool = False, workers: int = 2, only: str | None = None, latest: bool = False,
         latest_torch: bool = False):
    """Unit tests (with every notebook's full profile in smoke mode), the browser suite, then
    nbval re-executing every notebook and checking its key outputs."""
    if latest:
        python = _latest_env(c, latest_torch)
        flags = " --fast" if fast else ""
        flags += f" --only {only}" if only else ""
        c.run(f"{python} -m invoke test --workers {workers}{flags}", pty=False)
        return
    env = dict(os.environ, PYTHONHASHSEED="0", MPLBACKEND="Agg", **BATCH)
    c.run(f'{sys.executable} -m pytest tests -q -n {workers} -m "not full_profile and not browser"',
          env=env, pty=False)
    if not fast:
        # The full-profile smoke runs (tests/test_full_profile.py) execute every notebook at the
        # full shapes, a few steps per run: a full-only path must not break unseen. One at a time:
        # each keeps both cores busy by itself (worker processes or two threads), and two at once
        # oversubscribed 2 cores (measured: 2.6x their summed time alone).
        c.run(f"{sys.executable} -m pytest tests/test_full_profile.py -q -m full_profile", env=env, pty=False)
    # The browser suite runs notebook 01 top to bottom in JupyterLab against wall-clock limits;
    # beside an xdist worker on 2 cores it ran 2-3x slower than alone, so it runs by itself.
    c.run(f"{sys.executable} -m pytest tests/browser -q -m browser", env=env, pty=False)
    if fast:
        return
    books = " ".join(str(b.relative_to(ROOT)) for b in _notebooks(only))
    # Which CPU the outputs are compared on: the pins must make AMD and Intel machines agree, and
    # a failure here is read against this line.
    print(f"nbval on {_cpu_model()} ({os.cpu_count()} cpus), "
          + ", ".join(f"{k}={NOTEBOOK_ENV[k]}" for k in REPRODUCIBLE_CPU), flush=True)
    # Two notebooks at a time, each whole on one worker (loadfile: its cells share one kernel).
    # Each quick profile runs its jobs in two single-threaded processes, so two notebooks at once
    # oversubscribe 2 cores, and still finish sooner (measured: nbval 562 s; the five refreshes, one
    # by one, 656 s).
    c.run(f"{sys.executable} -m pytest -q -n {workers} --dist loadfile --nbval-lax "
          f"--nbval-sanitize-with {SANITIZE.relative_to(ROOT)} --nbval-cell-timeout=900 {books}",
          env={**env, **NOTEBOOK_ENV}, pty=False)


def _cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` where there is no
    /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "an unknown CPU"


def _latest_env(c, latest_torch: bool) -> str:
    """A fresh venv with the newest release of every dependency (the lock ignored); its python.

    torch stays at the locked release unless ``latest_torch``: a floating torch on a CPU machine
    pulls PyPI's CUDA build (several GB), which is a different question from API drift.
    """
    env_dir = BUILD / "latest-env"
    if env_dir.exists():
        import shutil

        shutil.rmtree(env_dir)
    c.run(f"{sys.executable} -m venv {env_dir}", pty=False)
    python = env_dir / "bin" / "python"
    torch_req = "torch" if latest_torch else f"torch=={LOCKED_TORCH}"
    c.run(f"{python} -m pip install -q --upgrade pip", pty=False)
    c.run(f'{python} -m pip install -q --upgrade "{torch_req}" -e "{ROOT}[dev]"', pty=False)
    c.run(f"{python} -m pip list --format=freeze > {env_dir / 'versions.txt'}", pty=False)
    drift = _diff_against_lock(env_dir / "versions.txt")
    print("newest releases that differ from constraints.txt:\n  " + ("\n  ".join(drift) or "(none)"))
    return str(python)


def _read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def _diff_against_lock(freeze: Path) -> list[str]:
    locked, now = _read_pins(LOCK), _read_pins(freeze)
    return [f"{name}: {locked[name]} -> {now[name]}" for name in sorted(locked)
            if name in now and now[name].split("+")[0] != locked[name].split("+")[0]]


@task(help={"upgrade": "re-resolve every package to its newest release (default: keep pins that still fit)"})
def lock(c, upgrade: bool = False):
    """Re-resolve constraints.txt from pyproject.toml (all extras) with pip-compile.

    torch is pinned to ``LOCKED_TORCH`` and written without its build label, so the CPU wheel
    used here and a GPU user's CUDA build of the same release both satisfy the lock.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pin = Path(tmp) / "torch.txt"
        pin.write_text(f"torch=={LOCKED_TORCH}\n")
        extras = " ".join(f"--extra {e}" for e in _extras())
        c.run(f"{sys.executable} -m piptools compile {ROOT / 'pyproject.toml'} {extras} "
              f"-c {pin} -o {LOCK} --strip-extras --no-emit-index-url --no-emit-find-links "
              f"--no-header --quiet {'--upgrade' if upgrade else ''}", pty=False)
    text = re.sub(r"^(torch==[^+\s]+)\+\S+", r"\1", LOCK.read_text(), flags=re.M)
    text = text.replace(f"({ROOT / 'pyproject.toml'})", "(pyproject.toml)")
    LOCK.write_text(_LOCK_HEADER.format(python=f"{sys.version_info.major}.{sys.version_info.minor}")
                    + re.sub(r"-c /\S+", "-c torch pin", text).rstrip() + "\n")
    print(f"wrote {LOCK.relative_to(ROOT)} ({len(_read_pins(LOCK))} pinned packages)")


_LOCK_HEADER = """\
# The tested environment: every direct and transitive dependency at the version CI runs with.
# Resolved for Python {python} on Linux by `invoke lock` (pip-compile over pyproject.toml and all
# its extras); use it as constraints: pip install -e ".[dev]" -c constraints.txt
"""


def _extras() -> list[str]:
    import tomllib

    return sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                  .get("optional-dependencies", {}))


@task(help={"only": "comma-separated benchmark names, e.g. schedules,models"})
def bench(c, only: str | None = None):
    """Run benchmarks/bench_*.py and print their tables (ratios against peers, same run)."""
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        if not wanted:
            raise Exit(f"--only {only!r} names no benchmark; give comma-separated names, e.g. schedules,models",
                       code=2)
        scripts = [s for s in scripts if any(w in s.stem for w in wanted)]
    if not scripts:
        raise Exit("no benchmark matched", code=2)
    # The models' "auto" kernels measure only with a persistent cache (lib.models.dispatch), so
    # the benchmarks time what a calibrated machine runs.
    env = dict(os.environ)
    env.setdefault("WORKBENCH_DISPATCH_CACHE", str(BUILD / "dispatch.json"))
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        c.run(f"{sys.executable} {script}", env=env, pty=False)
