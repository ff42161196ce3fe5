"""SIGTERM as an interrupt: a driver asked to stop by a supervisor cleans up as after Ctrl-C.

By default SIGTERM ends a Python process on the spot: worker processes are not stopped and nothing
is handed on. While :func:`sigterm_interrupts` is active, SIGTERM raises :class:`Terminated` in the
main thread instead, a ``KeyboardInterrupt``, so every path that handles Ctrl-C (executors stop their
work in flight, finished cells stay stored, the CLI exits as when interrupted) handles it too.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Terminated", "sigterm_interrupts"]


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM while :func:`sigterm_interrupts` was active."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signal.Signals(signum).name}")


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, make SIGTERM raise :class:`Terminated`; restore the previous handler afterwards.

    Does nothing outside the main thread (only it may set handlers) or when the program already set
    its own SIGTERM handler: its policy wins.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
