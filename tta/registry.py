"""Method registry: names shared by ``tta.wrap`` and the command line."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from torch import nn

if TYPE_CHECKING:
    from tta.base import TTAMethod

__all__ = ["register_adapter", "create_adapter", "list_adapters", "get_adapter_class", "adapter_options", "adapter_parameters"]

_REGISTRY: dict[str, type[TTAMethod]] = {}
T = TypeVar("T", bound="type[TTAMethod]")


def register_adapter(name: str) -> Callable[[T], T]:
    """Class decorator registering a method under ``name``; a duplicate name raises ``ValueError``."""

    def decorate(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_adapters() -> list[str]:
    """Return the registered method names, sorted."""
    return sorted(_REGISTRY)


def get_adapter_class(name: str) -> type[TTAMethod]:
    """Return the class registered as ``name``; unknown names raise ``ValueError`` listing valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {list_adapters()}") from None


def adapter_parameters(name: str) -> dict[str, inspect.Parameter]:
    """Return the keyword options of a method's ``from_model`` builder (defaults and annotations)."""
    signature = inspect.signature(get_adapter_class(name).from_model)
    return {p.name: p for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def adapter_options(name: str) -> dict[str, Any]:
    """Return the keyword options of a method's ``from_model`` builder with their defaults."""
    return {option: p.default for option, p in adapter_parameters(name).items()}


def create_adapter(name: str, model: nn.Module, **kwargs: Any) -> TTAMethod:
    """Build method ``name`` on ``model`` with its standard recipe (``from_model``).

    Raises:
        ValueError: unknown method name.
        TypeError: an option the method does not take (the message lists the valid ones).
    """
    cls = get_adapter_class(name)
    valid = adapter_options(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"method {name!r} takes no option(s) {unknown}; valid options: {sorted(valid)}")
    return cls.from_model(model, **kwargs)
