"""Keypoint datasets held as tensors, the 16 MPII joints, and the dataset registry of the pose task."""

from __future__ import annotations

from dataclasses import dataclass

import torch

JOINTS = (
    "r_ankle",
    "r_knee",
    "r_hip",
    "l_hip",
    "l_knee",
    "l_ankle",
    "pelvis",
    "thorax",
    "upper_neck",
    "head_top",
    "r_wrist",
    "r_elbow",
    "r_shoulder",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
)
J = {name: i for i, name in enumerate(JOINTS)}


@dataclass
class PoseData:
    """Cropped images (uint8 ``N×C×H×W``) with joints ``[N, 16, 3]`` = (x, y, visibility) in input
    pixels, and test head boxes ``[N, 4]`` (x1, y1, x2, y2; ``nan`` rows where unknown), MPII joint order."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_head_boxes: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(
                    f"{self.name}: {split}_x must be uint8 N×C×H×W, got {x.dtype} {tuple(x.shape)}"
                )
            if y.shape != (len(x), len(JOINTS), 3):
                raise ValueError(
                    f"{self.name}: {split}_y must be [{len(x)}, {len(JOINTS)}, 3], got {tuple(y.shape)}"
                )
        if self.test_head_boxes.shape != (len(self.test_x), 4):
            raise ValueError(f"{self.name}: test_head_boxes must be [{len(self.test_x)}, 4]")

    @property
    def num_train(self) -> int:
        return len(self.train_x)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        return (self.train_x.shape[2], self.train_x.shape[3])


POSE_DATASETS = ("stickfigures", "mpii")


def load_pose_dataset(
    name: str, data_dir: str | None, size: int, subset: int | None = None, seed: int = 0
) -> PoseData:
    """``stickfigures`` (synthetic, rendered here; ``subset`` training images, default 4000) or ``mpii``
    (the HRNet/mmpose JSON annotations and images under ``data_dir``; ``subset`` keeps the first N)."""
    if name == "stickfigures":
        from flatsam.pose.figures import stick_figures

        return stick_figures(subset or 4000, 1000, size, seed)
    if name == "mpii":
        from flatsam.pose.mpii import load_mpii

        if data_dir is None:
            raise ValueError("dataset 'mpii' needs --data-dir (the folder holding annot/ and images/)")
        return load_mpii(data_dir, size, subset)
    raise ValueError(f"unknown pose dataset {name!r}; valid: {', '.join(POSE_DATASETS)}")
