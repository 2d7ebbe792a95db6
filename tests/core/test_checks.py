"""lib.core.checks: the one set of argument rules (a bool is never a number, numpy integers are
integers, a float is not an integer, NaN and infinities are refused) and messages that name the
argument and what it may be."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from lib.core import (
    check_bool,
    check_choice,
    check_confidence,
    check_fraction,
    check_int,
    check_int_array,
    check_number,
    check_positive,
    check_positive_array,
    check_same_length,
    check_seed,
    check_token_ids,
)

NON_FINITE = [math.nan, math.inf, -math.inf, np.float64("nan"), np.float32("inf")]
BOOLS = [True, False, np.True_, np.False_]


# ---------------------------------------------------------------- integers
@pytest.mark.parametrize("value", [0, 7, -3, 10**12, np.int8(7), np.int32(7), np.int64(7), np.uint16(7)])
def test_check_int_accepts_python_and_numpy_integers_as_python_ints(value):
    out = check_int("count", value)
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value", [*BOOLS, 1.0, 1e9, np.float64(3.0), "3", None, Fraction(3), [3], math.nan])
def test_check_int_refuses_bools_floats_and_other_types(value):
    with pytest.raises(ValueError, match=r"^count must be an integer"):
        check_int("count", value)


def test_check_int_bounds_are_inclusive_and_named():
    assert check_int("n", 1, 1) == 1 and check_int("n", 5, 1, 5) == 5
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, got 0"):
        check_int("n", 0, 1)
    with pytest.raises(ValueError, match=r"n must be an integer >= 1 and <= 5, got 6"):
        check_int("n", np.int64(6), 1, 5)
    with pytest.raises(ValueError, match=r"n must be an integer <= 5"):
        check_int("n", 9, maximum=5)


@pytest.mark.parametrize("value", [0, 3, np.int64(2**40)])
def test_check_seed_is_a_non_negative_integer(value):
    assert check_seed("seed", value) == int(value)


@pytest.mark.parametrize("value", [-1, np.int64(-5), 1.0, True, "0", None])
def test_check_seed_refuses_negatives_floats_and_bools(value):
    with pytest.raises(ValueError, match=r"^seed must be an integer >= 0"):
        check_seed("seed", value)


# ---------------------------------------------------------------- real numbers
@pytest.mark.parametrize("value", [0, 2, -1.5, 1e300, np.float32(0.25), np.float64(-2.0), np.int64(4), Fraction(1, 4)])
def test_check_number_accepts_finite_reals_as_python_floats(value):
    out = check_number("x", value)
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value", [*BOOLS, *NON_FINITE, "1.0", None, 1j, [1.0], np.array([1.0])])
def test_check_number_refuses_bools_non_finite_values_and_other_types(value):
    with pytest.raises(ValueError, match=r"^x must be a finite number"):
        check_number("x", value)


def test_check_number_bounds_strict_and_inclusive():
    assert check_number("x", 0.0, 0.0, 1.0) == 0.0 and check_number("x", 1, 0.0, 1.0) == 1.0
    for value, kw in [(0.0, dict(strict_min=True)), (1.0, dict(strict_max=True)), (-1e-12, {}), (1 + 1e-12, {})]:
        with pytest.raises(ValueError, match=r"^x must be a finite number [>=<]"):
            check_number("x", value, 0.0, 1.0, **kw)
    with pytest.raises(ValueError, match=r"x must be a finite number > 0.0 and < 1.0, got 1.0"):
        check_number("x", 1.0, 0.0, 1.0, strict_min=True, strict_max=True)
    assert check_number("x", 5.0, maximum=10) == 5.0


def test_check_positive_and_allow_zero():
    assert check_positive("lr", 3e-4) == 3e-4 and check_positive("lr", np.float32(2.0)) == 2.0
    assert check_positive("wd", 0, allow_zero=True) == 0.0
    for value in (0, 0.0, -1e-9, *NON_FINITE, True):
        with pytest.raises(ValueError, match=r"^lr must be a finite number"):
            check_positive("lr", value)
    with pytest.raises(ValueError, match=r"wd must be a finite number >= 0.0, got -0.1"):
        check_positive("wd", -0.1, allow_zero=True)


def test_check_fraction_closed_or_half_open():
    assert [check_fraction("p", v) for v in (0, 0.5, 1)] == [0.0, 0.5, 1.0]
    assert check_fraction("p", 0.999, strict_max=True) == 0.999
    for value, kw in [(1.0, dict(strict_max=True)), (1.01, {}), (-0.01, {}), (math.nan, {}), (False, {})]:
        with pytest.raises(ValueError, match=r"^p must be a finite number >= 0.0 and <"):
            check_fraction("p", value, **kw)


@pytest.mark.parametrize("value", [0.5, 0.95, 0.999, np.float64(0.9)])
def test_check_confidence_accepts_levels_strictly_inside_zero_one(value):
    assert check_confidence(value) == float(value)


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 95, -0.5, *NON_FINITE, True, "0.95", None])
def test_check_confidence_refuses_the_ends_percentages_and_non_numbers(value):
    with pytest.raises(ValueError, match=r"^confidence must be a finite number > 0.0 and < 1.0"):
        check_confidence(value)
    with pytest.raises(ValueError, match=r"^level must be"):
        check_confidence(value, "level")


# ---------------------------------------------------------------- bools and choices
def test_check_bool_wants_a_real_bool():
    assert [check_bool("flag", v) for v in BOOLS] == [True, False, True, False]
    assert all(type(check_bool("flag", v)) is bool for v in BOOLS)
    for value in (1, 0, 1.0, "True", None, np.int64(1)):
        with pytest.raises(ValueError, match=r"^flag must be True or False"):
            check_bool("flag", value)


def test_check_choice_lists_what_is_allowed():
    assert check_choice("mode", "max", ("confidence", "max")) == "max"
    assert check_choice("k", 2, [1, 2, 3]) == 2
    with pytest.raises(ValueError, match=r"mode must be one of \['confidence', 'max'\], got 'sometimes'"):
        check_choice("mode", "sometimes", ("confidence", "max"))
    with pytest.raises(ValueError, match=r"k must be one of \[1, 2\], got True"):
        check_choice("k", True, (1, 2))  # True == 1, but a bool is not a number
    with pytest.raises(ValueError, match="^mode must be one of"):
        check_choice("mode", ["max"], ("confidence", "max"))  # unhashable: not a choice, no TypeError
    assert check_choice("k", 1, iter([1, 2])) == 1  # any iterable of choices


# ---------------------------------------------------------------- arrays
def test_check_positive_array():
    out = check_positive_array("sizes", [[1, 2], [3, 4]])
    assert out.dtype == np.float64 and out.tolist() == [1.0, 2.0, 3.0, 4.0]
    for values in ([], [1.0, 0.0], [1.0, -2.0], [1.0, math.nan], [math.inf], ["a"], None):
        with pytest.raises(ValueError, match=r"^sizes must be a non-empty array of finite positive numbers"):
            check_positive_array("sizes", values)


def test_check_int_array():
    out = check_int_array("offsets", np.array([0, 3, 5], dtype=np.int32))
    assert out.dtype == np.int64 and out.tolist() == [0, 3, 5]
    assert check_int_array("lengths", [4, 8], 1).tolist() == [4, 8]
    for values, minimum in (([], 0), ([1.0, 2.0], 0), ([[1, 2]], 0), ([-1, 2], 0), ([0, 2], 1), ([True], 0)):
        with pytest.raises(ValueError, match=rf"^offsets must be a non-empty 1-D array of integers >= {minimum}"):
            check_int_array("offsets", values, minimum)


def test_check_same_length_names_every_array():
    check_same_length(a=[1, 2], b=np.zeros(2), c=(3, 4))
    with pytest.raises(ValueError, match=r"same length, got \{'sizes': 2, 'losses': 3\}"):
        check_same_length(sizes=[1, 2], losses=[1, 2, 3])


def test_check_token_ids_against_numpy_and_torch():
    import torch

    check_token_ids("ids", np.array([0, 31]), 32)
    check_token_ids("ids", torch.tensor([[-100, 5]]), 32, ignore_index=-100)
    check_token_ids("ids", torch.tensor([-100, -100]), 32, ignore_index=-100)   # all masked
    with pytest.raises(ValueError, match=r"ids holds token ids in \[-1, 5\], outside .*vocab_size=32"):
        check_token_ids("ids", torch.tensor([-1, 5]), 32)
    with pytest.raises(ValueError, match=r"targets holds token ids in \[0, 32\]"):
        check_token_ids("targets", np.array([0, 32, -100]), 32, ignore_index=-100)
    with pytest.raises(ValueError, match="ids must be an array of integer token ids"):
        check_token_ids("ids", np.array([0.5]), 32)
    with pytest.raises(ValueError, match="vocab_size"):
        check_token_ids("ids", np.array([0]), True)
