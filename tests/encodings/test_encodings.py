"""lib.encodings / lib.encodings.spiral / lib.encodings.attractor / lib.encodings.hf against independent references:
transformers' ROPE_INIT_FUNCTIONS and LlamaRotaryEmbedding, the ALiBi paper's slopes, the
closed forms of the sinusoidal and pi-spiral encodings, and a token-by-token recurrence."""

from __future__ import annotations

import math
from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from lib.core import Registry
from lib.encodings import (
    ENCODINGS,
    alibi_slopes,
    apply_rotary,
    apply_to_hf,
    build_encoding,
    deinterleave_pairs,
    interleave_pairs,
    rotate_interleaved,
)
from lib.models import tiny_llama

HEAD_DIM, N_HEADS, L0 = 32, 4, 256
DIMS = dict(d_model=HEAD_DIM * N_HEADS, n_heads=N_HEADS, head_dim=HEAD_DIM, max_seq_len=L0)
PI_50 = "3.14159265358979323846264338327950288419716939937510"


def hf_config(**rope):
    rope.setdefault("rope_theta", 10000.0)
    return LlamaConfig(hidden_size=DIMS["d_model"], num_attention_heads=N_HEADS, num_hidden_layers=1,
                       max_position_embeddings=L0 * int(rope.get("factor", 1)) if rope.get("rope_type") in
                       ("yarn", "llama3") else L0, rope_parameters=rope)


@pytest.mark.parametrize("name, ours, rope", [
    ("rope_linear", dict(factor=4.0), dict(rope_type="linear", factor=4.0)),
    ("yarn", dict(factor=4.0), dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=L0)),
    ("yarn", dict(factor=8.0, beta_fast=16.0, beta_slow=2.0, base=5e5),
     dict(rope_type="yarn", factor=8.0, beta_fast=16.0, beta_slow=2.0, rope_theta=5e5,
          original_max_position_embeddings=L0)),
    ("yarn", dict(factor=4.0, mscale=0.707, mscale_all_dim=1.0),
     dict(rope_type="yarn", factor=4.0, mscale=0.707, mscale_all_dim=1.0, original_max_position_embeddings=L0)),
    ("llama3", dict(factor=8.0, base=5e5, original_max_seq_len=64),
     dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, rope_theta=5e5,
          original_max_position_embeddings=64)),
])
def test_rotary_frequencies_match_transformers(name, ours, rope):
    enc = build_encoding(name, **DIMS, **ours)
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf_config(**rope))
    torch.testing.assert_close(enc.inverse_frequencies(), inv_freq, rtol=0, atol=0)
    assert enc.attention_scaling == pytest.approx(scaling, rel=1e-12)


def _longrope_config(head_dim, max_len, original, partial=1.0, **rope):
    return LlamaConfig(hidden_size=head_dim * N_HEADS, num_attention_heads=N_HEADS, head_dim=head_dim,
                       num_hidden_layers=1, max_position_embeddings=max_len,
                       rope_parameters=dict(rope_type="longrope", rope_theta=rope.pop("rope_theta", 10000.0),
                                            original_max_position_embeddings=original,
                                            partial_rotary_factor=partial, **rope))


LONGROPE_CASES = [
    # (head_dim, max_seq_len, original, partial, extra rope keys); factors drawn per case
    (32, 1024, 256, 1.0, {}),                                        # factor from max/original (Phi-3)
    (32, 1024, 256, 1.0, {"factor": 8.0}),                           # factor given
    (64, 4096, 512, 1.0, {"attention_factor": 1.3, "rope_theta": 5e5}),
    (32, 512, 512, 1.0, {}),                                         # factor 1: attention factor 1
    (32, 2048, 256, 0.75, {}),                                       # partial rotary (Phi-4-mini style)
]


@pytest.mark.parametrize("head_dim, max_len, original, partial, extra", LONGROPE_CASES)
def test_longrope_frequencies_and_attention_factor_match_transformers(head_dim, max_len, original, partial, extra):
    rng = np.random.default_rng(head_dim + max_len)
    pairs = int(head_dim * partial) // 2
    short = (1 + 0.5 * rng.random(pairs)).tolist()
    long = np.sort(1 + 15 * rng.random(pairs)).tolist()
    config = _longrope_config(head_dim, max_len, original, partial, short_factor=short, long_factor=long,
                              **dict(extra))
    ours = dict(short_factor=short, long_factor=long, original_max_seq_len=original, rotary_fraction=partial,
                base=extra.get("rope_theta", 10000.0),
                **{k: v for k, v in extra.items() if k in ("factor", "attention_factor")})
    enc = build_encoding("longrope", d_model=head_dim * N_HEADS, n_heads=N_HEADS, head_dim=head_dim,
                         max_seq_len=max_len, **ours)
    for seq_len in (None, original // 2, original, original + 1, 4 * original):
        ref, scaling = ROPE_INIT_FUNCTIONS["longrope"](config, seq_len=seq_len)
        got = enc.inverse_frequencies(seq_len)
        torch.testing.assert_close(got[:pairs], ref, rtol=0, atol=0)
        assert torch.all(got[pairs:] == 0) and got.numel() == head_dim // 2
        assert enc.attention_scaling == pytest.approx(scaling, rel=1e-12)
    short_ref = ROPE_INIT_FUNCTIONS["longrope"](config, seq_len=original)[0]
    long_ref = ROPE_INIT_FUNCTIONS["longrope"](config, seq_len=original + 1)[0]
    assert not torch.equal(short_ref, long_ref)  # the case really has two factor sets


def test_longrope_published_attention_factor_and_defaults():
    # Phi-3-mini-128k: original 4096, max 131072 -> sqrt(1 + ln 32 / ln 4096) = 1.19024...
    enc = build_encoding("longrope", d_model=96, n_heads=1, head_dim=96, max_seq_len=131072,
                         original_max_seq_len=4096)
    assert enc.attention_scaling == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)), rel=1e-12)
    assert enc.attention_scaling == pytest.approx(1.1902, abs=1e-4)
    rope = build_encoding("rope", d_model=96, n_heads=1, head_dim=96, max_seq_len=131072).inverse_frequencies()
    # default short factors are ones (plain RoPE), default long ones the NTK-aware base change
    torch.testing.assert_close(enc.inverse_frequencies(100), rope, rtol=0, atol=0)
    ntk = build_encoding("rope_ntk", d_model=96, n_heads=1, head_dim=96, max_seq_len=4096, factor=32.0)
    torch.testing.assert_close(enc.inverse_frequencies(5000), ntk.inverse_frequencies(), rtol=1e-5, atol=0)


def test_longrope_cos_sin_switch_at_original_length_as_llama_rotary_embedding():
    """transformers picks the long factors from the call's largest position: ours does too,
    bit for bit, on both sides of ``original_max_position_embeddings``."""
    pairs = HEAD_DIM // 2
    short, long = np.linspace(1.0, 1.2, pairs).tolist(), np.linspace(1.0, 6.0, pairs).tolist()
    config = _longrope_config(HEAD_DIM, 4 * L0, L0, short_factor=short, long_factor=long)
    ref = LlamaRotaryEmbedding(config)
    enc = build_encoding("longrope", **{**DIMS, "max_seq_len": 4 * L0}, short_factor=short, long_factor=long,
                         original_max_seq_len=L0)
    for length in (L0, L0 + 1, 3 * L0):
        pos = torch.arange(length)[None]
        cos, sin = ref(torch.zeros(1, dtype=torch.float32), pos)
        ours = enc.cos_sin(pos)
        assert torch.equal(ours[0], cos) and torch.equal(ours[1], sin)
    q, k = torch.randn(1, N_HEADS, L0 + 8, HEAD_DIM), torch.randn(1, N_HEADS, L0 + 8, HEAD_DIM)
    q_long, _ = enc.rotate(q, k, None)
    q_short, _ = enc.rotate(q[:, :, :L0], k[:, :, :L0], None)
    assert not torch.allclose(q_long[:, :, :L0], q_short)  # not served from a length-blind cache


@pytest.mark.parametrize("head_dim, fraction, factor, theta", [
    (32, 0.25, 1.0, 10000.0), (32, 0.5, 4.0, 10000.0), (64, 0.75, 1.0, 1e6), (64, 1.0, 2.0, 10000.0),
    (48, 0.3, 8.0, 5e5),  # fraction * head_dim / 2 not an integer: floored as transformers does
])
def test_proportional_frequencies_match_transformers(head_dim, fraction, factor, theta):
    config = LlamaConfig(hidden_size=head_dim * N_HEADS, num_attention_heads=N_HEADS, head_dim=head_dim,
                         num_hidden_layers=1, max_position_embeddings=L0,
                         rope_parameters=dict(rope_type="proportional", rope_theta=theta,
                                              partial_rotary_factor=fraction, factor=factor))
    ref, scaling = ROPE_INIT_FUNCTIONS["proportional"](config)
    enc = build_encoding("rope_proportional", d_model=head_dim * N_HEADS, n_heads=N_HEADS, head_dim=head_dim,
                         max_seq_len=L0, rotary_fraction=fraction, factor=factor, base=theta)
    torch.testing.assert_close(enc.inverse_frequencies(), ref, rtol=0, atol=0)
    assert enc.attention_scaling == scaling == 1.0
    # the rotated pairs keep their full-width RoPE frequencies (unlike rope_partial)
    full = build_encoding("rope", d_model=head_dim * N_HEADS, n_heads=N_HEADS, head_dim=head_dim, max_seq_len=L0,
                          base=theta).inverse_frequencies()
    rotated = int(fraction * head_dim // 2)
    torch.testing.assert_close(enc.inverse_frequencies()[:rotated], full[:rotated] / factor, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name, kw, match", [
    ("longrope", {"short_factor": [1.0] * 3}, "short_factor must have 16 entries"),
    ("longrope", {"long_factor": [1.0] * 15 + [0.0]}, r"long_factor\[15\] must be a finite number > 0"),
    ("longrope", {"long_factor": "ones"}, "long_factor must be a list of 16 numbers"),
    ("longrope", {"factor": -1.0}, "factor must be"),
    ("longrope", {"rotary_fraction": 0.01}, "rotary_fraction"),
    ("rope_proportional", {"rotary_fraction": 0.01}, "at least one rotated pair"),
    ("rope_proportional", {"factor": 0.5}, "factor must be a finite number >= 1.0"),
])
def test_longrope_and_proportional_arguments_are_checked(name, kw, match):
    with pytest.raises(ValueError, match=match):
        build_encoding(name, **DIMS, **kw)


def test_rope_cos_sin_equal_llama_rotary_embedding_bitwise():
    config = hf_config(rope_type="yarn", factor=4.0, original_max_position_embeddings=L0)
    ref = LlamaRotaryEmbedding(config)
    pos = torch.arange(0, 3000, 7)[None].repeat(2, 1)
    cos, sin = ref(torch.zeros(1, dtype=torch.float32), pos)
    ours = build_encoding("yarn", **DIMS, factor=4.0).cos_sin(pos)
    assert torch.equal(ours[0], cos) and torch.equal(ours[1], sin)


def test_yarn_attention_factor_published_value():
    assert build_encoding("yarn", **DIMS, factor=4.0).attention_scaling == pytest.approx(0.1 * math.log(4) + 1)
    assert build_encoding("yarn", **DIMS, factor=4.0).attention_scaling == pytest.approx(1.1386, abs=1e-4)


def test_dynamic_ntk_follows_sequence_length():
    enc = build_encoding("rope_dynamic", **DIMS, factor=2.0)
    plain = build_encoding("rope", **DIMS).inverse_frequencies()
    config = hf_config(rope_type="dynamic", factor=2.0)
    for seq_len in (100, L0, 3 * L0, 10 * L0):
        ref, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, seq_len=seq_len)
        torch.testing.assert_close(enc.inverse_frequencies(seq_len), ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(enc.inverse_frequencies(L0 // 2), plain, rtol=1e-6, atol=0)
    # the angles used in a call come from that call's length
    pos = torch.arange(4 * L0)
    expected = pos[:, None].float() * ROPE_INIT_FUNCTIONS["dynamic"](config, seq_len=4 * L0)[0]
    torch.testing.assert_close(enc.angles(pos), expected, rtol=1e-6, atol=1e-4)


def test_static_ntk_equals_dynamic_at_factor_times_length():
    # bloc97's static NTK base*s**(d/(d-2)) == transformers' dynamic rule (factor 1) at L = s * L0
    enc = build_encoding("rope_ntk", **DIMS, factor=4.0)
    ref, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf_config(rope_type="dynamic", factor=1.0), seq_len=4 * L0)
    torch.testing.assert_close(enc.inverse_frequencies(), ref, rtol=1e-5, atol=0)


def test_partial_rotary_matches_transformers_partial_factor():
    enc = build_encoding("rope_partial", **DIMS, rotary_fraction=0.5)
    ref, _ = ROPE_INIT_FUNCTIONS["linear"](hf_config(rope_type="linear", factor=1.0, partial_rotary_factor=0.5))
    inv = enc.inverse_frequencies()
    torch.testing.assert_close(inv[: HEAD_DIM // 4], ref, rtol=0, atol=0)
    assert torch.all(inv[HEAD_DIM // 4:] == 0)
    q, k = torch.randn(1, 1, 5, HEAD_DIM), torch.randn(1, 1, 5, HEAD_DIM)
    q2, _ = enc.rotate(q, k, torch.arange(5))
    passthrough = torch.cat((torch.arange(8, 16), torch.arange(24, 32)))
    assert torch.equal(q2[..., passthrough], q[..., passthrough])


@pytest.mark.parametrize("name", ["rope", "rope_dynamic", "yarn", "none"])
def test_rotate_without_positions_means_zero_to_t(name):
    """positions=None (the model's no-host-sync fast path) is exactly positions 0..T-1."""
    enc = build_encoding(name, **DIMS)
    q, k = torch.randn(2, N_HEADS, 40, HEAD_DIM), torch.randn(2, N_HEADS, 40, HEAD_DIM)
    for got, want in zip(enc.rotate(q, k, None), enc.rotate(q, k, torch.arange(40)), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("batched_angles", [False, True])
def test_apply_rotary_equals_transformers_formula_bitwise(batched_angles):
    """Our roll-based rotation is transformers' ``apply_rotary_pos_emb`` bit for bit, forward
    and backward, for per-position and per-sequence cos/sin and strided (fused-QKV) inputs."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 9, 3 * N_HEADS * HEAD_DIM, requires_grad=True)
    cos, sin = torch.randn(2, 9, HEAD_DIM), torch.randn(2, 9, HEAD_DIM)
    if not batched_angles:
        cos, sin = cos[0], sin[0]
    grads = torch.randn(2, 2, N_HEADS, 9, HEAD_DIM)
    results = []
    for fn in (apply_rotary, lambda q, k, c, s: apply_rotary_pos_emb(q, k, c if c.dim() == 3 else c[None],
                                                                     s if s.dim() == 3 else s[None])):
        qkv.grad = None
        q, k, _ = qkv.split(N_HEADS * HEAD_DIM, dim=-1)
        q, k = (z.view(2, 9, N_HEADS, HEAD_DIM).transpose(1, 2) for z in (q, k))
        out = fn(q, k, cos, sin)
        torch.autograd.backward(out, list(grads))
        results.append((*out, qkv.grad.clone()))
    for ours, theirs in zip(*results, strict=True):
        assert torch.equal(ours, theirs)


def test_rope_apply_matches_transformers_and_is_relative():
    enc = build_encoding("rope", **DIMS)
    q, k = torch.randn(2, N_HEADS, 50, HEAD_DIM), torch.randn(2, N_HEADS, 50, HEAD_DIM)
    pos = torch.arange(50)
    cos, sin = enc.cos_sin(pos[None])
    torch.testing.assert_close(enc.rotate(q, k, pos), apply_rotary_pos_emb(q, k, cos, sin))
    # q.k after rotation depends on the offset only
    a = enc.rotate(q[:, :, :1].expand(-1, -1, 2, -1), k[:, :, :1].expand(-1, -1, 2, -1), torch.tensor([3, 10]))
    b = enc.rotate(q[:, :, :1].expand(-1, -1, 2, -1), k[:, :, :1].expand(-1, -1, 2, -1), torch.tensor([103, 110]))
    dot_a = (a[0][:, :, 1] * a[1][:, :, 0]).sum(-1)
    dot_b = (b[0][:, :, 1] * b[1][:, :, 0]).sum(-1)
    torch.testing.assert_close(dot_a, dot_b, rtol=1e-4, atol=1e-4)


def test_alibi_slopes_paper_values_and_bias():
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
    expected_12 = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -(i + 0.5) for i in range(4)]  # every other slope of 16 heads
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected_12))
    enc = build_encoding("alibi", **DIMS)
    bias = enc.attn_bias(3, 5, "cpu", torch.float32)  # queries at positions 2, 3, 4
    assert bias.shape == (N_HEADS, 3, 5)
    assert bias[0, 0].tolist() == [-0.5, -0.25, 0.0, 0.0, 0.0]  # 4 heads: slopes 1/4 .. 1/256
    assert bias[1, 2, 0].item() == pytest.approx(-4 / 16)
    with pytest.raises(ValueError, match="n_heads"):
        alibi_slopes(0)


def test_sinusoidal_closed_form():
    enc = build_encoding("sinusoidal", **DIMS)
    table = enc.table(torch.arange(20))
    for n in (0, 7, 19):
        for i in range(0, DIMS["d_model"], 2):
            assert table[n, i].item() == pytest.approx(math.sin(n / 10000 ** (i / DIMS["d_model"])), abs=1e-6)
            assert table[n, i + 1].item() == pytest.approx(math.cos(n / 10000 ** (i / DIMS["d_model"])), abs=1e-6)


def test_pi_spiral_single_phase_added_to_x():
    getcontext().prec = 60
    enc = build_encoding("pi_spiral", **DIMS, constant="pi")
    x = torch.randn(1, 200, DIMS["d_model"])
    added = enc.embed(x, torch.arange(200)) - x
    for n in (1, 7, 113, 199):
        frac = float((Decimal(n) * Decimal(PI_50)) % 1)
        phase = 2 * math.pi * frac
        assert torch.allclose(added[0, n, 0::2], torch.tensor(math.cos(phase)), atol=1e-5)
        assert torch.allclose(added[0, n, 1::2], torch.tensor(math.sin(phase)), atol=1e-5)


def test_pi_spiral_prng_seeded_and_length_independent():
    a = build_encoding("pi_spiral", **DIMS, constant="prng", seed=3)
    b = build_encoding("pi_spiral", **DIMS, constant="prng", seed=4)
    short, long = a.table(torch.arange(10)), a.table(torch.arange(1000))
    assert torch.equal(short, long[:10])
    assert not torch.allclose(short, b.table(torch.arange(10)))
    assert torch.equal(short, build_encoding("pi_spiral", **DIMS, constant="prng", seed=3).table(torch.arange(10)))


def test_pi_spiral_rotary_own_irrational_per_pair():
    enc = build_encoding("pi_spiral_rotary", **DIMS, geometric=False)
    primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53]
    expected = [math.sqrt(p) % 1 for p in primes]
    assert enc.cycles_per_position.tolist() == pytest.approx(expected, rel=1e-15)
    n = torch.tensor([12345])
    angle = enc.angles(n)[0]
    for i in (0, 5, 15):
        want = 2 * math.pi * ((12345 * expected[i]) % 1)
        assert angle[i].item() == pytest.approx(want, abs=1e-5)


def test_hybrid_is_rope_before_and_spiral_after_the_transition():
    enc = build_encoding("pi_spiral_hybrid", **DIMS, K=2000, width=20)
    rope = build_encoding("rope", **DIMS)
    spiral = build_encoding("pi_spiral_rotary", **DIMS)
    early, late = torch.arange(0, 200), torch.arange(4000, 4200)
    for got, want in zip(enc.cos_sin(early), rope.cos_sin(early)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for got, want in zip(enc.cos_sin(late), spiral.cos_sin(late)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    mid = torch.tensor([2000])
    blend = 0.5 * rope.cos_sin(mid)[0] + 0.5 * spiral.cos_sin(mid)[0]
    torch.testing.assert_close(enc.cos_sin(mid)[0], blend)
    assert not torch.allclose(rope.cos_sin(late)[0], spiral.cos_sin(late)[0], atol=0.1)


def attractor(**kw):
    kw.setdefault("n_layers", 2)
    return build_encoding("attractor", **DIMS, d_state=4, chunk=7, **kw)


@pytest.mark.parametrize("kw", [dict(), dict(inject="cross_attention", value="hidden"),
                                dict(alpha="learned", normalize=False), dict(alpha="exp", layers="last:1")])
def test_attractor_scan_equals_token_recurrence_and_is_causal(kw):
    torch.manual_seed(0)
    enc = attractor(**kw)
    layer = enc.layers[-1]
    h = torch.randn(2, 20, DIMS["d_model"])
    out = enc.block_hook(layer, h)
    states = enc.init_state(2)
    steps = torch.stack([enc.step_hook(layer, h[:, t], t, states) for t in range(20)], dim=1)
    torch.testing.assert_close(out, steps, rtol=1e-4, atol=1e-5)
    h2 = h.clone()
    h2[:, 13] += 1.0  # chunk=7: position 13 sits inside the second chunk
    out2 = enc.block_hook(layer, h2)
    assert torch.equal(out2[:, :13], out[:, :13])
    assert not torch.allclose(out2[:, 13:], out[:, 13:])


def test_attractor_alpha_modes_and_constant_state():
    assert attractor().alpha().item() == pytest.approx(0.99)
    assert attractor(alpha="exp", horizon=500).alpha().item() == pytest.approx(math.exp(-math.pi / 500))
    learned = attractor(alpha="learned", alpha_value=0.9)
    assert learned.alpha().item() == pytest.approx(0.9)
    learned.block_hook(0, torch.randn(1, 12, DIMS["d_model"])).sum().backward()
    assert learned.alpha_logit.grad is not None and learned.alpha_logit.grad.abs() > 0
    enc = attractor()
    sizes = []
    for length in (10, 100):
        states = enc.init_state(1)
        for t in range(length):
            for layer in enc.layers:
                enc.step_hook(layer, torch.randn(1, DIMS["d_model"]), t, states)
        sizes.append(enc.state_nbytes(states))
    assert sizes[0] == sizes[1] == 2 * (4 * DIMS["d_model"] + 1) * 4
    assert enc.block_hook(5, torch.ones(1, 3, DIMS["d_model"])).sum() == 3 * DIMS["d_model"]  # not a listed layer
    with pytest.raises(ValueError, match="n_layers"):
        build_encoding("attractor", **DIMS)


def test_validation_errors():
    with pytest.raises(ValueError, match="unknown encoding"):
        build_encoding("nope", **DIMS)
    with pytest.raises(ValueError, match="base"):
        build_encoding("rope", **DIMS, base=0.5)
    with pytest.raises(ValueError, match="constant"):
        build_encoding("pi_spiral", **DIMS, constant="tau")
    with pytest.raises(ValueError, match="rotary_fraction"):
        build_encoding("rope_partial", **DIMS, rotary_fraction=1.5)
    with pytest.raises(ValueError, match="bad arguments"):
        build_encoding("rope", **DIMS, factor=2.0)
    with pytest.raises(ValueError, match="head_dim"):
        build_encoding("rope", **{**DIMS, "head_dim": 7})
    assert {"rope", "none", "alibi", "yarn", "pi_spiral", "pi_spiral_hybrid", "attractor"} <= set(ENCODINGS)


def test_registry_holds_every_variant_under_its_name():
    """Each variant registers where it is defined, with its registered name stored on the class;
    an unknown name is a ValueError listing the registered ones."""
    assert isinstance(ENCODINGS, Registry)
    modules = {"rope": "rope", "rope_partial": "rope", "rope_linear": "rope", "rope_ntk": "rope",
               "rope_dynamic": "rope", "yarn": "rope", "llama3": "rope", "longrope": "rope",
               "rope_proportional": "rope", "none": "absolute",
               "sinusoidal": "absolute", "alibi": "absolute", "pi_spiral": "spiral",
               "pi_spiral_rotary": "spiral", "pi_spiral_hybrid": "spiral", "attractor": "attractor"}
    assert {name: cls.__module__ for name, cls in ENCODINGS.items()} == {
        name: f"lib.encodings.{module}" for name, module in modules.items()}
    for name, cls in ENCODINGS.items():
        assert cls.name == name
        assert build_encoding(name, **DIMS, **({"n_layers": 1} if name == "attractor" else {})).name == name
    with pytest.raises(ValueError, match=r"unknown encoding 'nope'; registered: \['alibi', 'attractor'"):
        build_encoding("nope", **DIMS)


@pytest.mark.parametrize("name, kw, match", [
    ("rope", {"n_heads": True}, "n_heads must be an integer >= 1"),
    ("rope", {"base": True}, "base must be a finite number > 1.0"),
    ("rope_ntk", {"base": 0.5}, "base must be a finite number > 1.0"),
    ("yarn", {"original_max_seq_len": 0}, "original_max_seq_len must be an integer >= 1"),
    ("llama3", {"original_max_seq_len": 64.0}, "original_max_seq_len must be an integer >= 1"),
    ("yarn", {"truncate": 1}, "truncate must be True or False"),
    ("pi_spiral_hybrid", {"spiral": "double"}, r"spiral must be one of \['rotary', 'single'\]"),
    ("attractor", {"n_layers": 1, "horizon": 0}, "horizon must be an integer >= 1"),
    ("attractor", {"n_layers": 1, "alpha_value": 1.0}, "alpha_value must be a finite number > 0.0 and < 1.0"),
    ("attractor", {"n_layers": 1, "base": "attractor"}, r"base must be one of \['alibi'"),
])
def test_arguments_are_checked_by_name(name, kw, match):
    with pytest.raises(ValueError, match=match):
        build_encoding(name, **{**DIMS, **kw})


def test_numpy_integer_dimensions_are_integers():
    enc = build_encoding("rope", **{k: np.int64(v) for k, v in DIMS.items()})
    assert type(enc.head_dim) is int and type(enc.max_seq_len) is int
    torch.testing.assert_close(enc.inv_freq, build_encoding("rope", **DIMS).inv_freq, rtol=0, atol=0)
    assert alibi_slopes(np.int64(4)).tolist() == alibi_slopes(4).tolist()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_apply_to_hf_rope_exact_other_differs_remove_restores(arch):
    model = tiny_llama(arch, hidden_size=64, n_heads=4, n_kv_heads=2, rope_theta=5000.0)
    x = torch.randint(0, 128, (2, 48))
    with torch.no_grad():
        ref = model(x).logits
    dims = dict(d_model=64, n_heads=4, head_dim=16, max_seq_len=256)
    for name, kw in (("rope", dict(base=5000.0)), ("yarn", dict(base=5000.0, factor=4.0)), ("alibi", {}),
                     ("sinusoidal", {})):
        handle = apply_to_hf(model, build_encoding(name, **dims, **kw))
        with torch.no_grad():
            patched = model(x).logits
        handle.remove()
        with torch.no_grad():
            restored = model(x).logits
        if name == "rope":
            assert torch.equal(patched, ref)
        else:
            assert (patched - ref).abs().max() > 1e-3
        assert torch.equal(restored, ref)
        assert model.config._attn_implementation == "eager"


def test_apply_to_hf_alibi_attention_path_with_zero_slopes_equals_nope():
    model = tiny_llama("llama", hidden_size=64, n_heads=4)
    x = torch.randint(0, 128, (1, 33))
    dims = dict(d_model=64, n_heads=4, head_dim=16, max_seq_len=64)
    handle = apply_to_hf(model, build_encoding("none", **dims))
    with torch.no_grad():
        nope = model(x).logits
    handle.remove()
    alibi = build_encoding("alibi", **dims)
    alibi.slopes.zero_()
    handle = apply_to_hf(model, alibi)
    with torch.no_grad():
        zero_bias = model(x).logits
    handle.remove()
    torch.testing.assert_close(zero_bias, nope, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="head_dim"):
        apply_to_hf(model, build_encoding("rope", **{**dims, "head_dim": 8}))


@pytest.mark.parametrize("name,kw", [("rope", {}), ("rope_dynamic", {"factor": 2.0}), ("alibi", {}),
                                     ("pi_spiral_rotary", {}), ("yarn", {"factor": 4.0}),
                                     ("rope_partial", {}), ("attractor", {"n_layers": 2}),
                                     ("longrope", {"original_max_seq_len": 4, "factor": 4.0}),
                                     ("rope_proportional", {})])
@pytest.mark.parametrize("positions", ["none", "arange", "shifted", "batched"])
def test_rotate_packed_equals_rotate_forward_and_backward(name, kw, positions):
    """Queries and keys packed [B, T, Hq + Hk, D] with interleaved pairs (the model's layout,
    rotated by one complex multiply) give the half-split ``rotate`` of q and k apart (the
    transformers formula) once the layout is converted, gradients included, with grouped-query
    heads, cached, shifted and per-sequence positions."""
    enc = build_encoding(name, d_model=32, n_heads=4, head_dim=8, max_seq_len=16, **kw)
    b, t, hq, hk, d = 2, 9, 4, 2, 8
    pos = {"none": None, "arange": torch.arange(t), "shifted": torch.arange(t) + 3,
           "batched": torch.stack((torch.arange(t) + 2, torch.arange(t)))}[positions]
    half = torch.randn(b, t, hq + hk, d, dtype=torch.float64, requires_grad=True)
    ref_q, ref_k = enc.rotate(half[:, :, :hq].transpose(1, 2), half[:, :, hq:].transpose(1, 2), pos)
    (ref_q.sin().sum() + ref_k.square().sum()).backward()
    packed = interleave_pairs(half.detach()).requires_grad_()
    q, k = enc.rotate_packed(packed, hq, pos)
    assert q.shape == (b, hq, t, d) and k.shape == (b, hk, t, d)
    q, k = deinterleave_pairs(q), deinterleave_pairs(k)
    (q.sin().sum() + k.square().sum()).backward()
    tol = dict(rtol=0, atol=1e-14)
    torch.testing.assert_close(q, ref_q, **tol)
    torch.testing.assert_close(k, ref_k, **tol)
    torch.testing.assert_close(deinterleave_pairs(packed.grad), half.grad, **tol)
    if name != "alibi":  # a rotation really happened (alibi rotates nothing)
        assert (q - half[:, :, :hq].transpose(1, 2)).abs().max() > 0.1


def test_pair_layouts_are_inverse_and_match_transformers_conversion_permute():
    """``deinterleave_pairs`` on each head's rows is the ``permute`` of transformers'
    ``convert_llama_weights_to_hf`` (Meta's interleaved layout to HF's half-split layout)."""
    n_heads, head_dim, d_model = 3, 8, 5
    w = torch.randn(n_heads * head_dim, d_model)

    def hf_permute(w, n_heads, dim1, dim2):  # restated from transformers' conversion script
        return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)

    ours = deinterleave_pairs(w.view(n_heads, head_dim, d_model).transpose(1, 2)).transpose(1, 2)
    assert torch.equal(ours.reshape(-1, d_model), hf_permute(w, n_heads, n_heads * head_dim, d_model))
    x = torch.randn(4, head_dim)
    assert torch.equal(deinterleave_pairs(interleave_pairs(x)), x)
    assert torch.equal(interleave_pairs(torch.arange(6.0)), torch.tensor([0.0, 3, 1, 4, 2, 5]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotate_interleaved_low_precision_and_compiled_formula(dtype, monkeypatch):
    """bf16 inputs are rotated in float32 and cast back; the real-arithmetic form used under
    torch.compile equals the complex multiply."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8).to(dtype)
    angle = torch.randn(5, 1, 4)
    cos_sin = torch.stack((angle.cos(), angle.sin()), dim=-1)
    out = rotate_interleaved(x, cos_sin)
    assert out.dtype == dtype
    c, s = angle.cos(), angle.sin()
    x0, x1 = x.double()[..., 0::2], x.double()[..., 1::2]
    ref = torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out.double(), ref, **tol)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.testing.assert_close(rotate_interleaved(x, cos_sin).double(), ref, **tol)
