"""Errors a user can act on, and how the command line shows them.

Every error raised for bad input (an unknown task, a malformed checkpoint, a
config typo) is a `DKDError`: its message names the file, key or field and says
what was expected. The CLI prints the message, without a traceback, and exits
non-zero; `user_message` also turns the library errors a user can cause (a full
disk, an error re-raised from a DataLoader worker) into one line.
"""

from __future__ import annotations

import errno
import re


class DKDError(ValueError):
    """Bad input from the user: the message says what is wrong and what was expected."""


# torch re-raises a worker's exception as "Caught <Type> in DataLoader worker process N.
# Original Traceback (most recent call last): ... <module.Type>: <message>".
_WORKER_PREFIX = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.", re.ASCII)
_LAST_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(?P<type>[A-Za-z_]\w*): (?P<message>.*)$")


def _unwrap_worker(text: str) -> tuple[str | None, str]:
    """(original type name, message) of a DataLoader worker's re-raised error; (None, text)."""
    if not _WORKER_PREFIX.match(text):
        return None, text
    for line in reversed(text.strip().splitlines()):
        match = _LAST_LINE.match(line.strip())
        if match:
            return match["type"], match["message"]
    return None, text


def user_message(exc: BaseException) -> str | None:
    """One line for an error the user can act on, or None for a bug (keep its traceback)."""
    if isinstance(exc, DKDError):
        _, message = _unwrap_worker(str(exc))
        return message.strip().replace("\n", " ")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f"{exc.filename}: " if exc.filename else ""
        return (
            f"{where}no space left on device; free some space (or set $DKD_CACHE / run.output "
            "to a larger volume) and run the same command again: it resumes"
        )
    if isinstance(exc, OSError) and exc.filename and exc.errno in (errno.EACCES, errno.EROFS):
        return f"{exc.filename}: {exc.strerror}"
    kind, message = _unwrap_worker(str(exc))
    if kind is not None:  # a data error in a loader process: the last line says what
        return f"in a DataLoader worker: {kind}: {message}"
    if type(exc).__name__ == "SafetensorError":
        text = str(exc).strip()
        if "No space left" in text:
            return f"{text}; free some space and run the same command again: it resumes"
        return text.splitlines()[0] if text else "safetensors error"
    return None
