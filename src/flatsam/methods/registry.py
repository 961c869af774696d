"""The method registry: name → builder, paper, and each default with where it comes from."""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flatsam.engine import SharpnessAware, _flatten
from flatsam.validate import check_device, check_seed

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
    method's ``rho`` is on SAM's scale (a benchmark's common ρ applies to it; not to ASAM's, on another
    scale, nor to a preset whose ρ is its point, ``ausam-halfrho``).
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
    check_overrides(info, overrides or {}, base_optimizer)
    accepted = inspect.signature(info.build).parameters
    kwargs = {key: value for key, value in facts.items() if key in accepted and value is not None}
    return info.build(params, base_optimizer, model=model, **kwargs, **(overrides or {}), **base_kwargs)


#: Constructor parameters that are not method options: the run facts and the plumbing.
_NOT_OPTIONS = {"self", "params", "base_optimizer", "model", "num_samples", "total_steps", "epochs"}


def method_options(info: MethodInfo) -> dict[str, inspect.Parameter]:
    """The keyword options of ``info``'s method: its builder's and the engine's (``rho``, ...)."""
    options: dict[str, inspect.Parameter] = {}
    for target in (SharpnessAware.__init__, info.build):
        for name, parameter in inspect.signature(target).parameters.items():
            if name not in _NOT_OPTIONS and parameter.kind in (
                parameter.KEYWORD_ONLY,
                parameter.POSITIONAL_OR_KEYWORD,
            ):
                options[name] = parameter
    for component in ("schedule", "selection", "perturbation", "reuse"):
        if info.name != "custom":
            options.pop(component, None)  # components are chosen by the preset
    return options


def check_overrides(info: MethodInfo, overrides: dict[str, Any], base_optimizer: BaseOptimizer) -> None:
    """Each override names an option of the method (else the nearest names are suggested), is finite
    where it is a number, and has the type of the option's default."""
    valid = method_options(info)
    base = base_optimizer if isinstance(base_optimizer, type) else type(base_optimizer)
    base_keys = set(inspect.signature(base.__init__).parameters) - {"self", "params"}
    for key, value in overrides.items():
        if info.name == "custom" and "." in key:
            _check_value(f"option {key}", value, None)  # the component checks the name and type
            continue
        if key not in valid:
            if key in base_keys:
                raise ValueError(
                    f"option {key!r} is a setting of the base optimizer {base.__name__}, not of method "
                    f"{info.name!r}: pass it as a base-optimizer keyword (build_method(..., {key}=...)); "
                    "flatsam train has --lr, --momentum, --nesterov and --weight-decay for them"
                )
            near = difflib.get_close_matches(key, valid, n=2)
            hint = f"did you mean {' or '.join(map(repr, near))}? " if near else ""
            raise ValueError(f"method {info.name!r} has no option {key!r}; {hint}valid: {', '.join(valid)}")
        default = valid[key].default
        _check_value(
            f"option {key}",
            value,
            None if default is inspect.Parameter.empty else default,
            str(valid[key].annotation),
        )


#: Annotation words an option's value is checked against when its default (``None``) does not say.
_ANNOTATED: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "None": (type(None),),
    "torch.device": (str, torch.device),
}


def _annotated_kind(annotation: str) -> tuple[type, ...] | None:
    """The types an annotation such as ``"float | None"`` admits (``None`` when it names others)."""
    kinds: tuple[type, ...] = ()
    for word in (part.strip() for part in annotation.split("|")):
        if word not in _ANNOTATED:
            return None
        kinds += _ANNOTATED[word]
    return kinds or None


def _check_special(name: str, value: Any) -> None:
    """Seeds within torch's range; device names that torch parses and that are present."""
    key = name.rsplit(".", 1)[-1].removeprefix("option ")
    if key == "seed" or key.endswith("_seed"):
        check_seed(name, value)
    if key == "device" or key.endswith("_device"):
        check_device(name, value)


def _check_value(name: str, value: Any, default: Any, annotation: str = "") -> None:
    """``value`` finite if a number, of the kind of ``default`` (bool, number or string) if given, else of
    the option's annotation (``bool | None``, ``float | None``, …); seeds and devices: ``_check_special``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    _check_special(name, value)
    annotated = _annotated_kind(annotation) if default is None else None
    if annotated is not None and (
        not isinstance(value, annotated) or (isinstance(value, bool) and bool not in annotated)
    ):
        words = " or ".join(w.strip().replace("None", "none") for w in annotation.split("|"))
        raise ValueError(f"{name} must be {words}, got {value!r}")
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int | float):
        ok, kind = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a string"
    else:
        ok, kind = True, ""
    if not ok:
        raise ValueError(f"{name} must be {kind} (default {default!r}), got {value!r}")
