"""lib.schedules.lr_scheduler: ``attach`` against transformers' ``LambdaLR`` step by step, exact
resume from state dicts, per-group peaks, tensor LRs (Muon), and the per-micro-batch warning."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from transformers import optimization as hf

from lib import schedules as S


def test_attach_matches_transformers_lambda_lr_step_by_step():
    model = torch.nn.Linear(3, 1)
    opt_a = torch.optim.AdamW(model.parameters(), lr=3e-3)
    opt_b = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ours = S.attach(opt_a, S.WarmupCosine(200, 20, 0.1))
    ref = hf.get_cosine_with_min_lr_schedule_with_warmup(opt_b, 20, 200, min_lr_rate=0.1)
    for _ in range(201):  # steps 0..total_steps
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=0, abs=1e-18)
        opt_a.step(), opt_b.step()
        ours.step(), ref.step()
    assert ours.get_last_lr() == [3e-3 * 0.1] < ref.get_last_lr()  # floor vs HF's climb back


# ------------------------------------------------------------------------------ attach
def _train(opt, sched, steps, model, start=0):
    """A tiny deterministic loop (batch = f(step)); returns each optimizer step's group LRs."""
    lrs = []
    for step in range(start, start + steps):
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(step))
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return lrs


def _groups(model, lr=1e-2):
    return [{"params": [model.weight], "lr": lr}, {"params": [model.bias], "lr": lr / 10}]


@pytest.mark.parametrize("order", ["attach_then_load", "load_then_attach"])
def test_resume_from_state_dicts_continues_with_identical_lrs(order):
    sched = S.CosinePlateau(60, 10, 0.1, plateaus=[(0.4, 0.2)])
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(_groups(model))
    full = _train(opt, S.attach(opt, sched), 60, model)
    final = model.weight.detach().clone()

    model.load_state_dict(init)
    opt = torch.optim.AdamW(_groups(model))
    lr_sched = S.attach(opt, sched)
    first = _train(opt, lr_sched, 7, model)  # stop inside the warm-up: the hardest case
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": lr_sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # plain data only

    model2 = torch.nn.Linear(3, 1)
    model2.load_state_dict(ckpt["model"])
    opt2 = torch.optim.AdamW(_groups(model2))  # fresh: lr = the configured peaks
    if order == "attach_then_load":
        sched2 = S.attach(opt2, sched)
        opt2.load_state_dict(ckpt["opt"])
    else:
        opt2.load_state_dict(ckpt["opt"])  # group lr is now the warm-up LR, initial_lr the peak
        sched2 = S.attach(opt2, sched)
    sched2.load_state_dict(ckpt["sched"])
    rest = _train(opt2, sched2, 53, model2, start=7)
    assert first + rest == full  # identical LRs, no jump
    assert torch.equal(model2.weight, final)  # and so an identical run
    assert sched2.base_lrs == [1e-2, 1e-3] and [g["initial_lr"] for g in opt2.param_groups] == [1e-2, 1e-3]


def test_start_step_avoids_torchs_initial_lr_key_error():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    with pytest.raises(KeyError, match="initial_lr"):  # the original's resume failure mode
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0, last_epoch=5)
    sched = S.WarmupCosine(100, 10, 0.1)
    lr_sched = S.attach(opt, sched, start_step=5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * sched(5), abs=1e-16)
    lrs = []
    for _ in range(100):
        opt.step()
        lr_sched.step()
        lrs.append(lr_sched.get_last_lr()[0])
    np.testing.assert_allclose(lrs, 0.2 * sched.curve(np.arange(6, 106)), rtol=0, atol=1e-16)


def test_peak_is_not_clobbered_and_per_group_lrs():
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(_groups(model, lr=0.4), momentum=0.9)
    sched = S.WarmupCosine(50, 10, 0.1)
    lr_sched = S.attach(opt, sched)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]  # warm-up starts at exactly 0
    lrs = np.array(_train(opt, lr_sched, 60, model))
    np.testing.assert_allclose(lrs, np.outer(sched.curve(np.arange(60)), [0.4, 0.04]), atol=1e-17)
    assert lrs[10].tolist() == [0.4, 0.04]  # the peak exactly at the end of warm-up
    assert lr_sched.base_lrs == [0.4, 0.04]
    assert [g["initial_lr"] for g in opt.param_groups] == [0.4, 0.04]
    assert lr_sched.lr_at(10) == [0.4, 0.04]
    assert isinstance(lr_sched, torch.optim.lr_scheduler.LRScheduler)


def test_works_with_muon_tensor_lrs_and_explicit_peaks():
    w = torch.nn.Parameter(torch.randn(4, 4))
    muon = torch.optim.Muon([w], lr=0.02)
    lr_sched = S.attach(muon, S.WSD(20, 2, 5))
    for _ in range(20):
        w.grad = torch.randn(4, 4)
        muon.step()
        lr_sched.step()
    assert muon.param_groups[0]["lr"] == 0.0 and lr_sched.get_last_lr() == [0.0]
    p = torch.nn.Parameter(torch.zeros(2))
    adam = torch.optim.Adam([p], lr=torch.tensor(0.01), foreach=False)
    lr_sched = S.attach(adam, S.Constant(10, 4), peak_lrs=0.05)
    adam.step(), lr_sched.step()
    lr = adam.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and float(lr) == pytest.approx(0.05 / 4)
    with pytest.raises(ValueError, match="peak_lrs"):
        S.attach(adam, S.Constant(10), peak_lrs=[0.1, 0.2])


def test_stepping_per_micro_batch_warns_once():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    lr_sched = S.attach(opt, S.WarmupCosine(100, 10))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            opt.step()
            lr_sched.step()  # correct: once per optimizer step
        assert not caught
        for _ in range(3):
            opt.step()
            lr_sched.step()
            lr_sched.step()  # wrong: per micro-batch
    assert len(caught) == 1 and "once per OPTIMIZER step" in str(caught[0].message)


@pytest.mark.parametrize("kwargs, arg", [
    (dict(start_step=2.0), "start_step"),
    (dict(start_step=True), "start_step"),
    (dict(start_step=-1), "start_step"),
    (dict(peak_lrs=float("nan")), "peak_lrs"),
    (dict(peak_lrs=-0.1), "peak_lrs"),
    (dict(peak_lrs=True), "peak_lrs"),
])
def test_bad_attach_arguments_are_value_errors_naming_them(kwargs, arg):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=arg):
        S.attach(opt, S.Constant(10), **kwargs)


def test_attach_accepts_numpy_integers_and_any_callable():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    lr_sched = S.attach(opt, S.WarmupLinear(100, 10), start_step=np.int64(5), peak_lrs=np.float32(0.5))
    assert lr_sched.get_last_lr() == [0.5 * 5 / 10]
    opt.step(), lr_sched.step(epoch=np.int32(20))
    assert lr_sched.last_epoch == 20
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    halving = S.attach(opt, lambda step: 0.5 ** step)  # a plain function plays too
    opt.step(), halving.step()
    assert halving.get_last_lr() == [0.05]
