"""Training throughput and step memory of lib.models.Transformer vs transformers' LlamaForCausalLM.

Same shapes, same run, interleaved repeats; reports tokens/s of forward + backward + AdamW step
(``lib.training.adamw``, fused, for both models)
and the ratio ours / Llama (target >= 1.2x on CPU), and the memory one training step holds
(CPU: tensors saved for backward + params, grads, AdamW state; CUDA: the allocator's peak).

    python benchmarks/bench_models.py [--quick] [--device cuda]

On CUDA it reports instead, per shape (the costliest model of each notebook's full profile and
GPT-2 124M), tokens/s, ms/step and MFU (model FLOPs against the GPU's dense bf16 peak,
``PEAK_BF16_FLOPS``) of ours and of LlamaForCausalLM (sdpa), each eager and compiled, in one
run. Asking for CUDA where there is none is an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: python benchmarks/bench_models.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import calls_per_block, choice_check, paired_ratio, paired_times, record
from lib import experiments
from lib.core import autocast, pick_device, profile_settings
from lib.models import (
    ModelConfig,
    Transformer,
    copy_to_hf,
    projection_impl,
    split_projection,
    to_hf,
)
from lib.scaling import run_flops_per_token
from lib.training import adamw

SHAPES = {
    "small": dict(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, max_seq_len=256),
    "tiny": dict(vocab_size=512, d_model=128, n_layers=2, n_heads=4, max_seq_len=128),
    # The dense models notebooks 02-04 train on a CPU (04's dense baseline, 02's passkey models).
    "notebook": dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, max_seq_len=64),
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
    opt = adamw(model.parameters(), lr=1e-3)  # the workbench's AdamW (fused), the same for both

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
    """tokens/s of each model, the paired speed-up ours/llama, and each model's kernel floor
    (its GEMM and attention kernels replayed alone: ``benchmarks.common.KernelFloor``)."""
    config = ModelConfig(**SHAPES[shape])
    x = torch.randint(0, config.vocab_size, (batch, config.max_seq_len), device=device)
    fns = {w: step_fn(build(w, config, device), w, x, device) for w in ("ours", "llama")}
    times = paired_times(fns, repeats, steps, device)
    tokens = batch * config.max_seq_len
    out = {w: tokens / (sum(t) / len(t)) for w, t in times.items()}
    out["ratio"] = paired_ratio(times, "ours", "llama")
    out["params"] = Transformer(config).num_params()
    out["step_s"] = {w: sorted(t)[len(t) // 2] for w, t in times.items()}
    out["floor"] = {}
    for w, fn in fns.items():
        floor = record(fn)
        out["floor"][w] = (floor.replay_seconds(repeats=repeats, device=device), floor.gemm_flops)
    return out


def projection_choice(shape: str, batch: int, repeats: int, device) -> dict[str, dict]:
    """Whether ``split_projection``'s "auto" (measured where ``$WORKBENCH_DISPATCH_CACHE`` is
    set, else the static rule) is within 5% of the faster of "fused" and "split", for the
    model's two projections (QKV, gate-up) at this shape: forward + backward of each, paired
    repeats, ``choice_check`` with auto against the implementation it ran as the A/A control."""
    config = ModelConfig(**SHAPES[shape])
    tokens = batch * config.max_seq_len
    torch.manual_seed(0)
    model = Transformer(config).to(device)
    attn = next(m for m in model.modules() if hasattr(m, "qkv"))
    mlp = next(m for m in model.modules() if hasattr(m, "gate_up"))
    out = {}
    for name, linear, sizes in (("QKV", attn.qkv, (attn.q_size + attn.kv_size, attn.kv_size)),
                                ("gate-up", mlp.gate_up, (mlp.d_ff, mlp.d_ff))):
        x = torch.randn(tokens, config.d_model, device=device)
        grads = [torch.randn(tokens, n, device=device) for n in sizes]

        def fwd_bwd(impl, linear=linear, sizes=sizes, x=x, grads=grads):
            def fn():
                xi = x.detach().requires_grad_(True)
                torch.autograd.backward(split_projection(xi, linear, sizes, impl), grads)
            return fn

        fns = {impl: fwd_bwd(impl) for impl in ("auto", "fused", "split")}
        steps = calls_per_block(fns["auto"], device=device)  # auto's first call calibrates
        ran = projection_impl(x.detach().requires_grad_(True), linear, sizes)
        times = paired_times(fns, repeats, steps, device)
        out[name] = {"ran": ran, "steps": steps, **choice_check(times, "auto", ran, ["fused", "split"])}
    return out


def compiled_throughput(shape: str, batch: int, repeats: int, steps: int, device) -> dict:
    """Both models through ``torch.compile`` (and Llama eager as the reference), paired:
    seconds per step (median) and the speed-ups ours-compiled / Llama-compiled and
    ours-compiled / Llama-eager."""
    config = ModelConfig(**SHAPES[shape])
    x = torch.randint(0, config.vocab_size, (batch, config.max_seq_len), device=device)
    fns = {"ours compiled": step_fn(torch.compile(build("ours", config, device)), "ours", x, device),
           "llama compiled": step_fn(torch.compile(build("llama", config, device)), "llama", x, device),
           "llama eager": step_fn(build("llama", config, device), "llama", x, device)}
    times = paired_times(fns, repeats, steps, device, warmup=3)  # the first calls compile
    out = {k: sorted(t)[len(t) // 2] for k, t in times.items()}
    out["vs compiled"] = paired_ratio(times, "ours compiled", "llama compiled")
    out["vs eager"] = paired_ratio(times, "ours compiled", "llama eager")
    return out


# Dense bf16 tensor-core peaks (FLOP/s, no structured sparsity) from NVIDIA's datasheets,
# matched in this order against torch.cuda.get_device_name (more specific names first).
PEAK_BF16_FLOPS = (
    ("H200", 989e12),      # H200 SXM
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),      # H100 SXM5
    ("A100", 312e12),      # SXM and PCIe alike
    ("L4", 121e12),
)
# A GPT-2-small-size model (124M parameters with GPT-2's vocabulary and context) in lib.models'
# conventions (SwiGLU, RoPE, tied embeddings): the shape MFU targets are quoted at.
GPT2_124M = dict(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=2048, max_seq_len=1024)
GPU_TOKENS_PER_STEP = 32768   # default CUDA batch: enough tokens per step to fill an H100


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU named ``device_name`` (``PEAK_BF16_FLOPS``), or None
    for a GPU the table does not know."""
    for key, peak in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: the training FLOP/s the model's own count implies (tokens/s x
    FLOPs per token) over the device's peak; None without a peak."""
    return None if not peak_flops else tokens_per_s * flops_per_token / peak_flops


def notebook_full_shapes() -> dict[str, ModelConfig]:
    """The costliest model of each notebook's full profile (the ``planned_runs`` of its study
    module at the full settings), plus ``GPT2_124M``."""
    shapes = {}
    for name in experiments.__all__:
        module = getattr(experiments, name)
        if not hasattr(module, "planned_runs"):
            continue
        runs = module.planned_runs(profile_settings("full", quick=module.QUICK, full=module.FULL))
        if runs:
            top = max(runs, key=lambda r: run_flops_per_token(r.model, r.train_len))
            shapes[name.removesuffix("_study")] = ModelConfig(**{**top.model.to_dict(), "max_seq_len": top.train_len})
    shapes["gpt2-124m"] = ModelConfig(**GPT2_124M)
    return shapes


def gpu_table(shapes: dict[str, ModelConfig], batch: int | None, repeats: int, steps: int, device,
              compile: bool = True) -> list[dict]:
    """Per shape and implementation (ours and transformers' LlamaForCausalLM with sdpa, each
    eager and, with ``compile``, through torch.compile; bf16 autocast, fused AdamW), measured
    in the same run by interleaved repeats: tokens/s, ms/step and MFU against the device's bf16
    peak. Model FLOPs per token: ``lib.scaling.run_flops_per_token`` (Chinchilla Appendix F:
    all matmuls, attention over the full T x T). A shape transformers cannot build (MoE, a
    non-RoPE encoding) is measured for ours only. ``batch`` None: ``GPU_TOKENS_PER_STEP`` tokens."""
    peak = peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    rows = []
    for label, config in shapes.items():
        b = batch or max(1, GPU_TOKENS_PER_STEP // config.max_seq_len)
        x = torch.randint(0, config.vocab_size, (b, config.max_seq_len), device=device)
        models = {"ours": build("ours", config, device)}
        try:
            models["llama sdpa"] = build("llama", config, device)
        except (ValueError, NotImplementedError, KeyError) as err:
            print(f"{label}: no transformers Llama of this shape ({err}); ours only")
        fns = {}
        for name, model in models.items():
            which = "ours" if name == "ours" else "llama"
            fns[f"{name} eager"] = step_fn(model, which, x, device)
            if compile:
                fns[f"{name} compiled"] = step_fn(torch.compile(model), which, x, device)
        times = paired_times(fns, repeats, steps, device, warmup=3 if compile else 1)
        fpt = run_flops_per_token(config)
        for name, t in times.items():
            step_s = sorted(t)[len(t) // 2]
            tps = b * config.max_seq_len / step_s
            rows.append({"shape": label, "impl": name, "params": Transformer(config).num_params(),
                         "batch": b, "seq_len": config.max_seq_len, "tokens_per_s": tps,
                         "ms_per_step": step_s * 1e3, "mfu": mfu(tps, fpt, peak)})
        del models, fns
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def print_gpu_table(rows: list[dict], device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    peak = peak_bf16_flops(name) if device.type == "cuda" else None
    print(f"device={name} bf16 peak={'unknown (not in PEAK_BF16_FLOPS)' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}")
    print(f"{'shape':<12}{'impl':<22}{'params':>13}{'batch':>7}{'seq':>6}{'tokens/s':>12}{'ms/step':>10}{'MFU':>8}")
    for r in rows:
        m = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        print(f"{r['shape']:<12}{r['impl']:<22}{r['params']:>13,}{r['batch']:>7}{r['seq_len']:>6}"
              f"{r['tokens_per_s']:>12,.0f}{r['ms_per_step']:>10.1f}{m:>8}")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        by = {r["impl"]: r["tokens_per_s"] for r in rows if r["shape"] == shape}
        if "ours compiled" in by and "llama sdpa compiled" in by:
            print(f"{shape}: ours compiled / llama compiled {by['ours compiled'] / by['llama sdpa compiled']:.2f}x "
                  "(target >= 1.1x at gpt2-124m on an H100-class GPU; MFU target >= 40%)")


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
    parser.add_argument("--compile", action="store_true",
                        help="also compare both models under torch.compile (needs a C++ compiler on CPU; slow to start)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="model shape (default by --quick)")
    parser.add_argument("--batch", type=int, default=None,
                        help="sequences per step (default 8; on CUDA 32768 tokens per step)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved repeats (default 7, --quick 5); more on a shared machine")
    args = parser.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as err:  # e.g. --device cuda on a machine without CUDA
        parser.error(f"--device {args.device}: {err}; the CUDA report (tokens/s and MFU at the notebooks' "
                     "full shapes and GPT-2 124M) needs a CUDA GPU")
    if args.batch is not None and args.batch <= 0:
        parser.error(f"--batch must be a positive integer, got {args.batch}")
    if device.type == "cuda":
        # The GPU report: full shapes, MFU, transformers Llama eager and compiled, same run.
        rows = gpu_table(notebook_full_shapes(), args.batch, args.repeats or 5, 3, device, compile=True)
        print_gpu_table(rows, device)
        return
    shape, repeats, steps = ("tiny", 5, 3) if args.quick else ("small", 7, 3)
    batch = args.batch or 8
    repeats = args.repeats or repeats
    shape = args.shape or shape
    res = throughput(shape, batch, repeats, steps, device)
    mem = {w: step_memory(w, shape, batch, device) for w in ("ours", "llama")}
    print(f"shape={shape} {SHAPES[shape]} batch={batch} params={res['params']:,} device={device} "
          f"threads={torch.get_num_threads()}  ({repeats} interleaved repeats of {steps} steps)")
    print(f"{'model':<28}{'tokens/s':>10}{'ms/step':>10}{'floor ms':>10}{'GEMM GF/s':>11}{'step MiB':>10}")
    for w, name in (("ours", "lib.models.Transformer"), ("llama", "transformers Llama (sdpa)")):
        floor_s, flops = res["floor"][w]
        print(f"{name:<28}{res[w]:>10,.0f}{res['step_s'][w] * 1e3:>10.1f}{floor_s * 1e3:>10.1f}"
              f"{flops / floor_s / 1e9:>11.1f}{mem[w]:>10.1f}")
    med, lo, hi = res["ratio"]
    print(f"throughput ratio ours/llama: {med:.2f}x (per-repeat range {lo:.2f}-{hi:.2f}; target >= 1.2x on CPU)")
    ceiling = res["step_s"]["llama"] / res["floor"]["ours"][0]
    print(f"kernel floor: GEMM + attention kernels alone take {res['floor']['ours'][0] / res['step_s']['ours']:.0%} "
          f"of our step; any implementation launching them can be at most {ceiling:.2f}x Llama here")
    print(f"step-memory ratio ours/llama: {mem['ours'] / max(mem['llama'], 1e-9):.2f}x")
    for name, check in projection_choice(shape, batch, repeats, device).items():
        ratios = ", ".join(f"{impl} {r:.3f} [{lo:.3f}, {hi:.3f}]" for impl, (r, lo, hi) in check["ratios"].items())
        print(f"{name} projection, auto ran {check['ran']!r}: time auto / each, geometric mean [95% CI] over "
              f"{repeats} paired repeats of {check['steps']} calls: {ratios}; A/A resolves "
              f"+/-{check['resolution']:.1%}; target auto <= 1.05x the faster: {check['verdict']}")
    if args.compile:
        comp = compiled_throughput(shape, batch, repeats, steps, device)
        print("\ntorch.compile (both models; median ms/step):  " + ",  ".join(
            f"{k} {comp[k] * 1e3:.1f}" for k in ("ours compiled", "llama compiled", "llama eager")))
        for key in ("vs compiled", "vs eager"):
            med, lo, hi = comp[key]
            print(f"ours compiled / llama {key.split()[1]}: {med:.2f}x (per-repeat {lo:.2f}-{hi:.2f})")

if __name__ == "__main__":
    main()
