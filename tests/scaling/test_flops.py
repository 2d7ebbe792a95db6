"""lib.scaling.flops against independent references: torch's FLOP counter and lib.models'
parameter count; and its argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from lib.scaling import (
    chinchilla_flops_per_token,
    count_params,
    default_d_ff,
    flops_6nd,
    flops_breakdown,
)


class _Model:
    def num_params(self):
        return 1_000


def test_flops_6nd_counts_and_validates():
    assert flops_6nd(1e9, 2e10) == 6 * 1e9 * 2e10
    assert flops_6nd(_Model(), 10) == 60_000
    np.testing.assert_allclose(flops_6nd(10, [1, 2]), [60, 120])
    assert flops_6nd(10, 0) == 0.0
    with pytest.raises(ValueError, match="model_or_n"):
        flops_6nd(-1, 10)
    with pytest.raises(ValueError, match="tokens"):
        flops_6nd(10, -5)
    with pytest.raises(ValueError, match="tokens"):
        flops_6nd(10, [1, np.inf])


def test_flops_6nd_takes_numpy_numbers_and_refuses_bools():
    assert flops_6nd(np.int64(10), np.int64(2)) == flops_6nd(10, 2) == 120.0
    assert flops_6nd(np.float32(10), 2) == 120.0
    with pytest.raises(ValueError, match="model_or_n"):
        flops_6nd(True, 10)
    with pytest.raises(ValueError, match="tokens"):
        flops_6nd(10, True)

    class Broken:
        def num_params(self):
            return 0

    with pytest.raises(ValueError, match=r"model_or_n\.num_params\(\)"):
        flops_6nd(Broken(), 10)


SHAPES = [
    dict(vocab_size=100, d_model=64, n_layers=2, n_heads=4, max_seq_len=32),
    dict(vocab_size=97, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=16,
         tie_embeddings=False),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_appendix_f_count_matches_torch_flop_counter(shape):
    """Forward + backward matmul FLOPs measured by torch's FlopCounterMode on lib.models
    (eager attention) equal Appendix F minus its two non-matmul terms (embedding lookup,
    softmax), times 3 for training."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from lib import models

    cfg = models.ModelConfig(**shape, attn_impl="eager")
    model = models.Transformer(cfg)
    batch, seq = 2, cfg.max_seq_len
    idx = torch.randint(0, cfg.vocab_size, (batch, seq))
    with FlopCounterMode(display=False) as counter:
        model(idx, targets=idx).loss.backward()
    parts = flops_breakdown(cfg)
    matmul_per_token = sum(parts.values()) - parts["embeddings"] - parts["softmax"]
    assert counter.get_total_flops() == pytest.approx(3 * matmul_per_token * batch * seq, rel=1e-12)
    total = chinchilla_flops_per_token(cfg)
    assert total == pytest.approx(3 * sum(parts.values()))
    assert chinchilla_flops_per_token(cfg, training=False) == pytest.approx(sum(parts.values()))


@pytest.mark.parametrize("shape", SHAPES)
def test_count_params_matches_lib_models(shape):
    from lib import models
    cfg = models.ModelConfig(**shape)
    assert count_params(cfg) == models.Transformer(cfg).num_params()
    assert cfg.d_ff == (shape.get("d_ff") or default_d_ff(shape["d_model"]))


def test_default_d_ff_is_elementwise():
    widths = np.array([16, 64, 96, 768])
    assert [default_d_ff(int(d)) for d in widths] == default_d_ff(widths).tolist() == [64, 192, 256, 2048]
    assert isinstance(default_d_ff(64), int)


def test_appendix_f_approaches_6n_for_wide_models_and_validates():
    # Chinchilla-70B-like shape (dense MLP): attention/embedding terms are a few % of 6N.
    shape = dict(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, d_ff=32768,
                 max_seq_len=2048, mlp="gelu")
    n_non_embedding = 80 * (4 * 8192**2 + 2 * 8192 * 32768)
    ratio = chinchilla_flops_per_token(shape) / (6 * n_non_embedding)
    assert 1.0 < ratio < 1.1
    with pytest.raises(ValueError, match="mlp"):
        flops_breakdown({**shape, "mlp": "moe"})
    with pytest.raises(ValueError, match="n_heads"):
        flops_breakdown({**shape, "n_heads": 7})
    with pytest.raises(ValueError, match="seq_len"):
        flops_breakdown({**shape, "max_seq_len": None})


SHAPE = SHAPES[0]


def test_config_fields_take_numpy_ints():
    as_numpy = {k: np.int64(v) for k, v in SHAPE.items()}
    assert count_params(as_numpy) == count_params(SHAPE)
    assert flops_breakdown(as_numpy) == flops_breakdown(SHAPE)
    assert chinchilla_flops_per_token(SHAPE, seq_len=np.int32(8)) == chinchilla_flops_per_token(SHAPE, seq_len=8)


@pytest.mark.parametrize("change,match", [
    ({"d_model": 64.0}, "config.d_model"),
    ({"n_layers": True}, "config.n_layers"),
    ({"vocab_size": 0}, "config.vocab_size"),
    ({"d_ff": 96.5}, "config.d_ff"),
    ({"n_kv_heads": 3}, "n_kv_heads"),
    ({"max_seq_len": 32.0}, "seq_len"),
    ({"tie_embeddings": "yes"}, "tie_embeddings"),
])
def test_config_fields_are_checked(change, match):
    with pytest.raises(ValueError, match=match):
        flops_breakdown({**SHAPE, **change})


def test_flop_counts_refuse_bad_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        flops_breakdown(SHAPE, seq_len=True)
    with pytest.raises(ValueError, match="training"):
        chinchilla_flops_per_token(SHAPE, training=1)
