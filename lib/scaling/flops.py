"""FLOPs and parameter accounting for compute-optimal scaling.

The user's question: given a training budget C (FLOPs), how many parameters N and how many
tokens D? Units: N parameters (count, embeddings included, as in Chinchilla), D tokens, C
floating-point operations, times in seconds.

- ``flops_6nd(model_or_n, tokens)``: C = 6 N D (forward 2ND + backward 4ND).
- ``chinchilla_flops_per_token(config)``: Hoffmann et al. (2022) Appendix F, per token, all
  matrix multiplies including attention and embeddings, x3 for forward + backward.
- ``count_params(config)``: the analytic parameter count of ``lib.models.Transformer``.
- ``default_d_ff(d_model)``: lib.models' default MLP width, 8/3 d_model rounded up to 64.

IsoFLOP plans live in ``lib.scaling.planning``, the fits in ``lib.scaling.fit``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.core import check_bool, check_choice, check_int, check_number, check_positive

# Chinchilla Table 3 (approach 1): parameters, FLOPs, tokens.
CHINCHILLA_TABLE3 = pd.DataFrame({
    "n_params": [400e6, 1e9, 10e9, 67e9, 175e9],
    "flops": [1.92e19, 1.21e20, 1.23e22, 5.76e23, 3.85e24],
    "tokens": [8.0e9, 20.2e9, 205.1e9, 1.5e12, 3.7e12],
})
MLP_MATRICES = {"swiglu": 3, "gelu": 2, "relu": 2, "dense": 2}


def default_d_ff(d_model):
    """lib.models' default MLP width for ``d_model`` (an int, or an int array for a grid)."""
    d_ff = (64 * np.ceil(8 * np.asarray(d_model) / 3 / 64)).astype(int)
    return int(d_ff) if d_ff.ndim == 0 else d_ff


def flops_6nd(model_or_n, tokens) -> float | np.ndarray:
    """Training FLOPs C = 6 N D for N parameters (a count, or any object with ``num_params()``)
    trained on ``tokens`` tokens (a number or array)."""
    if hasattr(model_or_n, "num_params"):
        n = check_positive("model_or_n.num_params()", model_or_n.num_params())
    else:
        n = check_positive("model_or_n", model_or_n)
    if np.ndim(tokens) == 0:
        return 6.0 * n * check_number("tokens", tokens, 0)
    d = np.asarray(tokens, dtype=float)
    if np.any(~np.isfinite(d)) or np.any(d < 0):
        raise ValueError("tokens must be finite and non-negative")
    return 6.0 * n * d


def _shape(config, seq_len):
    get = lambda k, default=None: getattr(config, k, default) if not isinstance(config, dict) \
        else config.get(k, default)
    V, d, L, h = (check_int(f"config.{k}", get(k), 1)
                  for k in ("vocab_size", "d_model", "n_layers", "n_heads"))
    if d % h:
        raise ValueError(f"config.n_heads={h} must divide config.d_model={d}")
    h_kv = check_int("config.n_kv_heads", get("n_kv_heads") or h, 1)
    if h % h_kv:
        raise ValueError(f"config.n_kv_heads={h_kv} must divide config.n_heads={h}")
    f = check_int("config.d_ff", get("d_ff") or default_d_ff(d), 1)
    # Dense MLPs only: an MoE layer's FLOPs depend on its active experts, counted separately.
    mlp = check_choice("config.mlp", get("mlp", "swiglu"), MLP_MATRICES)
    s = seq_len if seq_len is not None else get("max_seq_len", get("seq_len"))
    s = check_int("seq_len", s, 1)
    tied = check_bool("config.tie_embeddings", get("tie_embeddings", True))
    return V, d, L, h, h_kv, d // h, f, MLP_MATRICES[mlp], s, tied


def flops_breakdown(config, seq_len: int | None = None) -> dict[str, float]:
    """Forward FLOPs per token by component, Chinchilla Appendix F (multiply-add = 2 FLOPs).

    ``config``: an object or dict with vocab_size, d_model, n_layers, n_heads, optional
    n_kv_heads (grouped-query attention), d_ff, mlp ("swiglu": 3 matrices, "gelu": 2) and
    max_seq_len (or pass ``seq_len``). Per sequence of s tokens, per layer, with key size k and
    h heads: QKV 2 s d (h k + 2 h_kv k), logits 2 s^2 (h k), softmax 3 h s^2, values
    2 s^2 (h k), output 2 s (h k) d, MLP 2 s m d f (m matrices); plus embeddings 2 s V d and
    final logits 2 s d V. Everything is divided by s (per token). Attention is counted over the
    full s x s matrix as in the paper (no causal halving).
    """
    V, d, L, h, h_kv, k, f, m, s, _ = _shape(config, seq_len)
    per_layer = {
        "qkv": 2 * d * (h * k + 2 * h_kv * k),
        "attention_logits": 2 * s * (h * k),
        "softmax": 3 * h * s,
        "attention_values": 2 * s * (h * k),
        "attention_output": 2 * (h * k) * d,
        "mlp": 2 * m * d * f,
    }
    out = {"embeddings": 2.0 * V * d}
    out.update({name: float(L * v) for name, v in per_layer.items()})
    out["final_logits"] = 2.0 * d * V
    return out


def chinchilla_flops_per_token(config, seq_len: int | None = None, training: bool = True) -> float:
    """FLOPs per token by Chinchilla's Appendix F (see ``flops_breakdown``); ``training=True``
    multiplies the forward count by 3 (backward = 2 x forward)."""
    training = check_bool("training", training)
    fwd = sum(flops_breakdown(config, seq_len).values())
    return 3.0 * fwd if training else fwd


def count_params(config) -> int:
    """Analytic parameter count of ``lib.models.Transformer(config)`` (tied embedding once):
    embedding V d, per layer 2 RMSNorms (2 d), QKV d (h k + 2 h_kv k), output (h k) d, MLP
    m d f; final norm d; an untied head adds V d."""
    V, d, L, h, h_kv, k, f, m, _, tied = _shape(config, 1)
    per_layer = 2 * d + d * (h * k + 2 * h_kv * k) + h * k * d + m * d * f
    return V * d + L * per_layer + d + (0 if tied else V * d)
