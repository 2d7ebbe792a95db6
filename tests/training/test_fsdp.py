"""FSDP2 (``TrainConfig(parallel="fsdp")``) against one process training the same global batch.

Two gloo/CPU processes under ``torchrun`` each train on half of every batch with per-block
``fully_shard``; one plain process trains on the whole batch. The references are that single
process (losses, final weights, validation loss) and, for resume, the uninterrupted sharded
run (bit-identical). What needs a GPU and is not run here: the bf16 ``MixedPrecisionPolicy``
in action (only its choice by device is checked), NCCL collectives, and memory savings.

This file is also the worker that ``torchrun`` runs (``python test_fsdp.py OUT_DIR``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.data import synthetic_corpus
from lib.models import ModelConfig, Transformer
from lib.training import (
    CheckpointError,
    TrainConfig,
    full_model_state_dict,
    mixed_precision_policy,
    sharded_checkpoint_exists,
    train,
)

MODEL = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=16)
CORPUS = dict(n_train_tokens=20_000, n_val_tokens=4_000, vocab_size=64)
STEPS, GLOBAL_BATCH, WORLD, STOP_AT = 6, 8, 2, 3
TRAIN = dict(steps=STEPS, seq_len=16, eval_batches=2, eval_batch_size=4, device="cpu", progress=False,
             lr=1e-2)
# Two ranks reduce gradients in another order than one process sums them: float32 rounding only.
LOSS_RTOL, WEIGHT_ATOL, WEIGHT_RTOL = 1e-6, 1e-6, 1e-5  # measured: 6e-8 relative, 1.2e-7 absolute


class StopAt:
    """Ends a run after ``step`` optimizer steps, as a killed job would (its last checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state) -> None:
        state.stop = state.step >= self.step


def _fresh_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(**MODEL))


def _worker(out: Path) -> None:
    """Under torchrun: an uninterrupted sharded run, one stopped at STOP_AT with a checkpoint, and
    a fresh model resuming it to the end; rank 0 writes what the test compares."""
    import torch.distributed as dist

    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")  # our outputs are never edited in place
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = synthetic_corpus(**CORPUS)
    sharded = dict(TRAIN, batch_size=GLOBAL_BATCH // WORLD, grad_accum=2, parallel="fsdp")
    full = train(_fresh_model(), data, TrainConfig(**sharded))
    ckpt = dict(sharded, checkpoint_path=str(out / "ckpt"), checkpoint_every=2)
    stopped = train(_fresh_model(), data, TrainConfig(**ckpt), callbacks=[StopAt(STOP_AT)])
    resumed = train(_fresh_model(), data, TrainConfig(**ckpt))
    weights = {name: full_model_state_dict(r.model) for name, r in
               (("full", full), ("resumed", resumed))}
    (out / f"losses{rank}.json").write_text(json.dumps({
        "full": full.history["loss"].tolist(), "resumed": resumed.history["loss"].tolist(),
        "stopped_steps": int(stopped.final["steps"]), "val_loss": full.final["val_loss"],
        "resumed_val_loss": resumed.final["val_loss"]}))
    if rank == 0:
        torch.save(weights, out / "weights.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
                    "--master_port", str(29600 + os.getpid() % 1000), __file__, str(out)],
                   check=True, env=env, timeout=240)
    ranks = [json.loads((out / f"losses{r}.json").read_text()) for r in range(WORLD)]
    return out, ranks, torch.load(out / "weights.pt")


@pytest.fixture(scope="module")
def single_process():
    return train(_fresh_model(), synthetic_corpus(**CORPUS), TrainConfig(**TRAIN, batch_size=GLOBAL_BATCH))


@pytest.mark.slow
def test_two_sharded_processes_match_one_process_with_the_same_global_batch(sharded_runs, single_process):
    _, ranks, weights = sharded_runs
    # Each rank's loss is the mean over its half of the batch; their mean is the global batch's.
    mean_loss = np.mean([r["full"] for r in ranks], axis=0)
    np.testing.assert_allclose(mean_loss, single_process.history["loss"], rtol=LOSS_RTOL, atol=0)
    assert ranks[0]["full"] != ranks[1]["full"]  # the ranks really saw different halves
    np.testing.assert_allclose(ranks[0]["val_loss"], single_process.final["val_loss"], rtol=LOSS_RTOL)
    reference = single_process.model.state_dict()
    assert weights["full"].keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(weights["full"][name], value, atol=WEIGHT_ATOL, rtol=WEIGHT_RTOL)


@pytest.mark.slow
def test_a_sharded_run_resumed_from_its_checkpoint_is_bit_identical(sharded_runs):
    out, ranks, weights = sharded_runs
    for rank, r in enumerate(ranks):
        assert r["stopped_steps"] == STOP_AT and len(r["full"]) == STEPS
        # The checkpoint keeps rank 0's history (as under DDP); every rank's later steps are its own.
        since = 0 if rank == 0 else STOP_AT
        assert r["resumed"][since:] == r["full"][since:]
        assert r["resumed_val_loss"] == r["val_loss"]
    for name, value in weights["full"].items():
        assert torch.equal(weights["resumed"][name], value), name
    # One shard folder is left beside meta.pt: older ones go once a newer one is complete.
    assert sharded_checkpoint_exists(out / "ckpt")
    assert len(list((out / "ckpt").glob("shards-*"))) == 1


def test_parallel_is_checked_by_name_before_any_compute(tmp_path):
    with pytest.raises(ValueError, match="parallel"):
        TrainConfig(steps=2, parallel="zero3")
    with pytest.raises(ValueError, match="parallel='fsdp' needs torch.distributed"):
        train(_fresh_model(), synthetic_corpus(**CORPUS), TrainConfig(**dict(TRAIN, parallel="fsdp")))
    (tmp_path / "single.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        sharded_checkpoint_exists(tmp_path / "single.pt")


def test_mixed_precision_is_bf16_with_fp32_reduction_on_cuda_only():
    cuda, cpu = mixed_precision_policy("cuda"), mixed_precision_policy("cpu")
    assert (cuda.param_dtype, cuda.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert (cpu.param_dtype, cpu.reduce_dtype) == (None, None)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
