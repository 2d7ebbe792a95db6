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
    """Adapter giving a task the ``lib.data.TokenData`` batching interface for ``lib.training``.

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
