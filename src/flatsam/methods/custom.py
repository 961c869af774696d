"""Free composition: any schedule × selection × perturbation × reuse, named on the command line."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from flatsam.component import Component
from flatsam.engine import SharpnessAware
from flatsam.methods.registry import BaseOptimizer, Default, MethodInfo, register, resolve_device
from flatsam.perturbation import PERTURBATIONS
from flatsam.reuse import REUSES
from flatsam.schedule import SCHEDULES
from flatsam.selection import SELECTIONS

KINDS: dict[str, dict[str, type[Component]]] = {
    "schedule": SCHEDULES,
    "selection": SELECTIONS,
    "perturbation": PERTURBATIONS,
    "reuse": REUSES,
}


def make_component(kind: str, name: str, options: dict[str, Any], facts: dict[str, Any]) -> Component:
    """Build the ``kind`` component registered as ``name`` with ``options``; run facts (``num_samples``,
    ``total_steps``, ``epochs``, ``model``, ``device``: the parameters') fill the constructor parameters of
    the same name."""
    table = KINDS[kind]
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(table)}")
    cls = table[name]
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"{kind} {name!r} ({cls.__name__}) has no option {unknown}; "
            f"its options: {', '.join(p for p in accepted if p not in facts)}"
        )
    given = {k: v for k, v in facts.items() if k in accepted and v is not None}
    try:
        return cls(**{**given, **options})
    except TypeError as error:  # e.g. a required run fact that was not given
        raise ValueError(f"cannot build {kind} {name!r}: {error}") from None


class Composed(SharpnessAware):
    """A method assembled from components by name: ``schedule``, ``selection``, ``perturbation`` and
    ``reuse`` (see ``flatsam methods --components``). Component options are passed as
    ``"<kind>.<option>"`` keywords, e.g. ``Composed(params, SGD, schedule="ae", selection="adlp",
    **{"selection.keep": 0.3}, num_samples=N, total_steps=T, lr=0.1)``.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        schedule: str = "always",
        selection: str = "all",
        perturbation: str = "sam",
        reuse: str = "none",
        model: nn.Module | None = None,
        num_samples: int | None = None,
        total_steps: int | None = None,
        epochs: int | None = None,
        **kwargs: Any,
    ) -> None:
        options: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        for key in [k for k in kwargs if "." in k]:
            kind, _, option = key.partition(".")
            if kind not in KINDS:
                raise ValueError(f"option {key!r}: {kind!r} is not one of {', '.join(KINDS)}")
            options[kind][option] = kwargs.pop(key)
        params, device = resolve_device(params, base_optimizer, None)
        facts = {
            "num_samples": num_samples,
            "total_steps": total_steps,
            "epochs": epochs,
            "model": model,
            "device": device,
        }
        names = {"schedule": schedule, "selection": selection, "perturbation": perturbation, "reuse": reuse}
        parts = {kind: make_component(kind, names[kind], options[kind], facts) for kind in KINDS}
        super().__init__(params, base_optimizer, rho=rho, model=model, **parts, **kwargs)


_SAM = "SAM's (Foret et al., ICLR 2021)"

register(
    MethodInfo(
        "custom",
        Composed,
        "any schedule × selection × perturbation × reuse, by name",
        "-",
        {
            "schedule": Default("always", _SAM),
            "selection": Default("all", _SAM),
            "perturbation": Default("sam", _SAM),
            "reuse": Default("none", _SAM),
            "rho": Default(0.05, f"{_SAM}, CIFAR-10"),
        },
    )
)
