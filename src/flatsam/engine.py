"""The sharpness-aware engine: plan → ascent → descent → reuse → record, around any base optimizer."""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from flatsam.component import Component, Outcome, StepContext
from flatsam.distributed import all_ranks_agree
from flatsam.perturbation import Perturbation, SAMPerturbation, total_norm
from flatsam.reuse import NoReuse, Reuse
from flatsam.schedule import Always, Schedule
from flatsam.selection import AllRows, RowPlan, Selection, all_rows, every_row
from flatsam.skipping import Verdict, clones, masked_step

#: ``closure(rows)``: per-sample losses of the batch rows ``rows`` (``slice(None)`` = every row, in order)
Closure = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class StepInfo:
    """What one ``step`` did. Counts are Python ints; the loss stays a tensor until you read ``loss``, and
    whether the step was skipped (a non-finite loss or gradient), when the engine kept that flag on the
    device (``sync_free``), stays there until you read ``skipped``, ``reason``, ``ascent``,
    ``ascent_rows`` or ``descent_rows``: the first of them reads the step's flag on the host once (a
    synchronisation on an accelerator); a skipped step reports no ascent and no rows.

    ``ran_ascent``, ``ran_ascent_rows`` and ``ran_descent_rows`` say what ran, without reading anything
    (on a step skipped on the device the passes ran, and were undone). ``forward_samples``/
    ``backward_samples`` count rows through forward and backward (of every pass that ran); a no-grad
    scoring forward (K-SAM, ESAM) counts as a forward only. ``cost`` weighs them in SGD passes (see there).
    """

    loss_tensor: torch.Tensor | None
    ran_ascent: bool
    ran_ascent_rows: int
    ran_descent_rows: int
    forward_passes: int
    backward_passes: int
    forward_samples: int
    backward_samples: int
    rho: float
    batch_size: int
    verdict: Verdict = field(default_factory=Verdict)

    @property
    def skipped(self) -> bool:
        """Whether the step left the weights and the optimizer state unchanged."""
        return self.verdict.skipped

    @property
    def reason(self) -> str | None:
        """Why the step was skipped, else None."""
        return self.verdict.reason

    @property
    def ascent(self) -> bool:
        """Whether the step was a sharpness-aware step (ran an ascent and was not skipped)."""
        return self.ran_ascent and not self.skipped

    @property
    def ascent_rows(self) -> int:
        """Rows of the ascent pass (0 without ascent or when skipped)."""
        return self.ran_ascent_rows if self.ascent else 0

    @property
    def descent_rows(self) -> int:
        """Rows of the pass whose gradient stepped the weights (0 when skipped)."""
        return 0 if self.skipped else self.ran_descent_rows

    @property
    def loss(self) -> float:
        """Mean clean loss over the rows of the clean pass (``nan`` when none ran)."""
        return float("nan") if self.loss_tensor is None else float(self.loss_tensor)

    @property
    def cost(self) -> float:
        """Compute of this step in SGD steps on the same batch, counting a backward as twice a forward:
        (forward_samples + 2·backward_samples) / (3·batch_size). SGD = 1, SAM = 2;
        ``nan`` when the batch size is unknown (the caller ran passes the engine did not see)."""
        if not self.batch_size:
            return math.nan
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

    @staticmethod
    def sum(counters: list[_Counter]) -> _Counter:
        total = _Counter()
        for c in counters:
            total.forward_passes += c.forward_passes
            total.backward_passes += c.backward_passes
            total.forward_samples += c.forward_samples
            total.backward_samples += c.backward_samples
        return total


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


def _check_losses(losses: Any, rows: torch.Tensor | None) -> torch.Tensor:
    """``losses`` if it is a 1-d tensor with one loss per row (any number of rows when ``rows`` is None)."""
    expected = "at least one" if rows is None else f"shape [{len(rows)}]"
    if (
        not isinstance(losses, torch.Tensor)
        or losses.dim() != 1
        or (losses.numel() == 0 if rows is None else losses.numel() != len(rows))
    ):
        got = (
            f"a tensor of shape {tuple(losses.shape)}"
            if isinstance(losses, torch.Tensor)
            else repr(type(losses))
        )
        raise TypeError(
            f"closure(rows) must return per-sample losses, a 1-d tensor with one loss per row "
            f"(here {expected}), e.g. F.cross_entropy(model(x[rows]), y[rows], reduction='none'); "
            f"got {got}"
        )
    return losses


def _reduce(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return losses.mean() if weights is None else (losses * weights.to(losses)).mean()


def _takes_rows(closure: Callable[..., Any]) -> bool:
    """Whether ``closure`` is flatsam's ``closure(rows)`` (it names a positional parameter) rather than a
    zero-argument closure in the style of davda54/sam and ``torch.optim.LBFGS`` (no parameter, or only
    ``*args``/``**kwargs`` as in framework wrappers). A plain function (a lambda) is answered from its
    code object, since ``inspect.signature`` costs more than a small model's step overhead."""
    plain = not (hasattr(closure, "__wrapped__") or hasattr(closure, "__signature__"))
    if type(closure) is types.FunctionType and plain:
        return closure.__code__.co_argcount > 0  # positional parameters, defaults or not, *args excluded
    try:
        parameters = inspect.signature(closure).parameters.values()
    except (TypeError, ValueError):  # no signature (a builtin): assume the documented protocol
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in positional for p in parameters)


def _enabled(scaler: torch.amp.GradScaler | None) -> torch.amp.GradScaler | None:
    return scaler if scaler is not None and scaler.is_enabled() else None


def _sizes(value: Any, count: int, name: str) -> list[Any]:
    """One entry per micro-batch: a list/tuple of ``count`` entries, or one value repeated."""
    if isinstance(value, list | tuple):
        if len(value) != count:
            raise ValueError(
                f"{name} has {len(value)} entries for {count} closures; give one per micro-batch"
            )
        return list(value)
    if count > 1 and value is not None and name == "index":
        raise TypeError(f"index must be a list of {count} index tensors (one per closure), got {type(value)}")
    return [value] * count


def _checked_index(index: Any, batch_size: Any) -> torch.Tensor:
    """``index`` as a 1-d integer tensor (one dataset index per batch row; it gives the batch size), of
    length ``batch_size`` when that is given too."""
    index = torch.as_tensor(index)
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"index must hold integers (dataset indices), got dtype {index.dtype}")
    if index.dim() != 1:
        shape = tuple(index.shape)
        raise ValueError(f"index must be 1-d (one dataset index per batch row), got shape {shape}")
    if batch_size is not None and not isinstance(batch_size, bool) and batch_size != len(index):
        raise ValueError(f"index has {len(index)} entries but batch_size is {batch_size}; give one per row")
    return index


@dataclass
class _Micro:
    """One micro-batch of a step (a plain step is one micro-batch whose context is the step's)."""

    closure: Closure
    ctx: StepContext
    counter: _Counter = field(default_factory=_Counter)
    plan: RowPlan | None = None


@dataclass
class _Pending:
    """What ``first_step`` leaves for ``second_step``."""

    ctx: StepContext
    counter: _Counter
    ascent: bool = False
    skip: str | None = None  # why the step will be skipped (non-finite clean gradient)
    norm: torch.Tensor | None = None
    clean_grads: list[torch.Tensor | None] | None = None
    loss: torch.Tensor | None = None
    hooks: list[Any] = field(default_factory=list)
    backward_since: bool = False  # a backward accumulated into .grad after a first_step without ascent


@dataclass
class _Shared:
    """The engine's mutable bookkeeping, held in one object: framework wrappers such as Lightning's
    ``LightningOptimizer`` copy the optimizer's attributes, and counters kept as plain attributes would
    then fork between the copy and the original (``set_epoch`` through the wrapper would not reach the
    engine). Every attribute here is shared by all such copies."""

    step_count: int = 0
    epoch: int = 0
    backup: dict[nn.Parameter, torch.Tensor] = field(default_factory=dict)
    pending: _Pending | None = None
    left: list[tuple[int, int] | None] = field(default_factory=list)  # the .grad the last step left


def _grad_marks(params: list[nn.Parameter]) -> list[tuple[int, int] | None]:
    """Identity and version of each ``.grad`` (a backward that accumulates in place bumps the version)."""
    return [None if p.grad is None else (id(p.grad), p.grad._version) for p in params]


class SharpnessAware(torch.optim.Optimizer):
    """A sharpness-aware optimizer assembled from four choices around a base optimizer.

    ``schedule`` (does this step ascend?), ``selection`` (which rows enter each pass), ``perturbation``
    (the ascent ε) and ``reuse`` (how a step without ascent borrows from the last one); the defaults
    give SAM. The base optimizer is a class plus ``**base_kwargs`` or an instance (``base_optimizer``
    attribute, also ``base``); ``param_groups`` and ``state`` are shared with it, so LR schedulers work
    on either object. ``rho`` is per parameter group; a group with ``perturb=False`` is trained but takes
    no part in the ascent (no ε, not in its norm).

    Ways to call it (see ``step``, ``first_step``, ``second_step``):

    - ``step(closure, index=None)``: ``closure(rows)`` gets a LongTensor of batch positions and returns
      per-sample losses for those rows; the engine reduces, back-propagates and may call it several
      times. ``index`` holds the dataset indices of the batch rows (history-based selections need it).
    - ``step([closure_1, …, closure_k], index=[index_1, …, index_k])``: gradient accumulation, one step
      over k micro-batches.
    - ``step(closure)`` with a zero-argument closure: davda54/sam's semantics.
    - ``first_step`` / ``second_step``: davda54/sam's two-step API, for loops that own the passes.

    With ``model=`` only the first forward of each (micro-)batch updates BatchNorm running statistics,
    and under DDP the ascent pass runs in ``no_sync``. With ``scaler=`` (a ``GradScaler``) the step also
    unscales, calls ``scaler.step`` and ``scaler.update``; ``scaler.step(opt)`` after ``first_step``
    works too. A non-finite loss or gradient skips the step and leaves the weights and the base
    optimizer exactly as they were (see :mod:`flatsam.skipping`).

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
    # on an overflow, so that a perturbed model is always restored (see ``_second_step``)
    _step_supports_amp_scaling = True

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
        sync_free: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        finite_rho = isinstance(rho, numbers.Real) and not isinstance(rho, bool) and math.isfinite(rho)
        if not (finite_rho and rho >= 0):
            raise ValueError(f"rho must be >= 0 and finite, got {rho!r}")
        if max_grad_norm is not None and not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be > 0 and finite, or None, got {max_grad_norm}")
        self._shared = _Shared()
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
        self.sync_free = sync_free

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

    def _context(self, batch_size: int | None, index: torch.Tensor | None = None) -> StepContext:
        """The context of a new step; counts it."""
        ctx = StepContext(
            step=self.step_count, epoch=self.epoch, batch_size=batch_size, index=index, rho=self.rho
        )  # type: ignore[arg-type]
        self.step_count += 1
        return ctx

    def _warn_if_grads_present(self) -> None:
        marks = _grad_marks(self.params)
        if any(m is not None for m in marks) and marks != self._shared.left:
            warnings.warn(
                "step(closure(rows)) found gradients in .grad from a backward() since the last step; they "
                "are discarded (the step computes its own). Call zero_grad() before, or, for a loop that "
                "runs the first forward/backward itself (davda54/sam style), pass a closure without "
                "arguments (or use first_step/second_step)",
                stacklevel=4,
            )

    # -- passes -------------------------------------------------------------------------------------
    def _pass(
        self,
        micro: _Micro,
        rows: torch.Tensor | None,
        weights: torch.Tensor | None,
        *,
        backward: bool = True,
        sync: bool = True,
        scaler: torch.amp.GradScaler | None = None,
        accumulate: list[torch.Tensor | None] | None = None,
        share: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward (and backward) of ``rows`` of a micro-batch; only its first forward updates BN
        stats. ``rows=None``: every row of a batch of unknown size (the closure gets ``slice(None)``; the
        size is read from its losses); rows that are the whole batch in order reach it as ``slice(None)``
        too (see ``every_row``). The backward starts from ``accumulate`` (gradients aligned with ``params``)
        when given, else zero; ``share`` scales the mean loss (a micro-batch's part)."""
        counter = micro.counter
        freeze = running_stats_frozen(self.model) if counter.forward_passes else contextlib.nullcontext()
        unsynced = self._no_sync() if backward and not sync else contextlib.nullcontext()
        if backward:  # the last pass's gradients go before this forward, not after: a lower peak
            self.zero_grad(set_to_none=True)
        with freeze, unsynced, torch.set_grad_enabled(backward):
            whole = rows is None or every_row(rows, micro.ctx.batch_size)
            losses = _check_losses(micro.closure(slice(None) if whole else rows), rows)
            loss = _reduce(losses, weights)
            if share is not None:
                loss = loss * share
            if backward:
                for p, g in zip(self.params, accumulate or (), strict=False):
                    p.grad = g
                (scaler.scale(loss) if scaler is not None else loss).backward()
        if rows is None:
            micro.ctx.batch_size = len(losses)
        counter.add(len(losses), backward)
        return losses.detach(), loss.detach()

    def _clean_pass(
        self,
        micro: _Micro,
        ctx: StepContext,
        rows: torch.Tensor | None,
        weights: torch.Tensor | None,
        *,
        around: contextlib.AbstractContextManager,
        sync: bool,
        scaler: torch.amp.GradScaler | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The clean pass inside ``around``: per-sample losses, mean loss and unscaled gradient norm."""
        with around:
            losses, loss = self._pass(micro, rows, weights, sync=sync, scaler=scaler)
        self._read_scale(ctx, scaler)
        return losses, loss, self._grad_norm(ctx)

    @staticmethod
    def _read_scale(ctx: StepContext, scaler: torch.amp.GradScaler | None) -> None:
        if scaler is not None and scaler._scale is not None:  # noqa: SLF001  (reading it needs no sync)
            ctx.grad_scale = scaler._scale  # noqa: SLF001

    def _finite(self, loss: torch.Tensor, norm: torch.Tensor) -> bool:
        """Loss and gradient finite here, and (under torch.distributed) on every rank (read on the host)."""
        if not self.check_finite:
            return True
        return all_ranks_agree(bool(torch.isfinite(loss) & torch.isfinite(norm)), loss.device)

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

    def _stops(self, verdict: Verdict, loss: torch.Tensor, norm: torch.Tensor, where: str) -> bool:
        """Check the pass ``where``; True when the step must be skipped now (a flag read on the host)."""
        return self.check_finite and verdict.check(loss, norm, f"non-finite loss or gradient in {where}")

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

    def _put_back(self) -> dict[nn.Parameter, torch.Tensor]:
        """``restore``, handing over the saved weights (a skipped step's masked update reuses them)."""
        saved = dict(self._backup)
        self.restore()
        return saved

    # -- the step -----------------------------------------------------------------------------------
    def step(  # type: ignore[override]
        self,
        closure: Closure | Callable[[], Any] | list[Closure] | None = None,
        index: torch.Tensor | list[torch.Tensor] | None = None,
        *,
        batch_size: int | list[int] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> StepInfo:
        """One sharpness-aware step; returns its ``StepInfo``.

        - ``closure(rows)`` → per-sample losses of those batch rows. ``index`` (dataset indices of the
          rows) or ``batch_size`` give B; without either, the first pass gets ``rows = slice(None)``
          (every row) and B is the number of losses it returns, which works for every selection whose
          first pass covers the whole batch (SAM, ASAM, K-SAM, ESAM's selection, the schedules); those
          that draw rows first (AUSAM, uniform, micro-batch, InfoBatch, m-sharpness) need ``index`` or
          ``batch_size``. A pass over the whole batch in order always gets ``slice(None)``. Gradients
          found in ``.grad`` from a backward of the caller are discarded with a warning.
        - ``[closure_1, …, closure_k]`` with ``index=[index_1, …, index_k]`` (or ``batch_size=[B_1, …]``):
          one step over k micro-batches (gradient accumulation). ε comes from the gradient of the mean
          clean loss over all their rows, the descent gradient is that of the mean loss at w+ε, each
          selection draws per micro-batch (AUSAM keeps its history per row), BatchNorm statistics come
          from each micro-batch's clean pass; under DDP only the last micro-batch's passes synchronise.
        - ``closure()`` with no argument: davda54/sam's semantics. The caller has run the first
          forward/backward (clean gradient in ``.grad``); the engine ascends, calls the closure at w+ε
          (it must zero nothing, compute the loss and call ``backward``), restores and steps; a step
          without ascent (LookSAM, SS-SAM, AE-SAM) does not call it. If ``.grad`` is empty the closure
          runs the clean pass too (the composer/Lightning-automatic style). Only for selections that use
          every row; the others need ``closure(rows)``.
        - no closure, right after ``first_step``: ``second_step`` (so ``scaler.step(opt)`` and wrappers
          that call ``optimizer.step()`` work).
        """
        scaler = _enabled(scaler)
        pending = self._shared.pending
        if closure is None:
            if pending is not None:
                return self._second_step(scaler)
            raise TypeError(
                "step() needs closure(rows) -> per-sample losses of those batch rows, e.g. "
                "lambda rows: F.cross_entropy(model(x[rows]), y[rows], reduction='none') "
                "(or a zero-argument closure, davda54/sam style, or first_step() before step())"
            )
        if pending is not None:
            raise RuntimeError(
                "step(closure) between first_step() and second_step(): finish the pending step with "
                "second_step() (or step() without a closure) first"
            )
        closures = list(closure) if isinstance(closure, list | tuple) else [closure]
        if not closures:
            raise ValueError("step() got an empty list of closures")
        if not all(_takes_rows(c) for c in closures):
            if len(closures) > 1:
                raise TypeError(
                    "gradient accumulation takes closure(rows) functions (per-sample losses), not "
                    "zero-argument closures"
                )
            return self._step_after_backward(closures[0], batch_size, scaler)
        self._warn_if_grads_present()
        ctx, micros = self._micro_batches(closures, index, batch_size)
        try:
            return self._step(micros, ctx, scaler)
        finally:
            self.restore()
            self._shared.left = _grad_marks(self.params)

    def _micro_batches(
        self, closures: list[Closure], index: Any, batch_size: Any
    ) -> tuple[StepContext, list[_Micro]]:
        """The step's context and its micro-batches (one with the step's own context when k = 1)."""
        indices = _sizes(index, len(closures), "index")
        sizes = _sizes(batch_size, len(closures), "batch_size")
        indices = [None if i is None else _checked_index(i, b) for i, b in zip(indices, sizes, strict=True)]
        sizes = [len(i) if i is not None else b for i, b in zip(indices, sizes, strict=True)]
        for b in sizes:
            if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
                raise ValueError(f"batch_size must be a positive int (one per micro-batch), got {b!r}")
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
            return ctx, [_Micro(closures[0], ctx)]
        joined = None if any(i is None for i in indices) else torch.cat(indices)
        ctx = self._context(sum(sizes), joined)
        micros = [
            _Micro(c, replace(ctx, batch_size=b, index=i))
            for c, b, i in zip(closures, sizes, indices, strict=True)
        ]
        return ctx, micros

    def _step(self, micros: list[_Micro], ctx: StepContext, scaler: torch.amp.GradScaler | None) -> StepInfo:
        single = len(micros) == 1
        for micro in micros:
            scores = None
            if self.selection.needs_scores:
                rows = None if micro.ctx.batch_size is None else all_rows(micro.ctx.batch_size)
                scores, _ = self._pass(micro, rows, None, backward=False)
            if micro.ctx.batch_size is not None:  # else planned after the clean pass, which reads B
                micro.plan = self.selection.plan(micro.ctx, scores)
        ascend = self.schedule.decide(ctx)
        plans = [m.plan for m in micros if m.plan is not None]
        if ascend is None and not all(plan.same_rows for plan in plans):
            raise RuntimeError(
                "a schedule that decides after the clean pass (AE-SAM) needs a selection whose ascent and "
                "descent rows coincide: its clean pass may be the step's only pass"
            )
        if any(plan.parts for plan in plans) and ascend is not False:
            if not single:
                raise ValueError(
                    "gradient accumulation does not combine with a partitioned selection (m-sharpness): "
                    "pass the micro-batches as one batch, the parts are its micro-batches"
                )
            return self._partitioned_step(micros[0], ctx, scaler, ascend)
        verdict = self._verdict(ascend, scaler)

        # clean pass: on the ascent rows if an ascent may follow, else on the rows the step trains on
        def clean_rows(plan: RowPlan | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            if plan is None:
                return None, None
            return (
                (plan.descent, plan.descent_weights)
                if ascend is False
                else (plan.ascent, plan.ascent_weights)
            )

        around = self.perturbation.clean_pass(ctx, self.params) if ascend else contextlib.nullcontext()
        # under DDP the clean pass of a planned ascent skips the all-reduce (ε from the rank's own gradient),
        # unless a component keeps the clean gradient (LookSAM's g_v, ARSAM's PSF): it must agree across ranks
        sync = ascend is not True or self.keeps_clean_grads
        shares = None if single else _shares([len(clean_rows(m.plan)[0]) for m in micros])
        befores, losses = [], []
        with around:
            for j, micro in enumerate(micros):
                rows, weights = clean_rows(micro.plan)
                before, loss = self._pass(
                    micro,
                    rows,
                    weights,
                    sync=sync and j == len(micros) - 1,
                    scaler=scaler,
                    accumulate=self._grads() if j else None,
                    share=None if shares is None else shares[j],
                )
                if micro.plan is None:
                    micro.plan = self.selection.plan(micro.ctx, None)
                befores.append(before), losses.append(loss)
        self._read_scale(ctx, scaler)
        norm = self._grad_norm(ctx)
        loss = losses[0] if single else torch.stack(losses).sum()
        counters = [m.counter for m in micros]
        if self._stops(verdict, loss, norm, "the clean pass"):
            return self._skip(verdict, ctx, counters, loss, scaler)
        if ascend is None:  # AE-SAM: a decision on the host
            ascend = bool(self.schedule.decide_after(ctx, norm.square()))

        clean_grads = None
        afters = None
        saved = None
        if ascend:
            if self.keeps_clean_grads:
                clean_grads = [None if g is None else g.detach() / ctx.grad_scale for g in self._grads()]
            self._perturb(ctx)
            if self.selection.needs_perturbed_scores:
                for micro, before in zip(micros, befores, strict=True):
                    perturbed, _ = self._pass(micro, micro.plan.ascent, None, backward=False)
                    micro.plan = self.selection.refine(micro.ctx, micro.plan, before, perturbed)
            shares = None if single else _shares([len(m.plan.descent) for m in micros])
            afters, descent_losses = [], []
            for j, micro in enumerate(micros):
                after, descent_loss = self._pass(
                    micro,
                    micro.plan.descent,
                    micro.plan.descent_weights,
                    scaler=scaler,
                    sync=j == len(micros) - 1,
                    accumulate=self._grads() if j else None,
                    share=None if shares is None else shares[j],
                )
                afters.append(after), descent_losses.append(descent_loss)
            saved = self._put_back()
            descent_loss = descent_losses[0] if single else torch.stack(descent_losses).sum()
            if self._stops(verdict, descent_loss, self._grad_norm(ctx), "the descent pass"):
                return self._skip(verdict, ctx, counters, loss, scaler)
        starts = [0] if single else _offsets([m.ctx.batch_size for m in micros])
        ascent_rows = _joined([m.plan.ascent if ascend else clean_rows(m.plan)[0] for m in micros], starts)
        outcome = Outcome(
            ascent=ascend,
            ascent_rows=ascent_rows,
            descent_rows=_joined([m.plan.descent for m in micros], starts) if ascend else ascent_rows,
            loss_before=befores[0] if single else torch.cat(befores),
            loss_after=None if afters is None else afters[0] if single else torch.cat(afters),
            clean_grad_norm=norm,
            clean_grads=clean_grads,
        )
        return self._update(ctx, counters, loss, outcome, scaler, verdict, saved)

    def _partitioned_step(
        self,
        micro: _Micro,
        ctx: StepContext,
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
        assert micro.plan is not None and micro.plan.parts is not None
        parts = micro.plan.parts
        total = sum(len(part.descent) for part in parts)
        accumulated: list[torch.Tensor | None] | None = None
        befores, afters, losses, norms = [], [], [], []
        counters = [micro.counter]
        verdict = self._verdict(ascend, scaler)
        for position, part in enumerate(parts):
            around = self.perturbation.clean_pass(ctx, self.params)
            before, loss, norm = self._clean_pass(
                micro, ctx, part.ascent, part.ascent_weights, around=around, sync=False, scaler=scaler
            )
            if self._stops(verdict, loss, norm, "a clean pass"):
                return self._skip(verdict, ctx, counters, loss, scaler)
            self._perturb(ctx)
            share = torch.full((len(part.descent),), len(part.descent) / total, dtype=torch.float64)
            weights = share if part.descent_weights is None else share * part.descent_weights.to(share)
            after, descent_loss = self._pass(
                micro,
                part.descent,
                weights,
                scaler=scaler,
                sync=position == len(parts) - 1,
                accumulate=accumulated,
            )
            self.restore()
            if self._stops(verdict, descent_loss, self._grad_norm(ctx), "a descent pass"):
                return self._skip(verdict, ctx, counters, loss, scaler)
            accumulated = self._grads()
            befores.append(before), afters.append(after), losses.append(loss), norms.append(norm)
        outcome = Outcome(
            ascent=True,
            ascent_rows=torch.cat([part.ascent for part in parts]),
            descent_rows=torch.cat([part.descent for part in parts]),
            loss_before=torch.cat(befores),
            loss_after=torch.cat(afters),
            clean_grad_norm=torch.stack(norms).mean(),
        )
        sizes = torch.tensor(
            [len(part.ascent) for part in parts], dtype=losses[0].dtype, device=losses[0].device
        )
        mean_loss = (torch.stack(losses) * sizes).sum() / sizes.sum()
        return self._update(ctx, counters, mean_loss, outcome, scaler, verdict)

    def _update(
        self,
        ctx: StepContext,
        counters: list[_Counter],
        loss: torch.Tensor | None,
        outcome: Outcome,
        scaler: torch.amp.GradScaler | None,
        verdict: Verdict,
        saved: dict[nn.Parameter, torch.Tensor] | None = None,
    ) -> StepInfo:
        """Unscale, reuse (steps without ascent), clip, let the components record, step the base. With a
        deferred verdict the components record under ``outcome.found_inf`` and the base optimizer's step
        is masked by it (``masked_step``, reusing the weights ``saved`` before the perturbation)."""
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
        outcome.found_inf = verdict.found_inf
        for component in self.components.values():
            component.record(ctx, outcome)
        if scaler is not None:
            scaler.step(self.base)
            scaler.update()
        elif outcome.found_inf is not None:
            masked_step(self.base, outcome.found_inf, saved)
        else:
            self.base.step()
        return self._info(
            ctx,
            counters,
            loss,
            outcome.ascent,
            len(outcome.ascent_rows) if outcome.ascent else 0,
            len(outcome.descent_rows),
            verdict,
        )

    def _skip(
        self,
        verdict: Verdict,
        ctx: StepContext,
        counters: list[_Counter],
        loss: torch.Tensor | None,
        scaler: torch.amp.GradScaler | None,
    ) -> StepInfo:
        """A step skipped on the host (``verdict`` holds the reason): weights back, no step."""
        self.restore()
        self.zero_grad(set_to_none=True)
        if scaler is not None:  # back off as GradScaler does on an overflow, without stepping
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        return self._info(ctx, counters, loss, False, 0, 0, verdict)

    def _info(
        self,
        ctx: StepContext,
        counters: list[_Counter],
        loss: torch.Tensor | None,
        ascent: bool,
        ascent_rows: int,
        descent_rows: int,
        verdict: Verdict,
    ) -> StepInfo:
        total = _Counter.sum(counters)
        return StepInfo(
            loss_tensor=loss,
            ran_ascent=ascent,
            ran_ascent_rows=ascent_rows,
            ran_descent_rows=descent_rows,
            forward_passes=total.forward_passes,
            backward_passes=total.backward_passes,
            forward_samples=total.forward_samples,
            backward_samples=total.backward_samples,
            rho=ctx.rho,
            batch_size=ctx.batch_size or 0,
            verdict=verdict,
        )

    # -- davda54/sam's APIs: the caller runs the first forward/backward -----------------------------
    def _check_caller_passes(self, api: str) -> None:
        """Refuse components that need the engine to run the passes itself."""
        if self.selection.selects_rows:
            raise TypeError(
                f"{api} cannot apply {type(self.selection).__name__}: it chooses the rows of each pass, "
                "so the engine must run them. Use step(closure(rows), index=index) with a closure that "
                "takes the batch positions and returns per-sample losses, e.g. lambda rows: "
                "F.cross_entropy(model(x[rows]), y[rows], reduction='none')"
            )
        if self.perturbation.shapes_clean_pass:
            raise TypeError(
                f"{api} cannot apply {type(self.perturbation).__name__}: it changes which parameters get "
                "a gradient in the clean pass. Use step(closure(rows), index=index)"
            )

    def _step_after_backward(
        self, closure: Callable[[], Any], batch_size: int | None, scaler: torch.amp.GradScaler | None
    ) -> StepInfo:
        """davda54/sam's ``step(closure)``: first_step, the closure at w+ε, second_step."""
        self._check_caller_passes("step(closure) with a zero-argument closure")
        loss = None
        if all(p.grad is None for p in self.params):  # nobody ran the clean pass: the closure runs it
            with torch.enable_grad():
                loss = _detached(closure())
        if self.first_step(zero_grad=True, scaler=scaler, batch_size=batch_size):
            with torch.enable_grad(), running_stats_frozen(self.model):
                closure()
        pending = self._shared.pending
        assert pending is not None
        pending.loss = loss
        return self._second_step(scaler)

    @torch.no_grad()
    def first_step(
        self,
        zero_grad: bool = False,
        scaler: torch.amp.GradScaler | None = None,
        *,
        batch_size: int | None = None,
    ) -> bool:
        """davda54/sam's first step, from the clean gradient the caller left in ``.grad``: perturb
        w ← w + ε if this step ascends, and return whether it did.

        The method's schedule decides (LookSAM, SS-SAM, ARSAM before, AE-SAM from the clean gradient's
        norm). ``False`` means no perturbation: the clean gradient stays in ``.grad`` (``zero_grad`` is not
        applied) and is the step's gradient, so skip the second forward/backward and call
        ``second_step`` (a backward in between is an error there). ``False`` also when the clean gradient
        is not finite: ``second_step`` then skips the step. With ``scaler`` (the ``GradScaler`` whose
        scaled loss the caller back-propagated) norms are read unscaled; the direction needs no
        unscaling. Selections that choose rows (AUSAM, K-SAM, …) and ESAM's stochastic weight
        perturbation need ``step(closure(rows))`` and are refused. ``batch_size`` only feeds the counts
        of the ``StepInfo``. Calling it twice without ``second_step`` is an error.
        """
        if self._shared.pending is not None:
            raise RuntimeError(
                "first_step() called twice: a step is pending (the weights may be perturbed); call "
                "second_step() (or step() without a closure) before the next first_step()"
            )
        self._check_caller_passes("first_step()")
        ctx = self._context(batch_size or 0)
        counter = _Counter()
        counter.add(ctx.batch_size, True)  # the caller's clean pass
        pending = _Pending(ctx, counter)
        self._shared.pending = pending
        self._read_scale(ctx, _enabled(scaler))
        ascend = self.schedule.decide(ctx)
        norm = self._grad_norm(ctx)
        if not self._finite(norm, norm):
            pending.skip = "non-finite gradient in the clean pass"
            return False
        if ascend is None:
            ascend = bool(self.schedule.decide_after(ctx, norm.square()))
        pending.ascent, pending.norm = ascend, norm
        if not ascend:
            pending.hooks = [
                p.register_post_accumulate_grad_hook(lambda _: self._backward_seen())
                for p in self.params
                if p.requires_grad
            ]
            return False
        if self.keeps_clean_grads:
            pending.clean_grads = [None if g is None else g.detach() / ctx.grad_scale for g in self._grads()]
        self._perturb(ctx, free_grads=zero_grad)
        return True

    def _backward_seen(self) -> None:
        pending = self._shared.pending
        if pending is not None:
            pending.backward_since = True

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> bool:
        """davda54/sam's second step: restore the weights and step the base optimizer with the gradient
        now in ``.grad`` (the caller's pass at w+ε, or the clean one when ``first_step`` returned False).

        With ``scaler``: unscale once, step through it and update its scale; on an overflow (or a
        non-finite gradient without a scaler) nothing is stepped, the weights are exactly those before
        ``first_step`` and the scale backs off. Returns whether the base optimizer stepped.
        """
        info = self._second_step(_enabled(scaler))
        if zero_grad:
            self.zero_grad(set_to_none=True)
        return not info.skipped

    def _second_step(self, scaler: torch.amp.GradScaler | None) -> StepInfo:
        pending = self._shared.pending
        if pending is None:
            raise RuntimeError(
                "second_step() without first_step(): call first_step() after the first backward"
            )
        self._shared.pending = None
        for hook in pending.hooks:
            hook.remove()
        try:
            return self._finish(pending, scaler)
        finally:
            self.restore()
            self._shared.left = _grad_marks(self.params)

    @torch.no_grad()
    def _finish(self, pending: _Pending, scaler: torch.amp.GradScaler | None) -> StepInfo:
        self.restore()
        ctx, counters = pending.ctx, [pending.counter]
        if pending.backward_since:
            self.zero_grad(set_to_none=True)
            raise RuntimeError(
                "a backward() ran between first_step() and second_step() although first_step() returned "
                "False (no ascent on this step, e.g. LookSAM/SS-SAM/AE-SAM): its gradient was added to "
                "the step's clean gradient, so the step was dropped. Run the second forward/backward only "
                "when first_step() returns True"
            )
        found_inf = getattr(
            self, "found_inf", None
        )  # set by GradScaler.step(self) (see _step_supports_amp_scaling)
        if found_inf is not None:
            grad_scale = getattr(self, "grad_scale", None)  # None when the caller already unscaled
            if pending.skip is None and not bool(found_inf):
                if grad_scale is not None:
                    inverse = grad_scale.double().reciprocal().float()
                    for g in self._grads():
                        if g is not None:
                            g.mul_(inverse.to(g))
                ctx.grad_scale = 1.0
            elif pending.skip is None:
                pending.skip = "non-finite gradient in the descent pass"
            scaler = None  # GradScaler.update() backs off from its own inf check
        if pending.ascent:
            pending.counter.add(ctx.batch_size, True)  # the caller's pass at w+ε
        if pending.skip is None and pending.ascent:
            self._read_scale(ctx, scaler)
            norm = self._grad_norm(ctx)
            if not self._finite(norm, norm):
                pending.skip = "non-finite gradient in the descent pass"
        if pending.skip is not None:
            return self._skip(Verdict(reason=pending.skip), ctx, counters, pending.loss, scaler)
        rows = all_rows(ctx.batch_size)
        empty = torch.zeros(0)
        outcome = Outcome(
            ascent=pending.ascent,
            ascent_rows=rows,
            descent_rows=rows,
            loss_before=empty,
            loss_after=empty if pending.ascent else None,
            clean_grad_norm=pending.norm,  # type: ignore[arg-type]
            clean_grads=pending.clean_grads,
        )
        return self._update(ctx, counters, pending.loss, outcome, scaler, Verdict())

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


def _shares(rows: list[int]) -> list[float]:
    """Each micro-batch's part of the mean over all rows."""
    total = sum(rows)
    return [n / total for n in rows]


def _offsets(sizes: list[int]) -> list[int]:
    """Where each micro-batch starts in the concatenated batch."""
    starts, position = [], 0
    for size in sizes:
        starts.append(position)
        position += size
    return starts


def _joined(rows: list[torch.Tensor], starts: list[int]) -> torch.Tensor:
    """Batch positions of the micro-batches, as positions in their concatenation."""
    if len(rows) == 1:
        return rows[0]
    return torch.cat([r + start for r, start in zip(rows, starts, strict=True)])


def _detached(value: Any) -> torch.Tensor | None:
    return value.detach() if isinstance(value, torch.Tensor) else None


def _flatten(params: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for item in params if not isinstance(params, torch.Tensor) else [params]:
        if isinstance(item, dict):
            out += list(item["params"]) if not isinstance(item["params"], torch.Tensor) else [item["params"]]
        else:
            out.append(item)
    return out
