"""Checks of values where they enter the library: pure functions that raise ``ValueError``/``TypeError``
with a message naming the value and saying what to do.

They take plain values (no engine, no model) so that any entry point can call them: the method
registry (options), the harness (checkpoints), and the engine's step (``param_groups`` and the row
``index`` at every step, component state at load).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

#: Seeds are 64-bit: torch's generators take at most 2**64 - 1; flatsam derives ``seed + 1`` from some.
MAX_SEED = 2**63 - 2


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_seed(name: str, value: Any) -> None:
    """``value`` is ``None`` or an integer in ``[0, MAX_SEED]`` (not a bool, a float or a string)."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in [0, {MAX_SEED}] or none, got {value!r}")


def check_flag(name: str, value: Any) -> None:
    """``value`` is ``True``, ``False`` or ``None`` (a string such as ``"maybe"`` is refused)."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be true, false or none, got {value!r}")


def check_device(name: str, value: Any) -> None:
    """``value`` is ``None`` or a device torch parses (``cpu``, ``cuda``, ``cuda:N``) that is present."""
    if value is None:
        return
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must be a device name (cpu, cuda, cuda:N) or none, got {value!r}") from None
    if device.type == "cuda" and not (
        torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    ):
        raise ValueError(f"{name}: device {value!r} is not available here; use cpu or none")


def check_param_groups(param_groups: Iterable[Mapping[str, Any]]) -> None:
    """Before a step: every group's ``lr`` finite and >= 0, its ``rho`` (where present) finite and >= 0.
    An LR scheduler or user code that wrote ``inf`` or a negative ρ would otherwise be used as is."""
    for number, group in enumerate(param_groups):
        for key in ("lr", "rho"):
            if key not in group:
                continue
            value = group[key]
            if isinstance(value, torch.Tensor):
                if value.device.type != "cpu" or value.numel() != 1:
                    continue  # reading an accelerator's tensor would wait for the device
                value = value.item()
            if not _real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"param_groups[{number}][{key!r}] is {value!r}; it must be a finite number >= 0 "
                    "(check the LR scheduler or the code that set it)"
                )


def check_index(index: Any, rows: int, name: str = "index") -> None:
    """At every step: ``index`` is a 1-d integer tensor with one entry per row of the batch (``rows``,
    the length of the closure's batch), not only in a method's warm-up."""
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of dataset indices, got {type(index).__name__}")
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers (dataset indices), got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"{name} must be 1-d, got shape {tuple(index.shape)}")
    if len(index) != rows:
        raise ValueError(
            f"{name} has {len(index)} entries but the batch has {rows} rows; give one dataset index per "
            "row (flatsam.data.IndexedDataset yields them)"
        )


def _state_value_problem(current: Any, value: Any) -> str | None:
    """Why ``value`` cannot replace ``current`` in a component's state (``None``: it can). A number and a
    one-element tensor stand for each other (states written before a field moved to the device load)."""
    if isinstance(current, torch.Tensor) and current.numel() == 1 and _real(value):
        current = current.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1 and _real(current):
        value = value.item()
    if isinstance(current, torch.Tensor):
        if not isinstance(value, torch.Tensor):
            return f"is a {type(value).__name__}, not a tensor"
        if current.dtype.is_floating_point != value.dtype.is_floating_point:
            return f"has dtype {value.dtype}, not one like {current.dtype}"
        if current.numel() and value.shape != current.shape:
            return f"has shape {tuple(value.shape)}, not {tuple(current.shape)}"
        if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            return "holds NaN or infinite values"
        return None
    if isinstance(current, bool):
        return None if isinstance(value, bool) else f"is {value!r}, not true or false"
    if _real(current):
        if not _real(value) or (isinstance(current, int) and not isinstance(value, int)):
            return f"is {value!r}, not {'an integer' if isinstance(current, int) else 'a number'}"
        return None if math.isfinite(value) else f"is {value!r}, not finite"
    return None  # None, strings, lists: the component's own load decides


def check_component_state(kind: str, current: Mapping[str, Any], loaded: Any) -> None:
    """A component state about to be loaded (``loaded``) against the component's own ``state_dict()``
    (``current``): a dict with every field, tensors where tensors are (same kind of dtype, same shape
    when the current one is not empty yet, finite), numbers where numbers are; e.g. AUSAM's
    ``dlp_sum = 5.0`` in place of its per-sample tensor is refused here, not at a later step."""
    if not isinstance(loaded, Mapping):
        raise TypeError(f"{kind} state must be a dict, got {type(loaded).__name__}")
    missing = sorted(set(current) - set(loaded))
    if missing:
        raise ValueError(f"{kind} state lacks {missing}")
    for name, value in current.items():
        problem = _state_value_problem(value, loaded[name])
        if problem:
            raise ValueError(f"{kind} state: {name} {problem} (a state_dict of another setting, or edited?)")
