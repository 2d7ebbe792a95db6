"""Causal attention with a positional score bias that is never materialised as [H, T, T].

An encoding whose additive attention bias is a function of (head, query position, key position)
overrides ``PositionalEncoding.score_bias(head, q_idx, kv_idx)`` (ALiBi does). ``bias_attention``
then runs causal attention with that bias by one of these paths:

- ``"flash"``: flash-attn's ``flash_attn_func(..., alibi_slopes=...)`` on CUDA, for ALiBi, when
  flash-attn is installed and the caller asks for it (``ModelConfig.attn_impl="flash"``).
- ``"folded"``: ALiBi as one more head dimension of plain causal SDPA (``folded_alibi``), so
  the fused kernel runs with O(T) extra memory and no compile. Softmax ignores a constant per
  query row, so ``slope_h * (j - i)`` may be replaced by ``slope_h * (j - c)``, which is a dot
  product: ``[q, slope_h sqrt(D)] . [k, j - c] / sqrt(D)``. Exact in exact arithmetic; in
  floating point the extra term is of size ``slope * T / 2``, so the logits carry a rounding
  error of about ``eps(dtype) * max_slope * T / 2`` (``folded_logit_error``). "auto" takes it
  where that is at most ``FOLDED_MAX_LOGIT_ERROR``: float32 at the lengths this workbench runs,
  never bfloat16 or float16.
- ``"flex"``: ``torch.nn.attention.flex_attention`` compiled by ``torch.compile``, with a
  ``score_mod`` adding ``score_bias`` and the causal mask as a ``BlockMask`` (cached per length
  and device; fully masked blocks are skipped). On CUDA flex's own backward runs. On CPU torch
  2.13 has no flex backward, so a training forward uses ``FlexBiasAttention``: flex forward
  and a backward that recomputes the probabilities one block of
  queries at a time, so memory is O(block x T), not O(T^2).
- ``"materialised"``: the [H, T, T] bias plus the causal mask through SDPA (the fallback where
  flex is unavailable, under dropout, and on CPU below ``FLEX_MIN_TOKENS_CPU`` tokens, where
  compiling (about 10 s per new length on a 2-core CPU) costs more than the bias saves).

All paths compute the same function (tested: outputs and gradients against the materialised
path, and the folded path's error against a float64 reference and its bound).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lib.core import check_choice, check_fraction
from lib.encodings.absolute import ALiBi
from lib.encodings.base import PositionalEncoding

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # torch without FlexAttention: the materialised path serves everything
    create_block_mask = flex_attention = None

BIAS_PATHS = ("auto", "folded", "flex", "flash", "materialised")
# The folded path's logit rounding error that "auto" accepts: half TF32's unit roundoff
# (2**-11), so folded float32 attention is at least as precise as the TF32 matmuls CUDA training
# runs by default. float32 with 4 heads (max slope 1/4) stays under it to 16k tokens.
FOLDED_MAX_LOGIT_ERROR = 2.5e-4
# On CPU, "auto" takes flex from this many tokens. Below it the materialised bias is cheap
# (2 MiB per head at 1,024 tokens) and a compile per new length would dominate notebook runs
# whose lengths are 32-512 tokens; measured in benchmarks/bench_encodings.py.
FLEX_MIN_TOKENS_CPU = 2048
# Query rows per block in the CPU backward of ``FlexBiasAttention``.
BACKWARD_BLOCK = 256


def has_score_bias(encoding: PositionalEncoding) -> bool:
    """Whether ``encoding`` defines its attention bias as a function of positions."""
    return type(encoding).score_bias is not PositionalEncoding.score_bias


def flex_available(device: torch.device | str = "cpu") -> bool:
    """Whether compiled FlexAttention can run on ``device`` in this torch build."""
    device = torch.device(device)
    if flex_attention is None or device.type not in ("cpu", "cuda"):
        return False
    return device.type == "cpu" or torch.cuda.is_available()


def load_flash_attn():
    """flash-attn's ``flash_attn_func`` where the package is installed, else None."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


@functools.cache
def _compiled_flex():
    # One compiled function for the process; torch.compile caches a graph per input shape.
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=32)
def causal_block_mask(t_q: int, t_k: int, device: str):
    """The causal ``BlockMask`` (query i sees keys j <= i + t_k - t_q), cached per lengths and
    device."""
    offset = t_k - t_q

    def causal(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return create_block_mask(causal, None, None, t_q, t_k, device=device)


def _score_mod(encoding: PositionalEncoding, offset: int):
    def score_mod(score, b, h, q_idx, kv_idx):
        return score + encoding.score_bias(h, q_idx + offset, kv_idx).to(score.dtype)

    return score_mod


def dense_bias(encoding: PositionalEncoding, t_q: int, t_k: int, device, dtype) -> Tensor:
    """``score_bias`` on the full grid with the causal mask added: [H, t_q, t_k] (the
    materialised path; queries are the last ``t_q`` of the ``t_k`` positions)."""
    heads = torch.arange(encoding.n_heads, device=device)[:, None, None]
    q_idx = torch.arange(t_k - t_q, t_k, device=device)[None, :, None]
    kv_idx = torch.arange(t_k, device=device)[None, None, :]
    bias = encoding.score_bias(heads, q_idx, kv_idx).to(dtype)
    return bias.masked_fill(kv_idx > q_idx, float("-inf"))


def folded_logit_error(encoding: ALiBi, t: int, dtype: torch.dtype) -> float:
    """The rounding error the folded path adds to the logits at ``t`` tokens in ``dtype``: the
    unit roundoff times the largest folded term, ``max_slope * t / 2`` (keys centred)."""
    return torch.finfo(dtype).eps * float(encoding.slopes.max()) * t / 2


def folded_alibi(q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, *, dropout_p: float = 0.0) -> Tensor:
    """Causal ALiBi attention of q [B, H, T, D] over k, v [B, Hkv, T, D] as plain causal SDPA
    with one more head dimension: ``slope_h * sqrt(D)`` appended to every query of head h and
    ``j - (T - 1) / 2`` to every key at position j (shared by a GQA group, since the slope sits in
    the query), ``v`` padded with a zero, scale ``1 / sqrt(D)``. The dot product then adds
    ``slope_h * (j - c)``, which differs from ALiBi's ``slope_h * (j - i)`` by a constant per query
    row, which softmax removes. On CUDA the head dimension is padded to a multiple of 8, as the
    fused kernels want."""
    b, h, t, d = q.shape
    extra = 8 - d % 8 if q.is_cuda else 1
    col = torch.zeros(extra, device=q.device, dtype=q.dtype)
    q_col = col.expand(b, h, t, extra).clone()
    q_col[..., 0] = (slopes.to(q.device, q.dtype) * math.sqrt(d))[None, :, None]
    k_col = col.expand(*k.shape[:-1], extra).clone()
    k_col[..., 0] = torch.arange(t, device=q.device, dtype=q.dtype) - (t - 1) / 2
    y = F.scaled_dot_product_attention(torch.cat([q, q_col], -1), torch.cat([k, k_col], -1),
                                       torch.cat([v, col.expand(*v.shape[:-1], extra)], -1),
                                       dropout_p=dropout_p, is_causal=True, scale=1.0 / math.sqrt(d),
                                       enable_gqa=k.shape[1] != h)
    return y[..., :d]


def choose_bias_path(encoding: PositionalEncoding, t: int, device, *, dropout_p: float = 0.0,
                     flash: bool = False, dtype: torch.dtype = torch.float32, t_k: int | None = None) -> str:
    """The path ``bias_attention(..., path="auto")`` takes for ``t`` queries over ``t_k`` keys
    (default ``t``) in ``dtype`` (see the module docstring)."""
    device = torch.device(device)
    if not has_score_bias(encoding):
        return "materialised"
    if flash and device.type == "cuda" and isinstance(encoding, ALiBi) and load_flash_attn() is not None:
        return "flash"
    if (isinstance(encoding, ALiBi) and (t_k is None or t_k == t) and dtype.is_floating_point
            and folded_logit_error(encoding, t, dtype) <= FOLDED_MAX_LOGIT_ERROR):
        return "folded"
    if dropout_p > 0 or not flex_available(device):
        return "materialised"
    if device.type == "cpu" and t < FLEX_MIN_TOKENS_CPU:
        return "materialised"
    return "flex"


def bias_attention(q: Tensor, k: Tensor, v: Tensor, encoding: PositionalEncoding, *,
                   dropout_p: float = 0.0, path: str = "auto", flash: bool = False) -> Tensor:
    """Causal attention of q [B, H, T, D] over k, v [B, Hkv, T, D] (Hkv divides H) with
    ``encoding.score_bias`` added to the scaled logits: the same function on every path.
    ``flash`` lets "auto" take flash-attn's ALiBi on CUDA."""
    check_choice("path", path, BIAS_PATHS)
    dropout_p = check_fraction("dropout_p", dropout_p, strict_max=True)
    if not has_score_bias(encoding):
        raise ValueError(f"encoding {encoding.name!r} defines no score_bias")
    t = q.shape[-2]
    if path == "auto":
        path = choose_bias_path(encoding, t, q.device, dropout_p=dropout_p, flash=flash, dtype=q.dtype,
                                t_k=k.shape[-2])
    gqa = k.shape[1] != q.shape[1]
    if path == "folded":
        if not isinstance(encoding, ALiBi) or k.shape[-2] != t:
            raise ValueError("path='folded' needs an ALiBi encoding and as many queries as keys")
        return folded_alibi(q, k, v, encoding.slopes, dropout_p=dropout_p)
    if path == "flash":
        fa = load_flash_attn()
        if fa is None or not q.is_cuda or not isinstance(encoding, ALiBi):
            raise ValueError("path='flash' needs flash-attn, CUDA tensors and an ALiBi encoding")
        dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        y = fa(*(z.transpose(1, 2).to(dtype) for z in (q, k, v)), dropout_p=dropout_p, causal=True,
               alibi_slopes=encoding.slopes.to(q.device, torch.float32))
        return y.to(q.dtype).transpose(1, 2)
    if path == "materialised":
        bias = dense_bias(encoding, t, k.shape[-2], q.device, q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, enable_gqa=gqa)
    if dropout_p > 0:
        raise ValueError("path='flex' has no dropout; use 'auto' or 'materialised'")
    if not flex_available(q.device):
        raise ValueError(f"path='flex' needs torch's FlexAttention on {q.device.type}")
    needs_grad = torch.is_grad_enabled() and any(z.requires_grad for z in (q, k, v))
    if needs_grad and q.device.type == "cpu":
        if gqa:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return FlexBiasAttention.apply(q, k, v, encoding)
    block_mask = causal_block_mask(t, k.shape[-2], str(q.device))
    if q.device.type == "cpu":  # flex on CPU refuses inputs that require grad, even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    return _compiled_flex()(q, k, v, score_mod=_score_mod(encoding, k.shape[-2] - t),
                            block_mask=block_mask, enable_gqa=gqa)


class FlexBiasAttention(torch.autograd.Function):
    """Compiled flex forward with a blockwise recomputing backward (CPU training, where torch
    2.13's flex has no backward). q, k, v [B, H, T, D] with equal head counts. The backward
    recomputes the probabilities of ``BACKWARD_BLOCK`` queries at a time, against the keys the
    causal mask leaves them, so it holds O(block x T) scores, never [T, T]."""

    @staticmethod
    def forward(ctx, q, k, v, encoding):
        t_q, t_k = q.shape[-2], k.shape[-2]
        block_mask = causal_block_mask(t_q, t_k, str(q.device))
        # CPU flex returns no log-sum-exp (torch 2.13): the backward recomputes each block's
        # softmax from its full row of scores instead.
        out = _compiled_flex()(q.detach(), k.detach(), v.detach(), score_mod=_score_mod(encoding, t_k - t_q),
                               block_mask=block_mask)
        ctx.save_for_backward(q, k, v, out)
        ctx.encoding = encoding
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out = ctx.saved_tensors
        encoding = ctx.encoding
        t_q, t_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
        offset, scale = t_k - t_q, 1.0 / math.sqrt(d)
        grad_out = grad_out.to(q.dtype)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        delta = (grad_out * out).sum(-1)                                   # [B, H, T_q]
        heads = torch.arange(q.shape[1], device=q.device)[:, None, None]
        for start in range(0, t_q, BACKWARD_BLOCK):
            stop = min(start + BACKWARD_BLOCK, t_q)
            keys = stop + offset                                          # later keys are masked
            q_idx = torch.arange(start + offset, stop + offset, device=q.device)[None, :, None]
            kv_idx = torch.arange(keys, device=q.device)[None, None, :]
            bias = encoding.score_bias(heads, q_idx, kv_idx).to(q.dtype).masked_fill(kv_idx > q_idx, float("-inf"))
            qb, kb, vb, gb = q[..., start:stop, :], k[..., :keys, :], v[..., :keys, :], grad_out[..., start:stop, :]
            scores = torch.matmul(qb, kb.transpose(-2, -1)) * scale + bias
            probs = torch.softmax(scores, dim=-1)
            dv[..., :keys, :] += torch.matmul(probs.transpose(-2, -1), gb)
            dscores = probs * (torch.matmul(gb, vb.transpose(-2, -1)) - delta[..., start:stop, None])
            dq[..., start:stop, :] = torch.matmul(dscores, kb) * scale
            dk[..., :keys, :] += torch.matmul(dscores.transpose(-2, -1), qb) * scale
        return dq, dk, dv, None
