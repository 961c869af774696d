"""The engine's side of ``torch.amp.GradScaler``: reading its scale, backing it off, taking over an
``unscale_`` the caller ran before ``first_step``.

The scaler's scale and per-optimizer stage are private attributes of ``GradScaler``; reading them here, in
one place, keeps the engine from waiting for the device (the scale is read as a tensor) and lets a skipped
step back the scale off exactly as an overflow inside ``GradScaler`` would.
"""

from __future__ import annotations

import torch

from flatsam.component import StepContext

GradScaler = torch.amp.GradScaler


def enabled(scaler: GradScaler | None) -> GradScaler | None:
    """``scaler`` when it scales (a disabled ``GradScaler`` is the same as none)."""
    return scaler if scaler is not None and scaler.is_enabled() else None


def read_scale(ctx: StepContext, scaler: GradScaler | None) -> None:
    """Put the scaler's loss scale (a tensor: reading it needs no sync) into ``ctx.grad_scale``."""
    if scaler is not None and scaler._scale is not None:  # noqa: SLF001
        ctx.grad_scale = scaler._scale  # noqa: SLF001


def back_off(scaler: GradScaler) -> None:
    """What ``scaler.update()`` does after an overflow, for a step skipped without ``scaler.step``: the
    scale times the backoff factor, and the growth count restarted (so the scale grows again only after
    ``growth_interval`` good steps)."""
    scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
    tracker = getattr(scaler, "_growth_tracker", None)
    if isinstance(tracker, torch.Tensor):
        tracker.fill_(0)


def take_unscaled(scaler: GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """Whether the caller ran ``scaler.unscale_(optimizer)`` since the last ``update`` (to clip the clean
    gradient before ``first_step``, say). If so the scaler forgets it: the clean gradient is read as
    unscaled, and ``scaler.step(optimizer)`` then unscales and checks the descent gradient itself."""
    states = getattr(scaler, "_per_optimizer_states", None)
    state = None if states is None else states.get(id(optimizer))
    stage = None if state is None else state.get("stage")
    if stage is None or getattr(stage, "name", "") != "UNSCALED":
        return False
    del states[id(optimizer)]  # a fresh (READY) state on the scaler's next use
    return True
