"""The encodings that do not rotate queries and keys: ``none`` (NoPE), ``sinusoidal`` (absolute
vectors added to the token embeddings) and ``alibi`` (a bias on the attention logits, linear in
the query-key distance; ``alibi_slopes`` gives its per-head slopes). The rotary ones live in
``lib.encodings.rope`` and ``lib.encodings.spiral``, the additive pi-spiral in the latter.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lib.core import check_int, check_number, check_positive
from lib.encodings.base import ENCODINGS, PositionalEncoding


@ENCODINGS.register("none", set_name=True)
class NoPE(PositionalEncoding):
    """No positional information at all (causal masking alone breaks permutation symmetry)."""

    kind = "none"


@ENCODINGS.register("sinusoidal", set_name=True)
class Sinusoidal(PositionalEncoding):
    """Vaswani et al. (2017): PE(n, 2i) = sin(n / base**(2i/d)), PE(n, 2i+1) = cos(...), added
    to the token embeddings times ``scale`` (default 1)."""

    kind = "additive"

    def __init__(self, *, base: float = 10000.0, scale: float = 1.0, **dims):
        super().__init__(**dims)
        if self.d_model % 2:
            raise ValueError(f"sinusoidal encodings need an even d_model, got {self.d_model}")
        self.base = check_number("base", base, 1.0, strict_min=True)
        self.scale = check_positive("scale", scale)

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


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al. 2022): ``2**(-8 i / n)`` for i = 1..n when n is a power
    of two; otherwise the slopes of the closest smaller power of two ``m`` followed by every
    other slope of ``2m`` (the paper's reference implementation). float32 [n_heads]."""
    n_heads = check_int("n_heads", n_heads, 1)

    def power_of_two(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        m = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(m) + power_of_two(2 * m)[0::2][: n_heads - m]
    return torch.tensor(slopes, dtype=torch.float32)


@ENCODINGS.register("alibi", set_name=True)
class ALiBi(PositionalEncoding):
    """Attention with linear biases: logit(i, j) += -slope_h * (i - j) for keys j <= i.

    Queries are the last ``t_q`` of the ``t_k`` key positions (KV-cache convention); future
    keys get bias 0 (the causal mask removes them). No parameters beyond the head count.
    ``score_bias`` is the same bias as a function of positions, which the model adds inside
    FlexAttention (``lib.encodings.flex``) at long lengths instead of materialising [H, T, T].
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

    def score_bias(self, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        """``slope_h * (kv_idx - q_idx)``: ``attn_bias`` wherever the causal mask keeps a key
        (bitwise: the same float32 product), as a function for FlexAttention's ``score_mod``."""
        return self.slopes[head] * (kv_idx - q_idx).to(torch.float32)
