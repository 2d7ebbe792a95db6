"""lib.schedules against independent references: transformers' schedule functions, torch's
schedulers, and the closed-form Cosine-Plateau semantics (REFERENCES.md 01) computed by hand."""

from __future__ import annotations

import io
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from transformers import optimization as hf

from lib import schedules as S

T, W = 1000, 100
STEPS = np.arange(T + 1)


def hf_values(fn, steps=STEPS, **kwargs) -> np.ndarray:
    """transformers' LR multipliers (its lr_lambda functions) at ``steps``."""
    return np.array([fn(int(s), **kwargs) for s in steps])


ALL = [
    S.WarmupCosine(T, W, 0.1),
    S.WarmupCosine(T),
    S.CosinePlateau(T, W, 0.1, plateaus=[(0.3, 0.2), (0.7, 0.1)]),
    S.CosinePlateau(T, 0, 0.0, plateaus=[(0.0, 0.25), (0.75, 0.25)]),
    S.WSD(T, W, 200, "1-sqrt", 0.05),
    S.WSD(T, 0, 300, "linear"),
    S.WSD(T, W, 900, "cosine", 0.1),
    S.WarmupLinear(T, W, 0.1),
    S.InverseSqrt(T, W),
    S.InverseSqrt(T),
    S.Constant(T, W),
    S.CosineRestarts(T, W, num_cycles=3, min_lr_ratio=0.1),
]


# ------------------------------------------------------------------ transformers / torch refs
def test_warmup_cosine_equals_transformers_cosine_with_min_lr():
    for warmup, floor in [(W, 0.1), (0, 0.0), (1, 0.05), (999, 0.5)]:
        ref = hf_values(hf._get_cosine_schedule_with_warmup_lr_lambda, num_warmup_steps=warmup,
                        num_training_steps=T, num_cycles=0.5, min_lr_rate=floor)
        ours = S.WarmupCosine(T, warmup, floor)
        np.testing.assert_allclose([ours(int(s)) for s in STEPS], ref, rtol=0, atol=1e-15)
        np.testing.assert_allclose(ours.curve(STEPS), ref, rtol=0, atol=1e-15)
    # Past total_steps transformers' cosine climbs back up; ours stays at the floor.
    assert S.WarmupCosine(T, W, 0.1)(1500) == 0.1


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


@pytest.mark.parametrize("warmup", [0, W])
def test_linear_constant_restarts_inverse_sqrt_equal_transformers(warmup):
    pairs = [
        (S.WarmupLinear(T, warmup), hf_values(
            hf._get_linear_schedule_with_warmup_lr_lambda, num_warmup_steps=warmup,
            num_training_steps=T)),
        (S.Constant(T, warmup), hf_values(
            hf._get_constant_schedule_with_warmup_lr_lambda, num_warmup_steps=warmup)),
        (S.CosineRestarts(T, warmup, num_cycles=3), hf_values(
            hf._get_cosine_with_hard_restarts_schedule_with_warmup_lr_lambda,
            num_warmup_steps=warmup, num_training_steps=T, num_cycles=3)),
        (S.InverseSqrt(T, warmup), hf_values(
            hf._get_inverse_sqrt_schedule_lr_lambda, np.arange(5 * T), num_warmup_steps=warmup,
            timescale=warmup or 10_000)),
    ]
    for ours, ref in pairs:
        steps = np.arange(len(ref))
        np.testing.assert_allclose(ours.curve(steps), ref, rtol=1e-14, atol=1e-15,
                                   err_msg=type(ours).__name__)
        np.testing.assert_allclose([ours(int(s)) for s in steps], ref, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("decay", ["1-sqrt", "linear", "cosine"])
def test_wsd_equals_transformers_wsd(decay):
    for warmup, floor in [(W, 0.0), (0, 0.1), (W, 0.1)]:
        ref = hf_values(hf._get_wsd_scheduler_lambda, np.arange(T + 50), num_warmup_steps=warmup,
                        num_stable_steps=T - warmup - 250, num_decay_steps=250,
                        warmup_type="linear", decay_type=decay, min_lr_ratio=floor, num_cycles=0.5)
        ours = S.WSD(T, warmup, 250, decay, floor).curve(np.arange(T + 50))
        # transformers' warm-up starts at min_lr_ratio; ours from exactly 0 like every schedule.
        post = slice(warmup, None) if floor else slice(0, None)
        np.testing.assert_allclose(ours[post], ref[post], rtol=0, atol=1e-15)
        np.testing.assert_allclose(ours[:warmup], np.arange(warmup) / max(warmup, 1))


def test_warmup_cosine_equals_torch_cosine_annealing_after_warmup():
    peak, floor = 0.5, 0.1
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T - W, eta_min=floor * peak)
    torch_lrs = []
    for _ in range(T - W + 1):
        torch_lrs.append(ref.get_last_lr()[0])
        opt.step(), ref.step()
    ours = peak * S.WarmupCosine(T, W, floor).curve(np.arange(W, T + 1))
    np.testing.assert_allclose(ours, torch_lrs, rtol=1e-9)  # torch's recursion drifts a little


# ---------------------------------------------------------------- cosine-plateau semantics
def test_cosine_plateau_hand_computed_values():
    sched = S.CosinePlateau(T, W, 0.1, plateaus=[(0.7, 0.1), (0.3, 0.2)])  # unsorted on purpose
    # N = 900 post-warm-up steps; plateaus [270, 450) and [630, 720); global cosine 630 steps.
    level1 = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 270 / 630))          # 0.6501344...
    level2 = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (630 - 180) / 630))  # 0.2694295...
    assert level1 == pytest.approx(0.65013442028, abs=1e-10)
    assert level2 == pytest.approx(0.26942958916, abs=1e-10)
    expected = {
        0: 0.0, 50: 0.5, 100: 1.0,
        100 + 135: (1 + level1) / 2,            # middle of the first half-cosine
        370: level1, 460: level1, 549: level1,  # plateau 1 (flat)
        550 + 90: (level1 + level2) / 2,        # middle of the second segment
        730: level2, 819: level2,               # plateau 2
        820 + 90: (level2 + 0.1) / 2,           # middle of the last segment
        1000: 0.1, 10_000: 0.1,                 # the floor, also past total_steps
    }
    for step, value in expected.items():
        assert sched(step) == pytest.approx(value, abs=1e-12), step
        assert sched.curve([step])[0] == pytest.approx(value, abs=1e-12), step


def test_cosine_plateau_shape_properties():
    for plateaus in [[(0.3, 0.2), (0.7, 0.1)], [(0.0, 0.5)], [(0.5, 0.5)], [(0.2, 0.2), (0.4, 0.1)]]:
        sched = S.CosinePlateau(2000, 200, 0.05, plateaus)
        values = sched.curve(np.arange(0, 2400))
        post = values[200:]
        assert np.all(np.diff(post) <= 1e-15), plateaus              # never rises after warm-up
        assert np.abs(np.diff(post)).max() < 0.01, plateaus          # continuous: no jumps
        assert values[200] == (sched._pieces[0][2] if plateaus[0][0] == 0 else 1.0)
        assert np.all(values[2000:] == 0.05)
        for start, length in plateaus:                               # flat on each plateau
            lo = 200 + math.floor(start * 1800 + 1e-9)
            flat = values[lo:lo + math.floor(length * 1800 + 1e-9)]
            assert np.ptp(flat) == 0.0 and len(flat) > 0


def test_cosine_plateau_without_plateaus_is_warmup_cosine():
    np.testing.assert_allclose(S.CosinePlateau(T, W, 0.1).curve(STEPS),
                               S.WarmupCosine(T, W, 0.1).curve(STEPS), rtol=0, atol=1e-15)


@pytest.mark.parametrize("plateaus", [[(0.3, 0.3), (0.5, 0.1)], [(0.9, 0.2)], [(-0.1, 0.2)],
                                      [(0.2, 0.0)], [(0.2,)], [(0.1, float("nan"))], 5])
def test_cosine_plateau_rejects_bad_plateaus(plateaus):
    with pytest.raises(ValueError, match="plateaus"):
        S.CosinePlateau(T, W, plateaus=plateaus)


# ------------------------------------------------------------------------ every schedule
@pytest.mark.parametrize("sched", ALL, ids=lambda s: type(s).__name__)
def test_curve_equals_scalar_path_and_pickles(sched):
    steps = np.concatenate([np.arange(0, 1300), np.linspace(0, 1300, 777), [10 ** 7]])
    for order in (steps, np.sort(steps)):  # unsorted (gather) and sorted (sliced) paths
        np.testing.assert_allclose(sched.curve(order), [sched(s) for s in order], rtol=1e-13, atol=1e-15)
    assert sched(0) == 0.0 or sched.warmup_steps == 0
    clone = pickle.loads(pickle.dumps(sched))
    assert clone == sched and np.array_equal(clone.curve(steps), sched.curve(steps))
    assert S.build(**sched.config()) == sched
    assert sched.curve(np.empty(0)).shape == (0,)
    grid = sched.curve(np.arange(12).reshape(3, 4))
    assert grid.shape == (3, 4)


def test_construction_does_not_tabulate_total_steps():
    sched = S.CosinePlateau(10 ** 12, 10 ** 9, 0.1, plateaus=[(0.5, 0.1)])
    assert sched(5 * 10 ** 8) == 0.5 and sched(10 ** 12) == 0.1
    assert len(pickle.dumps(sched)) < 1000


@pytest.mark.parametrize("make, arg", [
    (lambda: S.WarmupCosine(0), "total_steps"),
    (lambda: S.WarmupCosine(-5), "total_steps"),
    (lambda: S.WarmupCosine(10.5), "total_steps"),
    (lambda: S.WarmupCosine(True), "total_steps"),
    (lambda: S.WarmupCosine(100, 100), "warmup_steps"),
    (lambda: S.WarmupCosine(100, -1), "warmup_steps"),
    (lambda: S.WarmupCosine(100, 10, float("nan")), "min_lr_ratio"),
    (lambda: S.WarmupCosine(100, 10, 1.5), "min_lr_ratio"),
    (lambda: S.CosinePlateau(100, 10, -0.1), "min_lr_ratio"),
    (lambda: S.WSD(100, 10, 91), "decay_steps"),
    (lambda: S.WSD(100, 10, 0), "decay_steps"),
    (lambda: S.WSD(100, 10, 20, decay="exp"), "decay"),
    (lambda: S.CosineRestarts(100, 0, num_cycles=0), "num_cycles"),
    (lambda: S.InverseSqrt(100, 0, timescale=0), "timescale"),
    (lambda: S.build("cosine_with_typo", total_steps=10), "name"),
    (lambda: S.build("wsd", total_steps=10, warmup=1), "warmup"),
    (lambda: S.WarmupCosine(100)(-1), "step"),
    (lambda: S.WarmupCosine(100)(float("nan")), "step"),
    (lambda: S.WarmupCosine(100).curve([1, -2]), "steps"),
])
def test_bad_input_is_value_error_naming_the_argument(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


def test_registry_and_integral_floats():
    assert set(S.SCHEDULES) == {"warmup_cosine", "cosine_plateau", "wsd", "linear",
                                "inverse_sqrt", "constant", "cosine_restarts"}
    assert S.build("warmup_cosine", total_steps=1e3, warmup_steps=10) == S.WarmupCosine(1000, 10)


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
