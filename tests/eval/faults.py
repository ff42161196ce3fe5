"""Fault injection for the executor tests: make a chosen cell's unit fail a set number of times, in any process.

Installed as bench hooks (:mod:`eval.bench.hooks`): the ``faults`` fixture sets ``TTA_BENCH_HOOKS`` to
:func:`install` and ``TTA_TEST_FAULT_DIR`` to a folder, both inherited by the processes started
afterwards (a driver run as a subprocess, worker processes, Ray workers started after them). Tests arm a
fault by creating a marker file in that folder (:func:`arm_fault`); the first unit that starts with
that cell deletes one marker, which only one process can do, and fails:

- ``raise``: raises :class:`InjectedFault` (an exception inside the unit);
- ``exit``: ends its process at once with ``os._exit(3)`` (a crashed worker, or a killed driver when
  the unit runs in the driver's process);
- ``stall``: sleeps for an hour, so a test can kill the process while the unit is in flight.

Armed with ``on_entry=True``, the fault fires instead when a running stream reaches that domain (its
earlier domains are finished and handed on).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

from eval.bench.executors import WorkUnit
from eval.bench.hooks import add_hook
from eval.domains import Domain

FAULT_DIR_ENV = "TTA_TEST_FAULT_DIR"
INSTALLER = "tests.eval.faults:install"
FaultMode = Literal["raise", "exit", "stall"]
_MODES: tuple[FaultMode, ...] = ("raise", "exit", "stall")


class InjectedFault(RuntimeError):
    """The failure a test asked for."""


def install() -> None:
    """Register the fault hooks at a unit's start and after each cell a stream hands on."""
    add_hook("unit_start", fail_at_start)
    add_hook("cell_done", fail_at_next_domain)


def fail_at_start(unit: WorkUnit, domain: Domain | None) -> None:
    """Fail as armed when a fault is pending for one of the domains of the unit that starts."""
    maybe_fail(unit.method, unit.domains)


def fail_at_next_domain(unit: WorkUnit, domain: Domain | None) -> None:
    """Fail as armed (``on_entry=True``) when the stream goes on from ``domain`` to its next domain."""
    assert domain is not None
    index = unit.domains.index(domain)
    if index + 1 < len(unit.domains):
        maybe_fail(unit.method, (unit.domains[index + 1],), when="entry")


def arm_fault(folder: str | os.PathLike[str], method: str, domain: Domain, mode: FaultMode = "raise", *,
              times: int = 1, on_entry: bool = False) -> list[Path]:
    """Make the units of ``method`` holding ``domain`` fail ``times`` times; return the marker files.

    Raises:
        ValueError: If ``mode`` is unknown or ``times`` < 1.
    """
    if mode not in _MODES or times < 1:
        raise ValueError(f"mode must be one of {list(_MODES)} and times >= 1, got {mode!r} and {times}")
    Path(folder).mkdir(parents=True, exist_ok=True)
    when = "entry" if on_entry else "start"
    markers = [Path(folder) / f"{method}@{domain}.{when}.{mode}.{i}" for i in range(times)]
    for marker in markers:
        marker.touch()
    return markers


def maybe_fail(method: str, domains: tuple[Domain, ...], *, when: str = "start") -> None:
    """Fail as armed when a fault is pending for one of ``domains`` of ``method`` at ``when``; else return."""
    folder = os.environ.get(FAULT_DIR_ENV)
    if not folder:
        return
    for domain in domains:
        for marker in sorted(Path(folder).glob(f"{method}@{domain}.{when}.*")):
            try:
                marker.unlink()  # atomic: exactly one process claims each marker
            except FileNotFoundError:
                continue
            mode = marker.name.split(".")[-2]
            if mode == "exit":
                os._exit(3)
            if mode == "stall":
                time.sleep(3600)
            raise InjectedFault(f"injected fault ({marker.name}) in the unit of {method} on {domain}")
