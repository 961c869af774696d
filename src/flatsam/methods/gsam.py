"""GSAM (Zhuang et al., ICLR 2022): SAM's descent gradient minus α times the clean gradient's part
orthogonal to it (the surrogate gap's descent direction), with ρ scheduled with the learning rate."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from flatsam.engine import SharpnessAware
from flatsam.methods.registry import BaseOptimizer, Default, MethodInfo, register
from flatsam.perturbation import GSAMPerturbation

_CODE = "official code, github.com/juntang-zhuang/GSAM"


class GSAM(SharpnessAware):
    """GSAM (Zhuang et al., "Surrogate Gap Minimization Improves Sharpness-Aware Training", ICLR 2022):
    SAM's two passes, ρ scheduled with the learning rate, and the descent gradient g_p − α g_⊥ (see
    ``GSAMPerturbation``). SAM's cost, plus one kept copy of the clean gradient. The PyTorch code
    (github.com/juntang-zhuang/GSAM) is followed; ``adaptive_form="jax"`` takes the adaptive ε of the
    authors' JAX code (big_vision), whose ImageNet ViT config runs ρ 0.6 → 0.1 and α 0.6.

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
        adaptive_form: Literal["pytorch", "jax"] = "pytorch",
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if rho_min is not None and rho_min > rho:
            raise ValueError(f"rho_min must be <= rho (rho_max), got rho_min={rho_min}, rho={rho}")
        perturbation = GSAMPerturbation(alpha, rho_min, lr_max, lr_min, adaptive, adaptive_form)
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
            "adaptive_form": Default(
                "pytorch",
                f"{_CODE} gsam/gsam.py (w²g/‖|w|g‖); 'jax': github.com/google-research/big_vision "
                "trainers/proj/gsam/gsam.py and the paper's Algorithm 1 (|w|g/‖g‖)",
            ),
        },
    )
)
