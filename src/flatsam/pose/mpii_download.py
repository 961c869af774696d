"""Fetching MPII Human Pose (Andriluka et al., CVPR 2014) into the layout :func:`flatsam.pose.mpii.load_mpii`
reads: ``DIR/annot/mpii_train.json``, ``DIR/annot/mpii_val.json`` and ``DIR/images/``.

- The annotations are the JSON conversion of the HRNet/mmpose code bases, published by OpenMMLab as
  ``mpii_annotations.tar`` (https://mmpose.readthedocs.io, 2D body keypoint datasets). No digest is
  published for it, so the download is not checksummed (unverified); the reader validates every record.
- The images are the official ``mpii_human_pose_v1.tar.gz`` (12.9 GB, from the MPII site; no digest
  published either). They are fetched only when asked for (``images=True``), after the size is stated;
  the download and the unpacked folder need about 26 GB of free space at once, and the tarball is deleted
  once unpacked.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from flatsam.data.download import Remote, extract_archive, fetch_dataset_file

ANNOTATIONS = Remote("https://download.openmmlab.com/mmpose/datasets/mpii_annotations.tar")
IMAGES = Remote("https://datasets.d2.mpi-inf.mpg.de/andriluka14cvpr/mpii_human_pose_v1.tar.gz")
#: The images tarball's size as the MPII site states it.
IMAGES_SIZE = "12.9 GB"
#: The annotation files kept from the archive (the reader needs the first two).
ANNOTATION_FILES = ("mpii_train.json", "mpii_val.json", "mpii_gt_val.mat")

PathLike = str | os.PathLike[str]


def download_annotations(
    data_dir: PathLike, *, mirror: PathLike | None = None, progress: bool = True
) -> list[Path]:
    """Fetch the annotation archive into ``data_dir`` and unpack the files the reader expects into
    ``data_dir/annot/`` (each atomically); return their paths. The archive is deleted afterwards."""
    root = Path(data_dir).expanduser()
    archive = fetch_dataset_file(ANNOTATIONS, root, "MPII annotations", mirror=mirror, progress=progress)
    staging = root / ".mpii-annotations.part"
    try:
        extract_archive(archive, staging, lambda path: path.name in ANNOTATION_FILES, progress=progress)
        found = {path.name: path for path in staging.rglob("*") if path.name in ANNOTATION_FILES}
        missing = [name for name in ANNOTATION_FILES[:2] if name not in found]
        if missing:
            raise FileNotFoundError(f"{archive}: the archive lacks {', '.join(missing)}")
        (root / "annot").mkdir(parents=True, exist_ok=True)
        landed = []
        for name, path in sorted(found.items()):
            os.replace(path, root / "annot" / name)
            landed.append(root / "annot" / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()
    return landed


def download_images(data_dir: PathLike, *, mirror: PathLike | None = None, progress: bool = True) -> Path:
    """Fetch the 12.9 GB image tarball into ``data_dir`` and unpack its ``images/`` folder there
    (atomically: the folder appears only when complete); the tarball is deleted afterwards."""
    root = Path(data_dir).expanduser()
    print(
        f"flatsam: downloading the MPII images, {IMAGES_SIZE} ({IMAGES.filename}), into {root}; unpacking "
        "needs about as much again",
        file=sys.stderr,
    )
    archive = fetch_dataset_file(IMAGES, root, "MPII images", mirror=mirror, progress=progress, timeout=120.0)
    extract_archive(archive, root, lambda path: path.parts[0] == "images", progress=progress)
    archive.unlink()
    return root / "images"
