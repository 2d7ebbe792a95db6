"""lib.schedules.decays against independent references: transformers' schedule functions,
torch's schedulers, and the closed-form Cosine-Plateau semantics (REFERENCES.md 01) computed by hand."""

from __future__ import annotations

import math
import pickle

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


@pytest.mark.parametrize("plateaus", [[(0.0, 1.0)], [(0.0, 0.5), (0.5, 0.5)], [(0.0, 0.25), (0.25, 0.75)]])
def test_cosine_plateau_covering_every_step_holds_the_peak(plateaus):
    # Plateaus filling all post-warm-up steps leave no cosine time: every plateau starts at
    # position 0 of the global cosine, the peak, so the LR is 1.0 from the end of warm-up to
    # total_steps (then the floor), the limit of (0.0, 1 - eps) as eps -> 0.
    sched = S.CosinePlateau(1000, 100, 0.1, plateaus=plateaus)
    steps = np.arange(1200)
    expected = np.where(steps < 100, steps / 100, np.where(steps < 1000, 1.0, 0.1))
    np.testing.assert_array_equal(sched.curve(steps), expected)
    np.testing.assert_array_equal([sched(int(s)) for s in steps], expected)
    nearly = S.CosinePlateau(1000, 100, 0.1, plateaus=[(0.0, 0.999)])  # the continuous neighbour
    assert nearly.curve(np.arange(100, 999)).min() == 1.0


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


def test_every_registered_schedule_is_exported_under_its_name():
    for name, cls in S.SCHEDULES.items():
        assert cls.name == name and getattr(S, cls.__name__) is cls
        assert cls.__name__ in S.__all__ and issubclass(cls, S.Schedule)


@pytest.mark.parametrize("sched", ALL, ids=lambda s: type(s).__name__)
def test_floor_past_total_steps_is_exact_in_both_paths(sched):
    after = np.array([sched.total_steps, sched.total_steps + 0.5, 3 * sched.total_steps])
    floor = getattr(sched, "min_lr_ratio", None)
    if floor is None:  # no floor: the shape goes on past the planned end
        np.testing.assert_allclose(sched.curve(after), [sched(s) for s in after], rtol=1e-14)
    else:
        assert sched.curve(after).tolist() == [sched(s) for s in after] == [floor] * 3
