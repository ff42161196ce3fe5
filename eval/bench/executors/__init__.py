"""Where benchmark units run: in this process (``local``), in worker processes on this machine
(``processes``) or as tasks on a Ray cluster (``ray``).

The driver plans units of work, hands them to an executor, and writes every finished cell the
executor hands back to the results store itself, so the store has a single writer whatever runs
the work. Ray is imported only when the ray executor is built.
"""

from __future__ import annotations

from typing import Any

from eval.bench.executors.base import (
    BatchHook,
    CellSink,
    Executor,
    FinishedCell,
    UnitFailure,
    UnitHook,
    UnitOutcome,
    UnitResume,
    UnitWork,
    WorkUnit,
)
from eval.bench.executors.local import LocalExecutor

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "WorkUnit", "FinishedCell", "UnitOutcome", "UnitFailure",
           "UnitWork", "CellSink", "UnitHook", "UnitResume", "BatchHook", "create_executor"]

EXECUTORS: tuple[str, ...] = ("local", "processes", "ray")


def create_executor(name: str, **kwargs: Any) -> Executor:
    """Return the executor called ``name`` built with ``kwargs``.

    Raises:
        ValueError: If ``name`` is not one of :data:`EXECUTORS`.
        ImportError: For ``ray`` when Ray is not installed (the message names the extra to install).
    """
    if name == "local":
        return LocalExecutor(**kwargs)
    if name == "processes":
        from eval.bench.executors.processes import ProcessExecutor

        return ProcessExecutor(**kwargs)
    if name == "ray":
        from eval.bench.executors.ray_executor import RayExecutor, import_ray

        import_ray()
        return RayExecutor(**kwargs)
    raise ValueError(f"unknown executor {name!r}; choose one of {list(EXECUTORS)}")
