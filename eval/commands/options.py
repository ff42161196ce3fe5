"""Parsing of ``--option method.key=value`` into per-method keyword arguments."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from eval.commands.errors import CLIError
from tta.registry import adapter_parameters

__all__ = ["parse_options", "split_csv"]


def split_csv(text: str) -> list[str]:
    """Return the non-empty, stripped items of a comma-separated string."""
    return [part.strip() for part in text.split(",") if part.strip()]


_TEXT_ANNOTATIONS = ("str", "str | None")  # options kept as typed: lame.head=8 names submodule "8"


def _parse_value(text: str, annotation: object) -> Any:
    """Read ``text`` as JSON (``1e-3``, ``true``, ``null``), else as a string; text options stay text."""
    if annotation in _TEXT_ANNOTATIONS or annotation is str:
        return None if text == "null" and "None" in str(annotation) else text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text



def parse_options(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Turn ``method.key=value`` (or ``key=value`` with a single method) into per-method keyword arguments.

    Values are read as JSON where possible (``1e-3``, ``true``, ``null``), else kept as strings;
    options annotated as strings keep their text (``lame.head=8``). Keys are checked against each
    method's builder signature.
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
        valid = adapter_parameters(method)
        if key not in valid:
            raise CLIError(f"--option {item!r}: {method} has no option {key!r}; valid: {sorted(valid)}")
        options[method][key] = _parse_value(value, valid[key].annotation)  # a string under postponed annotations
    return options
