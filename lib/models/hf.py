"""Interop with transformers: the same shapes as ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``,
exact weight copies, tiny random reference models, and loading real checkpoints from local files.

``to_hf(config)`` builds the transformers model of a ``ModelConfig``'s shape and ``copy_to_hf``
copies our weights across so logits match; ``tiny_llama`` is the small random-init reference the
encoding tests and diagnostics compare against; ``load_hf_model`` loads a local checkpoint with
the best device, dtype and attention kernel, and never downloads unless asked to.
"""

from __future__ import annotations

import os

import torch

from lib.core import check_bool, check_choice, check_int, check_positive, check_seed, pick_device
from lib.encodings import deinterleave_pairs
from lib.models.transformer import ModelConfig, Transformer, load_flash_attn

HF_ARCHS = ("llama", "qwen2")


def hf_config(config: ModelConfig, arch: str = "llama", use_cache: bool = False):
    """The transformers config of the same shape (``arch`` "llama" or "qwen2"); RoPE only."""
    from transformers import LlamaConfig, Qwen2Config

    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    check_choice("arch", arch, HF_ARCHS)
    use_cache = check_bool("use_cache", use_cache)
    if config.encoding != "rope" or config.mlp != "swiglu":
        raise ValueError("to_hf supports encoding='rope' with mlp='swiglu' (use lib.encodings.apply_to_hf "
                         f"for other encodings); got encoding={config.encoding!r}, mlp={config.mlp!r}")
    common = dict(vocab_size=config.vocab_size, hidden_size=config.d_model,
                  intermediate_size=config.d_ff, num_hidden_layers=config.n_layers,
                  num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads,
                  max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps,
                  initializer_range=config.init_std, tie_word_embeddings=config.tie_embeddings,
                  rope_parameters={"rope_type": "default",
                                   "rope_theta": float(config.encoding_kwargs.get("base", 10000.0))},
                  attention_dropout=config.dropout, use_cache=use_cache)
    if arch == "llama":
        return LlamaConfig(**common, attention_bias=False, mlp_bias=False, head_dim=config.head_dim)
    return Qwen2Config(**common)


def to_hf(config: ModelConfig, arch: str = "llama", attn_implementation: str = "sdpa",
          use_cache: bool = False):
    """A randomly initialised transformers causal LM of the same shape (no downloads)."""
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    hf_cfg = hf_config(config, arch, use_cache=use_cache)
    hf = (LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM)(hf_cfg)
    hf.set_attn_implementation(attn_implementation)
    return hf


@torch.no_grad()
def copy_to_hf(model: Transformer, hf_model) -> None:
    """Copy ``model``'s weights into a transformers Llama/Qwen2 model of the same shape.

    Qwen2's q/k/v biases are zeroed (ours has none), so logits match exactly.
    """
    c = model.config
    hf_model.model.embed_tokens.weight.copy_(model.embed.weight)
    if not c.tie_embeddings:
        hf_model.lm_head.weight.copy_(model.head.weight)
    hf_model.model.norm.weight.copy_(model.norm.weight)
    q_size, kv_size = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    for block, layer in zip(model.blocks, hf_model.model.layers, strict=True):
        # Our q/k rows hold interleaved rotary pairs; transformers' are half-split.
        q, k = block.attn.qk_rows(deinterleave_pairs).split((q_size, kv_size), dim=0)
        v = block.attn.qkv.weight[q_size + kv_size:]
        attn = layer.self_attn
        attn.q_proj.weight.copy_(q)
        attn.k_proj.weight.copy_(k)
        attn.v_proj.weight.copy_(v)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            if proj.bias is not None:
                proj.bias.zero_()
        attn.o_proj.weight.copy_(block.attn.out.weight)
        gate, up = block.mlp.gate_up.weight.split(c.d_ff, dim=0)
        layer.mlp.gate_proj.weight.copy_(gate)
        layer.mlp.up_proj.weight.copy_(up)
        layer.mlp.down_proj.weight.copy_(block.mlp.down.weight)
        layer.input_layernorm.weight.copy_(block.attn_norm.weight)
        layer.post_attention_layernorm.weight.copy_(block.mlp_norm.weight)


def best_hf_attention() -> str:
    """"flash_attention_2" on CUDA with flash-attn installed, else "sdpa" (torch picks its kernel)."""
    if torch.cuda.is_available() and load_flash_attn() is not None:
        return "flash_attention_2"
    return "sdpa"


def load_hf_model(name_or_path: str, device=None, dtype: torch.dtype | None = None,
                  attn_implementation: str | None = None, local_files_only: bool | None = None):
    """Load a transformers causal LM from a local folder or a hub name, ready for experiments.

    Defaults: the best device (``lib.core.pick_device``), bf16 on CUDA and fp32 elsewhere,
    flash-attention-2 when installed on CUDA, SDPA otherwise. ``local_files_only`` defaults
    to True unless ``HF_HUB_OFFLINE=0`` is set explicitly, so nothing is fetched by surprise:
    pass ``local_files_only=False`` to download from the hub.
    """
    from transformers import AutoModelForCausalLM

    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ValueError(f"name_or_path must be a non-empty string or path, got {name_or_path!r}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be None or a floating torch dtype, got {dtype!r}")
    if attn_implementation is not None and (not isinstance(attn_implementation, str) or not attn_implementation):
        raise ValueError(f"attn_implementation must be None or a non-empty string, got {attn_implementation!r}")
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "1") != "0"
    local_files_only = check_bool("local_files_only", local_files_only)
    device = pick_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, attn_implementation=attn_implementation or best_hf_attention(),
            local_files_only=local_files_only)
    except OSError as err:
        hint = "" if not local_files_only else " (only local files were searched: pass local_files_only=False to download)"
        raise ValueError(f"cannot load a model from {name_or_path!r}{hint}: {err}") from None
    return model.to(device).eval()


def tiny_llama(arch: str = "llama", *, vocab_size: int = 128, hidden_size: int = 64, n_layers: int = 2,
               n_heads: int = 4, n_kv_heads: int | None = None, max_position_embeddings: int = 256,
               rope_theta: float = 10000.0, seed: int = 0, attn_implementation: str = "eager"):
    """A random-init transformers Llama / Qwen2 CausalLM (no downloads) in eval mode, fp32.

    Built by ``to_hf`` from a ``ModelConfig`` with transformers' own defaults for what our
    models set differently (untied embeddings, RMSNorm eps 1e-6), and a SwiGLU width of twice
    the hidden size, so it is the plain reference model a transformers user would build.
    """
    check_choice("arch", arch, HF_ARCHS)
    # Checked under tiny_llama's own names (ModelConfig would report d_model, max_seq_len, ...).
    vocab_size, hidden_size = check_int("vocab_size", vocab_size, 1), check_int("hidden_size", hidden_size, 1)
    n_layers, n_heads = check_int("n_layers", n_layers, 1), check_int("n_heads", n_heads, 1)
    if n_kv_heads is not None:
        n_kv_heads = check_int("n_kv_heads", n_kv_heads, 1)
    max_position_embeddings = check_int("max_position_embeddings", max_position_embeddings, 1)
    rope_theta = check_positive("rope_theta", rope_theta)
    seed = check_seed("seed", seed)
    config = ModelConfig(vocab_size=vocab_size, d_model=hidden_size, n_layers=n_layers, n_heads=n_heads,
                         n_kv_heads=n_kv_heads, max_seq_len=max_position_embeddings, d_ff=2 * hidden_size,
                         tie_embeddings=False, norm_eps=1e-6, encoding="rope",
                         encoding_kwargs={"base": rope_theta})
    torch.manual_seed(seed)
    return to_hf(config, arch, attn_implementation=attn_implementation, use_cache=True).eval()


def output_cache(output):
    """The KV cache a transformers forward with ``use_cache=True`` returned.

    transformers 5.24 renamed the output field ``past_key_values`` to ``cache`` and warns on the
    old name; reading whichever the installed release fills keeps both working without a warning.
    """
    keys = output.keys() if hasattr(output, "keys") else ()
    return output["cache"] if "cache" in keys else output.past_key_values
