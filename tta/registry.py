"""Method registry: names shared by ``tta.wrap`` and the command line."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import typing
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from tta.base import CHANGES, EXPORTS, NEEDS, TTAMethod
from tta.checks import builder_parts

__all__ = [
    "MethodOption", "MethodSettings", "register_adapter", "list_methods", "get_adapter_class", "method_options",
    "check_method_options", "build_adapter", "create_adapter", "import_methods", "ENTRY_POINT_GROUP",
]

_REGISTRY: dict[str, type[TTAMethod]] = {}
ENTRY_POINT_GROUP = "tta.methods"
"""The entry-point group where installed distributions declare methods (``name = "module:Class"``)."""
T = TypeVar("T", bound="type[TTAMethod]")


def register_adapter(name: str) -> Callable[[T], T]:
    """Class decorator registering a method under ``name``.

    A duplicate name raises ``ValueError``; so does a class whose declarations (``changes``, ``exports``,
    ``needs``, ``quick_options``, see :class:`~tta.base.TTAMethod`) are missing or invalid (``TypeError``
    for a missing one or a wrong type), since callers act on them without knowing the method.
    """

    def decorate(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        try:
            _check_declarations(name, cls)
        except (TypeError, ValueError):
            del _REGISTRY[name]
            raise
        return cls

    return decorate


def _check_declarations(name: str, cls: type[TTAMethod]) -> None:
    """Raise unless ``cls`` declares ``changes`` and ``exports`` itself and all its declarations are valid."""
    where = f"{cls.__name__} (method {name!r})"
    for attribute, allowed in (("changes", CHANGES), ("exports", EXPORTS)):
        if not any(attribute in vars(c) for c in cls.__mro__ if c is not TTAMethod):
            raise TypeError(f"{where} must declare the class variable {attribute} = one of {list(allowed)}")
        if getattr(cls, attribute) not in allowed:
            raise ValueError(f"{where} declares {attribute}={getattr(cls, attribute)!r}; choose one of {list(allowed)}")
    if cls.exports == "adaptive" and cls.uses_grad:
        raise ValueError(f"{where} declares exports='adaptive' but adapts by gradients, which an inference graph "
                         "cannot compute; declare exports='frozen'")
    options = _option_names(cls)
    _check_needs(where, cls.needs, options)
    _check_quick_options(where, cls.quick_options, cls.needs, options)


def _check_needs(where: str, needs: object, options: Collection[str]) -> None:
    """Each need is a known name and an option of ``from_model`` (a caller supplies it as that option)."""
    if not isinstance(needs, frozenset):
        raise TypeError(f"{where} declares needs={needs!r}; declare a frozenset of names from {list(NEEDS)}")
    unknown = [need for need in needs if need not in NEEDS]
    if unknown:
        raise ValueError(f"{where} declares unknown need(s) {unknown}; known needs: {list(NEEDS)}")
    missing = sorted(needs - set(options))
    if missing:
        raise ValueError(f"{where} needs {missing}, but its from_model takes no option of that name; a caller "
                         "supplies each need as the option of the same name")


def _check_quick_options(where: str, quick: object, needs: frozenset[str], options: Collection[str]) -> None:
    """Quick options are options of ``from_model``, never needs (callers supply those)."""
    if not isinstance(quick, Mapping):
        raise TypeError(f"{where} declares quick_options={quick!r}; declare a dict of from_model options")
    wrong = [option for option in quick if option not in options or option in needs]
    if wrong:
        raise ValueError(f"{where} declares quick_options {wrong} that are not options of its from_model, or are "
                         f"needs (callers supply those); its options: {sorted(options)}")


def list_methods() -> list[str]:
    """Return the registered method names, sorted, the installed ``tta.methods`` entry points loaded first.

    An entry point that cannot be loaded is left out with a warning (naming it is then an error that says why).
    """
    for entry in _entry_points():
        if entry.name not in _REGISTRY:
            try:
                _load_entry_point(entry)
            except (ImportError, TypeError, ValueError) as error:
                warnings.warn(str(error), RuntimeWarning, stacklevel=2)
    return sorted(_REGISTRY)


def get_adapter_class(name: str) -> type[TTAMethod]:
    """Return the class registered as ``name``, importing it first if it is new.

    A new ``module:Class`` name imports ``module`` and registers its ``Class`` under that name (what a
    worker process does with the names a benchmark hands it); another new name is looked up among the
    ``tta.methods`` entry points. Unknown names raise ``ValueError`` listing the valid ones; so does a
    new name that cannot be imported or does not name a valid :class:`~tta.base.TTAMethod` subclass.
    """
    if name not in _REGISTRY:
        entry = next((e for e in _entry_points() if e.name == name), None)
        if entry is None and ":" not in name:
            raise ValueError(f"unknown method {name!r}; available: {list_methods()} "
                             "(or a method outside this package as module:Class)")
        try:
            if entry is None:
                _register_class(name, _import_class(name))
            else:
                _load_entry_point(entry)
        except (ImportError, TypeError) as error:  # a bad name given by the user: one kind of error for callers
            raise ValueError(str(error)) from error
    return _REGISTRY[name]


def import_methods(names: Iterable[str]) -> None:
    """Import and register each new ``module:Class`` or entry-point name of ``names``; leave unknown names.

    Raises:
        ValueError: If a ``module:Class`` name or an entry point cannot be imported or is not a valid
            method class (the message says which and why).
    """
    installed = {entry.name for entry in _entry_points()}
    for name in names:
        if name not in _REGISTRY and (":" in name or name in installed):
            get_adapter_class(name)


def _entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    """The installed entry points of :data:`ENTRY_POINT_GROUP` (read each time: cheap, and installs change)."""
    return tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_point(entry: importlib.metadata.EntryPoint) -> None:
    """Import entry point ``entry`` and register its class under the entry point's name."""
    where = f"method {entry.name!r} (entry point {entry.value!r} of group {ENTRY_POINT_GROUP!r})"
    try:
        cls = entry.load()
    except Exception as error:  # any failure of third-party code at import: name the entry point
        raise ImportError(f"{where} cannot be imported: {type(error).__name__}: {error}") from error
    _register_class(entry.name, cls, where=where)


def _import_class(name: str) -> object:
    """Import the object that ``module:Class`` names."""
    module_name, _, attribute = name.partition(":")
    hint = "make the module importable (install its package or put its folder on PYTHONPATH)"
    if not module_name or not attribute:
        raise ValueError(f"method {name!r}: a method outside this package is named module:Class, e.g. "
                         "my_pkg.my_module:MyMethod")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any failure of third-party code at import: name the method
        raise ValueError(f"method {name!r}: cannot import module {module_name!r} "
                         f"({type(error).__name__}: {error}); {hint}") from error
    found: object = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ValueError(f"method {name!r}: module {module_name!r} has no {attribute!r}")
    return found


def _register_class(name: str, cls: object, *, where: str | None = None) -> None:
    """Register ``cls`` as ``name`` unless a module's own ``register_adapter`` just did (same class)."""
    if not (isinstance(cls, type) and issubclass(cls, TTAMethod)):
        raise TypeError(f"{where or f'method {name!r}'} names {cls!r}, which is not a tta.TTAMethod subclass")
    if _REGISTRY.get(name) is not cls:
        register_adapter(name)(cls)


@dataclass(frozen=True)
class MethodOption:
    """One option of a method, as its ``from_model`` declares it.

    Attributes:
        name: The keyword.
        type: The declared type, evaluated (``float | None``, ``Literal["adam", "sgd"]``, ``str``...).
        default: The default value.
    """

    name: str
    type: Any
    default: Any


def _option_names(cls: type[TTAMethod]) -> list[str]:
    """The keyword-only parameters of ``cls.from_model``, in declaration order (annotations not evaluated)."""
    signature = inspect.signature(cls.from_model)
    return [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def method_options(name: str) -> dict[str, MethodOption]:
    """Return the options of method ``name``: the keyword-only parameters of its ``from_model``, with real types.

    The builder's signature is the one declaration of a method's options: ``tta list``, ``--option``
    parsing and the checks all read it here.
    """
    cls = get_adapter_class(name)
    hints = typing.get_type_hints(cls.from_model)
    parameters = inspect.signature(cls.from_model).parameters
    return {option: MethodOption(option, hints.get(option, Any), parameters[option].default)
            for option in _option_names(cls)}


@dataclass(frozen=True)
class MethodSettings:
    """A method's options as the user gave them, checked (names and values) by :func:`check_method_options`.

    :func:`build_adapter` builds from them without checking again, so a run that builds the same method
    many times (one adapter per unit of a benchmark) checks its options once. Picklable.
    """

    method: str
    options: Mapping[str, Any]


def check_method_options(name: str, options: Mapping[str, Any]) -> MethodSettings:
    """Check ``options`` of method ``name`` once, before any model is touched; return them as settings.

    Raises:
        ValueError: unknown method name, or an option value out of range.
        TypeError: an option the method does not take (the message lists the valid ones), or a value
            of the wrong type.
    """
    cls = get_adapter_class(name)
    declared = method_options(name)
    unknown = [key for key in options if key not in declared]
    if unknown:
        raise TypeError(f"{name} has no option {', '.join(map(repr, unknown))}; valid options: {sorted(declared)}")
    check, _ = builder_parts(cls.from_model)
    if check is not None:
        check({key: options.get(key, option.default) for key, option in declared.items()})
    return MethodSettings(name, dict(options))


def build_adapter(model: nn.Module, settings: MethodSettings) -> TTAMethod:
    """Build the method of ``settings`` on ``model`` (configured in place) without checking its options again."""
    _, build = builder_parts(get_adapter_class(settings.method).from_model)
    adapter: TTAMethod = build(model, **settings.options)
    adapter.hparams = {key: settings.options.get(key, option.default)
                       for key, option in method_options(settings.method).items()}
    return adapter


def create_adapter(name: str, model: nn.Module, **options: Any) -> TTAMethod:
    """Build method ``name`` on ``model`` with its standard recipe (``from_model``), its options checked once.

    Raises:
        ValueError: unknown method name, an option out of range, or a model the method cannot adapt.
        TypeError: an option the method does not take (the message lists the valid ones) or of the wrong type.
    """
    return build_adapter(model, check_method_options(name, options))
