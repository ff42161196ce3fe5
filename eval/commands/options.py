"""Parsing of ``--option method.key=value`` into per-method keyword arguments."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import tta
from eval.commands.errors import CLIError

__all__ = ["parse_options", "split_csv"]


def split_csv(text: str) -> list[str]:
    """Return the non-empty, stripped items of a comma-separated string."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Turn ``method.key=value`` (or ``key=value`` with a single method) into per-method keyword arguments.

    Values are read as JSON where possible (``1e-3``, ``true``, ``null``), else kept as strings;
    keys are checked against each method's builder signature.
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
        valid = tta.adapter_options(method)
        if key not in valid:
            raise CLIError(f"--option {item!r}: {method} has no option {key!r}; valid: {sorted(valid)}")
        options[method][key] = _parse_value(value)
    return options
