"""Test-only fault injection: make a chosen cell's unit fail a set number of times, in any process.

Not part of the public API. Tests arm a fault by creating a marker file in the folder named by the
``TTA_TEST_FAULT_DIR`` environment variable (inherited by Ray workers started afterwards); the
first unit that starts with that cell deletes one marker, which only one process can do, and fails:

- ``raise``: raises :class:`InjectedFault` (an exception inside the unit);
- ``exit``: ends its process at once with ``os._exit(3)`` (a crashed worker, or a killed driver when
  the unit runs in the driver's process);
- ``stall``: sleeps for an hour, so a test can kill the process while the unit is in flight.

Armed with ``on_entry=True``, the fault fires instead when a running stream reaches that domain (its
earlier domains are finished), through :func:`maybe_fail_on_entry`.

Without the environment variable this costs one ``os.environ`` lookup per unit.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

from eval.domains import Domain

__all__ = ["FAULT_DIR_ENV", "InjectedFault", "arm_fault", "maybe_fail", "maybe_fail_on_entry"]

FAULT_DIR_ENV = "TTA_TEST_FAULT_DIR"
FaultMode = Literal["raise", "exit", "stall"]
_MODES: tuple[FaultMode, ...] = ("raise", "exit", "stall")


class InjectedFault(RuntimeError):
    """The failure a test asked for."""


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
    """Fail as armed when a fault is pending for one of ``domains`` of ``method`` at a unit's start; else return."""
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


def maybe_fail_on_entry(method: str, domain: Domain) -> None:
    """Fail as armed (``on_entry=True``) when a stream of ``method`` reaches ``domain``; else return."""
    maybe_fail(method, (domain,), when="entry")
