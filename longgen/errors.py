"""The one exception type that reaches the user as a one-line message.

Anything raised as `UsageError` is printed by the CLI without a traceback and makes the process exit with
status 2. Its text must say what to change, not only what went wrong.
"""


class UsageError(Exception):
    """A bad input or an unavailable resource that the user can fix; the message says how."""
