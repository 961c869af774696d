"""Dataset names → loaders, and :func:`load_dataset` with seeded subsetting and label noise."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flatsam.data.cifar import load_cifar10, load_cifar100
from flatsam.data.fashion_mnist import load_fashion_mnist
from flatsam.data.images import ImageData
from flatsam.data.noise import symmetric_label_noise, training_subset
from flatsam.data.synthetic import make_synthetic
from flatsam.data.tiny_imagenet import load_tiny_imagenet

PathLike = str | os.PathLike[str] | None


@dataclass(frozen=True)
class DatasetInfo:
    """One registered dataset: ``loader(data_dir, download, **options) -> ImageData``."""

    name: str
    description: str
    location: str
    loader: Callable[..., ImageData]


def _fashion_mnist(data_dir: PathLike, download: bool, **options: Any) -> ImageData:
    return load_fashion_mnist(data_dir, download=download, **options)


def _cifar10(data_dir: PathLike, download: bool, **options: Any) -> ImageData:
    return load_cifar10(data_dir, download=download, **options)


def _cifar100(data_dir: PathLike, download: bool, **options: Any) -> ImageData:
    return load_cifar100(data_dir, download=download, **options)


def _tiny_imagenet(data_dir: PathLike, download: bool, **options: Any) -> ImageData:
    return load_tiny_imagenet(data_dir, download=download, **options)


def _synthetic(data_dir: PathLike, download: bool, **options: Any) -> ImageData:
    return make_synthetic(**options)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST: 60k/10k 1×28×28 grey clothing images, 10 classes",
            "/usr/share/datasets/fashion-mnist (apt-get install -y dataset-fashion-mnist), FLATSAM_DATA, "
            "~/.cache/flatsam/fashion-mnist, or downloaded with checksums",
            _fashion_mnist,
        ),
        DatasetInfo(
            "cifar10",
            "CIFAR-10: 50k/10k 3×32×32 images, 10 classes",
            "--data-dir, FLATSAM_DATA or ~/.cache/flatsam: cifar-10-python.tar.gz, cifar-10-batches-py/ or a "
            "folder holding either; or downloaded (170.5 MB, MD5-checked)",
            _cifar10,
        ),
        DatasetInfo(
            "cifar100",
            "CIFAR-100 (fine labels): 50k/10k 3×32×32 images, 100 classes",
            "--data-dir, FLATSAM_DATA or ~/.cache/flatsam: cifar-100-python.tar.gz, cifar-100-python/ or a "
            "folder holding either; or downloaded (169.0 MB, MD5-checked)",
            _cifar100,
        ),
        DatasetInfo(
            "tiny-imagenet",
            "Tiny-ImageNet-200: 100k train / 10k val (as test) 3×64×64 images, 200 classes",
            "--data-dir, FLATSAM_DATA or ~/.cache/flatsam: tiny-imagenet-200/, tiny-imagenet-200.zip or a "
            "folder holding either; or downloaded (248.1 MB, MD5-checked) and unpacked",
            _tiny_imagenet,
        ),
        DatasetInfo(
            "synthetic",
            "Seeded random images with class-dependent patterns (options: num_train, num_test, "
            "num_classes, image_size, channels, noise, seed)",
            "generated in memory",
            _synthetic,
        ),
    )
}

_ALIASES = {
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "tinyimagenet": "tiny-imagenet",
}

#: Datasets of the pose task (flatsam.pose), named here so that a classification run can say so.
POSE_ONLY = ("mpii", "stickfigures")


def canonical_name(name: str) -> str:
    """The registry key for ``name`` (case, ``_``/``-`` and a few aliases tolerated)."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in POSE_ONLY:
        raise ValueError(
            f"dataset {name!r} is a pose dataset: add --task pose (classification datasets: "
            f"{', '.join(DATASETS)})"
        )
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def child_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose derived from the run seed (stable across runs and platforms)."""
    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def load_dataset(
    name: str,
    data_dir: PathLike = None,
    *,
    subset: int | None = None,
    label_noise: float = 0.0,
    seed: int = 0,
    download: bool = True,
    **options: Any,
) -> ImageData:
    """Load a registered dataset, then keep a seeded class-stratified training subset of ``subset``
    images (``None``: all), then apply seeded symmetric label noise to ``label_noise`` of the
    (subset) training labels. The test set is never changed. ``options`` go to the loader (e.g.
    ``num_train=`` for ``synthetic``). Subset and noise use independent seeds derived from ``seed``.
    """
    info = DATASETS[canonical_name(name)]
    if not 0.0 <= label_noise < 1.0:  # fail before a possibly slow load
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise}")
    data = info.loader(data_dir, download, **options)
    if subset is not None:
        indices = training_subset(data.num_train, subset, child_seed(seed, "subset"), labels=data.train_y)
        data = data.select_train(indices)
    if label_noise > 0:
        noisy, changed = symmetric_label_noise(
            data.train_y, label_noise, data.num_classes, child_seed(seed, "label-noise")
        )
        data = data.with_train_labels(noisy, changed)
    return data


def fetch_dataset(
    name: str,
    data_dir: PathLike = None,
    *,
    images: bool = False,
    mirror: PathLike = None,
    progress: bool = True,
) -> str:
    """Make dataset ``name`` present without training (``flatsam download``); return where it is.

    CIFAR-10/100 and Tiny-ImageNet: found where the loaders look, else downloaded and checked (Tiny-ImageNet
    also unpacked). Fashion-MNIST: found or downloaded and read. MPII (``data_dir`` required): the
    annotations, and the 12.9 GB images only with ``images=True``. ``mirror``: see
    :func:`flatsam.data.download.source_url`."""
    key = name.strip().lower().replace("_", "-")
    if key == "mpii":
        return _fetch_mpii(data_dir, images, mirror, progress)
    key = canonical_name(name)
    if key in ("cifar10", "cifar100"):
        from flatsam.data import cifar

        spec = cifar.CIFAR10 if key == "cifar10" else cifar.CIFAR100
        try:
            return str(cifar._locate(spec, data_dir).path)
        except FileNotFoundError:
            return str(cifar.download_cifar(spec, data_dir, mirror=mirror, progress=progress))
    if key == "tiny-imagenet":
        from flatsam.data import tiny_imagenet

        try:
            return str(tiny_imagenet._locate(data_dir))
        except FileNotFoundError:
            return str(tiny_imagenet._unpack_or_download(data_dir, True, mirror, progress))
    if key == "fashion-mnist":
        from flatsam.data.fashion_mnist import find_fashion_mnist

        load_fashion_mnist(data_dir, download=True, progress=progress)
        return str(find_fashion_mnist(data_dir))
    raise ValueError(f"dataset {name!r} is not downloaded (it is generated in memory)")


def _fetch_mpii(data_dir: PathLike, images: bool, mirror: PathLike, progress: bool) -> str:
    from flatsam.pose import mpii_download

    if data_dir is None:
        raise ValueError("MPII needs --data-dir (the folder that will hold annot/ and images/)")
    root = os.fspath(data_dir)
    landed = mpii_download.download_annotations(root, mirror=mirror, progress=progress)
    lines = [str(path) for path in landed]
    if images:
        lines.append(str(mpii_download.download_images(root, mirror=mirror, progress=progress)))
    else:
        lines.append(
            f"(images not fetched: a {mpii_download.IMAGES_SIZE} tarball; add --images to fetch them)"
        )
    return "\n".join(lines)
