"""Notebook 02's recipe: train small models on a long-context task at one length, evaluate them
at longer ones under each encoding (and under a different encoding at evaluation, as YaRN on
RoPE weights), and measure the attractor state's memory against a real KV cache.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pandas as pd
import torch

from lib.core import check_int, check_int_array, seed_everything
from lib.data import TaskData, accuracy_vs_length, niah_heatmap
from lib.encodings import build_encoding, kv_cache_nbytes
from lib.models import ModelConfig, Transformer, output_cache, tiny_llama
from lib.training import TrainConfig, train

# Notebook 02's profiles. quick: CPU, minutes (3 seeds, models of width 48, passkeys of 2 digits).
# full: the real experiment, meant for a GPU (5 seeds, width 128, 5-digit passkeys, 8x lengths).
QUICK = dict(
    collision_max=100_000, train_len=32, steps=250, seeds=(0, 1, 2), eval_lens=(32, 64, 128, 256),
    n_eval=48, depths=(0.0, 0.5, 1.0), d_model=48, n_layers=2, lr=6e-3, batch_size=32,
    task_kwargs={"n_digits": 2}, cost_lens=(128, 512, 1024), extra_variants=False,
)
FULL = dict(
    train_len=64, steps=1500, seeds=(0, 1, 2, 3, 4), eval_lens=(64, 128, 256, 512), n_eval=256,
    depths=(0.0, 0.25, 0.5, 0.75, 1.0), d_model=128, lr=3e-3, task_kwargs={"n_digits": 5},
    cost_lens=(256, 1024, 4096), extra_variants=True,
)


def train_on_task(encoding: str, task: str, train_len: int, steps: int, seed: int = 0, *,
                  encoding_kwargs: dict | None = None, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                  batch_size: int = 32, lr: float = 3e-3, vocab_size: int = 64, task_kwargs: dict | None = None,
                  device=None, progress: bool = False):
    """Train a ``lib.models.Transformer`` with ``encoding`` on ``task`` at length ``train_len``.

    The model's ``max_seq_len`` is ``train_len`` (so YaRN/NTK "original length" and the hybrid's
    K default refer to it). Loss is on answer tokens only. Returns ``lib.training.TrainResult``.
    """
    seed_everything(seed)
    kwargs = dict(encoding_kwargs or {})
    if encoding == "attractor":
        kwargs.setdefault("n_layers", n_layers)
    config = ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                         max_seq_len=train_len, encoding=encoding, encoding_kwargs=kwargs)
    model = Transformer(config)
    data = TaskData(task, vocab_size=vocab_size, **(task_kwargs or {}))
    tc = TrainConfig(steps=steps, batch_size=batch_size, seq_len=train_len, lr=lr, seed=seed, device=device,
                     eval_every=0, eval_batches=1, progress=progress, desc=f"{encoding}/{seed}")
    return train(model, data, tc)


def with_encoding(model, encoding: str, **encoding_kwargs):
    """A copy of a trained ``lib.models.Transformer`` using another encoding at evaluation
    (e.g. RoPE-trained weights with ``yarn``): same weights, new ``ModelConfig.encoding``."""
    config = replace(model.config, encoding=encoding, encoding_kwargs=encoding_kwargs)
    clone = Transformer(config).to(next(model.parameters()).device)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def evaluate_extrapolation(model, task: str, train_len: int, eval_lens, seed: int = 0, *,
                           eval_encoding: tuple[str, dict] | None = None, n_eval: int = 64, depths=None,
                           heatmap_lens=None, task_kwargs: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Exact-match / token accuracy of a trained model at each of ``eval_lens`` (fresh samples).

    ``eval_encoding=("yarn", {"factor": s})`` evaluates the weights under another encoding;
    ``"factor": "auto"`` uses ``max(1, length / train_len)`` at each length. ``depths`` (tasks
    niah/passkey) adds a length x depth exact-match grid over ``heatmap_lens`` (default eval_lens).
    """
    check_int("n_eval", n_eval, 1)
    kw = dict(task_kwargs or {}, vocab_size=model.config.vocab_size)
    rows, heat = [], []
    for length in eval_lens:
        eval_model = model
        if eval_encoding is not None:
            enc_kw = dict(eval_encoding[1])
            if enc_kw.get("factor") == "auto":
                enc_kw["factor"] = max(1.0, length / train_len)
            eval_model = with_encoding(model, eval_encoding[0], **enc_kw)
        rows.append(accuracy_vs_length(eval_model, task, [length], n=n_eval, seed=10_000 + seed, **kw))
        if depths is not None and length in (heatmap_lens or eval_lens):
            heat.append(niah_heatmap(eval_model, [length], depths, n=max(8, n_eval // 2), seed=20_000 + seed,
                                     task=task, **kw))
    by_length = pd.concat(rows, ignore_index=True)
    by_length["ratio"] = by_length["length"] / train_len
    return by_length, (pd.concat(heat, ignore_index=True) if heat else None)


def extrapolation_sweep(variants: dict, task: str, train_len: int, eval_lens, steps: int, seeds=(0, 1, 2), *,
                        task_kwargs: dict | None = None, n_eval: int = 64, depths=None, heatmap_lens=None,
                        heatmap_labels=None, progress: bool = False, **train_kwargs) -> dict:
    """Train every distinct training encoding once per seed, evaluate every variant.

    ``variants``: label -> ``{"encoding": name, "encoding_kwargs": {...}, "eval_encoding": None |
    (name, kwargs)}``. Variants sharing (encoding, encoding_kwargs) share their trained models (e.g.
    RoPE evaluated plainly and with YaRN). The depth grid (``depths``) is computed for
    ``heatmap_labels`` (default: every variant). Returns ``{"by_length": DataFrame(label, seed, length,
    ratio, token_accuracy, exact_match), "heatmap": DataFrame | None, "models": {(label, seed): model},
    "train_seconds": DataFrame(label, seed, seconds)}``.
    """
    trained, by_length, heat, models, timing = {}, [], [], {}, []
    for label, spec in variants.items():
        unknown = set(spec) - {"encoding", "encoding_kwargs", "eval_encoding"}
        if "encoding" not in spec or unknown:
            raise ValueError(f"variant {label!r} needs 'encoding' (and optionally encoding_kwargs, eval_encoding); "
                             f"unknown keys: {sorted(unknown)}")
        for seed in seeds:
            key = (spec["encoding"], json.dumps(spec.get("encoding_kwargs", {}), sort_keys=True), seed)
            if key not in trained:
                start = time.perf_counter()
                result = train_on_task(spec["encoding"], task, train_len, steps, seed,
                                       encoding_kwargs=spec.get("encoding_kwargs"), task_kwargs=task_kwargs,
                                       progress=progress, **train_kwargs)
                trained[key] = result.model.eval()
                timing.append({"label": label, "seed": seed, "seconds": time.perf_counter() - start})
            model = trained[key]
            frame, grid = evaluate_extrapolation(model, task, train_len, eval_lens, seed,
                                                 eval_encoding=spec.get("eval_encoding"), n_eval=n_eval,
                                                 depths=depths if heatmap_labels is None or label in heatmap_labels
                                                 else None, heatmap_lens=heatmap_lens, task_kwargs=task_kwargs)
            by_length.append(frame.assign(label=label, seed=seed))
            if grid is not None:
                heat.append(grid.assign(label=label, seed=seed))
            models[(label, seed)] = model
    return {"by_length": pd.concat(by_length, ignore_index=True),
            "heatmap": pd.concat(heat, ignore_index=True) if heat else None,
            "models": models, "train_seconds": pd.DataFrame(timing)}


@torch.no_grad()
def attractor_vs_kv_memory(lengths, *, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                           d_state: int = 16, batch: int = 1, measure_up_to: int = 1024) -> pd.DataFrame:
    """Measured bytes vs sequence length: the KV cache of a random-init transformers Llama of the
    given shape (its real ``DynamicCache`` after a forward, up to ``measure_up_to`` tokens; the
    closed form ``kv_cache_nbytes`` beyond, which the tests check against the real cache) and the
    recurrent state of an attractor in every layer after stepping token by token through
    ``min(length, measure_up_to)`` tokens (the state is updated in place, so its size is fixed)."""
    lengths = check_int_array("lengths", lengths, 1)
    for name, value in (("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads),
                        ("d_state", d_state), ("batch", batch), ("measure_up_to", measure_up_to)):
        check_int(name, value, 1)
    head_dim = d_model // n_heads
    model = tiny_llama("llama", hidden_size=d_model, n_layers=n_layers, n_heads=n_heads,
                       max_position_embeddings=int(lengths.max()), attn_implementation="sdpa")
    enc = build_encoding("attractor", d_model=d_model, n_heads=n_heads, head_dim=head_dim,
                         max_seq_len=int(lengths.max()), d_state=d_state, n_layers=n_layers)
    rows = []
    for t in lengths.tolist():
        if t <= measure_up_to:
            cache = output_cache(model(torch.randint(0, 128, (batch, t)), use_cache=True))
            kv, how = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers), "measured"
        else:
            kv, how = kv_cache_nbytes(n_layers, batch, t, n_heads, head_dim), "closed form"
        states = enc.init_state(batch)
        h = torch.randn(batch, min(t, 256), d_model)
        for i in range(min(t, measure_up_to)):
            for layer in enc.layers:
                enc.step_hook(layer, h[:, i % h.shape[1]], i, states)
        rows.append({"length": t, "kv_cache_bytes": kv, "kv_source": how,
                     "attractor_state_bytes": enc.state_nbytes(states),
                     "attractor_tokens_stepped": min(t, measure_up_to)})
    return pd.DataFrame(rows)
