"""Errors a user can act on.

Every error raised for bad input (an unknown task, a malformed checkpoint, a
config typo) is a `DKDError`: its message names the file, key or field and says
what was expected. The CLI prints the message, without a traceback, and exits
non-zero.
"""


class DKDError(ValueError):
    """Bad input from the user: the message says what is wrong and what was expected."""
