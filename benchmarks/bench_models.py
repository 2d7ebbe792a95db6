"""Training throughput and step memory of lib.models.Transformer vs transformers' LlamaForCausalLM.

Same shapes, same run, interleaved repeats; reports tokens/s of forward + backward + AdamW step
and the ratio ours / Llama (target >= 1.2x on CPU), and the memory one training step holds
(CPU: tensors saved for backward + params, grads, AdamW state; CUDA: the allocator's peak).

    python benchmarks/bench_models.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lib.models import ModelConfig, Transformer, copy_to_hf, to_hf
from lib.runtime import autocast, pick_device

SHAPES = {
    "small": dict(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, max_seq_len=256),
    "tiny": dict(vocab_size=512, d_model=128, n_layers=2, n_heads=4, max_seq_len=128),
}


def build(which: str, config: ModelConfig, device):
    torch.manual_seed(0)
    ours = Transformer(config)
    if which == "ours":
        return ours.to(device)
    hf = to_hf(config, "llama", attn_implementation="sdpa")
    copy_to_hf(ours, hf)
    return hf.to(device)


def step_fn(model, which, x, device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            loss = model(x, x).loss if which == "ours" else model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def throughput(shape: str, batch: int, repeats: int, steps: int, device) -> dict:
    config = ModelConfig(**SHAPES[shape])
    x = torch.randint(0, config.vocab_size, (batch, config.max_seq_len), device=device)
    fns = {w: step_fn(build(w, config, device), w, x, device) for w in ("ours", "llama")}
    for fn in fns.values():  # warm-up (allocator, kernels)
        fn(), fn()
    times = {w: [] for w in fns}
    for _ in range(repeats):  # interleaved so drift hits both equally
        for w, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times[w].append((time.perf_counter() - t0) / steps)
    tokens = batch * config.max_seq_len
    out = {w: tokens / statistics.median(t) for w, t in times.items()}
    out["ratio"] = out["ours"] / out["llama"]
    out["params"] = Transformer(config).num_params()
    return out


def step_memory(which: str, shape: str, batch: int, device) -> float:
    """Memory (MiB) one training step holds: on CUDA the allocator's peak; on CPU the tensors
    autograd saves for backward (deduplicated by storage) plus parameters, gradients and AdamW
    state, counted exactly through ``torch.autograd.graph.saved_tensors_hooks``."""
    config = ModelConfig(**SHAPES[shape])
    x = torch.randint(0, config.vocab_size, (batch, config.max_seq_len), device=device)
    model = build(which, config, device)
    fn = step_fn(model, which, x, device)
    fn()  # creates gradients and optimizer state
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        fn()
        return torch.cuda.max_memory_allocated() / 2**20
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return (sum(storages.values()) + 4 * params) / 2**20  # params + grads + 2 Adam moments


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape, fewer repeats")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    shape, batch, repeats, steps = ("tiny", 8, 5, 3) if args.quick else ("small", 8, 7, 3)
    res = throughput(shape, batch, repeats, steps, device)
    mem = {w: step_memory(w, shape, batch, device) for w in ("ours", "llama")}
    print(f"shape={shape} {SHAPES[shape]} batch={batch} params={res['params']:,} device={device} "
          f"threads={torch.get_num_threads()}  (median of {repeats} interleaved repeats)")
    print(f"{'model':<28}{'tokens/s':>12}{'step MiB':>12}")
    print(f"{'lib.models.Transformer':<28}{res['ours']:>12,.0f}{mem['ours']:>12.1f}")
    print(f"{'transformers Llama (sdpa)':<28}{res['llama']:>12,.0f}{mem['llama']:>12.1f}")
    print(f"throughput ratio ours/llama: {res['ratio']:.2f}x (target >= 1.2x on CPU)")
    print(f"step-memory ratio ours/llama: {mem['ours'] / max(mem['llama'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
