"""The benchmarks' measuring instruments (kernel-floor recorder, paired ratios) and a run of the scripts."""

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import KernelFloor, balanced_orders, paired_ratio, paired_times, record
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
                 "kernel floor", "auto's choice", "target auto <= 1.05x the best path: cannot decide"):
        assert line in out
    assert "optimizer step" not in out  # --no-optimizer
    assert "batch=2 " in out
    with pytest.raises(SystemExit):
        bench_models.main(["--batch", "0"])


def test_gpu_report_peaks_mfu_and_refusal_without_cuda(capsys):
    """bench_models' CUDA mode: the bf16 peak table by device name, MFU as a closed form, the
    GPT-2 124M shape's size, and a clear refusal where there is no CUDA."""
    from benchmarks import bench_models as bm

    for name, peak in (("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
                       ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12), ("Tesla T4", None)):
        assert bm.peak_bf16_flops(name) == peak
    assert bm.mfu(1e5, 6e8, 1e15) == pytest.approx(0.06) and bm.mfu(1e5, 6e8, None) is None
    with torch.device("meta"):
        n = bm.Transformer(bm.ModelConfig(**bm.GPT2_124M)).num_params()
    assert abs(n - 124e6) / 124e6 < 0.01
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bm.main(["--device", "cuda"])
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_gpu_table_code_path_runs_on_cpu():
    """The CUDA report's measuring code, eager only, on a CPU: a dense shape against Llama, an
    MoE shape (which transformers' Llama cannot hold) ours only; tokens/s = tokens / step."""
    from benchmarks import bench_models as bm

    dense = bm.ModelConfig(**bm.SHAPES["notebook"])
    moe = bm.ModelConfig(**{**bm.SHAPES["notebook"], "mlp": "moe", "moe": {"n_experts": 2, "top_k": 1}})
    rows = bm.gpu_table({"dense": dense, "moe": moe}, 2, 1, 1, torch.device("cpu"), compile=False)
    assert [(r["shape"], r["impl"]) for r in rows] == [("dense", "ours eager"), ("dense", "llama sdpa eager"),
                                                       ("moe", "ours eager")]
    for r in rows:
        assert r["tokens_per_s"] == pytest.approx(2 * 64 / (r["ms_per_step"] / 1e3)) and r["mfu"] is None


def test_choice_check_decides_only_what_the_noise_resolves():
    from scipy import stats

    from benchmarks.common import choice_check

    rng = np.random.default_rng(0)
    noise = np.exp(rng.normal(0, 0.01, size=(3, 12)))
    drift = np.linspace(1.0, 2.0, 12)  # machine load moves every contender of a round alike
    base = {"auto": drift * noise[0], "a": drift * noise[1], "b": 1.5 * drift * noise[2]}
    met = choice_check(base, "auto", "a", ["a", "b"])
    assert met["verdict"] == "met" and met["pick"][0] == "b" and met["pick"][1] < 0.7
    logs = np.log(base["auto"] / base["a"])   # the A/A interval: scipy's t interval on the log ratios
    low, high = stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=stats.sem(logs))
    assert met["aa"] == pytest.approx((math.exp(logs.mean()), math.exp(low), math.exp(high)))
    slow = {**base, "auto": 1.2 * base["auto"]}                    # 20% above the picked path
    assert choice_check(slow, "auto", "a", ["a", "b"])["verdict"] == "not met"
    noisy = {**base, "auto": base["a"] * np.exp(rng.normal(0.03, 0.2, 12))}
    assert choice_check(noisy, "auto", "a", ["a", "b"])["verdict"] == "cannot decide"
    one = {k: v[:1] for k, v in base.items()}                      # one repeat: no interval
    assert choice_check(one, "auto", "a", ["a", "b"])["verdict"] == "cannot decide"
    with pytest.raises(ValueError, match="control"):
        choice_check(base, "auto", "c", ["a", "b"])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8])
def test_balanced_orders_give_every_contender_each_predecessor_and_position_equally_often(n):
    from collections import Counter
    rows = balanced_orders(n)
    assert all(sorted(row) == list(range(n)) for row in rows)
    assert len(rows) == (n if n % 2 == 0 else 2 * n)
    pairs = Counter((a, b) for row in rows for a, b in zip(row, row[1:]))
    assert set(pairs) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert len(set(pairs.values())) <= 1                              # each ordered pair alike
    assert len(set(Counter(row[0] for row in rows).values())) == 1   # each first equally often
    with pytest.raises(ValueError, match="n must be"):
        balanced_orders(0)


def test_paired_times_runs_each_round_in_the_balanced_order():
    calls = []
    paired_times({k: (lambda k=k: calls.append(k)) for k in "abcd"}, repeats=5, steps=1, warmup=0)
    rows = balanced_orders(4)
    assert calls == ["abcd"[i] for r in range(5) for i in rows[r % 4]]
