"""SAF and MESA (Du, Zhou, Feng, Tan, Zhou, "Sharpness-Aware Training for Free", NeurIPS 2022): the base
optimizer's single pass, with a trajectory loss added to each sample's loss in place of SAM's ascent."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flatsam.component import Component, Outcome, StepContext
from flatsam.distributed import gather_rows
from flatsam.engine import SharpnessAware, StepInfo
from flatsam.methods.registry import BaseOptimizer, Default, MethodInfo, register, resolve_device
from flatsam.schedule import Never

_CODE = "official code, github.com/AngusDujw/SAF"


def trajectory_kl(logits: torch.Tensor, reference: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-sample τ²·KL(softmax(reference/τ) ‖ softmax(logits/τ)), the official trajectory term
    (``F.kl_div(log p, q, reduction="none").sum(-1) * τ²``; log p by ``log_softmax`` where the official
    code takes the log of a softmax: equal up to rounding, and finite where a probability underflows)."""
    target = F.softmax(reference.to(logits) / tau, dim=1)
    return F.kl_div(F.log_softmax(logits / tau, dim=1), target, reduction="none").sum(dim=1) * tau**2


def _check_number(name: str, value: Any, low: float, *, strict: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


def _check_epoch(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class TrajectoryLoss(Component):
    """The trajectory term λ·τ²·KL(softmax(z_ref/τ) ‖ softmax(z/τ)) added to each sample's loss in the
    epochs E_start < e < E_end (the official condition, both strict); ``reference`` gives z_ref.

    A step whose losses did not go through ``losses`` (a closure that does not call
    ``opt.add_trajectory_loss``) is refused before the base optimizer moves: it would be a plain step of
    the base optimizer, a silently different method."""

    #: the method's class name and the call that adds its term, for the refusal's advice
    method: str
    call: str

    def __init__(self, lam: float, tau: float, start_epoch: int, end_epoch: int | None) -> None:
        self.lam = _check_number("lam", lam, 0.0)
        self.tau = _check_number("tau", tau, 0.0, strict=True)
        self.start_epoch = _check_epoch("start_epoch", start_epoch, 0)
        if end_epoch is not None and _check_epoch("end_epoch", end_epoch, 0) <= start_epoch:
            raise ValueError(f"end_epoch must be > start_epoch ({start_epoch}) or None, got {end_epoch}")
        self.end_epoch = end_epoch
        self.epoch = 0
        self._added = False  # whether the current step's losses went through ``losses``

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def active(self) -> bool:
        return self.start_epoch < self.epoch and (self.end_epoch is None or self.epoch < self.end_epoch)

    def reference(
        self, logits: torch.Tensor, index: torch.Tensor | None, inputs: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The reference logits of these rows (``None`` while the term is inactive)."""
        raise NotImplementedError

    def losses(
        self,
        losses: torch.Tensor,
        logits: torch.Tensor,
        index: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``losses`` (per sample) plus the trajectory term of each row once it is active."""
        if logits.dim() != 2 or len(logits) != len(losses):
            raise ValueError(
                f"the trajectory loss needs class logits of shape [rows, classes] matching the {len(losses)} "
                f"per-sample losses, got shape {tuple(logits.shape)}"
            )
        self._added = True
        reference = self.reference(logits, index, inputs)
        if reference is None:
            return losses
        return losses + self.lam * trajectory_kl(logits, reference, self.tau).to(losses)

    def record(self, ctx: StepContext, outcome: Outcome) -> None:
        """Refuse a step whose losses never went through ``losses`` (before the base optimizer steps)."""
        added, self._added = self._added, False
        if not added:
            raise RuntimeError(
                f"{self.method}: this step's per-sample losses did not go through opt.add_trajectory_loss, "
                f"so it would be a plain step of the base optimizer; in the closure (with Lightning, in "
                f"sam_losses), return {self.call} "
                f"(logits with their graph; flatsam.{self.method}'s docstring shows the loop)"
            )

    def skipped(self, ctx: StepContext) -> None:
        """A step skipped for a non-finite loss: its losses are spent, so the next step must add its own."""
        self._added = False

    def extra_repr(self) -> str:
        return f"lam={self.lam}, tau={self.tau}, start_epoch={self.start_epoch}, end_epoch={self.end_epoch}"


class OutputHistory(TrajectoryLoss):
    """SAF's reference: each sample's logits recorded ``lag`` (Ẽ) epochs earlier.

    As the official ``SAF_train.py``: a table of N × (Ẽ + 1) × K float32 logits (K classes; allocated at
    the first call), slot e mod (Ẽ + 1) written with each row's output of epoch e (detached, before the
    step's update), slot (e − Ẽ) mod (Ẽ + 1) read as the reference. Our additions: a row whose logits
    are not finite is not written (the official code writes whatever came out), and under
    torch.distributed every rank's (index, logits) are gathered so all ranks hold the whole table (the
    official code keeps one table per process, written only with the rows that process saw, so after
    ``DistributedSampler`` reshuffles a row's reference can be an older epoch's or zeros).
    """

    state_fields = ("history", "epoch")
    skip_on_device = True  # record() changes no state: the table is written in the closure, as officially
    method, call = "SAF", "opt.add_trajectory_loss(losses, logits, index[rows])"

    def __init__(
        self,
        num_samples: int,
        lam: float = 0.3,
        tau: float = 5.0,
        lag_epochs: int = 3,
        start_epoch: int = 5,
        end_epoch: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(lam, tau, start_epoch, end_epoch)
        self.num_samples = _check_epoch("num_samples", num_samples, 1)
        self.lag = _check_epoch("lag_epochs", lag_epochs, 1)
        if start_epoch + 1 < self.lag:
            raise ValueError(
                f"start_epoch ({start_epoch}) must be >= lag_epochs - 1 ({self.lag - 1}): the first epoch "
                "with the term would read logits from before epoch 0"
            )
        self.device = torch.device(device)
        self.history = torch.zeros(0, dtype=torch.float32, device=self.device)

    def memory_bytes(self, classes: int) -> int:
        """Bytes the table takes for ``classes`` classes: N × (Ẽ + 1) × K float32."""
        return self.num_samples * (self.lag + 1) * classes * 4

    def _write(self, logits: torch.Tensor, index: torch.Tensor) -> None:
        rows = index.to(self.device, non_blocking=True)
        out = logits.detach().to(self.device, torch.float32)
        rows, out = gather_rows(rows, out)
        if not self.history.numel():
            shape = (self.num_samples, self.lag + 1, out.shape[1])
            self.history = torch.zeros(shape, dtype=torch.float32, device=self.device)
        if out.shape[1] != self.history.shape[2]:
            raise ValueError(f"logits have {out.shape[1]} classes, the history {self.history.shape[2]}")
        slot = self.epoch % (self.lag + 1)
        kept = torch.isfinite(out).all(dim=1, keepdim=True)
        self.history[rows, slot] = torch.where(kept, out, self.history[rows, slot])

    def reference(
        self, logits: torch.Tensor, index: torch.Tensor | None, inputs: torch.Tensor | None
    ) -> torch.Tensor | None:
        if index is None:
            raise ValueError(
                "SAF needs the dataset indices of the rows (index=..., e.g. from flatsam.data.IndexedDataset)"
            )
        self._write(logits, index)
        if not self.active():
            return None
        rows = index.to(self.device, non_blocking=True)
        return self.history[rows, (self.epoch - self.lag) % (self.lag + 1)].to(logits.device)


class EMAReference(TrajectoryLoss):
    """MESA's reference: the output of an exponential moving average of the model (timm's
    ``ModelEmaV2``, which the official ``MESA_train.py`` uses): a copy of the model in eval mode whose
    every ``state_dict`` entry (parameters and buffers) moves as e ← decay·e + (1 − decay)·m after every
    step. The official script runs the EMA forward on every step; here it runs only while the term is
    active (the same updates, fewer forwards). ``forward_rows`` counts its rows for the cost."""

    state_fields = ("epoch",)
    skip_on_device = True
    method, call = "MESA", "opt.add_trajectory_loss(losses, logits, inputs=x[rows])"

    def __init__(
        self,
        model: nn.Module,
        lam: float = 0.8,
        tau: float = 5.0,
        start_epoch: int = 5,
        end_epoch: int | None = None,
        decay: float = 0.9998,
    ) -> None:
        super().__init__(lam, tau, start_epoch, end_epoch)
        if not (isinstance(decay, float | int) and 0.0 <= decay < 1.0):
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module  # the copy is of the module (a DDP wrapper cannot be copied)
        self.source = model
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.forward_passes = self.forward_rows = 0

    @torch.no_grad()
    def update(self) -> None:
        """One EMA update from the model's current ``state_dict`` (timm's arithmetic)."""
        source = self.source.state_dict()
        for name, average in self.module.state_dict().items():
            average.copy_(self.decay * average + (1.0 - self.decay) * source[name].to(average.device))

    def reference(
        self, logits: torch.Tensor, index: torch.Tensor | None, inputs: torch.Tensor | None
    ) -> torch.Tensor | None:
        if not self.active():
            return None
        if inputs is None:
            raise ValueError("MESA needs the rows' inputs (inputs=...) for the EMA model's forward")
        self.forward_passes += 1
        self.forward_rows += len(inputs)
        with torch.no_grad():
            return self.module(inputs)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["ema"] = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.module.load_state_dict(state["ema"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, decay={self.decay}"


class _TrajectoryMethod(SharpnessAware):
    """The base optimizer through the engine (one pass per step, no ascent) with a trajectory loss that
    the closure adds to its per-sample losses: ``opt.add_trajectory_loss(losses, logits, index, inputs)``.
    The loss's state (SAF's table, MESA's EMA model) is the ``"trajectory"`` entry of ``state_dict``."""

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer,
        term: TrajectoryLoss,
        model: nn.Module | None,
        **kw: Any,
    ) -> None:
        kw.pop("rho", None)
        super().__init__(params, base_optimizer, rho=0.0, schedule=Never(), model=model, **kw)
        self.trajectory = term

    @property
    def components(self) -> dict[str, Component]:
        parts = super().components
        term = self.__dict__.get("trajectory")
        return parts if term is None else {**parts, "trajectory": term}

    @property
    def add_trajectory_loss(self) -> Callable[..., torch.Tensor]:
        """``opt.add_trajectory_loss(losses, logits, index=None, inputs=None)``: per-sample ``losses`` plus
        the trajectory term (``TrajectoryLoss.losses``); ``logits`` are the model's outputs for these rows
        (with their graph), ``index`` their dataset indices (SAF), ``inputs`` their inputs (MESA)."""
        return self.trajectory.losses


class SAF(_TrajectoryMethod):
    """SAF: plain training plus λ·τ²·KL(softmax(z_i^(e−Ẽ)/τ) ‖ softmax(z_i/τ)) per sample from epoch
    E_start + 1 on, z_i^(e−Ẽ) the sample's logits recorded Ẽ epochs earlier (see ``OutputHistory``).
    One forward and backward per row, like the base optimizer; the table takes N × (Ẽ + 1) × K float32
    (CIFAR-10: 50,000 × 4 × 10 × 4 B = 8 MB; ImageNet: 1.28 M × 4 × 1000 × 4 B = 20 GB, so pass
    ``history_device="cpu"`` there), on ``history_device``, by default the parameters' device.

    Defaults from the official code (github.com/AngusDujw/SAF): τ = 5 (``--temperature``), λ = 0.3
    (README and the SAF line of ``run.sh``; the parser's default ``--reinforce`` is 0.16), Ẽ = 3
    (``--minus_epoch``; README "2/3", ``run.sh`` runs 2), E_start = 5 (``--kl_start_epoch``), no end
    (the parser's ``--kl_end_epoch`` 300 is past every run). Needs ``set_epoch`` every epoch and a
    closure that adds the term with the rows' dataset indices::

        opt = flatsam.SAF(model.parameters(), torch.optim.SGD, num_samples=len(train), lr=0.1, momentum=0.9)
        for epoch in range(epochs):
            opt.set_epoch(epoch)
            for x, y, index in loader:  # flatsam.data.IndexedDataset
                def closure(rows):
                    logits = model(x[rows])
                    losses = F.cross_entropy(logits, y[rows], reduction="none")
                    return opt.add_trajectory_loss(losses, logits, index[rows])
                opt.step(closure, index=index)
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        num_samples: int,
        lam: float = 0.3,
        tau: float = 5.0,
        lag_epochs: int = 3,
        start_epoch: int = 5,
        end_epoch: int | None = None,
        history_device: torch.device | str | None = None,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        params, history_device = resolve_device(params, base_optimizer, history_device)
        term = OutputHistory(num_samples, lam, tau, lag_epochs, start_epoch, end_epoch, history_device)
        super().__init__(params, base_optimizer, term, model, **kwargs)


class MESA(_TrajectoryMethod):
    """MESA (memory-efficient SAF): the reference is the output of an EMA of the model instead of
    stored logits (see ``EMAReference``): no per-sample table, one model copy, and one extra no-grad
    forward per row while the term is active (counted in ``StepInfo.forward_samples``). Needs ``model``.

    Defaults from the official code (github.com/AngusDujw/SAF): λ = 0.8 (README and the MESA line of
    ``run.sh``; the parser's default ``--reinforce`` is 0.3), τ = 5, E_start = 5, no end (the parser's
    ``--kl_end_epoch`` 360), EMA decay 0.9998 (timm's ``--model-ema-decay`` default, which ``run.sh``
    keeps). The EMA is updated after every step (also a skipped one, as the official loop does after an
    AMP overflow). Closure: ``opt.add_trajectory_loss(losses, logits, inputs=x[rows])``.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: BaseOptimizer = torch.optim.SGD,
        *,
        lam: float = 0.8,
        tau: float = 5.0,
        start_epoch: int = 5,
        end_epoch: int | None = None,
        decay: float = 0.9998,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("MESA needs model= (its EMA copy is the reference)")
        term = EMAReference(model, lam, tau, start_epoch, end_epoch, decay)
        super().__init__(params, base_optimizer, term, model, **kwargs)

    def _after_step(self) -> tuple[int, int]:
        term = self.trajectory
        assert isinstance(term, EMAReference)
        term.update()
        counts = (term.forward_passes, term.forward_rows)
        term.forward_passes = term.forward_rows = 0
        return counts

    def step(self, *args: Any, **kwargs: Any) -> StepInfo:  # type: ignore[override]
        info = super().step(*args, **kwargs)
        passes, rows = self._after_step()
        return dataclasses.replace(
            info, forward_passes=info.forward_passes + passes, forward_samples=info.forward_samples + rows
        )

    def second_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> bool:
        stepped = super().second_step(zero_grad, scaler)
        self._after_step()
        return stepped


_SAF_DEFAULTS = {
    "lam": Default(0.3, f"{_CODE} README and run.sh (SAF); SAF_train.py's --reinforce default is 0.16"),
    "tau": Default(5.0, f"{_CODE} SAF_train.py --temperature"),
    "lag_epochs": Default(3, f"{_CODE} SAF_train.py --minus_epoch (README: 2 or 3; run.sh: 2)"),
    "start_epoch": Default(5, f"{_CODE} SAF_train.py --kl_start_epoch (term from epoch 6: epoch > 5)"),
    "end_epoch": Default(None, f"{_CODE}: --kl_end_epoch 300, past every run (None: no end)"),
}
register(
    MethodInfo(
        "saf",
        SAF,
        "base optimizer + KL to each sample's logits of Ẽ epochs ago (1 pass; N×(Ẽ+1)×K table)",
        "Du et al., NeurIPS 2022 (Sharpness-Aware Training for Free)",
        _SAF_DEFAULTS,
        needs=("num_samples",),
        sam_rho=False,
    )
)
register(
    MethodInfo(
        "mesa",
        MESA,
        "base optimizer + KL to an EMA model's output (1 pass + 1 no-grad EMA forward)",
        "Du et al., NeurIPS 2022 (MESA)",
        {
            "lam": Default(
                0.8, f"{_CODE} README and run.sh (MESA); MESA_train.py's --reinforce default is 0.3"
            ),
            "tau": Default(5.0, f"{_CODE} MESA_train.py --temperature"),
            "start_epoch": Default(5, f"{_CODE} MESA_train.py --kl_start_epoch"),
            "end_epoch": Default(None, f"{_CODE}: --kl_end_epoch 360, past every run (None: no end)"),
            "decay": Default(0.9998, f"{_CODE}: timm's --model-ema-decay default, kept by run.sh"),
        },
        sam_rho=False,
    )
)
