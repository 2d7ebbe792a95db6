"""MoE layer and optimizer-step cost: lib.models.moe / lib.training.optim vs their peers, measured in the same run.

1. Forward + backward throughput (tokens/s) of ``lib.models.moe.MoEFeedForward`` (auto, padded-bmm,
   grouped_mm and sorted-loop dispatch) vs transformers' ``MixtralSparseMoeBlock`` of the same shape and
   weights, with its "eager" and "grouped_mm" ``experts_implementation``; ratio ours / Mixtral
   (target >= 1.5x on CPU against eager). Also the cost a ParameterList layout would add:
   stacking the expert matrices at every forward (and un-stacking the gradient in backward).
   And whether ``auto``'s measured choice is within 5% of the fastest path (``choice_check``,
   with ``auto`` against the path it ran as the A/A control).
2. Optimizer step time of Muon (``lib.training.optim.ExpertMuon``, Newton-Schulz in fp32 on CPU, and
   in bf16 as torch does) + AdamW vs AdamW alone on a small MoE transformer.

Interleaved repeats, medians; the machine may be shared, so read the ratios.

    python benchmarks/bench_moe.py [--quick] [--device cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: python benchmarks/bench_moe.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import calls_per_block, choice_check, paired_ratio, paired_times, record
from lib.core import pick_device
from lib.models import ModelConfig, MoEFeedForward, Transformer, to_hf_mixtral_block
from lib.training import build_optimizers

SHAPES = {
    "small": dict(d_model=256, d_ff=512, n_experts=8, top_k=2, tokens=2048),
    "tiny": dict(d_model=128, d_ff=256, n_experts=8, top_k=2, tokens=1024),
    "study": dict(d_model=64, d_ff=64, n_experts=4, top_k=2, tokens=512),  # notebook 04's quick model
}
# Calls per contender per round, raised until a round's block takes about this long: blocks of
# five ~1 ms calls left the A/A pair (auto against the path it ran) +/-6.6% wide at d=64.
BLOCK_S = 0.02


def _time(fns: dict, repeats: int, steps: int, device) -> dict[str, float]:
    """Median seconds per call of each function (interleaved repeats)."""
    return {k: statistics.median(v) for k, v in paired_times(fns, repeats, steps, device).items()}


def layer_throughput(shape: str, repeats: int, steps: int, device) -> dict[str, float]:
    s = dict(SHAPES[shape])
    tokens = s.pop("tokens")
    torch.manual_seed(0)
    ours = MoEFeedForward(**s, aux_loss_coef=0.0).to(device)
    x = torch.randn(1, tokens, s["d_model"], device=device)
    grad = torch.randn_like(x)
    layers = {}
    for mode in ("auto", "padded", "grouped", "sorted"):
        layer = MoEFeedForward(**s, aux_loss_coef=0.0, dispatch=mode).to(device)
        layer.load_state_dict(ours.state_dict())
        layers[f"lib.models.moe ({mode})"] = layer
    for impl in ("eager", "grouped_mm"):
        layers[f"Mixtral ({impl})"] = to_hf_mixtral_block(ours, experts_implementation=impl).to(device)

    def fwd_bwd(layer):
        def fn():
            xi = x.detach().requires_grad_(True)
            layer(xi).backward(grad)
        return fn

    # What a ParameterList layout would add: stack E matrices x 3 per forward, split grads back.
    mats = [torch.randn(s["d_ff"], s["d_model"], device=device, requires_grad=True)
            for _ in range(3 * s["n_experts"])]

    def stack_cost():
        stacked = [torch.stack(mats[i::3]) for i in range(3)]
        torch.autograd.backward(stacked, [torch.ones_like(t) for t in stacked])

    fns = {name: fwd_bwd(layer) for name, layer in layers.items()}
    fns["stack 3 x E expert matrices"] = stack_cost
    # auto's first call calibrates its choice (cached), outside the timings.
    steps = calls_per_block(fns["lib.models.moe (auto)"], steps, BLOCK_S, device)
    times = paired_times(fns, repeats, steps, device)
    secs = {k: statistics.median(v) for k, v in times.items()}
    out = {name: tokens / t for name, t in secs.items() if not name.startswith("stack")}
    out["stack_fraction"] = secs["stack 3 x E expert matrices"] / secs["lib.models.moe (grouped)"]
    out["ratio_eager"] = paired_ratio(times, "lib.models.moe (auto)", "Mixtral (eager)")
    out["ratio_grouped"] = paired_ratio(times, "lib.models.moe (auto)", "Mixtral (grouped_mm)")
    out["auto_path"] = layers["lib.models.moe (auto)"].last_dispatch
    paths = [f"lib.models.moe ({mode})" for mode in ("padded", "grouped", "sorted")]
    out["choice"] = choice_check(times, "lib.models.moe (auto)", f"lib.models.moe ({out['auto_path']})", paths)
    floor = record(fns["lib.models.moe (grouped)"])
    out["floor_s"] = floor.replay_seconds(repeats=repeats, device=device)
    out["gemm_flops"] = floor.gemm_flops
    out["ours_s"] = secs["lib.models.moe (grouped)"]
    out["auto_s"] = secs["lib.models.moe (auto)"]
    out["eager_s"] = secs["Mixtral (eager)"]
    out["steps"] = steps
    return out


def optimizer_step_time(repeats: int, steps: int, device) -> dict[str, float]:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=4, max_seq_len=64, mlp="moe",
                         moe={"n_experts": 8, "top_k": 2})
    model = Transformer(config).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    setups = {
        "AdamW only": build_optimizers(model, kind="adamw", lr=1e-3)[0],
        "Muon (fp32 NS) + AdamW": build_optimizers(model, kind="muon", lr=1e-3, ns_dtype=torch.float32)[0],
        "Muon (bf16 NS) + AdamW": build_optimizers(model, kind="muon", lr=1e-3, ns_dtype=torch.bfloat16)[0],
    }

    def stepper(opts):
        def fn():
            for opt in opts:
                opt.step()
        return fn

    secs = _time({k: stepper(v) for k, v in setups.items()}, repeats, steps, device)
    secs["params"] = model.num_params()
    return secs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape, fewer repeats")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="layer shape (default by --quick)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-optimizer", action="store_true", help="skip the optimizer-step comparison")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved repeats (default 7, --quick 5); more on a shared machine")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape, repeats, steps = ("tiny", 5, 3) if args.quick else ("small", 7, 5)
    shape = args.shape or shape
    repeats = args.repeats or repeats
    res = layer_throughput(shape, repeats, steps, device)
    print(f"MoE layer forward+backward, shape={shape} {SHAPES[shape]} device={device} "
          f"threads={torch.get_num_threads()} (median of {repeats} interleaved repeats of {res['steps']} calls each)")
    print(f"{'layer':<26}{'tokens/s':>12}{'vs Mixtral eager':>18}")
    for name, tps in res.items():
        if name.startswith("lib.models.moe") or name.startswith("Mixtral"):
            print(f"{name:<26}{tps:>12,.0f}{tps / res['Mixtral (eager)']:>17.2f}x")
    (med, lo, hi), (gmed, glo, ghi) = res["ratio_eager"], res["ratio_grouped"]
    print(f"speed-up lib.models.moe (auto, ran {res['auto_path']!r}) / Mixtral eager: {med:.2f}x (per-repeat {lo:.2f}-{hi:.2f}; "
          f"target >= 1.5x on CPU); / Mixtral grouped_mm: {gmed:.2f}x ({glo:.2f}-{ghi:.2f})")
    choice = res["choice"]
    per_path = ", ".join(f"{name.split('(')[1][:-1]} {r:.3f} [{lo:.3f}, {hi:.3f}]"
                         for name, (r, lo, hi) in choice["ratios"].items())
    print(f"auto's choice: time auto / each path, geometric mean [95% CI] over {repeats} paired repeats: "
          f"{per_path}; the A/A pair (auto / {res['auto_path']}, the same kernels plus auto's lookup) resolves "
          f"+/-{choice['resolution']:.1%}; target auto <= 1.05x the best path: {choice['verdict']}")
    if choice["pick"] is not None:
        rival, r, lo, hi = choice["pick"]
        print(f"the picked path's own row / the fastest other path ({rival.split('(')[1][:-1]}): "
              f"{r:.3f} [{lo:.3f}, {hi:.3f}]")
    print(f"kernel floor: the layer's routed GEMMs alone ({res['gemm_flops'] / 1e9:.2f} GFLOP, "
          f"{res['gemm_flops'] / res['floor_s'] / 1e9:.0f} GFLOP/s as grouped_mm) take {res['floor_s'] * 1e3:.2f} ms "
          f"= {res['floor_s'] / res['ours_s']:.0%} of the grouped layer, {res['floor_s'] / res['auto_s']:.0%} of auto; "
          f"bound on a dropless grouped layer vs Mixtral eager: {res['eager_s'] / res['floor_s']:.2f}x")
    print(f"a ParameterList layout would add {res['stack_fraction']:.0%} of the grouped layer's "
          "fwd+bwd time (stacking experts per forward)")
    if args.no_optimizer:
        return
    opt = optimizer_step_time(min(repeats, 7), 2 if args.quick else steps, device)
    print(f"\noptimizer step, MoE transformer with {opt.pop('params'):,} params (8 experts, 2 layers)")
    print(f"{'optimizers':<26}{'ms/step':>10}{'vs AdamW':>10}")
    for name, secs in opt.items():
        print(f"{name:<26}{secs * 1e3:>10.2f}{secs / opt['AdamW only']:>9.2f}x")


if __name__ == "__main__":
    main()
