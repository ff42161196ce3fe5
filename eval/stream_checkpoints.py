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
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from eval.executors.base import WorkUnit
from eval.records import CellKey
from eval.streams import Protocol

__all__ = ["checkpoint_paths", "discard", "resumable", "states_folder"]


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


def discard(unit: WorkUnit) -> None:
    """Delete the unit's state files (its stream is stored whole), and the folder once it is empty."""
    for path in map(Path, unit.checkpoints):
        path.unlink(missing_ok=True)
    folders = {Path(p).parent for p in unit.checkpoints}
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
