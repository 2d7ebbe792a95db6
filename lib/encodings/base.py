"""Positional encodings: a registry of named variants plugged into ``lib.models``.

Every encoding is a ``PositionalEncoding`` module overriding any of four hooks (identity by
default), so one attention implementation serves them all:

- ``embed(x, positions)``       additive encodings, added to token embeddings [B, T, d_model]
- ``rotate(q, k, positions)``   rotary encodings, rotating queries and keys [B, H, T, head_dim]
  in transformers' half-split pair layout (pair i = features i, i + head_dim/2)
- ``rotate_packed(qk, n_q, positions)``  the same rotation as the model calls it: q and k packed
  as heads of one [B, T, Hq + Hk, head_dim] tensor in the *interleaved* pair layout (pair i =
  features 2i, 2i + 1: RoFormer's and Meta's Llama layout), where a rotation is one complex
  multiply each way (``lib.models.copy_to_hf`` permutes the weights to transformers' layout)
- ``attn_bias(t_q, t_k, ...)``  additive attention biases [H, t_q, t_k] (ALiBi)
- ``block_hook(i, h)``          called after block ``i`` (state-carrying variants)

``build_encoding(name, d_model=..., n_heads=..., head_dim=..., max_seq_len=..., **kwargs)``
looks the name up in ``ENCODINGS``. This module holds the rotary family (RoPE and its context
extensions, whose frequencies and attention scaling follow transformers'
``ROPE_INIT_FUNCTIONS``), NoPE, ALiBi and sinusoidal; ``lib.encodings.spiral`` adds the pi-spiral family
and ``lib.encodings.attractor`` the attractor state, both registering here.

Every phase-type encoding also exposes ``phasors(positions) -> complex [N, pairs]``: the
(cos, sin) pairs it applies, as complex numbers. ``lib.encodings.diagnostics`` analyses those.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

ENCODINGS: dict[str, type[PositionalEncoding]] = {}


def register(name: str):
    """Class decorator adding an encoding to ``ENCODINGS`` under ``name``."""

    def deco(cls):
        if name in ENCODINGS:
            raise ValueError(f"encoding {name!r} is registered twice")
        cls.name = name
        ENCODINGS[name] = cls
        return cls

    return deco


def _positive_number(arg: str, value, minimum: float = 0.0, strict: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        raise ValueError(f"{arg} must be a finite number {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


class PositionalEncoding(nn.Module):
    """Base class: every hook is the identity. ``kind`` is one of rotary/additive/bias/none."""

    name = "base"
    kind = "none"

    def __init__(self, *, d_model: int, n_heads: int, head_dim: int, max_seq_len: int):
        super().__init__()
        for arg, value in (("d_model", d_model), ("n_heads", n_heads), ("head_dim", head_dim),
                           ("max_seq_len", max_seq_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        self.d_model, self.n_heads, self.head_dim, self.max_seq_len = d_model, n_heads, head_dim, max_seq_len

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor]:
        """Rotate queries/keys [B, H, T, D]; ``positions`` None means 0..T-1."""
        return q, k

    def rotate_packed(self, qk: Tensor, n_q_heads: int, positions: Tensor | None) -> tuple[Tensor, Tensor]:
        """``rotate`` for queries and keys packed as heads of one tensor [B, T, Hq + Hk, D] (the
        layout a fused QKV projection produces) whose pairs are interleaved (pair i = features
        2i, 2i + 1): returns q [B, Hq, T, D], k [B, Hk, T, D], still interleaved.

        Rotary encodings rotate the packed tensor with one complex multiply; this default
        splits, and when a subclass defines its own (half-split) ``rotate``, converts the
        layout around it: ``deinterleave_pairs(rotate_packed(x)) == rotate(deinterleave_pairs(x))``."""
        if type(self).rotate is PositionalEncoding.rotate:  # no rotation: the layout is irrelevant
            return split_heads(qk, n_q_heads)
        q, k = self.rotate(*split_heads(deinterleave_pairs(qk), n_q_heads), positions)
        return interleave_pairs(q), interleave_pairs(k)

    def attn_bias(self, t_q: int, t_k: int, device, dtype) -> Tensor | None:
        return None

    def block_hook(self, layer_idx: int, h: Tensor) -> Tensor:
        return h

    def extra_repr(self) -> str:
        return f"name={self.name!r}, kind={self.kind!r}"


def split_heads(qk: Tensor, n_q_heads: int) -> tuple[Tensor, Tensor]:
    """Queries and keys packed as heads [B, T, Hq + Hk, D] -> q [B, Hq, T, D], k [B, Hk, T, D]
    (views). One ``split``, whose backward is one concatenation: two slices would each
    backpropagate a zero-filled full-size gradient, then add them."""
    q, k = qk.split((n_q_heads, qk.shape[2] - n_q_heads), dim=2)
    return q.transpose(1, 2), k.transpose(1, 2)


def rotate_half(x: Tensor) -> Tensor:
    """[x1, x2] -> [-x2, x1] on the last dim (the transformers / Llama pairing convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def signed_sine(sin: Tensor) -> Tensor:
    """[-sin_1, sin_2] on the last dim: ``rotate_half(x) * sin == x.roll(D/2) * signed_sine(sin)``
    bitwise (a sign flip is exact), and a roll is one copy forward and backward where
    rotate_half is a neg plus a cat each way."""
    h = sin.shape[-1] // 2
    return torch.cat((-sin[..., :h], sin[..., h:]), dim=-1)


def interleave_pairs(x: Tensor) -> Tensor:
    """Half-split pairs (i, i + D/2) to interleaved pairs (2i, 2i + 1) on the last dim (a copy)."""
    return x.unflatten(-1, (2, x.shape[-1] // 2)).transpose(-1, -2).flatten(-2)


def deinterleave_pairs(x: Tensor) -> Tensor:
    """Interleaved pairs (2i, 2i + 1) to half-split pairs (i, i + D/2): ``interleave_pairs``'s
    inverse. On a projection's rows per head it is transformers' ``permute`` in
    ``convert_llama_weights_to_hf`` (Meta layout to HF layout)."""
    return x.unflatten(-1, (x.shape[-1] // 2, 2)).transpose(-1, -2).flatten(-2)


def rotate_interleaved(x: Tensor, cos_sin: Tensor) -> Tensor:
    """Rotate ``x`` [..., D] whose pairs are interleaved by the angles whose (cos, sin) are
    ``cos_sin`` (real [..., D/2, 2], broadcast against x's leading dims): one complex multiply
    (Meta's Llama ``apply_rotary_emb``); half-precision inputs are rotated in float32 and cast
    back. Under ``torch.compile`` the same rotation is written in real arithmetic (no complex
    tensors, which inductor does not generate code for) for the compiler to fuse."""
    if torch.compiler.is_compiling():
        pairs = x.unflatten(-1, (-1, 2))
        c, s = cos_sin[..., 0].to(x.dtype), cos_sin[..., 1].to(x.dtype)
        x0, x1 = pairs[..., 0], pairs[..., 1]
        return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    z = torch.view_as_complex(wide.unflatten(-1, (-1, 2)))
    out = torch.view_as_real(z * torch.view_as_complex(cos_sin).to(z.dtype)).flatten(-2)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _rotate(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def apply_rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate q, k [B, H, T, D] by cos, sin [T, D] or [B, T, D] (half-split layout, as transformers)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    cos, signed_sin = cos.to(q.dtype), signed_sine(sin).to(q.dtype)
    return _rotate(q, cos, signed_sin), _rotate(k, cos, signed_sin)


@register("none")
class NoPE(PositionalEncoding):
    """No positional information at all (causal masking alone breaks permutation symmetry)."""

    kind = "none"


class RotaryEncoding(PositionalEncoding):
    """Base of every rotary variant: pair i of each head rotates by ``angle_i(n)``.

    Subclasses define ``inverse_frequencies(seq_len)`` (radians per position, [head_dim/2],
    float32 exactly as transformers computes it) and may set ``attention_scaling`` (cos and sin
    are multiplied by it, so attention logits scale by its square, as in transformers) or
    override ``angles`` (non-linear phases). Layout: half-split pairs (i, i + head_dim/2).
    """

    kind = "rotary"
    attention_scaling = 1.0
    cache_ok = True  # cos/sin depend on the position alone (not on the sequence length)

    def __init__(self, **dims):
        super().__init__(**dims)
        if self.head_dim % 2:
            raise ValueError(f"rotary encodings need an even head_dim, got {self.head_dim}")
        # (rows, device, cos, signed sine) for positions 0..rows-1, built on first use.
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None
        self._pairs_cache: tuple[Tensor, Tensor] | None = None  # (the cache's cos, [rows, D/2, 2])

    def inverse_frequencies(self, seq_len: int | None = None) -> Tensor:
        raise NotImplementedError

    def angles(self, positions: Tensor) -> Tensor:
        """Rotation angle (radians) of every pair: [..., head_dim/2] for positions [...]."""
        seq_len = int(positions.max()) + 1 if positions.numel() else 1
        inv_freq = self.inverse_frequencies(seq_len).to(positions.device)
        return positions[..., None].float() * inv_freq

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin [..., head_dim] (times ``attention_scaling``) for integer ``positions`` [...]."""
        emb = self.angles(positions)
        emb = torch.cat((emb, emb), dim=-1)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling

    def phasors(self, positions) -> np.ndarray:
        """complex128 [N, head_dim/2]: ``cos + i sin`` of each pair (for diagnostics)."""
        pos = torch.as_tensor(np.asarray(positions), dtype=torch.long)
        cos, sin = self.cos_sin(pos)
        half = self.head_dim // 2
        return cos[..., :half].double().numpy() + 1j * sin[..., :half].double().numpy()

    def _cached(self, t: int, positions: Tensor | None, device) -> tuple[Tensor, Tensor] | None:
        """cos, signed sine [t, D] of positions 0..t-1 from the cache, when ``positions``
        (None, or [T] equal to 0..T-1) allows it; None otherwise."""
        if not self.cache_ok or (positions is not None and positions.dim() != 1):
            return None
        cache = self._cache
        if cache is None or cache[0] < t or cache[1] != device:
            n = max(t, self.max_seq_len)
            cos, sin = self.cos_sin(torch.arange(n, device=device))
            self._cache = cache = (n, device, cos, signed_sine(sin))
        if positions is None or bool((positions == torch.arange(t, device=positions.device)).all()):
            return cache[2][:t], cache[3][:t]
        return None

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor]:
        """``positions`` [T] or [B, T] integer positions; None means 0..T-1 (no host sync)."""
        t = q.shape[-2] if positions is None else positions.shape[-1]
        cached = self._cached(t, positions, q.device)
        if cached is not None:
            cos, signed_sin = cached[0].to(q.dtype), cached[1].to(q.dtype)
            return _rotate(q, cos, signed_sin), _rotate(k, cos, signed_sin)
        if positions is None:
            positions = torch.arange(t, device=q.device)
        cos, sin = self.cos_sin(positions)
        return apply_rotary(q, k, cos, sin)

    def rotate_packed(self, qk: Tensor, n_q_heads: int, positions: Tensor | None) -> tuple[Tensor, Tensor]:
        if type(self).rotate is not RotaryEncoding.rotate:  # a subclass's own (half-split) rotation
            return super().rotate_packed(qk, n_q_heads, positions)
        t = qk.shape[1] if positions is None else positions.shape[-1]
        cos_sin = self._cos_sin_pairs(t, positions, qk.device)  # [T, D/2, 2] or [B, T, D/2, 2]
        return split_heads(rotate_interleaved(qk, cos_sin.unsqueeze(-3)), n_q_heads)  # one multiply for q and k

    def _cos_sin_pairs(self, t: int, positions: Tensor | None, device) -> Tensor:
        """float32 (cos, sin) of every pair, [T, D/2, 2] for positions 0..t-1 (cached like
        ``_cached``) or [..., T, D/2, 2] for ``positions`` [T] / [B, T]."""
        half = self.head_dim // 2
        cached = self._cached(t, positions, device)
        if cached is None:
            if positions is None:
                positions = torch.arange(t, device=device)
            cos, sin = self.cos_sin(positions)
            return torch.stack((cos[..., :half].float(), sin[..., :half].float()), dim=-1)
        cos, signed_sin = self._cache[2], self._cache[3]
        if self._pairs_cache is None or self._pairs_cache[0] is not cos:  # built from this cos/sin table
            self._pairs_cache = (cos, torch.stack((cos[:, :half].float(), signed_sin[:, half:].float()), dim=-1))
        return self._pairs_cache[1][:t]


def _rope_inv_freq(base: float, dim: int, device=None) -> Tensor:
    """transformers' float32 formula ``1 / base**(arange(0, dim, 2) / dim)``."""
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    return 1.0 / (base ** exponent)


@register("rope")
class RoPE(RotaryEncoding):
    """Rotary position embedding (Su et al. 2021): pair i rotates by ``n * base**(-2i/d)``.

    Parameters: ``base`` (default 10000). Uses the half-split layout and the float32 frequency
    formula of transformers' Llama, so logits match ``LlamaForCausalLM`` exactly.
    """

    def __init__(self, *, base: float = 10000.0, **dims):
        super().__init__(**dims)
        self.base = _positive_number("base", base, minimum=1.0)
        self.register_buffer("inv_freq", self.inverse_frequencies(), persistent=False)

    def rotary_dim(self) -> int:
        return self.head_dim

    def base_inv_freq(self) -> Tensor:
        """Unscaled RoPE frequencies of the rotated dims, zero-padded to head_dim/2 pairs."""
        inv = _rope_inv_freq(self.base, self.rotary_dim())
        pad = self.head_dim // 2 - inv.numel()
        return torch.cat((inv, torch.zeros(pad))) if pad else inv

    def inverse_frequencies(self, seq_len: int | None = None) -> Tensor:
        return self.base_inv_freq()

    def angles(self, positions: Tensor) -> Tensor:
        return positions[..., None].float() * self.inv_freq.to(positions.device)

    def extra_repr(self) -> str:
        return f"base={self.base:g}"


@register("rope_partial")
class PartialRoPE(RoPE):
    """RoPE on a fraction of each head (GPT-NeoX / Phi ``partial_rotary_factor``).

    ``rotary_fraction`` in (0, 1]: the first ``int(head_dim * f) / 2`` pairs rotate with the
    RoPE frequencies of a ``head_dim * f``-dim head (transformers' ``partial_rotary_factor``
    convention); the other pairs have frequency 0 and pass through unrotated (a fixed
    permutation of NeoX's contiguous layout, so attention is the same up to a relabelling).
    """

    def __init__(self, *, rotary_fraction: float = 0.5, base: float = 10000.0, **dims):
        f = _positive_number("rotary_fraction", rotary_fraction)
        if f > 1:
            raise ValueError(f"rotary_fraction must be in (0, 1], got {rotary_fraction!r}")
        self.rotary_fraction = f
        head_dim = dims.get("head_dim")
        if isinstance(head_dim, int) and (int(head_dim * f) < 2 or int(head_dim * f) % 2):
            raise ValueError(f"head_dim * rotary_fraction must be an even integer >= 2, got {head_dim * f}")
        super().__init__(base=base, **dims)

    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)


@register("rope_linear")
class LinearScaledRoPE(RoPE):
    """Position interpolation (Chen et al. 2023): positions divided by ``factor`` (= inv_freq / factor)."""

    def __init__(self, *, factor: float = 2.0, base: float = 10000.0, **dims):
        self.factor = _positive_number("factor", factor, minimum=1.0, strict=False)
        super().__init__(base=base, **dims)

    def inverse_frequencies(self, seq_len: int | None = None) -> Tensor:
        return self.base_inv_freq() / self.factor


@register("rope_ntk")
class NTKScaledRoPE(RoPE):
    """Static NTK-aware scaling (bloc97 2023): ``base' = base * factor**(d / (d - 2))``.

    High frequencies are kept (local order intact), the lowest is interpolated by ``factor``.
    """

    def __init__(self, *, factor: float = 2.0, base: float = 10000.0, **dims):
        self.factor = _positive_number("factor", factor, minimum=1.0, strict=False)
        d = dims.get("head_dim", 2)
        super().__init__(base=base * self.factor ** (d / (d - 2)) if d > 2 else base, **dims)
        self.original_base = float(base)


@register("rope_dynamic")
class DynamicNTKRoPE(RoPE):
    """Dynamic NTK (emozilla 2023): NTK base re-derived from the current length ``L``.

    ``base' = base * (factor * L / L0 - (factor - 1)) ** (d / (d - 2))`` for ``L > L0``
    (``L0 = original_max_seq_len``, default ``max_seq_len``), plain RoPE below; ``L`` is the
    largest position + 1 of the call, as transformers' ``dynamic`` type.
    """

    cache_ok = False

    def __init__(self, *, factor: float = 2.0, base: float = 10000.0, original_max_seq_len: int | None = None,
                 **dims):
        self.factor = _positive_number("factor", factor, minimum=1.0, strict=False)
        if original_max_seq_len is not None and (not isinstance(original_max_seq_len, int) or original_max_seq_len <= 0):
            raise ValueError(f"original_max_seq_len must be a positive integer, got {original_max_seq_len!r}")
        self.original_max_seq_len = int(original_max_seq_len or dims.get("max_seq_len") or 1)
        super().__init__(base=base, **dims)

    def inverse_frequencies(self, seq_len: int | None = None) -> Tensor:
        seq_len = max(int(seq_len or self.original_max_seq_len), self.original_max_seq_len)
        d = self.head_dim
        base = self.base * ((self.factor * seq_len / self.original_max_seq_len) - (self.factor - 1)) ** (d / (d - 2))
        return _rope_inv_freq(base, d)

    def angles(self, positions: Tensor) -> Tensor:
        return RotaryEncoding.angles(self, positions)


@register("yarn")
class YaRN(RoPE):
    """YaRN (Peng et al. 2023): NTK-by-parts frequency ramp plus attention temperature.

    Pairs whose wavelength is short against ``original_max_seq_len`` (more than ``beta_fast``
    rotations) keep their frequency, long ones (< ``beta_slow`` rotations) are interpolated by
    ``factor``, a linear ramp in between. cos/sin are scaled by ``attention_factor``
    (default ``0.1 ln(factor) + 1``, or the ``mscale``/``mscale_all_dim`` ratio), so logits
    scale by its square. Same keys and defaults as transformers' ``yarn`` rope_parameters.
    """

    def __init__(self, *, factor: float = 4.0, original_max_seq_len: int | None = None, base: float = 10000.0,
                 beta_fast: float = 32.0, beta_slow: float = 1.0, attention_factor: float | None = None,
                 mscale: float | None = None, mscale_all_dim: float | None = None, truncate: bool = True,
                 **dims):
        self.factor = _positive_number("factor", factor, minimum=1.0, strict=False)
        self.beta_fast = _positive_number("beta_fast", beta_fast)
        self.beta_slow = _positive_number("beta_slow", beta_slow)
        self.truncate = bool(truncate)
        self._original = original_max_seq_len

        def get_mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if attention_factor is None:
            if mscale and mscale_all_dim:
                attention_factor = get_mscale(self.factor, mscale) / get_mscale(self.factor, mscale_all_dim)
            else:
                attention_factor = get_mscale(self.factor)
        self.attention_scaling = _positive_number("attention_factor", attention_factor)
        super().__init__(base=base, **dims)

    @property
    def original_max_seq_len(self) -> int:
        return int(self._original or self.max_seq_len)

    def inverse_frequencies(self, seq_len: int | None = None) -> Tensor:
        dim, base, orig = self.head_dim, self.base, self.original_max_seq_len

        def correction_dim(rotations):
            return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
        extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (self.factor * pos_freqs)
        keep = 1 - ramp
        return interpolation * (1 - keep) + extrapolation * keep


@register("llama3")
class Llama3RoPE(RoPE):
    """Llama 3.1 frequency scaling: wavelengths above ``L0 / low_freq_factor`` are divided by
    ``factor``, below ``L0 / high_freq_factor`` kept, smooth interpolation between
    (``L0 = original_max_seq_len``). Same keys as transformers' ``llama3`` rope_parameters.
    """

    def __init__(self, *, factor: float = 8.0, low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                 original_max_seq_len: int | None = None, base: float = 500000.0, **dims):
        self.factor = _positive_number("factor", factor, minimum=1.0, strict=False)
        self.low_freq_factor = _positive_number("low_freq_factor", low_freq_factor)
        self.high_freq_factor = _positive_number("high_freq_factor", high_freq_factor)
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})")
        self._original = original_max_seq_len
        super().__init__(base=base, **dims)

    def inverse_frequencies(self, seq_len: int | None = None) -> Tensor:
        inv_freq = self.base_inv_freq()
        old = int(self._original or self.max_seq_len)
        low_wavelen, high_wavelen = old / self.low_freq_factor, old / self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
        smooth = (old / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al. 2022): ``2**(-8 i / n)`` for i = 1..n when n is a power
    of two; otherwise the slopes of the closest smaller power of two ``m`` followed by every
    other slope of ``2m`` (the paper's reference implementation). float32 [n_heads]."""
    if not isinstance(n_heads, int) or n_heads <= 0:
        raise ValueError(f"n_heads must be a positive integer, got {n_heads!r}")

    def power_of_two(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        m = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(m) + power_of_two(2 * m)[0::2][: n_heads - m]
    return torch.tensor(slopes, dtype=torch.float32)


@register("alibi")
class ALiBi(PositionalEncoding):
    """Attention with linear biases: logit(i, j) += -slope_h * (i - j) for keys j <= i.

    Queries are the last ``t_q`` of the ``t_k`` key positions (KV-cache convention); future
    keys get bias 0 (the causal mask removes them). No parameters beyond the head count.
    """

    kind = "bias"

    def __init__(self, **dims):
        super().__init__(**dims)
        self.register_buffer("slopes", alibi_slopes(self.n_heads), persistent=False)

    def attn_bias(self, t_q: int, t_k: int, device, dtype) -> Tensor:
        if t_q > t_k:
            raise ValueError(f"t_q ({t_q}) must be <= t_k ({t_k})")
        q_pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]
        k_pos = torch.arange(t_k, device=device)[None, :]
        dist = (q_pos - k_pos).clamp(min=0).to(torch.float32)
        return (-self.slopes.to(device)[:, None, None] * dist).to(dtype)


@register("sinusoidal")
class Sinusoidal(PositionalEncoding):
    """Vaswani et al. (2017): PE(n, 2i) = sin(n / base**(2i/d)), PE(n, 2i+1) = cos(...), added
    to the token embeddings times ``scale`` (default 1)."""

    kind = "additive"

    def __init__(self, *, base: float = 10000.0, scale: float = 1.0, **dims):
        super().__init__(**dims)
        if self.d_model % 2:
            raise ValueError(f"sinusoidal encodings need an even d_model, got {self.d_model}")
        self.base = _positive_number("base", base, minimum=1.0)
        self.scale = _positive_number("scale", scale)

    def table(self, positions: Tensor) -> Tensor:
        """[..., d_model] float32 encoding vectors."""
        i = torch.arange(0, self.d_model, 2, dtype=torch.float64, device=positions.device)
        ang = positions[..., None].double() / self.base ** (i / self.d_model)
        out = torch.stack((ang.sin(), ang.cos()), dim=-1).flatten(-2)
        return (out * self.scale).float()

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x + self.table(positions).to(x.dtype)

    def phasors(self, positions) -> np.ndarray:
        t = self.table(torch.as_tensor(np.asarray(positions), dtype=torch.long)).double().numpy()
        return t[..., 1::2] + 1j * t[..., 0::2]


def build_encoding(name: str, *, d_model: int, n_heads: int, head_dim: int, max_seq_len: int,
                   **kwargs) -> PositionalEncoding:
    """Instantiate the registered encoding ``name`` for the given model dimensions."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; registered: {sorted(ENCODINGS)}")
    try:
        return ENCODINGS[name](d_model=d_model, n_heads=n_heads, head_dim=head_dim,
                               max_seq_len=max_seq_len, **kwargs)
    except TypeError as err:  # unknown keyword: make it a ValueError naming the encoding
        raise ValueError(f"bad arguments for encoding {name!r}: {err}") from None
