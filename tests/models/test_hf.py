"""lib.models.hf: tiny_llama is the plain transformers reference model, built as a transformers user
would build it; the interop functions check their arguments by name."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lib.models import ModelConfig, hf_config, load_hf_model, tiny_llama, to_hf


def reference_tiny_llama(arch, *, vocab_size=128, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=None,
                         max_position_embeddings=256, rope_theta=10000.0, seed=0, attn_implementation="eager"):
    """The transformers user's recipe: the Llama / Qwen2 config built directly, the seed set, the model built."""
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                        num_hidden_layers=n_layers, num_attention_heads=n_heads,
                        num_key_value_heads=n_kv_heads or n_heads, max_position_embeddings=max_position_embeddings,
                        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                        attn_implementation=attn_implementation)
    torch.manual_seed(seed)
    return model_cls(config).eval()


FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
          "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
          "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "initializer_range", "hidden_act",
          "attention_dropout", "use_cache")


@pytest.mark.parametrize("arch, kw", [
    ("llama", dict(n_kv_heads=2, seed=3)),
    ("qwen2", dict(vocab_size=96, hidden_size=64, n_layers=3, n_heads=8, n_kv_heads=2, rope_theta=500000.0,
                   max_position_embeddings=64, seed=1)),
])
def test_tiny_llama_is_the_transformers_recipe(arch, kw):
    ours, reference = tiny_llama(arch, **kw), reference_tiny_llama(arch, **kw)
    assert type(ours) is type(reference) and not ours.training
    got, want = ours.config.to_dict(), reference.config.to_dict()
    for name in FIELDS:
        assert got.get(name) == want.get(name), name
    assert got == want
    assert ours.config._attn_implementation == reference.config._attn_implementation == "eager"
    theirs = reference.state_dict()
    assert list(ours.state_dict()) == list(theirs)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
    x = torch.randint(0, got["vocab_size"], (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, reference(x).logits, rtol=0, atol=0)


def test_tiny_llama_takes_numpy_ints_and_a_seed_picks_the_weights():
    a = tiny_llama(n_kv_heads=np.int64(2), hidden_size=np.int32(32), seed=np.int64(5))
    b = tiny_llama(n_kv_heads=2, hidden_size=32, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = tiny_llama(n_kv_heads=2, hidden_size=32, seed=6)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


@pytest.mark.parametrize("kw, match", [
    (dict(arch="gpt2"), "arch must be one of"),
    (dict(hidden_size=64.0), r"hidden_size must be an integer >= 1, got 64.0"),   # a float is not a count
    (dict(n_layers=True), r"n_layers must be an integer >= 1, got True"),           # nor is a bool
    (dict(n_kv_heads=0), "n_kv_heads"),
    (dict(max_position_embeddings="256"), "max_position_embeddings"),
    (dict(rope_theta=True), "rope_theta"),
    (dict(rope_theta=-1.0), "rope_theta"),
    (dict(seed=-1), "seed"),
    (dict(seed=0.5), "seed"),
])
def test_tiny_llama_checks_its_arguments_by_name(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_llama(**kw)


def test_interop_arguments_are_checked_by_name(tmp_path):
    config = ModelConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=2, max_seq_len=16)
    with pytest.raises(ValueError, match="arch"):
        hf_config(config, "gpt2")
    with pytest.raises(ValueError, match="use_cache"):
        to_hf(config, use_cache=1)
    with pytest.raises(ValueError, match="config must be a ModelConfig"):
        hf_config({"d_model": 32})
    with pytest.raises(ValueError, match="name_or_path"):
        load_hf_model("", device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        load_hf_model(str(tmp_path), device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="local_files_only"):
        load_hf_model(str(tmp_path), device="cpu", local_files_only="yes")
    with pytest.raises(ValueError, match="attn_implementation"):
        load_hf_model(str(tmp_path), device="cpu", attn_implementation=3)
