"""GSAM (Zhuang et al., ICLR 2022): SAM's descent gradient minus α times the clean gradient's part
orthogonal to it (the surrogate gap's descent direction), with ρ scheduled with the learning rate."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from flatsam.component import Outcome, StepContext
from flatsam.engine import SharpnessAware
from flatsam.methods.registry import BaseOptimizer, Default, MethodInfo, register
from flatsam.perturbation import ASAMPerturbation, Epsilon, Perturbation, SAMPerturbation, total_norm

_CODE = "official code, github.com/juntang-zhuang/GSAM"


def _check(name: str, value: float | None, low: float, *, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < low
    ):
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Σ a·b over every pair of tensors, on the first tensor's device and dtype (no host read)."""
    first = a[0]
    return torch.stack([(x * y).sum().to(first) for x, y in zip(a, b, strict=True)]).sum()


class GSAMPerturbation(Perturbation):
    """GSAM's ascent and descent correction, after the official ``gsam/gsam.py``.

    ρ follows the learning rate (the official ``ProportionScheduler``; Algorithm 1, step 0):
    ρ_t = ρ_min + (ρ_max − ρ_min)(lr − lr_min)/(lr_max − lr_min), with ρ_max the group's ``rho``, lr
    the current learning rate of the first perturbed parameter group (the official code reads
    ``param_groups[0]``), not clamped (a warm-up below lr_min gives ρ_t below ρ_min, as there).
    ``lr_max`` = None takes the first group's ``initial_lr`` (set by a torch LR scheduler), else its lr,
    at the first step, and keeps it in ``state_dict``; ``lr_max == lr_min`` means a constant ρ = ρ_max.

    ε = ρ_t g/(‖g‖ + eps); ``adaptive`` = the official code's rule ε = ρ_t w²g/(‖|w|g‖ + eps) (the
    paper's Algorithm 1 writes ρ_t g/‖g‖·|w| instead; the code is followed). eps = 1e-12 (``perturb_eps``).

    ``correct_descent`` (the official ``gradient_decompose``), with g the clean gradient and g_p the
    descent gradient at w+ε: cos = ⟨g, g_p⟩/(‖g_p‖‖g‖ + eps), g_⊥ = g − cos·‖g‖·g_p/(‖g_p‖ + eps),
    g_p ← g_p − α g_⊥. α = 0 is SAM with the scheduled ρ.

    Under torch.distributed the official code runs both passes in ``no_sync``, decomposes on each worker
    and then averages; here the clean gradient (kept for the decomposition) and the descent gradient are
    averaged by DDP first and the decomposition runs on the averages, the same on every rank.
    """

    needs_clean_grads = True
    skip_on_device = True
    state_fields = ("lr_max",)

    def __init__(
        self,
        alpha: float = 0.4,
        rho_min: float | None = None,
        lr_max: float | None = None,
        lr_min: float = 0.0,
        adaptive: bool = False,
        eps: float = 1e-12,
    ) -> None:
        _check("alpha", alpha, 0.0)
        _check("rho_min", rho_min, 0.0, none_ok=True)
        _check("lr_min", lr_min, 0.0)
        _check("lr_max", lr_max, 0.0, none_ok=True)
        _check("eps", eps, 0.0)
        if lr_max is not None and lr_max < lr_min:
            raise ValueError(f"lr_max must be >= lr_min, got lr_max={lr_max}, lr_min={lr_min}")
        self.alpha, self.rho_min, self.lr_min, self.eps = float(alpha), rho_min, float(lr_min), float(eps)
        self.lr_max = None if lr_max is None else float(lr_max)
        self.adaptive = bool(adaptive)
        self.inner: Perturbation = (
            ASAMPerturbation(eta=0.0, scope="all", eps=eps) if adaptive else SAMPerturbation(eps=eps)
        )

    def minimum(self, rho_max: float) -> float:
        """ρ_min for a group whose ρ_max is ``rho_max``: the given ``rho_min``, else half of ρ_max."""
        return rho_max / 2 if self.rho_min is None else self.rho_min

    def rho_at(self, rho_max: float, lr: float) -> float:
        """ρ_t of a group with radius ``rho_max`` at learning rate ``lr`` (the ProportionScheduler rule)."""
        rho_min = self.minimum(rho_max)
        if self.lr_max is None or self.lr_max <= self.lr_min:
            return rho_max
        return rho_min + (rho_max - rho_min) * (lr - self.lr_min) / (self.lr_max - self.lr_min)

    def epsilon(self, ctx: StepContext, groups: list[dict[str, Any]]) -> Epsilon:
        if not groups:
            return []
        lead = groups[0]
        if self.lr_max is None:
            self.lr_max = float(lead.get("initial_lr", lead["lr"]))
        lr = float(lead["lr"])
        return self.inner.epsilon(ctx, [{**g, "rho": self.rho_at(g["rho"], lr)} for g in groups])

    @torch.no_grad()
    def correct_descent(self, ctx: StepContext, outcome: Outcome) -> None:
        clean = outcome.clean_grads or []
        pairs = [
            (g, gp)
            for g, gp in zip(clean, outcome.descent_grads, strict=False)
            if g is not None and gp is not None
        ]
        if not pairs:
            return
        old, new = [g for g, _ in pairs], [gp for _, gp in pairs]
        new_norm, old_norm = total_norm(new).to(new[0]), total_norm(old).to(new[0])
        cosine = _dot(old, new) / (new_norm * old_norm + self.eps)
        coefficient = cosine * old_norm / (new_norm + self.eps)
        for g, gp in pairs:
            vertical = g - coefficient.to(gp) * gp
            gp.add_(vertical, alpha=-self.alpha)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, rho_min={self.rho_min}, lr_max={self.lr_max}, lr_min={self.lr_min}, "
            f"adaptive={self.adaptive}"
        )


class GSAM(SharpnessAware):
    """GSAM (Zhuang et al., "Surrogate Gap Guided Sharpness-Aware Minimization", ICLR 2022): SAM's two
    passes, ρ scheduled with the learning rate, and the descent gradient g_p − α g_⊥ (see
    ``GSAMPerturbation``). SAM's cost, plus one kept copy of the clean gradient.

    Defaults: α = 0.4 (the official PyTorch example ``example/train.py``; also the paper's ViT-S/32 and
    ViT-B/16 rows), ``adaptive`` = False (the official ``GSAM`` class and every row of the paper's
    Table 4), eps 1e-12 (official). ρ = ρ_max = 0.05 is on SAM's scale (the paper's ResNet rows use
    0.04; the official CIFAR example runs adaptive ρ = 2.0 constant); ρ_min = None is half of ρ, the
    ratio of the paper's ResNet rows (0.04 → 0.02); pass ``rho_min=rho`` for a constant ρ (the official
    example). ``lr_max`` = None is the first group's learning rate when the optimizer is built,
    ``lr_min`` = 0 (the official example's cosine schedule ends at 0; the paper's linear one at lr_max/100).

    Use it as any flatsam method: ``opt = flatsam.GSAM(model.parameters(), torch.optim.SGD, model=model,
    lr=0.1, momentum=0.9)``, ``opt.step(lambda rows: F.cross_entropy(model(x[rows]), y[rows],
    reduction="none"))``, and step your LR scheduler as usual: ρ_t follows ``param_groups[0]["lr"]``.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        alpha: float = 0.4,
        rho_min: float | None = None,
        lr_max: float | None = None,
        lr_min: float = 0.0,
        adaptive: bool = False,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if rho_min is not None and rho_min > rho:
            raise ValueError(f"rho_min must be <= rho (rho_max), got rho_min={rho_min}, rho={rho}")
        perturbation = GSAMPerturbation(alpha, rho_min, lr_max, lr_min, adaptive)
        super().__init__(params, base_optimizer, rho=rho, model=model, perturbation=perturbation, **kwargs)
        if perturbation.lr_max is None:
            perturbation.lr_max = float(self.param_groups[0]["lr"])
            if perturbation.lr_max < lr_min:
                raise ValueError(f"lr_min ({lr_min}) must be <= the learning rate ({perturbation.lr_max})")


register(
    MethodInfo(
        "gsam",
        GSAM,
        "SAM with ρ following the LR and the clean gradient's orthogonal part subtracted (2 passes)",
        "Zhuang et al., ICLR 2022",
        {
            "rho": Default(
                0.05, "SAM's CIFAR-10 value (Foret et al., ICLR 2021); GSAM's ResNet ρ_max 0.04 (Table 4)"
            ),
            "alpha": Default(0.4, f"{_CODE} example/train.py (--alpha); paper Table 4: 0.005-1.0"),
            "rho_min": Default(
                None, "our choice: half of rho, the ratio of the paper's ResNet rows (Table 4: 0.04 → 0.02)"
            ),
            "lr_max": Default(
                None, f"our choice: the learning rate when built ({_CODE} gsam/scheduler.py: max_lr by hand)"
            ),
            "lr_min": Default(0.0, f"{_CODE} example/train.py: cosine schedule to 0"),
            "adaptive": Default(False, f"{_CODE} gsam/gsam.py class default; paper Table 4"),
        },
    )
)
