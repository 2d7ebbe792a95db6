"""lib.models against independent references: transformers' Llama/Qwen2 and torch's FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lib.models import ModelConfig, Transformer, copy_to_hf, to_hf


def tiny(**kw):
    base = dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("n_kv_heads,tie", [(4, True), (2, False)])
def test_logits_equal_transformers(arch, n_kv_heads, tie):
    torch.manual_seed(0)
    config = tiny(n_kv_heads=n_kv_heads, tie_embeddings=tie, encoding_kwargs={"base": 5000.0})
    model, hf = Transformer(config).eval(), to_hf(config, arch).eval()
    copy_to_hf(model, hf)
    x = torch.randint(0, config.vocab_size, (2, 32))
    torch.testing.assert_close(model(x).logits, hf(x).logits, atol=2e-5, rtol=1e-4)
    # the loss agrees with transformers' causal-LM loss, which shifts labels itself
    theirs = hf(x, labels=x).loss
    ours = model(x[:, :-1], x[:, 1:]).loss
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_param_count_matches_transformers():
    for tie in (True, False):
        config = tiny(tie_embeddings=tie, n_kv_heads=2)
        model, hf = Transformer(config), to_hf(config, "llama")
        assert model.num_params() == sum(p.numel() for p in hf.parameters())
        emb = config.vocab_size * config.d_model * (1 if tie else 2)
        assert model.num_params(exclude_embeddings=True) == model.num_params() - emb


def test_eager_and_sdpa_agree_and_maps_are_causal():
    torch.manual_seed(1)
    sdpa = Transformer(tiny(n_kv_heads=2)).eval()
    eager = Transformer(tiny(n_kv_heads=2, attn_impl="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, 97, (3, 20))
    torch.testing.assert_close(sdpa(x).logits, eager(x).logits, atol=1e-5, rtol=1e-5)
    maps = sdpa.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (3, 4, 20, 20)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 4, 20))
    assert maps[1].triu(1).abs().max() == 0  # no attention to the future


@pytest.mark.parametrize("seq_len", [16, 64])
def test_exact_flops_match_torch_flop_counter(seq_len):
    # FlopCounterMode counts every matmul of forward + backward; eager attention exposes the
    # QK^T and AV matmuls to it. Norm gains are the only parameters that do no matmul.
    config = tiny(max_seq_len=seq_len, attn_impl="eager", tie_embeddings=False)
    model = Transformer(config)
    x = torch.randint(0, 97, (2, seq_len))
    with FlopCounterMode(display=False) as counter:
        model(x, x).loss.backward()
    measured = counter.get_total_flops() / x.numel()
    assert model.flops_per_token(seq_len, exact=True) == pytest.approx(measured, rel=5e-3)
    assert model.flops_per_token() == 6 * model.num_params()


def test_causality():
    model = Transformer(tiny()).eval()
    x = torch.randint(0, 97, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 97
    torch.testing.assert_close(model(x).logits[:, :10], model(y).logits[:, :10])


def test_nope_and_rope_differ_and_residual_init_is_scaled():
    torch.manual_seed(0)
    rope = Transformer(tiny())
    torch.manual_seed(0)
    nope = Transformer(tiny(encoding="none"))
    x = torch.randint(0, 97, (1, 16))
    assert not torch.allclose(rope(x).logits, nope(x).logits)
    out_std = rope.blocks[0].attn.out.weight.std().item()
    qkv_std = rope.blocks[0].attn.qkv.weight.std().item()
    assert out_std == pytest.approx(qkv_std / 2, rel=0.15)  # 1/sqrt(2 * n_layers) = 1/2


@pytest.mark.parametrize("kwargs,match", [
    (dict(d_model=65), "n_heads"),
    (dict(n_layers=0), "n_layers"),
    (dict(n_kv_heads=3), "n_kv_heads"),
    (dict(attn_impl="magic"), "attn_impl"),
    (dict(mlp="kan"), "mlp"),
    (dict(encoding="nonexistent"), "encoding"),
    (dict(dropout=1.5), "dropout"),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Transformer(tiny(**kwargs))


@pytest.mark.parametrize("kwargs,match", [
    (dict(d_model=64.0), r"d_model must be an integer >= 1, got 64.0"),  # a float is not a count
    (dict(n_layers=True), r"n_layers must be an integer >= 1, got True"),  # nor is a bool
    (dict(vocab_size="97"), "vocab_size"),
    (dict(n_kv_heads=2.0), "n_kv_heads"),
    (dict(d_ff=0), "d_ff"),
    (dict(dropout=True), "dropout"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(init_std=True), "init_std"),
    (dict(tie_embeddings=1), "tie_embeddings"),
    (dict(loss_impl="fast"), "loss_impl"),
    (dict(moe=None), "moe"),
])
def test_config_values_are_checked_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_config_takes_numpy_ints_and_stores_plain_ones():
    import numpy as np

    config = tiny(d_model=np.int64(64), n_heads=np.int32(4), n_kv_heads=np.int64(2), d_ff=np.int16(96))
    assert (config.d_model, config.n_heads, config.n_kv_heads, config.d_ff) == (64, 4, 2, 96)
    assert all(type(v) is int for v in (config.d_model, config.n_heads, config.n_kv_heads, config.d_ff))
    assert Transformer(config).flops_per_token(np.int64(8), exact=True) == Transformer(config).flops_per_token(8, exact=True)
    with pytest.raises(ValueError, match="seq_len"):
        Transformer(config).flops_per_token(8.0, exact=True)


def test_mlps_are_a_registry_the_config_lists():
    from lib.core import Registry
    from lib.models import MLPS, MoEFeedForward, SwiGLU

    assert isinstance(MLPS, Registry) and sorted(MLPS) == ["moe", "swiglu"]
    with pytest.raises(ValueError, match=r"mlp must be one of \['moe', 'swiglu'\], got 'kan'"):
        tiny(mlp="kan")
    assert isinstance(MLPS.build("swiglu", tiny()), SwiGLU)
    assert isinstance(MLPS.build("moe", tiny(mlp="moe", moe={"n_experts": 2, "top_k": 1})), MoEFeedForward)


def test_bad_input_shape():
    with pytest.raises(ValueError, match="idx"):
        Transformer(tiny())(torch.zeros(5, dtype=torch.long))



@pytest.mark.parametrize("encoding", ["rope", "alibi"])
def test_block_on_flattened_tokens_equals_batched(encoding):
    """The model runs its residual stream as [B * T, d]; a block given that with seq_len = T
    computes what it computes on [B, T, d] (values and input gradients), and a flat input whose
    length seq_len does not divide is a clear error."""
    torch.manual_seed(0)
    model = Transformer(tiny(encoding=encoding))
    block, t = model.blocks[0], 6
    bias = model.encoding.attn_bias(t, t, "cpu", torch.float32)
    if bias is not None:
        bias = bias + torch.full((t, t), float("-inf")).triu(1)
    x = torch.randn(3, t, model.config.d_model, requires_grad=True)
    flat = x.detach().reshape(3 * t, -1).requires_grad_()
    y, y_flat = block(x, None, bias), block(flat, None, bias, seq_len=t)
    assert y_flat.shape == (3 * t, model.config.d_model)
    torch.testing.assert_close(y_flat.view(3, t, -1), y, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    y_flat.backward(g.view(3 * t, -1))
    torch.testing.assert_close(flat.grad.view(3, t, -1), x.grad, rtol=1e-6, atol=1e-6)
    for seq_len in (None, 0, 4):
        with pytest.raises(ValueError, match="seq_len"):
            block(flat, None, bias, seq_len=seq_len)

def test_load_hf_model_from_a_local_folder(tmp_path):
    from lib.models import load_hf_model

    config = tiny(n_kv_heads=2)
    ours = Transformer(config).eval()
    hf = to_hf(config, "llama")
    copy_to_hf(ours, hf)
    hf.save_pretrained(tmp_path / "tiny-llama")
    loaded = load_hf_model(str(tmp_path / "tiny-llama"), device="cpu")
    assert loaded.dtype == torch.float32 and loaded.config._attn_implementation == "sdpa"
    x = torch.randint(0, config.vocab_size, (1, 12))
    torch.testing.assert_close(loaded(x).logits, ours(x).logits, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="only local files"):
        load_hf_model(str(tmp_path / "missing"), device="cpu")


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_split_projections_equal_fused_forward_and_backward(monkeypatch, n_kv_heads):
    """The fused QKV and gate-up projections run as one GEMM per piece ("split") give the same
    logits and gradients as the fused GEMM + split, so "auto" may take either."""
    import lib.models as models
    import lib.models.transformer as transformer_module

    torch.manual_seed(0)
    model = Transformer(tiny(n_kv_heads=n_kv_heads))
    x = torch.randint(0, model.config.vocab_size, (2, 24))
    results = []
    for impl in ("fused", "split"):  # what "auto" would choose, forced everywhere
        monkeypatch.setattr(transformer_module, "choose", lambda key, make, static, device="cpu", impl=impl: impl)
        model.zero_grad(set_to_none=True)
        out = model(x, x)
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    pieces = models.split_projection(torch.randn(3, 5, 8), torch.nn.Linear(8, 6, bias=False), (4, 2))
    assert [p.shape for p in pieces] == [(3, 5, 4), (3, 5, 2)]


def test_rmsnorm_equals_torch_and_transformers():
    """lib.models.RMSNorm (vecdot mean square) equals torch.nn.RMSNorm in fp64, value and
    gradients, and transformers' LlamaRMSNorm on bf16 inputs (normalised in float32)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from lib.models import RMSNorm

    torch.manual_seed(0)
    ours, ref = RMSNorm(16, eps=1e-5).double(), torch.nn.RMSNorm(16, eps=1e-5).double()
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    x = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 7, 16, dtype=torch.float64)
    grads = []
    for norm in (ours, ref):
        x.grad = None
        y = norm(x)
        y.backward(g)
        grads.append((y.detach(), x.grad.clone(), norm.weight.grad.clone()))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    hf = LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        hf.weight.copy_(ours.weight)
    xb = torch.randn(4, 16).bfloat16()
    out = ours.float()(xb)
    assert out.dtype == torch.float32  # bf16 normalised in float32, times the fp32 weight (as HF)
    torch.testing.assert_close(out, hf(xb), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="last dim"):
        ours(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="one dimension"):
        RMSNorm((4, 4))


def test_dense_model_loss_is_the_lm_loss():
    """A dense model has no auxiliary loss: loss is lm_loss itself and aux_loss a zero."""
    model = Transformer(tiny())
    x = torch.randint(0, model.config.vocab_size, (2, 8))
    out = model(x, x)
    assert out.loss is out.lm_loss and out.aux_loss.item() == 0.0 and model.aux_loss("cpu").item() == 0.0
