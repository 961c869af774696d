"""SimCC (Li et al., ECCV 2022, arXiv 2107.03332): pose estimation as two 1-D classifications per joint.

Each joint's x (and y) coordinate is classified over ``splitting_factor × width`` (``× height``) bins.
Training targets are Gaussians around the scaled coordinate (SimCC's "SA" label smoothing), as in the
official code (github.com/leeyegy/SimCC, ``generate_sa_simdr``): ``exp(-(i - k·x)² / 2σ²) / (σ√(2π))``
over bins ``i = 0 … k·W - 1``, and all-zero for an invisible joint. The loss is the official
``KLDiscretLoss``: KL(target ‖ softmax(logits)) averaged over the bins, times the joint's visibility,
x and y added, averaged over the joints — here kept **per sample** (the engine reduces over the batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def bins(size: int, split: float) -> int:
    """Number of bins along an axis of ``size`` pixels."""
    return int(size * split)


def encode(
    coords: torch.Tensor, visible: torch.Tensor, size: int, split: float, sigma: float
) -> torch.Tensor:
    """Gaussian SimCC targets ``[..., bins]`` for pixel coordinates ``coords [...]`` along one axis;
    rows with ``visible == 0`` are all zero. ``sigma`` is in bins."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    grid = torch.arange(bins(size, split), dtype=coords.dtype, device=coords.device)
    mu = (coords * split).unsqueeze(-1)
    target = torch.exp(-((grid - mu) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    return target * (visible > 0.5).to(target).unsqueeze(-1)


def decode(logits: torch.Tensor, split: float) -> torch.Tensor:
    """Pixel coordinate of each row ``[..., bins]``: the arg-max bin divided by the splitting factor."""
    return logits.argmax(-1).to(logits.dtype if logits.is_floating_point() else torch.float32) / split


def simcc_loss(
    logits_x: torch.Tensor,
    logits_y: torch.Tensor,
    joints: torch.Tensor,
    size: tuple[int, int],
    split: float,
    sigma: float,
) -> torch.Tensor:
    """Per-sample SimCC loss ``[B]`` for logits ``[B, K, k·W]``, ``[B, K, k·H]`` and ``joints [B, K, 3]``
    (x, y in input pixels, visibility)."""
    visible = joints[..., 2]
    total = torch.zeros(joints.shape[0], dtype=logits_x.dtype, device=logits_x.device)
    for logits, axis, length in ((logits_x, 0, size[1]), (logits_y, 1, size[0])):
        target = encode(joints[..., axis].to(logits), visible, length, split, sigma)
        kl = F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="none").mean(-1)  # [B, K]
        total = total + (kl * visible.to(kl)).mean(-1)
    return total


class SimCCHead(nn.Module):
    """Backbone feature map ``[B, C, h, w]`` → 1×1 conv to one channel per joint → flatten each joint's
    ``h·w`` map → linear layers to the x bins and the y bins (the official SimCC head for convolutional
    backbones)."""

    def __init__(
        self,
        channels: int,
        feature_size: tuple[int, int],
        num_joints: int,
        size: tuple[int, int],
        split: float,
    ) -> None:
        super().__init__()
        features = feature_size[0] * feature_size[1]
        self.joints = nn.Conv2d(channels, num_joints, 1)
        self.x = nn.Linear(features, bins(size[1], split))
        self.y = nn.Linear(features, bins(size[0], split))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = torch.flatten(self.joints(features), 2)
        return self.x(maps), self.y(maps)


class SimCCModel(nn.Module):
    """A backbone (image → feature map) with a :class:`SimCCHead`; returns ``(logits_x, logits_y)``."""

    output_layers = ("head.x", "head.y")  # both stay at 8 bits under flatsam.quant.quantize_model

    def __init__(self, backbone: nn.Module, head: SimCCHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(x))


def simcc_model(
    backbone: nn.Module, in_channels: int, num_joints: int, size: tuple[int, int], split: float = 2.0
) -> SimCCModel:
    """SimCC on ``backbone``, a registered classifier of :mod:`flatsam.models` whose ``head`` (global
    pooling and linear layer) is dropped so that its last feature map feeds the SimCC head."""
    if split <= 0:
        raise ValueError(f"splitting factor must be > 0, got {split}")
    if not isinstance(getattr(backbone, "head", None), nn.Module):
        raise ValueError(
            f"{type(backbone).__name__} has no 'head' module to replace; use a ResNet, WRN, PyramidNet or "
            "MobileNet backbone"
        )
    backbone.head = nn.Identity()
    with torch.no_grad():
        shape = backbone.eval()(torch.zeros(1, in_channels, *size)).shape
    backbone.train()
    if len(shape) != 4:
        raise ValueError(f"the backbone must return a feature map [B, C, h, w], got shape {tuple(shape)}")
    return SimCCModel(backbone, SimCCHead(shape[1], (shape[2], shape[3]), num_joints, size, split))
