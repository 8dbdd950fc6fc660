"""The one exception every module raises for bad input (scripts print it as one line, exit code 2)."""


class UserError(Exception):
    """A problem with what the user asked for; its message says what to fix (one line)."""
