"""Methods that choose *which rows* (or which weights) enter the passes: ESAM, K-SAM, micro-batch SAM
with noise, m-sharpness, uniform sampling, InfoBatch-style pruning."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from flatsam.engine import SharpnessAware
from flatsam.methods.registry import BaseOptimizer, Default, MethodInfo, register, resolve_device
from flatsam.perturbation import NoisySAMPerturbation, StochasticWeightPerturbation
from flatsam.schedule import MicroBatchScheduler
from flatsam.selection import (
    InfoBatchPruning,
    MicroBatch,
    MSharpness,
    SharpnessSensitiveSelection,
    TopKLoss,
    UniformSampler,
)

_SAM_RHO = "SAM's CIFAR-10 value (Foret et al., ICLR 2021); the paper's own is not public"
_OURS = "our choice, the paper's value is not public"


class StatisticsInEveryPass:
    """The model as the engine sees it when BatchNorm statistics must update in every forward: no
    BatchNorm layer to freeze (``modules`` is empty), everything else, ``no_sync`` under DDP included,
    from the model itself (``module``)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def modules(self) -> Iterator[nn.Module]:
        return iter(())

    def __getattr__(self, name: str) -> Any:
        if name == "module":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.module, name)


BN_UPDATES = ("first", "every")


class ESAM(SharpnessAware):
    """ESAM (Du et al., ICLR 2022): stochastic weight perturbation (each tensor takes part in the ascent
    with probability β, ε = ρ/β · g/‖g‖) and sharpness-sensitive data selection (the descent pass on the
    rows whose loss rose most under ε, found by a no-grad forward at w+ε).

    Defaults from the authors' ``run.sh`` (github.com/dydjw9/Efficient_SAM) for ResNet-18 on CIFAR:
    ρ = 0.05, β = 0.6, γ = 0.5 (WRN/PyramidNet: β = 0.5, ρ = 0.1/0.2). The strict-cutoff selection of
    their code keeps one row fewer than ⌊γB⌋; ``exact_topk=True`` keeps ⌊γB⌋. See
    ``StochasticWeightPerturbation`` and ``SharpnessSensitiveSelection``.

    BatchNorm (with ``model`` given): ``bn_updates="first"`` (default, the engine's policy for every
    method) updates the running statistics in the clean pass only. The official code (``utils/Esam.py``)
    keeps the model in train mode for all three forwards, so the statistics also move in the no-grad
    forward at w+ε and in the descent pass on the selected rows: ``bn_updates="every"`` does that
    (``opt.model`` is then a ``StatisticsInEveryPass`` view of the model, which hides its BatchNorm
    layers from the engine). Either way every forward normalises with its own batch statistics.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        beta: float = 0.6,
        gamma: float = 0.5,
        exact_topk: bool = False,
        bn_updates: Literal["first", "every"] = "first",
        seed: int | None = None,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if bn_updates not in BN_UPDATES:
            raise ValueError(f"bn_updates must be one of {BN_UPDATES}, got {bn_updates!r}")
        seen = StatisticsInEveryPass(model) if bn_updates == "every" and model is not None else model
        super().__init__(
            params,
            base_optimizer,
            rho=rho,
            model=seen,  # type: ignore[arg-type]
            selection=SharpnessSensitiveSelection(gamma, exact_topk=exact_topk),
            perturbation=StochasticWeightPerturbation(beta, seed=seed),
            **kwargs,
        )
        self.bn_updates = bn_updates


class KSAM(SharpnessAware):
    """K-SAM (Ni et al., 2022, arXiv 2210.12864): a no-grad forward over the batch, then both SAM passes
    on the ⌊keep·B⌋ rows of highest loss.

    Neither k nor ρ is public: keep = 0.5 is our choice (see ``TopKLoss``), ρ = 0.05 is SAM's.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        keep: float = 0.5,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, base_optimizer, rho=rho, model=model, selection=TopKLoss(keep), **kwargs)


class MicroBatchSAM(SharpnessAware):
    """Noise-injected micro-batch SAM (Wei, Zhang, Tan, Neural Networks 185 (2025) 107205): the ascent
    gradient comes from a random micro-batch of m rows, noise is added to it before normalisation, and
    the descent pass runs on the whole batch.

    What is the paper's (its abstract, the only public text): the ascent on a micro-batch smaller than
    the batch, random noise injected into that micro-batch gradient, and a scheduler that unifies
    switching between SAM and the base optimizer with data reduction. What is our choice: m
    (``fraction`` = 0.25, or ``size`` = m), the noise's form and scale (isotropic Gaussian, ``noise`` σ
    = 0.5: ‖ξ‖ ≈ σ‖g‖), ρ = 0.05 (SAM's), and the switching rule: ``budget`` = None ascends on every
    step (``mbsam``), a number spends that many ascent rows per batch row evenly over the steps, so a
    fraction budget/fraction of them run the micro-batch ascent and the rest the base optimizer alone
    (``mbsam-switch``: 0.125, every second step at m = B/4; see ``MicroBatchScheduler``). See
    ``MicroBatch`` and ``NoisySAMPerturbation`` for the reasons. ``seed`` seeds the row draws; the noise
    uses ``seed + 1`` and is drawn on ``noise_device``, by default the parameters' device, as are the
    rows. With ``model=``, BatchNorm running statistics come from the micro-batch (the step's first
    forward is the clean pass on its m rows), not from the whole batch: the descent pass over every row
    leaves them as they are.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        size: int | None = None,
        fraction: float = 0.25,
        noise: float = 0.5,
        budget: float | None = None,
        seed: int | None = None,
        noise_device: torch.device | str | None = None,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if budget is not None:
            if size is not None:
                raise ValueError("budget (ascent rows per batch row) needs fraction=, not size=")
            kwargs["schedule"] = MicroBatchScheduler(budget, fraction)
        noise_seed = None if seed is None else seed + 1
        params, noise_device = resolve_device(params, base_optimizer, noise_device)
        perturbation = NoisySAMPerturbation(noise, seed=noise_seed, device=noise_device)
        super().__init__(
            params,
            base_optimizer,
            rho=rho,
            model=model,
            selection=MicroBatch(size, fraction, seed=seed, device=noise_device),
            perturbation=perturbation,
            **kwargs,
        )


class MSharpnessSAM(SharpnessAware):
    """m-sharpness (Foret et al., ICLR 2021): one ε per part of m rows, descent gradients averaged; SAM's
    cost. ``m`` = 32 is our default (see ``MSharpness``), ρ = 0.05 SAM's."""

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        m: int = 32,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, base_optimizer, rho=rho, model=model, selection=MSharpness(m), **kwargs)


class UniformSAM(SharpnessAware):
    """Uniform sampling (AUSAM's random-sampling baseline, Deng et al., AAAI 2025): both SAM passes on
    ⌊keep·B⌋ rows drawn uniformly without replacement. ρ = 0.1, keep = 0.5 and the warm-up (epoch 0 is
    SAM on every row, ``warmup_epochs`` = 1) are AUSAM's (authors' code), so with the same settings the
    two differ only in how the rows are drawn after the warm-up; ``warmup_epochs=0`` samples from the
    first step. The rows are drawn on ``draw_device``, by default the parameters' device."""

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.1,
        keep: float = 0.5,
        warmup_epochs: int = 1,
        seed: int | None = None,
        draw_device: torch.device | str | None = None,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        params, draw_device = resolve_device(params, base_optimizer, draw_device)
        selection = UniformSampler(keep, seed, warmup_epochs=warmup_epochs, device=draw_device)
        super().__init__(params, base_optimizer, rho=rho, model=model, selection=selection, **kwargs)


class InfoBatchSAM(SharpnessAware):
    """SAM with InfoBatch pruning (Qin et al., ICLR 2024), one of AUSAM's data-pruning baselines: at the
    start of each epoch a random ``prune_ratio`` of the well-learned samples (last clean loss below the
    mean) leaves the epoch, so it has fewer steps, and the kept well-learned samples weigh
    1/(1 − prune_ratio) in both passes; the last (1 − delta) of the ``epochs`` do not prune.

    prune_ratio = 0.5 and delta = 0.875 are the official InfoBatch defaults; ρ = 0.1 is AUSAM's, as for
    the other AUSAM baselines. The loop must visit ``selection.epoch_indices(epoch, order)`` (flatsam's
    does); ``mode="batch"`` prunes inside each batch instead, with a larger gradient while pruning (see
    ``InfoBatchPruning``). Needs ``index=`` in every step and ``set_epoch``. The scores live on
    ``history_device``, by default the parameters' device.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.1,
        num_samples: int,
        epochs: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        mode: Literal["epoch", "batch"] = "epoch",
        seed: int | None = None,
        history_device: torch.device | str | None = None,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        params, history_device = resolve_device(params, base_optimizer, history_device)
        selection = InfoBatchPruning(
            num_samples,
            epochs,
            prune_ratio=prune_ratio,
            delta=delta,
            mode=mode,
            seed=seed,
            device=history_device,
        )
        super().__init__(params, base_optimizer, rho=rho, model=model, selection=selection, **kwargs)


_ESAM = "authors' run.sh, github.com/dydjw9/Efficient_SAM (ResNet-18, CIFAR)"
_AUSAM = "AUSAM's value (authors' code, github.com/ajiaaa/AUSAM), as for its other baselines"
_INFOBATCH = "official code, github.com/NUS-HPC-AI-Lab/InfoBatch infobatch/infobatch.py"

register(
    MethodInfo(
        "esam",
        ESAM,
        "stochastic weight perturbation + descent on the sharpest rows",
        "Du et al., ICLR 2022",
        {
            "rho": Default(0.05, _ESAM),
            "beta": Default(0.6, _ESAM),
            "gamma": Default(0.5, _ESAM),
            "exact_topk": Default(
                False,
                "authors' code, github.com/dydjw9/Efficient_SAM utils/Esam.py: strict cutoff, k − 1 rows",
            ),
            "bn_updates": Default(
                "first",
                "flatsam's policy: BatchNorm statistics from the clean pass only; the authors' code, "
                "github.com/dydjw9/Efficient_SAM utils/Esam.py, updates them in all three forwards: 'every'",
            ),
        },
    )
)
register(
    MethodInfo(
        "ksam",
        KSAM,
        "both passes on the top-k loss rows after a no-grad scoring forward",
        "Ni et al., 2022",
        {
            "rho": Default(0.05, _SAM_RHO),
            "keep": Default(
                0.5, f"{_OURS}: AUSAM's sample budget; ≈ the 65 % of SAM's cost reported on ImageNet"
            ),
        },
    )
)
_MBSAM = {
    "rho": Default(0.05, _SAM_RHO),
    "fraction": Default(0.25, f"{_OURS}; small-m ascents generalise well (m-sharpness, Foret et al. 2021)"),
    "noise": Default(
        0.5, f"{_OURS}: isotropic Gaussian, norm half the gradient's (the paper's: noise is injected)"
    ),
}
register(
    MethodInfo(
        "mbsam",
        MicroBatchSAM,
        "ascent on a noisy micro-batch gradient on every step, descent on the batch",
        "Wei, Zhang, Tan, Neural Networks 2025 (every-step variant, our choice)",
        {
            **_MBSAM,
            "budget": Default(None, "our choice: no switching, a micro-batch ascent on every step"),
        },
    )
)
register(
    MethodInfo(
        "mbsam-switch",
        functools.partial(MicroBatchSAM, budget=0.125),
        "the micro-batch scheduler: noisy micro-batch ascents on some steps, the base optimizer on the rest",
        "Wei, Zhang, Tan, Neural Networks 2025 (switching + data reduction, as its abstract unifies them)",
        {
            **_MBSAM,
            "budget": Default(
                0.125,
                f"{_OURS}: ascent rows per batch row, spent evenly (every second step at fraction 0.25); "
                "cost ≈ 1.125 passes, below LookSAM-5's 1.2 (the abstract reports beating it in efficiency)",
            ),
        },
    )
)
register(
    MethodInfo(
        "msharpness",
        MSharpnessSAM,
        "one ε per part of m rows, descent gradients averaged (SAM's cost)",
        "Foret et al., ICLR 2021 (m-sharpness)",
        {
            "rho": Default(0.05, "Foret et al., ICLR 2021, CIFAR-10"),
            "m": Default(32, "our choice: a quarter of a 128 batch (the paper sweeps m down to 16)"),
        },
    )
)
register(
    MethodInfo(
        "uniform",
        UniformSAM,
        "both passes on a uniformly drawn fraction of the batch",
        "AUSAM's random-sampling baseline (Deng et al., AAAI 2025)",
        {
            "rho": Default(0.1, _AUSAM),
            "keep": Default(0.5, _AUSAM),
            "warmup_epochs": Default(1, f"{_AUSAM}: epoch 0 is SAM on every row"),
        },
    )
)
register(
    MethodInfo(
        "infobatch",
        InfoBatchSAM,
        "well-learned samples pruned from the epoch at random, the kept ones up-weighted",
        "Qin et al., ICLR 2024 (AUSAM's pruning baseline)",
        {
            "rho": Default(0.1, _AUSAM),
            "prune_ratio": Default(0.5, _INFOBATCH),
            "delta": Default(0.875, _INFOBATCH),
            "mode": Default("epoch", f"{_INFOBATCH}: pruned samples leave the epoch (fewer steps)"),
        },
        needs=("num_samples", "epochs"),
    )
)
