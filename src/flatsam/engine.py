"""The sharpness-aware engine: plan → ascent → descent → reuse → record, around any base optimizer."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from flatsam.component import Component, Outcome, StepContext
from flatsam.distributed import all_ranks_agree
from flatsam.perturbation import Perturbation, SAMPerturbation, total_norm
from flatsam.reuse import NoReuse, Reuse
from flatsam.schedule import Always, Schedule
from flatsam.selection import AllRows, RowPlan, Selection, all_rows

Closure = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StepInfo:
    """What one ``step`` did. Counts are Python ints; the loss stays a tensor until you read ``loss``.

    ``forward_samples``/``backward_samples`` count rows through forward and backward; a no-grad scoring
    forward (K-SAM, ESAM) counts as a forward only. ``cost`` weighs them in SGD passes (see there).
    """

    loss_tensor: torch.Tensor | None
    ascent: bool
    ascent_rows: int
    descent_rows: int
    forward_passes: int
    backward_passes: int
    forward_samples: int
    backward_samples: int
    rho: float
    batch_size: int
    skipped: bool = False
    reason: str | None = None

    @property
    def loss(self) -> float:
        """Mean clean loss over the rows of the clean pass (``nan`` when none ran)."""
        return float("nan") if self.loss_tensor is None else float(self.loss_tensor)

    @property
    def cost(self) -> float:
        """Compute of this step in SGD steps on the same batch, counting a backward as twice a forward:
        (forward_samples + 2·backward_samples) / (3·batch_size). SGD = 1, SAM = 2."""
        return (self.forward_samples + 2 * self.backward_samples) / (3 * self.batch_size)


class _Counter:
    def __init__(self) -> None:
        self.forward_passes = self.backward_passes = self.forward_samples = self.backward_samples = 0

    def add(self, rows: int, backward: bool) -> None:
        self.forward_passes += 1
        self.forward_samples += rows
        if backward:
            self.backward_passes += 1
            self.backward_samples += rows


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


def _check_losses(losses: Any, rows: int) -> torch.Tensor:
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1 or losses.numel() != rows:
        got = (
            f"a tensor of shape {tuple(losses.shape)}"
            if isinstance(losses, torch.Tensor)
            else repr(type(losses))
        )
        raise TypeError(
            f"closure(rows) must return per-sample losses, a 1-d tensor with one loss per row "
            f"(here shape [{rows}]), e.g. F.cross_entropy(model(x[rows]), y[rows], reduction='none'); "
            f"got {got}"
        )
    return losses


def _reduce(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return losses.mean() if weights is None else (losses * weights.to(losses)).mean()


class SharpnessAware(torch.optim.Optimizer):
    """A sharpness-aware optimizer assembled from four choices around a base optimizer.

    ``schedule`` (does this step ascend?), ``selection`` (which rows enter each pass), ``perturbation``
    (the ascent ε) and ``reuse`` (how a step without ascent borrows from the last one); the defaults
    give SAM. The base optimizer is a class plus ``**base_kwargs`` or an instance; ``param_groups`` and
    ``state`` are shared with it, so LR schedulers work on either object. ``rho`` is per parameter group;
    a group with ``perturb=False`` is trained but takes no part in the ascent (no ε, not in its norm).

    ``step(closure, index=None)``: ``closure(rows)`` gets a LongTensor of batch positions and returns
    per-sample losses for those rows; the engine reduces, back-propagates and may call it several times.
    ``index`` holds the dataset indices of the batch rows (history-based selections need it); without it
    pass ``batch_size``. With ``model=`` only the first forward of a step updates BatchNorm running
    statistics, and under DDP the ascent pass runs in ``no_sync``. With ``scaler=`` (a ``GradScaler``)
    the step also calls ``scaler.step`` and ``scaler.update``. A non-finite loss or gradient skips the
    step and leaves the weights and the base optimizer exactly as they were.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: type[torch.optim.Optimizer] | torch.optim.Optimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        schedule: Schedule | None = None,
        selection: Selection | None = None,
        perturbation: Perturbation | None = None,
        reuse: Reuse | None = None,
        model: nn.Module | None = None,
        max_grad_norm: float | None = None,
        check_finite: bool = True,
        **base_kwargs: Any,
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        if isinstance(base_optimizer, torch.optim.Optimizer):
            if base_kwargs:
                raise TypeError(
                    f"base optimizer keywords {sorted(base_kwargs)} given with an optimizer "
                    "instance; pass the class instead, or configure the instance"
                )
            if params is not None and {id(p) for p in _flatten(params)} != {
                id(p) for g in base_optimizer.param_groups for p in g["params"]
            }:
                raise ValueError(
                    "params differ from the parameters of the given base optimizer instance; "
                    "pass params=None to use the instance's parameters"
                )
            super().__init__(base_optimizer.param_groups, {"rho": rho})
            self.base = base_optimizer
        elif isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer):
            super().__init__(params, {"rho": rho})
            self.base = base_optimizer(self.param_groups, **base_kwargs)
        else:
            raise TypeError(
                f"base_optimizer must be a torch.optim.Optimizer class or instance, got {base_optimizer!r}"
            )
        self._alias_base()
        self.schedule = schedule or Always()
        self.selection = selection or AllRows()
        self.perturbation = perturbation or SAMPerturbation()
        self.reuse = reuse or NoReuse()
        self.model = model
        self.max_grad_norm = max_grad_norm
        self.check_finite = check_finite
        self.step_count = 0
        self.epoch = 0
        self._backup: dict[nn.Parameter, torch.Tensor] = {}

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
    def components(self) -> dict[str, Component]:
        return {
            "schedule": self.schedule,
            "selection": self.selection,
            "perturbation": self.perturbation,
            "reuse": self.reuse,
        }

    @property
    def keeps_clean_grads(self) -> bool:
        """Whether a component learns from the clean gradient of ascent steps (LookSAM, ARSAM)."""
        return any(c.needs_clean_grads for c in self.components.values())

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    @property
    def rho(self) -> float:
        return float(self.param_groups[0]["rho"])

    def set_epoch(self, epoch: int) -> None:
        """Tell the engine (and every component) which epoch starts: drives warm-ups and ramps."""
        self.epoch = int(epoch)
        for component in self.components.values():
            component.set_epoch(self.epoch)

    def _no_sync(self) -> contextlib.AbstractContextManager:
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if callable(no_sync) else contextlib.nullcontext()

    def _grads(self) -> list[torch.Tensor | None]:
        return [p.grad for p in self.params]

    def _grad_norm(self, ctx: StepContext) -> torch.Tensor:
        """Global L2 norm of the current (unscaled) gradients."""
        return total_norm([g for g in self._grads() if g is not None]) / ctx.grad_scale

    # -- passes -------------------------------------------------------------------------------------
    def _pass(
        self,
        closure: Closure,
        rows: torch.Tensor,
        weights: torch.Tensor | None,
        counter: _Counter,
        *,
        backward: bool = True,
        sync: bool = True,
        scaler: torch.amp.GradScaler | None = None,
        accumulate: list[torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward (and backward) of ``rows``; only the first forward of a step updates BN stats.
        The backward starts from ``accumulate`` (gradients aligned with ``params``) when given, else zero."""
        freeze = running_stats_frozen(self.model) if counter.forward_passes else contextlib.nullcontext()
        unsynced = self._no_sync() if backward and not sync else contextlib.nullcontext()
        with freeze, unsynced, torch.set_grad_enabled(backward):
            losses = _check_losses(closure(rows), len(rows))
            loss = _reduce(losses, weights)
            if backward:
                self.zero_grad(set_to_none=True)
                for p, g in zip(self.params, accumulate or (), strict=False):
                    p.grad = g
                (scaler.scale(loss) if scaler is not None else loss).backward()
        counter.add(len(rows), backward)
        return losses.detach(), loss.detach()

    def _clean_pass(
        self,
        closure: Closure,
        ctx: StepContext,
        rows: torch.Tensor,
        weights: torch.Tensor | None,
        counter: _Counter,
        *,
        around: contextlib.AbstractContextManager,
        sync: bool,
        scaler: torch.amp.GradScaler | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The clean pass inside ``around``: per-sample losses, mean loss and unscaled gradient norm."""
        with around:
            losses, loss = self._pass(closure, rows, weights, counter, sync=sync, scaler=scaler)
        if scaler is not None:  # the scale exists once scaler.scale() has run; reading it needs no sync
            ctx.grad_scale = scaler._scale  # noqa: SLF001
        return losses, loss, self._grad_norm(ctx)

    def _finite(self, loss: torch.Tensor, norm: torch.Tensor) -> bool:
        """Loss and gradient finite here, and (under torch.distributed) on every rank."""
        if not self.check_finite:
            return True
        return all_ranks_agree(bool(torch.isfinite(loss) & torch.isfinite(norm)), loss.device)

    @torch.no_grad()
    def _perturb(self, ctx: StepContext) -> None:
        """w ← w + ε over the parameter groups that take part in the ascent: a group with
        ``perturb=False`` (e.g. LSQ step sizes, see :mod:`flatsam.quant`) gets no ε and no share of
        its norm."""
        groups = [group for group in self.param_groups if group.get("perturb", True)]
        for p, eps in self.perturbation.epsilon(ctx, groups):
            self._backup[p] = p.detach().clone()
            p.add_(eps)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights saved before the perturbation, for every perturbed parameter (whether or
        not it has a gradient now)."""
        for p, saved in self._backup.items():
            p.copy_(saved)
        self._backup.clear()

    # -- the step -----------------------------------------------------------------------------------
    def step(
        self,
        closure: Closure | None = None,
        index: torch.Tensor | None = None,
        *,  # type: ignore[override]
        batch_size: int | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> StepInfo:
        if closure is None:
            raise TypeError(
                "step() needs closure(rows) -> per-sample losses of those batch rows, e.g. "
                "lambda rows: F.cross_entropy(model(x[rows]), y[rows], reduction='none')"
            )
        if index is not None:
            index = torch.as_tensor(index)
            batch_size = len(index)
        if batch_size is None or batch_size < 1:
            raise ValueError(
                "step() needs index= (the dataset indices of the batch rows) or batch_size= "
                f"(a positive int), got index=None, batch_size={batch_size}"
            )
        if scaler is not None and not scaler.is_enabled():
            scaler = None
        ctx = StepContext(
            step=self.step_count, epoch=self.epoch, batch_size=batch_size, index=index, rho=self.rho
        )
        self.step_count += 1
        counter = _Counter()
        try:
            return self._step(closure, ctx, counter, scaler)
        finally:
            self.restore()

    def _step(
        self, closure: Closure, ctx: StepContext, counter: _Counter, scaler: torch.amp.GradScaler | None
    ) -> StepInfo:
        scores = None
        if self.selection.needs_scores:
            scores, _ = self._pass(closure, all_rows(ctx.batch_size), None, counter, backward=False)
        plan = self.selection.plan(ctx, scores)
        ascend = self.schedule.decide(ctx)
        if ascend is None and not plan.same_rows:
            raise RuntimeError(
                "a schedule that decides after the clean pass (AE-SAM) needs a selection whose ascent and "
                "descent rows coincide: its clean pass may be the step's only pass"
            )
        if plan.parts and ascend is not False:
            return self._partitioned_step(closure, ctx, plan, counter, scaler, ascend)

        # clean pass: on the ascent rows if an ascent may follow, else on the rows the step trains on
        if ascend is False:
            rows, weights, around = plan.descent, plan.descent_weights, contextlib.nullcontext()
        else:
            rows, weights = plan.ascent, plan.ascent_weights
            around = self.perturbation.clean_pass(ctx, self.params) if ascend else contextlib.nullcontext()
        # under DDP the clean pass of a planned ascent skips the all-reduce (ε from the rank's own gradient),
        # unless a component keeps the clean gradient (LookSAM's g_v, ARSAM's PSF): it must agree across ranks
        sync = ascend is not True or self.keeps_clean_grads
        loss_before, loss, norm = self._clean_pass(
            closure, ctx, rows, weights, counter, around=around, sync=sync, scaler=scaler
        )
        if not self._finite(loss, norm):
            return self._skip("non-finite loss or gradient in the clean pass", ctx, counter, loss, scaler)
        if ascend is None:
            ascend = bool(self.schedule.decide_after(ctx, norm.square()))

        clean_grads = None
        loss_after = None
        if ascend:
            if self.keeps_clean_grads:
                clean_grads = [None if g is None else g.detach() / ctx.grad_scale for g in self._grads()]
            self._perturb(ctx)
            if self.selection.needs_perturbed_scores:
                perturbed, _ = self._pass(closure, plan.ascent, None, counter, backward=False)
                plan = self.selection.refine(ctx, plan, loss_before, perturbed)
            loss_after, descent_loss = self._pass(
                closure, plan.descent, plan.descent_weights, counter, scaler=scaler
            )
            self.restore()
            if not self._finite(descent_loss, self._grad_norm(ctx)):
                return self._skip(
                    "non-finite loss or gradient in the descent pass", ctx, counter, loss, scaler
                )
        outcome = Outcome(
            ascent=ascend,
            ascent_rows=plan.ascent if ascend else rows,
            descent_rows=plan.descent if ascend else rows,
            loss_before=loss_before,
            loss_after=loss_after,
            clean_grad_norm=norm,
            clean_grads=clean_grads,
        )
        return self._update(ctx, counter, loss, outcome, scaler)

    def _partitioned_step(
        self,
        closure: Closure,
        ctx: StepContext,
        plan: RowPlan,
        counter: _Counter,
        scaler: torch.amp.GradScaler | None,
        ascend: bool | None,
    ) -> StepInfo:
        """m-sharpness (Foret et al. 2021): one ascent per part of the batch, each part's descent gradient at
        its own w+ε, accumulated with weight rows/B; under DDP only the last part's descent synchronises."""
        if ascend is None or self.keeps_clean_grads:
            raise RuntimeError(
                "a partitioned selection (m-sharpness) needs a schedule that decides before the "
                "clean pass and no component that keeps the clean gradient"
            )
        total = sum(len(part.descent) for part in plan.parts)
        accumulated: list[torch.Tensor | None] | None = None
        befores, afters, losses, norms = [], [], [], []
        for position, part in enumerate(plan.parts):
            around = self.perturbation.clean_pass(ctx, self.params)
            before, loss, norm = self._clean_pass(
                closure,
                ctx,
                part.ascent,
                part.ascent_weights,
                counter,
                around=around,
                sync=False,
                scaler=scaler,
            )
            if not self._finite(loss, norm):
                return self._skip("non-finite loss or gradient in a clean pass", ctx, counter, loss, scaler)
            self._perturb(ctx)
            share = torch.full((len(part.descent),), len(part.descent) / total, dtype=torch.float64)
            weights = share if part.descent_weights is None else share * part.descent_weights.to(share)
            after, descent_loss = self._pass(
                closure,
                part.descent,
                weights,
                counter,
                scaler=scaler,
                sync=position == len(plan.parts) - 1,
                accumulate=accumulated,
            )
            self.restore()
            if not self._finite(descent_loss, self._grad_norm(ctx)):
                return self._skip("non-finite loss or gradient in a descent pass", ctx, counter, loss, scaler)
            accumulated = self._grads()
            befores.append(before), afters.append(after), losses.append(loss), norms.append(norm)
        outcome = Outcome(
            ascent=True,
            ascent_rows=torch.cat([part.ascent for part in plan.parts]),
            descent_rows=torch.cat([part.descent for part in plan.parts]),
            loss_before=torch.cat(befores),
            loss_after=torch.cat(afters),
            clean_grad_norm=torch.stack(norms).mean(),
        )
        sizes = torch.tensor(
            [len(part.ascent) for part in plan.parts], dtype=losses[0].dtype, device=losses[0].device
        )
        mean_loss = (torch.stack(losses) * sizes).sum() / sizes.sum()
        return self._update(ctx, counter, mean_loss, outcome, scaler)

    def _update(
        self,
        ctx: StepContext,
        counter: _Counter,
        loss: torch.Tensor,
        outcome: Outcome,
        scaler: torch.amp.GradScaler | None,
    ) -> StepInfo:
        """Unscale, reuse (steps without ascent), clip, let the components record, step the base."""
        if scaler is not None:
            scaler.unscale_(self.base)
        if not outcome.ascent:
            self.reuse.apply(ctx, self.params)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        outcome.descent_grads = self._grads()
        for component in self.components.values():
            component.record(ctx, outcome)
        if scaler is not None:
            scaler.step(self.base)
            scaler.update()
        else:
            self.base.step()
        return self._info(
            ctx,
            counter,
            loss,
            outcome.ascent,
            len(outcome.ascent_rows) if outcome.ascent else 0,
            len(outcome.descent_rows),
        )

    def _skip(
        self,
        reason: str,
        ctx: StepContext,
        counter: _Counter,
        loss: torch.Tensor,
        scaler: torch.amp.GradScaler | None,
    ) -> StepInfo:
        self.restore()
        self.zero_grad(set_to_none=True)
        if scaler is not None:  # back off as GradScaler does on an overflow, without stepping
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        return self._info(ctx, counter, loss, False, 0, 0, reason)

    def _info(
        self,
        ctx: StepContext,
        counter: _Counter,
        loss: torch.Tensor | None,
        ascent: bool,
        ascent_rows: int,
        descent_rows: int,
        reason: str | None = None,
    ) -> StepInfo:
        return StepInfo(
            loss_tensor=loss,
            ascent=ascent,
            ascent_rows=ascent_rows,
            descent_rows=descent_rows,
            forward_passes=counter.forward_passes,
            backward_passes=counter.backward_passes,
            forward_samples=counter.forward_samples,
            backward_samples=counter.backward_samples,
            rho=ctx.rho,
            batch_size=ctx.batch_size,
            skipped=reason is not None,
            reason=reason,
        )

    # -- the two-step API ---------------------------------------------------------------------------
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> bool:
        """Perturb w ← w + ε from the clean gradients the caller left in ``p.grad``. Returns ``False``
        (and perturbs nothing) when that gradient is not finite."""
        ctx = StepContext(step=self.step_count, epoch=self.epoch, batch_size=0, rho=self.rho)
        if self.check_finite and not bool(torch.isfinite(self._grad_norm(ctx))):
            return False
        self._perturb(ctx)
        if zero_grad:
            self.zero_grad(set_to_none=True)
        return True

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> bool:
        """Restore the weights and step the base optimizer with the gradients now in ``p.grad`` (the
        caller's pass at w+ε). Returns ``False`` (no update) when those gradients are not finite."""
        self.restore()
        ctx = StepContext(step=self.step_count, epoch=self.epoch, batch_size=0, rho=self.rho)
        self.step_count += 1
        stepped = not self.check_finite or bool(torch.isfinite(self._grad_norm(ctx)))
        if stepped:
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            self.base.step()
        if zero_grad or not stepped:
            self.zero_grad(set_to_none=True)
        return stepped

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs: the base optimizer's state (momentum, param groups with
        their ``rho``), the step and epoch counters, and every component's state and generator."""
        if self._backup:
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
        missing = [k for k in ("base", "engine", *self.components) if k not in state_dict]
        if missing:
            raise KeyError(f"not a flatsam state_dict (missing {missing}); keys: {sorted(state_dict)}")
        self.base.load_state_dict(state_dict["base"])
        self._alias_base()
        self.step_count = int(state_dict["engine"]["step_count"])
        self.epoch = int(state_dict["engine"]["epoch"])
        for name, component in self.components.items():
            component.load_state_dict(state_dict[name])

    def __repr__(self) -> str:
        parts = ",\n  ".join(f"{k}={v!r}" for k, v in self.components.items())
        return f"{type(self).__name__}(\n  base={type(self.base).__name__}, rho={self.rho},\n  {parts}\n)"


def _flatten(params: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for item in params if not isinstance(params, torch.Tensor) else [params]:
        if isinstance(item, dict):
            out += list(item["params"]) if not isinstance(item["params"], torch.Tensor) else [item["params"]]
        else:
            out.append(item)
    return out
