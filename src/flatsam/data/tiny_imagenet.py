"""Tiny-ImageNet-200 from its folder layout.

::

    tiny-imagenet-200/
        wnids.txt                          one WordNet id per line (200 classes)
        train/<wnid>/images/*.JPEG         500 per class
        val/images/*.JPEG                  10 000 images
        val/val_annotations.txt            file <TAB> wnid <TAB> bbox...

The val split is returned as the test set (the official test split has no labels). Labels are
indices into the *sorted* wnids. Images are decoded with Pillow (a matplotlib dependency) as RGB
64×64 uint8, in a few threads, with a progress bar; the decoded arrays can be cached as an ``.npz``
keyed on the file list, sizes and modification times, so a second load takes seconds.

Where the folder is missing but ``tiny-imagenet-200.zip`` lies in a searched folder, it is unpacked
there. With ``download=True`` a missing release is fetched first: the official zip from
http://cs231n.stanford.edu/ (or the same file name under ``$FLATSAM_MIRROR``), checked against the MD5
that is published with it and checked by the common torchvision-style Tiny-ImageNet readers, into
``root`` (else ``$FLATSAM_DATA``, else the user cache), then unpacked atomically (the zip is kept).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from tqdm.auto import tqdm

from flatsam.data._io import DataFileError, format_searched, search_roots, user_cache_dir
from flatsam.data.download import Remote, extract_archive, fetch_dataset_file
from flatsam.data.images import ImageData

FOLDER = "tiny-imagenet-200"
#: The official zip with the MD5 published with it (as checked by torchvision-style readers) and its size.
REMOTE = Remote(
    "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    md5="90528d7ca1a48142e341f4ef8d21d0de",
    size=248_100_043,
)
PathLike = str | os.PathLike[str] | None
SIZE = 64
MEAN = (0.4802, 0.4481, 0.3975)
STD = (0.2302, 0.2265, 0.2262)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_CACHE_VERSION = "1"


def load_tiny_imagenet(
    root: str | os.PathLike[str] | None = None,
    *,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
    download: bool = False,
    mirror: PathLike = None,
) -> ImageData:
    """Load Tiny-ImageNet-200 (100 000 train / 10 000 val-as-test images, 3×64×64, 200 classes).

    ``root`` is the ``tiny-imagenet-200`` folder or a folder containing it (``None``: look under
    ``$FLATSAM_DATA`` and the user cache). With ``cache`` the decoded arrays are kept in
    ``cache_dir`` (default ``~/.cache/flatsam``). ``download`` and ``mirror``: see the module docstring.
    """
    try:
        folder = _locate(root)
    except FileNotFoundError:
        folder = _unpack_or_download(root, download, mirror, progress)
    wnids = _read_wnids(folder / "wnids.txt")
    train_files, train_labels = _train_files(folder, wnids)
    test_files, test_labels = _val_files(folder, wnids)
    files = train_files + test_files
    cache_path = _cache_path(folder, files, cache_dir) if cache else None
    pixels = _load_cache(cache_path, len(files)) if cache_path else None
    if pixels is None:
        pixels = _decode_all(files, workers, progress)
        if cache_path:
            _save_cache(cache_path, pixels)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    n = len(train_files)
    return ImageData(
        "tiny-imagenet",
        x[:n],
        torch.tensor(train_labels, dtype=torch.int64),
        x[n:],
        torch.tensor(test_labels, dtype=torch.int64),
        len(wnids),
        MEAN,
        STD,
        class_names=tuple(wnids),
    )


# --- layout ---------------------------------------------------------------------------------------


def _locate(root: str | os.PathLike[str] | None) -> Path:
    tried = []
    for base in search_roots(root):
        for folder in (base, base / FOLDER):
            tried.append(folder)
            if (folder / "wnids.txt").is_file():
                return folder
    raise FileNotFoundError(
        "Tiny-ImageNet-200 not found (no wnids.txt). Looked in:\n"
        + format_searched(tried)
        + "\nAllow the download (--download), or unpack tiny-imagenet-200.zip and pass its folder with "
        "--data-dir (or FLATSAM_DATA)."
    )


def _unpack_or_download(root: PathLike, download: bool, mirror: PathLike, progress: bool) -> Path:
    """The folder unpacked from a ``tiny-imagenet-200.zip`` found in a searched folder, else from one
    downloaded (when ``download``); else the not-found error."""
    archive = next(
        (base / REMOTE.filename for base in search_roots(root) if (base / REMOTE.filename).is_file()), None
    )
    if archive is None:
        if not download:
            return _locate(root)  # raises the error that lists where we looked
        archive = download_tiny_imagenet(root, mirror=mirror, progress=progress)
    extract_archive(archive, archive.parent, lambda path: path.parts[0] == FOLDER, progress=progress)
    return _locate(archive.parent)


def download_tiny_imagenet(root: PathLike = None, *, mirror: PathLike = None, progress: bool = True) -> Path:
    """Fetch the official zip into ``root`` (else ``$FLATSAM_DATA``, else the user cache), MD5-checked;
    return its path."""
    return fetch_dataset_file(REMOTE, root, "tiny-imagenet", mirror=mirror, progress=progress)


def _read_wnids(path: Path) -> list[str]:
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids:
        raise DataFileError(path, "no class ids (expected one WordNet id per line)")
    if len(set(wnids)) != len(wnids):
        raise DataFileError(path, "duplicate class ids")
    return sorted(wnids)


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _train_files(folder: Path, wnids: Sequence[str]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        directory = folder / "train" / wnid / "images"
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: missing training folder for class {wnid}")
        found = _image_files(directory)
        if not found:
            raise FileNotFoundError(f"{directory}: no images for class {wnid}")
        files += found
        labels += [label] * len(found)
    return files, labels


def _val_files(folder: Path, wnids: Sequence[str]) -> tuple[list[Path], list[int]]:
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise FileNotFoundError(f"{annotations}: missing validation annotation file")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataFileError(
                annotations, f"line {number}: expected 'file<TAB>wnid…' with a known wnid: {line!r}"
            )
        path = folder / "val" / "images" / fields[0]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {annotations} line {number}, but missing")
        files.append(path)
        labels.append(index[fields[1]])
    if not files:
        raise DataFileError(annotations, "no validation images listed")
    return files, labels


# --- decoding -------------------------------------------------------------------------------------


def _pil_image() -> ModuleType:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("Reading Tiny-ImageNet needs Pillow: pip install pillow") from e
    return Image


def decode_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one image file to a 64×64×3 uint8 RGB array (errors name the file)."""
    image_module = _pil_image()
    try:
        with image_module.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise DataFileError(path, f"cannot decode image ({type(e).__name__}: {e})") from e
    if rgb.size != (SIZE, SIZE):
        raise DataFileError(path, f"expected a {SIZE}×{SIZE} image, found {rgb.size[0]}×{rgb.size[1]}")
    return np.asarray(rgb, dtype=np.uint8)


def _decode_all(files: Sequence[Path], workers: int | None, progress: bool) -> np.ndarray:
    out = np.empty((len(files), SIZE, SIZE, 3), dtype=np.uint8)
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow releases the GIL while decoding
        decoded = pool.map(decode_image, files, chunksize=64)
        for i, image in enumerate(
            tqdm(decoded, total=len(files), desc="tiny-imagenet", disable=not progress)
        ):
            out[i] = image
    return out


# --- cache ----------------------------------------------------------------------------------------


def _cache_path(folder: Path, files: Sequence[Path], cache_dir: str | os.PathLike[str] | None) -> Path:
    """Cache file keyed on the folder, the ordered file list, file sizes and modification times."""
    digest = hashlib.sha256(f"{_CACHE_VERSION}\n{folder.resolve()}\n".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    directory = Path(cache_dir) if cache_dir is not None else user_cache_dir()
    return directory / f"tiny-imagenet-{digest.hexdigest()[:16]}.npz"


def _load_cache(path: Path, count: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as archive:
            pixels = archive["pixels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"ignoring unreadable cache {path} (it is rebuilt): {e}", stacklevel=3)
        return None
    if pixels.shape != (count, SIZE, SIZE, 3) or pixels.dtype != np.uint8:
        warnings.warn(f"ignoring cache {path}: unexpected shape {pixels.shape}", stacklevel=3)
        return None
    return pixels


def _save_cache(path: Path, pixels: np.ndarray) -> None:
    """Write the cache atomically; a failure only warns (the data is already decoded)."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, pixels=pixels)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not write the Tiny-ImageNet cache {path}: {e}", stacklevel=3)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
