"""Hugging Face Transformers: a ``Trainer`` that trains with a flatsam optimizer.

:class:`SharpnessAwareTrainer` runs both passes of each step (the clean one, and the one at w+ε) in
``training_step``, through the flatsam engine, so every method works, row-selecting ones such as AUSAM
included, except SAF and MESA (their trajectory loss needs more than ``per_sample_loss`` passes; they
are refused before training). Give it a flatsam optimizer (``optimizers=(flatsam.SAM(...), None)``)
or a method by name (``method="ausam", method_options={"keep": 0.5}``): then the Trainer's own
optimizer (``args.optim``, AdamW by default, with its weight-decay groups) becomes the base optimizer.
Then

- the LR schedule (``args.lr_scheduler_type``, warm-up) is built on the flatsam optimizer, whose
  parameter groups are the base optimizer's, so every learning rate it sets is the one the base uses;
- ``args.max_grad_norm`` clips the descent gradient only (the engine's ``max_grad_norm``, applied after
  the pass at w+ε; the Trainer's own clipping then finds nothing to clip);
- ``set_epoch`` is called at every epoch start;
- ``gradient_accumulation_steps`` = k makes one flatsam step over the k micro-batches
  (``step([closures], index=[...])``: one ε from their accumulated clean gradient);
- ``fp16``'s ``GradScaler`` is handed to the engine and a skipped step does not advance the schedule;
  ``bf16`` runs the forwards in autocast as usual.

Per-sample losses come from :meth:`SharpnessAwareTrainer.per_sample_loss` (cross-entropy over
``logits`` and ``labels`` for classification, the mean token cross-entropy per sequence for token-level
logits, shifted for ``…ForCausalLM`` models); override it for other losses. Methods with a per-sample
history (AUSAM) need the dataset index of each row: a dataset column ``index`` (kept by the Trainer and
not passed to the model).

``pip install 'flatsam[transformers]'``
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flatsam.closures import INDEX_HOWTO
from flatsam.engine import SharpnessAware
from flatsam.integrations import require

require("transformers", "transformers", "flatsam.integrations.transformers")
from transformers import Trainer, TrainerCallback  # noqa: E402

from flatsam.integrations.accelerate import SharpnessAwareAcceleratedOptimizer  # noqa: E402
from flatsam.methods import build_method  # noqa: E402

INDEX = "index"


class _TrainerOptimizer(SharpnessAwareAcceleratedOptimizer):
    """The prepared optimizer: ``training_step`` steps it; the Trainer's own ``optimizer.step()`` that
    follows finds the step done and does nothing."""

    def step(self, closure: Any = None, index: Any = None, *, batch_size: int | None = None) -> Any:
        if closure is None and self.__dict__.pop("_flatsam_stepped", False):
            return None
        info = super().step(closure, index, batch_size=batch_size)
        if info is not None:
            self._flatsam_stepped = True
        return info


class _Epochs(TrainerCallback):
    """``set_epoch`` on the flatsam optimizer at the start of every epoch (AUSAM's warm-up and ramp)."""

    def __init__(self, trainer: SharpnessAwareTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._engine().set_epoch(math.floor((state.epoch or 0) + 1e-6))


def _rows(inputs: dict[str, Any], rows: Any, size: int) -> dict[str, Any]:
    """The rows ``rows`` of every batch-shaped tensor of ``inputs``."""
    return {
        k: v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size else v
        for k, v in inputs.items()
    }


def _refuse_trajectory_loss(engine: SharpnessAware) -> None:
    """SAF and MESA add a trajectory loss that needs each row's logits with its dataset index (SAF) or an
    EMA model's forward on the inputs (MESA); ``per_sample_loss`` passes neither, so every step would be
    refused. Refuse them before training instead, saying where they do work."""
    if hasattr(engine, "add_trajectory_loss"):
        raise ValueError(
            f"{type(engine).__name__} adds a trajectory loss to each row's loss (from its logits and dataset "
            "index, or an EMA model's output), which SharpnessAwareTrainer cannot pass through "
            "per_sample_loss: train it with `flatsam train --method saf|mesa`, or step it in your own loop "
            "with a closure that returns opt.add_trajectory_loss(...) (docs/entry-points.md)"
        )


class SharpnessAwareTrainer(Trainer):
    """A ``Trainer`` whose optimizer is a flatsam method; see the module docstring."""

    def __init__(
        self,
        *args: Any,
        method: str | None = None,
        method_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(_Epochs(self))
        self.sam_method, self.sam_method_options = method, dict(method_options or {})
        if self.optimizer is None and method is None:
            raise ValueError(
                "SharpnessAwareTrainer needs a flatsam optimizer (optimizers=(flatsam.SAM(...), None)) or "
                "method= (a registered name, e.g. 'sam' or 'ausam')"
            )

    # -- the optimizer ------------------------------------------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if not isinstance(self.optimizer, SharpnessAware):
            base = super().create_optimizer(model) if self.optimizer is None else self.optimizer
            self.optimizer = build_method(
                self.sam_method or "sam",
                None,
                base,
                model=self.model,
                num_samples=self._num_samples(),
                total_steps=self._total_steps(),
                epochs=math.ceil(self.args.num_train_epochs),
                overrides=self.sam_method_options,
            )
        engine = self.optimizer
        if engine.max_grad_norm is None and self.args.max_grad_norm and self.args.max_grad_norm > 0:
            engine.max_grad_norm = float(self.args.max_grad_norm)
        _refuse_trajectory_loss(engine)
        self._check_index_column(engine)
        return engine

    def _check_index_column(self, engine: SharpnessAware) -> None:
        """Before training starts: a method with a per-sample history needs the dataset's ``index``
        column (read from ``column_names``, or from the keys of the first row)."""
        if not engine.selection.needs_index or self.train_dataset is None:
            return
        columns = getattr(self.train_dataset, "column_names", None)
        if columns is None:
            try:
                first = self.train_dataset[0]  # type: ignore[index]
            except (TypeError, IndexError, KeyError, NotImplementedError):
                return  # an iterable dataset: the first step says it
            columns = list(first) if isinstance(first, dict) else None
        if columns is not None and INDEX not in columns:
            raise ValueError(
                f"{type(engine.selection).__name__} keeps a per-sample history, so every row needs its "
                f"dataset index, but the training dataset has no '{INDEX}' column (it has "
                f"{', '.join(map(str, columns))}): {INDEX_HOWTO}"
            )

    def _num_samples(self) -> int | None:
        dataset = self.train_dataset
        return len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]

    def _total_steps(self) -> int | None:
        if self.args.max_steps and self.args.max_steps > 0:
            return int(self.args.max_steps)
        samples = self._num_samples()
        if samples is None:
            return None
        batches = math.ceil(samples / (self.args.per_device_train_batch_size * self.args.world_size))
        per_epoch = max(1, batches // self.args.gradient_accumulation_steps)
        return per_epoch * math.ceil(self.args.num_train_epochs)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and INDEX not in self._signature_columns:
            self._signature_columns.append(INDEX)  # keep the dataset index column for the engine

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        self._engine()  # the prepared optimizer becomes ours before the scheduler wraps its step
        return super().create_scheduler(num_training_steps, optimizer)

    def _engine(self) -> SharpnessAware:
        optimizer = self.optimizer
        engine = getattr(optimizer, "optimizer", optimizer)
        if not isinstance(engine, SharpnessAware):
            raise TypeError(f"SharpnessAwareTrainer needs a flatsam optimizer, got {type(engine).__name__}")
        if optimizer is not engine and not isinstance(optimizer, _TrainerOptimizer):
            optimizer.__class__ = _TrainerOptimizer  # the AcceleratedOptimizer the Trainer prepared
        return engine

    # -- the step -----------------------------------------------------------------------------------
    def per_sample_loss(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Losses ``[B]`` of the rows of ``inputs`` (which hold ``labels``)."""
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise KeyError("per_sample_loss needs a 'labels' column; override it for other losses")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if logits.dim() == 2 and logits.shape[1] == 1 and labels.is_floating_point():  # regression
            return F.mse_loss(logits.squeeze(1).float(), labels.float(), reduction="none")
        if logits.dim() == 2:
            return F.cross_entropy(logits.float(), labels, reduction="none")
        if type(self.accelerator.unwrap_model(model)).__name__.endswith("ForCausalLM"):
            logits, labels = logits[:, :-1], labels[:, 1:]  # token t predicts token t + 1
        tokens = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
        counted = (labels != -100).sum(1).clamp(min=1)
        return tokens.sum(1) / counted

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """Both passes of the flatsam step (or, inside an accumulation cycle, collect this micro-batch);
        returns this micro-batch's share of the step's mean clean loss, detached."""
        self._engine()  # the prepared optimizer steps flatsam's way
        model.train()
        inputs = self._prepare_inputs(inputs)
        index = inputs.pop(INDEX, None)
        size = len(next(v for v in inputs.values() if isinstance(v, torch.Tensor)))

        def closure(rows: Any) -> torch.Tensor:
            with self.compute_loss_context_manager():
                return self.per_sample_loss(model, _rows(inputs, rows, size))

        info = self.optimizer.step(closure, index=index, batch_size=size)
        if info is None:  # collected for the accumulated step
            return torch.zeros((), device=self.args.device)
        loss = info.loss_tensor if info.loss_tensor is not None else torch.tensor(float("nan"))
        return loss.detach().to(self.args.device)
