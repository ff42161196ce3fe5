"""Parsing of ``--option method.key=value`` into per-method keyword arguments."""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Sequence
from typing import Any

from eval.commands.errors import CLIError
from tta.registry import method_options

__all__ = ["parse_floats", "parse_ints", "parse_options", "parse_value", "split_csv"]


def split_csv(text: str) -> list[str]:
    """Return the non-empty, stripped items of a comma-separated string."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    """Return the numbers of a comma-separated ``flag`` value such as ``0.485,0.456,0.406``."""
    try:
        return tuple(float(v) for v in split_csv(text))
    except ValueError:
        raise CLIError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def parse_ints(text: str, flag: str, *, minimum: int = 1) -> tuple[int, ...]:
    """Return the integers (each at least ``minimum``) of a comma-separated ``flag`` value such as ``3,224,224``."""
    try:
        values = tuple(int(v) for v in split_csv(text))
    except ValueError:
        values = ()
    if not values or min(values) < minimum:
        raise CLIError(f"{flag} expects comma-separated integers >= {minimum} such as 3,224,224, got {text!r}")
    return values


def _members(kind: object) -> tuple[object, ...]:
    """The types a value of ``kind`` may have: the members of a union, else ``kind`` itself."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return typing.get_args(kind)
    return (kind,)


def _json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except json.JSONDecodeError:
        return False, None


def parse_value(text: str, kind: object) -> Any:
    """Read ``text`` as a value of the option type ``kind`` (its evaluated annotation).

    ``null`` is ``None`` where ``kind`` admits it. A ``str`` option keeps its text (``lame.head=8`` names
    submodule ``"8"``). Otherwise the text is read as JSON (``1e-3``, ``true``, ``[0.9, 0.999]``, ``"rbf"``),
    a JSON list becoming a tuple for a tuple option, and kept as text when it is not JSON (``adam``):
    the method's own check then names the option and what it takes.
    """
    members = _members(kind)
    if text == "null" and type(None) in members:
        return None
    if str in members:
        return text
    parsed, value = _json(text)
    if not parsed:
        return text
    if isinstance(value, list) and any(m is tuple or typing.get_origin(m) is tuple for m in members):
        return tuple(value)
    return value


def parse_options(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Turn ``method.key=value`` (or ``key=value`` with a single method) into per-method keyword arguments.

    Each value is read by the type its method declares for the option (:func:`parse_value`). The
    names and values are checked once, where the run's options are resolved
    (:func:`tta.registry.check_method_options`); a key the method does not declare is kept as JSON or
    text until then.
    """
    options: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"--option expects method.key=value, got {item!r}")
        method, dot, key = name.rpartition(".")
        if not dot:
            if len(methods) != 1:
                raise CLIError(f"--option {item!r}: name the method (e.g. tent.{name}=...) when running several")
            method, key = methods[0], name
        if method not in options:
            raise CLIError(f"--option {item!r}: method {method!r} is not among --methods {list(methods)}")
        declared = method_options(method).get(key)
        options[method][key] = parse_value(value, Any if declared is None else declared.type)
    return options
