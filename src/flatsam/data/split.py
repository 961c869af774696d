"""A validation split held out from the training set, as a user would hold one out."""

from __future__ import annotations

import torch

from flatsam.data.images import ImageData
from flatsam.data.noise import training_subset


def validation_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)``: sorted int64 positions that split ``range(len(labels))`` in two, seeded.

    ``round(fraction · N)`` rows (at least one) go to the validation part, class-stratified by
    ``labels`` (each class its proportional share, largest-remainder rounding, as
    :func:`~flatsam.data.noise.training_subset` draws a subset). Pass the labels the user sees: under
    label noise the noisy ones, so the validation split carries the same noise as the training rows.
    """
    n = len(labels)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    size = max(1, round(fraction * n))
    if size >= n:
        raise ValueError(f"val_fraction {fraction} of {n} training rows leaves none to train on")
    val = training_subset(n, size, seed, labels=labels)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val


def split_validation(data: ImageData, fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    """``(train, val)`` copies of ``data`` whose training rows are the two parts of
    :func:`validation_indices` (stratified by the training labels as given, noise included). The
    validation part's rows are ``val.train_x`` / ``val.train_y``; ``noisy_indices`` of each part are
    positions within it. The test set of both is ``data``'s."""
    train, val = validation_indices(data.train_y, fraction, seed)
    return data.select_train(train), data.select_train(val)
