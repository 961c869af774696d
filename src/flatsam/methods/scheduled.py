"""Methods that choose *when* to ascend: LookSAM, AE-SAM, AE-LookSAM, ARSAM, SS-SAM."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from flatsam.engine import SharpnessAware
from flatsam.methods.registry import BaseOptimizer, Default, MethodInfo, register
from flatsam.reuse import LookSAMReuse, PSFReuse
from flatsam.schedule import AEThreshold, ARSAMWindow, Bernoulli, EveryK


class LookSAM(SharpnessAware):
    """LookSAM (Liu et al., CVPR 2022): a SAM step every k-th step; the steps between add the stored
    orthogonal component of the SAM gradient, g + α·(‖g‖/‖g_v‖)·g_v (``LookSAMReuse``).

    k = 5 ("LookSAM-5") and α = 0.7 are the paper's defaults; ρ = 0.05 is SAM's (the paper's CIFAR ρ was
    not retrievable). ``norm`` chooses global (paper) or per-tensor (rollovd/LookSAM) decomposition.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        k: int = 5,
        alpha: float = 0.7,
        norm: str = "global",
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            base_optimizer,
            rho=rho,
            schedule=EveryK(k),
            reuse=LookSAMReuse(alpha, norm=norm),
            model=model,
            **kwargs,
        )


def _ae_threshold(
    delta: float,
    lambda1: float,
    lambda2: float,
    total_steps: int | None,
    total_epochs: int | None,
    init: str,
    variance_mean: str,
) -> AEThreshold:
    return AEThreshold(
        delta,
        lambda1,
        lambda2,
        total_steps,
        total_epochs=total_epochs,
        init=init,
        variance_mean=variance_mean,
    )


class AESAM(SharpnessAware):
    """AE-SAM (Jiang, Yang, Zhang, Kwok, ICLR 2023): every step runs the clean pass; a SAM step follows
    when ‖g‖² ≥ μ_t + c_t·σ_t (EMA statistics, c_t linear from λ2 to λ1), else the clean gradient is used.

    δ = 0.9, λ1 = −1, λ2 = 1 as the paper is summarised, unverified (its text and code were not
    retrievable; see ``AEThreshold`` for the open choices ``init`` and ``variance_mean``). Needs
    ``total_steps`` (or ``total_epochs`` for a per-epoch c_t). ρ = 0.05, unverified: the SAM baseline's
    recipe (ESAM protocol, ResNet-18 on CIFAR) that the paper is said to follow.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        total_steps: int | None = None,
        total_epochs: int | None = None,
        delta: float = 0.9,
        lambda1: float = -1.0,
        lambda2: float = 1.0,
        init: str = "zero",
        variance_mean: str = "current",
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        schedule = _ae_threshold(delta, lambda1, lambda2, total_steps, total_epochs, init, variance_mean)
        super().__init__(params, base_optimizer, rho=rho, schedule=schedule, model=model, **kwargs)


class AELookSAM(SharpnessAware):
    """AE-LookSAM (Jiang et al., ICLR 2023): AE-SAM's switching rule, with LookSAM's reuse of the
    orthogonal component g_v on the steps without SAM (``LookSAMReuse``, α = 0.7 as LookSAM's; the
    paper's α was not retrievable). Other defaults as ``AESAM``."""

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        total_steps: int | None = None,
        total_epochs: int | None = None,
        delta: float = 0.9,
        lambda1: float = -1.0,
        lambda2: float = 1.0,
        init: str = "zero",
        variance_mean: str = "current",
        alpha: float = 0.7,
        norm: str = "global",
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        schedule = _ae_threshold(delta, lambda1, lambda2, total_steps, total_epochs, init, variance_mean)
        super().__init__(
            params,
            base_optimizer,
            rho=rho,
            schedule=schedule,
            reuse=LookSAMReuse(alpha, norm=norm),
            model=model,
            **kwargs,
        )


class ARSAM(SharpnessAware):
    """ARSAM (Deng & Pang 2025, arXiv 2510.03763): full SAM on an adaptive quota of steps per window
    (``ARSAMWindow``); the steps between reuse the stored PSF = g_SAM − g with decaying weights β, β², …
    (``PSFReuse``).

    ARSAM's code was not retrievable; everything follows its precursor, the authors' vSAM code
    (github.com/ajiaaa/vSAM, ``train_vsam.py`` defaults): ρ = 0.05, window 50, 5 blocks, max_p 0.8,
    gains (0.13, 0.13), last 10 parameter tensors, 3 warm-up epochs of full SAM, β = 0.7 over 6 steps.
    Call ``set_epoch`` every epoch (the warm-up counts epochs).
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        window: int = 50,
        blocks: int = 5,
        max_p: float = 0.8,
        gains: tuple[float, float] = (0.13, 0.13),
        last_layers: int = 10,
        warmup_epochs: int = 3,
        beta: float = 0.7,
        reuse_steps: int = 6,
        seed: int | None = None,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        schedule = ARSAMWindow(window, blocks, max_p, tuple(gains), last_layers, warmup_epochs, seed)
        super().__init__(
            params,
            base_optimizer,
            rho=rho,
            schedule=schedule,
            reuse=PSFReuse(beta, reuse_steps),
            model=model,
            **kwargs,
        )


class SSSAM(SharpnessAware):
    """SS-SAM (Zhao et al. 2022): each step is a SAM step with probability p_t (a Bernoulli trial on the
    optimizer's own generator), else a plain step.

    p = 0.5 constant, 1.5 passes per step on average, is the setting the paper's summaries report as
    matching SAM; ``p_schedule`` = "linear" / "cosine" / "piecewise" ramps p_t from ``p_start`` to
    ``p_end`` over ``total_steps`` (flatsam's forms, see ``Bernoulli``). ρ = 0.05 is SAM's (the paper's
    was not retrievable).
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        p: float = 0.5,
        p_schedule: str = "constant",
        p_start: float = 0.0,
        p_end: float = 1.0,
        total_steps: int | None = None,
        seed: int | None = None,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        schedule = Bernoulli(p, p_schedule, p_start=p_start, p_end=p_end, total_steps=total_steps, seed=seed)
        super().__init__(params, base_optimizer, rho=rho, schedule=schedule, model=model, **kwargs)


_SAM_RHO = Default(0.05, "SAM's CIFAR-10 value (Foret et al., ICLR 2021); the paper's not retrievable")
_LOOKSAM = "Liu et al., CVPR 2022"
_AESAM = "Jiang et al., ICLR 2023"
_AE_DEFAULTS = {
    "rho": Default(0.05, "unverified: the SAM baseline recipe the paper follows (ESAM protocol, ResNet-18)"),
    "delta": Default(0.9, f"{_AESAM}, unverified"),
    "lambda1": Default(-1.0, f"{_AESAM}, unverified"),
    "lambda2": Default(1.0, f"{_AESAM}, unverified"),
    "init": Default("zero", "unverified, the sources are silent: μ_0 = σ_0² = 0, the recursion as written"),
    "variance_mean": Default("current", "unverified: σ² around μ_t, the recursion as written"),
}
_VSAM = "authors' vSAM code, github.com/ajiaaa/vSAM train_vsam.py"

register(
    MethodInfo(
        "looksam",
        LookSAM,
        "SAM every k steps; reuse of the orthogonal gradient component between",
        _LOOKSAM,
        {
            "rho": _SAM_RHO,
            "k": Default(5, f"{_LOOKSAM} (LookSAM-5)"),
            "alpha": Default(0.7, _LOOKSAM),
            "norm": Default("global", f"{_LOOKSAM} equations (vector norms)"),
        },
    )
)
register(
    MethodInfo(
        "aesam",
        AESAM,
        "SAM only when ‖g‖² is large against its running mean/std",
        _AESAM,
        _AE_DEFAULTS,
        needs=("total_steps",),
    )
)
register(
    MethodInfo(
        "aelooksam",
        AELookSAM,
        "AE-SAM's switching rule with LookSAM's reuse on the other steps",
        _AESAM,
        {
            **_AE_DEFAULTS,
            "alpha": Default(0.7, f"LookSAM's default ({_LOOKSAM}); AE-LookSAM's not retrievable"),
        },
        needs=("total_steps",),
    )
)
register(
    MethodInfo(
        "arsam",
        ARSAM,
        "SAM on an adaptive quota per window; decaying reuse of PSF = g_SAM − g between",
        "Deng & Pang 2025 (arXiv 2510.03763; precursor vSAM)",
        {
            "rho": Default(0.05, _VSAM),
            "window": Default(50, f"{_VSAM} (win_spl[0])"),
            "blocks": Default(5, f"{_VSAM} (win_spl[1])"),
            "max_p": Default(0.8, _VSAM),
            "gains": Default((0.13, 0.13), f"{_VSAM} (alpha)"),
            "last_layers": Default(10, f"{_VSAM} (last_layer)"),
            "warmup_epochs": Default(
                3, "authors' vSAM code, github.com/ajiaaa/vSAM vsam/vsam.py (epoch < 3)"
            ),
            "beta": Default(0.7, f"{_VSAM} (beta)"),
            "reuse_steps": Default(
                6, "authors' vSAM code, github.com/ajiaaa/vSAM vsam/vsam.py (pow(hp2, 6))"
            ),
        },
    )
)
register(
    MethodInfo(
        "sssam",
        SSSAM,
        "SAM on a random (Bernoulli p_t) subset of steps",
        "Zhao et al. 2022",
        {
            "rho": _SAM_RHO,
            "p": Default(0.5, "Zhao et al. 2022 as summarised (1.5 passes per step); paper unverified"),
            "p_schedule": Default("constant", "Zhao et al. 2022 as summarised; paper unverified"),
        },
        needs=("total_steps",),
    )
)
