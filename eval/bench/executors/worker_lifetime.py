"""Keep worker processes from outliving their driver or holding its output pipes.

A worker spawned by the driver inherits its stdout and stderr; a supervisor that reads them waits
for EOF, which never comes while a worker lives. And a driver killed with SIGKILL cannot stop its
workers. So each worker, at start-up:

- sends its fds 1 and 2 to a log file the driver owns (:class:`WorkerOutput`), which the driver
  copies into its own log as it grows, so nothing the workers print is lost;
- dies with its parent (:func:`die_with_parent`): Linux's parent-death signal where available, and
  everywhere a watchdog thread that exits once the parent's pid is no longer its parent.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import BinaryIO

__all__ = ["ORPHANED_EXIT", "WorkerOutput", "die_with_parent", "send_output_to"]

logger = logging.getLogger(__name__)

ORPHANED_EXIT = 75
"""Exit status of a worker that ended because its parent died."""

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_WATCH_SECONDS = 1.0


def die_with_parent(parent: int, *, parent_death_signal: bool = True, interval: float = _WATCH_SECONDS) -> None:
    """End this process (at once, without cleanup) when process ``parent`` is no longer its parent.

    Args:
        parent: The pid of the process that started this one.
        parent_death_signal: Also ask Linux for SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``).
            Linux sends it when the *thread* that started this process ends, so pass ``False`` unless that
            thread lives as long as the parent process (its main thread).
        interval: Seconds between the watchdog's checks of the parent's pid.
    """
    if parent_death_signal:
        _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(ORPHANED_EXIT)
    threading.Thread(target=_watch_parent, args=(parent, interval), name="parent-watchdog", daemon=True).start()


def _set_parent_death_signal(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies; elsewhere (or if refused) do nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):  # no libc symbol: the watchdog still ends the process
        logger.debug("prctl(PR_SET_PDEATHSIG) is unavailable; relying on the parent watchdog")


def _watch_parent(parent: int, interval: float) -> None:
    """Exit the process once ``parent`` is no longer its parent (it died and the process was adopted)."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(ORPHANED_EXIT)


def send_output_to(path: str | os.PathLike[str]) -> None:
    """Point this process's stdout and stderr (fds 1 and 2) at ``path``, appended, and its stdin at ``/dev/null``.

    Called first thing in a worker, so that it holds none of the pipes it inherited from its parent.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


class WorkerOutput:
    """A private log file that workers write their stdout and stderr to; the driver relays it line by line.

    Each complete line reaches this module's logger as a warning (so it lands where the driver's own
    warnings go) when :meth:`relay` is called; :meth:`close` relays the rest and deletes the file. The
    file, ``tta-workers-<driver pid>-*.log`` in the temporary folder, outlives only a killed driver (one
    never closed is deleted when it is garbage-collected or the interpreter exits).
    """

    def __init__(self) -> None:
        handle, name = tempfile.mkstemp(prefix=f"tta-workers-{os.getpid()}-", suffix=".log")
        self.path = Path(name)
        self._file = os.fdopen(handle, "rb")
        self._partial = b""
        self._delete = weakref.finalize(self, _delete, self._file, self.path)

    def relay(self) -> None:
        """Log the lines the workers wrote since the last call (a line still being written waits)."""
        if self._file.closed:
            return
        lines = (self._partial + self._file.read()).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._log(line)

    def close(self) -> None:
        """Relay what is left, then delete the file; a no-op when already closed."""
        if self._file.closed:
            return
        self.relay()
        self._log(self._partial)
        self._delete()

    @staticmethod
    def _log(line: bytes) -> None:
        if line.strip():
            logger.warning("worker process: %s", line.decode(errors="replace").rstrip())


def _delete(file: BinaryIO, path: Path) -> None:
    """Close and delete a workers' log file."""
    file.close()
    path.unlink(missing_ok=True)
