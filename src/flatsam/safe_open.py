"""Opening files that may not be what they claim: no links followed, regular files only, bounded size.

A run folder may come from someone else (copied, unpacked, edited by hand). Like careful command-line
tools, flatsam opens its files with ``O_NOFOLLOW`` (a symlink is refused, even a dangling one, so
nothing outside the folder is read, created or truncated) and ``O_NONBLOCK`` (a FIFO cannot hang the
open), checks the opened file is regular (a device such as ``/dev/zero`` is refused), reads at most a
bounded number of bytes, and never prints file content raw (:func:`shown`).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: The largest JSON or JSONL file read from a run folder (a run of 100,000 epochs writes about 60 MB of
#: metrics); a larger one is refused rather than read into memory.
MAX_TEXT_BYTES = 256 * 2**20


class RunFileError(ValueError):
    """A file that is not a regular file (a symlink, FIFO, device or folder) or is too big to read."""


def printable(text: str) -> str:
    """``text`` on one line and inert: line breaks and tabs become spaces, every other control character
    (an escape sequence's ESC, a bell, ...) is written as its escape (``\\x1b``)."""
    return "".join(c if c.isprintable() else " " if c.isspace() else repr(c)[1:-1] for c in text)


def shown(data: bytes | str, limit: int = 40) -> str:
    """``data`` safe to print in one line: at most ``limit`` characters, control characters escaped."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return printable(text[:limit]) + ("…" if len(text) > limit else "")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path: str | Path) -> bool:
    """Whether ``path`` exists, checked without following a link: a regular file is ``True``, nothing
    there is ``False``, anything else (a symlink, even a dangling one, a FIFO, a device, a folder) is a
    ``RunFileError`` naming it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(mode):
        raise RunFileError(f"{path} is {_kind(mode)}, not a regular file; refused (remove or replace it)")
    return True


def open_regular(path: str | Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``os.open`` that follows no link (``O_NOFOLLOW``) and never blocks on a FIFO (``O_NONBLOCK``),
    then checks the opened file is a regular one; a file descriptor, or a ``RunFileError`` naming
    ``path`` (``FileNotFoundError`` when absent without ``O_CREAT``)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RunFileError(f"{path} is a symbolic link, not a regular file; refused") from None
        if error.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO without reader for writing; a folder
            check_regular(path)
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise RunFileError(f"{path} is {_kind(info.st_mode)}, not a regular file; refused")
    os.set_blocking(fd, True)
    return fd


def read_bytes(path: str | Path, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`), at most ``limit`` of them: a larger
    file is a ``RunFileError`` naming it and the limit."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise RunFileError(f"{path} is larger than {limit:,} bytes; refused")
    return data
