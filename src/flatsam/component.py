"""What every part of the engine shares: the step context, state for checkpoints, a private generator."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from flatsam.validate import check_component_state, check_seed


@dataclass
class StepContext:
    """What a component may know about the step being planned.

    ``step`` counts the calls of ``SharpnessAware.step`` before this one (skipped steps included),
    ``epoch`` is the last value given to ``set_epoch``, ``index`` the dataset indices of the batch rows
    (``None`` when the caller gave none), ``rho`` the radius of the first
    parameter group, ``grad_scale`` the loss scale of a ``GradScaler`` (1.0 without).
    """

    step: int
    epoch: int
    batch_size: int  # None only inside a step whose size is read from its first pass
    index: torch.Tensor | None = None
    rho: float = 0.0
    grad_scale: float | torch.Tensor = 1.0


@dataclass
class Outcome:
    """What a finished sharpness-aware step leaves for the components to learn from.

    Gradients are lists aligned with ``SharpnessAware.params`` (``None`` where a parameter had no
    gradient) and are unscaled. ``clean_grads`` is filled only when a component asked for it
    (``needs_clean_grads``); ``descent_grads`` are the gradients the base optimizer is about to use.
    """

    ascent: bool
    ascent_rows: torch.Tensor
    descent_rows: torch.Tensor
    loss_before: torch.Tensor  # per-sample, clean pass, on ascent_rows
    loss_after: torch.Tensor | None  # per-sample, perturbed pass, on descent_rows (None without ascent)
    clean_grad_norm: torch.Tensor  # global L2 norm of the (unscaled) clean gradient
    clean_grads: list[torch.Tensor | None] | None = None
    descent_grads: list[torch.Tensor | None] = field(default_factory=list)
    found_inf: torch.Tensor | None = None


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A private generator; without a seed it is seeded from torch's global RNG (so ``torch.manual_seed``
    still makes a run reproducible) without disturbing anything else that draws from it later."""
    check_seed("seed", seed)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return copy.deepcopy(value)


class Component:
    """Base of schedules, selections, perturbations and reuse rules.

    Subclasses list in ``state_fields`` the attributes that change during training; ``state_dict`` copies
    them (and the state of ``self.generator`` if there is one), ``load_state_dict`` puts them back, so a
    resumed run continues bit for bit. ``needs_clean_grads`` asks the engine to keep a copy of the clean
    gradient of ascent steps for ``record``.

    ``skip_on_device`` promises that the component's part of a step may run before the engine knows
    whether the step is skipped for a non-finite loss or gradient: it draws no random numbers after the
    clean pass, and its ``record`` leaves its state unchanged wherever ``outcome.found_inf`` is set,
    without reading that flag on the host. A subclass inherits the promise; one that draws after the
    clean pass or records otherwise sets ``skip_on_device = False``. When every component promises it,
    the engine never waits for the flag (see :mod:`flatsam.skipping`); otherwise it reads the flag after
    each pass, as ``GradScaler`` does for an optimizer without a fused kernel.
    """

    state_fields: ClassVar[tuple[str, ...]] = ()
    needs_clean_grads: ClassVar[bool] = False
    skip_on_device: ClassVar[bool] = False
    generator: torch.Generator | None = None

    @classmethod
    def skips_on_device(cls) -> bool:
        """Whether the class (or the base class it inherits from) declares ``skip_on_device``."""
        return bool(cls.skip_on_device)

    def set_epoch(self, epoch: int) -> None:
        """Called by ``SharpnessAware.set_epoch`` at the start of every epoch."""

    def correct_descent(self, ctx: StepContext, outcome: Outcome) -> None:
        """On a step that ascended: change the descent gradient in place before the base optimizer uses it
        (GSAM's surrogate-gap correction fits here). Called with the weights restored, the gradients
        unscaled and not yet clipped; ``outcome.descent_grads`` are the parameters' ``.grad`` tensors,
        ``outcome.clean_grads`` is filled when a component asked for it (``needs_clean_grads``). On a
        step whose verdict is deferred it must read nothing on the host."""

    def record(self, ctx: StepContext, outcome: Outcome) -> None:
        """Learn from a finished step: one not skipped, or, with ``outcome.found_inf`` set, one that is
        undone where the flag is set (a ``skip_on_device`` component must then change nothing)."""

    def skipped(self, ctx: StepContext) -> None:
        """A step skipped on the host instead of ``record``: drop what this step's passes left behind."""

    def state_dict(self) -> dict[str, Any]:
        state = {name: _clone(getattr(self, name)) for name in self.state_fields}
        state["kind"] = type(self).__name__
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what ``state_dict`` saved; the state of another component class, or a tensor of another
        shape (e.g. AUSAM's per-sample history of a dataset of another size), is a ``ValueError``."""
        me = type(self).__name__
        if not isinstance(state, dict):
            raise TypeError(f"{me}.load_state_dict: a state must be a dict, got {type(state).__name__}")
        if state.get("kind", me) != me:
            raise ValueError(f"{me}.load_state_dict: got the state of a {state['kind']} (another method?)")
        missing = [name for name in self.state_fields if name not in state]
        if missing:
            raise KeyError(f"{me}.load_state_dict: missing {missing}")
        check_component_state(me, {k: v for k, v in self.state_dict().items() if k != "kind"}, state)
        for name in self.state_fields:
            current = getattr(self, name)
            value = state[name]
            if isinstance(current, torch.Tensor) and isinstance(value, torch.Tensor):
                if current.numel() and value.shape != current.shape:
                    raise ValueError(
                        f"{me}.load_state_dict: {name} has shape {tuple(value.shape)}, this one "
                        f"{tuple(current.shape)} (a state for another num_samples or setting?)"
                    )
                value = value.to(device=current.device, dtype=current.dtype)
            setattr(self, name, _clone(value))
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
