"""davda54/sam's two-step API (``first_step``/``second_step``, and ``step`` with a zero-argument closure) on
the engine's walk: the caller's forward/backward passes are the plan's clean and descent passes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flatsam import amp
from flatsam.closures import detached
from flatsam.skipping import Verdict
from flatsam.stepinfo import StepInfo
from flatsam.walk import Micro, Step, grad_marks, running_stats_frozen


@dataclass
class Watch:
    """What the two-step API watches between ``first_step`` and ``second_step``: BatchNorm statistics
    frozen for the caller's second pass, and hooks that see its backward."""

    frozen: contextlib.ExitStack
    hooks: list[Any] = field(default_factory=list)
    replaced: set[int] = field(default_factory=set)  # parameters whose clean gradient a new one replaced
    backward: bool = False  # a backward ran since first_step
    probe: tuple[nn.Parameter, torch.Tensor] | None = None  # one descent gradient as the backward left it

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.frozen.close()


class TwoStepAPI:
    """``first_step``/``second_step`` (a mixin of :class:`flatsam.engine.SharpnessAware`)."""

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
        """davda54/sam's ``step(closure)``: first_step, the closure at w+ε, second_step. The step's loss
        is the one the closure's first call returned."""
        self._check_caller_passes("step(closure) with a zero-argument closure")
        loss = None
        if all(p.grad is None for p in self.params):  # nobody ran the clean pass: the closure runs it
            with torch.enable_grad():
                loss = detached(closure())
        if self.first_step(zero_grad=True, scaler=scaler, batch_size=batch_size):
            with torch.enable_grad():
                after = detached(closure())
            loss = after if loss is None else loss
        step = self._shared.pending
        assert step is not None
        step.loss = loss
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
        norm). With ``model=`` BatchNorm running statistics stay frozen until ``second_step``, so the
        caller's second pass leaves them as the clean pass set them. ``False`` means no perturbation: run
        the second forward/backward or not, then call ``second_step``. Without it the clean gradient is
        the step's; with ``zero_grad=True`` a second backward replaces it (the same weights: a loop that
        always runs both passes, as pytorch_optimizer's LookSAM example does, works), with
        ``zero_grad=False`` it would add to it and ``second_step`` refuses. ``False`` also when the clean
        gradient is not finite: ``second_step`` then skips the step.

        AMP: pass ``scaler`` (the ``GradScaler`` whose scaled loss the caller back-propagated): norms are
        read unscaled (the direction needs no unscaling), and a ``scaler.unscale_(opt)`` the caller ran
        before this call (to clip the clean gradient) is taken over, so that ``scaler.step(opt)``
        unscales the descent gradient. Without ``scaler`` such an ``unscale_`` is refused at
        ``second_step``. Selections that choose rows (AUSAM, K-SAM, …) and ESAM's stochastic weight
        perturbation need ``step(closure(rows))`` and are refused. ``batch_size`` only feeds the counts
        of the ``StepInfo``. Calling it twice without ``second_step`` is an error.
        """
        if self._shared.pending is not None:
            raise RuntimeError(
                "first_step() called twice: a step is pending (the weights may be perturbed); call "
                "second_step() (or step() without a closure) before the next first_step()"
            )
        self._check_caller_passes("first_step()")
        scaler = amp.enabled(scaler)
        if scaler is not None and amp.take_unscaled(scaler, self):
            scaler = None  # the clean gradient is unscaled already
        ctx = self._context(batch_size or 0)
        ascend = self.schedule.decide(ctx)
        passes = self.plan(ascend, external=True)
        micros = [Micro(None, ctx)]
        step = Step(ctx, micros, passes, scaler, Verdict(), ascend, ready=1, free_grads=zero_grad)
        self._shared.pending = step
        if not self._walk(step):
            return False
        step.watch = self._watch(step, zero_grad)
        return bool(step.ascend)

    def _watch(self, step: Step, zero_grad: bool) -> Watch:
        """Freeze BatchNorm statistics and hook the parameters until ``second_step``: a backward after an
        ascent leaves a probe (to tell whether it was unscaled later), one after a step without ascent
        replaces the clean gradient when ``zero_grad`` (else it is noted, to be refused)."""
        watch = Watch(contextlib.ExitStack())
        watch.frozen.enter_context(running_stats_frozen(self.model))
        trainable = [p for p in self.params if p.requires_grad]

        def seen(p: nn.Parameter) -> None:
            watch.backward = True
            if step.ascend and watch.probe is None and p.grad is not None:
                watch.probe = (p, p.grad.detach().clone())

        def replace_clean(grad: torch.Tensor, p: nn.Parameter) -> torch.Tensor:
            if id(p) not in watch.replaced:
                watch.replaced.add(id(p))
                p.grad = None
            return grad

        watch.hooks = [p.register_post_accumulate_grad_hook(seen) for p in trainable]
        if not step.ascend and zero_grad:
            watch.hooks += [p.register_hook(lambda g, p=p: replace_clean(g, p)) for p in trainable]
        return watch

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> bool:
        """davda54/sam's second step: restore the weights and step the base optimizer with the gradient
        now in ``.grad`` (the caller's pass at w+ε, or the clean one when ``first_step`` returned False).

        With ``scaler``: unscale once, step through it and update its scale; on an overflow (or a
        non-finite gradient without a scaler) nothing is stepped, the weights are exactly those before
        ``first_step`` and the scale backs off. Returns whether the base optimizer stepped.
        """
        info = self._second_step(amp.enabled(scaler))
        if zero_grad:
            self.zero_grad(set_to_none=True)
        return not info.skipped

    def _second_step(self, scaler: torch.amp.GradScaler | None) -> StepInfo:
        step = self._shared.pending
        if step is None:
            raise RuntimeError(
                "second_step() without first_step(): call first_step() after the first backward"
            )
        self._shared.pending = None
        if step.watch is not None:
            step.watch.close()
        try:
            return self._finish(step, scaler)
        finally:
            self.restore()
            self._shared.left = grad_marks(self.params)

    @torch.no_grad()
    def _finish(self, step: Step, scaler: torch.amp.GradScaler | None) -> StepInfo:
        """The rest of the two-step API's plan: the caller's second pass, the restore, the update."""
        watch = step.watch
        if watch is not None and watch.backward and not step.ascend:
            self._second_pass_without_ascent(step, watch)
        step.scaler = self._take_scaler_flags(step, scaler)
        if step.stopped:
            return self._skip(step)
        step.ready = 1
        if not self._walk(step):
            return self._skip(step)
        return self._update(step)

    def _second_pass_without_ascent(self, step: Step, watch: Watch) -> None:
        """A backward ran after ``first_step`` returned False: with ``zero_grad`` its gradient replaced the
        clean one (a parameter it did not reach has none now), else it was added to it: refused."""
        if not watch.replaced:
            self.restore()
            self.zero_grad(set_to_none=True)
            raise RuntimeError(
                "a backward() ran between first_step() and second_step() although first_step() returned "
                "False (no ascent on this step, e.g. LookSAM/SS-SAM/AE-SAM): its gradient was added to "
                "the step's clean gradient, so the step was dropped. Call first_step(zero_grad=True) to "
                "let a second pass replace the clean gradient, or run it only when first_step() returns True"
            )
        for p in self.params:
            if id(p) not in watch.replaced:
                p.grad = None
        step.micros[0].counter.add(step.ctx.batch_size, True)

    def _take_scaler_flags(
        self, step: Step, scaler: torch.amp.GradScaler | None
    ) -> torch.amp.GradScaler | None:
        """``GradScaler.step(opt)`` hands its scale and its inf check (see ``_step_supports_amp_scaling``):
        unscale by hand, or stop on its overflow; ``GradScaler.update()`` then backs off by itself, so
        the update takes no scaler. Otherwise the scaler given to ``second_step``."""
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None:
            return scaler
        grad_scale = getattr(self, "grad_scale", None)  # None when the caller already unscaled
        if grad_scale is None and step.ascend and step.watch is not None:
            self._refuse_unscaled_clean_pass(step.watch)
        if not step.stopped and not bool(found_inf):
            if grad_scale is not None:
                inverse = grad_scale.double().reciprocal().float()
                for g in self._grads():
                    if g is not None:
                        g.mul_(inverse.to(g))
            step.ctx.grad_scale = 1.0
        elif not step.stopped:
            step.verdict = Verdict(reason="non-finite gradient in the descent pass")
            step.stopped = True
        return None

    def _refuse_unscaled_clean_pass(self, watch: Watch) -> None:
        """``scaler.step(opt)`` says the gradient is unscaled, but the descent gradient is as its backward
        left it: the ``unscale_`` ran on the clean gradient, before ``first_step``."""
        if watch.probe is None:
            return
        param, probe = watch.probe
        if param.grad is not None and bool(probe.any()) and torch.equal(param.grad, probe):
            self.restore()
            self.zero_grad(set_to_none=True)
            raise RuntimeError(
                "scaler.unscale_(opt) ran before first_step(), so the descent gradient reached "
                "scaler.step(opt) still scaled and the step was dropped. Pass scaler=scaler to "
                "first_step() (flatsam then takes that unscale_ over), or call scaler.unscale_(opt) after "
                "the second backward"
            )
