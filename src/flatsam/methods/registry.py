"""The method registry: name → builder, paper, and each default with where it comes from."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flatsam.engine import SharpnessAware, _flatten

BaseOptimizer = type[torch.optim.Optimizer] | torch.optim.Optimizer


@dataclass(frozen=True)
class Default:
    """A default and where it comes from. A key ``train.FIELD`` documents a setting of the training
    harness (``TrainConfig.FIELD``) that matters for reproducing the method, with flatsam's value."""

    value: Any
    source: str


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: how to build it, its paper, and each default with where it comes from.

    ``needs`` names the facts about the run the builder must be given (``num_samples``: the training-set
    size; ``total_steps``: the number of optimizer steps of the run; ``epochs``: the number of epochs);
    facts a builder merely accepts are passed when known. ``sam_rho`` is true when the
    method's ``rho`` is on SAM's scale (a benchmark's common ρ applies to it; ASAM's is not).
    """

    name: str
    build: Callable[..., SharpnessAware]
    summary: str
    paper: str
    defaults: dict[str, Default] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    sam_rho: bool = True


METHODS: dict[str, MethodInfo] = {}


def resolve_device(
    params: Any, base_optimizer: BaseOptimizer, device: torch.device | str | None
) -> tuple[Any, torch.device]:
    """``device``, or where it is ``None`` the device of the first parameter (CPU without any): where a
    preset keeps per-sample history and draws its random numbers, so a step never waits on the host.
    Returns ``params`` too, as a list when it was an iterator (which finding the device consumes)."""
    if device is not None:
        return params, torch.device(device)
    if params is not None and not isinstance(params, torch.Tensor):
        params = list(params)
    tensors = (
        _flatten(params)
        if params is not None
        else [p for g in getattr(base_optimizer, "param_groups", []) for p in g["params"]]
    )
    return params, tensors[0].device if tensors else torch.device("cpu")


def register(info: MethodInfo) -> MethodInfo:
    if info.name in METHODS:
        raise ValueError(f"method {info.name!r} is already registered")
    METHODS[info.name] = info
    return info


def method_info(name: str) -> MethodInfo:
    """The registered method ``name`` (case-insensitive)."""
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}") from None


def build_method(
    name: str,
    params: Any,
    base_optimizer: BaseOptimizer = torch.optim.SGD,
    *,
    model: nn.Module | None = None,
    num_samples: int | None = None,
    total_steps: int | None = None,
    epochs: int | None = None,
    overrides: dict[str, Any] | None = None,
    **base_kwargs: Any,
) -> SharpnessAware:
    """Build a registered method with its defaults, ``overrides`` for its own keywords and
    ``base_kwargs`` for the base optimizer."""
    info = method_info(name)
    facts = {"num_samples": num_samples, "total_steps": total_steps, "epochs": epochs}
    missing = [key for key in info.needs if facts[key] is None]
    if missing:
        raise ValueError(f"method {name!r} needs {missing}")
    accepted = inspect.signature(info.build).parameters
    kwargs = {key: value for key, value in facts.items() if key in accepted and value is not None}
    return info.build(params, base_optimizer, model=model, **kwargs, **(overrides or {}), **base_kwargs)
