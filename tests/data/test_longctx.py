"""lib.data.longctx: every generator puts the answer where it says, masks exactly the answers,
is deterministic per seed, and the evaluation helpers score a perfect oracle as 1.0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.data import longctx as L


def check_common(batch, length, n):
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (n, length)
    # mask marks exactly the scored positions, whose targets are the next input tokens
    assert torch.equal(batch.mask, batch.targets != L.IGNORE)
    rows, cols = torch.nonzero(batch.mask, as_tuple=True)
    assert torch.equal(batch.targets[rows, cols], batch.inputs[rows, cols + 1])
    answer_cols = torch.from_numpy(batch.meta["answer_positions"])
    assert torch.equal(torch.sort(cols.view(n, -1), dim=1).values, torch.sort(answer_cols - 1, dim=1).values)


@pytest.mark.parametrize("task", L.TASKS)
def test_determinism_and_shapes(task):
    a, b = L.make_task(task, 6, 96, seed=3), L.make_task(task, 6, 96, seed=3)
    c = L.make_task(task, 6, 96, seed=4)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    check_common(a, 96, 6)
    assert int(a.inputs.max()) < 64 and int(a.inputs.min()) >= 0


def test_passkey_answer_is_the_hidden_digits():
    batch = L.passkey(8, 120, seed=1, n_digits=4, depth=0.25)
    x = batch.inputs.numpy()
    for i in range(8):
        p = batch.meta["needle_positions"][i]
        assert x[i, p - 1] == L.NEEDLE and x[i, p + 4] == L.NEEDLE
        np.testing.assert_array_equal(x[i, p:p + 4], batch.meta["passkeys"][i])
        np.testing.assert_array_equal(x[i, -4:], batch.meta["passkeys"][i])
        assert x[i, -5] == L.QUERY
    assert batch.meta["depth"] == pytest.approx(np.full(8, 0.25), abs=0.02)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_niah_multikey_depth_and_answer(depth):
    batch = L.niah(5, 200, seed=2, depth=depth, n_needles=3, value_len=2)
    x = batch.inputs.numpy()
    for i in range(5):
        pos = batch.meta["needle_positions"][i]
        assert len(set(pos)) == 3
        for j in range(3):
            assert x[i, pos[j]] == L.NEEDLE and x[i, pos[j] + 1] == batch.meta["keys"][i, j]
            np.testing.assert_array_equal(x[i, pos[j] + 2:pos[j] + 4], batch.meta["values"][i, j])
        assert x[i, -4] == L.QUERY and x[i, -3] == batch.meta["keys"][i, 0]
        np.testing.assert_array_equal(x[i, -2:], batch.meta["values"][i, 0])
    rel = (batch.meta["needle_positions"][:, 0] - 1) / (200 - 4 - 1 - 4)  # haystack minus one needle
    assert rel == pytest.approx(np.full(5, depth), abs=0.03)
    assert batch.meta["depth"] == pytest.approx(np.full(5, depth), abs=0.03)  # realised (slot-quantised) depth


def test_mqar_values_follow_their_keys():
    batch = L.mqar(4, 64, seed=0, n_pairs=6, n_queries=4)
    x = batch.inputs.numpy()
    for i in range(4):
        table = {x[i, 1 + 2 * j]: x[i, 2 + 2 * j] for j in range(6)}
        for p in batch.meta["answer_positions"][i]:
            assert table[x[i, p - 1]] == x[i, p]
            assert x[i, batch.meta["definition_positions"][i][list(batch.meta["answer_positions"][i]).index(p)]] == x[i, p - 1]


def test_variable_tracking_chain_resolves_to_the_digit():
    batch = L.variable_tracking(5, 90, seed=7, n_hops=3)
    x = batch.inputs.numpy()
    for i in range(5):
        var = x[i, -2]
        for _ in range(10):  # follow the chain backwards through the assignments
            starts = np.flatnonzero((x[i, :-3] == L.ASSIGN) & (np.r_[x[i, 1:-3], -1] == var))
            value = x[i, starts[-1] + 2]
            if value in L.DIGITS:
                break
            var = value
        assert value == x[i, -1] == batch.meta["digit"][i]


def test_validation_and_task_data_adapter():
    with pytest.raises(ValueError, match="length"):
        L.passkey(2, 8)
    with pytest.raises(ValueError, match="task"):
        L.make_task("qa", 2, 64)
    with pytest.raises(ValueError, match="depth"):
        L.niah(2, 64, depth=1.5)
    data = L.TaskData("mqar", n_pairs=4)
    x1, y1 = data.batch("train", 5, 8, 48, seed=1)
    x2, _ = data.batch("train", 5, 8, 48, seed=1)
    xv, _ = data.batch("val", 5, 8, 48, seed=1)
    assert torch.equal(x1, x2) and not torch.equal(x1, xv) and (y1 != L.IGNORE).sum() == 8 * 4


class Oracle(torch.nn.Module):
    """Predicts the right next token at answer positions (copies the batch's targets)."""

    def __init__(self, batch):
        super().__init__()
        self.batch, self.w = batch, torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        n = idx.shape[0]
        hit = [i for i in range(len(self.batch)) if torch.equal(self.batch.inputs[i], idx[0])][0]
        tgt = self.batch.targets[hit:hit + n].clamp(min=0)
        return torch.nn.functional.one_hot(tgt, 64).float()


def test_answer_accuracy_oracle_and_chance():
    batch = L.passkey(10, 64, seed=0)
    assert L.answer_accuracy(Oracle(batch), batch) == {"token_accuracy": 1.0, "exact_match": 1.0}

    class Zero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, idx):
            return torch.zeros(*idx.shape, 64)

    assert L.answer_accuracy(Zero(), batch)["exact_match"] == 0.0


def test_answer_scores_count_each_samples_right_answer_tokens():
    """A model right on the first answer token of every sample and wrong on the others scores
    1/k per sample (k answer tokens), and exact match only where k = 1."""
    batch = L.niah(6, 48, seed=3, value_len=3)
    first = batch.mask.float().cumsum(1) == 1  # the first answer position of each row

    class FirstOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, idx):
            hit = [i for i in range(len(batch)) if torch.equal(batch.inputs[i], idx[0])][0]
            rows = slice(hit, hit + idx.shape[0])
            tgt = torch.where(first[rows] & batch.mask[rows], batch.targets[rows], L.PAD).clamp(min=0)
            return torch.nn.functional.one_hot(tgt, 64).float()

    scores = L.answer_scores(FirstOnly(), batch, chunk=4)
    assert scores.dtype == np.float64 and scores.shape == (6,)
    np.testing.assert_allclose(scores, 1 / 3)
    assert L.answer_accuracy(FirstOnly(), batch) == {"token_accuracy": pytest.approx(1 / 3), "exact_match": 0.0}
    np.testing.assert_array_equal(L.answer_scores(Oracle(batch), batch), np.ones(6))


# ---------------------------------------------------------------- argument rules
@pytest.mark.parametrize("task", L.TASKS)
def test_generators_take_numpy_ints(task):
    a = L.make_task(task, 4, 96, seed=5)
    b = L.make_task(task, np.int64(4), np.int32(96), seed=np.uint32(5), vocab_size=np.int64(64))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


@pytest.mark.parametrize("task", L.TASKS)
@pytest.mark.parametrize("args,kwargs,match", [
    ((True, 96), {}, "n"),
    ((4.0, 96), {}, "n"),
    ((4, 96.0), {}, "length"),
    ((4, 96), {"seed": -1}, "seed"),
    ((4, 96), {"seed": 1.5}, "seed"),
    ((4, 96), {"vocab_size": 64.0}, "vocab_size"),
    ((4, 96), {"vocab_size": 32}, "vocab_size"),
])
def test_generators_refuse_bools_and_floats(task, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.make_task(task, *args, **kwargs)


@pytest.mark.parametrize("task,kwargs,match", [
    ("passkey", {"n_digits": 4.0}, "n_digits"),
    ("passkey", {"depth": True}, "depth"),
    ("passkey", {"depth": "0.5"}, "depth"),
    ("passkey", {"filler": "zeros"}, "filler"),
    ("niah", {"n_needles": True}, "n_needles"),
    ("niah", {"value_len": 2.0}, "value_len"),
    ("niah", {"depth": -0.1}, "depth"),
    ("mqar", {"n_pairs": 4.0}, "n_pairs"),
    ("mqar", {"n_pairs": 30}, "n_pairs"),
    ("mqar", {"n_queries": True}, "n_queries"),
    ("variable_tracking", {"n_hops": 0}, "n_hops"),
    ("variable_tracking", {"filler": None}, "filler"),
])
def test_task_options_are_checked(task, kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.make_task(task, 2, 96, **kwargs)


def test_depth_takes_numpy_numbers():
    a = L.niah(3, 128, seed=1, depth=0.5)
    b = L.niah(3, 128, seed=1, depth=np.float32(0.5))
    assert torch.equal(a.inputs, b.inputs)


def test_task_data_checks_its_arguments():
    with pytest.raises(ValueError, match="task"):
        L.TaskData("qa")
    with pytest.raises(ValueError, match="vocab_size"):
        L.TaskData("mqar", vocab_size=64.0)
    with pytest.raises(ValueError, match="n_eval"):
        L.TaskData("mqar", n_eval=0)
    data = L.TaskData("passkey")
    for kwargs, match in [({"split": "test"}, "split"), ({"step": True}, "step"), ({"seed": -1}, "seed"),
                          ({"rank": 1}, "rank"), ({"world_size": 0}, "world_size")]:
        with pytest.raises(ValueError, match=match):
            data.batch(**{"split": "train", "step": 0, "batch_size": 2, "seq_len": 32, **kwargs})
    with pytest.raises(ValueError, match="batch_size"):
        next(data.eval_batches(32, 0))
    x, _ = data.batch("train", np.int64(3), 2, 32, seed=np.int64(1))
    assert torch.equal(x, data.batch("train", 3, 2, 32, seed=1)[0])


def test_evaluations_check_lengths_depths_and_task():
    batch = L.passkey(4, 64, seed=0)
    model = Oracle(batch)
    with pytest.raises(ValueError, match="lengths"):
        L.accuracy_vs_length(model, "passkey", [64.5], n=2)
    with pytest.raises(ValueError, match="depths"):
        L.niah_heatmap(model, [64], [True], n=2, task="passkey")
    with pytest.raises(ValueError, match="task"):
        L.niah_heatmap(model, [64], [0.5], n=2, task="mqar")
    with pytest.raises(ValueError, match="chunk"):
        L.answer_accuracy(model, batch, chunk=0)
