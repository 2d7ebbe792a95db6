"""Encoding cost, as ratios against peers measured in the same run (timings on a shared CPU are
noisy; ratios are what to read).

1. RoPE application: ``lib.encodings`` RoPE.rotate (cached cos/sin) vs transformers'
   ``apply_rotary_pos_emb`` with cos/sin from ``LlamaRotaryEmbedding`` on the same tensors
   (the transformers path recomputes cos/sin each forward, as a Llama forward does; a second
   row gives it precomputed cos/sin). Ratio = transformers time / ours (target >= 1.0).
2. Each encoding's attention forward (hooks + SDPA) relative to RoPE, per sequence length.
3. Attention throughput (tokens/s) vs length for RoPE.
4. ALiBi by each path of ``lib.encodings.bias_attention``: folded into causal SDPA (the path
   the model takes in float32), FlexAttention (the path for any other position-function bias,
   and for ALiBi where the folded rounding bound fails) and the materialised [H, T, T] bias, each
   paired with RoPE (causal SDPA) per repeat: the per-repeat ratio ALiBi / RoPE (target <= 1.3x
   at 4,096 tokens), flex's one-time compile cost, and each contender's peak memory (the CPU
   allocator's allocations during one forward, from torch's profiler) against length. A fifth
   row times forward + backward of folded ALiBi against RoPE's, as training runs it.

    python benchmarks/bench_encodings.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

if __package__ in (None, ""):  # run as a script: python benchmarks/bench_encodings.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import paired_times, peak_memory
from lib.encodings import (
    FLEX_MIN_TOKENS_CPU,
    bias_attention,
    build_encoding,
    flex_available,
    folded_logit_error,
)
from lib.encodings import diagnostics as D


def interleaved(fns: dict, repeats: int, inner: int = 5) -> dict:
    """Median seconds per call of each function, timed round-robin (``repeats`` rounds of ``inner``
    calls each, after a warm-up) so load from other processes hits every contender alike."""
    for fn in fns.values():
        fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - t0) / inner)
    return {name: statistics.median(v) for name, v in samples.items()}


def rope_vs_transformers(batch: int, heads: int, seq_len: int, head_dim: int, repeats: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, seq_len, head_dim, generator=gen)
    k = torch.randn(batch, heads, seq_len, head_dim, generator=gen)
    ours = build_encoding("rope", d_model=heads * head_dim, n_heads=heads, head_dim=head_dim, max_seq_len=seq_len)
    pos = torch.arange(seq_len)
    config = LlamaConfig(hidden_size=heads * head_dim, num_attention_heads=heads, max_position_embeddings=seq_len,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    hf_rot = LlamaRotaryEmbedding(config)
    pos_ids = pos[None].expand(batch, -1)
    cos, sin = hf_rot(q, pos_ids)
    # correctness first: the same tensors must come out
    torch.testing.assert_close(ours.rotate(q, k, pos), apply_rotary_pos_emb(q, k, cos, sin))
    t = interleaved({"ours": lambda: ours.rotate(q, k, pos),
                     "hf_full": lambda: apply_rotary_pos_emb(q, k, *hf_rot(q, pos_ids)),
                     "hf_pre": lambda: apply_rotary_pos_emb(q, k, cos, sin)}, repeats)
    t_ours, t_hf_full, t_hf_pre = t["ours"], t["hf_full"], t["hf_pre"]
    shape = f"B{batch} H{heads} T{seq_len} D{head_dim}"
    return [
        {"shape": shape, "peer": "transformers rotary_emb + apply_rotary_pos_emb", "ours_us": t_ours * 1e6,
         "peer_us": t_hf_full * 1e6, "peer / ours": t_hf_full / t_ours},
        {"shape": shape, "peer": "apply_rotary_pos_emb, cos/sin precomputed", "ours_us": t_ours * 1e6,
         "peer_us": t_hf_pre * 1e6, "peer / ours": t_hf_pre / t_ours},
    ]


def alibi_paths(lengths, repeats: int, batch: int = 2, heads: int = 4, head_dim: int = 64) -> list[dict]:
    """ALiBi by flex and by the materialised bias against RoPE, paired per repeat, with the
    first flex call's time (the compile) and each contender's peak memory."""
    return [row for t in lengths for row in _alibi_rows(t, repeats, batch, heads, head_dim)]


def _alibi_rows(t: int, repeats: int, batch: int, heads: int, head_dim: int) -> list[dict]:
    rows = []
    dims = dict(d_model=heads * head_dim, n_heads=heads, head_dim=head_dim, max_seq_len=t)
    alibi, rope = build_encoding("alibi", **dims), build_encoding("rope", **dims)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, t, head_dim, generator=gen) for _ in range(3))
    pos = torch.arange(t)
    reference = bias_attention(q, k, v, alibi, path="materialised")
    torch.testing.assert_close(bias_attention(q, k, v, alibi, path="flex"), reference, atol=2e-5, rtol=2e-5)
    # The folded path rounds its logits by up to folded_logit_error (4e-5 at 4,096 tokens here).
    tol = 2 * folded_logit_error(alibi, t, q.dtype)
    torch.testing.assert_close(bias_attention(q, k, v, alibi, path="folded"), reference, atol=tol, rtol=tol)

    @torch.no_grad()
    def run_rope():
        return F.scaled_dot_product_attention(*rope.rotate(q, k, pos), v, is_causal=True)

    qg, kg, vg = (z.clone().requires_grad_() for z in (q, k, v))

    def train_rope():
        F.scaled_dot_product_attention(*rope.rotate(qg, kg, pos), vg, is_causal=True).sum().backward()

    def train_folded():
        bias_attention(qg, kg, vg, alibi, path="folded").sum().backward()

    fns = {"rope": run_rope, "alibi folded": torch.no_grad()(lambda: bias_attention(q, k, v, alibi, path="folded"))}
    if flex_available("cpu"):
        fns["alibi flex"] = torch.no_grad()(lambda: bias_attention(q, k, v, alibi, path="flex"))
    fns["alibi materialised"] = torch.no_grad()(lambda: bias_attention(q, k, v, alibi, path="materialised"))
    times = paired_times(fns, repeats, steps=2, warmup=1)
    for name in fns:
        ratios = [a / r for a, r in zip(times[name], times["rope"], strict=True)]
        rows.append({"seq_len": t, "contender": name, "ms": 1e3 * statistics.median(times[name]),
                     "/ rope (median)": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                     "per repeat": " ".join(f"{r:.2f}" for r in ratios),
                     "peak MiB": peak_memory(fns[name]) / 2**20})
    times = paired_times({"rope": train_rope, "alibi folded": train_folded}, repeats, steps=1, warmup=1)
    ratios = [a / r for a, r in zip(times["alibi folded"], times["rope"], strict=True)]
    rows.append({"seq_len": t, "contender": "alibi folded, fwd+bwd", "ms": 1e3 * statistics.median(times["alibi folded"]),
                 "/ rope (median)": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                 "per repeat": " ".join(f"{r:.2f}" for r in ratios), "peak MiB": peak_memory(train_folded) / 2**20})
    return rows


def flex_compile_seconds(t: int, batch: int = 2, heads: int = 4, head_dim: int = 64) -> float:
    """Seconds of the first flex call at a length this process has not compiled (inductor's
    on-disk cache, when warm from an earlier run, makes it cheaper than a cold compile)."""
    alibi = build_encoding("alibi", d_model=heads * head_dim, n_heads=heads, head_dim=head_dim, max_seq_len=t)
    q, k, v = (torch.randn(batch, heads, t, head_dim) for _ in range(3))
    t0 = time.perf_counter()
    with torch.no_grad():
        bias_attention(q, k, v, alibi, path="flex")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared CPU, 2+ threads make timings erratic)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    repeats = 5 if args.quick else 15
    import pandas as pd

    pd.set_option("display.width", 160)
    shapes = [(4, 8, 256, 64)] if args.quick else [(4, 8, 256, 64), (1, 16, 2048, 128), (8, 4, 512, 32)]
    rows = [row for shape in shapes for row in rope_vs_transformers(*shape, repeats)]
    print("1. RoPE application vs transformers (ratio >= 1.0 means ours is at least as fast)")
    print(pd.DataFrame(rows).round(2).to_string(index=False))

    lens = (256, 1024) if args.quick else (256, 1024, 4096)
    names = ("rope", "none", "rope_linear", "yarn", "rope_dynamic", "pi_spiral_rotary", "pi_spiral_hybrid", "alibi",
             "sinusoidal", "pi_spiral")
    cost = []
    for t in lens:
        fns = {name: D.attention_forward(build_encoding(name, d_model=256, n_heads=4, head_dim=64, max_seq_len=t),
                                         t, batch=2) for name in names}
        for name, sec in interleaved(fns, repeats, inner=2).items():
            cost.append({"encoding": name, "seq_len": t, "seconds": sec})
    frame = pd.DataFrame(cost)
    base = frame[frame["encoding"] == "rope"].set_index("seq_len")["seconds"]
    frame["time / rope"] = frame["seconds"] / frame["seq_len"].map(base)
    print("\n2. Attention forward with each encoding, time relative to RoPE (B2 H4 D64)")
    print(frame.pivot(index="encoding", columns="seq_len", values="time / rope").loc[list(names)].round(2).to_string())
    rope = frame[frame["encoding"] == "rope"].assign(tokens_per_s=lambda f: 2 * f["seq_len"] / f["seconds"])
    print("\n3. RoPE attention throughput (tokens/s, causal SDPA, B2 H4 D64)")
    print(rope[["seq_len", "tokens_per_s"]].round(0).to_string(index=False))

    lens = (1024, 4096) if args.quick else (1024, 2048, 4096)
    print("\n4. ALiBi folded into SDPA, by FlexAttention and by the materialised bias vs RoPE (B2 H4 D64, no grad "
          "but the last row; in float32 the model takes the folded path, flex where its rounding bound fails "
          f"from {FLEX_MIN_TOKENS_CPU} tokens on CPU)")
    if flex_available("cpu"):
        print(f"   first flex call at a new length (compile): {flex_compile_seconds(1536):.1f} s")
    frame = pd.DataFrame(alibi_paths(lens, repeats))
    print(frame.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
