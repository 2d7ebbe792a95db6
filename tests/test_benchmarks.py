"""The benchmarks' measuring instruments (kernel-floor recorder, paired ratios) and a run of the scripts."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import KernelFloor, paired_ratio, paired_times, record
from lib.models import ModelConfig, MoEFeedForward, Transformer


def test_kernel_floor_counts_the_gemm_flops_torch_counts():
    """Recorded GEMM FLOPs of a training step equal torch's FlopCounterMode (an independent
    counter), forward and backward; the attention kernels are recorded too."""
    model = Transformer(ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, max_seq_len=32))
    x = torch.randint(0, 300, (2, 32))

    def step():
        model(x, x).loss.backward()

    floor = record(step)
    with FlopCounterMode(display=False) as counter:
        step()
    torch_mm = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "scaled_dot" not in str(k))
    assert floor.gemm_flops == torch_mm > 0
    # 2 layers x (qkv, out, gate_up, down) + tied head: 9 forward GEMMs, 2 backward each (x 3).
    assert floor.counts["mm"] == 27
    assert sum(v for k, v in floor.counts.items() if "attention" in k) == 4  # 2 fwd + 2 bwd
    assert floor.replay_seconds(repeats=1) > 0


def test_kernel_floor_counts_grouped_gemms_of_the_moe_layer():
    d, f, e, k, n = 32, 48, 4, 2, 50
    layer = MoEFeedForward(d, f, n_experts=e, top_k=k, dispatch="grouped")
    h = torch.randn(n, d, requires_grad=True)
    floor = record(lambda: layer(h).sum().backward())
    assert floor.counts == {"mm": 3, "_grouped_mm": 9}
    # each of the n k routed rows: 3 projections x (1 forward + 2 backward) x 2 d f; router 3 x 2 n d e
    assert floor.gemm_flops == n * k * 3 * 3 * 2 * d * f + 3 * 2 * n * d * e


def test_replay_reuses_the_recorded_tensors_without_autograd():
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8)
    floor = record(lambda: (x @ w).sum().backward())
    grad = w.grad.clone()
    floor.replay()
    assert torch.equal(w.grad, grad)  # replay computes, but writes nothing back
    assert isinstance(floor, KernelFloor) and len(floor.calls) == 2  # x @ w and x^T @ grad


def test_paired_ratio_is_per_repeat():
    times = {"a": [1.0, 2.0, 1.0], "b": [2.0, 3.0, 4.0]}
    assert paired_ratio(times, "a", "b") == (2.0, 1.5, 4.0)
    out = paired_times({"f": lambda: None}, repeats=3, steps=2, warmup=0)
    assert len(out["f"]) == 3
    with pytest.raises(ValueError, match="repeats"):
        paired_times({"f": lambda: None}, repeats=0, steps=1)


def test_bench_scripts_run_end_to_end(capsys):
    """The model and MoE benchmarks run through (one repeat; their timings are not asserted:
    speed is measured by running the scripts, not in tests)."""
    from benchmarks import bench_models, bench_moe

    bench_models.main(["--quick", "--repeats", "1", "--batch", "2"])
    bench_moe.main(["--shape", "study", "--repeats", "1", "--no-optimizer"])
    out = capsys.readouterr().out
    for line in ("throughput ratio ours/llama", "step-memory ratio", "speed-up lib.models.moe (auto",
                 "kernel floor"):
        assert line in out
    assert "optimizer step" not in out  # --no-optimizer
    assert "batch=2 " in out
    with pytest.raises(SystemExit):
        bench_models.main(["--batch", "0"])
