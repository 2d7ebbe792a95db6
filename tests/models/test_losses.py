"""lib.models.losses.linear_cross_entropy against torch's F.cross_entropy on materialised logits."""

import pytest
import torch
import torch.nn.functional as F

from lib.models import (
    CHUNKED_LOSS_MIN_LOGITS,
    ModelConfig,
    Transformer,
    chunk_rows,
    linear_cross_entropy,
)


def _reference(h, w, t):
    h = h.detach().requires_grad_(True)
    w = w.detach().requires_grad_(True)
    loss = F.cross_entropy(h @ w.t(), t)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def _chunked(h, w, t, rows, scale=1.0):
    h = h.detach().requires_grad_(True)
    w = w.detach().requires_grad_(True)
    loss = linear_cross_entropy(h, w, t, rows=rows)
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("rows", [1, 7, 16, 64, 1000])
def test_matches_cross_entropy_value_and_gradients(rows):
    torch.manual_seed(0)
    h, w = torch.randn(50, 12, dtype=torch.float64), torch.randn(37, 12, dtype=torch.float64)
    t = torch.randint(0, 37, (50,))
    t[[3, 10, 11]] = -100  # ignored, as F.cross_entropy's default ignore_index
    ref = _reference(h, w, t)
    got = _chunked(h, w, t, rows)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_upstream_gradient_scales_and_fp32_default_chunks():
    torch.manual_seed(1)
    h, w, t = torch.randn(1000, 16), torch.randn(5000, 16) * 0.1, torch.randint(0, 5000, (1000,))
    assert chunk_rows(5000) < 1000  # several chunks at the default size
    loss, gh, gw = _chunked(h, w, t, rows=None, scale=3.0)
    ref_loss, ref_gh, ref_gw = _reference(h, w, t)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, 3 * ref_gh, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(gw, 3 * ref_gw, rtol=1e-4, atol=1e-7)


def test_bf16_autocast_runs_gemms_in_bf16_and_stays_close():
    torch.manual_seed(2)
    h, w, t = torch.randn(64, 32), torch.randn(100, 32) * 0.2, torch.randint(0, 100, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, gh, gw = _chunked(h, w, t, rows=16)
    ref_loss, ref_gh, ref_gw = _reference(h, w, t)
    assert loss.dtype == torch.float32 and gh.dtype == h.dtype and gw.dtype == w.dtype
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gh, ref_gh, rtol=5e-2, atol=5e-3)
    assert not torch.equal(gh, ref_gh)  # bf16 really was used


def test_without_gradients_it_is_plain_cross_entropy():
    h, w, t = torch.randn(10, 4), torch.randn(9, 4), torch.randint(0, 9, (10,))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t), F.cross_entropy(h @ w.t(), t))


def test_bad_input_is_a_value_error():
    h, w = torch.randn(10, 4, requires_grad=True), torch.randn(9, 4)
    with pytest.raises(ValueError, match="share d"):
        linear_cross_entropy(h, torch.randn(9, 5), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="one id per row"):
        linear_cross_entropy(h, w, torch.zeros(11, dtype=torch.long))
    with pytest.raises(ValueError, match="rows"):
        linear_cross_entropy(h, w, torch.zeros(10, dtype=torch.long), rows=0)
    with pytest.raises(ValueError, match="rows must be an integer"):
        linear_cross_entropy(h, w, torch.zeros(10, dtype=torch.long), rows=4.0)


def _model_grads(impl, idx, vocab):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, max_seq_len=16,
                                    loss_impl=impl))
    out = model(idx, idx)
    out.loss.backward()
    return out, {n: p.grad for n, p in model.named_parameters()}


def test_model_chunked_loss_equals_full_loss():
    idx = torch.randint(0, 300, (3, 16))
    full, g_full = _model_grads("full", idx, 300)
    chunked, g_chunked = _model_grads("chunked", idx, 300)
    assert full.logits is not None and chunked.logits is None
    torch.testing.assert_close(chunked.loss, full.loss, rtol=1e-6, atol=1e-6)
    for name in g_full:
        torch.testing.assert_close(g_chunked[name], g_full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_model_auto_chunks_only_large_training_losses():
    small = torch.randint(0, 300, (2, 16))
    out, _ = _model_grads("auto", small, 300)
    assert out.logits is not None  # 2 * 16 * 300 logits: below the threshold
    vocab = CHUNKED_LOSS_MIN_LOGITS // 32 + 1
    model = Transformer(ModelConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, max_seq_len=16))
    idx = torch.randint(0, vocab, (2, 16))
    assert model(idx, idx).logits is None
    with torch.no_grad():
        assert model(idx, idx).logits is not None  # evaluation keeps the logits
    with pytest.raises(ValueError, match="loss_impl"):
        ModelConfig(loss_impl="fused")
    with pytest.raises(ValueError, match="targets"):
        model(idx, idx[:, :-1])


@pytest.mark.slow
@pytest.mark.skipif(not __import__("shutil").which(__import__("os").environ.get("CXX", "g++")),
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_chunked_loss_equals_eager_full_loss():
    """Under torch.compile the chunked loss ("auto" picks it there too) gives the eager full
    loss's value and gradients, ignored targets included, without breaking the graph."""
    import torch._dynamo

    idx = torch.randint(0, 300, (3, 16))
    targets = idx.clone()
    targets[0, :5] = -100
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=300, d_model=32, n_layers=1, n_heads=2, max_seq_len=16,
                                    loss_impl="chunked"))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break is an error
    out = compiled(idx, targets)
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.config.loss_impl = "full"
    ref = model(idx, targets)
    ref.loss.backward()
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)
