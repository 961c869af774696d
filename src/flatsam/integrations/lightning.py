"""Lightning: a LightningModule mixin that runs a flatsam optimizer by manual optimization for you.

Mix :class:`SharpnessAwareMixin` in front of ``LightningModule`` and implement ``sam_losses(batch, rows)``
(per-sample losses of those batch rows); ``configure_optimizers`` returns a flatsam optimizer (with LR
schedulers, as usual). The mixin then

- switches Lightning to manual optimization and lets the engine run the passes it needs
  (``training_step`` calls :meth:`SharpnessAwareMixin.sam_step`), so row-selecting methods such as AUSAM
  work; the dataset indices come from ``sam_index(batch)`` (the third element of an ``(x, y, index)`` batch
  from :class:`flatsam.data.IndexedDataset`);
- counts each step through Lightning's ``LightningOptimizer`` hooks, so ``trainer.global_step`` and
  ``max_steps`` behave as in automatic optimization;
- calls ``set_epoch`` on the flatsam optimizer at every epoch start (AUSAM's warm-up and ramp);
- steps the LR schedulers of ``configure_optimizers`` (``interval`` "step" or "epoch", ``frequency``,
  ``ReduceLROnPlateau`` with its ``monitor``), which Lightning leaves to you in manual optimization;
- under a mixed-precision plugin (``precision="bf16-mixed"`` or ``"16-mixed"``) the closure runs in the
  plugin's autocast and ``16-mixed``'s ``GradScaler`` is handed to the engine (scale, unscale, skip on
  overflow, update).

Lightning's checkpoints hold the optimizer's ``state_dict``, which for a flatsam optimizer is the full
state (base optimizer, counters, AUSAM's history), so ``trainer.fit(ckpt_path=...)`` resumes it exactly.
Gradient clipping: pass ``max_grad_norm=`` to the flatsam optimizer (it clips the descent gradient);
Lightning's ``gradient_clip_val`` is not available in manual optimization.

``pip install 'flatsam[lightning]'``
"""

from __future__ import annotations

from typing import Any

import torch

from flatsam.engine import SharpnessAware, StepInfo
from flatsam.integrations import require

try:  # the ``lightning`` package, else the standalone ``pytorch_lightning``
    require("lightning.pytorch", "lightning", "flatsam.integrations.lightning")
except ImportError:
    require("pytorch_lightning", "lightning", "flatsam.integrations.lightning")


def sharpness_aware(optimizer: Any) -> SharpnessAware:
    """The flatsam optimizer behind ``optimizer`` (a ``LightningOptimizer``, or the optimizer itself)."""
    engine = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(engine, SharpnessAware):
        raise TypeError(
            f"configure_optimizers must return a flatsam optimizer (e.g. flatsam.SAM(...)), got "
            f"{type(engine).__name__}"
        )
    return engine


class SharpnessAwareMixin:
    """Put in front of ``LightningModule``: ``class Net(SharpnessAwareMixin, L.LightningModule)``.

    Implement :meth:`sam_losses`; override :meth:`sam_index` for batches that are not ``(x, y, index)``.
    Overriding ``on_train_epoch_start``/``on_train_epoch_end``, call ``super()`` there.
    """

    @property
    def automatic_optimization(self) -> bool:
        """Always False: the flatsam engine runs the forward and backward passes."""
        return False

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        if value:
            raise ValueError("automatic_optimization must stay False with SharpnessAwareMixin")

    def sam_losses(self, batch: Any, rows: torch.Tensor | slice) -> torch.Tensor:
        """Per-sample losses of the rows ``rows`` of ``batch`` (a LongTensor of positions, or
        ``slice(None)`` for all of them), e.g.
        ``F.cross_entropy(self(x[rows]), y[rows], reduction="none")``."""
        raise NotImplementedError(
            f"{type(self).__name__} must define sam_losses(self, batch, rows) -> per-sample losses"
        )

    def sam_index(self, batch: Any) -> torch.Tensor | None:
        """Dataset indices of the batch rows: the last element of an ``(x, y, index)`` batch
        (:class:`flatsam.data.IndexedDataset`), else ``None`` (fine for methods that need no history)."""
        if isinstance(batch, list | tuple) and len(batch) == 3:
            index = batch[2]
            if isinstance(index, torch.Tensor) and index.dim() == 1 and not index.is_floating_point():
                return index
        return None

    def sam_step(self, batch: Any) -> StepInfo:
        """One step of the flatsam optimizer on ``batch``, counted by Lightning, schedulers stepped."""
        optimizer = self.optimizers()  # type: ignore[attr-defined]
        if isinstance(optimizer, list):
            raise TypeError(
                f"SharpnessAwareMixin drives one optimizer; configure_optimizers gave {len(optimizer)}"
            )
        engine = sharpness_aware(optimizer)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # type: ignore[attr-defined]
        hooks = optimizer if hasattr(optimizer, "_on_before_step") else None
        if hooks is not None:
            hooks._on_before_step()  # Lightning's step progress: global_step, max_steps
        info = engine.step(
            lambda rows: self.sam_losses(batch, rows), index=self.sam_index(batch), scaler=scaler
        )
        if hooks is not None:
            hooks._on_after_step()
        self._step_schedulers("step")
        return info

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        """:meth:`sam_step`, logging ``train_loss`` (mean clean loss) and ``train_cost`` (in SGD steps)."""
        info = self.sam_step(batch)
        if info.loss_tensor is not None:
            self.log("train_loss", info.loss_tensor, prog_bar=True)  # type: ignore[attr-defined]
        self.log("train_cost", info.cost)  # type: ignore[attr-defined]
        return info.loss_tensor

    def on_train_epoch_start(self) -> None:
        optimizers = self.optimizers()  # type: ignore[attr-defined]
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            sharpness_aware(optimizer).set_epoch(self.current_epoch)  # type: ignore[attr-defined]

    def on_train_epoch_end(self) -> None:
        self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        """Step the schedulers of ``interval`` as Lightning's automatic optimization would."""
        trainer = self.trainer  # type: ignore[attr-defined]
        count = trainer.global_step if interval == "step" else trainer.current_epoch + 1
        for config in trainer.lr_scheduler_configs:
            if config.interval != interval or count % config.frequency:
                continue
            if not config.reduce_on_plateau:
                config.scheduler.step()
                continue
            value = trainer.callback_metrics.get(config.monitor)
            if value is None:
                raise KeyError(
                    f"ReduceLROnPlateau monitors {config.monitor!r}, not logged; logged: "
                    f"{sorted(trainer.callback_metrics)}"
                )
            config.scheduler.step(value)
