"""lib.core and lib.core: devices, seeds, profiles, deterministic figures from any cwd."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.core import plotting, runtime


def test_repo_root_holds_the_project():
    root = runtime.repo_root()
    assert (root / "pyproject.toml").exists() and (root / "lib" / "core" / "runtime.py").exists()


def test_pick_device_prefers_accelerators_and_validates():
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert runtime.pick_device().type == expected
    assert runtime.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        runtime.pick_device("not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runtime.pick_device("cuda")


def test_pick_device_env_override(monkeypatch):
    monkeypatch.setenv(runtime.DEVICE_ENV, "cpu")
    assert runtime.pick_device() == torch.device("cpu")


def test_seed_everything_reproduces_all_generators():
    draws = []
    for _ in range(2):
        rng = runtime.seed_everything(7)
        draws.append((rng.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]
    with pytest.raises(ValueError, match="seed"):
        runtime.seed_everything(-1)


def test_profile_settings():
    s = runtime.profile_settings("full", quick={"steps": 10, "seeds": 3}, full={"steps": 1000})
    assert (s.profile, s.steps, s.seeds) == ("full", 1000, 3)
    assert runtime.profile_settings("quick", quick={"steps": 10}, full={}).steps == 10
    with pytest.raises(ValueError, match="profile"):
        runtime.profile_settings("medium", quick={}, full={})
    with pytest.raises(ValueError, match="lacks"):
        runtime.profile_settings("quick", quick={"a": 1}, full={"b": 2})


def _draw(path_prefix):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotting.use_style()
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1, 0, 1], label="line")
    ax.legend()
    paths = plotting.save_figure(fig, "00_test", path_prefix)
    plt.close(fig)
    return [runtime.repo_root() / p for p in paths]  # save_figure returns root-relative paths


def test_save_figure_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.ROOT_ENV, str(tmp_path))
    first = [hashlib.sha256(p.read_bytes()).hexdigest() for p in _draw("fig")]
    second = [hashlib.sha256(p.read_bytes()).hexdigest() for p in _draw("fig")]
    assert first == second
    assert (tmp_path / "figures" / "00_test" / "fig.png").exists()
    assert (tmp_path / "figures" / "00_test" / "fig.svg").exists()
    with pytest.raises(ValueError, match="name"):
        plotting.save_figure(object(), "00_test", "../escape")
    with pytest.raises(ValueError, match="matplotlib Figure"):
        plotting.save_figure(object(), "00_test", "ok")


def test_figures_land_in_the_repo_from_any_working_directory(tmp_path):
    code = ("import lib.core.runtime as r; print(r.figures_dir('x'))")
    env = {k: v for k, v in os.environ.items() if k != runtime.ROOT_ENV}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert Path(out) == runtime.repo_root() / "figures" / "x"
    (runtime.repo_root() / "figures" / "x").rmdir()


def test_process_map_keeps_order_runs_elsewhere_and_sets_threads():
    jobs = [(i,) for i in range(5)]
    here = runtime.process_map(_job, jobs)
    there = runtime.process_map(_job, jobs, workers=2, threads=1)
    assert [r[0] for r in here] == [r[0] for r in there] == [i * i for i in range(5)]
    assert {r[1] for r in here} == {os.getpid()} and os.getpid() not in {r[1] for r in there}
    assert {r[2] for r in there} == {1} and {r[2] for r in here} == {torch.get_num_threads()}
    for kw, name in ((dict(workers=0), "workers"), (dict(workers=2, threads=0), "threads")):
        with pytest.raises(ValueError, match=name):
            runtime.process_map(_job, jobs, **kw)


def _job(i):  # module level, so a spawned process can import it
    return i * i, os.getpid(), torch.get_num_threads()


def _sleep(seconds):
    import time

    time.sleep(seconds)
    return os.getpid()


def test_worker_pools_start_once_and_are_replaced_when_the_environment_changes(monkeypatch):
    """A second process_map reuses the first one's processes; a new environment variable (which a
    spawned process reads at start) gets new ones; discard_pool stops a running job at once."""
    jobs = [(i,) for i in range(4)]
    first = {r[1] for r in runtime.process_map(_job, jobs, workers=2, threads=1)}
    again = {r[1] for r in runtime.process_map(_job, jobs, workers=2, threads=1)}
    assert again <= first and runtime.worker_pool(2, 1) is runtime.worker_pool(2, 1)
    old = runtime.worker_pool(2, 1)
    monkeypatch.setenv("WORKBENCH_TEST_POOL", "1")
    assert runtime.worker_pool(2, 1) is not old
    assert not {r[1] for r in runtime.process_map(_job, jobs, workers=2, threads=1)} & first
    pool = runtime.worker_pool(2, 1)
    running = pool.submit(_sleep, 60)
    assert pool.submit(_sleep, 0).result(timeout=60) > 0   # the processes are up
    import time

    start = time.perf_counter()
    runtime.discard_pool(pool)
    assert time.perf_counter() - start < 10 and running.done()
    assert runtime.worker_pool(2, 1) is not pool
