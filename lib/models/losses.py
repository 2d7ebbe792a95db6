"""Output-layer cross-entropy without the [tokens, vocab] logits tensor.

``linear_cross_entropy(h, weight, targets)`` equals
``F.cross_entropy(h @ weight.T, targets)`` (mean over non-ignored targets, ``ignore_index``
-100), value and gradients, but works through the rows of ``h`` in chunks: each chunk's
logits are computed, turned into their gradient ``softmax - onehot`` in place, and used at
once for the chunk's share of ``grad_h`` and ``grad_weight``, so only one chunk of logits
ever exists. This is the idea of Liger-Kernel's fused linear cross-entropy and Apple's
Cut Cross-Entropy (Wijmans et al. 2024), in plain torch ops.

It saves the memory of the logits (and their gradient) twice over, which dominates a
training step's activations when the vocabulary is large, and on CPU it also saves time: a
chunk's logits stay in cache for the softmax passes instead of streaming a large tensor
through memory several times (measured: ``benchmarks/bench_models.py``).

The gradients are computed during the forward, so a call costs the forward and backward
GEMMs of the output layer whether or not ``backward`` follows: use it for training steps;
evaluation, which needs the logits anyway (accuracy, sampling), uses the plain path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lib.core import check_int

IGNORE_INDEX = -100
# Rows per chunk: about this many logits (fp32: 8 MiB) per chunk, at least 16 rows (measured
# fastest of 128-1024 rows at vocab 4096 on a 2-core CPU in a training step of bench_models).
CHUNK_ELEMENTS = 1 << 21


def chunk_rows(vocab_size: int) -> int:
    """Rows per chunk for a vocabulary of ``vocab_size``: ~``CHUNK_ELEMENTS`` logits."""
    return max(16, CHUNK_ELEMENTS // check_int("vocab_size", vocab_size, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, rows: int) -> Tensor:
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum().clamp(min=1)
        # Under torch.compile always mask: a data-dependent branch would break the graph.
        masked = torch.compiler.is_compiling() or not bool(valid.all())
        safe = targets.masked_fill(~valid, 0)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        acc = torch.promote_types(torch.promote_types(h.dtype, weight.dtype), torch.float32)
        grad_w = torch.zeros_like(weight, dtype=acc) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=acc, device=h.device)
        for start in range(0, h.shape[0], rows):
            hc, tc, vc = h[start:start + rows], safe[start:start + rows], valid[start:start + rows]
            logits = (hc @ weight.t()).to(acc)                    # autocast-aware GEMM, >= fp32 maths
            lse = torch.logsumexp(logits, dim=-1)
            target_logit = logits.gather(1, tc.unsqueeze(1)).squeeze(1)
            total += torch.where(vc, lse - target_logit, 0.0).sum()
            if grad_h is None and grad_w is None:
                continue
            # d loss_sum / d logits = softmax - onehot (zero rows for ignored targets), in place.
            p = logits.sub_(lse.unsqueeze(1)).exp_()
            p.scatter_add_(1, tc.unsqueeze(1), torch.full_like(target_logit, -1.0).unsqueeze(1))
            if masked:
                p.mul_(vc.unsqueeze(1))
            if p.dtype == hc.dtype == weight.dtype and not torch.is_autocast_enabled(h.device.type):
                # Same dtype throughout (fp32 on CPU): write and accumulate in place, no temporaries.
                if grad_h is not None:
                    torch.mm(p, weight, out=grad_h[start:start + rows])
                if grad_w is not None:
                    grad_w.addmm_(p.t(), hc)
                continue
            if grad_h is not None:
                grad_h[start:start + rows] = p.to(hc.dtype) @ weight.to(hc.dtype)
            if grad_w is not None:
                grad_w += p.t().to(hc.dtype) @ hc
        ctx.save_for_backward(grad_h, grad_w, n_valid)
        ctx.weight_dtype = weight.dtype
        return total / n_valid.to(acc)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad_h, grad_w, n_valid = ctx.saved_tensors
        scale = grad / n_valid.to(grad.dtype)
        gh = grad_h * scale.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, rows: int | None = None) -> Tensor:
    """Mean cross-entropy of ``h @ weight.T`` against ``targets`` without materialising the
    logits (see the module docstring).

    Args:
        h: hidden states [N, d] (any leading shape is flattened).
        weight: output-layer weight [V, d] (no bias).
        targets: class ids, ``N`` of them; ``-100`` entries are ignored (as ``F.cross_entropy``).
        rows: rows per chunk (default ``chunk_rows(V)``).
    """
    if h.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"h [..., d] and weight [V, d] must share d, got {tuple(h.shape)} and {tuple(weight.shape)}")
    h = h.reshape(-1, h.shape[-1])
    targets = targets.reshape(-1)
    if targets.shape[0] != h.shape[0]:
        raise ValueError(f"targets must have one id per row of h ({h.shape[0]}), got {targets.shape[0]}")
    rows = chunk_rows(weight.shape[0]) if rows is None else check_int("rows", rows, 1)
    if not (h.requires_grad or weight.requires_grad) or not torch.is_grad_enabled():
        return F.cross_entropy((h @ weight.t()).float(), targets, ignore_index=IGNORE_INDEX)
    return _LinearCrossEntropy.apply(h, weight, targets, rows)
