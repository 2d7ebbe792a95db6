"""Positional encodings: one registry of named variants plugged into ``lib.models``, their
diagnostics, and the adapter that puts one into a transformers model.

What lives where:

- ``base``: ``ENCODINGS`` (the registry), ``PositionalEncoding`` (the hooks every encoding
  overrides), the rotary math, ``RotaryEncoding`` and ``build_encoding``
- ``rope``: RoPE and its context extensions (partial, linear, NTK, dynamic NTK, YaRN, Llama 3,
  LongRoPE, proportional)
- ``absolute``: ``none`` (NoPE), ``sinusoidal`` and ``alibi``
- ``spiral``: the pi-spiral family (additive, rotary, hybrid)
- ``attractor``: the attractor state, wrapping another encoding
- ``diagnostics``: collisions, spectra, relative-position decay, attention maps, cost
- ``flex``: ``bias_attention``, causal attention with a position-function bias (ALiBi folded
  into SDPA, FlexAttention, flash-attn), never materialised as [H, T, T]
- ``hf``: ``apply_to_hf``, an encoding inside a transformers Llama / Qwen2

An encoding is added by one class in the module of its family, decorated with
``@ENCODINGS.register("name", set_name=True)``; importing this package imports every variant
module, so every name is registered whichever module is imported first.
"""

from __future__ import annotations

from lib.encodings.absolute import ALiBi, NoPE, Sinusoidal, alibi_slopes
from lib.encodings.attractor import (
    ALPHA_MODES,
    INJECT_MODES,
    AttractorEncoding,
    AttractorMemory,
    resolve_layers,
)
from lib.encodings.base import (
    ENCODINGS,
    PositionalEncoding,
    RotaryEncoding,
    apply_rotary,
    build_encoding,
    deinterleave_pairs,
    interleave_pairs,
    register,
    rotate_half,
    rotate_interleaved,
    signed_sine,
    split_heads,
)
from lib.encodings.diagnostics import (
    ORIGINAL_OFFSETS,
    attention_cost,
    attention_entropy_by_distance,
    attention_forward,
    collision_report,
    convergent_denominators,
    kv_cache_nbytes,
    qk_similarity_vs_distance,
    record_offsets,
    rope_decay_bound,
    similarity_at_offsets,
    spectral_summary,
    wavelengths,
)
from lib.encodings.flex import (
    BIAS_PATHS,
    FLEX_MIN_TOKENS_CPU,
    FOLDED_MAX_LOGIT_ERROR,
    FlexBiasAttention,
    bias_attention,
    causal_block_mask,
    choose_bias_path,
    dense_bias,
    flex_available,
    folded_alibi,
    folded_logit_error,
    has_score_bias,
    load_flash_attn,
)
from lib.encodings.hf import (
    ALIBI_ATTENTION,
    EncodingRotaryEmbedding,
    HFEncodingHandle,
    alibi_attention_forward,
    apply_to_hf,
)
from lib.encodings.rope import (
    DynamicNTKRoPE,
    LinearScaledRoPE,
    Llama3RoPE,
    LongRoPE,
    NTKScaledRoPE,
    PartialRoPE,
    ProportionalRoPE,
    RoPE,
    YaRN,
)
from lib.encodings.spiral import (
    CONSTANTS,
    SPIRAL_CONSTANTS,
    PiSpiral,
    PiSpiralHybrid,
    PiSpiralRotary,
    first_primes,
    spiral_phase,
)

__all__ = [
    # base
    "ENCODINGS",
    "register",
    "build_encoding",
    "PositionalEncoding",
    "RotaryEncoding",
    "split_heads",
    "rotate_half",
    "signed_sine",
    "interleave_pairs",
    "deinterleave_pairs",
    "rotate_interleaved",
    "apply_rotary",
    # rope
    "RoPE",
    "PartialRoPE",
    "LinearScaledRoPE",
    "NTKScaledRoPE",
    "DynamicNTKRoPE",
    "YaRN",
    "Llama3RoPE",
    "LongRoPE",
    "ProportionalRoPE",
    # absolute
    "NoPE",
    "Sinusoidal",
    "alibi_slopes",
    "ALiBi",
    # spiral
    "CONSTANTS",
    "SPIRAL_CONSTANTS",
    "spiral_phase",
    "PiSpiral",
    "first_primes",
    "PiSpiralRotary",
    "PiSpiralHybrid",
    # attractor
    "ALPHA_MODES",
    "INJECT_MODES",
    "resolve_layers",
    "AttractorMemory",
    "AttractorEncoding",
    # diagnostics
    "ORIGINAL_OFFSETS",
    "similarity_at_offsets",
    "record_offsets",
    "collision_report",
    "convergent_denominators",
    "wavelengths",
    "spectral_summary",
    "rope_decay_bound",
    "qk_similarity_vs_distance",
    "attention_entropy_by_distance",
    "attention_forward",
    "attention_cost",
    "kv_cache_nbytes",
    # flex
    "BIAS_PATHS",
    "FLEX_MIN_TOKENS_CPU",
    "FOLDED_MAX_LOGIT_ERROR",
    "FlexBiasAttention",
    "bias_attention",
    "causal_block_mask",
    "choose_bias_path",
    "dense_bias",
    "flex_available",
    "folded_alibi",
    "folded_logit_error",
    "has_score_bias",
    "load_flash_attn",
    # hf
    "ALIBI_ATTENTION",
    "EncodingRotaryEmbedding",
    "alibi_attention_forward",
    "HFEncodingHandle",
    "apply_to_hf",
]
