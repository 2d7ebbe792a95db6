"""Put a ``lib.encodings`` encoding into a transformers Llama / Qwen2 model, reversibly.

Llama-family models compute ``(cos, sin) = model.model.rotary_emb(x, position_ids)`` once
([B, T, head_dim] each) and every attention layer applies ``q*cos + rotate_half(q)*sin``.
``apply_to_hf`` swaps that module:

- rotary encodings (RoPE and its extensions, the pi-spiral rotary and hybrid) return their own
  cos/sin (times their attention scaling, as transformers does);
- ``none`` (NoPE), ``bias`` (ALiBi) and ``additive`` encodings get the identity rotation
  (cos 1, sin 0); ALiBi's bias goes through an attention function registered with
  ``transformers.AttentionInterface`` (plus its mask function) and
  ``model.set_attn_implementation``; additive encodings are added to the token embeddings by a
  forward hook on ``embed_tokens`` (positions 0..T-1 of each call: no KV-cache offset).

The returned handle's ``remove()`` puts back the original module, attention implementation and
hooks, so the model is exactly what it was (same parameters, same logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lib.encodings.base import PositionalEncoding, RotaryEncoding

ALIBI_ATTENTION = "workbench_alibi"


class EncodingRotaryEmbedding(nn.Module):
    """Stand-in for ``model.model.rotary_emb``: ``forward(x, position_ids) -> (cos, sin)``."""

    def __init__(self, encoding: PositionalEncoding, head_dim: int):
        super().__init__()
        self.encoding, self.head_dim = encoding, head_dim

    @torch.no_grad()
    def forward(self, x: Tensor, position_ids: Tensor, layer_type=None) -> tuple[Tensor, Tensor]:
        if isinstance(self.encoding, RotaryEncoding) or hasattr(self.encoding, "cos_sin"):
            cos, sin = self.encoding.cos_sin(position_ids.to(x.device))
        else:
            shape = (*position_ids.shape, self.head_dim)
            cos = torch.ones(shape, device=x.device)
            sin = torch.zeros(shape, device=x.device)
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def alibi_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention plus the ALiBi bias of the encoding stored on ``module.workbench_encoding``."""
    from transformers.models.llama.modeling_llama import repeat_kv

    encoding = module.workbench_encoding
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = module.head_dim**-0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    scores = scores + encoding.attn_bias(query.shape[2], key.shape[2], query.device, scores.dtype)
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[2]]
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _register_alibi() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
        eager_mask,
    )

    AttentionInterface.register(ALIBI_ATTENTION, alibi_attention_forward)
    if ALIBI_ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(ALIBI_ATTENTION, eager_mask)


@dataclass
class HFEncodingHandle:
    """What ``apply_to_hf`` changed; ``remove()`` undoes it (idempotent)."""

    model: nn.Module
    encoding: PositionalEncoding
    original_rotary: nn.Module
    original_attn: str
    hooks: list = field(default_factory=list)
    tagged: list = field(default_factory=list)
    active: bool = True

    def remove(self) -> None:
        if not self.active:
            return
        self.model.model.rotary_emb = self.original_rotary
        for hook in self.hooks:
            hook.remove()
        for module in self.tagged:
            del module.workbench_encoding
        if self.model.config._attn_implementation != self.original_attn:
            self.model.set_attn_implementation(self.original_attn)
        self.active = False


def apply_to_hf(model: nn.Module, encoding: PositionalEncoding) -> HFEncodingHandle:
    """Inject ``encoding`` into a transformers ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``.

    The encoding must be built with the model's ``head_dim`` (and ``n_heads`` for ALiBi);
    encodings with a ``block_hook`` state (attractor) are not supported. Returns a handle
    whose ``remove()`` restores the model exactly.
    """
    if not isinstance(encoding, PositionalEncoding):
        raise ValueError(f"encoding must be a lib.encodings.PositionalEncoding, got {type(encoding).__name__}")
    inner = getattr(model, "model", None)
    if inner is None or not isinstance(getattr(inner, "rotary_emb", None), nn.Module):
        raise ValueError("model must be a Llama/Qwen2-style CausalLM with model.model.rotary_emb")
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if encoding.head_dim != head_dim:
        raise ValueError(f"encoding.head_dim ({encoding.head_dim}) must equal the model's head_dim ({head_dim})")
    if encoding.name == "attractor":
        raise ValueError("the attractor encoding carries block state; apply_to_hf supports rotary, none, bias "
                         "and additive encodings")
    if encoding.kind == "bias" and encoding.n_heads != cfg.num_attention_heads:
        raise ValueError(f"encoding.n_heads ({encoding.n_heads}) must equal the model's heads "
                         f"({cfg.num_attention_heads}) for attention biases")
    handle = HFEncodingHandle(model, encoding, inner.rotary_emb, cfg._attn_implementation)
    ref = next(model.parameters())
    inner.rotary_emb = EncodingRotaryEmbedding(encoding, head_dim).to(ref.device)
    if encoding.kind == "bias":
        _register_alibi()
        for layer in inner.layers:
            layer.self_attn.workbench_encoding = encoding
            handle.tagged.append(layer.self_attn)
        model.set_attn_implementation(ALIBI_ATTENTION)
    elif encoding.kind == "additive":
        if encoding.d_model != cfg.hidden_size:
            raise ValueError(f"encoding.d_model ({encoding.d_model}) must equal hidden_size ({cfg.hidden_size})")

        def add_encoding(module, args, output):
            positions = torch.arange(output.shape[1], device=output.device)
            return encoding.embed(output, positions)

        handle.hooks.append(inner.embed_tokens.register_forward_hook(add_encoding))
    return handle
