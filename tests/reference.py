"""Slow, literal transcriptions of the update rules, written independently of flatsam's engine.

Each works on an explicit list of float64 weight tensors of a tiny MLP and re-derives every gradient
with ``torch.autograd.grad``; the base optimizer is SGD with momentum and coupled weight decay, also
written out by hand (torch.optim.SGD semantics: buf = d on the first step, then μ·buf + d).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def tiny_mlp(seed: int = 0, inputs: int = 5, hidden: int = 7, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double()


def bn_mlp(seed: int = 0, inputs: int = 5, hidden: int = 7, classes: int = 3) -> nn.Module:
    """The tiny MLP with a BatchNorm layer (train mode, running statistics tracked)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.BatchNorm1d(hidden), nn.Tanh(), nn.Linear(hidden, classes)
    ).double()


def toy_data(
    n: int = 24, inputs: int = 5, classes: int = 3, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, inputs, generator=g, dtype=torch.float64), torch.randint(
        0, classes, (n,), generator=g
    )


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, eps: float, form: str) -> torch.Tensor:
    """−Σ_k q_k log p_k per row, q written out class by class: ``torch`` gives ε/K to every class on
    top of (1 − ε) on the true one; ``authors`` (AUSAM's smooth_crossentropy) 1 − ε to the true class
    and ε/(K − 1) to each other."""
    classes = logits.shape[1]

    def q(label: int, k: int) -> float:
        if form == "torch":
            return (1 - eps if k == label else 0.0) + eps / classes
        return 1 - eps if k == label else eps / (classes - 1)

    targets = torch.tensor([[q(int(label), k) for k in range(classes)] for label in y], dtype=logits.dtype)
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1)


class Problem:
    """Per-sample (label-smoothed) cross-entropy of ``model`` on (X, Y), evaluated at explicit weights.

    A model with BatchNorm runs in train mode (batch statistics in every forward). Its running
    statistics live in ``buffers``; only the first forward after ``new_step()`` updates them (the
    engine's documented policy: the first forward of a step), later forwards work on a throw-away copy;
    with ``every_forward`` every forward updates them (ESAM's official code).
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        smoothing: float = 0.0,
        form: str = "torch",
        every_forward: bool = False,
    ) -> None:
        self.model, self.x, self.y, self.smoothing, self.form = model, x, y, smoothing, form
        self.every_forward = every_forward
        self.names = [n for n, _ in model.named_parameters()]
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.fresh = True

    def new_step(self) -> None:
        self.fresh = True

    def weights(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.parameters()]

    def losses_and_grads(
        self, w: list[torch.Tensor], idx: torch.Tensor, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaves = [t.detach().clone().requires_grad_() for t in w]
        keep = self.fresh or self.every_forward
        buffers = self.buffers if keep else {n: b.clone() for n, b in self.buffers.items()}
        self.fresh = False
        state = {**dict(zip(self.names, leaves, strict=True)), **buffers}
        out = functional_call(self.model, state, (self.x[idx],))
        if self.smoothing:
            per_sample = smoothed_cross_entropy(out, self.y[idx], self.smoothing, self.form)
        else:
            per_sample = F.cross_entropy(out, self.y[idx], reduction="none")
        total = per_sample.mean() if weights is None else (per_sample * weights).mean()
        grads = torch.autograd.grad(total, leaves)
        return per_sample.detach(), list(grads)


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t * t).sum() for t in tensors))


class MomentumSGD:
    """torch.optim.SGD(lr, momentum, weight_decay), no dampening, no Nesterov, written out."""

    def __init__(self, lr: float, momentum: float, weight_decay: float) -> None:
        self.lr, self.mu, self.wd = lr, momentum, weight_decay
        self.buf: list[torch.Tensor] | None = None

    def step(self, w: list[torch.Tensor], g: list[torch.Tensor]) -> list[torch.Tensor]:
        d = [gi + self.wd * wi for gi, wi in zip(g, w, strict=True)]
        if self.buf is None:
            self.buf = [di.clone() for di in d]
        else:
            self.buf = [self.mu * b + di for b, di in zip(self.buf, d, strict=True)]
        return [wi - self.lr * b for wi, b in zip(w, self.buf, strict=True)]


def sam_epsilon(g: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    n = global_norm(g)
    return [rho * gi / (n + 1e-12) for gi in g]


def asam_epsilon(
    w: list[torch.Tensor], g: list[torch.Tensor], rho: float, eta: float, scaled: list[bool]
) -> list[torch.Tensor]:
    t = [wi.abs() + eta if s else torch.ones_like(wi) for wi, s in zip(w, scaled, strict=True)]
    tg = [ti * gi for ti, gi in zip(t, g, strict=True)]
    n = global_norm(tg)
    return [rho * ti * ti * gi / (n + 1e-16) for ti, gi in zip(t, g, strict=True)]


def sharpness_aware_step(
    problem: Problem, opt: MomentumSGD, w: list[torch.Tensor], idx: torch.Tensor, epsilon
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Clean gradient on idx, perturb by epsilon(w, g), gradient at w+ε on idx, base step at w."""
    problem.new_step()
    l0, g = problem.losses_and_grads(w, idx)
    e = epsilon(w, g)
    l1, g_sam = problem.losses_and_grads([wi + ei for wi, ei in zip(w, e, strict=True)], idx)
    return opt.step(w, g_sam), l0, l1


class ReferenceAUSAM:
    """AUSAM as in the authors' code (ajiaaa/AUSAM train.py + sam/ausam.py), in plain loops.

    History: sum S and count C per dataset index, float32, initialised to 1. Epochs < warmup: every
    row, S ← DLP. Later: p ∝ min-max(ADLP of the batch) scaled into [s_min, s_hi(epoch)], draw ⌊keep·B⌋
    rows by torch.multinomial without replacement, both passes on them, S += DLP, C += 1.
    """

    def __init__(
        self,
        problem: Problem,
        opt: MomentumSGD,
        n: int,
        rho: float,
        keep: float,
        s_min: float,
        s_max: float,
        ramp: int,
        warmup: int,
        seed: int,
    ) -> None:
        self.problem, self.opt = problem, opt
        self.rho, self.keep, self.s_min, self.s_max, self.ramp, self.warmup = (
            rho,
            keep,
            s_min,
            s_max,
            ramp,
            warmup,
        )
        self.S = torch.ones(n)
        self.C = torch.ones(n)
        self.gen = torch.Generator().manual_seed(seed)

    def s_hi(self, epoch: int) -> float:
        # train.py: fmax_ = fmax - ((start + trans - epoch) / trans) * (fmax - fmin) + 0.000000001 while
        # epoch <= start + trans (start = 0), then the last value is kept
        epoch = min(epoch, self.ramp)
        return self.s_max - ((self.ramp - epoch) / self.ramp) * (self.s_max - self.s_min) + 0.000000001

    def weights(self, epoch: int, idx: torch.Tensor) -> torch.Tensor:
        """The batch's ADLPs min-max scaled onto [s_min, s_hi(epoch)] (all s_min when they are equal)."""
        a = self.S[idx] / self.C[idx]
        lo, hi = a.min(), a.max()
        if hi > lo:
            return (a - lo) / (hi - lo) * (self.s_hi(epoch) - self.s_min) + self.s_min
        return torch.full_like(a, self.s_min)

    def rows(self, epoch: int, idx: torch.Tensor) -> torch.Tensor:
        if epoch < self.warmup:
            return torch.arange(len(idx))
        s = self.weights(epoch, idx)
        p = s / s.sum()
        return torch.multinomial(
            p, max(1, math.floor(self.keep * len(idx))), replacement=False, generator=self.gen
        )

    def step(self, w: list[torch.Tensor], epoch: int, idx: torch.Tensor) -> list[torch.Tensor]:
        rows = self.rows(epoch, idx)
        w, l0, l1 = sharpness_aware_step(
            self.problem, self.opt, w, idx[rows], lambda _w, g: sam_epsilon(g, self.rho)
        )
        self.record(epoch, idx[rows], (l1 - l0).abs().float())
        return w

    def record(self, epoch: int, chosen: torch.Tensor, dlp: torch.Tensor) -> None:
        """The DLP of the dataset indices ``chosen``: overwritten during the warm-up, then summed."""
        if epoch < self.warmup:
            self.S[chosen] = dlp
        else:
            self.S[chosen] += dlp
            self.C[chosen] += 1
