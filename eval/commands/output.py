"""Standard output of the subcommands that print much: a reader that stops early (``| head``) ends it quietly."""

from __future__ import annotations

import os
import sys

__all__ = ["print_output"]


def print_output(text: str) -> None:
    """Print ``text``; if the reader closed the pipe (``tta list | head``), stop without a traceback.

    Standard output is then pointed at the null device, so the interpreter's final flush does not fail again.
    """
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # no file descriptor behind sys.stdout
            pass
