"""lib.encodings.flex: attention with a position-function bias (ALiBi) folded into SDPA and
through FlexAttention, against the materialised [H, T, T] bias through torch's SDPA, outputs and
gradients, and the folded path against a float64 reference and its error bound.

Tolerance: float32, atol = rtol = 2e-5 (the paths sum the softmax in different orders; measured
differences are ~2e-6 at this length). One shape (B1 H4 T300 D16: not a multiple of flex's
128-row blocks, and more than one backward block) so the CPU compile (10-25 s) happens once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lib.encodings import (
    FLEX_MIN_TOKENS_CPU,
    FOLDED_MAX_LOGIT_ERROR,
    bias_attention,
    build_encoding,
    choose_bias_path,
    dense_bias,
    flex_available,
    folded_logit_error,
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


@pytest.mark.parametrize("path", [pytest.param("flex", marks=needs_flex), "folded"])
@pytest.mark.parametrize("n_kv", [H, 2])
def test_kernel_paths_outputs_and_gradients_equal_the_materialised_bias(path, n_kv):
    enc = alibi()
    q, k, v = inputs(n_kv)
    grad = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1))
    outs = {}
    for p in (path, "materialised"):
        y = bias_attention(q, k, v, enc, path=p)
        outs[p] = (y, *torch.autograd.grad(y, (q, k, v), grad))
    ref = reference(q, k, v, enc)
    torch.testing.assert_close(outs["materialised"][0], ref, **TOL)
    for a, b in zip(outs[path], outs["materialised"], strict=True):
        torch.testing.assert_close(a, b, **TOL)
    if n_kv == H:  # the no-grad forward (for flex: no custom backward) is the same function
        with torch.no_grad():
            torch.testing.assert_close(bias_attention(q, k, v, enc, path=path), ref, **TOL)


@pytest.mark.parametrize("n_heads, n_kv", [(8, 8), (8, 2)])
def test_folded_error_against_float64_stays_within_its_bound(n_heads, n_kv):
    """At 2,048 tokens with 8 heads (max slope 1/2) the folded term reaches 512, so float32
    rounding is visible (measured 0.4-0.7 of the bound); a wrong scale, sign or slope would be
    off by O(1)."""
    t, d = 2048, 16
    enc = alibi(n_heads)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, n_heads, t, d, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, n_kv, t, d, generator=gen, dtype=torch.float64) for _ in range(2))
    grad = torch.randn(1, n_heads, t, d, generator=gen, dtype=torch.float64)
    runs = {}
    for dtype in (torch.float32, torch.float64):
        qq, kk, vv = (z.to(dtype).requires_grad_() for z in (q, k, v))
        path = "folded" if dtype == torch.float32 else "materialised"
        y = bias_attention(qq, kk, vv, enc.to(dtype), path=path)
        runs[dtype] = (y, *torch.autograd.grad(y, (qq, kk, vv), grad.to(dtype)))
    bound = folded_logit_error(enc, t, torch.float32)
    assert 1e-5 < bound < FOLDED_MAX_LOGIT_ERROR
    for a, b in zip(runs[torch.float32], runs[torch.float64], strict=True):
        assert (a.double() - b).abs().max().item() <= 1.5 * bound


@needs_flex
def test_model_with_kernel_bias_equals_model_with_materialised_bias(monkeypatch):
    config = ModelConfig(vocab_size=32, d_model=H * D, n_layers=2, n_heads=H, max_seq_len=T, encoding="alibi")
    torch.manual_seed(0)
    model = Transformer(config)
    idx = torch.randint(0, 32, (B, T), generator=torch.Generator().manual_seed(2))
    runs = {}
    # (FOLDED_MAX_LOGIT_ERROR, FLEX_MIN_TOKENS_CPU) that make "auto" take each path at T tokens
    for name, folded_max, flex_min in (("folded", 1.0, 10**9), ("flex", 0.0, 1), ("materialised", 0.0, 10**9)):
        monkeypatch.setattr(flex_module, "FOLDED_MAX_LOGIT_ERROR", folded_max)
        monkeypatch.setattr(flex_module, "FLEX_MIN_TOKENS_CPU", flex_min)
        assert choose_bias_path(model.encoding, T, "cpu") == name
        assert model._kernel_bias(T, "cpu") is (name != "materialised")
        model.zero_grad()
        out = model(idx, idx)
        out.loss.backward()
        runs[name] = (out.logits, *(p.grad.clone() for p in model.parameters()))
    for name in ("folded", "flex"):
        for a, b in zip(runs[name], runs["materialised"], strict=True):
            torch.testing.assert_close(a, b, **TOL)


def test_auto_path_by_length_dtype_dropout_and_encoding(monkeypatch):
    enc = alibi()
    # float32 ALiBi folds wherever its rounding stays under the bound, with or without dropout
    assert choose_bias_path(enc, 256, "cpu") == "folded"
    assert choose_bias_path(enc, FLEX_MIN_TOKENS_CPU, "cpu", dropout_p=0.1) == "folded"
    assert folded_logit_error(enc, 4096, torch.float32) < FOLDED_MAX_LOGIT_ERROR
    too_long = int(2 * FOLDED_MAX_LOGIT_ERROR / (torch.finfo(torch.float32).eps * enc.slopes.max().item())) + 2
    expect_long = "flex" if flex_available("cpu") else "materialised"
    assert choose_bias_path(enc, too_long, "cpu") == expect_long
    assert choose_bias_path(enc, 4096, "cpu", dtype=torch.bfloat16) == expect_long   # bf16 cannot hold it
    assert choose_bias_path(enc, 8, "cpu", t_k=16) == "materialised"                # a KV cache: not causal-square
    monkeypatch.setattr(flex_module, "FOLDED_MAX_LOGIT_ERROR", 0.0)
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
    with pytest.raises(ValueError, match="as many queries as keys"):
        bias_attention(q[..., :5, :], k, v, enc, path="folded")


@pytest.mark.skipif(not (torch.cuda.is_available() and flex_available("cuda")), reason="needs CUDA")
@pytest.mark.parametrize("path", ["folded", "flex", "flash"])
def test_cuda_paths_equal_the_materialised_bias(path):
    if path == "flash" and load_flash_attn() is None:
        pytest.skip("flash-attn not installed")
    enc = alibi().cuda()
    q, k, v = (z.detach().cuda().requires_grad_() for z in inputs())
    grad = torch.randn(B, H, T, D, device="cuda")
    tol = TOL if path != "flash" else dict(atol=2e-2, rtol=2e-2)  # flash-attn computes in bf16
    outs = {}
    for p in (path, "materialised"):
        y = bias_attention(q, k, v, enc, path=p)
        outs[p] = (y.float(), *(g.float() for g in torch.autograd.grad(y, (q, k, v), grad.to(y.dtype))))
    for a, b in zip(outs[path], outs["materialised"], strict=True):
        torch.testing.assert_close(a, b, **tol)
