"""The decoder-only transformer, its Mixture-of-Experts layer and output loss, the measured
choice between equivalent kernels (``dispatch``), and the interop with transformers
(conversion, tiny reference models, loading local weights).
"""

from __future__ import annotations

from lib.models.dispatch import (
    CACHE_ENV,
    cached_choice,
    clear_dispatch_choices,
    dispatch_choices,
    fastest,
    measured_choice_allowed,
    time_candidates,
)
from lib.models.hf import (
    HF_ARCHS,
    best_hf_attention,
    copy_to_hf,
    hf_config,
    load_hf_model,
    output_cache,
    tiny_llama,
    to_hf,
)
from lib.models.losses import (
    CHUNK_ELEMENTS,
    IGNORE_INDEX,
    chunk_rows,
    linear_cross_entropy,
)
from lib.models.moe import (
    DISPATCH,
    MIXTRAL_EXPERTS_IMPLS,
    PAD_SLACK,
    MoEFeedForward,
    grouped_mm_available,
    moe_layers,
    routing_summary,
    to_hf_mixtral_block,
)
from lib.models.transformer import (
    ATTN_IMPLS,
    CHUNKED_LOSS_MIN_LOGITS,
    LOSS_IMPLS,
    MLPS,
    PROJECTION_IMPLS,
    SPLIT_PROJECTION_MIN_TOKENS,
    Attention,
    Block,
    ModelConfig,
    ModelOutput,
    RMSNorm,
    SwiGLU,
    Transformer,
    load_flash_attn,
    split_projection,
)

__all__ = [
    "ATTN_IMPLS",
    "LOSS_IMPLS",
    "CHUNKED_LOSS_MIN_LOGITS",
    "ModelConfig",
    "ModelOutput",
    "SPLIT_PROJECTION_MIN_TOKENS",
    "PROJECTION_IMPLS",
    "split_projection",
    "RMSNorm",
    "SwiGLU",
    "MLPS",
    "load_flash_attn",
    "Attention",
    "Block",
    "Transformer",
    "DISPATCH",
    "PAD_SLACK",
    "MIXTRAL_EXPERTS_IMPLS",
    "grouped_mm_available",
    "MoEFeedForward",
    "moe_layers",
    "routing_summary",
    "to_hf_mixtral_block",
    "CACHE_ENV",
    "fastest",
    "time_candidates",
    "cached_choice",
    "dispatch_choices",
    "clear_dispatch_choices",
    "measured_choice_allowed",
    "IGNORE_INDEX",
    "CHUNK_ELEMENTS",
    "chunk_rows",
    "linear_cross_entropy",
    "HF_ARCHS",
    "hf_config",
    "to_hf",
    "copy_to_hf",
    "best_hf_attention",
    "load_hf_model",
    "tiny_llama",
    "output_cache",
]
