"""The attractor state (seed 001): a constant-memory, decayed summary of past context.

State per sequence: ``C_t = alpha * C_{t-1} + (W h_t) outer e_t``, ``C_t`` of shape
[d_state, d_model], with ``h_t`` the hidden state after a block and ``e_t`` the single-phase
pi-spiral vector of position t (``value="position"``, the original) or ``h_t`` itself
(``value="hidden"``, a decayed linear attention). With ``normalize=True`` the state is divided
by ``sum_{s<=t} alpha**(t-s)`` (a decayed mean), keeping its scale independent of alpha.

alpha: ``"fixed"`` (``alpha_value``, default 0.99), ``"exp"`` (``exp(-c / horizon)``, c = pi,
horizon = max_seq_len by default) or ``"learned"`` (``sigmoid(theta)``, initialised at
``alpha_value``). Injection after the chosen blocks (``layers="all"``, ``"last:N"`` with
``n_layers``, or a list of indices): ``"residual"`` adds ``out(mean over the d_state rows of
C_t)``; ``"cross_attention"`` lets ``h_t`` attend over the d_state rows of ``C_t``.

Causality: position t reads ``C_t`` only (inputs at positions <= t). Training computes every
``C_t`` with a chunked scan (memory O(chunk * d_state * d_model), not O(T)); inference uses
``step`` with a state of fixed size ``d_state * d_model`` per layer, whatever the length.
The encoding wraps a ``base`` encoding (default ``rope``) for the other hooks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lib.core import check_bool, check_choice, check_int, check_number, check_positive
from lib.encodings.base import ENCODINGS, PositionalEncoding
from lib.encodings.spiral import PiSpiral

ALPHA_MODES = ("fixed", "exp", "learned")
INJECT_MODES = ("residual", "cross_attention")


def resolve_layers(layers, n_layers: int | None) -> list[int] | None:
    """``"all"`` -> None (every layer); ``"last:N"`` -> the last N of ``n_layers``; list -> list."""
    if layers == "all":
        return None
    if isinstance(layers, str) and layers.startswith("last:"):
        if not isinstance(n_layers, int) or n_layers <= 0:
            raise ValueError(f"layers={layers!r} needs n_layers (a positive integer), got {n_layers!r}")
        n = int(layers.split(":", 1)[1])
        if not 1 <= n <= n_layers:
            raise ValueError(f"layers={layers!r}: N must be in 1..{n_layers}")
        return list(range(n_layers - n, n_layers))
    if isinstance(layers, (list, tuple)) and layers and all(isinstance(i, int) and i >= 0 for i in layers):
        return sorted(set(layers))
    raise ValueError(f"layers must be 'all', 'last:N' or a list of non-negative ints, got {layers!r}")


class AttractorMemory(nn.Module):
    """One layer's attractor: the scan, its recurrent ``step`` and the injection."""

    def __init__(self, d_model: int, d_state: int, inject: str, value: str):
        super().__init__()
        self.d_model, self.d_state, self.inject, self.value = d_model, d_state, inject, value
        self.write = nn.Linear(d_model, d_state, bias=False)  # W
        self.out = nn.Linear(d_model, d_model, bias=False)
        nn.init.normal_(self.out.weight, std=0.02)
        if inject == "cross_attention":
            self.query = nn.Linear(d_model, d_model, bias=False)

    def read(self, h: Tensor, state: Tensor) -> Tensor:
        """Injection for hidden states h [..., d_model] given states [..., d_state, d_model]."""
        if self.inject == "residual":
            return self.out(state.mean(dim=-2))
        scores = torch.einsum("...d,...jd->...j", self.query(h), state) / math.sqrt(self.d_model)
        return self.out(torch.einsum("...j,...jd->...d", scores.softmax(dim=-1), state))

    def scan(self, h: Tensor, e: Tensor, alpha: Tensor, normalize: bool, chunk: int) -> Tensor:
        """h + injection for every position: h, e [B, T, d_model]; chunked decayed cumsum."""
        b, t, d = h.shape
        w = self.write(h)  # [B, T, S]
        state = h.new_zeros(b, self.d_state, d)
        mass = h.new_zeros(())  # sum of alpha**(t-s) so far
        out = []
        log_a = torch.log(alpha)
        for start in range(0, t, chunk):
            stop = min(start + chunk, t)
            n = stop - start
            idx = torch.arange(n, device=h.device, dtype=h.dtype)
            lag = idx[:, None] - idx[None, :]
            decay = torch.where(lag >= 0, torch.exp(log_a * lag.clamp(min=0)), h.new_zeros(()))
            carry = torch.exp(log_a * (idx + 1))  # alpha**(i+1) weights the previous state
            x = torch.einsum("bts,btd->btsd", w[:, start:stop], e[:, start:stop])
            states = torch.einsum("ij,bjsd->bisd", decay, x) + carry[None, :, None, None] * state[:, None]
            masses = decay.sum(dim=1) + carry * mass
            read_states = states / masses[None, :, None, None] if normalize else states
            out.append(self.read(h[:, start:stop], read_states))
            state, mass = states[:, -1], masses[-1]
        return h + torch.cat(out, dim=1)

    def step(self, state: Tensor, mass: Tensor, h_t: Tensor, e_t: Tensor, alpha: Tensor,
             normalize: bool) -> tuple[Tensor, Tensor, Tensor]:
        """One token: returns (new h_t, new state [B, S, D], new mass)."""
        state = alpha * state + torch.einsum("bs,bd->bsd", self.write(h_t), e_t)
        mass = alpha * mass + 1
        return h_t + self.read(h_t, state / mass if normalize else state), state, mass


@ENCODINGS.register("attractor", set_name=True)
class AttractorEncoding(PositionalEncoding):
    """A ``base`` encoding plus attractor memories injected after the chosen blocks (see module doc)."""

    def __init__(self, *, base: str = "rope", base_kwargs: dict | None = None, d_state: int = 16,
                 alpha: str = "fixed", alpha_value: float = 0.99, c: float = math.pi,
                 horizon: int | None = None, inject: str = "residual", value: str = "position",
                 layers="all", n_layers: int | None = None, normalize: bool = True, chunk: int = 64,
                 constant: str = "pi", **dims):
        super().__init__(**dims)
        check_choice("base", base, sorted(name for name in ENCODINGS if name != "attractor"))
        self.alpha_mode = check_choice("alpha", alpha, ALPHA_MODES)
        self.inject = check_choice("inject", inject, INJECT_MODES)
        self.value = check_choice("value", value, ("position", "hidden"))
        self.d_state = check_int("d_state", d_state, 1)
        self.chunk = check_int("chunk", chunk, 1)
        alpha_value = check_number("alpha_value", alpha_value, 0.0, 1.0, strict_min=True, strict_max=True)
        self.normalize = check_bool("normalize", normalize)
        self.horizon = self.max_seq_len if horizon is None else check_int("horizon", horizon, 1)
        self.c = check_positive("c", c)
        self.base = ENCODINGS[base](**dims, **(base_kwargs or {}))
        self.kind = self.base.kind
        self.layers = resolve_layers(layers, n_layers)
        self.n_layers = n_layers
        if alpha == "learned":
            self.alpha_logit = nn.Parameter(torch.tensor(math.log(alpha_value / (1 - alpha_value))))
        else:
            fixed = alpha_value if alpha == "fixed" else math.exp(-self.c / self.horizon)
            self.register_buffer("alpha_fixed", torch.tensor(fixed), persistent=False)
        self.spiral = PiSpiral(constant=constant, **dims)
        if self.layers is None:
            if not isinstance(n_layers, int) or n_layers <= 0:
                raise ValueError(f"layers='all' needs n_layers (a positive integer), got {n_layers!r}")
            self.layers = list(range(n_layers))
        self.memories = nn.ModuleDict({str(i): self._memory() for i in self.layers})

    def _memory(self) -> AttractorMemory:
        return AttractorMemory(self.d_model, self.d_state, self.inject, self.value)

    def alpha(self) -> Tensor:
        """The decay factor alpha in (0, 1) (a 0-dim tensor)."""
        return torch.sigmoid(self.alpha_logit) if self.alpha_mode == "learned" else self.alpha_fixed

    def embed(self, x, positions):
        return self.base.embed(x, positions)

    def rotate(self, q, k, positions):
        return self.base.rotate(q, k, positions)

    def rotate_packed(self, qk, n_q_heads, positions):
        return self.base.rotate_packed(qk, n_q_heads, positions)

    def attn_bias(self, t_q, t_k, device, dtype):
        return self.base.attn_bias(t_q, t_k, device, dtype)

    def _memory_for(self, layer_idx: int) -> AttractorMemory | None:
        return self.memories[str(layer_idx)] if layer_idx in self.layers else None

    def _values(self, h: Tensor, positions: Tensor) -> Tensor:
        if self.value == "hidden":
            return h
        return self.spiral.table(positions).to(h.dtype).expand_as(h)

    def block_hook(self, layer_idx: int, h: Tensor) -> Tensor:
        memory = self._memory_for(layer_idx)
        if memory is None:
            return self.base.block_hook(layer_idx, h)
        positions = torch.arange(h.shape[1], device=h.device)
        alpha = self.alpha().to(h.dtype)
        h = memory.scan(h, self._values(h, positions), alpha, self.normalize, self.chunk)
        return self.base.block_hook(layer_idx, h)

    def init_state(self, batch_size: int, dtype=torch.float32, device="cpu") -> dict[int, tuple[Tensor, Tensor]]:
        """Zero recurrent state per injected layer: {layer: (state [B, S, D], mass)}."""
        return {i: (torch.zeros(batch_size, self.d_state, self.d_model, dtype=dtype, device=device),
                    torch.zeros((), dtype=dtype, device=device)) for i in self.layers}

    def step_hook(self, layer_idx: int, h_t: Tensor, position: int, states: dict) -> Tensor:
        """Recurrent form of ``block_hook`` for one token h_t [B, D]; updates ``states`` in place."""
        memory = self._memory_for(layer_idx)
        if memory is None:
            return h_t
        if layer_idx not in states:
            states[layer_idx] = (h_t.new_zeros(h_t.shape[0], self.d_state, self.d_model), h_t.new_zeros(()))
        e_t = h_t if self.value == "hidden" else self.spiral.table(torch.tensor([position]))[0].to(h_t).expand_as(h_t)
        out, state, mass = memory.step(*states[layer_idx], h_t, e_t, self.alpha().to(h_t.dtype), self.normalize)
        states[layer_idx] = (state, mass)
        return out

    @staticmethod
    def state_nbytes(states: dict) -> int:
        """Bytes held by a recurrent state dict (independent of how many tokens were seen)."""
        return sum(s.numel() * s.element_size() + m.numel() * m.element_size() for s, m in states.values())

    def extra_repr(self) -> str:
        return (f"base={self.base.name!r}, d_state={self.d_state}, alpha={self.alpha_mode!r}, "
                f"inject={self.inject!r}, layers={self.layers}")

