"""MPII Human Pose in the JSON layout of the HRNet and mmpose code bases, and the affine crop.

``DIR/annot/mpii_train.json`` and ``DIR/annot/mpii_val.json`` (or the same names directly in ``DIR``;
the standard train/val split of those code bases) hold a list of person records
``{"image": "015601864.jpg", "center": [x, y], "scale": s, "joints": [[x, y] × 16],
"joints_vis": [0/1 × 16]}``; images are in ``DIR/images``. As in HRNet's ``lib/dataset/mpii.py``, the
coordinates are MATLAB 1-based (we subtract 1), the centre moves down by ``15·s`` and the box grows by
1.25 (``s·200`` pixels is the person's height). An optional ``"headbox": [x1, y1, x2, y2]`` per val
record enables PCKh; MPII ships head boxes in ``annot/gt_valid.mat``, which we do not read (that would
need SciPy), so without them only PCK@0.2 is reported. No training augmentation (flip, rotation, scale)
is applied (unlike the SimCC recipe). JPEGs are decoded with Pillow (a dependency of matplotlib).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flatsam.pose.data import JOINTS, PoseData

PIXEL_STD = 200.0
SPLITS = ("mpii_train.json", "mpii_val.json")


def _fail(path: Path, where: str, problem: str) -> ValueError:
    return ValueError(f"{path}: {where}: {problem}")


def _number_list(path: Path, where: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
    try:
        tensor = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError):
        raise _fail(path, where, f"expected numbers of shape {list(shape)}, got {value!r:.80}") from None
    if tuple(tensor.shape) != shape or not torch.isfinite(tensor).all():
        raise _fail(
            path, where, f"expected finite numbers of shape {list(shape)}, got shape {list(tensor.shape)}"
        )
    return tensor


def read_annotations(path: str | Path) -> list[dict[str, Any]]:
    """Validated records of one annotation file: ``image`` (str), ``center`` [2], ``scale`` (> 0),
    ``joints`` [16, 2], ``joints_vis`` [16] and ``headbox`` [4] or ``None``, coordinates as in the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MPII annotation file not found: {path}")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise _fail(path, "file", f"not valid JSON ({error})") from None
    if not isinstance(records, list) or not records:
        raise _fail(path, "file", "expected a non-empty JSON list of person records")
    out = []
    k = len(JOINTS)
    for i, record in enumerate(records):
        where = f"record {i}"
        if not isinstance(record, dict):
            raise _fail(path, where, "expected an object")
        missing = [key for key in ("image", "center", "scale", "joints", "joints_vis") if key not in record]
        if missing:
            raise _fail(path, where, f"missing keys {missing}")
        image = record["image"]
        if not isinstance(image, str) or not image or Path(image).name != image or image in (".", ".."):
            raise _fail(path, where, f"'image' must be a file name in images/, got {image!r:.80}")
        scale = record["scale"]
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < math.inf:
            raise _fail(path, where, f"'scale' must be a number > 0 and finite, got {scale!r:.80}")
        box = record.get("headbox")
        out.append(
            {
                "image": record["image"],
                "center": _number_list(path, f"{where} 'center'", record["center"], (2,)),
                "scale": float(scale),
                "joints": _number_list(path, f"{where} 'joints'", record["joints"], (k, 2)),
                "joints_vis": _number_list(path, f"{where} 'joints_vis'", record["joints_vis"], (k,)),
                "headbox": None if box is None else _number_list(path, f"{where} 'headbox'", box, (4,)),
            }
        )
    return out


def crop_box(center: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """HRNet's adjustment of an MPII record: 0-based centre moved down by 15·s, box side 1.25·s·200."""
    c = center - 1
    c = torch.stack([c[0], c[1] + 15 * scale])
    return c, 1.25 * scale * PIXEL_STD


def to_crop(points: torch.Tensor, center: torch.Tensor, box: float, size: int) -> torch.Tensor:
    """Pixel coordinates ``[..., 2]`` of the image → of the ``size × size`` crop of the square ``box``
    centred on ``center`` (pixel centres map to pixel centres)."""
    return (points - (center - box / 2) + 0.5) * (size / box) - 0.5


def affine_crop(image: torch.Tensor, center: torch.Tensor, box: float, size: int) -> torch.Tensor:
    """Bilinear ``size × size`` crop ``[C, size, size]`` of the square ``box`` around ``center`` from
    ``image [C, H, W]`` (float); outside the image is zero. Inverse of :func:`to_crop`."""
    _, h, w = image.shape
    u = torch.arange(size, dtype=torch.float64)
    src = (u + 0.5) * (box / size) - 0.5  # offsets from the box's corner
    xs = src + float(center[0]) - box / 2
    ys = src + float(center[1]) - box / 2
    gx = 2 * xs / max(w - 1, 1) - 1
    gy = 2 * ys / max(h - 1, 1) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1).unsqueeze(0).to(image.dtype)
    return F.grid_sample(image.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=True)[
        0
    ]


def load_image(path: Path) -> torch.Tensor:
    """An RGB image file as a float tensor ``[3, H, W]`` in 0…255."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
            width, height = img.size
    except FileNotFoundError:
        raise FileNotFoundError(f"MPII image not found: {path}") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not a readable image") from None
    return array.view(height, width, 3).permute(2, 0, 1).float()


def crop_records(
    records: list[dict[str, Any]], images: Path, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 crops ``[N, 3, size, size]``, joints ``[N, 16, 3]`` in crop pixels (invisible when not
    annotated visible or outside the crop) and head boxes ``[N, 4]`` in crop pixels (``nan`` if absent)."""
    xs, joints, boxes = [], [], []
    cache: tuple[str, torch.Tensor] | None = None
    for record in records:
        if cache is None or cache[0] != record["image"]:
            cache = (record["image"], load_image(images / record["image"]))
        center, box = crop_box(record["center"], record["scale"])
        xs.append(affine_crop(cache[1], center, box, size).round().clamp(0, 255).to(torch.uint8))
        xy = to_crop(record["joints"] - 1, center, box, size)
        inside = ((xy >= 0) & (xy <= size - 1)).all(-1)
        visible = (record["joints_vis"] > 0.5) & inside
        joints.append(torch.cat([xy, visible.unsqueeze(-1).to(xy)], -1))
        head = record["headbox"]
        boxes.append(
            torch.full((4,), math.nan, dtype=torch.float64)
            if head is None
            else to_crop((head - 1).view(2, 2), center, box, size).view(4)
        )
    return torch.stack(xs), torch.stack(joints).float(), torch.stack(boxes).float()


def annotation_path(root: Path, name: str) -> Path:
    for candidate in (root / "annot" / name, root / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"MPII: {name} not found in {root / 'annot'} or {root}; fetch the annotations with "
        f"`flatsam download mpii --data-dir {root}`"
    )


def load_mpii(data_dir: str | Path, size: int, subset: int | None = None) -> PoseData:
    """MPII's standard train/val split cropped to ``size × size`` (``subset``: the first N training
    records). Normalised with the ImageNet mean/std, as the SimCC/HRNet code."""
    root = Path(data_dir)
    images = root / "images"
    if not images.is_dir():
        raise FileNotFoundError(
            f"MPII: no images folder at {images}; fetch the images (12.9 GB) with "
            f"`flatsam download mpii --images --data-dir {root}`"
        )
    train = read_annotations(annotation_path(root, SPLITS[0]))
    val = read_annotations(annotation_path(root, SPLITS[1]))
    if subset is not None:
        train = train[:subset]
    train_x, train_y, _ = crop_records(train, images, size)
    test_x, test_y, test_boxes = crop_records(val, images, size)
    return PoseData(
        "mpii", train_x, train_y, test_x, test_y, test_boxes, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )
