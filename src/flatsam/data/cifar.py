"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the official python-pickle release.

``root`` may be the tarball (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, read in
memory with :mod:`tarfile`, nothing is extracted), the extracted folder (``cifar-10-batches-py/``
/ ``cifar-100-python/``), or a folder containing either. With ``root=None`` the folders named by
``$FLATSAM_DATA`` and the user cache (``~/.cache/flatsam``) are tried.

With ``download=True`` a missing release is fetched: the official tarball from
https://www.cs.toronto.edu/~kriz/ (or the same file name under a mirror, ``$FLATSAM_MIRROR``), checked
against the MD5 published with it (the digest torchvision's ``CIFAR10``/``CIFAR100`` also check), into
``root`` (else ``$FLATSAM_DATA``, else the user cache). The tarball is read as it is, never extracted.

Security: the release is a set of Python pickles, and unpickling an untrusted file can run
arbitrary code. The official format leaves no alternative, so the files are read with a restricted
unpickler that only rebuilds numpy arrays, dtypes and builtin containers and refuses any other
global; still, only read CIFAR files from a source you trust.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatsam.data._io import DataFileError, format_searched, search_roots
from flatsam.data.download import Remote, fetch_dataset_file
from flatsam.data.images import ImageData


@dataclass(frozen=True)
class CifarSpec:
    """File layout and statistics of one CIFAR variant."""

    name: str
    archive: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train, *self.test)


CIFAR10 = CifarSpec(
    name="cifar10",
    archive="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test=("test_batch",),
    meta="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarSpec(
    name="cifar100",
    archive="cifar-100-python.tar.gz",
    folder="cifar-100-python",
    train=("train",),
    test=("test",),
    meta="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)

#: The official tarballs with their published MD5 (also in torchvision's CIFAR10/CIFAR100) and sizes.
REMOTES = {
    "cifar10": Remote(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        size=170_498_071,
    ),
    "cifar100": Remote(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        size=169_001_437,
    ),
}

_PIXELS = 3 * 32 * 32
PathLike = str | os.PathLike[str] | None


def load_cifar10(
    root: PathLike = None, *, download: bool = False, mirror: PathLike = None, progress: bool = True
) -> ImageData:
    """CIFAR-10: 50 000 train / 10 000 test 3×32×32 images, 10 classes."""
    return load_cifar(CIFAR10, root, download=download, mirror=mirror, progress=progress)


def load_cifar100(
    root: PathLike = None, *, download: bool = False, mirror: PathLike = None, progress: bool = True
) -> ImageData:
    """CIFAR-100 with its 100 fine labels: 50 000 train / 10 000 test 3×32×32 images."""
    return load_cifar(CIFAR100, root, download=download, mirror=mirror, progress=progress)


def load_cifar(
    spec: CifarSpec,
    root: PathLike = None,
    *,
    download: bool = False,
    mirror: PathLike = None,
    progress: bool = True,
) -> ImageData:
    """Read the CIFAR variant described by ``spec`` (see the module docstring for ``root``, ``download``
    and ``mirror``)."""
    try:
        source = _locate(spec, root)
    except FileNotFoundError:
        if not download:
            raise
        source = _Source(download_cifar(spec, root, mirror=mirror, progress=progress), spec.folder + "/")
    files = source.read_all((*spec.members, spec.meta), optional={spec.meta})
    train_x, train_y = _read_split(spec, files, spec.train, source)
    test_x, test_y = _read_split(spec, files, spec.test, source)
    names = _class_names(spec, files.get(spec.meta), source)
    return ImageData(
        spec.name, train_x, train_y, test_x, test_y, spec.num_classes, spec.mean, spec.std, class_names=names
    )


# --- locating the files ---------------------------------------------------------------------------


class _Source:
    """The release as a folder or a tarball: ``read_all`` returns member name → bytes."""

    def __init__(self, path: Path, prefix: str = "") -> None:
        self.path = path
        self.prefix = prefix  # member prefix inside a tarball

    def where(self, member: str) -> str:
        if self.prefix:
            return f"{self.path} (member {self.prefix}{member})"
        return str(self.path / member)

    def read_all(self, members: tuple[str, ...], optional: set[str]) -> dict[str, bytes]:
        return self._read_tar(members, optional) if self.prefix else self._read_folder(members, optional)

    def _read_folder(self, members: tuple[str, ...], optional: set[str]) -> dict[str, bytes]:
        out = {}
        for member in members:
            path = self.path / member
            if path.is_file():
                out[member] = path.read_bytes()
            elif member not in optional:
                raise FileNotFoundError(f"{path}: missing CIFAR file (expected {', '.join(members)})")
        return out

    def _read_tar(self, members: tuple[str, ...], optional: set[str]) -> dict[str, bytes]:
        wanted = {self.prefix + m: m for m in members}
        out: dict[str, bytes] = {}
        try:
            with tarfile.open(self.path, "r:*") as tar:
                for info in tar:
                    name = wanted.get(info.name.removeprefix("./"))
                    if name is not None and info.isfile():
                        out[name] = tar.extractfile(info).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataFileError(
                self.path, f"not a readable CIFAR tar archive ({type(e).__name__}: {e})"
            ) from e
        missing = [self.prefix + m for m in members if m not in out and m not in optional]
        if missing:
            raise DataFileError(self.path, f"archive lacks member(s) {', '.join(missing)}")
        return out


def _locate(spec: CifarSpec, root: str | os.PathLike[str] | None) -> _Source:
    tried: list[Path] = []
    for base in search_roots(root):
        source = _source_at(spec, base, tried)
        if source is not None:
            return source
    raise FileNotFoundError(
        f"{spec.name} not found. Looked for {spec.archive} or {spec.folder}/ in:\n"
        + format_searched(tried)
        + "\nAllow the download (--download), or download the python version from "
        "https://www.cs.toronto.edu/~kriz/cifar.html and pass its path with --data-dir (or FLATSAM_DATA)."
    )


def download_cifar(
    spec: CifarSpec, root: PathLike = None, *, mirror: PathLike = None, progress: bool = True
) -> Path:
    """Fetch the official tarball of ``spec`` into ``root`` (else ``$FLATSAM_DATA``, else the user cache),
    MD5-checked, and return its path. A failed transfer names the URL and what to do instead."""
    return fetch_dataset_file(REMOTES[spec.name], root, spec.name, mirror=mirror, progress=progress)


def _source_at(spec: CifarSpec, base: Path, tried: list[Path]) -> _Source | None:
    tried.append(base)
    if base.is_file():
        return _Source(base, prefix=spec.folder + "/")
    if not base.is_dir():
        return None
    if any((base / m).is_file() for m in (*spec.members, spec.meta)):
        return _Source(base)  # the extracted folder itself
    if (base / spec.folder).is_dir():
        return _Source(base / spec.folder)
    if (base / spec.archive).is_file():
        return _Source(base / spec.archive, prefix=spec.folder + "/")
    return None


# --- decoding the pickles -------------------------------------------------------------------------


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    allowed[("_codecs", "encode")] = codecs.encode  # how protocol-2 pickles store bytes
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays/dtypes and builtin containers."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _unpickle(data: bytes, where: str) -> dict[bytes, Any]:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataFileError(where, f"truncated or not a CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataFileError(where, f"expected a pickled dict, found {type(obj).__name__}")
    return obj


def _read_batch(spec: CifarSpec, data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(data, where)
    for key in (b"data", spec.label_key):
        if key not in batch:
            raise DataFileError(where, f"missing key {key!r} (found {sorted(batch)})")
    images = np.asarray(batch[b"data"])
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != _PIXELS:
        raise DataFileError(
            where, f"expected uint8 data of shape (N, {_PIXELS}), found {images.dtype} {images.shape}"
        )
    labels = np.asarray(batch[spec.label_key], dtype=np.int64)
    if labels.shape != (len(images),):
        raise DataFileError(where, f"{labels.size} labels for {len(images)} images")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataFileError(
            where, f"labels must be in [0, {spec.num_classes}), found [{labels.min()}, {labels.max()}]"
        )
    return images, labels


def _read_split(
    spec: CifarSpec, files: dict[str, bytes], members: tuple[str, ...], source: _Source
) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_batch(spec, files[m], source.where(m)) for m in members]
    images = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


def _class_names(spec: CifarSpec, data: bytes | None, source: _Source) -> tuple[str, ...]:
    """Class names from the meta file; empty when the file is absent."""
    if data is None:
        return ()
    names = _unpickle(data, source.where(spec.meta)).get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataFileError(
            source.where(spec.meta), f"expected {spec.num_classes} entries under {spec.names_key!r}"
        )
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
