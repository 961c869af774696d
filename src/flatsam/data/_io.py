"""Shared helpers for the dataset readers: clear file errors, gzip reading, hashing, search paths."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20


class DataFileError(ValueError):
    """A dataset file exists but is truncated, corrupt or not in the expected format."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ChecksumError(DataFileError):
    """A file's digest (SHA-256 unless ``algorithm`` says otherwise) does not match the expected value."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        expected: str,
        actual: str,
        what: str = "",
        algorithm: str = "SHA-256",
    ) -> None:
        self.expected = expected
        self.actual = actual
        label = f"{algorithm} mismatch{' of the ' + what if what else ''}"
        super().__init__(path, f"{label}: expected {expected}, got {actual}")


def is_gzip_name(path: str | os.PathLike[str]) -> bool:
    return str(path).endswith(".gz")


def read_file_bytes(path: str | os.PathLike[str]) -> bytes:
    """Return the content of ``path``, gunzipped when its name ends in ``.gz``.

    A damaged gzip stream becomes a :class:`DataFileError` naming the file.
    """
    path = Path(path)
    if not is_gzip_name(path):
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataFileError(path, f"not a valid gzip file ({type(e).__name__}: {e})") from e


def _iter_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


def sha256_of(path: str | os.PathLike[str], *, decompressed: bool = False) -> str:
    """Hex SHA-256 of a file's bytes, or of its gunzipped content when ``decompressed``."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        opener = gzip.open if decompressed else open
        with opener(path, "rb") as f:
            for chunk in _iter_chunks(f):  # type: ignore[arg-type]
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as e:
        if not decompressed or isinstance(e, FileNotFoundError):
            raise
        raise DataFileError(path, f"not a valid gzip file ({type(e).__name__}: {e})") from e
    return digest.hexdigest()


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/flatsam`` (default ``~/.cache/flatsam``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flatsam"


def env_data_dir() -> Path | None:
    """The directory named by ``FLATSAM_DATA``, if set."""
    value = os.environ.get("FLATSAM_DATA")
    return Path(value).expanduser() if value else None


def search_roots(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Where to look for a locally stored dataset: ``data_dir`` alone when given, else ``FLATSAM_DATA``
    and the user cache directory."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots = [env_data_dir(), user_cache_dir()]
    return [r for r in roots if r is not None]


def format_searched(paths: Iterable[str | os.PathLike[str]]) -> str:
    return "\n".join(f"  - {p}" for p in paths)
