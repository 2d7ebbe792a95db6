"""Encoding cost, as ratios against peers measured in the same run (timings on a shared CPU are
noisy; ratios are what to read).

1. RoPE application: ``lib.encodings`` RoPE.rotate (cached cos/sin) vs transformers'
   ``apply_rotary_pos_emb`` with cos/sin from ``LlamaRotaryEmbedding`` on the same tensors
   (the transformers path recomputes cos/sin each forward, as a Llama forward does; a second
   row gives it precomputed cos/sin). Ratio = transformers time / ours (target >= 1.0).
2. Each encoding's attention forward (hooks + SDPA) relative to RoPE, per sequence length.
3. Attention throughput (tokens/s) vs length for RoPE.

    python benchmarks/bench_encodings.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from lib.encodings import build_encoding
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


if __name__ == "__main__":
    main()
