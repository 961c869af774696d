"""Slow, literal transcriptions of the schedule/reuse methods, written independently of flatsam's engine.

Same conventions as ``reference.py`` (float64 weight lists, gradients from ``torch.autograd.grad``,
hand-written momentum SGD); each keeps its own counters, statistics, windows and generator. Random draws
are ``torch.rand((), generator=g, dtype=float64)`` on a generator seeded like flatsam's component, which
is the one point where a transcription must agree with flatsam's implementation rather than the paper.
"""

from __future__ import annotations

import math

import torch

from reference import MomentumSGD, Problem, ReferenceAUSAM, global_norm, sam_epsilon

Weights = list[torch.Tensor]


def uniform(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen, dtype=torch.float64))


def plus(a: Weights, b: Weights, scale: float = 1.0) -> Weights:
    return [x + scale * y for x, y in zip(a, b, strict=True)]


class _Base:
    """Plumbing of the schedule transcriptions; the per-sample losses of the last clean and perturbed
    passes are kept (``loss_before``, ``loss_after``) for a sampler that learns from them."""

    def __init__(self, problem: Problem, opt: MomentumSGD, rho: float) -> None:
        self.problem, self.opt, self.rho = problem, opt, rho
        self.ascents: list[bool] = []
        self.loss_before: torch.Tensor | None = None
        self.loss_after: torch.Tensor | None = None

    def clean(self, w: Weights, idx: torch.Tensor) -> Weights:
        self.loss_before, g = self.problem.losses_and_grads(w, idx)
        return g

    def sam_gradient(self, w: Weights, g: Weights, idx: torch.Tensor) -> Weights:
        """Gradient at w + ρ g/‖g‖."""
        self.loss_after, gs = self.problem.losses_and_grads(plus(w, sam_epsilon(g, self.rho)), idx)
        return gs


def looksam_gv(g: Weights, gs: Weights, per_tensor: bool) -> Weights:
    """g_v = g_s − ‖g_s‖·cos(g, g_s)·g/‖g‖, over the whole vector or each tensor on its own."""
    if per_tensor:
        return [looksam_gv([a], [b], False)[0] for a, b in zip(g, gs, strict=True)]
    ng, ns = global_norm(g), global_norm(gs)
    cos = sum((a * b).sum() for a, b in zip(g, gs, strict=True)) / (ng * ns)
    return [b - ns * cos * a / ng for a, b in zip(g, gs, strict=True)]


def looksam_mix(g: Weights, gv: Weights, alpha: float, per_tensor: bool, eps: float = 1e-12) -> Weights:
    """g + α·(‖g‖/‖g_v‖)·g_v."""
    if per_tensor:
        return [a + alpha * a.norm() / (v.norm() + eps) * v for a, v in zip(g, gv, strict=True)]
    ratio = global_norm(g) / (global_norm(gv) + eps)
    return [a + alpha * ratio * v for a, v in zip(g, gv, strict=True)]


class ReferenceLookSAM(_Base):
    """LookSAM (Liu et al., CVPR 2022): at t mod k = 0 a SAM step that stores g_v; otherwise
    g + α(‖g‖/‖g_v‖)g_v (plain g before the first SAM step)."""

    def __init__(
        self, problem: Problem, opt: MomentumSGD, rho: float, k: int, alpha: float, per_tensor: bool = False
    ) -> None:
        super().__init__(problem, opt, rho)
        self.k, self.alpha, self.per_tensor = k, alpha, per_tensor
        self.t = 0
        self.gv: Weights | None = None

    def step(self, w: Weights, idx: torch.Tensor) -> Weights:
        self.problem.new_step()
        g = self.clean(w, idx)
        ascend = self.t % self.k == 0
        if ascend:
            gs = self.sam_gradient(w, g, idx)
            self.gv = looksam_gv(g, gs, self.per_tensor)
            update = gs
        else:
            update = g if self.gv is None else looksam_mix(g, self.gv, self.alpha, self.per_tensor)
        self.t += 1
        self.ascents.append(ascend)
        return self.opt.step(w, update)


class ReferenceAESAM(_Base):
    """AE-SAM (Jiang et al., ICLR 2023): μ_t = δμ + (1−δ)‖g‖², σ²_t = δσ² + (1−δ)(‖g‖² − μ)², with μ the new
    (``previous_mean=False``) or the old mean, μ_0 = σ_0² = 0 or (``first=True``) μ_1 = ‖g_1‖², σ_1² = 0;
    c_t = (t/T)λ1 + (1 − t/T)λ2; SAM iff ‖g‖² ≥ μ_t + c_t σ_t. With ``alpha`` the non-SAM steps use
    LookSAM's g_v (AE-LookSAM)."""

    def __init__(
        self,
        problem: Problem,
        opt: MomentumSGD,
        rho: float,
        total_steps: int,
        delta: float = 0.9,
        lambda1: float = -1.0,
        lambda2: float = 1.0,
        first: bool = False,
        previous_mean: bool = False,
        alpha: float | None = None,
    ) -> None:
        super().__init__(problem, opt, rho)
        self.T, self.delta, self.l1, self.l2 = total_steps, delta, lambda1, lambda2
        self.first, self.previous_mean, self.alpha = first, previous_mean, alpha
        self.mu = 0.0
        self.var = 0.0
        self.t = 0
        self.gv: Weights | None = None

    def step(self, w: Weights, idx: torch.Tensor) -> Weights:
        self.problem.new_step()
        self.t += 1
        g = self.clean(w, idx)
        sq = float(sum((a * a).sum() for a in g))
        if self.first and self.t == 1:
            self.mu, self.var = sq, 0.0
        else:
            old = self.mu
            self.mu = self.delta * self.mu + (1 - self.delta) * sq
            centre = old if self.previous_mean else self.mu
            self.var = self.delta * self.var + (1 - self.delta) * (sq - centre) ** 2
        frac = min(self.t, self.T) / self.T
        c = frac * self.l1 + (1 - frac) * self.l2
        ascend = sq >= self.mu + c * math.sqrt(self.var)
        if ascend:
            update = self.sam_gradient(w, g, idx)
            if self.alpha is not None:
                self.gv = looksam_gv(g, update, False)
        elif self.alpha is not None and self.gv is not None:
            update = looksam_mix(g, self.gv, self.alpha, False)
        else:
            update = g
        self.ascents.append(ascend)
        return self.opt.step(w, update)


class _PSFReuse(_Base):
    """vSAM's ``opt_sam`` / ``opt_sgd`` (ajiaaa/vSAM vsam/vsam.py): a SAM step stores PSF = g_SAM − g and
    resets the weight to 1; the next plain steps add weight·PSF, the weight multiplied by β first, while it
    is above β^reuse_steps."""

    def __init__(self, problem: Problem, opt: MomentumSGD, rho: float, beta: float, reuse_steps: int) -> None:
        super().__init__(problem, opt, rho)
        self.beta, self.reuse_steps = beta, reuse_steps
        self.hp2_ = beta
        self.so_g: Weights | None = None

    def sam_step(self, w: Weights, idx: torch.Tensor) -> tuple[Weights, Weights, Weights]:
        """The SAM step; returns the new weights, g and the PSF."""
        self.hp2_ = 1.0
        g = self.clean(w, idx)
        gs = self.sam_gradient(w, g, idx)
        self.so_g = [b - a for a, b in zip(g, gs, strict=True)]
        self.ascents.append(True)
        return self.opt.step(w, gs), g, self.so_g

    def opt_sgd(self, w: Weights, idx: torch.Tensor) -> Weights:
        g = self.clean(w, idx)
        if self.so_g is not None and self.hp2_ > pow(self.beta, self.reuse_steps):
            self.hp2_ = self.hp2_ * self.beta
            g = plus(g, self.so_g, self.hp2_)
        self.ascents.append(False)
        return self.opt.step(w, g)


class ReferenceEveryKPSF(_PSFReuse):
    """A SAM step at t mod k = 0 (t from 0), PSF reuse on the others: ``EveryK`` composed with
    ``PSFReuse``."""

    def __init__(
        self, problem: Problem, opt: MomentumSGD, rho: float, k: int, beta: float, reuse_steps: int
    ) -> None:
        super().__init__(problem, opt, rho, beta, reuse_steps)
        self.k, self.t = k, 0

    def step(self, w: Weights, epoch: int, idx: torch.Tensor) -> Weights:
        self.problem.new_step()
        w = self.sam_step(w, idx)[0] if self.t % self.k == 0 else self.opt_sgd(w, idx)
        self.t += 1
        return w


def clipped_mean_change(x: list[float]) -> tuple[float, int]:
    """vSAM's clip(mean((x[i+1] − x[i]) / x[i]), −1, 1), and how many terms the zero guard left out.

    vSAM divides by every x[i]. Its histories start as zeros, so until a window's worth of SAM steps has
    been recorded (flatsam's default suite: a 48-step warm-up, a 50-step window) that division gives
    +inf (0 → a positive value: its clip then says +1) or NaN (0 → 0: a NaN quota, which its
    ``int(base_sr)`` refuses). vSAM never gets there (its warm-up of 3 CIFAR epochs is far longer than
    the window), so it has no rule to follow; flatsam's documented rule (``relative_trend``) is
    transcribed instead: terms whose denominator is 0 are left out, and the mean of no term is 0.
    """
    changes = [(x[i + 1] - x[i]) / x[i] for i in range(len(x) - 1) if x[i] != 0]
    mean = sum(changes) / len(changes) if changes else 0.0
    return min(1.0, max(-1.0, mean)), len(x) - 1 - len(changes)


class ReferenceARSAM(_PSFReuse):
    """ARSAM as its precursor, the authors' vSAM code (ajiaaa/vSAM vsam/vsam.py ``step``, ``opt_sam``,
    ``opt_sgd``, ``get_var``), line by line in plain Python lists and floats. ``skipped`` records, per
    window update, how many zero-denominator terms the guard of ``clipped_mean_change`` left out."""

    def __init__(
        self,
        problem: Problem,
        opt: MomentumSGD,
        rho: float,
        K: int,
        blocks: int,
        max_p: float,
        gains: tuple[float, float],
        last_layer: int,
        beta: float,
        reuse_steps: int,
        warmup: int,
        seed: int,
    ) -> None:
        super().__init__(problem, opt, rho, beta, reuse_steps)
        self.K, self.blocks, self.gains, self.N, self.warmup = K, blocks, gains, last_layer, warmup
        self.max_sr = int(K * max_p)
        self.flag_batch_num = 1
        self.sr_now = 0
        self.base_sr = 1.0
        self.sampling_probability = 0.5
        self.psf_norms = [0.0] * K
        self.ratios = [0.0] * K
        self.vars = [0.0] * K
        self.gen = torch.Generator().manual_seed(seed)
        self.base_srs: list[float] = []
        self.skipped: list[int] = []

    def get_var(self) -> float:
        size = len(self.psf_norms) // self.blocks
        data = sorted(self.psf_norms)
        block_vars = [
            float(torch.tensor(data[j * size : (j + 1) * size], dtype=torch.float64).var())
            for j in range(self.blocks)
        ]
        return sum(block_vars) / self.blocks

    def opt_sam(self, w: Weights, idx: torch.Tensor) -> Weights:
        self.sr_now += 1
        w, g, psf = self.sam_step(w, idx)
        tail = [i for i in range(len(w)) if i > len(w) - (self.N + 1)]
        og_norm = float(global_norm([g[i] for i in tail]))
        psf_norm = float(global_norm([psf[i] for i in tail]))
        self.psf_norms = (self.psf_norms + [psf_norm])[-self.K :]
        self.ratios = (self.ratios + [psf_norm / og_norm])[-self.K :]
        self.vars.append(self.get_var())
        return w

    def step(self, w: Weights, epoch: int, idx: torch.Tensor) -> Weights:
        self.problem.new_step()
        if epoch < self.warmup:
            w = self.opt_sam(w, idx)
            self.sr_now = 1
            return w
        if self.flag_batch_num % self.K == 0:
            self.vars = self.vars[-self.K :]
            dr, skipped_r = clipped_mean_change(self.ratios)
            dv, skipped_v = clipped_mean_change(self.vars)
            self.skipped.append(skipped_r + skipped_v)
            self.base_sr = self.base_sr * (1 + self.gains[0] * dr + self.gains[1] * dv)
            if self.base_sr > self.max_sr:
                self.base_sr = self.max_sr
            if self.base_sr < 1:
                self.base_sr = 1
            self.base_srs.append(self.base_sr)
            self.sampling_probability = self.base_sr / self.K
            self.sr_now = 0
        if (self.sr_now < int(self.base_sr) and uniform(self.gen) >= 1 - self.sampling_probability) or (
            self.K - self.flag_batch_num % self.K <= int(self.base_sr) - self.sr_now
        ):
            w = self.opt_sam(w, idx)
        else:
            w = self.opt_sgd(w, idx)
        self.flag_batch_num += 1
        return w


class ReferenceSSSAM(_Base):
    """SS-SAM (Zhao et al. 2022): a SAM step iff u < p_t, u ~ U[0,1) drawn every step."""

    def __init__(self, problem: Problem, opt: MomentumSGD, rho: float, p_of_step, seed: int) -> None:
        super().__init__(problem, opt, rho)
        self.p_of_step = p_of_step
        self.gen = torch.Generator().manual_seed(seed)
        self.t = 0

    def step(self, w: Weights, idx: torch.Tensor) -> Weights:
        self.problem.new_step()
        ascend = uniform(self.gen) < self.p_of_step(self.t)
        g = self.clean(w, idx)
        self.t += 1
        self.ascents.append(ascend)
        return self.opt.step(w, self.sam_gradient(w, g, idx) if ascend else g)


class ReferenceOnSampledRows:
    """A schedule transcription composed with AUSAM's sampler: each step runs ``inner`` on the rows that
    ``ReferenceAUSAM.rows`` draws (every row during its warm-up), and only the steps that ascend teach the
    sampler their DLP = |ℓ(w+ε) − ℓ(w)| on those rows (a plain step has no ℓ(w+ε))."""

    def __init__(self, inner: _Base, sampler: ReferenceAUSAM, with_epoch: bool) -> None:
        self.inner, self.sampler, self.with_epoch = inner, sampler, with_epoch
        self.problem, self.opt, self.ascents = inner.problem, inner.opt, inner.ascents

    def step(self, w: Weights, epoch: int, idx: torch.Tensor) -> Weights:
        sub = idx[self.sampler.rows(epoch, idx)]
        w = self.inner.step(w, epoch, sub) if self.with_epoch else self.inner.step(w, sub)  # type: ignore[call-arg]
        if self.inner.ascents[-1]:
            assert self.inner.loss_before is not None and self.inner.loss_after is not None
            self.sampler.record(epoch, sub, (self.inner.loss_after - self.inner.loss_before).abs().float())
        return w
