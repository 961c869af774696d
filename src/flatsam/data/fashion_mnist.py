"""Fashion-MNIST (Xiao et al., 2017) from its four idx-ubyte files, gzipped or raw.

Where the files are looked for, in order:

1. ``data_dir`` when given: that directory or its ``fashion-mnist/`` subfolder, and nowhere else
   (a download, if allowed, goes into ``data_dir``);
2. ``$FLATSAM_DATA``: the folder itself or a ``fashion-mnist/`` folder under it;
3. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package);
4. the user cache, ``~/.cache/flatsam/fashion-mnist`` (``$XDG_CACHE_HOME`` respected).

If none holds all four files and ``download`` is set, the ``.gz`` files are fetched from the
official location (or ``url`` / ``$FLATSAM_FASHION_MNIST_URL``, else the mirror named by
``$FLATSAM_MIRROR``, which holds the four ``.gz`` files under their names) into the cache (or ``data_dir``)
and the SHA-256 of their *decompressed* content is checked (Debian recompressed the ``.gz`` files,
so only the decompressed hashes are stable).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from flatsam.data._io import (
    DataFileError,
    env_data_dir,
    format_searched,
    read_file_bytes,
    user_cache_dir,
)
from flatsam.data.download import DownloadError, fetch, mirror_base
from flatsam.data.images import ImageData

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: SHA-256 of the decompressed files.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEFAULT_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
URL_ENV = "FLATSAM_FASHION_MNIST_URL"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBDIR = "fashion-mnist"
MEAN = (0.2860,)
STD = (0.3530,)
NUM_CLASSES = 10
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_UBYTE = 0x08


def read_idx(path: str | os.PathLike[str], ndim: int, kind: str = "") -> np.ndarray:
    """Read an idx-ubyte file (``.gz`` or raw) with ``ndim`` dimensions into a uint8 array.

    Checks the magic number (unsigned-byte data, ``ndim`` dimensions) and that the length matches
    the header; problems raise :class:`~flatsam.data._io.DataFileError` (a ``ValueError``)
    naming the file and what was expected.
    """
    data = read_file_bytes(path)
    label = f"{kind} " if kind else ""
    if len(data) < 4:
        raise DataFileError(path, f"too short for an idx file: {len(data)} bytes")
    zero, dtype, found_ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != _UBYTE or found_ndim != ndim:
        raise DataFileError(
            path,
            f"bad magic number 0x{data[:4].hex()}: expected 0x0000{_UBYTE:02x}{ndim:02x}"
            f" (an unsigned-byte idx{ndim} {label}file)",
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(path, f"truncated header: expected {header} bytes, found {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(data) - header
    if found != expected:
        raise DataFileError(
            path,
            f"{'truncated' if found < expected else 'corrupt'} file: expected {expected} bytes of "
            f"{label}data after the {header}-byte header (shape {dims}), found {found}",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _file_in(directory: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _missing(directory: Path) -> list[str]:
    return [base for base in FILES.values() if _file_in(directory, base) is None]


def candidate_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The directories searched, in order (see the module docstring)."""
    if data_dir is not None:
        roots = [Path(data_dir).expanduser()]
    else:
        env = env_data_dir()
        roots = [env] if env is not None else []
        roots += [SYSTEM_DIR, user_cache_dir()]
    dirs: list[Path] = []
    for root in roots:
        dirs += [root, root / SUBDIR] if root.name != SUBDIR else [root]
    return dirs


def find_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first candidate directory holding all four files, or ``None``."""
    return next((d for d in candidate_dirs(data_dir) if not _missing(d)), None)


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    url: str | None = None,
    sha256: Mapping[str, str | None] | None = None,
    progress: bool = True,
) -> ImageData:
    """Load Fashion-MNIST as :class:`ImageData` (1×28×28 uint8, 60 000 train / 10 000 test).

    ``url`` overrides the download location (base URL of the ``.gz`` files; also
    ``$FLATSAM_FASHION_MNIST_URL``). ``sha256`` maps file names (without ``.gz``) to the expected
    SHA-256 of the decompressed content of downloaded files (default :data:`SHA256`; ``None`` for a
    file skips its check). Files found locally are checked for structure, not hashed.
    """
    directory = find_fashion_mnist(data_dir)
    if directory is None:
        target = Path(data_dir).expanduser() if data_dir is not None else user_cache_dir() / SUBDIR
        failure, cause = "", None
        if download:
            base_url = url or os.environ.get(URL_ENV) or mirror_base() or DEFAULT_URL
            try:
                _download(target, base_url, SHA256 if sha256 is None else sha256, progress)
                directory = target
            except (DownloadError, DataFileError) as e:
                failure, cause = f"\nThe download from {base_url} failed: {e}", e
        if directory is None:
            raise FileNotFoundError(_not_found_message(data_dir, download) + failure) from cause
    return _read_dir(directory)


def _download(target: Path, base_url: str, hashes: Mapping[str, str | None], progress: bool) -> None:
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    for base in _missing(target):
        fetch(
            f"{base_url}{base}.gz",
            target / f"{base}.gz",
            hashes.get(base),
            decompressed_sha256=True,
            progress=progress,
        )


def _describe_missing(directory: Path) -> str:
    return "missing " + ", ".join(_missing(directory)) if directory.is_dir() else "no such directory"


def _not_found_message(data_dir: str | os.PathLike[str] | None, download: bool) -> str:
    looked = [f"{d} ({_describe_missing(d)})" for d in candidate_dirs(data_dir)]
    return (
        "Fashion-MNIST not found. Looked in:\n"
        + format_searched(looked)
        + "\nInstall it with `apt-get install -y dataset-fashion-mnist`, or point --data-dir (or "
        "FLATSAM_DATA) at a folder with the four idx-ubyte(.gz) files"
        + ("." if download else ", or allow the download.")
    )


def _read_dir(directory: Path) -> ImageData:
    def path(key: str) -> Path:
        found = _file_in(directory, FILES[key])
        assert found is not None
        return found

    train_x = _read_images(path("train_images"))
    train_y = _read_labels(path("train_labels"), len(train_x), path("train_images"))
    test_x = _read_images(path("test_images"))
    test_y = _read_labels(path("test_labels"), len(test_x), path("test_images"))
    return ImageData(
        "fashion-mnist", train_x, train_y, test_x, test_y, NUM_CLASSES, MEAN, STD, class_names=CLASSES
    )


def _read_images(path: Path) -> torch.Tensor:
    images = read_idx(path, 3, "image")
    if images.shape[1:] != (28, 28):
        raise DataFileError(path, f"expected 28×28 images, found {images.shape[1]}×{images.shape[2]}")
    return torch.from_numpy(images).unsqueeze(1)


def _read_labels(path: Path, count: int, images_path: Path) -> torch.Tensor:
    labels = read_idx(path, 1, "label")
    if len(labels) != count:
        raise DataFileError(path, f"{len(labels)} labels, but {images_path.name} holds {count} images")
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise DataFileError(path, f"labels must be in [0, {NUM_CLASSES}), found {int(labels.max())}")
    return torch.from_numpy(labels.astype(np.int64))
