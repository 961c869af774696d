"""Hugging Face Accelerate: step a flatsam optimizer through ``AcceleratedOptimizer``.

``opt = prepare(accelerator, flatsam.SAM(...))`` (or ``prepare(accelerator, opt)`` on an optimizer that
``accelerator.prepare`` already wrapped) gives an ``AcceleratedOptimizer`` whose ``step`` takes flatsam's
``closure(rows)`` with ``index=``/``batch_size=``:

    with accelerator.accumulate(model):
        info = opt.step(lambda rows: F.cross_entropy(model(x[rows]), y[rows], reduction="none"), index=index)

Accelerate's gradient accumulation is kept: inside ``accelerator.accumulate`` the micro-batches of a
cycle are collected (``step`` returns ``None`` for them) and the last one runs one flatsam step over all
of them (``step([closures], index=[indices])``: one ε from their accumulated clean gradient, the descent
accumulated at w+ε). Accelerate's ``GradScaler`` (``mixed_precision="fp16"``) is handed to the engine,
and ``step_was_skipped`` reports a skipped step, so a prepared LR scheduler does not advance on it.
Under ``mixed_precision="bf16"`` the prepared model's forward runs in autocast as usual. A zero-argument
closure or ``step()`` after ``first_step`` (davda54/sam style) goes through Accelerate's own ``step``.

``pip install 'flatsam[accelerate]'``
"""

from __future__ import annotations

from typing import Any

from flatsam.closures import takes_rows
from flatsam.engine import SharpnessAware, StepInfo
from flatsam.integrations import require

_accelerate = require("accelerate", "accelerate", "flatsam.integrations.accelerate")
_optimizer = require("accelerate.optimizer", "accelerate", "flatsam.integrations.accelerate")


class SharpnessAwareAcceleratedOptimizer(_optimizer.AcceleratedOptimizer):
    """An ``AcceleratedOptimizer`` around a flatsam optimizer whose ``step`` forwards ``index=`` and
    ``batch_size=`` and turns Accelerate's accumulation cycle into one multi-closure step."""

    def step(  # type: ignore[override]
        self, closure: Any = None, index: Any = None, *, batch_size: int | None = None
    ) -> StepInfo | None:
        if closure is None or not takes_rows(closure):
            return super().step(closure)
        pending = self.__dict__.setdefault("_flatsam_pending", [])
        pending.append((closure, index, batch_size))
        if not self.gradient_state.sync_gradients:
            return None
        self._flatsam_pending = []
        closures, indices, sizes = (list(part) for part in zip(*pending, strict=True))
        if len(closures) == 1:
            info = self.optimizer.step(closures[0], index=indices[0], batch_size=sizes[0], scaler=self.scaler)
        else:
            info = self.optimizer.step(
                closures,
                index=None if all(i is None for i in indices) else indices,
                batch_size=None if all(b is None for b in sizes) else sizes,
                scaler=self.scaler,
            )
        self._is_overflow = info.skipped
        return info


def prepare(accelerator: Any, optimizer: Any) -> SharpnessAwareAcceleratedOptimizer:
    """``optimizer`` (a flatsam optimizer, or the ``AcceleratedOptimizer`` that ``accelerator.prepare``
    made of one) as a :class:`SharpnessAwareAcceleratedOptimizer` registered with ``accelerator`` (so
    ``save_state``/``load_state`` include it). The engine's ``model`` becomes its prepared (e.g. DDP)
    wrapper, so the engine's ascent pass can skip the all-reduce."""
    if not isinstance(optimizer, _optimizer.AcceleratedOptimizer):
        optimizer = accelerator.prepare_optimizer(optimizer)
    engine = optimizer.optimizer
    if not isinstance(engine, SharpnessAware):
        raise TypeError(
            f"prepare needs a flatsam optimizer (e.g. flatsam.SAM(...)), got {type(engine).__name__}"
        )
    optimizer.__class__ = SharpnessAwareAcceleratedOptimizer  # same state; only step() differs
    # an LR scheduler made before wraps the old step() on the instance: drop that wrapper (create the
    # schedulers after prepare() to keep their step-order check)
    optimizer.__dict__.pop("step", None)
    for model in accelerator._models:  # noqa: SLF001  (the models accelerator.prepare wrapped)
        if engine.model is not None and accelerator.unwrap_model(model) is engine.model:
            engine.model = model
    return optimizer
