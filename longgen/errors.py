"""The exceptions that reach the user as one line (printed by `user_errors` below).

- `UsageError`: a bad input or an unavailable resource the user can fix; the message says how. Exit status 2.
- `RunFailure`: the run itself failed after it started (disk full, a failed decode, a failed rank); the message
  says what was kept and how to continue. Exit status 1.
- `Interrupted`: Ctrl-C or SIGTERM stopped the run after saving what it had; the message gives the command that
  continues it. Exit status 130.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Callable, Iterator


class UsageError(Exception):
    """A bad input or an unavailable resource that the user can fix; the message says how."""

    exit_code = 2


class RunFailure(Exception):
    """A run that started but could not finish; the message says what is kept and how to continue."""

    exit_code = 1


class Interrupted(Exception):
    """The user or the scheduler stopped the run; the message says where and how to resume."""

    exit_code = 130


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says the GPU ran out of memory: torch.cuda.OutOfMemoryError from the caching allocator, or the
    driver's own `CUDA error: out of memory` (torch.AcceleratorError, a RuntimeError), which is what a fresh
    process gets when another one already holds the GPU's memory (seen while building a model on an H200)."""
    if not isinstance(exc, RuntimeError):
        return False
    return type(exc).__name__ == "OutOfMemoryError" or "CUDA error: out of memory" in str(exc)


@contextlib.contextmanager
def out_of_memory_as(message: str | Callable[[], str]) -> Iterator[None]:
    """Turn running out of GPU memory inside the block into one RunFailure line; `message` (or what it returns,
    computed at failure time: what was kept) says what happened and what to change. Other errors pass through."""
    try:
        yield
    except RuntimeError as exc:
        if not out_of_memory(exc):
            raise
        raise RunFailure(message() if callable(message) else message) from None


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a UsageError, RunFailure, Interrupted or Ctrl-C as one `longgen: error: …` line on stderr (also into
    the run's log file, if logging has one) and exit with the error's status, without a traceback."""
    try:
        yield
    except (UsageError, RunFailure, Interrupted, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt):
            exc = Interrupted(f"interrupted ({exc.args[0] if exc.args else 'SIGINT'}); nothing half-written was kept")
        log = logging.getLogger("longgen")
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, str(exc), None, None)
        for handler in logging.getLogger().handlers:  # keep it in the run's log file, print it once
            # (not when the run directory was discarded: an input error caught before any work)
            if isinstance(handler, logging.FileHandler) and os.path.isdir(os.path.dirname(handler.baseFilename)):
                with contextlib.suppress(OSError):  # a directory that takes no file (/proc, read-only, full)
                    handler.handle(record)
        from longgen.redact import scrub

        print(f"longgen: error: {scrub(str(exc))}", file=sys.stderr)  # as every log record: never a key
        sys.exit(exc.exit_code)
