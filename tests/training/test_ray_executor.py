"""``run_sweep(..., executor="ray")`` on a local two-CPU Ray, against the local executor.

The references: the local executor's results for the same seeded configs (a tiny training
run each), a log of every ``run_fn`` call (what ran, and how often), and the closed-form
metrics of the other sweeps. The sweeps after the first take the whole two-CPU Ray per run
(``num_cpus=2``): one run at a time, on a worker that has already imported ``lib``, which saves
starting a second worker (seconds of imports on two cores). The driver that is killed is this file run as a script
(``python test_ray_executor.py GCS_ADDRESS DB LOG BLOCK``), joining the test's Ray by address.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from lib.data import synthetic_corpus
from lib.models import ModelConfig, Transformer
from lib.training import RunStore, TrainConfig, make_run_id, run_sweep, train

try:
    import ray
except ImportError:  # the dev extra includes Ray; with WORKBENCH_REQUIRE_RAY=1 (CI) its absence fails
    ray = None

needs_ray = pytest.mark.skipif(ray is None and not os.environ.get("WORKBENCH_REQUIRE_RAY"),
                               reason="Ray is not installed: pip install -e \".[ray]\" to run the Ray executor tests")


def _log(path: str | Path, text: str) -> None:
    with open(path, "a") as f:   # one short append per line: whole lines even from several workers
        f.write(text + "\n")


def tiny_training(config: dict) -> dict:
    """A seeded three-step training run: the same config gives the same numbers anywhere."""
    torch.set_num_threads(1)   # Ray workers run with one thread; the local reference as well
    torch.manual_seed(config["seed"])
    model = Transformer(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, max_seq_len=8))
    data = synthetic_corpus(n_train_tokens=4_000, n_val_tokens=1_000, vocab_size=32, seed=config["seed"])
    result = train(model, data, TrainConfig(steps=3, batch_size=4, seq_len=8, lr=config["lr"], eval_batches=1,
                                            seed=config["seed"], device="cpu", progress=False))
    return {"val_loss": result.final["val_loss"], "train_loss": result.final["train_loss"],
            "history": result.history[["step", "loss"]]}


def logged_square(config: dict) -> dict:
    """Logs each call ("start i"); fails on ``fail``; waits while ``block`` names a file."""
    _log(config["log"], f"start {config['i']}")
    if config.get("fail"):
        raise RuntimeError(f"config {config['i']} always fails")
    while config.get("block") and os.path.exists(config["block"]):
        time.sleep(0.1)
    return {"square": config["i"] ** 2}


@pytest.fixture(scope="module")
def local_ray():
    if ray is None:
        pytest.fail("WORKBENCH_REQUIRE_RAY is set but Ray is not installed: pip install -e \".[ray]\"")
    torch_threads = torch.get_num_threads()
    # The raylet waits for its Python agents for this GCS request timeout (about 15 s by default
    # in Ray 2.60) and dies after it; on two busy cores their imports alone can take longer.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_gcs_server_request_timeout_seconds", os.environ.get("RAY_gcs_server_request_timeout_seconds", "120"))
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    # Tasks defined in this file travel by value: the workers cannot import a pytest module by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    torch.set_num_threads(torch_threads)


def _calls(log: Path) -> list[int]:
    return sorted(int(line.split()[1]) for line in log.read_text().splitlines()) if log.exists() else []


@pytest.mark.slow
@needs_ray
def test_ray_gives_the_local_executors_results_for_the_same_seeded_configs(local_ray, tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    configs = [{"lr": lr, "seed": seed} for lr in (3e-3, 1e-2) for seed in (0, 1)]
    local = run_sweep(store, "local", configs, tiny_training, progress=False)
    on_ray = run_sweep(store, "ray", configs, tiny_training, executor="ray", num_cpus=1, progress=False)
    assert (on_ray["status"] == "done").all() and len(on_ray) == len(configs)
    columns = ["lr", "seed", "val_loss", "train_loss"]
    pd.testing.assert_frame_equal(on_ray[columns], local[columns])  # bit-identical numbers
    for config in configs:
        pd.testing.assert_frame_equal(store.history(make_run_id("ray", config)),
                                      store.history(make_run_id("local", config)))


@pytest.mark.slow
@needs_ray
def test_a_failing_config_is_retried_then_recorded_failed_and_the_sweep_goes_on(local_ray, tmp_path):
    store, log = RunStore(tmp_path / "runs.sqlite"), tmp_path / "calls.log"
    configs = [{"i": i, "log": str(log), **({"fail": True} if i == 1 else {})} for i in range(4)]
    frame = run_sweep(store, "retry", configs, logged_square, executor="ray", num_cpus=2, max_retries=2,
                      progress=False)
    assert _calls(log) == [0, 1, 1, 1, 2, 3]   # the failing config ran 1 + max_retries times
    by_i = frame.set_index("i")
    assert by_i.loc[[0, 2, 3], "status"].eq("done").all()
    assert by_i.loc[[0, 2, 3], "square"].tolist() == [0, 4, 9]
    assert by_i.loc[1, "status"] == "failed"
    assert "config 1 always fails" in by_i.loc[1, "error"] and "max_retries=2" in by_i.loc[1, "error"]
    assert list(frame.attrs["incomplete"]) == [make_run_id("retry", configs[1])]


@pytest.mark.slow
@needs_ray
def test_a_killed_driver_rerun_skips_finished_runs_and_resubmits_the_rest(local_ray, tmp_path):
    db, log, block = tmp_path / "runs.sqlite", tmp_path / "calls.log", tmp_path / "block"
    block.touch()
    driver = subprocess.Popen([sys.executable, __file__, local_ray, str(db), str(log), str(block)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    configs = _kill_configs(log, block)
    try:
        deadline = time.monotonic() + 60
        # Runs 0-2 finish; run 3 is in flight, waiting on the block file, when the driver dies.
        while not (db.exists() and 3 in _calls(log)
                   and RunStore(db).frame("killed", status="done")["i"].tolist() == [0, 1, 2]):
            assert driver.poll() is None, driver.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "the driver did not reach run 3 within 60 s"
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    store = RunStore(db)
    assert store.states("killed", configs)[make_run_id("killed", configs[3])].startswith("running")
    block.unlink()   # the resubmitted run 3 finishes
    frame = run_sweep(store, "killed", configs, logged_square, executor="ray", num_cpus=2, progress=False)
    assert frame["status"].eq("done").all() and frame["square"].tolist() == [0, 1, 4, 9]
    assert _calls(log) == [0, 1, 2, 3, 3]   # finished runs were not repeated; run 3 ran again
    assert store.get(make_run_id("killed", configs[3]))["attempts"] == 2


def test_bad_settings_are_refused_by_name_before_any_run(tmp_path):
    store, log = RunStore(tmp_path / "runs.sqlite"), tmp_path / "calls.log"
    configs = [{"i": 0, "log": str(log)}]
    for kwargs, name in [(dict(executor="foo"), "executor"), (dict(executor="ray", num_cpus=0), "num_cpus"),
                         (dict(executor="ray", num_gpus=-1), "num_gpus"),
                         (dict(executor="ray", max_retries=-1), "max_retries"),
                         (dict(executor="ray", max_retries=1.5), "max_retries"),
                         (dict(executor="ray", ray_address=6379), "ray_address")]:
        with pytest.raises(ValueError, match=name):
            run_sweep(store, "bad", configs, logged_square, progress=False, **kwargs)
    assert not log.exists() and store.sweeps() == []


def _kill_configs(log: Path, block: Path) -> list[dict]:
    return [{"i": i, "log": str(log), **({"block": str(block)} if i == 3 else {})} for i in range(4)]


if __name__ == "__main__":   # the driver that the kill test SIGKILLs
    address, db, log, block = sys.argv[1:5]
    run_sweep(RunStore(db), "killed", _kill_configs(Path(log), Path(block)), logged_square, executor="ray",
              ray_address=address, num_cpus=2, progress=False)
