"""Diagnostics of positional encodings: collisions, spectra, relative-position decay, attention
maps from trained models, and cost.

Every phase-type encoding (rotary, sinusoidal, pi-spiral) exposes ``phasors(positions)``:
complex [N, P], one unit (or blended) phasor per (cos, sin) pair. The cosine similarity of two
encoding vectors is then ``Re(sum conj(z_a) z_b) / (|z_a| |z_b|)``, and for encodings whose
pair angles are linear in n (RoPE, sinusoidal, the spirals) it depends on the offset only:
``sim(d) = mean_k cos(theta_k d)``; for the single-phase pi-spiral ``sim(d) = cos(2 pi frac(d c))``,
so it collides at the continued-fraction denominators of c.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lib.core import check_choice, check_int, check_int_array
from lib.encodings.base import PositionalEncoding, RotaryEncoding
from lib.encodings.flex import bias_attention, choose_bias_path, has_score_bias

ORIGINAL_OFFSETS = (100, 1_000, 5_000, 10_000, 20_000, 50_000)  # the seed's collision probes


def similarity_at_offsets(encoding: PositionalEncoding, offsets, start: int = 0, chunk: int = 20_000) -> np.ndarray:
    """cos-sim(PE(start), PE(start + d)) for each offset d (float64 [len(offsets)]).

    Vectorised over offsets in chunks of ``chunk`` (memory ~ chunk * pairs * 16 bytes).
    """
    if not hasattr(encoding, "phasors"):
        raise ValueError(f"encoding {encoding.name!r} has no phasors (only phase-type encodings have a collision "
                         "profile: rotary, sinusoidal, pi-spiral)")
    start = check_int("start", start, 0)
    off = check_int_array("offsets", offsets)
    z0 = encoding.phasors(np.array([start]))[0]
    out = np.empty(off.size)
    for i in range(0, off.size, chunk):
        z = encoding.phasors(start + off[i:i + chunk])
        num = (np.conj(z0)[None] * z).sum(-1).real
        out[i:i + chunk] = num / (np.linalg.norm(z0) * np.linalg.norm(z, axis=-1))
    return out


def record_offsets(similarity: np.ndarray, offsets) -> np.ndarray:
    """Offsets where the similarity sets a new running maximum (successively closer collisions)."""
    off = check_int_array("offsets", offsets)
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.shape != off.shape:
        raise ValueError(f"similarity and offsets must have the same shape, got {sim.shape} and {off.shape}")
    running = np.maximum.accumulate(sim)
    is_record = np.r_[True, sim[1:] > running[:-1]]
    return off[is_record]


def collision_report(encoding: PositionalEncoding, max_offset: int = 100_000, min_offset: int = 1,
                     top_k: int = 8) -> dict:
    """Collision analysis over offsets ``min_offset..max_offset``.

    Returns ``{"offsets", "similarity", "records": DataFrame(offset, similarity),
    "closest": DataFrame of the top_k most similar offsets, "probes": the seed's offsets,
    "max_similarity", "argmax"}``.
    """
    min_offset = check_int("min_offset", min_offset, 1)
    max_offset = check_int("max_offset", max_offset, min_offset + 1)
    offsets = np.arange(min_offset, max_offset + 1)
    sim = similarity_at_offsets(encoding, offsets)
    rec = record_offsets(sim, offsets)
    top = np.argsort(-sim, kind="stable")[:top_k]
    probes = [d for d in ORIGINAL_OFFSETS if min_offset <= d <= max_offset]
    return {
        "offsets": offsets, "similarity": sim,
        "records": pd.DataFrame({"offset": rec, "similarity": sim[rec - min_offset]}),
        "closest": pd.DataFrame({"offset": offsets[top], "similarity": sim[top]}),
        "probes": pd.DataFrame({"offset": probes, "similarity": [sim[d - min_offset] for d in probes]}),
        "max_similarity": float(sim.max()), "argmax": int(offsets[sim.argmax()]),
    }


def convergent_denominators(x: Fraction, max_denominator: int) -> list[int]:
    """Denominators q_k <= max_denominator of the continued-fraction convergents of ``x`` (exact)."""
    if not isinstance(x, Fraction):
        raise ValueError(f"x must be a fractions.Fraction (exact), got {type(x).__name__}")
    q_prev, q, out = 0, 1, [1]
    rest = x - math.floor(x)
    while rest:
        inv = 1 / rest
        a = math.floor(inv)
        rest = inv - a
        q_prev, q = q, a * q + q_prev
        if q > max_denominator:
            break
        out.append(q)
    return sorted(set(out))


# --- spectra ---------------------------------------------------------------------------------

def wavelengths(encoding: RotaryEncoding | PositionalEncoding, seq_len: int | None = None) -> np.ndarray:
    """Wavelength (positions per full turn) of each pair: ``2 pi / |d angle / dn|`` (inf for 0).

    ``seq_len`` (rotary encodings with ``inverse_frequencies``): the frequencies used for a
    sequence of that length, which differ from the short-sequence ones for length-dependent
    encodings (dynamic NTK, LongRoPE). Otherwise read from the phasors of positions 0 and 1."""
    if not hasattr(encoding, "phasors"):
        raise ValueError(f"encoding {encoding.name!r} has no phasors")
    if seq_len is not None and isinstance(encoding, RotaryEncoding):
        seq_len = check_int("seq_len", seq_len, 1)
        try:
            inv = encoding.inverse_frequencies(seq_len).double().numpy()
        except NotImplementedError:  # non-linear phases (the spirals): read the phasors below
            inv = None
        if inv is not None:
            with np.errstate(divide="ignore"):
                return np.where(inv > 0, 2 * np.pi / np.where(inv > 0, inv, 1.0), np.inf)
    z = encoding.phasors(np.array([0, 1]))
    step = np.abs(np.angle(z[1] * np.conj(z[0])))  # radians per position, folded to [0, pi]
    with np.errstate(divide="ignore"):
        return np.where(step > 0, 2 * np.pi / step, np.inf)


def spectral_summary(encoding: PositionalEncoding, length: int = 4096, n_dims: int = 8, top_peaks: int = 3) -> pd.DataFrame:
    """FFT of the first ``n_dims`` real dimensions over positions 0..length-1.

    Per dimension: the ``top_peaks`` peak frequencies (cycles/position) and the spectral
    entropy of the power spectrum (bits, normalised by log2 of the number of bins: 0 = a single
    tone, 1 = white noise).
    """
    if not hasattr(encoding, "phasors"):
        raise ValueError(f"encoding {encoding.name!r} has no phasors")
    length = check_int("length", length, 16)
    z = encoding.phasors(np.arange(length))
    real = np.stack((z.real, z.imag), axis=-1).reshape(length, -1)[:, :n_dims]
    freqs = np.fft.rfftfreq(length)
    rows = []
    for dim in range(real.shape[1]):
        power = np.abs(np.fft.rfft(real[:, dim] - real[:, dim].mean())) ** 2
        p = power / power.sum() if power.sum() > 0 else np.full_like(power, 1 / power.size)
        entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum() / np.log2(p.size))
        peaks = freqs[np.argsort(-power, kind="stable")[:top_peaks]]
        rows.append({"dim": dim, "entropy": entropy, **{f"peak{i + 1}": float(f) for i, f in enumerate(peaks)}})
    return pd.DataFrame(rows)


# --- relative-position behaviour -------------------------------------------------------------

def rope_decay_bound(inv_freq, distances) -> np.ndarray:
    """RoFormer's long-term decay bound: ``(1/(d/2)) sum_j |sum_{k<j} exp(i theta_k r)|`` per
    distance r (Su et al. 2021, section 3.4.3; the curve of their figure 2)."""
    theta = np.asarray(inv_freq, dtype=np.float64)
    r = np.asarray(distances, dtype=np.float64)
    partial = np.cumsum(np.exp(1j * r[:, None] * theta[None, :]), axis=1)
    return np.abs(partial).mean(axis=1)


@torch.no_grad()
def qk_similarity_vs_distance(encoding: PositionalEncoding, distances, n_samples: int = 64, seed: int = 0,
                              query: str = "random") -> np.ndarray:
    """Mean q.k / (|q||k|) between a query at position r and the same key vector at 0, through the
    encoding's own hooks (rotate, embed on a zero input, attn_bias added to the logit).

    ``query="random"``: q = k = Gaussian draws; ``"ones"``: q = k = all-ones (RoFormer's setting).
    """
    dist = check_int_array("distances", distances)
    check_choice("query", query, ("random", "ones"))
    gen = torch.Generator().manual_seed(seed)
    d = encoding.head_dim
    vec = torch.ones(1, d) if query == "ones" else torch.randn(n_samples, d, generator=gen)
    out = np.empty(dist.size)
    for i, r in enumerate(dist.tolist()):
        pos = torch.tensor([0, r]) if r > 0 else torch.tensor([0, 0])
        x = vec[:, None, None, :].expand(-1, 1, 2, -1).contiguous()
        q, k = encoding.rotate(x, x, pos)
        dot = (q[:, 0, 1] * k[:, 0, 0]).sum(-1) / (vec.norm(dim=-1) ** 2)
        bias = encoding.attn_bias(1, r + 1, "cpu", torch.float32) if r > 0 else None
        if bias is not None:
            dot = dot + bias[0, 0, 0]
        out[i] = float(dot.mean())
    return out


# --- attention maps from a trained model -----------------------------------------------------

def attention_entropy_by_distance(attn: torch.Tensor, max_distance: int | None = None) -> pd.DataFrame:
    """From causal attention maps [B, H, T, T] (e.g. ``lib.models.Transformer.attention_maps``):
    ``mass`` = mean attention probability on the key at each query-key distance, and
    ``entropy_at_query`` = mean attention entropy (nats) of the query at position = distance
    (a uniform causal map gives ln(t + 1)). DataFrame(distance, mass, entropy_at_query)."""
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attn must be [B, H, T, T], got {tuple(attn.shape)}")
    t = attn.shape[-1]
    p = attn.double().clamp_min(1e-30)
    entropy = -(attn.double() * p.log()).sum(-1).mean(dim=(0, 1))  # [T] per query position
    idx = torch.arange(t)
    dist = (idx[:, None] - idx[None, :]).clamp(min=-1)
    mass = torch.zeros(t, dtype=torch.float64)
    counts = torch.zeros(t, dtype=torch.float64)
    mean_map = attn.double().mean(dim=(0, 1))
    valid = dist >= 0
    mass.index_add_(0, dist[valid], mean_map[valid])
    counts.index_add_(0, dist[valid], torch.ones_like(mean_map[valid]))
    keep = max_distance or t
    return pd.DataFrame({"distance": np.arange(t)[:keep], "mass": (mass / counts).numpy()[:keep],
                         "entropy_at_query": entropy.numpy()[:keep]})


# --- cost ------------------------------------------------------------------------------------

def attention_forward(encoding: PositionalEncoding, seq_len: int, batch: int = 1, device: str = "cpu"):
    """A zero-argument closure running one causal attention forward (hooks + SDPA) on fixed
    random inputs of ``seq_len`` tokens: the unit that ``attention_cost`` and the benchmark time.
    A ``score_bias`` encoding (ALiBi) runs as the model runs it, through
    ``lib.encodings.bias_attention`` (flex from ``FLEX_MIN_TOKENS_CPU`` tokens on CPU)."""
    seq_len = check_int("seq_len", seq_len, 1)
    h, d = encoding.n_heads, encoding.head_dim
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, h, seq_len, d, generator=gen).to(device) for _ in range(3))
    x = torch.randn(batch, seq_len, encoding.d_model, generator=gen).to(device)
    pos = torch.arange(seq_len, device=device)

    @torch.no_grad()
    def run():
        encoding.embed(x, pos)
        q2, k2 = encoding.rotate(q, k, pos)
        if has_score_bias(encoding):
            return bias_attention(q2, k2, v, encoding)
        bias = encoding.attn_bias(seq_len, seq_len, device, q.dtype)
        if bias is None:
            return F.scaled_dot_product_attention(q2, k2, v, is_causal=True)
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
        return F.scaled_dot_product_attention(q2, k2, v, attn_mask=bias.masked_fill(~causal, float("-inf")))

    return run


def attention_cost(encoding: PositionalEncoding, seq_len: int, batch: int = 1, repeats: int = 5,
                   device: str = "cpu") -> dict:
    """Median seconds of one attention forward (``attention_forward``) and the encoding's extra
    bytes (cached cos/sin tables or the bias matrix, where it is materialised) at ``seq_len``."""
    run = attention_forward(encoding, seq_len, batch, device)
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    extra = 0
    if getattr(encoding, "_cache", None) is not None:
        extra += sum(t.numel() * t.element_size() for t in encoding._cache[2:])
    kernel_bias = has_score_bias(encoding) and choose_bias_path(encoding, seq_len, device) != "materialised"
    bias = None if kernel_bias else encoding.attn_bias(seq_len, seq_len, device, torch.float32)
    if bias is not None:  # a bias the kernel adds itself is never materialised
        extra += bias.numel() * bias.element_size()
    return {"encoding": encoding.name, "seq_len": seq_len, "seconds": float(np.median(times)), "extra_bytes": extra}


def kv_cache_nbytes(n_layers: int, batch: int, seq_len: int, n_kv_heads: int, head_dim: int,
                    bytes_per_element: int = 4) -> int:
    """Closed-form KV-cache size: 2 (K and V) * layers * batch * seq_len * kv_heads * head_dim * bytes."""
    return 2 * n_layers * batch * seq_len * n_kv_heads * head_dim * bytes_per_element
