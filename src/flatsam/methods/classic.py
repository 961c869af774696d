"""The references: the base optimizer alone, SAM and ASAM."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from flatsam.engine import SharpnessAware
from flatsam.methods.registry import BaseOptimizer, Default, MethodInfo, register
from flatsam.perturbation import ASAMPerturbation
from flatsam.schedule import Never


class SGD(SharpnessAware):
    """The base optimizer alone, run through the engine (one pass per step): the reference against which
    a benchmark measures cost. Bit for bit the base optimizer's update."""

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("rho", None)
        super().__init__(params, base_optimizer, rho=0.0, schedule=Never(), model=model, **kwargs)


class SAM(SharpnessAware):
    """SAM (Foret et al., ICLR 2021): ε = ρ g/‖g‖ from the whole batch, descent gradient at w+ε.

    Called as davda54/sam's ``SAM(params, base_optimizer, rho, adaptive, **base_kwargs)``: ρ and
    ``adaptive`` may be positional.

    ρ = 0.05 is the paper's CIFAR-10 default (0.1 is common on CIFAR-100). ``adaptive=True`` is
    davda54/sam's element-wise adaptive rule, ε = ρ·w²g/(‖|w|g‖ + 1e-12) on every parameter, biases
    included (github.com/davda54/sam ``sam.py``; its README suggests a ρ about 10× larger, its example
    uses 2.0); ``ASAM`` is the official ASAM convention instead.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        rho: float = 0.05,
        adaptive: bool = False,
        *,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if adaptive:
            if kwargs.get("perturbation") is not None:
                raise ValueError("adaptive=True chooses the perturbation; do not pass perturbation= as well")
            kwargs["perturbation"] = ASAMPerturbation(eta=0.0, scope="all", eps=1e-12)
        super().__init__(params, base_optimizer, rho=rho, model=model, **kwargs)


class ASAM(SharpnessAware):
    """Adaptive SAM (Kwon et al., ICML 2021), ε = ρ T²g/‖Tg‖ with T = |w| + η.

    Follows the official code's convention (see ``ASAMPerturbation``): T on parameters named ``weight``
    (by ``model`` when given, else on tensors of dimension > 1), identity on biases, η = 0.01, and the
    official ρ scale (0.5 on CIFAR-10, 1.0 on CIFAR-100). η = 0.01 is the default of the official ``ASAM``
    class (``asam.py``), but the official CIFAR example (``example_cifar.py``, ``--eta`` default 0.0) runs
    η = 0: pass ``eta=0`` to reproduce its numbers. ``scope="all", eta=0`` gives davda54/sam's
    ``adaptive=True`` operator, whose ρ scale is about 4× larger (≈ 2.0).
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        rho: float = 0.5,
        *,
        eta: float = 0.01,
        scope: Literal["weights", "all"] = "weights",
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            base_optimizer,
            rho=rho,
            model=model,
            perturbation=ASAMPerturbation(eta=eta, scope=scope, model=model),
            **kwargs,
        )


_FORET = "Foret et al., ICLR 2021"
_ASAM = "official code, github.com/SamsungLabs/ASAM"
register(MethodInfo("sgd", SGD, "the base optimizer alone (1 pass per step)", "-"))
register(
    MethodInfo(
        "sam",
        SAM,
        "SAM: ascent and descent on the whole batch (2 passes)",
        _FORET,
        {"rho": Default(0.05, f"{_FORET}, CIFAR-10")},
    )
)
register(
    MethodInfo(
        "asam",
        ASAM,
        "adaptive SAM, element-wise |w|+η operator",
        "Kwon et al., ICML 2021",
        {
            "rho": Default(0.5, f"{_ASAM} README, CIFAR-10"),
            "eta": Default(
                0.01,
                f"{_ASAM} asam.py, the class default; its CIFAR example example_cifar.py runs eta = 0 "
                "(--eta 0.0): pass eta=0 to reproduce that",
            ),
            "scope": Default("weights", f"{_ASAM} asam.py: T on parameters named 'weight'"),
        },
        sam_rho=False,
    )
)
