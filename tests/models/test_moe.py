"""lib.models.moe against independent references: transformers' Mixtral block and its
load_balancing_loss_func, a dense recomputation, closed-form balance values."""

import math

import pytest
import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from lib.models import MoEFeedForward, grouped_mm_available, routing_summary, to_hf_mixtral_block

D, F_, E, K = 24, 40, 6, 2


def _layer(**kw):
    torch.manual_seed(0)
    kw = {"n_experts": E, "top_k": K, "init_std": 0.2, **kw}
    return MoEFeedForward(D, F_, **kw)


def _grads(layer, x, dispatch):
    layer.dispatch = dispatch
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    out = layer(x)
    # A non-uniform loss (uses every output) plus the aux loss.
    (out.square().sum() + out.sum() + layer.aux_loss).backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("shared", [False, True])
def test_dispatch_paths_agree_forward_and_backward(shared):
    layer = _layer(shared_expert=shared, z_loss_coef=1e-3)
    x = torch.randn(3, 7, D)
    ref_out, ref_gx, ref_g = _grads(layer, x, "dense")
    modes = ["sorted", "padded"] + (["grouped"] if grouped_mm_available("cpu") else [])
    for mode in modes:
        out, gx, g = _grads(layer, x, mode)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx, ref_gx, rtol=1e-4, atol=1e-5)
        for name in ref_g:
            torch.testing.assert_close(g[name], ref_g[name], rtol=1e-4, atol=1e-5, msg=f"{mode} {name}")


def test_auto_pads_only_balanced_routing():
    """auto on CPU: padded bmm while padding wastes <= PAD_SLACK of the rows, else grouped/sorted;
    the padded path equals the sorted one bitwise-close on both, idle experts included."""
    layer = _layer(n_experts=4, top_k=1)
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(4, D) * 10)
    x = torch.zeros(1, 8, D)
    x[0, torch.arange(8), torch.arange(8) % 4] = 1.0  # 2 tokens per expert: perfectly balanced
    out = layer(x)
    assert layer.last_dispatch == "padded"
    layer.dispatch = "sorted"
    torch.testing.assert_close(out, layer(x), rtol=1e-6, atol=1e-7)
    layer.dispatch = "auto"
    x[0, :, :] = 0
    x[0, :, 0] = 1.0  # every token to expert 0: padding would be 4x the rows
    out = layer(x)
    assert layer.last_dispatch in ("grouped", "sorted")
    layer.dispatch = "padded"  # forced: still correct, idle experts' rows are never read back
    torch.testing.assert_close(layer(x), out, rtol=1e-6, atol=1e-7)
    assert layer.last_dispatch == "padded"


def test_grouped_handles_idle_experts_and_bf16():
    if not grouped_mm_available("cpu", torch.bfloat16):
        pytest.skip("torch._grouped_mm not available on this CPU build")
    layer = _layer(n_experts=8, top_k=1)
    x = torch.randn(1, 3, D)  # 3 tokens, 8 experts: most experts get nothing
    layer.dispatch = "sorted"
    out_s = layer(x)
    layer.dispatch = "grouped"
    out_g = layer(x)
    torch.testing.assert_close(out_g, out_s, rtol=1e-5, atol=1e-6)
    layer.dispatch = "grouped"
    layer_bf = layer.to(torch.bfloat16)
    out_bf = layer_bf(x.bfloat16())
    assert out_bf.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf.float(), out_s, rtol=5e-2, atol=5e-2)


def test_grouped_follows_autocast():
    if not grouped_mm_available("cpu", torch.bfloat16):
        pytest.skip("torch._grouped_mm not available on this CPU build")
    layer = _layer()
    x = torch.randn(2, 5, D)
    outs = {}
    for mode in ("sorted", "grouped"):
        layer.dispatch = mode
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[mode] = layer(x)
    assert outs["grouped"].dtype == x.dtype
    torch.testing.assert_close(outs["grouped"], outs["sorted"], rtol=2e-2, atol=2e-2)
    layer.dispatch = "dense"
    assert (outs["grouped"] - layer(x)).abs().max() > 0  # bf16 really was used


@pytest.mark.parametrize("impl", ["eager", "grouped_mm"])
def test_matches_transformers_mixtral_block(impl):
    layer = _layer(router_noise=0.5).eval()  # eval: noise off, as Mixtral without jitter
    block = to_hf_mixtral_block(layer, experts_implementation=impl).eval()
    x = torch.randn(2, 9, D)
    torch.testing.assert_close(layer(x), block(x), rtol=1e-5, atol=1e-5)


def test_aux_loss_matches_transformers_load_balancing_loss():
    coef = 0.03
    layer = _layer(aux_loss_coef=coef)
    x = torch.randn(4, 8, D)
    layer(x)
    logits = torch.nn.functional.linear(x.reshape(-1, D), layer.router.weight)
    hf = load_balancing_loss_func((logits,), num_experts=E, top_k=K)
    # transformers counts f_i per token (sums to k); ours per routed slot (sums to 1).
    torch.testing.assert_close(layer.aux_loss, coef * hf / K)


def test_balance_loss_closed_forms():
    layer = _layer(n_experts=4, top_k=1)
    with torch.no_grad():
        layer.router.weight.zero_()  # uniform probabilities: P_i = 1/E
    layer(torch.randn(2, 16, D))
    # All ties -> topk picks expert 0 for every token: f = (1,0,0,0), loss = E * 1 * 1/E = 1.
    assert layer.last_stats["balance_loss"].item() == pytest.approx(1.0)
    assert layer.last_stats["router_entropy"].item() == pytest.approx(math.log(4))
    assert layer.last_stats["max_load_ratio"].item() == pytest.approx(4.0)
    assert layer.last_stats["overflow_share"].item() == pytest.approx(0.75)
    with torch.no_grad():  # collapse: expert 0 has probability ~1 everywhere
        layer.router.weight.zero_()
    x = torch.randn(2, 16, D)
    with torch.no_grad():
        layer.router.weight[0] = 50 * x.reshape(-1, D).mean(0).sign()
    xs = x.abs() * layer.router.weight[0].sign()  # every token aligned with expert 0's row
    layer(xs)
    assert layer.last_stats["balance_loss"].item() == pytest.approx(4.0, rel=1e-3)


def test_z_loss_and_weighting():
    layer = _layer(aux_loss_coef=0.0, z_loss_coef=0.5)
    x = torch.randn(2, 5, D)
    layer(x)
    logits = x.reshape(-1, D) @ layer.router.weight.t()
    expected = 0.5 * torch.logsumexp(logits, -1).square().mean()
    torch.testing.assert_close(layer.aux_loss, expected)


def test_topk_renormalised_weights_and_router_fp32():
    layer = _layer()
    h = torch.randn(11, D)
    logits, probs, experts, weights = layer.route(h)
    assert logits.dtype == probs.dtype == weights.dtype == torch.float32
    torch.testing.assert_close(weights.sum(-1), torch.ones(11))
    ref = torch.softmax(h @ layer.router.weight.t(), -1).topk(K, -1)
    assert torch.equal(experts, ref.indices)
    torch.testing.assert_close(weights, ref.values / ref.values.sum(-1, keepdim=True))


def test_router_noise_only_in_training():
    layer = _layer(router_noise=1.0)
    x = torch.randn(2, 6, D)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_aux_free_bias_moves_toward_balance_and_only_selects():
    layer = _layer(n_experts=4, top_k=2, aux_loss_coef=0.0, aux_free_bias=True, bias_update_rate=0.005)
    x = torch.randn(4, 32, D)
    direction = x.reshape(-1, D).mean(0).sign()
    with torch.no_grad():
        layer.router.weight[0] += 0.3 * direction / math.sqrt(D)  # expert 0 over-loaded
    x = x + direction
    layer(x)
    start_ratio = layer.last_stats["max_load_ratio"].item()
    load = layer.last_stats["load"]
    bias = layer.expert_bias.clone()
    assert bias[0] < 0 and torch.all(bias[load < 0.25] > 0)  # over-loaded down, under-loaded up
    assert not layer.expert_bias.requires_grad
    # Selection uses p + b, the mixing weights use p renormalised over the chosen experts.
    _, probs, experts, weights = layer.route(x.reshape(-1, D))
    assert torch.equal(experts, (probs + layer.expert_bias).topk(2, -1).indices)
    chosen = probs.gather(-1, experts)
    torch.testing.assert_close(weights, chosen / chosen.sum(-1, keepdim=True))
    layer.dispatch = "dense"  # routing only matters here; the cheapest path on 128 tokens
    ratios = []
    for _ in range(150):
        layer(x)
        ratios.append(layer.last_stats["max_load_ratio"].item())
    assert start_ratio > 1.8 and sum(ratios[-30:]) / 30 < 1.15
    layer.eval()
    before = layer.expert_bias.clone()
    layer(x)
    assert torch.equal(before, layer.expert_bias)  # no updates at evaluation


def test_stats_summary_and_param_counts():
    layer = _layer(shared_expert=True)
    layer(torch.randn(2, 4, D))
    s = routing_summary(torch.nn.Sequential(layer))
    assert set(s) >= {"max_load_ratio", "router_entropy", "dropped_share", "overflow_share"}
    assert s["dropped_share"] == 0.0 and 1.0 <= s["max_load_ratio"] <= E
    total = sum(p.numel() for p in layer.parameters())
    assert layer.active_params_per_token() == total - layer.inactive_params_per_token()


def test_validation_errors():
    with pytest.raises(ValueError, match="top_k"):
        MoEFeedForward(8, 16, n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="dispatch"):
        MoEFeedForward(8, 16, dispatch="fast")
    with pytest.raises(ValueError, match="router_noise"):
        MoEFeedForward(8, 16, router_noise=-1)
    with pytest.raises(ValueError, match="d_model"):
        MoEFeedForward(8, 16)(torch.randn(2, 3, 9))
    with pytest.raises(ValueError, match="shared_expert"):
        to_hf_mixtral_block(MoEFeedForward(8, 16, shared_expert=True))
    with pytest.raises(ValueError, match="experts_implementation"):
        to_hf_mixtral_block(MoEFeedForward(8, 16), "fast")


@pytest.mark.parametrize("kw,match", [
    (dict(d_model=8.0), r"d_model must be an integer >= 1, got 8.0"),   # a float is not a count
    (dict(n_experts=True), "n_experts"),                               # nor is a bool
    (dict(top_k=1.0), "top_k"),
    (dict(aux_loss_coef=True), r"aux_loss_coef must be a finite number >= 0.0, got True"),
    (dict(z_loss_coef=float("nan")), "z_loss_coef"),
    (dict(bias_update_rate=-1e-3), "bias_update_rate"),
    (dict(init_std=0), "init_std"),
    (dict(shared_expert=1), "shared_expert"),
    (dict(aux_free_bias="yes"), "aux_free_bias"),
])
def test_arguments_are_checked_by_name(kw, match):
    with pytest.raises(ValueError, match=match):
        MoEFeedForward(**{"d_model": 8, "d_ff": 16, **kw})


def test_numpy_ints_are_counts():
    import numpy as np

    layer = MoEFeedForward(np.int64(8), np.int32(16), n_experts=np.int64(4), top_k=np.int64(2))
    assert (layer.d_model, layer.n_experts, layer.top_k) == (8, 4, 2) and type(layer.top_k) is int


def test_builds_inside_lib_models():
    from lib import models

    cfg = models.ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, max_seq_len=16,
                             mlp="moe", moe={"n_experts": 4, "top_k": 2})
    model = models.Transformer(cfg)
    idx = torch.randint(0, 32, (2, 8))
    out = model(idx, targets=idx)
    assert out.aux_loss.item() > 0
    torch.testing.assert_close(out.loss, out.lm_loss + out.aux_loss)
