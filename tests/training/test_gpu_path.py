"""The CUDA training path, exercised on a CPU as far as a CPU allows: pinned non-blocking batch
copies only to CUDA, every batch through them, bf16 autocast and fused AdamW chosen by device."""

import warnings

import pytest
import torch

import lib.training.loop as loop
from lib.core import autocast
from lib.data import synthetic_corpus
from lib.models import ModelConfig, Transformer
from lib.training import TrainConfig, adamw, to_device, train


class Recorder:
    """Stands in for torch.Tensor.pin_memory / .to, recording calls, moving nothing."""

    def __init__(self):
        self.pinned, self.moves = 0, []

    def pin(self, tensor):
        self.pinned += 1
        return tensor

    def to(self, tensor, device, non_blocking=False):
        self.moves.append((torch.device(device).type, non_blocking))
        return tensor


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: rec.pin(self))
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device, non_blocking=False: rec.to(self, device, non_blocking))
    return rec


def test_copies_to_cuda_are_pinned_and_non_blocking(recorder):
    x, y = torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)
    out = to_device((x, y), torch.device("cuda"))
    assert out[0] is x and out[1] is y
    assert recorder.pinned == 2 and recorder.moves == [("cuda", True), ("cuda", True)]


def test_copies_elsewhere_are_plain(recorder):
    to_device((torch.zeros(3),), "cpu")
    assert recorder.pinned == 0 and recorder.moves == [("cpu", False)]


def test_training_moves_every_batch_through_to_device_and_never_pins_on_cpu(monkeypatch):
    seen = []

    def spy(tensors, device):
        seen.append(torch.device(device).type)
        return tuple(t.to(device) for t in tensors)

    def no_pin(self):
        raise AssertionError("pin_memory called on a CPU run")

    monkeypatch.setattr(loop, "to_device", spy)
    monkeypatch.setattr(torch.Tensor, "pin_memory", no_pin)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, max_seq_len=16))
    data = synthetic_corpus(n_train_tokens=4000, n_val_tokens=400, vocab_size=32)
    train(model, data, TrainConfig(steps=3, batch_size=2, seq_len=16, eval_every=0, eval_batches=2,
                                   device="cpu", progress=False))
    assert seen.count("cpu") == 3 + 2   # 3 training batches, then 2 validation batches


def test_autocast_is_bf16_on_cuda_and_off_elsewhere():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # a CPU-only torch warns that it disables CUDA autocast
        ctx = autocast(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and ctx.device == "cuda"
    assert not isinstance(autocast("cpu"), torch.autocast)


def test_adamw_is_fused_on_cpu_and_cuda_tensors_only():
    assert adamw([torch.nn.Parameter(torch.zeros(3))], lr=1e-3).defaults["fused"] is True
    with torch.device("meta"):
        meta = torch.nn.Parameter(torch.zeros(3))
    assert not adamw([meta], lr=1e-3).defaults["fused"]
    assert adamw([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, foreach=True).defaults["fused"] is None
