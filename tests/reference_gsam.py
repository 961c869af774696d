"""GSAM written out from the official code (github.com/juntang-zhuang/GSAM ``gsam/gsam.py`` and
``gsam/scheduler.py``; the adaptive ε also as in github.com/google-research/big_vision
``trainers/proj/gsam/gsam.py``), independently of flatsam: float64 weight lists, gradients from autograd, the
ProportionScheduler rule for ρ_t, the ``gradient_decompose`` arithmetic line by line."""

from __future__ import annotations

import torch

from reference import MomentumSGD, Problem, global_norm

Weights = list[torch.Tensor]
EPS = 1e-12


def proportion(lr: float, lr_max: float, lr_min: float, rho_max: float, rho_min: float) -> float:
    """ProportionScheduler.step: the value moves with lr between (lr_min, rho_min) and (lr_max, rho_max)."""
    if lr_max > lr_min:
        return rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)
    return rho_max


class ReferenceGSAM:
    """One GSAM step per call; ``lr_of_step(t)`` is the base optimizer's learning rate at step t."""

    def __init__(
        self,
        problem: Problem,
        opt: MomentumSGD,
        *,
        rho_max: float,
        rho_min: float,
        alpha: float,
        lr_max: float,
        lr_min: float,
        lr_of_step,
        adaptive: str | None = None,
    ) -> None:
        self.problem, self.opt = problem, opt
        self.rho_max, self.rho_min, self.alpha = rho_max, rho_min, alpha
        self.lr_max, self.lr_min, self.lr_of_step, self.adaptive = lr_max, lr_min, lr_of_step, adaptive
        self.t = 0
        self.rhos: list[float] = []

    def perturbation(self, w: Weights, g: Weights, rho: float) -> Weights:
        if self.adaptive == "jax":  # big_vision gsam_gradient, adaptive_perturbation: a + |a|·ρ·b/(‖g‖ + eps)
            norm = global_norm(g)
            return [wi.abs() * rho * gi / (norm + EPS) for wi, gi in zip(w, g, strict=True)]
        if self.adaptive == "pytorch":  # perturb_weights with weight_adaptive: norm of |w|·g, then e_w *= w²
            norm = global_norm([wi.abs() * gi for wi, gi in zip(w, g, strict=True)])
            return [gi * (rho / (norm + EPS)) * wi.pow(2) for wi, gi in zip(w, g, strict=True)]
        norm = global_norm(g)
        return [gi * (rho / (norm + EPS)) for gi in g]

    def decompose(self, old: Weights, new: Weights) -> Weights:
        inner = sum((o * n).sum() for o, n in zip(old, new, strict=True))
        new_norm, old_norm = global_norm(new), global_norm(old)
        cosine = inner / (new_norm * old_norm + EPS)
        out = []
        for o, n in zip(old, new, strict=True):
            vertical = o - cosine * old_norm * n / (new_norm + EPS)
            out.append(n - self.alpha * vertical)
        return out

    def step(self, w: Weights, idx: torch.Tensor) -> Weights:
        lr = self.lr_of_step(self.t)
        self.t += 1
        rho = proportion(lr, self.lr_max, self.lr_min, self.rho_max, self.rho_min)
        self.rhos.append(rho)
        self.problem.new_step()
        _, g = self.problem.losses_and_grads(w, idx)
        e = self.perturbation(w, g, rho)
        _, gp = self.problem.losses_and_grads([wi + ei for wi, ei in zip(w, e, strict=True)], idx)
        self.opt.lr = lr
        return self.opt.step(w, self.decompose(g, gp))
