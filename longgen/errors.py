"""The one exception type that reaches the user as a one-line message.

Anything raised as `UsageError` is printed by the CLI without a traceback and makes the process exit with
status 2. Its text must say what to change, not only what went wrong.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator


class UsageError(Exception):
    """A bad input or an unavailable resource that the user can fix; the message says how."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UsageError into one line on stderr and exit status 2 (also recorded in the run's log file).
    Lives here, beside UsageError, so that commands other than generate need not import torch to use it."""
    log = logging.getLogger("longgen")
    try:
        yield
    except UsageError as exc:
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, str(exc), None, None)
        for handler in logging.getLogger().handlers:  # keep it in the run's log file, print it once
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        print(f"longgen: error: {exc}", file=sys.stderr)
        sys.exit(2)
