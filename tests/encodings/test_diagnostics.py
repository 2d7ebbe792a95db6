"""lib.encodings.diagnostics against independent references: exact continued fractions of pi, phi, e,
sqrt2 (Decimal digits + Fraction), the Fibonacci numbers, closed forms of RoPE similarity and of
RoFormer's decay bound, transformers' real KV cache."""

from __future__ import annotations

import math
from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import pytest
import torch

from lib.encodings import build_encoding
from lib.encodings import diagnostics as D
from lib.models import output_cache, tiny_llama

DIMS = dict(d_model=128, n_heads=1, head_dim=128, max_seq_len=1024)
PI_60 = "3.141592653589793238462643383279502884197169399375105820974944"


def exact(constant: str) -> Fraction:
    getcontext().prec = 60
    value = {"pi": Decimal(PI_60), "e": Decimal(1).exp(), "sqrt2": Decimal(2).sqrt(),
             "phi": (1 + Decimal(5).sqrt()) / 2}[constant]
    return Fraction(value)


def cf_denominators(x: Fraction, limit: int) -> list[int]:
    """Independent CF expansion: q_k = a_k q_{k-1} + q_{k-2}."""
    terms, y = [], x
    for _ in range(40):
        a = y.numerator // y.denominator
        terms.append(a)
        y = y - a
        if y == 0:
            break
        y = 1 / y
    qs, q2, q1 = [], 0, 1
    for a in terms[1:]:
        q2, q1 = q1, a * q1 + q2
        if q1 > limit:
            break
        qs.append(q1)
    return sorted({1, *qs})


@pytest.fixture(scope="module")
def reports():
    return {c: D.collision_report(build_encoding("pi_spiral", **DIMS, constant=c), max_offset=100_000)
            for c in ("pi", "phi", "e", "sqrt2")}


@pytest.mark.parametrize("constant", ["pi", "phi", "e", "sqrt2"])
def test_single_phase_spiral_records_are_the_continued_fraction_denominators(reports, constant):
    found = reports[constant]["records"]["offset"].tolist()
    assert found == cf_denominators(exact(constant), 100_000)
    assert D.convergent_denominators(exact(constant), 100_000) == found


def test_pi_and_phi_collision_values(reports):
    sim = reports["pi"]["similarity"]
    for d in (7, 113):  # independent: frac(d pi) from 60 exact digits
        frac = float((exact("pi") * d) % 1)
        assert sim[d - 1] == pytest.approx(math.cos(2 * math.pi * frac), abs=1e-10)
    assert sim[7 - 1] == pytest.approx(0.9985, abs=1e-4)  # REFERENCES' published values
    assert sim[113 - 1] == pytest.approx(0.99999998, abs=1e-8)
    assert reports["pi"]["argmax"] == 99532
    fib = [1, 2]
    while fib[-1] < 100_000:
        fib.append(fib[-1] + fib[-2])
    records = reports["phi"]["records"]["offset"].tolist()
    assert records == [f for f in fib if f <= 100_000]
    assert {89, 987, 6765, 75025} <= set(records)


def test_multi_frequency_encodings_do_not_collide():
    offsets = np.arange(1_000, 200_001)
    rope = D.similarity_at_offsets(build_encoding("rope", **DIMS), offsets)
    theta = 10000.0 ** (-np.arange(0, 128, 2) / 128)  # closed form mean_k cos(theta_k d)
    np.testing.assert_allclose(rope[::997], np.cos(np.outer(offsets[::997], theta)).mean(1), atol=2e-3)
    assert rope.max() < 0.33  # REFERENCES: "below 0.32"; measured max 0.3212 at d = 1030
    spiral = D.similarity_at_offsets(build_encoding("pi_spiral_rotary", **DIMS), offsets)
    assert spiral.max() < 0.5


def test_records_and_validation():
    assert D.record_offsets(np.array([0.1, 0.5, 0.3, 0.7]), np.arange(1, 5)).tolist() == [1, 2, 4]
    with pytest.raises(ValueError, match="offsets"):
        D.similarity_at_offsets(build_encoding("rope", **DIMS), [-1, 2])
    with pytest.raises(ValueError, match="phasors"):
        D.similarity_at_offsets(build_encoding("alibi", **DIMS), [1, 2])
    with pytest.raises(ValueError, match="Fraction"):
        D.convergent_denominators(math.pi, 10)


def test_spectral_summary_single_tone_vs_noise():
    spiral = D.spectral_summary(build_encoding("pi_spiral", **DIMS), length=4096, n_dims=2)
    assert spiral["peak1"].iloc[0] == pytest.approx(math.pi % 1, abs=1 / 4096)
    assert spiral["entropy"].max() < 0.05
    prng = D.spectral_summary(build_encoding("pi_spiral", **DIMS, constant="prng"), length=4096, n_dims=2)
    assert prng["entropy"].min() > 0.8
    wl = D.wavelengths(build_encoding("rope", **DIMS))
    np.testing.assert_allclose(wl, 2 * np.pi * 10000.0 ** (np.arange(0, 128, 2) / 128), rtol=1e-4)


def test_rope_decay_bound_and_qk_similarity():
    theta = 10000.0 ** (-np.arange(0, 128, 2) / 128)
    r = np.arange(0, 251)
    bound = D.rope_decay_bound(theta, r)
    direct = [np.mean([abs(sum(np.exp(1j * d * theta[:j + 1]))) for j in range(64)]) for d in (0, 100)]
    np.testing.assert_allclose(bound[[0, 100]], direct, rtol=1e-10)
    assert bound[:10].mean() > 2 * bound[200:].mean()  # RoFormer's long-term decay
    sims = D.qk_similarity_vs_distance(build_encoding("rope", **DIMS), [0, 5, 50], query="ones")
    np.testing.assert_allclose(sims, np.cos(np.outer([0, 5, 50], theta)).mean(1), atol=1e-5)
    alibi = D.qk_similarity_vs_distance(build_encoding("alibi", **DIMS), [0, 4], query="ones")
    np.testing.assert_allclose(alibi, [1.0, 1.0 - 4 * 2 ** -8], atol=1e-6)


def test_attention_entropy_of_uniform_causal_map():
    t = 16
    uniform = torch.ones(t, t).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]
    frame = D.attention_entropy_by_distance(uniform)
    np.testing.assert_allclose(frame["entropy_at_query"], np.log(np.arange(1, t + 1)), atol=1e-9)
    np.testing.assert_allclose(frame["mass"][0], np.mean(1 / np.arange(1, t + 1)), atol=1e-12)


def test_kv_cache_closed_form_matches_transformers_cache():
    model = tiny_llama("llama", hidden_size=64, n_heads=4, n_kv_heads=2, n_layers=2)
    with torch.no_grad():
        cache = output_cache(model(torch.randint(0, 128, (3, 37)), use_cache=True))
    measured = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert measured == D.kv_cache_nbytes(n_layers=2, batch=3, seq_len=37, n_kv_heads=2, head_dim=16)


def test_attention_cost_reports_time_and_bias_bytes(monkeypatch):
    """ALiBi costs no bias bytes where the kernel adds it (folded, in float32) and the [H, T, T]
    float32 bias where it is materialised."""
    from lib.encodings import flex

    enc = build_encoding("alibi", d_model=64, n_heads=4, head_dim=16, max_seq_len=64)
    row = D.attention_cost(enc, 32, repeats=2)
    assert row["seconds"] > 0 and row["extra_bytes"] == 0
    monkeypatch.setattr(flex, "FOLDED_MAX_LOGIT_ERROR", 0.0)
    row = D.attention_cost(enc, 32, repeats=2)
    assert row["seconds"] > 0 and row["extra_bytes"] == 4 * 32 * 32 * 4


def test_wavelengths_at_a_length_follow_length_dependent_frequencies():
    """``seq_len`` reads the frequencies a sequence of that length uses: LongRoPE switches to its
    long factors past the original length, dynamic NTK stretches, RoPE is unchanged; without
    it the wavelengths come from the phasors (2 pi / inv_freq for linear phases)."""
    dims = dict(d_model=32, n_heads=1, head_dim=32, max_seq_len=1024)
    rope = build_encoding("rope", **dims)
    expected = 2 * np.pi / rope.inverse_frequencies().double().numpy()
    np.testing.assert_allclose(D.wavelengths(rope), expected, rtol=1e-5)
    np.testing.assert_allclose(D.wavelengths(rope, seq_len=4096), expected, rtol=1e-12)
    long = [float(i + 1) for i in range(16)]
    lr = build_encoding("longrope", **dims, original_max_seq_len=256, long_factor=long)
    np.testing.assert_allclose(D.wavelengths(lr, seq_len=256), expected, rtol=1e-6)
    np.testing.assert_allclose(D.wavelengths(lr, seq_len=257), expected * np.array(long), rtol=1e-6)
    prop = D.wavelengths(build_encoding("rope_proportional", **dims, rotary_fraction=0.25))
    assert np.isinf(prop[4:]).all() and np.isfinite(prop[:4]).all()
    spiral = build_encoding("pi_spiral_rotary", **dims)
    np.testing.assert_array_equal(D.wavelengths(spiral, seq_len=100), D.wavelengths(spiral))
    with pytest.raises(ValueError, match="seq_len"):
        D.wavelengths(rope, seq_len=0)
