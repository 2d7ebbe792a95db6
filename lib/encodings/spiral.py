"""The pi-spiral family of positional encodings (seed 001).

- ``pi_spiral``: the original. Position n gets ONE phase ``phi(n) = 2 pi frac(n c)`` for an
  irrational ``c`` (pi, e, sqrt2, phi) or a seeded pseudo-random phase (``prng``); every
  (cos, sin) pair of the d_model vector carries that same phase, and the vector is ADDED to the
  token embedding. Hence ``cos_sim(PE(i), PE(i+d)) = cos(2 pi frac(d c))``: near-collisions sit
  at the continued-fraction denominators of ``c`` (7, 113, 33102, ... for pi).
- ``pi_spiral_rotary``: a multi-frequency rotary form. Pair i rotates by
  ``2 pi frac(n c_i s_i)`` with its own irrational ``c_i = frac(sqrt(p_i))`` (p_i the i-th
  prime; rationally independent, so no offset realigns all pairs at once) and a geometric
  scale ``s_i = base**(-2i/d)`` (multi-scale like RoPE; ``geometric=False`` drops it).
- ``pi_spiral_hybrid``: ``w(n) = sigmoid((n - K) / width)``; cos/sin are
  ``(1 - w) * RoPE + w * spiral``, each side computed once. Since a rotary map is linear in
  (cos, sin), this equals ``(1-w) RoPE(q) + w Spiral(q)``; in the transition the map is not a
  pure rotation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lib.core import check_bool, check_choice, check_number, check_positive, check_seed
from lib.encodings.base import ENCODINGS, PositionalEncoding, RotaryEncoding
from lib.encodings.rope import RoPE

CONSTANTS = {
    "pi": math.pi,
    "e": math.e,
    "sqrt2": math.sqrt(2.0),
    "phi": (1.0 + math.sqrt(5.0)) / 2.0,
}
SPIRAL_CONSTANTS = (*CONSTANTS, "prng")


def _splitmix64_unit(seed: int, n: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) float64 from a counter-based hash of (seed, n): a pure function of n."""
    with np.errstate(over="ignore"):
        z = (np.asarray(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def spiral_phase(positions, constant: str = "pi", seed: int = 0) -> np.ndarray:
    """Phase ``2 pi frac(n c)`` (radians, float64) of the single-phase spiral at ``positions``.

    ``frac`` is taken in float64 on exact integer products, so it stays accurate to ~1e-11 up
    to n ~ 1e5 and ~1e-9 at 1e7. ``constant="prng"`` draws a seeded uniform phase per position.
    """
    n = np.asarray(positions)
    if n.size and (n.min() < 0 or not np.issubdtype(n.dtype, np.integer)):
        raise ValueError("positions must be non-negative integers")
    if check_choice("constant", constant, SPIRAL_CONSTANTS) == "prng":
        return 2 * math.pi * _splitmix64_unit(seed, n)
    x = n.astype(np.float64) * CONSTANTS[constant]
    return 2 * math.pi * (x - np.floor(x))


@ENCODINGS.register("pi_spiral", set_name=True)
class PiSpiral(PositionalEncoding):
    """The original single-phase additive pi-spiral: ``x + scale * [cos phi, sin phi, cos phi, ...]``
    with ``phi(n) = 2 pi frac(n c)``. Parameters: ``constant`` in pi/e/sqrt2/phi/prng,
    ``seed`` (prng only), ``scale`` (default 1, as the original)."""

    kind = "additive"

    def __init__(self, *, constant: str = "pi", seed: int = 0, scale: float = 1.0, **dims):
        super().__init__(**dims)
        self.constant = check_choice("constant", constant, SPIRAL_CONSTANTS)
        if self.d_model % 2:
            raise ValueError(f"pi_spiral needs an even d_model, got {self.d_model}")
        self.seed = check_seed("seed", seed)
        self.scale = check_positive("scale", scale)

    def table(self, positions: Tensor) -> Tensor:
        """[..., d_model] float32: interleaved (cos phi, sin phi) repeated d_model/2 times."""
        phase = torch.from_numpy(spiral_phase(positions.cpu().numpy(), self.constant, self.seed))
        pair = torch.stack((phase.cos(), phase.sin()), dim=-1)
        reps = [1] * (pair.dim() - 1) + [self.d_model // 2]
        return (pair.repeat(*reps) * self.scale).float().to(positions.device)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x + self.table(positions).to(x.dtype)

    def phasors(self, positions) -> np.ndarray:
        phase = spiral_phase(np.asarray(positions), self.constant, self.seed)
        return np.repeat(np.exp(1j * phase)[..., None], self.d_model // 2, axis=-1)

    def extra_repr(self) -> str:
        return f"constant={self.constant!r}, scale={self.scale:g}"


def first_primes(n: int) -> list[int]:
    """The first ``n`` primes (simple sieve)."""
    limit = max(16, int(n * (math.log(n + 2) + math.log(math.log(n + 3)) + 3)))
    sieve = np.ones(limit, dtype=bool)
    sieve[:2] = False
    for p in range(2, int(limit**0.5) + 1):
        if sieve[p]:
            sieve[p * p::p] = False
    return [int(p) for p in np.flatnonzero(sieve)[:n]]


@ENCODINGS.register("pi_spiral_rotary", set_name=True)
class PiSpiralRotary(RotaryEncoding):
    """Multi-frequency rotary spiral: pair i rotates by ``2 pi frac(n * c_i * s_i)`` with
    ``c_i = frac(sqrt(p_i))`` (p_i the i-th prime) and ``s_i = base**(-2i/head_dim)``
    (``geometric=True``) or 1. Phases are computed in float64 before the cast."""

    def __init__(self, *, base: float = 10000.0, geometric: bool = True, **dims):
        super().__init__(**dims)
        self.base = check_number("base", base, 1.0, strict_min=True)
        self.geometric = check_bool("geometric", geometric)
        pairs = self.head_dim // 2
        c = np.array([math.sqrt(p) % 1.0 for p in first_primes(pairs)])
        s = self.base ** (-np.arange(0, self.head_dim, 2) / self.head_dim) if self.geometric else np.ones(pairs)
        self.cycles_per_position = c * s  # float64 [pairs]

    def angles(self, positions: Tensor) -> Tensor:
        x = positions.cpu().numpy().astype(np.float64)[..., None] * self.cycles_per_position
        return torch.from_numpy(2 * math.pi * (x - np.floor(x))).float().to(positions.device)

    def extra_repr(self) -> str:
        return f"base={self.base:g}, geometric={self.geometric}"


@ENCODINGS.register("pi_spiral_hybrid", set_name=True)
class PiSpiralHybrid(RotaryEncoding):
    """``(1 - w(n)) * RoPE + w(n) * spiral`` on cos/sin, ``w(n) = sigmoid((n - K) / width)``.

    ``spiral="rotary"`` (default) uses ``pi_spiral_rotary``; ``spiral="single"`` rotates every
    pair by the one phase ``2 pi frac(n c)`` of ``constant`` (the original's spiral, as a
    rotation). ``K`` defaults to ``max_seq_len // 2``, ``width`` to ``K / 8``.
    """

    cache_ok = True

    def __init__(self, *, K: float | None = None, width: float | None = None, base: float = 10000.0,
                 spiral: str = "rotary", constant: str = "pi", **dims):
        super().__init__(**dims)
        self.K = check_positive("K", K if K is not None else self.max_seq_len // 2, allow_zero=True)
        self.width = check_positive("width", width if width is not None else max(self.K / 8, 1.0))
        self.spiral = check_choice("spiral", spiral, ("rotary", "single"))
        self.constant = check_choice("constant", constant, SPIRAL_CONSTANTS)
        self.rope = RoPE(base=base, **dims)
        self.spiral_rotary = PiSpiralRotary(base=base, **dims)

    def weight(self, positions: Tensor) -> Tensor:
        """Spiral weight w(n) in [0, 1], float32 [...]."""
        return torch.sigmoid((positions.double() - self.K) / self.width).float()

    def spiral_cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        if self.spiral == "rotary":
            return self.spiral_rotary.cos_sin(positions)
        phase = torch.from_numpy(spiral_phase(positions.cpu().numpy(), self.constant)).float()
        phase = phase[..., None].expand(*phase.shape, self.head_dim).to(positions.device)
        return phase.cos(), phase.sin()

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weight(positions)[..., None]
        rc, rs = self.rope.cos_sin(positions)
        sc, ss = self.spiral_cos_sin(positions)
        return (1 - w) * rc + w * sc, (1 - w) * rs + w * ss

    def extra_repr(self) -> str:
        return f"K={self.K:g}, width={self.width:g}, spiral={self.spiral!r}"
