"""The RoPE family: rotary position embedding and its context extensions, one class per named
variant (as transformers' ``modeling_rope_utils.py`` has one init function per rope type).

Registered name, class, and the transformers ``rope_type`` (or config key) it reproduces:

- ``rope``          ``RoPE``              ``default``
- ``rope_partial``  ``PartialRoPE``       ``partial_rotary_factor``
- ``rope_linear``   ``LinearScaledRoPE``  ``linear``
- ``rope_ntk``      ``NTKScaledRoPE``     none (the static NTK-aware base)
- ``rope_dynamic``  ``DynamicNTKRoPE``    ``dynamic``
- ``yarn``          ``YaRN``              ``yarn``
- ``llama3``        ``Llama3RoPE``        ``llama3``
- ``longrope``      ``LongRoPE``          ``longrope``
- ``rope_proportional`` ``ProportionalRoPE`` ``proportional``

Each variant defines ``inverse_frequencies(seq_len)`` (float32 [head_dim/2], computed with the
operations of transformers' ``ROPE_INIT_FUNCTIONS``, against which the tests check them) and, for YaRN and
LongRoPE, ``attention_scaling``; ``lib.encodings.base.RotaryEncoding`` turns them into cos/sin and
rotations. ``original_max_seq_len`` (transformers' ``original_max_position_embeddings``)
defaults to the model's ``max_seq_len``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lib.core import check_bool, check_int, check_number, check_positive
from lib.encodings.base import ENCODINGS, RotaryEncoding


def _rope_inv_freq(base: float, dim: int, device=None) -> Tensor:
    """transformers' float32 formula ``1 / base**(arange(0, dim, 2) / dim)``."""
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    return 1.0 / (base ** exponent)


def _check_factor(factor) -> float:
    """A context-extension factor: 1 leaves the frequencies as they are, below 1 would shrink the context."""
    return check_number("factor", factor, 1.0)


def _original_length(original_max_seq_len, dims: dict) -> int:
    """The context length the unscaled frequencies were trained for (``max_seq_len`` by default)."""
    if original_max_seq_len is None:
        return check_int("max_seq_len", dims.get("max_seq_len"), 1)
    return check_int("original_max_seq_len", original_max_seq_len, 1)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature ``0.1 * mscale * ln(scale) + 1`` (1 without extension)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


@ENCODINGS.register("rope", set_name=True)
class RoPE(RotaryEncoding):
    """Rotary position embedding (Su et al. 2021): pair i rotates by ``n * base**(-2i/d)``.

    Parameters: ``base`` (default 10000). Uses the half-split layout and the float32 frequency
    formula of transformers' Llama, so logits match ``LlamaForCausalLM`` exactly.
    """

    def __init__(self, *, base: float = 10000.0, **dims):
        super().__init__(**dims)
        self.base = check_number("base", base, 1.0, strict_min=True)
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


@ENCODINGS.register("rope_partial", set_name=True)
class PartialRoPE(RoPE):
    """RoPE on a fraction of each head (GPT-NeoX / Phi ``partial_rotary_factor``).

    ``rotary_fraction`` in (0, 1]: the first ``int(head_dim * f) / 2`` pairs rotate with the
    RoPE frequencies of a ``head_dim * f``-dim head (transformers' ``partial_rotary_factor``
    convention); the other pairs have frequency 0 and pass through unrotated (a fixed
    permutation of NeoX's contiguous layout, so attention is the same up to a relabelling).
    """

    def __init__(self, *, rotary_fraction: float = 0.5, base: float = 10000.0, **dims):
        self.rotary_fraction = check_number("rotary_fraction", rotary_fraction, 0.0, 1.0, strict_min=True)
        # Checked before RoPE.__init__, which builds the frequencies of the rotated dims.
        rotated = check_int("head_dim", dims.get("head_dim"), 1) * self.rotary_fraction
        if int(rotated) < 2 or int(rotated) % 2:
            raise ValueError(f"head_dim * rotary_fraction must be an even integer >= 2, got {rotated}")
        super().__init__(base=base, **dims)

    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)


@ENCODINGS.register("rope_linear", set_name=True)
class LinearScaledRoPE(RoPE):
    """Position interpolation (Chen et al. 2023): positions divided by ``factor`` (= inv_freq / factor)."""

    def __init__(self, *, factor: float = 2.0, base: float = 10000.0, **dims):
        self.factor = _check_factor(factor)
        super().__init__(base=base, **dims)

    def inverse_frequencies(self, seq_len: int | None = None) -> Tensor:
        return self.base_inv_freq() / self.factor


@ENCODINGS.register("rope_ntk", set_name=True)
class NTKScaledRoPE(RoPE):
    """Static NTK-aware scaling (bloc97 2023): ``base' = base * factor**(d / (d - 2))``.

    High frequencies are kept (local order intact), the lowest is interpolated by ``factor``.
    ``base`` is the scaled base, ``original_base`` the one given.
    """

    def __init__(self, *, factor: float = 2.0, base: float = 10000.0, **dims):
        self.factor = _check_factor(factor)
        self.original_base = check_number("base", base, 1.0, strict_min=True)
        d = dims.get("head_dim", 2)
        scaled = self.original_base * self.factor ** (d / (d - 2)) if d > 2 else self.original_base
        super().__init__(base=scaled, **dims)


@ENCODINGS.register("rope_dynamic", set_name=True)
class DynamicNTKRoPE(RoPE):
    """Dynamic NTK (emozilla 2023): NTK base re-derived from the current length ``L``.

    ``base' = base * (factor * L / L0 - (factor - 1)) ** (d / (d - 2))`` for ``L > L0``
    (``L0 = original_max_seq_len``, default ``max_seq_len``), plain RoPE below; ``L`` is the
    largest position + 1 of the call, as transformers' ``dynamic`` type.
    """

    cache_ok = False

    def __init__(self, *, factor: float = 2.0, base: float = 10000.0, original_max_seq_len: int | None = None,
                 **dims):
        self.factor = _check_factor(factor)
        self.original_max_seq_len = _original_length(original_max_seq_len, dims)
        super().__init__(base=base, **dims)

    def inverse_frequencies(self, seq_len: int | None = None) -> Tensor:
        seq_len = max(int(seq_len or self.original_max_seq_len), self.original_max_seq_len)
        d = self.head_dim
        base = self.base * ((self.factor * seq_len / self.original_max_seq_len) - (self.factor - 1)) ** (d / (d - 2))
        return _rope_inv_freq(base, d)

    def angles(self, positions: Tensor) -> Tensor:
        # The frequencies depend on the call's length: RotaryEncoding.angles asks for them
        # each time, where RoPE.angles reads the fixed buffer.
        return RotaryEncoding.angles(self, positions)


@ENCODINGS.register("yarn", set_name=True)
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
        self.factor = _check_factor(factor)
        self.beta_fast = check_positive("beta_fast", beta_fast)
        self.beta_slow = check_positive("beta_slow", beta_slow)
        self.truncate = check_bool("truncate", truncate)
        self.original_max_seq_len = _original_length(original_max_seq_len, dims)
        if attention_factor is None:
            if mscale and mscale_all_dim:
                attention_factor = _yarn_mscale(self.factor, mscale) / _yarn_mscale(self.factor, mscale_all_dim)
            else:
                attention_factor = _yarn_mscale(self.factor)
        self.attention_scaling = check_positive("attention_factor", attention_factor)
        super().__init__(base=base, **dims)

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


@ENCODINGS.register("llama3", set_name=True)
class Llama3RoPE(RoPE):
    """Llama 3.1 frequency scaling: wavelengths above ``L0 / low_freq_factor`` are divided by
    ``factor``, below ``L0 / high_freq_factor`` kept, smooth interpolation between
    (``L0 = original_max_seq_len``). Same keys as transformers' ``llama3`` rope_parameters.
    """

    def __init__(self, *, factor: float = 8.0, low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                 original_max_seq_len: int | None = None, base: float = 500000.0, **dims):
        self.factor = _check_factor(factor)
        self.low_freq_factor = check_positive("low_freq_factor", low_freq_factor)
        self.high_freq_factor = check_positive("high_freq_factor", high_freq_factor)
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})")
        self.original_max_seq_len = _original_length(original_max_seq_len, dims)
        super().__init__(base=base, **dims)

    def inverse_frequencies(self, seq_len: int | None = None) -> Tensor:
        inv_freq = self.base_inv_freq()
        old = self.original_max_seq_len
        low_wavelen, high_wavelen = old / self.low_freq_factor, old / self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
        smooth = (old / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)


def _ntk_extension_factors(factor: float, pairs: int) -> list[float]:
    """Per-pair divisors of the NTK-aware base change ``base * factor**(d / (d - 2))``:
    pair i's frequency is divided by ``factor**(i / (pairs - 1))`` (1 for the fastest pair,
    ``factor`` for the slowest); a single pair is divided by ``factor``."""
    if pairs == 1:
        return [float(factor)]
    return [float(factor) ** (i / (pairs - 1)) for i in range(pairs)]


def _check_factor_list(name: str, values, pairs: int) -> list[float]:
    """A LongRoPE rescale list: ``pairs`` finite numbers > 0 (one divisor per rotated pair)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{name} must be a list of {pairs} numbers > 0, got {values!r}")
    values = [check_number(f"{name}[{i}]", v, 0.0, strict_min=True) for i, v in enumerate(values)]
    if len(values) != pairs:
        raise ValueError(f"{name} must have {pairs} entries (rotated head dims / 2), got {len(values)}")
    return values


@ENCODINGS.register("longrope", set_name=True)
class LongRoPE(RoPE):
    """LongRoPE (Ding et al. 2024; Phi-3's ``longrope``): every rotated pair has its own
    rescale factor, ``inv_freq_i = 1 / (lambda_i * base**(2i/d))``, with ``short_factor``
    while the sequence is at most ``original_max_seq_len`` (``L0``) and ``long_factor`` beyond
    it (chosen per call from its largest position, as transformers' ``longrope`` update).

    ``factor`` (default ``max_seq_len / original_max_seq_len``, as transformers derives it from
    ``max_position_embeddings``) sets the attention factor ``sqrt(1 + ln(factor) / ln(L0))``
    (1 when ``factor <= 1``) unless ``attention_factor`` is given; cos and sin are scaled by it
    at every length. LongRoPE finds its factors by evolutionary search; without them
    ``short_factor`` defaults to ones (plain RoPE) and ``long_factor`` to the NTK-aware
    divisors ``factor**(i / (pairs - 1))``, the NTK point of that search space.
    ``rotary_fraction`` < 1 rotates the first pairs only (transformers' ``partial_rotary_factor``),
    the rest have frequency 0. Same keys as transformers' ``longrope`` rope_parameters.
    """

    cache_ok = False

    def __init__(self, *, short_factor=None, long_factor=None, factor: float | None = None,
                 original_max_seq_len: int | None = None, attention_factor: float | None = None,
                 rotary_fraction: float = 1.0, base: float = 10000.0, **dims):
        self.rotary_fraction = check_number("rotary_fraction", rotary_fraction, 0.0, 1.0, strict_min=True)
        head_dim = check_int("head_dim", dims.get("head_dim"), 1)
        rotated = int(head_dim * self.rotary_fraction)
        if rotated < 2 or rotated % 2:
            raise ValueError(f"int(head_dim * rotary_fraction) must be an even integer >= 2, got {rotated}")
        pairs = rotated // 2
        self.original_max_seq_len = _original_length(original_max_seq_len, dims)
        if factor is None:
            factor = check_int("max_seq_len", dims.get("max_seq_len"), 1) / self.original_max_seq_len
        self.factor = check_positive("factor", factor)
        self.short_factor = _check_factor_list("short_factor", [1.0] * pairs if short_factor is None
                                               else short_factor, pairs)
        self.long_factor = _check_factor_list("long_factor", _ntk_extension_factors(max(self.factor, 1.0), pairs)
                                              if long_factor is None else long_factor, pairs)
        if attention_factor is None:
            attention_factor = (1.0 if self.factor <= 1.0 else
                                math.sqrt(1 + math.log(self.factor) / math.log(self.original_max_seq_len)))
        self.attention_scaling = check_positive("attention_factor", attention_factor)
        super().__init__(base=base, **dims)

    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    def inverse_frequencies(self, seq_len: int | None = None) -> Tensor:
        long = seq_len is not None and seq_len > self.original_max_seq_len
        ext = torch.tensor(self.long_factor if long else self.short_factor, dtype=torch.float32)
        dim = self.rotary_dim()
        shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        inv = 1.0 / (ext * self.base ** shape)
        pad = self.head_dim // 2 - inv.numel()
        return torch.cat((inv, torch.zeros(pad))) if pad else inv

    def angles(self, positions: Tensor) -> Tensor:
        # Short or long factors follow the call's length: RotaryEncoding.angles asks for the
        # frequencies of each call, where RoPE.angles reads the fixed buffer.
        return RotaryEncoding.angles(self, positions)

    def extra_repr(self) -> str:
        return f"base={self.base:g}, factor={self.factor:g}, original_max_seq_len={self.original_max_seq_len}"


@ENCODINGS.register("rope_proportional", set_name=True)
class ProportionalRoPE(RoPE):
    """Proportional RoPE (transformers' ``proportional`` type; p-RoPE of Barbero et al. 2024):
    only the ``floor(rotary_fraction * head_dim / 2)`` fastest pairs rotate, each at its
    full-head RoPE frequency ``base**(-2i/head_dim)``; the slowest pairs have frequency 0 and
    carry no position. All frequencies are divided by ``factor`` (1: none).

    It differs from ``rope_partial``, which spreads a full RoPE spectrum over the rotated
    dims: here the rotated pairs keep the frequencies they have in a full-width RoPE, so the
    low frequencies (the ones that never turn within the training length) are removed.
    """

    def __init__(self, *, rotary_fraction: float = 0.5, factor: float = 1.0, base: float = 10000.0, **dims):
        self.rotary_fraction = check_number("rotary_fraction", rotary_fraction, 0.0, 1.0, strict_min=True)
        self.factor = _check_factor(factor)
        head_dim = check_int("head_dim", dims.get("head_dim"), 1)
        if int(self.rotary_fraction * head_dim // 2) < 1:
            raise ValueError(f"rotary_fraction * head_dim / 2 must be >= 1 (at least one rotated pair), got "
                             f"{self.rotary_fraction * head_dim / 2:g}")
        super().__init__(base=base, **dims)

    def inverse_frequencies(self, seq_len: int | None = None) -> Tensor:
        angles = int(self.rotary_fraction * self.head_dim // 2)
        exponent = torch.arange(0, 2 * angles, 2, dtype=torch.int64).float() / self.head_dim
        inv = 1.0 / (self.base ** exponent)
        nope = self.head_dim // 2 - angles
        if nope > 0:
            inv = torch.cat((inv, torch.zeros(nope, dtype=torch.float32)))
        return inv / self.factor
