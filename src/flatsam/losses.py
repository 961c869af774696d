"""Per-sample cross-entropy with label smoothing, in the two conventions found in SAM training code."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

SmoothingForm = Literal["torch", "authors"]
SMOOTHING_FORMS: tuple[str, ...] = ("torch", "authors")


def check_smoothing(smoothing: float, form: str) -> None:
    if not (0.0 <= smoothing < 1.0):
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    if form not in SMOOTHING_FORMS:
        raise ValueError(f"smoothing form must be one of {SMOOTHING_FORMS}, got {form!r}")


def smoothed_targets(
    target: torch.Tensor,
    classes: int,
    smoothing: float,
    form: SmoothingForm = "torch",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The target distribution q of each row (shape [rows, classes]).

    ``"torch"`` (``F.cross_entropy(label_smoothing=ε)``): q = (1 − ε)·onehot + ε/K, so the true class
    gets 1 − ε + ε/K and every other class ε/K. ``"authors"`` (the ``smooth_crossentropy`` of the
    AUSAM and vSAM code, github.com/ajiaaa/AUSAM ``model/smooth_cross_entropy.py``, and of
    davda54/sam): the true class gets 1 − ε and each of the K − 1 others ε/(K − 1).
    """
    check_smoothing(smoothing, form)
    other = smoothing / classes if form == "torch" else smoothing / (classes - 1)
    true = 1.0 - smoothing + (other if form == "torch" else 0.0)
    q = torch.full((len(target), classes), other, dtype=dtype, device=target.device)
    return q.scatter(1, target.unsqueeze(1), true)


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0, form: SmoothingForm = "torch"
) -> torch.Tensor:
    """Per-sample −Σ_k q_k log softmax(logits)_k with q from ``smoothed_targets`` (ε = 0: plain
    cross-entropy in either form).

    The authors' code computes ``kl_div(log_softmax, q).sum(-1)``, which is this value minus the entropy
    of q, a constant: the gradients, and the loss changes AUSAM samples by, are the same; reported loss
    values here stay on the cross-entropy scale of the torch form.
    """
    check_smoothing(smoothing, form)
    if form == "torch" or smoothing == 0.0:
        return F.cross_entropy(logits, target, reduction="none", label_smoothing=smoothing)
    q = smoothed_targets(target, logits.shape[1], smoothing, form, logits.dtype)
    return -(q * F.log_softmax(logits, dim=1)).sum(dim=1)
