"""lib.schedules.base: argument and step validation (through lib.core.checks), the registry and
``build``, and the warm-up and floor that the base applies to every schedule's shape."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from lib import schedules as S
from lib.schedules.base import Schedule


@dataclass(frozen=True)
class Half(Schedule):
    """A toy schedule (not registered): 0.5 after warm-up, then its floor."""

    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def _shape(self, step: float) -> float:
        return 0.5

    def _shape_curve(self, steps: np.ndarray) -> np.ndarray:
        return np.full_like(steps, 0.5)


@dataclass(frozen=True)
class Endless(Schedule):
    """A toy schedule without ``min_lr_ratio``: its shape goes on past ``total_steps``."""

    total_steps: int
    warmup_steps: int = 0

    def _shape(self, step: float) -> float:
        return 1.0 / (1.0 + step)

    def _shape_curve(self, steps: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + steps)


def test_base_adds_warmup_and_floor_to_a_shape():
    sched = Half(10, 4, 0.1)
    steps = np.array([0, 1, 2, 3, 4, 9, 9.5, 10, 11, 1e6])
    expected = [0.0, 0.25, 0.5, 0.75, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1]
    assert [sched(s) for s in steps] == expected
    assert sched.curve(steps).tolist() == expected
    assert Endless(10, 2).curve([1, 10, 99]).tolist() == [0.5, 1 / 11, 1 / 100]
    assert Endless(10, 2)(99) == 1 / 100


def test_curve_keeps_the_shape_of_its_input():
    sched = S.WarmupCosine(100, 10, 0.1)
    assert sched.curve(5).shape == () and sched.curve(5) == sched(5)
    assert sched.curve(np.arange(12).reshape(3, 4)).tolist() == [
        [sched(s) for s in row] for row in np.arange(12).reshape(3, 4)]
    assert sched.curve([]).shape == (0,)
    steps = np.arange(20.0)
    sched.curve(steps)
    assert steps.tolist() == list(range(20))  # the caller's array is not written to


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
    (lambda: S.build("cosine_with_typo", total_steps=10), "schedule 'cosine_with_typo'"),
    (lambda: S.build("wsd", total_steps=10, warmup=1), "warmup"),
    (lambda: S.WarmupCosine(100)(-1), "step"),
    (lambda: S.WarmupCosine(100)(float("nan")), "step"),
    (lambda: S.WarmupCosine(100).curve([1, -2]), "steps"),
])
def test_bad_input_is_value_error_naming_the_argument(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


@pytest.mark.parametrize("make, arg", [
    (lambda: S.WarmupCosine(1e9), "total_steps"),
    (lambda: S.build("warmup_cosine", total_steps=1e3, warmup_steps=10), "total_steps"),
    (lambda: S.WarmupCosine(1000, 10.0), "warmup_steps"),
    (lambda: S.WSD(1000, 10, 200.0), "decay_steps"),
    (lambda: S.CosineRestarts(1000, num_cycles=3.0), "num_cycles"),
    (lambda: S.InverseSqrt(1000, timescale=1e4), "timescale"),
    (lambda: S.WarmupCosine(1000, True), "warmup_steps"),
    (lambda: S.WarmupCosine(1000, 10, True), "min_lr_ratio"),
    (lambda: S.WarmupCosine(1000, 10, np.bool_(False)), "min_lr_ratio"),
    (lambda: S.CosinePlateau(1000, 10, plateaus=[(True, 0.1)]), "plateaus"),
    (lambda: S.WarmupCosine(1000)(True), "step"),
])
def test_a_float_count_or_a_bool_is_refused(make, arg):
    with pytest.raises(ValueError, match=arg) as err:
        make()
    assert "got" in str(err.value)  # and says what it got


def test_numpy_numbers_are_accepted():
    sched = S.WSD(np.int64(1000), np.int32(100), np.uint16(200), min_lr_ratio=np.float32(0.5))
    assert sched == S.WSD(1000, 100, 200, min_lr_ratio=0.5)
    assert type(sched.total_steps) is int and type(sched.decay_steps) is int
    assert type(sched.min_lr_ratio) is float
    assert S.CosineRestarts(1000, num_cycles=np.int8(3)).num_cycles == 3
    assert S.build("warmup_cosine", total_steps=np.int64(10**3)) == S.WarmupCosine(1000)
    assert sched(np.int64(50)) == sched(50) == 0.5 and sched(np.float64(1000.0)) == 0.5


def test_registry_and_build():
    assert set(S.SCHEDULES) == {"warmup_cosine", "cosine_plateau", "wsd", "linear",
                                "inverse_sqrt", "constant", "cosine_restarts"}
    assert S.SCHEDULES.get_entry("wsd") is S.WSD
    wsd = S.build("wsd", total_steps=1000, warmup_steps=50, decay_steps=200)
    assert wsd == S.WSD(1000, 50, 200) and wsd.config()["name"] == "wsd"
    assert S.build(**wsd.config()) == wsd
    with pytest.raises(TypeError):  # the registry is read-only
        S.SCHEDULES["mine"] = Half
