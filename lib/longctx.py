"""Synthetic long-context tasks at the token level, trainable on a CPU in minutes.

Every generator returns a ``TaskBatch``: ``inputs`` and ``targets`` LongTensors [N, T] for
next-token prediction (``targets[:, p]`` is the token the model should emit after reading
``inputs[:, :p+1]``; it is -100, ignored by ``F.cross_entropy``, except at answer positions),
``mask`` [N, T] marking the answer positions, and ``meta`` (numpy arrays: where the needle or
definition sits, its depth, ...). Generators are pure functions of their arguments and ``seed``.

Vocabulary (``vocab_size`` >= 48): 0 pad, 1 bos, 2 needle marker, 3 query marker, 4 assign,
5 separator, 6..15 digits, 16..vocab_size-1 symbols (keys, values, variables, filler).

Tasks: ``passkey`` (a digit string hidden in filler, recalled after a query marker),
``niah`` (key -> value needles at a chosen depth; ``n_needles > 1`` is RULER's multi-key NIAH),
``mqar`` (Zoology's multi-query associative recall), ``variable_tracking`` (RULER's vt: a chain
of assignments X1 = v, X2 = X1, ... ; query the value of the last variable).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

PAD, BOS, NEEDLE, QUERY, ASSIGN, SEP = 0, 1, 2, 3, 4, 5
DIGITS = np.arange(6, 16)
FIRST_SYMBOL = 16
IGNORE = -100
TASKS = ("passkey", "niah", "mqar", "variable_tracking")


@dataclass
class TaskBatch:
    """inputs/targets/mask [N, T] plus per-sample metadata (numpy arrays)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.inputs.shape[0]


def _check(n: int, length: int, vocab_size: int, minimum_length: int) -> None:
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(vocab_size, int) or vocab_size < 48:
        raise ValueError(f"vocab_size must be an integer >= 48, got {vocab_size!r}")
    if not isinstance(length, int) or length < minimum_length:
        raise ValueError(f"length must be an integer >= {minimum_length} for this task, got {length!r}")


def _finish(seqs: np.ndarray, answer_pos: np.ndarray, meta: dict) -> TaskBatch:
    """answer_pos [N, A]: positions of answer tokens in ``seqs``; targets sit one position earlier."""
    n, t = seqs.shape
    inputs = seqs.copy()
    targets = np.full((n, t), IGNORE, dtype=np.int64)
    rows = np.repeat(np.arange(n), answer_pos.shape[1])
    cols = answer_pos.reshape(-1)
    targets[rows, cols - 1] = seqs[rows, cols]
    mask = targets != IGNORE
    meta = {**meta, "answer_positions": answer_pos, "answers": seqs[rows, cols].reshape(answer_pos.shape)}
    return TaskBatch(torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(mask), meta)


def _filler(rng, n, t, vocab_size, filler):
    if filler == "random":
        return rng.integers(FIRST_SYMBOL, vocab_size, size=(n, t))
    if filler == "repeat":  # one fixed cyclic "sentence" of 7 symbols, like the passkey paper's prose
        pattern = FIRST_SYMBOL + (np.arange(t) % 7)
        return np.broadcast_to(pattern, (n, t)).copy()
    raise ValueError(f"filler must be 'random' or 'repeat', got {filler!r}")


def _depth_positions(rng, n, lo, hi, depth):
    """Start positions in [lo, hi]: at fraction ``depth`` of the span, or uniform if None."""
    if depth is None:
        return rng.integers(lo, hi + 1, size=n)
    if not 0.0 <= float(depth) <= 1.0:
        raise ValueError(f"depth must be in [0, 1] or None, got {depth!r}")
    return np.full(n, lo + int(round(float(depth) * (hi - lo))))


def passkey(n: int, length: int, seed: int = 0, *, n_digits: int = 5, depth: float | None = None,
            vocab_size: int = 64, filler: str = "random") -> TaskBatch:
    """[bos] filler.. [needle] d1..dk [needle] filler.. [query] d1..dk; answers: the last k digits.

    ``depth`` in [0, 1] places the passkey at that fraction of the haystack (None: uniform).
    """
    if not isinstance(n_digits, int) or n_digits <= 0:
        raise ValueError(f"n_digits must be a positive integer, got {n_digits!r}")
    _check(n, length, vocab_size, 2 * n_digits + 5)
    rng = np.random.default_rng(seed)
    seqs = _filler(rng, n, length, vocab_size, filler)
    seqs[:, 0] = BOS
    keys = rng.choice(DIGITS, size=(n, n_digits))
    tail = length - n_digits - 1  # query marker position
    start = _depth_positions(rng, n, 1, tail - n_digits - 2, depth)
    rows = np.arange(n)[:, None]
    block = np.concatenate([np.full((n, 1), NEEDLE), keys, np.full((n, 1), NEEDLE)], axis=1)
    seqs[rows, start[:, None] + np.arange(n_digits + 2)] = block
    seqs[:, tail] = QUERY
    seqs[:, tail + 1:] = keys
    answer_pos = np.broadcast_to(np.arange(tail + 1, length), (n, n_digits)).copy()
    hay = tail - n_digits - 3
    return _finish(seqs, answer_pos, {"needle_positions": start + 1, "passkeys": keys,
                                      "depth": (start - 1) / max(hay, 1)})


def niah(n: int, length: int, seed: int = 0, *, depth: float | None = None, n_needles: int = 1,
         value_len: int = 2, vocab_size: int = 64, filler: str = "random") -> TaskBatch:
    """Needles ``[needle] key v1..vm`` hidden in filler; the query ``[query] key`` asks for one of them.

    The queried needle is placed at ``depth`` of the haystack (others uniformly, without
    overlap); keys are distinct symbols, values are digits. Answers: the m value tokens.
    """
    if not isinstance(n_needles, int) or n_needles <= 0:
        raise ValueError(f"n_needles must be a positive integer, got {n_needles!r}")
    if not isinstance(value_len, int) or value_len <= 0:
        raise ValueError(f"value_len must be a positive integer, got {value_len!r}")
    width = value_len + 2
    _check(n, length, vocab_size, n_needles * width + value_len + 4 + width)
    rng = np.random.default_rng(seed)
    seqs = _filler(rng, n, length, vocab_size, filler)
    seqs[:, 0] = BOS
    tail = length - value_len - 2  # [query] key v1..vm
    slots = (tail - 1) // width  # non-overlapping needle slots in the haystack
    if slots < n_needles:
        raise ValueError(f"length {length} leaves room for {slots} needles, asked for {n_needles}")
    symbols = np.arange(FIRST_SYMBOL, vocab_size)
    needle_pos = np.empty((n, n_needles), dtype=np.int64)
    keys = np.empty((n, n_needles), dtype=np.int64)
    values = rng.choice(DIGITS, size=(n, n_needles, value_len))
    query_slot = _depth_positions(rng, n, 0, slots - 1, depth)
    for i in range(n):
        keys[i] = rng.choice(symbols, size=n_needles, replace=False)
        others = rng.permutation(np.setdiff1d(np.arange(slots), [query_slot[i]]))[: n_needles - 1]
        chosen = np.r_[query_slot[i], others]
        needle_pos[i] = 1 + chosen * width
        for j in range(n_needles):
            seqs[i, needle_pos[i, j]: needle_pos[i, j] + width] = np.r_[NEEDLE, keys[i, j], values[i, j]]
    seqs[:, tail] = QUERY
    seqs[:, tail + 1] = keys[:, 0]
    seqs[:, tail + 2:] = values[:, 0]
    answer_pos = np.broadcast_to(np.arange(tail + 2, length), (n, value_len)).copy()
    return _finish(seqs, answer_pos, {"needle_positions": needle_pos, "keys": keys, "values": values,
                                      "depth": query_slot / max(slots - 1, 1)})


def mqar(n: int, length: int, seed: int = 0, *, n_pairs: int = 8, n_queries: int | None = None,
         vocab_size: int = 64) -> TaskBatch:
    """[bos] k1 v1 .. kP vP  pad..  q1 a1 .. qQ aQ: each query key is followed by its value.

    Keys and values are disjoint halves of the symbol range; the gap between definitions and
    queries grows with ``length``. Answers: the Q values after the queries.
    """
    n_queries = n_pairs if n_queries is None else n_queries
    if not isinstance(n_pairs, int) or n_pairs <= 0 or not isinstance(n_queries, int) or not 0 < n_queries:
        raise ValueError(f"n_pairs and n_queries must be positive integers, got {n_pairs!r}, {n_queries!r}")
    _check(n, length, vocab_size, 1 + 2 * n_pairs + 2 * n_queries)
    half = (vocab_size - FIRST_SYMBOL) // 2
    if n_pairs > half:
        raise ValueError(f"n_pairs must be <= {half} for vocab_size {vocab_size}, got {n_pairs}")
    rng = np.random.default_rng(seed)
    seqs = np.full((n, length), PAD, dtype=np.int64)
    seqs[:, 0] = BOS
    keys = np.stack([rng.choice(half, size=n_pairs, replace=False) for _ in range(n)]) + FIRST_SYMBOL
    values = rng.integers(0, half, size=(n, n_pairs)) + FIRST_SYMBOL + half
    seqs[:, 1:1 + 2 * n_pairs:2], seqs[:, 2:2 + 2 * n_pairs:2] = keys, values
    which = rng.integers(0, n_pairs, size=(n, n_queries))
    rows = np.arange(n)[:, None]
    q0 = length - 2 * n_queries
    seqs[:, q0::2] = keys[rows, which]
    seqs[:, q0 + 1::2] = values[rows, which]
    answer_pos = np.broadcast_to(np.arange(q0 + 1, length, 2), (n, n_queries)).copy()
    return _finish(seqs, answer_pos, {"keys": keys, "values": values, "queried": which,
                                      "definition_positions": 1 + 2 * which})


def variable_tracking(n: int, length: int, seed: int = 0, *, n_hops: int = 3, vocab_size: int = 64,
                      filler: str = "random") -> TaskBatch:
    """Assignments ``[assign] X1 d``, ``[assign] X2 X1``, ... scattered in order through filler;
    the query ``[query] X_last`` must be answered with the digit d (n_hops hops back)."""
    if not isinstance(n_hops, int) or n_hops <= 0:
        raise ValueError(f"n_hops must be a positive integer, got {n_hops!r}")
    _check(n, length, vocab_size, 3 * (n_hops + 1) + 4)
    rng = np.random.default_rng(seed)
    seqs = _filler(rng, n, length, vocab_size, filler)
    seqs[:, 0] = BOS
    tail = length - 3  # [query] X_last d
    slots = (tail - 1) // 3
    symbols = np.arange(FIRST_SYMBOL, vocab_size)
    positions = np.empty((n, n_hops + 1), dtype=np.int64)
    variables = np.empty((n, n_hops + 1), dtype=np.int64)
    digit = rng.choice(DIGITS, size=n)
    for i in range(n):
        variables[i] = rng.choice(symbols, size=n_hops + 1, replace=False)
        positions[i] = 1 + 3 * np.sort(rng.choice(slots, size=n_hops + 1, replace=False))
        seqs[i, positions[i, 0]: positions[i, 0] + 3] = (ASSIGN, variables[i, 0], digit[i])
        for h in range(1, n_hops + 1):
            seqs[i, positions[i, h]: positions[i, h] + 3] = (ASSIGN, variables[i, h], variables[i, h - 1])
    seqs[:, tail], seqs[:, tail + 1], seqs[:, tail + 2] = QUERY, variables[:, -1], digit
    answer_pos = np.full((n, 1), length - 1)
    return _finish(seqs, answer_pos, {"assign_positions": positions, "variables": variables, "digit": digit})


GENERATORS = {"passkey": passkey, "niah": niah, "mqar": mqar, "variable_tracking": variable_tracking}


def make_task(task: str, n: int, length: int, seed: int = 0, **kwargs) -> TaskBatch:
    """Dispatch to a generator by name (one of ``TASKS``)."""
    if task not in GENERATORS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return GENERATORS[task](n, length, seed, **kwargs)


class TaskData:
    """Adapter giving a task the ``lib.data.TokenData`` batching interface for ``lib.train``.

    ``batch(split, step, batch_size, seq_len, seed=0, ...)`` -> (inputs, targets) is a pure function
    of its arguments (train and val draw from disjoint seed streams); ``eval_batches`` yields
    fixed validation batches. Targets are -100 outside answers, so the loss is on answers only.
    """

    entropy_rate = None

    def __init__(self, task: str, vocab_size: int = 64, n_eval: int = 256, **task_kwargs):
        if task not in GENERATORS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task, self.vocab_size, self.n_eval, self.task_kwargs = task, vocab_size, n_eval, task_kwargs
        self.train = self.val = np.zeros(1, dtype=np.int64)  # token streams do not apply to tasks

    def _seed(self, split: str, step: int, seed: int, rank: int) -> int:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return int(np.random.SeedSequence([seed, 0 if split == "train" else 1, step, rank]).generate_state(1)[0])

    def batch(self, split: str, step: int, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
              world_size: int = 1):
        b = make_task(self.task, batch_size, seq_len, self._seed(split, step, seed, rank),
                      vocab_size=self.vocab_size, **self.task_kwargs)
        return b.inputs, b.targets

    def eval_batches(self, seq_len: int, batch_size: int, max_batches: int | None = None):
        count = max(1, self.n_eval // batch_size)
        for i in range(count if max_batches is None else min(count, max_batches)):
            yield self.batch("val", i, batch_size, seq_len, seed=12345)


@torch.no_grad()
def answer_accuracy(model, batch: TaskBatch, chunk: int = 64) -> dict:
    """Token accuracy over answer positions and exact-match (all answers of a sample right)."""
    was_training = model.training
    model.eval()
    correct = []
    for i in range(0, len(batch), chunk):
        out = model(batch.inputs[i:i + chunk].to(next(model.parameters()).device))
        logits = getattr(out, "logits", out)
        pred = logits.argmax(-1).cpu()
        m = batch.mask[i:i + chunk]
        correct.append(((pred == batch.targets[i:i + chunk]) & m).sum(1).float() / m.sum(1).float())
    model.train(was_training)
    frac = torch.cat(correct)
    return {"token_accuracy": float(frac.mean()), "exact_match": float((frac == 1).float().mean())}


def accuracy_vs_length(model, task: str, lengths, n: int = 64, seed: int = 1000, **task_kwargs) -> pd.DataFrame:
    """Accuracy on fresh samples at each length (DataFrame: length, token_accuracy, exact_match)."""
    rows = []
    for length in lengths:
        batch = make_task(task, n, int(length), seed + int(length), **task_kwargs)
        rows.append({"length": int(length), **answer_accuracy(model, batch)})
    return pd.DataFrame(rows)


def niah_heatmap(model, lengths, depths, n: int = 32, seed: int = 2000, task: str = "niah",
                 **task_kwargs) -> pd.DataFrame:
    """Exact-match accuracy per (length, depth): the classic needle-in-a-haystack grid (long format)."""
    if task not in ("niah", "passkey"):
        raise ValueError(f"task must be 'niah' or 'passkey' (tasks with a depth), got {task!r}")
    rows = []
    for length in lengths:
        for j, depth in enumerate(depths):
            batch = make_task(task, n, int(length), seed + 97 * int(length) + j, depth=float(depth), **task_kwargs)
            rows.append({"length": int(length), "depth": float(depth), **answer_accuracy(model, batch)})
    return pd.DataFrame(rows)


# --- training small models on a task and measuring length extrapolation ----------------------

def train_on_task(encoding: str, task: str, train_len: int, steps: int, seed: int = 0, *,
                  encoding_kwargs: dict | None = None, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                  batch_size: int = 32, lr: float = 3e-3, vocab_size: int = 64, task_kwargs: dict | None = None,
                  device=None, progress: bool = False):
    """Train a ``lib.models.Transformer`` with ``encoding`` on ``task`` at length ``train_len``.

    The model's ``max_seq_len`` is ``train_len`` (so YaRN/NTK "original length" and the hybrid's
    K default refer to it). Loss is on answer tokens only. Returns ``lib.train.TrainResult``.
    """
    from lib.models import ModelConfig, Transformer
    from lib.runtime import seed_everything
    from lib.train import TrainConfig, train

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
    from dataclasses import replace

    from lib.models import Transformer

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
    import json
    import time

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


def mean_ci(frame: pd.DataFrame, by, value: str = "exact_match", level: float = 0.95) -> pd.DataFrame:
    """Mean, sample std and Student-t confidence half-width of ``value`` over seeds per group."""
    from scipy import stats

    g = frame.groupby(by)[value]
    out = g.agg(["mean", "std", "count"]).reset_index()
    t = stats.t.ppf(0.5 + level / 2, (out["count"] - 1).clip(lower=1))
    out["ci"] = (t * out["std"] / np.sqrt(out["count"])).where(out["count"] > 1, np.nan)
    return out
