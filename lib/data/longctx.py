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
of assignments X1 = v, X2 = X1, ... ; query the value of the last variable); ``make_task``
dispatches by name. ``filler`` (one of ``FILLERS``) is random symbols or a repeated sentence.

Training and scoring: ``TaskData`` gives a task ``TokenData``'s batching interface for
``lib.training``; ``answer_scores`` (per sample), ``answer_accuracy``, ``accuracy_vs_length`` and
``niah_heatmap`` score a model on answer positions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lib.core import check_choice, check_fraction, check_int, check_seed
from lib.data.tokens import SPLITS

PAD, BOS, NEEDLE, QUERY, ASSIGN, SEP = 0, 1, 2, 3, 4, 5
DIGITS = np.arange(6, 16)
FIRST_SYMBOL = 16
IGNORE = -100
TASKS = ("passkey", "niah", "mqar", "variable_tracking")
FILLERS = ("random", "repeat")


@dataclass
class TaskBatch:
    """inputs/targets/mask [N, T] plus per-sample metadata (numpy arrays)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.inputs.shape[0]


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
    if check_choice("filler", filler, FILLERS) == "random":
        return rng.integers(FIRST_SYMBOL, vocab_size, size=(n, t))
    # "repeat": one fixed cyclic "sentence" of 7 symbols, like the passkey paper's prose
    pattern = FIRST_SYMBOL + (np.arange(t) % 7)
    return np.broadcast_to(pattern, (n, t)).copy()


def _check_depth(depth) -> float | None:
    return None if depth is None else check_fraction("depth", depth)


def _depth_positions(rng, n, lo, hi, depth):
    """Start positions in [lo, hi]: at fraction ``depth`` of the span, or uniform if None."""
    if depth is None:
        return rng.integers(lo, hi + 1, size=n)
    return np.full(n, lo + int(round(depth * (hi - lo))))


def passkey(n: int, length: int, seed: int = 0, *, n_digits: int = 5, depth: float | None = None,
            vocab_size: int = 64, filler: str = "random") -> TaskBatch:
    """[bos] filler.. [needle] d1..dk [needle] filler.. [query] d1..dk; answers: the last k digits.

    ``depth`` in [0, 1] places the passkey at that fraction of the haystack (None: uniform).
    """
    n, vocab_size = check_int("n", n, 1), check_int("vocab_size", vocab_size, 48)
    n_digits = check_int("n_digits", n_digits, 1)
    length = check_int("length", length, 2 * n_digits + 5)
    depth = _check_depth(depth)
    rng = np.random.default_rng(check_seed("seed", seed))
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
    n, vocab_size = check_int("n", n, 1), check_int("vocab_size", vocab_size, 48)
    n_needles = check_int("n_needles", n_needles, 1)
    value_len = check_int("value_len", value_len, 1)
    width = value_len + 2
    length = check_int("length", length, n_needles * width + value_len + 4 + width)
    depth = _check_depth(depth)
    rng = np.random.default_rng(check_seed("seed", seed))
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
    n, vocab_size = check_int("n", n, 1), check_int("vocab_size", vocab_size, 48)
    half = (vocab_size - FIRST_SYMBOL) // 2   # keys and values each take half the symbols
    n_pairs = check_int("n_pairs", n_pairs, 1, half)
    n_queries = n_pairs if n_queries is None else check_int("n_queries", n_queries, 1)
    length = check_int("length", length, 1 + 2 * n_pairs + 2 * n_queries)
    rng = np.random.default_rng(check_seed("seed", seed))
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
    n, vocab_size = check_int("n", n, 1), check_int("vocab_size", vocab_size, 48)
    n_hops = check_int("n_hops", n_hops, 1)
    length = check_int("length", length, 3 * (n_hops + 1) + 4)
    rng = np.random.default_rng(check_seed("seed", seed))
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
    return GENERATORS[check_choice("task", task, TASKS)](n, length, seed, **kwargs)


class TaskData:
    """Adapter giving a task the ``lib.data.TokenData`` batching interface for ``lib.training``.

    ``batch(split, step, batch_size, seq_len, seed=0, ...)`` -> (inputs, targets) is a pure function
    of its arguments (train and val draw from disjoint seed streams); ``eval_batches`` yields
    fixed validation batches. Targets are -100 outside answers, so the loss is on answers only.
    """

    entropy_rate = None

    def __init__(self, task: str, vocab_size: int = 64, n_eval: int = 256, **task_kwargs):
        self.task = check_choice("task", task, TASKS)
        self.vocab_size = check_int("vocab_size", vocab_size, 48)
        self.n_eval = check_int("n_eval", n_eval, 1)
        self.task_kwargs = task_kwargs
        self.train = self.val = np.zeros(1, dtype=np.int64)  # token streams do not apply to tasks

    def batch(self, split: str, step: int, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
              world_size: int = 1):
        check_choice("split", split, SPLITS)
        world_size = check_int("world_size", world_size, 1)
        words = [check_seed("seed", seed), 0 if split == "train" else 1, check_int("step", step, 0),
                 check_int("rank", rank, 0, world_size - 1)]
        b = make_task(self.task, batch_size, seq_len, int(np.random.SeedSequence(words).generate_state(1)[0]),
                      vocab_size=self.vocab_size, **self.task_kwargs)
        return b.inputs, b.targets

    def eval_batches(self, seq_len: int, batch_size: int, max_batches: int | None = None):
        batch_size = check_int("batch_size", batch_size, 1)
        if max_batches is not None:
            max_batches = check_int("max_batches", max_batches, 1)
        count = max(1, self.n_eval // batch_size)
        for i in range(count if max_batches is None else min(count, max_batches)):
            yield self.batch("val", i, batch_size, seq_len, seed=12345)


@torch.no_grad()
def answer_scores(model, batch: TaskBatch, chunk: int = 64) -> np.ndarray:
    """Per sample, the fraction of its answer tokens the model predicts right (float64 [N]; a
    sample is an exact match where it is 1). Greedy next-token predictions at answer positions."""
    chunk = check_int("chunk", chunk, 1)
    was_training = model.training
    model.eval()
    correct = []
    try:
        for i in range(0, len(batch), chunk):
            out = model(batch.inputs[i:i + chunk].to(next(model.parameters()).device))
            logits = getattr(out, "logits", out)
            pred = logits.argmax(-1).cpu()
            m = batch.mask[i:i + chunk]
            correct.append(((pred == batch.targets[i:i + chunk]) & m).sum(1).double() / m.sum(1).double())
    finally:
        model.train(was_training)
    return torch.cat(correct).numpy()


def answer_accuracy(model, batch: TaskBatch, chunk: int = 64) -> dict:
    """Token accuracy over answer positions and exact-match (all answers of a sample right)."""
    frac = answer_scores(model, batch, chunk)
    return {"token_accuracy": float(frac.mean()), "exact_match": float((frac == 1).mean())}


def accuracy_vs_length(model, task: str, lengths, n: int = 64, seed: int = 1000, **task_kwargs) -> pd.DataFrame:
    """Accuracy on fresh samples at each length (DataFrame: length, token_accuracy, exact_match)."""
    seed = check_seed("seed", seed)
    rows = []
    for length in lengths:
        length = check_int("lengths", length, 1)
        batch = make_task(task, n, length, seed + length, **task_kwargs)
        rows.append({"length": length, **answer_accuracy(model, batch)})
    return pd.DataFrame(rows)


def niah_heatmap(model, lengths, depths, n: int = 32, seed: int = 2000, task: str = "niah",
                 **task_kwargs) -> pd.DataFrame:
    """Exact-match accuracy per (length, depth): the classic needle-in-a-haystack grid (long format)."""
    check_choice("task", task, ("niah", "passkey"))   # the tasks with a depth
    seed = check_seed("seed", seed)
    rows = []
    for length in lengths:
        length = check_int("lengths", length, 1)
        for j, depth in enumerate(depths):
            depth = check_fraction("depths", depth)
            batch = make_task(task, n, length, seed + 97 * length + j, depth=depth, **task_kwargs)
            rows.append({"length": length, "depth": depth, **answer_accuracy(model, batch)})
    return pd.DataFrame(rows)
