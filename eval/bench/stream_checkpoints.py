"""Adapter states saved at a stream's domain boundaries, so an interrupted stream resumes where it stopped.

Under a protocol that carries the adapter's state from one domain into the next (continual, the
label-shift protocols without a reset per domain), the cells of a stream's first domains are stored
as soon as each domain ends, but the next domains need the adapter as it was at that point. The
work saves that state (:func:`tta.state.save_state` relative to the source model: the parameters,
buffers and optimizer states that adaptation changed; written atomically) after each domain, in a file named by a hash of the stored keys of the
domains before it. A retry of the failed stream within the run, or a rerun of an interrupted one,
finds the longest stored prefix whose state file exists and runs only the rest of the stream from
that state: the cells equal an uninterrupted run's (tested). Protocols that
reset the adapter before every domain resume after the stored prefix without any state. The files
are deleted once the whole stream is stored.

Several sweeps may share a store and its states. A unit therefore settles where it resumes when it
starts, not when it was planned (:func:`resume_point`): another sweep may have gone on with the same
stream meanwhile and deleted the planned state. And temporary files that a writer killed mid-save
left are removed when a run starts (:func:`remove_stale_temporaries_in`), except those a live writer
may still be writing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from eval.bench.executors.base import WorkUnit
from eval.results.records import CellKey
from eval.protocols.streams import Protocol
from tta.files import remove_stale_temporaries

__all__ = ["STALE_SECONDS", "checkpoint_paths", "discard", "remove_stale_temporaries_in", "resumable",
           "resume_point", "states_folder"]

STALE_SECONDS = 600.0
"""A temporary state file untouched this long has no live writer (a state is written in one go, in seconds)."""


def states_folder(results: Path) -> Path:
    """Return the folder for the stream states of the results store at ``results`` (next to it)."""
    return results.with_name(results.name + ".streams")


def checkpoint_paths(folder: Path, keys: Sequence[CellKey]) -> tuple[str, ...]:
    """Return the state file after each domain but the last, named by a hash of the keys up to that domain.

    The name changes with anything that changes the cells (method options, model, protocol, seed,
    batch size, limit, the domains before), so a state is only ever loaded into the stream it came from.
    """
    paths = []
    for end in range(1, len(keys)):
        digest = hashlib.sha256(repr(tuple(keys[:end])).encode()).hexdigest()[:32]
        paths.append(str((folder / f"{keys[0].method}-{digest}.pt").absolute()))
    return tuple(paths)


def resumable(unit: WorkUnit, stored: Callable[[int], bool], protocol: Protocol) -> WorkUnit:
    """Return ``unit`` set to start after its longest prefix of stored domains it can resume from.

    Args:
        unit: A stream unit with its checkpoint paths.
        stored: Whether the cell of the unit's ``i``-th domain is in the store.
        protocol: The stream's protocol: when it carries state, resuming after domain ``k`` needs its
            state file; when it resets before each domain, it needs nothing.
    """
    def state_saved(after: int) -> bool:
        return after < len(unit.checkpoints) and Path(unit.checkpoints[after]).is_file()

    prefix = 0
    while prefix < len(unit.domains) - 1 and stored(prefix):
        prefix += 1
    while prefix > 0 and protocol.carries_state and not state_saved(prefix - 1):
        prefix -= 1
    return replace(unit, start=prefix)


def resume_point(unit: WorkUnit, protocol: Protocol) -> WorkUnit:
    """Return ``unit`` set to start at its planned start, or earlier where the state it needs is gone.

    The planned ``start`` follows domains that were stored when the unit was planned; they stay
    stored, but another sweep on the same store may since have finished the next domain and deleted
    the state after them. The unit then starts after the longest of those domains whose state is
    still saved (from the stream's start if none is): its earlier cells are recomputed, equal.
    """
    return resumable(unit, lambda i: i < unit.start, protocol)


def remove_stale_temporaries_in(folder: Path, *, idle: float = STALE_SECONDS) -> list[Path]:
    """Delete the temporary files that writers killed mid-save left in the states ``folder``; return them.

    A state ``<name>`` is written to ``.<name>.<random>.tmp`` and renamed. Another sweep on the same
    store may be writing one now, so only the temporaries of a state none of whose temporaries was
    modified in the last ``idle`` seconds are removed.
    """
    if not folder.is_dir():
        return []
    now, by_state = time.time(), dict[str, list[Path]]()
    for temporary in folder.glob(".*.tmp"):
        by_state.setdefault(temporary.name[1:].rsplit(".", 2)[0], []).append(temporary)
    removed = []
    for name, temporaries in sorted(by_state.items()):
        if all(now - _modified(t, now) > idle for t in temporaries):
            removed += remove_stale_temporaries(folder / name)
    return removed


def _modified(path: Path, now: float) -> float:
    """Return when ``path`` was last modified; ``now`` when it is gone (its writer just renamed it)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return now


def discard(unit: WorkUnit) -> None:
    """Delete the unit's state files (its stream is stored whole), and the folder once it is empty."""
    for path in map(Path, unit.checkpoints):
        path.unlink(missing_ok=True)
    folders = {Path(p).parent for p in unit.checkpoints}
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
