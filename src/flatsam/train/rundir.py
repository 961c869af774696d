"""Claiming a run folder: one writing process at a time, and no run replaced by accident.

A lock file (``.lock``, holding the writer's pid) is locked with ``fcntl.flock``: the kernel drops that
lock when its process ends, however it ends, so a lock left by a killed run is taken over (with a
message) and a live one stops a second writer. The lock file is created exclusively and opened without
following links (``O_CREAT | O_EXCL | O_NOFOLLOW``); a run folder that is a symlink, or whose run files
or lock are symlinks, FIFOs or devices, is refused before anything is written (``flatsam.safe_open``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
from pathlib import Path

from flatsam.safe_open import check_regular, open_regular
from flatsam.train.records import CHECKPOINT, RESULT, RUN_FILES

LOCK = ".lock"
__all__ = ["LOCK", "RUN_FILES", "FolderLock", "RunFolderError", "check_folder", "claim", "run_folder"]


class RunFolderError(ValueError):
    """A run folder that is in use, holds another run, or lies outside the runs folder."""


def run_folder(root: str | Path, name: str) -> Path:
    """``root/name``, refusing names that would leave ``root`` (absolute, ``..``) or are empty."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or any(p in ("..", ".") for p in parts) or "\\" in name:
        raise RunFolderError(
            f"--name {name!r} must be a folder name inside {root}/ (no '..', no absolute path); "
            "use --run-dir for a folder elsewhere"
        )
    return Path(root) / name


def check_folder(folder: Path) -> None:
    """``folder`` is a real folder or absent: a symlink (dangling or not) or a file in its place is a
    ``RunFolderError`` naming it."""
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise RunFolderError(f"run folder {folder} is a symbolic link; refused (give the real folder)")
    if not stat.S_ISDIR(mode):
        raise RunFolderError(f"run folder {folder} exists and is not a folder")


def _holder(fd: int) -> str:
    """The pid written in a lock file, or ``?`` (its content is never echoed)."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() and len(text) <= 10 else "?"


def _open_lock(path: Path) -> int:
    """Create ``path`` exclusively, or open the lock file already there (a regular file, no link)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return open_regular(path, os.O_RDWR)
    except OSError as error:
        if error.errno == errno.ELOOP:  # not expected with O_EXCL, but never follow a link
            check_regular(path)
        raise


class FolderLock:
    """An exclusive lock on ``folder`` for the life of one process's run; ``release()`` removes it."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK
        self.fd: int | None = None
        self.created = False  # whether acquire() made the folder

    def acquire(self) -> None:
        check_folder(self.path.parent)
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_folder(self.path.parent)
        while True:
            fd = _open_lock(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunFolderError(
                    f"{self.path.parent} is being written by another process (pid {holder}); "
                    "wait for it to finish or choose another name"
                ) from None
            try:  # the file may have been removed by the previous holder's release since we opened it
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _holder(fd) if os.fstat(fd).st_size else ""
        if previous:
            print(
                f"flatsam: taking over the lock of {self.path.parent} left by process {previous} "
                "(no longer running)",
                file=sys.stderr,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self, discard_empty: bool = False) -> None:
        """Remove the lock; ``discard_empty``: also the folder, if ``acquire`` made it and it is empty."""
        if self.fd is None:
            return
        # a read-only or full disk must not replace the error that stopped the run (naming the checkpoint)
        # with one naming the lock: a lock file left behind is taken over by the next run (flock is gone)
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
        if discard_empty and self.created:
            with contextlib.suppress(OSError):  # not empty (or gone): kept as it is
                self.path.parent.rmdir()


def claim(folder: Path, *, resume: bool, overwrite: bool) -> FolderLock:
    """Lock ``folder`` and check it may be written: a new run needs a folder without run files (or
    ``overwrite``, which deletes them, so no old ``result.json`` outlives its run); a resumed one needs a
    checkpoint. Temporary files of an interrupted atomic write are removed."""
    folder = Path(folder)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other")
    lock = FolderLock(folder)
    lock.acquire()
    try:
        present = [name for name in RUN_FILES if check_regular(folder / name)]
        if resume and CHECKPOINT not in present:
            if RESULT in present:
                why = " (the run finished and its checkpoint was deleted)"
            elif present:
                why = " (the run stopped before its first checkpoint: start it again with --overwrite)"
            else:
                why = ""
            raise FileNotFoundError(f"--resume: no checkpoint at {folder / CHECKPOINT}{why}")
        if present and not resume and not overwrite:
            what = "a finished run" if RESULT in present else "an unfinished run"
            raise RunFolderError(
                f"{folder} already holds {what}; continue it with --resume or replace it with --overwrite"
            )
        if overwrite:
            for name in present:
                (folder / name).unlink()
        for name in RUN_FILES:
            for leftover in folder.glob(f".{name}.*"):
                leftover.unlink(missing_ok=True)
    except BaseException:
        lock.release(discard_empty=True)
        raise
    return lock
