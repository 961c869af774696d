"""Literal transcriptions for the drop-in APIs: davda54/sam's adaptive rule, written from its ``sam.py``
(github.com/davda54/sam), in the conventions of ``reference.py`` (float64 weight lists)."""

from __future__ import annotations

import torch

from reference import global_norm


def davda54_adaptive_epsilon(w: list[torch.Tensor], g: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """davda54/sam with ``adaptive=True``: e = ρ · w² ⊙ g / (‖ |w| ⊙ g ‖ + 1e-12), on every parameter
    (biases included), one norm over all of them."""
    n = global_norm([wi.abs() * gi for wi, gi in zip(w, g, strict=True)])
    return [rho * wi.pow(2) * gi / (n + 1e-12) for wi, gi in zip(w, g, strict=True)]
