"""A synthetic keypoint stand-in: procedurally rendered articulated stick figures with exact joints.

This is **not** MPII and not real data: it exists so that the pose task can be trained and compared on a
CPU without downloads. Each image (1 channel) shows one figure with the 16 MPII joints in MPII order:
a random body size, position, torso lean and limb angles; limbs drawn as anti-aliased thick segments
(the figure's left limbs brighter than its right ones, so left and right can be told apart), a disc for
the head, plus distractor segments and pixel noise. Joints outside the image are invisible. The head box
is the square around the head disc, so PCKh is defined as for MPII.
"""

from __future__ import annotations

import math

import torch

from flatsam.pose.data import JOINTS, PoseData
from flatsam.pose.data import J as _J

# (parent, child, length in body units, left/right/centre) in drawing order
BONES = (
    ("pelvis", "thorax", 1.0, "c"),
    ("thorax", "upper_neck", 0.25, "c"),
    ("upper_neck", "head_top", 0.45, "c"),
    ("thorax", "r_shoulder", 0.35, "r"),
    ("r_shoulder", "r_elbow", 0.55, "r"),
    ("r_elbow", "r_wrist", 0.5, "r"),
    ("thorax", "l_shoulder", 0.35, "l"),
    ("l_shoulder", "l_elbow", 0.55, "l"),
    ("l_elbow", "l_wrist", 0.5, "l"),
    ("pelvis", "r_hip", 0.2, "r"),
    ("r_hip", "r_knee", 0.75, "r"),
    ("r_knee", "r_ankle", 0.7, "r"),
    ("pelvis", "l_hip", 0.2, "l"),
    ("l_hip", "l_knee", 0.75, "l"),
    ("l_knee", "l_ankle", 0.7, "l"),
)
# angle of each bone relative to "up" (radians, image y grows downwards): centre and random spread
ANGLES = {
    "thorax": (0.0, 0.25),
    "upper_neck": (0.0, 0.2),
    "head_top": (0.0, 0.3),
    "r_shoulder": (-math.pi / 2, 0.15),
    "l_shoulder": (math.pi / 2, 0.15),
    "r_elbow": (-2.6, 1.2),
    "l_elbow": (2.6, 1.2),
    "r_wrist": (-2.4, 1.6),
    "l_wrist": (2.4, 1.6),
    "r_hip": (-math.pi / 2, 0.1),
    "l_hip": (math.pi / 2, 0.1),
    "r_knee": (math.pi - 0.15, 0.5),
    "l_knee": (-math.pi + 0.15, 0.5),
    "r_ankle": (math.pi, 0.5),
    "l_ankle": (-math.pi, 0.5),
}
DTYPE = torch.float32
INTENSITY = {"c": 0.75, "l": 1.0, "r": 0.5}


def _pose(n: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Joints ``[n, 16, 2]`` in pixels and the body unit ``[n]``."""
    unit = size * (0.17 + 0.08 * torch.rand(n, generator=g, dtype=DTYPE))
    pelvis = size * (0.5 + 0.16 * (torch.rand(n, 2, generator=g, dtype=DTYPE) - 0.5) * 2)
    pelvis[:, 1] += 0.1 * size
    joints = torch.zeros(n, len(JOINTS), 2, dtype=DTYPE)
    joints[:, _J["pelvis"]] = pelvis
    lean = 0.3 * (torch.rand(n, generator=g, dtype=DTYPE) - 0.5)
    for parent, child, length, _ in BONES:
        centre, spread = ANGLES[child]
        angle = lean + centre + spread * (torch.rand(n, generator=g, dtype=DTYPE) - 0.5) * 2
        step = torch.stack([torch.sin(angle), -torch.cos(angle)], 1) * (length * unit).unsqueeze(1)
        joints[:, _J[child]] = joints[:, _J[parent]] + step
    return joints, unit


def _segments(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from every point ``[P, 2]`` to segments ``a``–``b`` ``[n, L, 2]`` → ``[n, L, P]``."""
    abx, aby = (b - a).unsqueeze(2).unbind(-1)
    apx = points[:, 0] - a[..., 0:1]
    apy = points[:, 1] - a[..., 1:2]
    t = ((apx * abx + apy * aby) / (abx * abx + aby * aby).clamp_min(1e-9)).clamp_(0, 1)
    return torch.hypot(apx - t * abx, apy - t * aby)


def _render(joints: torch.Tensor, unit: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    n = len(joints)
    coords = torch.arange(size, dtype=DTYPE)
    points = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), -1).view(-1, 2)
    a = torch.stack([joints[:, _J[p]] for p, _, _, _ in BONES if p != "upper_neck"], 1)
    b = torch.stack([joints[:, _J[c]] for p, c, _, _ in BONES if p != "upper_neck"], 1)
    level = torch.tensor([INTENSITY[s] for p, _, _, s in BONES if p != "upper_neck"], dtype=DTYPE)
    # distractors: 4 random dim segments per image
    da = size * torch.rand(n, 4, 2, generator=g, dtype=DTYPE)
    db = da + size * 0.35 * (torch.rand(n, 4, 2, generator=g, dtype=DTYPE) - 0.5)
    width = (0.06 * unit).view(n, 1, 1)
    limbs = (width + 0.5 - _segments(points, a, b)).clamp(0, 1) * level.view(1, -1, 1)
    clutter = (1.0 - _segments(points, da, db)).clamp(0, 1) * 0.4
    head = 0.5 * (joints[:, _J["upper_neck"]] + joints[:, _J["head_top"]])
    radius = (0.22 * unit).view(n, 1)
    disc = (radius + 0.5 - torch.linalg.vector_norm(points.view(1, -1, 2) - head.unsqueeze(1), dim=-1)).clamp(
        0, 1
    )
    image = torch.maximum(torch.cat([limbs, clutter], 1).amax(1), 0.75 * disc)
    image = image + 0.08 * torch.randn(image.shape, generator=g, dtype=DTYPE)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).view(n, 1, size, size)


def _head_boxes(joints: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    head = 0.5 * (joints[:, _J["upper_neck"]] + joints[:, _J["head_top"]])
    half = (0.22 * unit).unsqueeze(1)
    return torch.cat([head - half, head + half], 1)


def render(n: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` images ``[n, 1, size, size]`` (uint8), joints ``[n, 16, 3]`` and head boxes ``[n, 4]``."""
    images, joints, boxes = [], [], []
    for start in range(0, n, 200):  # bounded memory for the distance tensors
        count = min(200, n - start)
        xy, unit = _pose(count, size, g)
        images.append(_render(xy, unit, size, g))
        inside = ((xy >= 0) & (xy <= size - 1)).all(-1, keepdim=True).to(xy)
        joints.append(torch.cat([xy, inside], -1))
        boxes.append(_head_boxes(xy, unit))
    return torch.cat(images), torch.cat(joints).float(), torch.cat(boxes).float()


def stick_figures(num_train: int, num_test: int, size: int, seed: int = 0) -> PoseData:
    """The stand-in with ``num_train``/``num_test`` images of ``size × size`` pixels; the test set depends
    on ``seed`` and ``size`` only (not on ``num_train``)."""
    if size < 16:
        raise ValueError(f"pose input size must be >= 16 pixels, got {size}")
    if num_train < 1:
        raise ValueError(f"number of training images must be >= 1, got {num_train}")
    test_x, test_y, test_boxes = render(num_test, size, torch.Generator().manual_seed(seed * 2 + 1))
    train_x, train_y, _ = render(num_train, size, torch.Generator().manual_seed(seed * 2))
    mean = float(train_x.float().mean() / 255)
    std = float(train_x.float().std() / 255)
    return PoseData("stickfigures", train_x, train_y, test_x, test_y, test_boxes, (mean,), (std,))
