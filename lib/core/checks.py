"""Argument validation: the one place every public function checks its inputs.

Each check returns the value converted to a plain Python type, or raises ``ValueError`` naming
the argument and what is allowed. The rules are the same everywhere: a bool is never a number;
numpy integers are integers; a float is not an integer (``1e9`` is refused where a count is
asked for: say ``10**9``); NaN and infinities are refused unless a bound says otherwise.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "check_int", "check_number", "check_positive", "check_fraction", "check_choice", "check_seed",
    "check_bool", "check_positive_array", "check_int_array", "check_same_length", "check_confidence",
    "check_token_ids",
]


def _describe_bounds(minimum, maximum, strict_min: bool, strict_max: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if strict_min else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"{'<' if strict_max else '<='} {maximum}")
    return " and ".join(parts)


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (Python or numpy, not bool, not float) within ``[minimum, maximum]``."""
    bounds = _describe_bounds(minimum, maximum, False, False)
    allowed = f"an integer{' ' + bounds if bounds else ''}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                 *, strict_min: bool = False, strict_max: bool = False) -> float:
    """A finite real number (int, float or numpy scalar; not bool) within the given bounds."""
    bounds = _describe_bounds(minimum, maximum, strict_min, strict_max)
    allowed = f"a finite number{' ' + bounds if bounds else ''}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if maximum is not None and (value >= maximum if strict_max else value > maximum):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A finite number > 0 (>= 0 with ``allow_zero``): learning rates, scales, temperatures."""
    return check_number(name, value, 0.0, strict_min=not allow_zero)


def check_fraction(name: str, value: Any, *, strict_max: bool = False) -> float:
    """A number in [0, 1] (or [0, 1) with ``strict_max``): ratios, shares, probabilities."""
    return check_number(name, value, 0.0, 1.0, strict_max=strict_max)


def check_confidence(value: Any, name: str = "confidence") -> float:
    """A confidence level strictly between 0 and 1 (e.g. 0.95)."""
    return check_number(name, value, 0.0, 1.0, strict_min=True, strict_max=True)


def check_seed(name: str, value: Any) -> int:
    """A non-negative integer seed (numpy's generators refuse negative ones)."""
    return check_int(name, value, 0)


def check_bool(name: str, value: Any) -> bool:
    """A real bool (Python or numpy), not a truthy number or string."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value`` if it is one of ``allowed``; the message lists them."""
    allowed = tuple(allowed)
    try:
        ok = value in allowed
    except TypeError:  # unhashable or incomparable values are not among the choices
        ok = False
    if not ok or isinstance(value, bool) and not any(a is value for a in allowed):
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def check_positive_array(name: str, values: Any) -> np.ndarray:
    """A non-empty float64 vector of finite numbers > 0 (sizes, token counts, FLOPs, losses)."""
    try:
        arr = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-empty array of finite positive numbers, got {values!r}") from None
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be a non-empty array of finite positive numbers")
    return arr


def check_int_array(name: str, values: Any, minimum: int = 0) -> np.ndarray:
    """A non-empty 1-D int64 array of integers >= ``minimum`` (offsets, lengths, positions)."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) or arr.min() < minimum:
        raise ValueError(f"{name} must be a non-empty 1-D array of integers >= {minimum}, got {values!r}")
    return arr.astype(np.int64)


def check_same_length(**arrays: Sequence[Any] | np.ndarray) -> None:
    """All the named arrays have the same number of elements."""
    sizes = {k: int(np.size(v)) for k, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"arrays must have the same length, got {sizes}")


def check_token_ids(name: str, ids: Any, vocab_size: int, ignore_index: int | None = None) -> None:
    """Every id in ``ids`` (a numpy array or torch tensor of integers) lies in
    ``[0, vocab_size)``; entries equal to ``ignore_index`` (e.g. -100, masked targets) are skipped."""
    vocab_size = check_int("vocab_size", vocab_size, 1)
    dtype = str(getattr(ids, "dtype", ""))
    if not dtype or not any(kind in dtype for kind in ("int", "uint")):
        raise ValueError(f"{name} must be an array of integer token ids, got {type(ids).__name__} {dtype}")
    if ignore_index is not None:
        ids = ids[ids != ignore_index]
    if ids.numel() if hasattr(ids, "numel") else ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name} holds token ids in [{lo}, {hi}], outside the model's vocabulary "
                             f"[0, vocab_size={vocab_size}): the data's tokenizer and the model's vocab_size "
                             "disagree")
