"""Hook points in the work of a benchmark unit: callables run at named moments, in whichever process runs it.

Instrumentation (tracing, timing, injected failures) registers a callable for a point with
:func:`add_hook`, and the unit's work (:class:`~eval.bench.work.BenchWork`) calls every callable
registered for the point there, as ``hook(unit, domain)``:

- ``"unit_start"``: a unit's work begins, before the suite or the adapter is touched (``domain`` is ``None``);
- ``"cell_done"``: a stream handed on the finished cell of ``domain`` (its adapter state saved) and goes on
  with its next domain, if any; only where cells are handed on as they finish (contiguous protocols).

A hook that raises fails the unit like any other error in it (the executor retries, then reports it).

Units also run in worker processes and Ray tasks, which do not share this process's registrations, so
hooks can be installed by name: the environment variable ``TTA_BENCH_HOOKS`` holds
``package.module:function`` entries (comma-separated) naming functions that call :func:`add_hook`. The
driver's work installs them when it is built and carries the names to every process that runs one of its
units, which installs them before its first unit; each name is installed once per process.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from eval.bench.executors.base import WorkUnit
    from eval.domains import Domain

__all__ = ["HOOKS_ENV", "HookPoint", "WorkHook", "add_hook", "remove_hook", "run_hooks", "install_hooks"]

HOOKS_ENV = "TTA_BENCH_HOOKS"
HookPoint = Literal["unit_start", "cell_done"]
WorkHook = Callable[["WorkUnit", "Domain | None"], None]

_POINTS: tuple[str, ...] = get_args(HookPoint)
_HOOKS: dict[str, list[WorkHook]] = {point: [] for point in _POINTS}
_INSTALLED: set[str] = set()  # the installer names already called in this process


def add_hook(point: HookPoint, hook: WorkHook) -> None:
    """Run ``hook`` at ``point`` of every unit's work in this process, after the hooks added before it.

    Adding a hook that is already registered for ``point`` changes nothing (it still runs once).

    Raises:
        ValueError: If ``point`` is not a hook point.
        TypeError: If ``hook`` is not callable.
    """
    if point not in _HOOKS:
        raise ValueError(f"unknown hook point {point!r}; choose one of {list(_POINTS)}")
    if not callable(hook):
        raise TypeError(f"a hook must be callable as hook(unit, domain), got {type(hook).__name__}")
    if hook not in _HOOKS[point]:
        _HOOKS[point].append(hook)


def remove_hook(point: HookPoint, hook: WorkHook) -> None:
    """Stop running ``hook`` at ``point``; a no-op when it is not registered there."""
    if hook in _HOOKS.get(point, []):
        _HOOKS[point].remove(hook)


def run_hooks(point: HookPoint, unit: WorkUnit, domain: Domain | None = None) -> None:
    """Call the hooks registered for ``point`` with ``(unit, domain)``, in the order they were added."""
    for hook in list(_HOOKS[point]):
        hook(unit, domain)


def install_hooks(names: str | None = None) -> str:
    """Call each installer named in ``names`` (default: ``$TTA_BENCH_HOOKS``) once per process; return the names.

    Args:
        names: Comma-separated ``package.module:function`` entries; each function is called without
            arguments and registers its hooks with :func:`add_hook`. Empty: nothing to install.

    Raises:
        ValueError: If an entry is not ``module:function``, its module cannot be imported, or it names
            no callable; the message names ``TTA_BENCH_HOOKS`` and the entry.
    """
    names = os.environ.get(HOOKS_ENV, "") if names is None else names
    for name in (entry.strip() for entry in names.split(",")):
        if name and name not in _INSTALLED:
            _installer(name)()
            _INSTALLED.add(name)
    return names


def _installer(name: str) -> Callable[[], object]:
    """Return the function an installer entry ``module:function`` names."""
    module_name, _, function = name.partition(":")
    if not module_name or not function.isidentifier():
        raise ValueError(f"{HOOKS_ENV} entry {name!r} is not module:function; set it to e.g. mypackage.hooks:install")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{HOOKS_ENV} entry {name!r}: cannot import {module_name!r} ({error}); install it or "
                         f"fix the entry") from error
    installer = getattr(module, function, None)
    if not callable(installer):
        raise ValueError(f"{HOOKS_ENV} entry {name!r}: {module_name} has no function {function!r}; fix the entry")
    return installer  # type: ignore[no-any-return]
