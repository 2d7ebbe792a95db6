"""What every positional encoding shares: the registry, the hook interface, the rotary math.

Every encoding is a ``PositionalEncoding`` module overriding any of six hooks (identity by
default), so one attention implementation serves them all:

- ``embed(x, positions)``       additive encodings, added to token embeddings [B, T, d_model]
- ``rotate(q, k, positions)``   rotary encodings, rotating queries and keys [B, H, T, head_dim]
  in transformers' half-split pair layout (pair i = features i, i + head_dim/2)
- ``rotate_packed(qk, n_q, positions)``  the same rotation as the model calls it: q and k packed
  as heads of one [B, T, Hq + Hk, head_dim] tensor in the *interleaved* pair layout (pair i =
  features 2i, 2i + 1: RoFormer's and Meta's Llama layout), where a rotation is one complex
  multiply each way (``lib.models.copy_to_hf`` permutes the weights to transformers' layout)
- ``attn_bias(t_q, t_k, ...)``  additive attention biases [H, t_q, t_k] (ALiBi)
- ``score_bias(head, q_idx, kv_idx)``  the same bias as a function of positions (ALiBi), which
  ``lib.encodings.flex`` adds inside the attention kernel without materialising it
- ``block_hook(i, h)``          called after block ``i`` (state-carrying variants)

This module holds ``ENCODINGS`` (a ``lib.core.Registry``), ``PositionalEncoding``, the rotary
math (``split_heads``, ``rotate_half``, ``signed_sine``, ``interleave_pairs`` /
``deinterleave_pairs``, ``rotate_interleaved``, ``apply_rotary``), ``RotaryEncoding`` (the base
of every rotary variant: cos/sin tables, their cache and both layouts) and ``build_encoding``.
The variants register themselves where they are defined: ``lib.encodings.rope`` (RoPE and its
context extensions), ``lib.encodings.absolute`` (none, sinusoidal, ALiBi),
``lib.encodings.spiral`` (the pi-spiral family) and ``lib.encodings.attractor``; the package
``__init__`` imports them all, so ``build_encoding`` sees every name whichever module is
imported first.

Every phase-type encoding also exposes ``phasors(positions) -> complex [N, pairs]``: the
(cos, sin) pairs it applies, as complex numbers. ``lib.encodings.diagnostics`` analyses those.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from lib.core import Registry, check_int

ENCODINGS: Registry[type[PositionalEncoding]] = Registry("encoding")


def register(name: str):
    """Class decorator adding an encoding to ``ENCODINGS`` under ``name`` and storing ``name``
    as its ``name`` attribute: shorthand for ``ENCODINGS.register(name, set_name=True)``."""
    return ENCODINGS.register(name, set_name=True)


class PositionalEncoding(nn.Module):
    """Base class: every hook is the identity. ``kind`` is one of rotary/additive/bias/none."""

    name = "base"
    kind = "none"

    def __init__(self, *, d_model: int, n_heads: int, head_dim: int, max_seq_len: int):
        super().__init__()
        self.d_model = check_int("d_model", d_model, 1)
        self.n_heads = check_int("n_heads", n_heads, 1)
        self.head_dim = check_int("head_dim", head_dim, 1)
        self.max_seq_len = check_int("max_seq_len", max_seq_len, 1)

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

    def score_bias(self, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        """The additive logit bias as a function of (head, query position, key position), on
        broadcastable integer tensors. An encoding whose bias is such a function overrides it,
        and ``lib.encodings.bias_attention`` then adds it inside the attention kernel
        (FlexAttention's ``score_mod``) instead of materialising [H, T, T]."""
        raise NotImplementedError(f"{type(self).__name__} has no score bias")

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


def build_encoding(name: str, *, d_model: int, n_heads: int, head_dim: int, max_seq_len: int,
                   **kwargs) -> PositionalEncoding:
    """Instantiate the registered encoding ``name`` for the given model dimensions."""
    cls = ENCODINGS.get_entry(name)
    try:
        return cls(d_model=d_model, n_heads=n_heads, head_dim=head_dim, max_seq_len=max_seq_len, **kwargs)
    except TypeError as err:  # unknown keyword: make it a ValueError naming the encoding
        raise ValueError(f"bad arguments for encoding {name!r}: {err}") from None
