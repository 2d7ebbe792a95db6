"""lib.encodings.flex: attention with a position-function bias (ALiBi) through FlexAttention
against the materialised [H, T, T] bias through torch's SDPA, outputs and gradients.

Tolerance: float32, atol = rtol = 2e-5 (flex and SDPA sum the softmax in different orders;
measured differences are ~2e-6). One shape (B1 H4 T300 D16: not a multiple of flex's 128-row
blocks, and more than one backward block) so the CPU compile (10-25 s) happens once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lib.encodings import (
    FLEX_MIN_TOKENS_CPU,
    bias_attention,
    build_encoding,
    choose_bias_path,
    dense_bias,
    flex_available,
    has_score_bias,
    load_flash_attn,
)
from lib.encodings import flex as flex_module
from lib.models import ModelConfig, Transformer

B, H, T, D = 1, 4, 300, 16
TOL = dict(atol=2e-5, rtol=2e-5)
needs_flex = pytest.mark.skipif(not flex_available("cpu"), reason="torch without FlexAttention")


def alibi(n_heads=H, head_dim=D):
    return build_encoding("alibi", d_model=n_heads * head_dim, n_heads=n_heads, head_dim=head_dim, max_seq_len=T)


def inputs(n_kv=H, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=gen, requires_grad=True)
    k, v = (torch.randn(B, n_kv, T, D, generator=gen, requires_grad=True) for _ in range(2))
    return q, k, v


def reference(q, k, v, enc):
    """Independent of lib: the paper's bias -slope * (i - j) for j <= i, built by hand."""
    i = torch.arange(q.shape[-2])[:, None] + k.shape[-2] - q.shape[-2]
    j = torch.arange(k.shape[-2])[None, :]
    bias = (-enc.slopes[:, None, None] * (i - j).float()).masked_fill(j > i, float("-inf"))
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


@pytest.mark.parametrize("t_q, t_k", [(7, 7), (3, 9)])
def test_score_bias_equals_attn_bias_where_the_causal_mask_keeps_keys(t_q, t_k):
    enc = alibi()
    keep = (torch.arange(t_k)[None, :] <= torch.arange(t_k - t_q, t_k)[:, None])
    dense = dense_bias(enc, t_q, t_k, "cpu", torch.float32)
    assert torch.equal(dense[:, keep], enc.attn_bias(t_q, t_k, "cpu", torch.float32)[:, keep])  # bitwise
    assert torch.isneginf(dense[:, ~keep]).all()
    assert has_score_bias(enc) and not has_score_bias(build_encoding("rope", d_model=64, n_heads=4, head_dim=16,
                                                                     max_seq_len=8))


@needs_flex
@pytest.mark.parametrize("n_kv", [H, 2])
def test_flex_outputs_and_gradients_equal_the_materialised_bias(n_kv):
    enc = alibi()
    q, k, v = inputs(n_kv)
    grad = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1))
    outs = {}
    for path in ("flex", "materialised"):
        y = bias_attention(q, k, v, enc, path=path)
        outs[path] = (y, *torch.autograd.grad(y, (q, k, v), grad))
    ref = reference(q, k, v, enc)
    torch.testing.assert_close(outs["materialised"][0], ref, **TOL)
    for a, b in zip(outs["flex"], outs["materialised"], strict=True):
        torch.testing.assert_close(a, b, **TOL)
    if n_kv == H:  # the no-grad forward (flex alone, no custom backward) is the same function
        with torch.no_grad():
            torch.testing.assert_close(bias_attention(q, k, v, enc, path="flex"), ref, **TOL)


@needs_flex
def test_model_with_kernel_bias_equals_model_with_materialised_bias(monkeypatch):
    config = ModelConfig(vocab_size=32, d_model=H * D, n_layers=2, n_heads=H, max_seq_len=T, encoding="alibi")
    torch.manual_seed(0)
    model = Transformer(config)
    idx = torch.randint(0, 32, (B, T), generator=torch.Generator().manual_seed(2))
    runs = {}
    for name, threshold in (("flex", 1), ("materialised", 10**9)):
        monkeypatch.setattr(flex_module, "FLEX_MIN_TOKENS_CPU", threshold)
        assert model._kernel_bias(T, "cpu") is (name == "flex")
        model.zero_grad()
        out = model(idx, idx)
        out.loss.backward()
        runs[name] = (out.logits, *(p.grad.clone() for p in model.parameters()))
    for a, b in zip(runs["flex"], runs["materialised"], strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_auto_path_by_length_dropout_and_encoding():
    enc = alibi()
    assert choose_bias_path(enc, FLEX_MIN_TOKENS_CPU - 1, "cpu") == "materialised"  # notebook lengths: no compile
    expect_long = "flex" if flex_available("cpu") else "materialised"
    assert choose_bias_path(enc, FLEX_MIN_TOKENS_CPU, "cpu") == expect_long
    assert choose_bias_path(enc, FLEX_MIN_TOKENS_CPU, "cpu", dropout_p=0.1) == "materialised"  # flex: no dropout
    assert choose_bias_path(enc, FLEX_MIN_TOKENS_CPU, "cpu", flash=True) == expect_long    # flash-attn: CUDA only


def test_bad_arguments_raise_before_compute():
    enc = alibi()
    q, k, v = inputs()
    with pytest.raises(ValueError, match="path must be one of"):
        bias_attention(q, k, v, enc, path="fast")
    with pytest.raises(ValueError, match="no score_bias"):
        bias_attention(q, k, v, build_encoding("none", d_model=64, n_heads=4, head_dim=16, max_seq_len=8))
    with pytest.raises(ValueError, match="flash"):
        bias_attention(q, k, v, enc, path="flash")
    with pytest.raises(ValueError, match="no dropout"):
        bias_attention(q, k, v, enc, path="flex", dropout_p=0.1)


@pytest.mark.skipif(not (torch.cuda.is_available() and flex_available("cuda")), reason="needs CUDA")
@pytest.mark.parametrize("path", ["flex", "flash"])
def test_cuda_paths_equal_the_materialised_bias(path):
    if path == "flash" and load_flash_attn() is None:
        pytest.skip("flash-attn not installed")
    enc = alibi().cuda()
    q, k, v = (z.detach().cuda().requires_grad_() for z in inputs())
    grad = torch.randn(B, H, T, D, device="cuda")
    tol = TOL if path == "flex" else dict(atol=2e-2, rtol=2e-2)  # flash-attn computes in bf16
    outs = {}
    for p in (path, "materialised"):
        y = bias_attention(q, k, v, enc, path=p)
        outs[p] = (y.float(), *(g.float() for g in torch.autograd.grad(y, (q, k, v), grad.to(y.dtype))))
    for a, b in zip(outs[path], outs["materialised"], strict=True):
        torch.testing.assert_close(a, b, **tol)
