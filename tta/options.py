"""Checks of method options, run when a method is built so that a bad option fails before the first batch.

Each check raises a one-line error naming the option, the value received and what is expected:
``TypeError`` for a value of the wrong type (a string where a number is expected, ``1.5`` for a
count), ``ValueError`` for a value of the right type out of range. Ints pass where floats are
expected; bools never pass as numbers (``True`` is an ``int`` in Python, but never a learning rate).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection

__all__ = [
    "check_base_options",
    "check_bool",
    "check_choice",
    "check_input_ndim",
    "check_int",
    "check_non_negative",
    "check_optional_str",
    "check_positive",
    "check_probability",
    "check_real",
]


def _received(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_bool(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is ``True`` or ``False`` (a truthy string such as ``"no"`` is not)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {_received(value)}")


def check_int(name: str, value: object, *, minimum: int | None = None) -> None:
    """Raise unless ``value`` is an int (not a bool, not ``2.0``), at least ``minimum`` when given.

    Raises:
        TypeError: not an int.
        ValueError: below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_received(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")


def check_real(
    name: str, value: object, *, minimum: float | None = None, maximum: float | None = None,
    strict_minimum: bool = False,
) -> None:
    """Raise unless ``value`` is a finite int or float within the given bounds (inclusive unless ``strict_minimum``).

    Raises:
        TypeError: not a number (a string, a bool, None, a tensor).
        ValueError: NaN, infinite, or out of bounds.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {_received(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if minimum is not None and (number <= minimum if strict_minimum else number < minimum):
        bound = f"> {minimum:g}" if strict_minimum else f">= {minimum:g}"
        if maximum is not None:
            bound += f" and <= {maximum:g}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value}")


def check_positive(name: str, value: object) -> None:
    """Raise unless ``value`` is a finite number ``> 0`` (a learning rate, a step size)."""
    check_real(name, value, minimum=0.0, strict_minimum=True)


def check_non_negative(name: str, value: object) -> None:
    """Raise unless ``value`` is a finite number ``>= 0`` (a weight decay, a tolerance, a noise level)."""
    check_real(name, value, minimum=0.0)


def check_probability(name: str, value: object) -> None:
    """Raise unless ``value`` is a number in ``[0, 1]`` (a probability, a momentum, a mixing weight)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {_received(value)}")
    if not 0.0 <= float(value) <= 1.0:  # NaN fails this too
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def check_choice(name: str, value: object, choices: Collection[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_optional_str(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is a string or ``None``."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, got {_received(value)}")


def check_input_ndim(value: object) -> None:
    """Raise unless ``value`` is ``None`` (no check of the batch's rank) or an int ``>= 1``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"input_ndim must be None or an int >= 1 (4 for (B, C, H, W) images), got {_received(value)}")
    if value < 1:
        raise ValueError(f"input_ndim must be None or an int >= 1 (4 for (B, C, H, W) images), got {value}")


def check_base_options(*, steps: object = 1, episodic: object = False, input_ndim: object = 4) -> None:
    """Check the options every method shares: ``steps`` (int >= 1), ``episodic`` (bool), ``input_ndim``."""
    check_int("steps", steps, minimum=1)
    check_bool("episodic", episodic)
    check_input_ndim(input_ndim)
