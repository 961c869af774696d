"""The walk: one loop over a step's plan (:mod:`flatsam.plan`), and the state a step carries through it.

Every entry point of :class:`flatsam.engine.SharpnessAware` builds a plan and walks it here, so BatchNorm
freezing, DDP's ``no_sync``, gradient accumulation, the clean-gradient copy and the finiteness checks are
written once, whichever way a step is called.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from flatsam import amp
from flatsam.closures import Closure, check_losses, reduce
from flatsam.component import StepContext
from flatsam.plan import BACKWARD, FORWARD, Kind, Pass
from flatsam.selection import RowPlan, all_rows, every_row
from flatsam.skipping import Verdict
from flatsam.stepinfo import Counter


@contextlib.contextmanager
def running_stats_frozen(model: nn.Module | None) -> Iterator[None]:
    """BatchNorm layers of ``model`` normalise with batch statistics but update no buffer (running
    mean/var and ``num_batches_tracked`` alike), by toggling ``track_running_stats``."""
    layers = (
        []
        if model is None
        else [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    )
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True


@dataclass
class Micro:
    """One micro-batch of a step (a plain step is one micro-batch whose context is the step's)."""

    closure: Closure | None  # None: the caller runs its passes (first_step/second_step)
    ctx: StepContext
    counter: Counter = field(default_factory=Counter)
    rows: RowPlan | None = None


@dataclass
class Step:
    """A step on its way through its plan: what the passes walked so far have left."""

    ctx: StepContext
    micros: list[Micro]
    plan: list[Pass]
    scaler: torch.amp.GradScaler | None
    verdict: Verdict
    ascend: bool | None
    at: int = 0  # the next pass of the plan
    ready: int = 0  # passes the caller has run that the walk has not yet taken in (two-step API)
    stopped: bool = False  # a finiteness check decided on the host to skip the step
    free_grads: bool = True  # the perturbation frees the spent clean gradient
    pending: list[torch.Tensor] = field(default_factory=list)  # reduced losses since the last check
    clean_losses: list[torch.Tensor] = field(default_factory=list)  # one per clean check
    norms: list[torch.Tensor] = field(default_factory=list)  # the clean gradient's norm at each check
    befores: list[torch.Tensor] = field(default_factory=list)  # per-sample clean losses, pass by pass
    afters: list[torch.Tensor] = field(default_factory=list)  # per-sample descent losses, pass by pass
    carry: dict[Kind, list[torch.Tensor | None]] = field(default_factory=dict)  # gradients to add to
    clean_grads: list[torch.Tensor | None] | None = None
    saved: dict[nn.Parameter, torch.Tensor] | None = None
    loss: torch.Tensor | None = None  # a loss the caller's closure returned (two-step API)
    watch: Any = None  # the two-step API's watch between its halves (flatsam.two_step)

    @property
    def parts(self) -> bool:
        return any(p.part is not None for p in self.plan)


@dataclass
class Shared:
    """The engine's mutable bookkeeping, held in one object: framework wrappers such as Lightning's
    ``LightningOptimizer`` copy the optimizer's attributes, and counters kept as plain attributes would
    then fork between the copy and the original (``set_epoch`` through the wrapper would not reach the
    engine). Every attribute here is shared by all such copies."""

    step_count: int = 0
    epoch: int = 0
    backup: dict[nn.Parameter, torch.Tensor] = field(default_factory=dict)
    pending: Step | None = None
    left: list[tuple[int, int] | None] = field(default_factory=list)  # the .grad the last step left


def grad_marks(params: list[nn.Parameter]) -> list[tuple[int, int] | None]:
    """Identity and version of each ``.grad`` (a backward that accumulates in place bumps the version)."""
    return [None if p.grad is None else (id(p.grad), p.grad._version) for p in params]


_WHERE = {
    (Kind.SCORE, False): "the scoring pass",
    (Kind.CLEAN, False): "the clean pass",
    (Kind.CLEAN, True): "a clean pass",
    (Kind.REFINE, False): "the perturbed scoring pass",
    (Kind.DESCENT, False): "the descent pass",
    (Kind.DESCENT, True): "a descent pass",
}


class PlanWalker:
    """The engine's walk over a plan (a mixin of :class:`flatsam.engine.SharpnessAware`, whose
    components, parameters and perturbation it uses)."""

    def _walk(self, step: Step) -> bool:
        """Walk ``step``'s plan from where it stands to its end, or to a pass the caller has yet to run
        (two-step API). Each pass is one forward (and backward), or one control pass; a pass marked
        ``check`` is followed by the finiteness check. False when a check stopped the step."""
        while step.at < len(step.plan):
            p = step.plan[step.at]
            if p.external and not step.ready:
                return True
            step.at += 1
            if p.external:
                step.ready -= 1
                step.micros[p.micro].counter.add(step.ctx.batch_size, True)
            elif p.kind in FORWARD:
                self._forward(step, p)
            else:
                self._control(step, p)
            if p.check and self._stops(step, p):
                step.stopped = True
                return False
        return True

    def _forward(self, step: Step, p: Pass) -> None:
        """One forward (and backward) of a pass over its rows. Only the first forward of a micro-batch
        updates BatchNorm statistics; a backward that does not sync runs in DDP's ``no_sync``; one that
        accumulates starts from the gradient the previous pass of its kind left."""
        micro = step.micros[p.micro]
        rows, weights = self._rows(step, p)
        backward = p.kind in BACKWARD
        with contextlib.ExitStack() as stack:
            if micro.counter.forward_passes:
                stack.enter_context(running_stats_frozen(self.model))
            if backward and not p.sync:
                stack.enter_context(self._no_sync())
            if p.kind is Kind.CLEAN and step.ascend:
                stack.enter_context(self.perturbation.clean_pass(step.ctx, self.params))
            if backward:  # the last pass's gradients go before this forward, not after: a lower peak
                self.zero_grad(set_to_none=True)
            stack.enter_context(torch.set_grad_enabled(backward))
            whole = rows is None or every_row(rows, micro.ctx.batch_size)
            losses = check_losses(micro.closure(slice(None) if whole else rows), rows)  # type: ignore[misc]
            loss = reduce(losses, weights)
            share = self._share(step, p)
            if share is not None:
                loss = loss * share
            if backward:
                carried = step.carry.pop(p.kind) if p.accumulate else ()
                for param, g in zip(self.params, carried, strict=False):
                    param.grad = g
                (step.scaler.scale(loss) if step.scaler is not None else loss).backward()
        if rows is None:
            micro.ctx.batch_size = len(losses)
        micro.counter.add(len(losses), backward)
        self._took(step, p, micro, losses.detach(), loss.detach())

    def _took(self, step: Step, p: Pass, micro: Micro, losses: torch.Tensor, loss: torch.Tensor) -> None:
        """Keep what a forward pass leaves for the rest of the step."""
        step.pending.append(loss if p.kind in BACKWARD else losses.sum())
        if p.kind is Kind.SCORE:
            micro.rows = self.selection.plan(micro.ctx, losses)
        elif p.kind is Kind.CLEAN:
            step.befores.append(losses)
            if micro.rows is None:  # the batch size was read from this pass
                micro.rows = self.selection.plan(micro.ctx, None)
        elif p.kind is Kind.REFINE:
            micro.rows = self.selection.refine(micro.ctx, micro.rows, step.befores[p.micro], losses)
        else:
            step.afters.append(losses)
        later = step.plan[step.at :]
        if any(q.kind is p.kind and q.accumulate for q in later):
            step.carry[p.kind] = self._grads()

    def _control(self, step: Step, p: Pass) -> None:
        """A pass that runs no forward: the late decision, the perturbation, the restore."""
        if p.kind is Kind.DECIDE:
            step.ascend = bool(self.schedule.decide_after(step.ctx, step.norms[-1].square()))
            if not step.ascend:
                del step.plan[step.at :]
        elif p.kind is Kind.PERTURB:
            if self.keeps_clean_grads and step.clean_grads is None:
                scale = step.ctx.grad_scale
                step.clean_grads = [None if g is None else g.detach() / scale for g in self._grads()]
            self._perturb(step.ctx, free_grads=step.free_grads)
        else:
            step.saved = dict(self._backup)
            self.restore()

    def _stops(self, step: Step, p: Pass) -> bool:
        """The finiteness check after ``p`` over the losses since the last check (and, after a backward,
        the gradient); True when the step must stop now (a flag read on the host)."""
        losses, step.pending = step.pending, []
        if p.kind in BACKWARD:
            amp.read_scale(step.ctx, step.scaler)
            norm = self._grad_norm(step.ctx)
        else:
            norm = torch.zeros((), device=losses[0].device)
        loss = norm if p.external else losses[0] if len(losses) == 1 else torch.stack(losses).sum()
        if p.kind is Kind.CLEAN:
            step.norms.append(norm)
            if not p.external:
                step.clean_losses.append(loss)
        where = _WHERE[p.kind, p.part is not None]
        return self.check_finite and step.verdict.check(loss, norm, f"non-finite loss or gradient in {where}")

    def _rows(self, step: Step, p: Pass) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The batch positions of a forward pass and their loss weights (``None``: the whole batch, of a
        size still unknown)."""
        micro = step.micros[p.micro]
        if p.kind is Kind.SCORE or micro.rows is None:
            b = micro.ctx.batch_size
            return (None if b is None else all_rows(b)), None
        rows = micro.rows
        if p.part is not None:
            return _part_rows(rows.parts, p)  # type: ignore[arg-type]
        if p.kind is Kind.CLEAN:
            train_only = step.ascend is False
            return (rows.descent, rows.descent_weights) if train_only else (rows.ascent, rows.ascent_weights)
        if p.kind is Kind.REFINE:
            return rows.ascent, None
        return rows.descent, rows.descent_weights

    def _share(self, step: Step, p: Pass) -> float | None:
        """A micro-batch's part of the mean loss over the rows of every micro-batch of its pass."""
        if len(step.micros) == 1 or p.kind not in BACKWARD:
            return None
        sizes = [len(self._rows(step, replace(p, micro=i))[0]) for i in range(len(step.micros))]  # type: ignore[arg-type]
        return sizes[p.micro] / sum(sizes)


def _part_rows(parts: list[RowPlan], p: Pass) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An m-sharpness part's rows: its clean rows, or its descent rows weighted by its share of the
    batch (each part's descent gradient at its own w+ε is accumulated with weight rows/B)."""
    part = parts[p.part]  # type: ignore[index]
    if p.kind is Kind.CLEAN:
        return part.ascent, part.ascent_weights
    total = sum(len(q.descent) for q in parts)
    share = torch.full((len(part.descent),), len(part.descent) / total, dtype=torch.float64)
    return part.descent, share if part.descent_weights is None else share * part.descent_weights.to(share)
