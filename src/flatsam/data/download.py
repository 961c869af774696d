"""Checksummed downloads with the standard library (urllib), landing atomically; mirrors; archive unpacking.

Every dataset download goes through :func:`fetch`: the bytes go to a temporary ``.part`` file in the
destination folder, are verified, and only then renamed into place, so an interrupted (Ctrl-C), failed
or corrupt transfer leaves nothing half-written behind. A mirror replaces the official host for every
file (``$FLATSAM_MIRROR`` or ``--data-url``): an ``http(s)://`` or ``file://`` base URL, or a plain
folder, holding the files under their official names (``cifar-10-python.tar.gz``, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm.auto import tqdm

from flatsam.data._io import _CHUNK, ChecksumError, DataFileError, sha256_of, user_cache_dir

__all__ = [
    "MIRROR_ENV",
    "ChecksumError",
    "DownloadError",
    "Remote",
    "download_target",
    "extract_archive",
    "fetch",
    "fetch_dataset_file",
    "fetch_remote",
    "human_size",
    "mirror_base",
    "source_url",
]

#: Environment variable naming a mirror of the official download locations.
MIRROR_ENV = "FLATSAM_MIRROR"


class DownloadError(OSError):
    """The transfer itself failed (network error, HTTP error, short read)."""


@dataclass(frozen=True)
class Remote:
    """One published file: its official URL, its published digest(s) and its size in bytes."""

    url: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def human_size(size: int) -> str:
    """``248100043`` → ``'248.1 MB'`` (decimal units, as the dataset pages state them)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def mirror_base(mirror: str | os.PathLike[str] | None = None) -> str | None:
    """The mirror's base URL, ending in ``/``: ``mirror``, else ``$FLATSAM_MIRROR``, else ``None``. A plain
    path becomes a ``file://`` URL."""
    base = str(mirror) if mirror is not None else os.environ.get(MIRROR_ENV, "")
    if not base:
        return None
    if "://" not in base:
        base = Path(base).expanduser().resolve().as_uri()
    return base.rstrip("/") + "/"


def source_url(official: str, mirror: str | os.PathLike[str] | None = None) -> str:
    """Where to fetch ``official`` from: the same file name under the mirror (:func:`mirror_base`), or
    ``official`` itself when no mirror is set."""
    base = mirror_base(mirror)
    return official if base is None else base + official.rsplit("/", 1)[-1]


def download_target(data_dir: str | os.PathLike[str] | None, default: Path) -> Path:
    """The folder a download lands in: ``data_dir`` when given (a folder), else ``$FLATSAM_DATA``, else
    ``default`` (the user cache)."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("FLATSAM_DATA")
    return Path(env).expanduser() if env else default


def fetch_remote(
    remote: Remote,
    folder: str | os.PathLike[str],
    *,
    mirror: str | os.PathLike[str] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``remote`` into ``folder`` under its official name (from the mirror, if one is set),
    checked against its published digests; see :func:`fetch`."""
    url = source_url(remote.url, mirror)
    return fetch(
        url, Path(folder) / remote.filename, remote.sha256, md5=remote.md5, progress=progress, timeout=timeout
    )


def fetch_dataset_file(
    remote: Remote,
    root: str | os.PathLike[str] | None,
    name: str,
    *,
    mirror: str | os.PathLike[str] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch a dataset's ``remote`` file into ``root`` (else ``$FLATSAM_DATA``, else the user cache), saying
    its size first (when known and ``progress``); a failed transfer's error also says what to do instead."""
    target = download_target(root, user_cache_dir())
    if progress and remote.size is not None:
        print(f"flatsam: downloading {name} ({human_size(remote.size)}) into {target}", file=sys.stderr)
    try:
        return fetch_remote(remote, target, mirror=mirror, progress=progress, timeout=timeout)
    except DownloadError as e:
        raise DownloadError(
            f"{e}; put {remote.filename} into {target} by hand, or name a mirror with --data-url or "
            f"{MIRROR_ENV}"
        ) from e


def fetch(
    url: str,
    dest_path: str | os.PathLike[str],
    sha256: str | None,
    *,
    md5: str | None = None,
    decompressed_sha256: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest_path`` and return the path.

    The bytes go to a temporary file in the destination directory, which replaces ``dest_path``
    (``os.replace``, atomic) only once complete and verified, so ``dest_path`` never holds a partial
    or unverified file, also after Ctrl-C. ``sha256`` is the expected hex digest of the downloaded
    bytes, or of their gunzipped content when ``decompressed_sha256`` is true; ``md5`` the expected MD5
    of the downloaded bytes (the digest the CIFAR and Tiny-ImageNet releases are published with);
    ``None`` skips a check. A mismatch raises :class:`ChecksumError` naming the file, the URL and both
    digests, and the download is deleted. A tqdm bar is shown when ``progress`` is set and the server
    reports the size.
    """
    dest = Path(dest_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digests = _download_to(url, out, progress=progress, timeout=timeout, label=dest.name)
        if sha256 is not None:
            _verify(tmp, dest, url, sha256, digests["sha256"], decompressed_sha256)
        if md5 is not None and digests["md5"] != md5.lower():
            raise ChecksumError(
                dest, md5.lower(), digests["md5"], f"file downloaded from {url} (deleted)", algorithm="MD5"
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def _verify(tmp: Path, dest: Path, url: str, expected: str, raw_digest: str, decompressed: bool) -> None:
    """Check the downloaded ``tmp`` (errors name ``dest`` and ``url``)."""
    actual = raw_digest
    if decompressed:
        try:
            actual = sha256_of(tmp, decompressed=True)
        except DataFileError as e:
            raise DataFileError(dest, f"downloaded from {url}, but {e.problem}") from e
    if actual != expected.lower():
        what = "decompressed content" if decompressed else "file"
        raise ChecksumError(dest, expected.lower(), actual, f"{what} downloaded from {url} (deleted)")


def _download_to(url: str, out: BinaryIO, *, progress: bool, timeout: float, label: str) -> dict[str, str]:
    """Stream ``url`` into ``out``; return the SHA-256 and MD5 of the bytes received."""
    digests = {"sha256": hashlib.sha256(), "md5": hashlib.md5(usedforsecurity=False)}
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=label, disable=not progress or total is None
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    for digest in digests.values():
                        digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise DownloadError(f"download of {url} failed: {e}") from e
    if total is not None and received != total:
        raise DownloadError(f"download of {url} failed: expected {total} bytes, received {received}")
    return {name: digest.hexdigest() for name, digest in digests.items()}


# --- unpacking ------------------------------------------------------------------------------------------


def _safe_member(name: str, where: Path) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DataFileError(where, f"refusing the archive member {name!r} (it would land outside the folder)")
    return path


def _zip_members(archive: Path) -> Iterator[tuple[PurePosixPath, Callable[[], BinaryIO] | None]]:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            opener = None if info.is_dir() else (lambda info=info: zf.open(info))  # type: ignore[misc]
            yield _safe_member(info.filename, archive), opener


def _tar_members(archive: Path) -> Iterator[tuple[PurePosixPath, Callable[[], BinaryIO] | None]]:
    with tarfile.open(archive, "r:*") as tar:
        for info in tar:
            if not (info.isfile() or info.isdir()):
                continue  # links and devices are never unpacked
            opener = None if info.isdir() else (lambda info=info: tar.extractfile(info))  # type: ignore[misc]
            yield _safe_member(info.name, archive), opener


def extract_archive(
    archive: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    keep: Callable[[PurePosixPath], bool] | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Unpack the zip or tar ``archive`` into ``folder``, atomically per top-level entry.

    The members go to a temporary folder next to their destination; each top-level entry is then
    renamed into ``folder``, so a failure or Ctrl-C leaves no half-unpacked tree (an entry already in
    ``folder`` is replaced). ``keep`` selects members by their path (default: all). Members that would
    land outside the folder, links and devices are refused or skipped. Returns ``folder``.
    """
    archive, folder = Path(archive), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    members = _zip_members if zipfile.is_zipfile(archive) else _tar_members
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".part", dir=folder))
    try:
        try:
            for path, opener in tqdm(
                members(archive), desc=f"unpacking {archive.name}", disable=not progress
            ):
                if keep is not None and not keep(path):
                    continue
                target = staging.joinpath(*path.parts)
                if opener is None:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with opener() as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
            raise DataFileError(archive, f"not a readable archive ({type(e).__name__}: {e})") from e
        for entry in staging.iterdir():
            destination = folder / entry.name
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            os.replace(entry, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
