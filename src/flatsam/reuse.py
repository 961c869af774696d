"""Reuse rules: what a step without an ascent borrows from the last sharpness-aware step."""

from __future__ import annotations

from typing import Any

import torch

from flatsam import gradlist
from flatsam.component import Component, Outcome, StepContext
from flatsam.schedule import check_choice, check_int, check_interval
from flatsam.skipping import unless_skipped, unless_skipped_all


def _device(grads: gradlist.Grads) -> torch.device:
    """Where a gradient list lives (its first tensor's device; the CPU when it has none)."""
    present = gradlist.present(grads)
    return present[0].device if present else torch.device("cpu")


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

    Skipping on the device (``skip_on_device``): a skipped ascent keeps g_v and ``seen`` (a 0-dim bool
    tensor: has a kept ascent stored g_v?) by ``torch.where``; a skipped first ascent leaves g_v as zeros
    with ``seen`` false, and the reuse steps then add exactly −0 (the plain gradient, bit for bit).
    """

    needs_clean_grads = True
    state_fields = ("gv", "seen")
    skip_on_device = True

    def __init__(self, alpha: float = 0.7, norm: str = "global", eps: float = 1e-12) -> None:
        self.alpha = check_interval("alpha", alpha, 0.0, float("inf"), closed="[)")
        self.norm = check_choice("norm", norm, ("global", "tensor"))
        self.eps = check_interval("eps", eps, 0.0, float("inf"), closed="[)")
        self.gv: list[torch.Tensor | None] | None = None
        self.seen = torch.zeros((), dtype=torch.bool)

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
            gv = self._orthogonal(g, gs)
        else:
            gv = [self._orthogonal([a], [b])[0] for a, b in zip(g, gs, strict=True)]
        found_inf = outcome.found_inf
        self.gv = unless_skipped_all(found_inf, self.gv, gv)
        self.seen = unless_skipped(found_inf, self.seen, torch.ones((), dtype=torch.bool, device=_device(gv)))

    @torch.no_grad()
    def apply(self, ctx: StepContext, params: list[torch.nn.Parameter]) -> None:
        if self.gv is None:
            return
        pairs = [
            (p.grad, v) for p, v in zip(params, self.gv, strict=True) if p.grad is not None and v is not None
        ]
        if self.norm == "global":
            grads = [p.grad for p in params]
            scale = self._gated(self.alpha * gradlist.norm(grads) / (gradlist.norm(self.gv) + self.eps))
            scales = [scale] * len(pairs)
        else:
            scales = [self._gated(self.alpha * g.norm() / (v.norm() + self.eps)) for g, v in pairs]
        for (g, v), s in zip(pairs, scales, strict=True):
            g.add_(v * s.to(v))

    def _gated(self, scale: torch.Tensor) -> torch.Tensor:
        """``scale``, or −0 before a kept ascent: g + (+0)·(−0) = g exactly, even where g = −0."""
        return torch.where(self.seen.to(scale.device), scale, -0.0)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Also loads a checkpoint from before ``seen`` existed (g_v stored means a kept ascent)."""
        if "seen" not in state and "gv" in state:
            state = {**state, "seen": torch.tensor(state["gv"] is not None)}
        super().load_state_dict(state)
        self.seen = self.seen.to(_device(self.gv or []))

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

    The weight w (float64) and the count of reuse steps are 0-dim tensors beside the PSF, so neither the
    test ``reused < steps`` nor the masking of a skipped step reads anything on the host
    (``skip_on_device``): a skipped SAM step keeps PSF, w and the count; a skipped reuse step takes back
    its advance of w and the count (``apply`` runs before the verdict is known; ``record`` undoes it).
    A spent PSF, or none yet, leaves the gradient exactly as it is; the count starts spent (``steps``),
    so a skipped first SAM step (the PSF then zeros) mixes nothing either.
    """

    needs_clean_grads = True
    state_fields = ("psf", "weight", "reused")
    skip_on_device = True

    def __init__(self, beta: float = 0.7, steps: int = 6) -> None:
        self.beta = check_interval("beta", beta, 0.0, 1.0, closed="()")
        self.steps = check_int("steps", steps, 1)
        self.psf: list[torch.Tensor | None] | None = None
        self.weight = torch.ones((), dtype=torch.float64)
        self.reused = torch.tensor(steps, dtype=torch.int64)  # nothing to mix until a SAM step
        self._undo: tuple[torch.Tensor, torch.Tensor] | None = None  # w and count before this step's apply

    @torch.no_grad()
    def record(self, ctx: StepContext, outcome: Outcome) -> None:
        found_inf, undo, self._undo = outcome.found_inf, self._undo, None
        if outcome.ascent and outcome.clean_grads is not None:
            psf = gradlist.difference(outcome.descent_grads, outcome.clean_grads)
            fresh_weight = torch.ones((), dtype=torch.float64, device=_device(psf))
            spent = self.reused if self.psf is not None else torch.tensor(self.steps)
            self.psf = unless_skipped_all(found_inf, self.psf, psf)
            self.weight = unless_skipped(found_inf, self.weight, fresh_weight)
            self.reused = unless_skipped(found_inf, spent, torch.zeros_like(fresh_weight, dtype=torch.int64))
        elif undo is not None and found_inf is not None:
            self.weight = unless_skipped(found_inf, undo[0], self.weight)
            self.reused = unless_skipped(found_inf, undo[1], self.reused)

    @torch.no_grad()
    def apply(self, ctx: StepContext, params: list[torch.nn.Parameter]) -> None:
        if self.psf is None:
            return
        active = self.reused < self.steps
        self._undo = (self.weight, self.reused)
        self.weight = torch.where(active, self.weight * self.beta, self.weight)
        self.reused = self.reused + active
        for p, d in zip(params, self.psf, strict=True):
            if p.grad is not None and d is not None:
                # g + w·PSF while the PSF lasts; the gradient's own bits once it is spent
                torch.where(active, torch.addcmul(p.grad, d, self.weight.to(d)), p.grad, out=p.grad)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Also loads a checkpoint that held w and the count as Python numbers."""
        super().load_state_dict(state)
        device = _device(self.psf or [])
        self.weight = torch.as_tensor(self.weight, dtype=torch.float64).to(device)
        self.reused = torch.as_tensor(self.reused, dtype=torch.int64).to(device)
        self._undo = None

    def extra_repr(self) -> str:
        return f"beta={self.beta}, steps={self.steps}"


#: Reuse rules by name, for composed methods on the command line (``--reuse NAME``).
REUSES: dict[str, type[Reuse]] = {"none": NoReuse, "looksam": LookSAMReuse, "psf": PSFReuse}
