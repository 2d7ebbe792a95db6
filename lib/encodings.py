"""Positional encodings: a registry of named variants plugged into ``lib.models``.

Every encoding is a ``PositionalEncoding`` module overriding any of four hooks (identity by
default), so one attention implementation serves them all:

- ``embed(x, positions)``       additive encodings, added to token embeddings [B, T, d_model]
- ``rotate(q, k, positions)``   rotary encodings, rotating queries and keys [B, H, T, head_dim]
- ``attn_bias(t_q, t_k, ...)``  additive attention biases [H, t_q, t_k] (ALiBi)
- ``block_hook(i, h)``          called after block ``i`` (state-carrying variants)

``build_encoding(name, d_model=..., n_heads=..., head_dim=..., max_seq_len=..., **kwargs)``
looks the name up in ``ENCODINGS``.
"""

from __future__ import annotations

import math

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


class PositionalEncoding(nn.Module):
    """Base class: every hook is the identity. ``kind`` is one of rotary/additive/bias/none."""

    name = "base"
    kind = "none"

    def __init__(self, *, d_model: int, n_heads: int, head_dim: int, max_seq_len: int):
        super().__init__()
        for arg, value in (("d_model", d_model), ("n_heads", n_heads), ("head_dim", head_dim),
                           ("max_seq_len", max_seq_len)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        self.d_model, self.n_heads, self.head_dim, self.max_seq_len = d_model, n_heads, head_dim, max_seq_len

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        return q, k

    def attn_bias(self, t_q: int, t_k: int, device, dtype) -> Tensor | None:
        return None

    def block_hook(self, layer_idx: int, h: Tensor) -> Tensor:
        return h

    def extra_repr(self) -> str:
        return f"name={self.name!r}, kind={self.kind!r}"


def rotate_half(x: Tensor) -> Tensor:
    """[x1, x2] -> [-x2, x1] on the last dim (the transformers / Llama pairing convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate q, k [B, H, T, D] by cos, sin [T, D] (half-split layout, as transformers)."""
    cos, sin = cos.to(q.dtype), sin.to(q.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


@register("none")
class NoPE(PositionalEncoding):
    """No positional information at all (causal masking alone breaks permutation symmetry)."""

    kind = "none"


@register("rope")
class RoPE(PositionalEncoding):
    """Rotary position embedding (Su et al. 2021): pair i rotates by ``pos * base**(-2i/d)``.

    Parameters: ``base`` (default 10000). Uses the half-split layout of transformers' Llama,
    so weights and logits match ``LlamaForCausalLM`` exactly.
    """

    kind = "rotary"

    def __init__(self, *, base: float = 10000.0, **dims):
        super().__init__(**dims)
        if not (isinstance(base, (int, float)) and base > 1 and math.isfinite(base)):
            raise ValueError(f"base must be a finite number > 1, got {base!r}")
        if self.head_dim % 2:
            raise ValueError(f"rotary encodings need an even head_dim, got {self.head_dim}")
        self.base = float(base)
        self.register_buffer("inv_freq", self.inverse_frequencies(), persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def inverse_frequencies(self) -> Tensor:
        """Angular frequency (radians per position) of each of the head_dim/2 pairs."""
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
        return (1.0 / self.base**exponent).float()

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin [T, head_dim] for integer ``positions`` [T]."""
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq.to(positions.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        t = positions.shape[0]
        cache = self._cache
        if cache is None or cache[0] < t or cache[1] != q.device or self.training is None:
            n = max(t, self.max_seq_len)
            cos, sin = self.cos_sin(torch.arange(n, device=q.device))
            self._cache = cache = (n, q.device, cos, sin)
        if bool((positions[:1] == 0).all()) and t <= cache[0] and positions.numel() == t:
            cos, sin = cache[2][:t], cache[3][:t]
        else:
            cos, sin = self.cos_sin(positions)
        return apply_rotary(q, k, cos, sin)

    def extra_repr(self) -> str:
        return f"base={self.base:g}"


def build_encoding(name: str, *, d_model: int, n_heads: int, head_dim: int, max_seq_len: int,
                   **kwargs) -> PositionalEncoding:
    """Instantiate the registered encoding ``name`` for the given model dimensions."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; registered: {sorted(ENCODINGS)}")
    return ENCODINGS[name](d_model=d_model, n_heads=n_heads, head_dim=head_dim,
                           max_seq_len=max_seq_len, **kwargs)
