"""The sharpness-aware engine: each step builds a plan of passes (:mod:`flatsam.plan`) and one loop walks
it; the base optimizer steps at the end (:class:`SharpnessAware`)."""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import sys
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from flatsam import amp, plan
from flatsam.closures import (
    INDEX_HOWTO,
    Closure,
    checked_index,
    checked_sizes,
    per_micro_batch,
    takes_rows,
)
from flatsam.component import Component, Outcome, StepContext
from flatsam.perturbation import Perturbation, SAMPerturbation, total_norm
from flatsam.plan import Pass
from flatsam.reuse import NoReuse, Reuse
from flatsam.schedule import Always, Schedule
from flatsam.selection import AllRows, RowPlan, Selection, all_rows
from flatsam.skipping import Verdict, clones, masked_step, unfused_hint
from flatsam.stepinfo import Counter, StepInfo
from flatsam.two_step import TwoStepAPI
from flatsam.validate import check_flag, check_param_groups
from flatsam.walk import Micro, PlanWalker, Shared, Step, grad_marks, running_stats_frozen

__all__ = ["SharpnessAware", "StepInfo", "running_stats_frozen"]

#: Keywords of other SAM libraries that would reach the base optimizer as a bare TypeError, and what to
#: use instead (pytorch_optimizer's SAM family; davda54/sam's ``adaptive`` is accepted by ``flatsam.SAM``)
FOREIGN_KEYWORDS = {
    "use_gc": "flatsam has no gradient centralization; drop use_gc (pytorch_optimizer)",
    "gc_conv_only": "flatsam has no gradient centralization; drop gc_conv_only (pytorch_optimizer)",
    "perturb_eps": "pass perturbation=flatsam.perturbation.SAMPerturbation(eps=...) (pytorch_optimizer's "
    "perturb_eps is the ε added to ‖g‖)",
    "adaptive": "use flatsam.SAM(..., adaptive=True) (davda54/sam's rule) or flatsam.ASAM (the official one)",
    "rho_scheduler": "set param_groups[i]['rho'] from your schedule, or use flatsam.GSAM (ρ follows the lr)",
}


class SharpnessAware(TwoStepAPI, PlanWalker, torch.optim.Optimizer):
    """A sharpness-aware optimizer assembled from four choices around a base optimizer.

    ``schedule`` (does this step ascend?), ``selection`` (which rows enter each pass), ``perturbation``
    (the ascent ε; it may also correct the descent gradient, as GSAM does) and ``reuse`` (how a step
    without ascent borrows from the last one); the defaults give SAM. The base optimizer is a class plus
    ``**base_kwargs`` or an instance (``base_optimizer`` attribute, also ``base``); ``param_groups`` and
    ``state`` are shared with it, so LR schedulers work on either object. ``rho`` (positional third, as
    in davda54/sam) is per parameter group; a group with ``perturb=False`` is trained but takes no part in
    the ascent (no ε, not in its norm).

    Each step is a plan — a list of passes, see :mod:`flatsam.plan` and :meth:`plan` — that one loop
    walks, whichever way the step is called:

    - ``step(closure, index=None)``: ``closure(rows)`` gets a LongTensor of batch positions and returns
      per-sample losses for those rows; the engine reduces, back-propagates and may call it several
      times. ``index`` holds the dataset indices of the batch rows (history-based selections need it).
    - ``step([closure_1, …, closure_k], index=[index_1, …, index_k])``: gradient accumulation, one step
      over k micro-batches.
    - ``step(closure)`` with a zero-argument closure: davda54/sam's semantics.
    - ``first_step`` / ``second_step``: davda54/sam's two-step API, for loops that own the passes; the
      caller's passes are the plan's clean and descent passes.

    With ``model=`` only the first forward of each (micro-)batch updates BatchNorm running statistics
    (in the two-step API: they stay frozen from ``first_step`` to ``second_step``), and under DDP the
    ascent pass runs in ``no_sync``. With ``scaler=`` (a ``GradScaler``) the step also unscales, calls
    ``scaler.step`` and ``scaler.update``; ``scaler.step(opt)`` after ``first_step`` works too. A
    non-finite loss or gradient in any pass skips the step and leaves the weights and the base optimizer
    exactly as they were (see :mod:`flatsam.skipping`).

    Host synchronisations (``sync_free``; by default on when the parameters live on an accelerator, off
    on the CPU, where a read costs nothing): ``step(closure(rows))`` then reads nothing on the host when
    every component declares ``skip_on_device`` (those of SGD, SAM, ASAM, AUSAM, uniform sampling,
    SS-SAM, LookSAM and ARSAM; ARSAM still reads its window statistics once per window) and no
    ``GradScaler`` is given: the finiteness flag masks the base optimizer's step and the components'
    records on the device (read only on the step that creates the optimizer state, usually the first)
    and is read when ``StepInfo.skipped`` is. A base optimizer that takes GradScaler's ``found_inf``
    itself (``fused=True`` in torch) skips on the flag; any other is masked by a copy of its state, a
    second parameter-sized copy beside the weights SAM saves. Otherwise the flag is read after each
    pass: always with ``sync_free=False``, for AE-SAM (and AE-LookSAM), which decides its ascent on the
    host from the clean gradient's norm, under a ``GradScaler``, which reads its own flag, and in
    ``first_step``/``second_step``, which return bools. Read on the host, a failed check skips at once
    and keeps no copy of the optimizer state.
    """

    # GradScaler.step(opt) hands this optimizer the scale and the inf check instead of skipping its step()
    # on an overflow, so that a perturbed model is always restored (see ``_take_scaler_flags``)
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Any,
        base_optimizer: type[torch.optim.Optimizer] | torch.optim.Optimizer = torch.optim.SGD,
        rho: float = 0.05,
        *,
        schedule: Schedule | None = None,
        selection: Selection | None = None,
        perturbation: Perturbation | None = None,
        reuse: Reuse | None = None,
        model: nn.Module | None = None,
        max_grad_norm: float | None = None,
        check_finite: bool = True,
        sync_free: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        finite_rho = isinstance(rho, numbers.Real) and not isinstance(rho, bool) and math.isfinite(rho)
        if not (finite_rho and rho >= 0):
            raise ValueError(f"rho must be >= 0 and finite, got {rho!r}")
        check_flag("sync_free", sync_free)
        check_flag("check_finite", check_finite)
        if max_grad_norm is not None and not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be > 0 and finite, or None, got {max_grad_norm}")
        self._shared = Shared()
        self._init_base(params, base_optimizer, rho, base_kwargs)
        self.schedule = schedule or Always()
        self.selection = selection or AllRows()
        self.perturbation = perturbation or SAMPerturbation()
        self.reuse = reuse or NoReuse()
        self.model = model
        self.max_grad_norm = max_grad_norm
        self.check_finite = check_finite
        self.sync_free = sync_free
        self._fused_hinted = False  # the hint of an unfused base, once

    def _init_base(self, params: Any, base: Any, rho: float, base_kwargs: dict[str, Any]) -> None:
        """Share ``param_groups`` and ``state`` with the base optimizer, made here from a class or given."""
        if isinstance(base, torch.optim.Optimizer):
            if base_kwargs:
                raise TypeError(
                    f"base optimizer keywords {sorted(base_kwargs)} given with an optimizer "
                    "instance; pass the class instead, or configure the instance"
                )
            if params is not None and {id(p) for p in _flatten(params)} != {
                id(p) for g in base.param_groups for p in g["params"]
            }:
                raise ValueError(
                    "params differ from the parameters of the given base optimizer instance; "
                    "pass params=None to use the instance's parameters"
                )
            super().__init__(base.param_groups, {"rho": rho})
            self.base = base
        elif isinstance(base, type) and issubclass(base, torch.optim.Optimizer):
            _refuse_foreign_keywords(base, base_kwargs)
            super().__init__(params, {"rho": rho})
            self.base = base(self.param_groups, **base_kwargs)
        else:
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer class or instance, got {base!r}")
        self._alias_base()

    # -- plumbing -----------------------------------------------------------------------------------
    def _alias_base(self) -> None:
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        self.defaults = {**self.base.defaults, **self.defaults}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group.setdefault("rho", self.defaults["rho"])
        if "base" in self.__dict__:
            self.base.add_param_group(param_group)
        else:
            super().add_param_group(param_group)

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        """The base optimizer (davda54/sam's name; the same object as ``base``)."""
        return self.base

    @property
    def step_count(self) -> int:
        """Steps taken (skipped ones included); shared with wrapper copies of this optimizer."""
        return self._shared.step_count

    @step_count.setter
    def step_count(self, value: int) -> None:
        self._shared.step_count = int(value)

    @property
    def epoch(self) -> int:
        """The last value given to ``set_epoch``; shared with wrapper copies of this optimizer."""
        return self._shared.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._shared.epoch = int(value)

    @property
    def _backup(self) -> dict[nn.Parameter, torch.Tensor]:
        return self._shared.backup

    @property
    def components(self) -> dict[str, Component]:
        return {
            "schedule": self.schedule,
            "selection": self.selection,
            "perturbation": self.perturbation,
            "reuse": self.reuse,
        }

    @property
    def keeps_clean_grads(self) -> bool:
        """Whether a component learns from the clean gradient of ascent steps (LookSAM, ARSAM, GSAM)."""
        return any(c.needs_clean_grads for c in self.components.values())

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    @property
    def rho(self) -> float:
        return float(self.param_groups[0]["rho"])

    def set_epoch(self, epoch: int) -> None:
        """Tell the engine (and every component) which epoch starts, counting from 0: drives warm-ups
        and ramps (AUSAM's warm-up is epoch 0)."""
        self.epoch = int(epoch)
        for component in self.components.values():
            component.set_epoch(self.epoch)

    def plan(
        self, ascend: bool | None = True, *, micros: int = 1, parts: int = 0, external: bool = False
    ) -> list[Pass]:
        """The passes a step of this method walks when its schedule decides ``ascend`` before the clean
        pass (``None``: after it), see :func:`flatsam.plan.build`."""
        return plan.build(
            self.selection,
            ascend=ascend,
            micros=micros,
            parts=parts,
            keeps_clean_grads=self.keeps_clean_grads,
            external=external,
        )

    def _no_sync(self) -> contextlib.AbstractContextManager:
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if callable(no_sync) else contextlib.nullcontext()

    def _grads(self) -> list[torch.Tensor | None]:
        return [p.grad for p in self.params]

    def _grad_norm(self, ctx: StepContext) -> torch.Tensor:
        """Global L2 norm of the current (unscaled) gradients."""
        return total_norm([g for g in self._grads() if g is not None]) / ctx.grad_scale

    def _context(self, batch_size: int | None, index: torch.Tensor | None = None) -> StepContext:
        """The context of a new step (its ``param_groups`` checked: ``lr`` and ``rho`` finite, >= 0);
        counts it."""
        check_param_groups(self.param_groups)
        ctx = StepContext(
            step=self.step_count, epoch=self.epoch, batch_size=batch_size, index=index, rho=self.rho
        )  # type: ignore[arg-type]
        self.step_count += 1
        return ctx

    def _hint_fused(self) -> None:
        """Say once per optimizer that an unfused base costs a masked copy on every sync-free step."""
        if not self._fused_hinted:
            self._fused_hinted = True
            hint = unfused_hint(self.base)
            if hint is not None:
                warnings.warn(hint, stacklevel=5)

    def _warn_if_grads_present(self) -> None:
        marks = grad_marks(self.params)
        if any(m is not None for m in marks) and marks != self._shared.left:
            warnings.warn(
                "step(closure(rows)) found gradients in .grad from a backward() since the last step; they "
                "are discarded (the step computes its own). Call zero_grad() before, or, for a loop that "
                "runs the first forward/backward itself (davda54/sam style), pass a closure without "
                "arguments (or use first_step/second_step)",
                stacklevel=4,
            )

    def _verdict(self, ascend: bool | None, scaler: torch.amp.GradScaler | None) -> Verdict:
        """How ``step(closure(rows))`` checks finiteness: deferred to the device when asked to (see
        ``_keeps_flags_on_device``) and nothing before the update needs the answer, i.e. the ascent is
        decided before the clean pass (not AE-SAM), no ``GradScaler`` reads its own flag, and every
        component declares ``skip_on_device``."""
        defer = (
            self.check_finite
            and self._keeps_flags_on_device()
            and ascend is not None
            and scaler is None
            and all(type(c).skips_on_device() for c in self.components.values())
        )
        return Verdict(defer=defer)

    def _keeps_flags_on_device(self) -> bool:
        """``sync_free``, or by default whether the parameters live off the CPU (a host read there stalls
        the device's queue; on the CPU it costs nothing, while masking keeps a copy of the state)."""
        if self.sync_free is not None:
            return self.sync_free
        return any(p.device.type != "cpu" for p in self.params)

    @torch.no_grad()
    def _perturb(self, ctx: StepContext, *, free_grads: bool = True) -> None:
        """w ← w + ε over the parameter groups that take part in the ascent: a group with
        ``perturb=False`` (e.g. LSQ step sizes, see :mod:`flatsam.quant`) gets no ε and no share of
        its norm. The weights are saved and moved by ``torch._foreach_*`` kernels.

        ``free_grads``: the clean gradient, spent once ε is computed, is freed before the weights are
        saved, so that the gradient, ε and the saved weights are never alive together (at most two
        parameter-sized copies, as in a hand-written loop; a component that keeps the clean gradient has
        copied it before)."""
        groups = [group for group in self.param_groups if group.get("perturb", True)]
        pairs = self.perturbation.epsilon(ctx, groups)
        if free_grads:
            self.zero_grad(set_to_none=True)
        if not pairs:
            return
        weights = [p.detach() for p, _ in pairs]
        self._backup.update(zip([p for p, _ in pairs], clones(weights), strict=True))
        torch._foreach_add_(weights, [eps for _, eps in pairs])

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights saved before the perturbation, for every perturbed parameter (whether or
        not it has a gradient now)."""
        if self._backup:
            torch._foreach_copy_([p.detach() for p in self._backup], list(self._backup.values()))
        self._backup.clear()

    # -- the step -----------------------------------------------------------------------------------
    def step(  # type: ignore[override]
        self,
        closure: Closure | Callable[[], Any] | list[Closure] | None = None,
        index: torch.Tensor | list[torch.Tensor] | None = None,
        *,
        batch_size: int | list[int] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> StepInfo:
        """One sharpness-aware step; returns its ``StepInfo`` (``float(info)`` is its loss).

        - ``closure(rows)`` → per-sample losses of those batch rows. ``index`` (dataset indices of the
          rows) or ``batch_size`` give B; without either, the first pass gets ``rows = slice(None)``
          (every row) and B is the number of losses it returns, which works for every selection whose
          first pass covers the whole batch (SAM, ASAM, K-SAM, ESAM's selection, the schedules); those
          that draw rows first (uniform, micro-batch, m-sharpness) need ``index`` or ``batch_size``, and
          those that keep a per-sample history (AUSAM, InfoBatch) need ``index`` on every step. A pass
          over the whole batch in order always gets ``slice(None)``. Gradients found in ``.grad`` from a
          backward of the caller are discarded with a warning.
        - ``[closure_1, …, closure_k]`` with ``index=[index_1, …, index_k]`` (or ``batch_size=[B_1, …]``):
          one step over k micro-batches (gradient accumulation). ε comes from the gradient of the mean
          clean loss over all their rows, the descent gradient is that of the mean loss at w+ε. Each
          selection draws per micro-batch (AUSAM keeps its history per row), so the step equals one
          whole-batch step only for methods that draw no rows; BatchNorm statistics come from each
          micro-batch's clean pass; under DDP only the last micro-batch's passes synchronise.
        - ``closure()`` with no argument: davda54/sam's semantics. The caller has run the first
          forward/backward (clean gradient in ``.grad``); the engine ascends, calls the closure at w+ε
          (it must zero nothing, compute the loss and call ``backward``), restores and steps; a step
          without ascent (LookSAM, SS-SAM, AE-SAM) does not call it. If ``.grad`` is empty the closure
          runs the clean pass too (the composer/Lightning-automatic style). The step's loss is that of
          the closure's first call. Only for selections that use every row; the others need
          ``closure(rows)``.
        - no closure, right after ``first_step``: ``second_step`` (so ``scaler.step(opt)`` and wrappers
          that call ``optimizer.step()`` work).
        """
        scaler = amp.enabled(scaler)
        if closure is None:
            return self._second_step(scaler) if self._shared.pending is not None else _no_closure()
        closures = self._closures(closure)
        if closures is None:
            return self._step_after_backward(closure, batch_size, scaler)  # type: ignore[arg-type]
        self._refuse_wrapped_call()
        self._warn_if_grads_present()
        step = self._begin(closures, index, batch_size, scaler)
        try:
            if not self._walk(step):
                return self._skip(step)
            return self._update(step)
        finally:
            self.restore()
            self._shared.left = grad_marks(self.params)

    def _closures(self, closure: Any) -> list[Closure] | None:
        """The step's ``closure(rows)`` functions, one per micro-batch (``None``: one zero-argument
        closure, davda54/sam style)."""
        if self._shared.pending is not None:
            raise RuntimeError(
                "step(closure) between first_step() and second_step(): finish the pending step with "
                "second_step() (or step() without a closure) first"
            )
        closures = list(closure) if isinstance(closure, list | tuple) else [closure]
        if not closures:
            raise ValueError("step() got an empty list of closures")
        if all(takes_rows(c) for c in closures):
            return closures
        if len(closures) > 1:
            raise TypeError(
                "gradient accumulation takes closure(rows) functions (per-sample losses), not "
                "zero-argument closures"
            )
        return None

    def _refuse_wrapped_call(self) -> None:
        """``closure(rows)`` reached through a wrapper that would drop or mis-scale passes: a
        ``GradScaler.step(opt, closure)`` (it hands its flags before any pass ran) or Accelerate's plain
        ``AcceleratedOptimizer`` (it calls ``step`` only on the last micro-batch of an accumulation
        cycle, and takes no ``index=``)."""
        if getattr(self, "found_inf", None) is not None:
            raise RuntimeError(
                "GradScaler.step(opt, closure(rows)) steps a flatsam optimizer before its passes ran: call "
                "opt.step(closure, index=index, scaler=scaler) instead (with Accelerate: opt = "
                "flatsam.integrations.accelerate.prepare(accelerator, opt))"
            )
        if _caller_module() == "accelerate.optimizer":
            raise RuntimeError(
                "a flatsam optimizer stepped through accelerator.prepare()'s AcceleratedOptimizer, which "
                "runs step() only on the last micro-batch of each accumulation cycle (the others would be "
                "dropped) and takes no index=: wrap it with opt = flatsam.integrations.accelerate.prepare("
                "accelerator, opt), which makes one flatsam step over every micro-batch of the cycle"
            )

    def _begin(
        self, closures: list[Closure], index: Any, batch_size: Any, scaler: torch.amp.GradScaler | None
    ) -> Step:
        """A new step: its micro-batches, their rows (when known before any pass), the schedule's
        decision and the plan."""
        ctx, micros = self._micro_batches(closures, index, batch_size)
        if not self.selection.needs_scores:
            for micro in micros:
                if micro.ctx.batch_size is not None:  # else planned after the clean pass, which reads B
                    micro.rows = self.selection.plan(micro.ctx, None)
        ascend = self.schedule.decide(ctx)
        rows = [m.rows for m in micros if m.rows is not None]
        if ascend is None and not all(r.same_rows for r in rows):
            raise RuntimeError(
                "a schedule that decides after the clean pass (AE-SAM) needs a selection whose ascent and "
                "descent rows coincide: its clean pass may be the step's only pass"
            )
        parts = max((len(r.parts) for r in rows if r.parts), default=0) if ascend is not False else 0
        if parts and len(micros) > 1:
            raise ValueError(
                "gradient accumulation does not combine with a partitioned selection (m-sharpness): "
                "pass the micro-batches as one batch, the parts are its micro-batches"
            )
        if parts and (ascend is None or self.keeps_clean_grads):
            raise RuntimeError(
                "a partitioned selection (m-sharpness) needs a schedule that decides before the "
                "clean pass and no component that keeps the clean gradient"
            )
        passes = self.plan(ascend, micros=len(micros), parts=parts)
        return Step(ctx, micros, passes, scaler, self._verdict(ascend, scaler), ascend)

    def _micro_batches(
        self, closures: list[Closure], index: Any, batch_size: Any
    ) -> tuple[StepContext, list[Micro]]:
        """The step's context and its micro-batches (one with the step's own context when k = 1)."""
        indices = per_micro_batch(index, len(closures), "index")
        sizes = per_micro_batch(batch_size, len(closures), "batch_size")
        indices = [None if i is None else checked_index(i, b) for i, b in zip(indices, sizes, strict=True)]
        sizes = [len(i) if i is not None else b for i, b in zip(indices, sizes, strict=True)]
        checked_sizes(sizes)
        if self.selection.needs_index and None in indices:
            raise ValueError(
                f"{type(self.selection).__name__} keeps a per-sample history, so every step needs index= "
                f"(the dataset indices of the batch rows), not just batch_size=: {INDEX_HOWTO}"
            )
        if None in sizes and (len(closures) > 1 or self.selection.needs_batch_size):
            what = (
                "gradient accumulation"
                if len(closures) > 1
                else f"{type(self.selection).__name__} (it draws rows before the first pass)"
            )
            raise ValueError(
                f"{what} needs index= (the dataset indices of the batch rows) or batch_size= (a positive "
                f"int{', one per micro-batch' if len(closures) > 1 else ''}), got index=None, batch_size=None"
            )
        if len(closures) == 1:
            ctx = self._context(sizes[0], indices[0])
            return ctx, [Micro(closures[0], ctx)]
        joined = None if any(i is None for i in indices) else torch.cat(indices)
        ctx = self._context(sum(sizes), joined)
        micros = [
            Micro(c, replace(ctx, batch_size=b, index=i))
            for c, b, i in zip(closures, sizes, indices, strict=True)
        ]
        return ctx, micros

    def _outcome(self, step: Step) -> Outcome:
        """What the walked step leaves for the components: its rows, losses and clean gradient."""
        ascend = bool(step.ascend)
        starts = [0]
        for micro in step.micros[:-1]:
            starts.append(starts[-1] + micro.ctx.batch_size)
        plans = [m.rows or _every(m.ctx.batch_size) for m in step.micros]
        if step.parts:
            parts = plans[0].parts or []
            ascent_rows = torch.cat([q.ascent for q in parts])
            descent_rows = torch.cat([q.descent for q in parts])
        else:
            first = [r.ascent if ascend else r.descent for r in plans]  # the clean pass's rows
            ascent_rows = _joined(first, starts)
            descent_rows = _joined([r.descent for r in plans], starts) if ascend else ascent_rows
        return Outcome(
            ascent=ascend,
            ascent_rows=ascent_rows,
            descent_rows=descent_rows,
            loss_before=_cat(step.befores),
            loss_after=_cat(step.afters) if ascend else None,
            clean_grad_norm=torch.stack(step.norms).mean() if step.parts else step.norms[-1],
            clean_grads=step.clean_grads,
        )

    def _step_loss(self, step: Step) -> torch.Tensor | None:
        """The step's clean loss: the mean over the clean rows (over every part, weighted by its rows)."""
        if step.loss is not None or not step.clean_losses:
            return step.loss
        parts = step.micros[0].rows.parts if step.parts else None  # type: ignore[union-attr]
        if not parts or len(step.clean_losses) < len(parts):  # one clean pass, or a part skipped
            return step.clean_losses[-1]
        losses = torch.stack(step.clean_losses)
        sizes = torch.tensor([len(q.ascent) for q in parts], dtype=losses.dtype, device=losses.device)  # type: ignore[union-attr]
        return (losses * sizes).sum() / sizes.sum()

    def _update(self, step: Step) -> StepInfo:
        """Unscale, reuse (steps without ascent) or correct the descent gradient (ascent steps), clip, let
        the components record, step the base. With a deferred verdict the components record under
        ``outcome.found_inf`` and the base optimizer's step is masked by it (``masked_step``, reusing the
        weights saved before the perturbation)."""
        ctx, scaler, outcome = step.ctx, step.scaler, self._outcome(step)
        if scaler is not None:
            scaler.unscale_(self.base)
        if not outcome.ascent:
            self.reuse.apply(ctx, self.params)
        else:
            outcome.descent_grads = self._grads()
            for component in self.components.values():
                component.correct_descent(ctx, outcome)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        outcome.descent_grads = self._grads()
        outcome.found_inf = step.verdict.found_inf
        for component in self.components.values():
            component.record(ctx, outcome)
        if scaler is not None:
            scaler.step(self.base)
            scaler.update()
        elif outcome.found_inf is not None:
            self._hint_fused()
            masked_step(self.base, outcome.found_inf, step.saved)
        else:
            self.base.step()
        ascent_rows = len(outcome.ascent_rows) if outcome.ascent else 0
        return self._info(step, outcome.ascent, ascent_rows, len(outcome.descent_rows))

    def _skip(self, step: Step) -> StepInfo:
        """A step skipped on the host (its verdict holds the reason): weights back, no step, and the
        scale of a ``GradScaler`` backed off as after an overflow; the components drop the step."""
        for component in self.components.values():
            component.skipped(step.ctx)
        self.restore()
        self.zero_grad(set_to_none=True)
        if step.scaler is not None:
            amp.back_off(step.scaler)
        return self._info(step, False, 0, 0)

    def _info(self, step: Step, ascent: bool, ascent_rows: int, descent_rows: int) -> StepInfo:
        total = Counter.sum([m.counter for m in step.micros])
        return StepInfo(
            loss_tensor=self._step_loss(step),
            ran_ascent=ascent,
            ran_ascent_rows=ascent_rows,
            ran_descent_rows=descent_rows,
            forward_passes=total.forward_passes,
            backward_passes=total.backward_passes,
            forward_samples=total.forward_samples,
            backward_samples=total.backward_samples,
            rho=step.ctx.rho,
            batch_size=step.ctx.batch_size or 0,
            verdict=step.verdict,
        )

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs: the base optimizer's state (momentum, param groups with
        their ``rho``), the step and epoch counters, and every component's state and generator."""
        if self._shared.pending is not None or self._backup:
            raise RuntimeError(
                "state_dict() between first_step() and second_step(): the weights are "
                "perturbed; call second_step() (or restore()) first"
            )
        return {
            "base": self.base.state_dict(),
            "engine": {"step_count": self.step_count, "epoch": self.epoch},
            **{name: c.state_dict() for name, c in self.components.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a flatsam ``state_dict``, or a plain base-optimizer one (``{"state", "param_groups"}``,
        e.g. an AdamW checkpoint): that goes into the base optimizer, each group keeping its ``rho``, while
        the components and counters stay as they are (fresh), with a warning."""
        if "base" not in state_dict and {"state", "param_groups"} <= set(state_dict):
            warnings.warn(
                f"load_state_dict: a plain {type(self.base).__name__} state_dict; loaded into the base "
                "optimizer, the sharpness-aware components and step counters start fresh",
                stacklevel=2,
            )
            rhos = [group["rho"] for group in self.param_groups]
            self.base.load_state_dict(state_dict)
            self._alias_base()
            for group, rho in zip(self.param_groups, rhos, strict=True):
                group.setdefault("rho", rho)
            return
        missing = [k for k in ("base", "engine", *self.components) if k not in state_dict]
        if missing:
            raise KeyError(
                f"not a flatsam state_dict (missing {missing}) nor a plain optimizer state_dict (keys "
                f"'state' and 'param_groups'); keys: {sorted(state_dict)}"
            )
        self.base.load_state_dict(state_dict["base"])
        self._alias_base()
        self.step_count = int(state_dict["engine"]["step_count"])
        self.epoch = int(state_dict["engine"]["epoch"])
        for name, component in self.components.items():
            component.load_state_dict(state_dict[name])

    def __repr__(self) -> str:
        parts = ",\n  ".join(f"{k}={v!r}" for k, v in self.components.items())
        return f"{type(self).__name__}(\n  base={type(self.base).__name__}, rho={self.rho},\n  {parts}\n)"


def _no_closure() -> StepInfo:
    raise TypeError(
        "step() needs closure(rows) -> per-sample losses of those batch rows, e.g. "
        "lambda rows: F.cross_entropy(model(x[rows]), y[rows], reduction='none') "
        "(or a zero-argument closure, davda54/sam style, or first_step() before step())"
    )


def _caller_module() -> str:
    """The module that called ``SharpnessAware.step``, past torch's own wrappers of ``Optimizer.step``
    (its profiling and hook wrapper)."""
    frame = sys._getframe(3)  # _caller_module ← _refuse_wrapped_call ← step ← the caller
    for _ in range(4):
        name = frame.f_globals.get("__name__", "")
        if not name.startswith("torch.") or frame.f_back is None:
            return name
        frame = frame.f_back
    return name


def _refuse_foreign_keywords(base: type[torch.optim.Optimizer], kwargs: dict[str, Any]) -> None:
    """Another SAM library's keyword that ``base`` does not take: a ``TypeError`` naming flatsam's way."""
    try:
        accepted = set(inspect.signature(base).parameters)
    except (TypeError, ValueError):
        accepted = set()
    for key in kwargs:
        if key in FOREIGN_KEYWORDS and key not in accepted:
            raise TypeError(
                f"{key}= is not a flatsam option, and {base.__name__} takes no such keyword: "
                f"{FOREIGN_KEYWORDS[key]}"
            )


def _every(batch_size: int) -> RowPlan:
    rows = all_rows(batch_size)
    return RowPlan(rows, rows)


def _joined(rows: list[torch.Tensor], starts: list[int]) -> torch.Tensor:
    """Batch positions of the micro-batches, as positions in their concatenation."""
    if len(rows) == 1:
        return rows[0]
    return torch.cat([r + start for r, start in zip(rows, starts, strict=True)])


def _cat(losses: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample losses of the passes of one kind, in order (none: the caller ran the passes)."""
    if not losses:
        return torch.zeros(0)
    return losses[0] if len(losses) == 1 else torch.cat(losses)


def _flatten(params: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for item in params if not isinstance(params, torch.Tensor) else [params]:
        if isinstance(item, dict):
            out += list(item["params"]) if not isinstance(item["params"], torch.Tensor) else [item["params"]]
        else:
            out.append(item)
    return out

