"""How a failed run is told to the user: one ``error:`` line, the user's own frames, and I/O
errors (disk full, out of descriptors, permission) named for what they are.

The CLI (``eddies run``, ``eddies worker``) prints :func:`error_lines`; the runner wraps an
``OSError`` from a file it writes or reads with :func:`io_error`, so the message names the
file. Errors from RocksDB that arrive unwrapped (a bare ``Exception`` whose text carries the
OS error) are classified by their text, so they read the same way.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import traceback
from pathlib import Path

from eddies.errors import EddiesError, StateIOError, UserFunctionError

__all__ = ["classify_io", "error_lines", "io_error", "user_frames"]

_PACKAGE = str(Path(__file__).resolve().parents[1])  # the eddies package dir
_RESUME = "the last checkpoint is intact: {fix}, then run the same command again to resume"

# errno -> (what happened, what to do)
_BY_ERRNO: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("disk full", "free space on that filesystem"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota"),
    errno.EMFILE: ("too many open files", "raise the descriptor limit (ulimit -n, now {nofile})"),
    errno.ENFILE: ("too many open files in the system",
                   "close other programs' files or raise fs.file-max"),
    errno.EACCES: ("permission denied", "give this user access to it"),
    errno.EPERM: ("operation not permitted", "give this user access to it"),
    errno.EROFS: ("read-only file system", "use a writable location"),
    errno.EIO: ("I/O error", "check the disk (dmesg)"),
}
# The texts RocksDB (and the OS) put in messages, for errors that arrive without an errno.
_BY_TEXT: list[tuple[re.Pattern[str], int]] = [
    (re.compile(r"no space left on device", re.I), errno.ENOSPC),
    (re.compile(r"disk quota exceeded", re.I), errno.EDQUOT),
    (re.compile(r"too many open files in system", re.I), errno.ENFILE),
    (re.compile(r"too many open files", re.I), errno.EMFILE),
    (re.compile(r"permission denied", re.I), errno.EACCES),
    (re.compile(r"operation not permitted", re.I), errno.EPERM),
    (re.compile(r"read-only file system", re.I), errno.EROFS),
    (re.compile(r"input/output error", re.I), errno.EIO),
]


def _errno_of(exc: BaseException) -> int | None:
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and isinstance(code, int) and code in _BY_ERRNO:
        return code
    text = str(exc)
    for pattern, code in _BY_TEXT:
        if pattern.search(text):
            return code
    return None


def classify_io(exc: BaseException) -> tuple[str, str] | None:
    """``(what happened, what to do)`` when ``exc`` is the OS refusing I/O, else None.

    >>> classify_io(OSError(28, "No space left on device"))
    ('disk full', 'free space on that filesystem')
    >>> classify_io(Exception("IO error: While open a file for appending: /s/000012.log: "
    ...                       "Permission denied"))
    ('permission denied', 'give this user access to it')
    >>> classify_io(ValueError("bad value")) is None
    True
    """
    code = _errno_of(exc)
    if code is None:
        return None
    what, fix = _BY_ERRNO[code]
    if "{nofile}" in fix:
        fix = fix.format(nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    return what, fix


def io_error(where: str, exc: OSError) -> StateIOError:
    """A :class:`StateIOError` for ``exc`` raised while doing ``where`` (which names the file),
    saying what happened, that the last checkpoint is intact and what to do.

    >>> print(io_error("writing sink 'out' (/data/out.jsonl)", OSError(28, "No space left")))
    disk full writing sink 'out' (/data/out.jsonl): [Errno 28] No space left; the last checkpoint is intact: free space on that filesystem, then run the same command again to resume
    """
    what, fix = classify_io(exc) or ("I/O error", "fix the cause")
    return StateIOError(f"{what} {where}: {exc}; {_RESUME.format(fix=fix)}")


def _in_package(filename: str) -> bool:
    """Whether ``filename`` lies inside the eddies package dir, compared by path components:
    a sibling such as ``eddies_jobs/`` or ``eddies_contrib/`` is the user's, not eddies'."""
    return str(Path(filename).resolve()).startswith(_PACKAGE + os.sep)


def user_frames(exc: BaseException) -> list[str]:
    """The frames of the traceback behind ``exc`` (its cause, for a UserFunctionError) that
    lie outside the eddies package, formatted as Python prints them (file, line, code).

    These are where the user's function failed: ``on_event``, ``on_timer``, a map function,
    and whatever library code they called.
    """
    cause = exc.__cause__ if isinstance(exc, UserFunctionError) else exc
    if cause is None or cause.__traceback__ is None:
        return []
    frames = [f for f in traceback.extract_tb(cause.__traceback__)
              if not _in_package(f.filename)]
    return [line for entry in traceback.format_list(frames)
            for line in entry.rstrip("\n").split("\n")]


def error_lines(exc: BaseException, *, debug: bool = False) -> list[str] | None:
    """What the CLI prints for ``exc``: the ``error:`` line first, then where it happened
    (notes, the user's frames). None when ``exc`` is neither an eddies error nor I/O refused
    by the OS: a bug, whose traceback should be shown as is.

    With ``debug``, the lines end with the whole traceback (every chained exception).
    """
    if isinstance(exc, EddiesError):
        lines = [f"error: {exc}"]
    else:
        io = classify_io(exc)
        if io is None:
            return None
        what, fix = io
        where = getattr(exc, "filename", None)
        detail = f" ({where})" if where else ""
        lines = [f"error: {what}{detail}: {exc}; {_RESUME.format(fix=fix)}"]
    lines.extend(f"  {note}" for note in getattr(exc, "__notes__", ()))
    if isinstance(exc, UserFunctionError):
        frames = user_frames(exc)
        if frames:
            lines.append("  in user code (most recent call last):")
            lines.extend(f"  {line}" for line in frames)
    if debug:
        lines.extend("".join(traceback.format_exception(exc)).rstrip("\n").split("\n"))
    elif isinstance(exc, UserFunctionError):
        lines.append("  (--debug prints the whole traceback)")
    return lines
