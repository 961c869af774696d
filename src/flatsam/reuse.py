"""Reuse rules: what a step without an ascent borrows from the last sharpness-aware step."""

from __future__ import annotations

import torch

from flatsam import gradlist
from flatsam.component import Component, Outcome, StepContext
from flatsam.schedule import check_choice, check_int, check_interval


class Reuse(Component):
    """Corrects the plain gradient of a step without ascent, in place, from what ``record`` stored."""

    def apply(self, ctx: StepContext, params: list[torch.nn.Parameter]) -> None:
        raise NotImplementedError


class NoReuse(Reuse):
    """Steps without an ascent use the plain gradient as it is."""

    skip_on_device = True

    def apply(self, ctx: StepContext, params: list[torch.nn.Parameter]) -> None:
        return None


class LookSAMReuse(Reuse):
    """LookSAM's reuse (Liu et al., CVPR 2022): on steps without ascent, g ← g + α·(‖g‖/‖g_v‖)·g_v.

    g_v = g_s − ‖g_s‖·cos(g, g_s)·g/‖g‖ is the part of the SAM gradient g_s orthogonal to the clean
    gradient g, stored at the last ascent step. Until the first ascent the plain gradient is
    used. α = 0.7 is the paper's default (also in the unofficial codes below).

    ``norm="global"`` (default) reads ‖·‖ and cos over the whole parameter vector, as the paper's
    equations write them and as the unofficial codes Leminhbinh0209/LookSAM and
    johnjaejunlee95/torch-unified-SAM-optimization implement them; ``norm="tensor"`` decomposes and scales
    each parameter tensor on its own, as rollovd/LookSAM and kozistr/pytorch_optimizer do. ``eps`` (1e-12,
    SAM's) guards ‖g_v‖ = 0; the projection divides by ‖g‖² (0 where g = 0). A missing gradient counts as
    zero in the decomposition; a parameter without gradient in a reuse step stays without one. g_s is the
    descent gradient as the base optimizer gets it (after ``max_grad_norm`` clipping, if set); with
    ``needs_clean_grads`` the engine all-reduces the clean pass under DDP, so g_v is the same on every rank.
    """

    needs_clean_grads = True
    state_fields = ("gv",)

    def __init__(self, alpha: float = 0.7, norm: str = "global", eps: float = 1e-12) -> None:
        self.alpha = check_interval("alpha", alpha, 0.0, float("inf"), closed="[)")
        self.norm = check_choice("norm", norm, ("global", "tensor"))
        self.eps = check_interval("eps", eps, 0.0, float("inf"), closed="[)")
        self.gv: list[torch.Tensor | None] | None = None

    @staticmethod
    def _orthogonal(g: gradlist.Grads, gs: gradlist.Grads) -> list[torch.Tensor | None]:
        """gs minus its projection on g: gs − (⟨g, gs⟩/‖g‖²)·g."""
        g_sq = gradlist.dot(g, g)
        coef = torch.where(g_sq > 0, gradlist.dot(g, gs) / g_sq.clamp_min(torch.finfo(g_sq.dtype).tiny), 0.0)
        return gradlist.difference(gs, [None if x is None else coef.to(x) * x for x in g])

    @torch.no_grad()
    def record(self, ctx: StepContext, outcome: Outcome) -> None:
        if not outcome.ascent or outcome.clean_grads is None:
            return
        g, gs = outcome.clean_grads, outcome.descent_grads
        if self.norm == "global":
            self.gv = self._orthogonal(g, gs)
        else:
            self.gv = [self._orthogonal([a], [b])[0] for a, b in zip(g, gs, strict=True)]

    @torch.no_grad()
    def apply(self, ctx: StepContext, params: list[torch.nn.Parameter]) -> None:
        if self.gv is None:
            return
        pairs = [
            (p.grad, v) for p, v in zip(params, self.gv, strict=True) if p.grad is not None and v is not None
        ]
        if self.norm == "global":
            grads = [p.grad for p in params]
            scale = self.alpha * gradlist.norm(grads) / (gradlist.norm(self.gv) + self.eps)
            scales = [scale] * len(pairs)
        else:
            scales = [self.alpha * g.norm() / (v.norm() + self.eps) for g, v in pairs]
        for (g, v), s in zip(pairs, scales, strict=True):
            g.add_(v * s.to(v))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, norm={self.norm!r}"


class PSFReuse(Reuse):
    """ARSAM's reuse (Deng & Pang 2025) as in the authors' vSAM code (github.com/ajiaaa/vSAM
    ``vsam/vsam.py``, ``opt_sgd``): the PSF = g_SAM − g of the last SAM step is mixed into the next
    plain steps as g + w·PSF with w = β, β², …, β^steps (β = 0.7, steps = 6: the train script's
    ``--beta`` and the code's ``pow(hp2, 6)``), then dropped until the next SAM step.

    vSAM tests ``w > β⁶`` on the running float product, which gives exactly six reuse steps for β = 0.7
    but one more for some β (0.6, 0.9) through rounding; flatsam counts the steps. Until the first SAM
    step the plain gradient is used. A missing gradient counts as zero in the PSF; g_SAM is the descent
    gradient as the base optimizer gets it (after ``max_grad_norm`` clipping, if set).
    """

    needs_clean_grads = True
    state_fields = ("psf", "weight", "reused")

    def __init__(self, beta: float = 0.7, steps: int = 6) -> None:
        self.beta = check_interval("beta", beta, 0.0, 1.0, closed="()")
        self.steps = check_int("steps", steps, 1)
        self.psf: list[torch.Tensor | None] | None = None
        self.weight = 1.0
        self.reused = 0

    @torch.no_grad()
    def record(self, ctx: StepContext, outcome: Outcome) -> None:
        if outcome.ascent and outcome.clean_grads is not None:
            self.psf = gradlist.difference(outcome.descent_grads, outcome.clean_grads)
            self.weight, self.reused = 1.0, 0

    @torch.no_grad()
    def apply(self, ctx: StepContext, params: list[torch.nn.Parameter]) -> None:
        if self.psf is None or self.reused >= self.steps:
            return
        self.weight *= self.beta
        self.reused += 1
        for p, d in zip(params, self.psf, strict=True):
            if p.grad is not None and d is not None:
                p.grad.add_(d, alpha=self.weight)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, steps={self.steps}"


#: Reuse rules by name, for composed methods on the command line (``--reuse NAME``).
REUSES: dict[str, type[Reuse]] = {"none": NoReuse, "looksam": LookSAMReuse, "psf": PSFReuse}
