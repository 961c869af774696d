"""Percentage of correct keypoints.

- PCKh@0.5 (Andriluka et al., CVPR 2014, MPII): a visible joint is correct when its error is at most
  0.5 × the head size, and MPII's evaluation code takes the head size as 0.6 × the diagonal of the
  annotated head box (``SC_BIAS = 0.6`` in its ``evalPCKh``; also in the HRNet/mmpose evaluators).
- PCK@0.2 here is **torso**-normalised: the error is compared with 0.2 × the distance between the left
  shoulder and the right hip (the LSP convention), on samples where both are visible.

Scores are the fraction of correct visible joints over all joints and samples that count.
"""

from __future__ import annotations

import torch

HEAD_SIZE_FACTOR = 0.6


def head_size(boxes: torch.Tensor) -> torch.Tensor:
    """MPII head size ``0.6 · ‖(x2 - x1, y2 - y1)‖`` of head boxes ``[N, 4]`` = (x1, y1, x2, y2)."""
    return HEAD_SIZE_FACTOR * torch.linalg.vector_norm(boxes[:, 2:] - boxes[:, :2], dim=1)


def pck_hits(
    pred: torch.Tensor, joints: torch.Tensor, norm: torch.Tensor, threshold: float
) -> tuple[int, int]:
    """``(correct, counted)`` visible joints with error ≤ ``threshold · norm``; ``pred [N, K, 2]``,
    ``joints [N, K, 3]`` (x, y, visibility), ``norm [N]`` (samples with a non-finite or non-positive
    norm do not count)."""
    counted = (joints[..., 2] > 0.5) & (torch.isfinite(norm) & (norm > 0)).unsqueeze(1)
    error = torch.linalg.vector_norm(pred - joints[..., :2], dim=-1)
    correct = (error <= threshold * norm.unsqueeze(1)) & counted
    return int(correct.sum()), int(counted.sum())


def torso_size(joints: torch.Tensor, left_shoulder: int, right_hip: int) -> torch.Tensor:
    """Distance between the left shoulder and the right hip, ``nan`` where either is not visible."""
    a, b = joints[:, left_shoulder], joints[:, right_hip]
    size = torch.linalg.vector_norm(a[:, :2] - b[:, :2], dim=1)
    both = (a[:, 2] > 0.5) & (b[:, 2] > 0.5)
    return torch.where(both, size, torch.full_like(size, float("nan")))
