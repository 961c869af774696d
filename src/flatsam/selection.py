"""Selections: which rows of the batch enter the ascent pass and which the descent pass."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from flatsam.component import Component, Outcome, StepContext, make_generator
from flatsam.distributed import gather_rows


@dataclass
class RowPlan:
    """Batch positions of the two passes, with optional per-row loss weights (mean of w·ℓ).

    ``parts`` splits an ascent step into several (ascent, descent) pairs, each with its own ε, whose descent
    gradients are averaged (m-sharpness); ``ascent``/``descent`` then serve steps without an ascent.
    """

    ascent: torch.Tensor
    descent: torch.Tensor
    ascent_weights: torch.Tensor | None = None
    descent_weights: torch.Tensor | None = None
    parts: list[RowPlan] | None = None

    @property
    def same_rows(self) -> bool:
        return self.ascent is self.descent or torch.equal(self.ascent, self.descent)


def all_rows(batch_size: int) -> torch.Tensor:
    return torch.arange(batch_size)


def every_row(rows: torch.Tensor, batch_size: int | None) -> bool:
    """Whether ``rows`` are the batch's rows 0, …, B−1 in order (checked only for rows on the CPU, which
    is free). The engine then hands the closure ``slice(None)``: ``x[rows]`` becomes a view of the batch
    instead of a gather, and a CUDA batch indexed by a CPU index tensor would copy it to the device with
    a blocking copy, a host sync on every pass."""
    return (
        rows.device.type == "cpu"
        and len(rows) == batch_size
        and torch.equal(rows, torch.arange(batch_size, dtype=rows.dtype))
    )


class Selection(Component):
    """Plans the rows of a step.

    ``needs_scores``: the engine first runs a no-grad forward over the whole batch and hands ``plan``
    the per-sample losses (K-SAM). ``needs_perturbed_scores``: after the perturbation the engine runs a
    no-grad forward of the ascent rows at w+ε and lets ``refine`` choose the descent rows (ESAM's SDS).
    """

    needs_scores: ClassVar[bool] = False
    needs_perturbed_scores: ClassVar[bool] = False
    #: False when the first pass always covers the whole batch with equal weights, so that B can be read
    #: from its losses (``step(closure)`` without ``index``/``batch_size``)
    needs_batch_size: ClassVar[bool] = True
    #: False when both passes always use every row with equal weights (the two-step API needs that)
    selects_rows: ClassVar[bool] = True
    #: True when the selection keeps a per-sample history: every step needs the batch's dataset indices
    needs_index: ClassVar[bool] = False

    def plan(self, ctx: StepContext, scores: torch.Tensor | None = None) -> RowPlan:
        raise NotImplementedError

    def refine(
        self, ctx: StepContext, plan: RowPlan, loss_before: torch.Tensor, loss_perturbed: torch.Tensor
    ) -> RowPlan:
        return plan

    def epoch_indices(self, epoch: int, order: torch.Tensor) -> torch.Tensor:
        """The dataset indices epoch ``epoch`` visits, in the loop's shuffled ``order`` of all of them
        (a training loop asks at the start of every epoch): all of them, unless the selection prunes
        whole samples from the epoch (InfoBatch)."""
        return order


class AllRows(Selection):
    """Both passes on every row (SAM)."""

    skip_on_device = True

    needs_batch_size = False
    selects_rows = False

    def plan(self, ctx: StepContext, scores: torch.Tensor | None = None) -> RowPlan:
        rows = all_rows(ctx.batch_size)
        return RowPlan(rows, rows)


def check_fraction(name: str, value: float) -> float:
    if not (0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return float(value)


def kept_rows(keep: float, batch_size: int) -> int:
    """⌊keep·B⌋ rows, at least one (the authors' ``int(alpha * B)``)."""
    return max(1, math.floor(keep * batch_size))


def check_num_samples(num_samples: int) -> int:
    """``num_samples`` as a Python int (numpy integers accepted), else a ``ValueError``."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
        raise ValueError(f"num_samples (the training-set size) must be an integer >= 1, got {num_samples!r}")
    return int(num_samples)


def checked_index(index: torch.Tensor, num_samples: int, device: torch.device) -> torch.Tensor:
    """Dataset indices as a long tensor on ``device``, each in [0, num_samples).

    Checked where the index lives, before it moves, without a host sync: a CPU index (what a data loader
    yields) raises ``ValueError`` at once; an index already on an accelerator is checked there by
    ``torch._assert_async`` (a device-side assertion, reported at the next synchronisation).
    """
    index = torch.as_tensor(index)
    if index.numel():
        inside = (index.min() >= 0) & (index.max() < num_samples)
        try:
            torch._assert_async(inside, "index values must be in [0, num_samples)")
        except RuntimeError:
            raise ValueError(
                f"index values must be in [0, num_samples) = [0, {num_samples}), got range "
                f"[{int(index.min())}, {int(index.max())}]; is num_samples the training-set size?"
            ) from None
    return index.to(device=device, dtype=torch.long, non_blocking=True)


def draw_without_replacement(probs: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``torch.multinomial(probs, count, replacement=False, generator=generator)`` without its host sync.

    The same draw as torch's own fast path for sampling without replacement (one Exp(1) variate q per row
    from ``generator``, then the ``count`` largest p/q, the Gumbel-top-k trick): equal rows and generator
    state, but without the validity check of ``probs`` that torch runs with ``.item()`` (probabilities
    here come from ``minmax_weights`` and are positive and finite by construction).
    """
    keys = probs / torch.empty_like(probs).exponential_(1, generator=generator)
    return keys.argmax(-1, keepdim=True) if count == 1 else torch.topk(keys, count).indices


def minmax_weights(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Scale ``values`` linearly onto [low, high] (min → low, max → high); all-equal values (or a
    single row) give ``low`` everywhere, i.e. uniform sampling, never NaN."""
    lo, hi = values.min(), values.max()
    span = hi - lo
    unit = torch.where(span > 0, (values - lo) / span.clamp_min(torch.finfo(values.dtype).tiny), 0.0)
    return low + unit * (high - low)


class ADLPSampler(Selection):
    """AUSAM's selection (Deng et al., AAAI 2025): sample rows by their averaged loss change under the
    SAM perturbation (ADLP), and run both passes on the drawn rows only.

    Per dataset index i it keeps the sum ``dlp_sum[i]`` and count ``dlp_count[i]`` of the observed
    DLP = |ℓ(w+ε) − ℓ(w)| (both initialised to 1, as in the authors' code); ADLP = sum/count. Each
    step after ``warmup_epochs`` draws ⌊keep·B⌋ distinct rows, as ``torch.multinomial`` without
    replacement does (``draw_without_replacement``), from weights that min–max scale the batch's ADLPs
    into [s_min, s_hi(epoch)], where s_hi ramps linearly from s_min (epoch 0) to s_max (epoch
    ``ramp_epochs``). During the warm-up every row is used and each observed DLP overwrites the history
    (the code's ``epoch == 0`` branch); later observations are added to the running sum and count. The
    history, the generator and the draws live on ``device`` (give the model's: AUSAM does), so a step
    on an accelerator never waits for the host.

    Defaults and behaviour follow the authors' code (github.com/ajiaaa/AUSAM, ``sam/ausam.py`` and
    ``train.py``: alpha 0.5, fmin 0.1, fmax 0.5, trans_epoch 30, warm-up = epoch 0). Options for the
    points the paper and the code leave open, all off by default:

    - ``average="ema"``: ADLP ← β·ADLP + (1−β)·DLP with ``ema_decay`` β (the code's commented-out line,
      β = 0.5) instead of the all-history mean.
    - ``normalize_by_grad_norm``: store |Δℓ| / (ρ‖g‖), the paper's approximation of each sample's
      gradient norm, rather than the code's raw |Δℓ|.
    - ``reweight``: weight the descent loss of a drawn row by 1/(B·p) (importance sampling toward the
      batch-mean gradient; exact for draws with replacement, an approximation without), instead of the
      code's plain mean.

    ``top_offset`` = 1e-9 is the code's: ``train.py`` adds 0.000000001 to the top of the weight range
    (``fmax_``) every epoch. In float32 it moves about 1 % of the sampling probabilities by one or two
    units in the last place (measured on random ADLPs over the 30 ramp epochs), so a draw rarely differs
    without it; ``top_offset=0`` is the paper's formula.

    Under label noise a mislabelled row's loss moves more under the perturbation, so ADLP draws such
    rows more often than their share: 35–38 % of the drawn rows at 30 % noise in flatsam's measurement
    (``bench/noisy-selection``; the paper reports no label-noise experiment, as we read it).

    Usable on its own in a hand-written loop: ``rows = sampler.select(index)`` …
    ``sampler.update(index[rows], loss_before, loss_after)``.
    """

    state_fields = ("dlp_sum", "dlp_count", "warmup_seen", "epoch")
    skip_on_device = True  # record leaves the history unchanged where outcome.found_inf is set
    needs_index = True

    def __init__(
        self,
        num_samples: int,
        keep: float = 0.5,
        s_min: float = 0.1,
        s_max: float = 0.5,
        ramp_epochs: int = 30,
        warmup_epochs: int = 1,
        top_offset: float = 1e-9,
        average: Literal["mean", "ema"] = "mean",
        ema_decay: float = 0.5,
        normalize_by_grad_norm: bool = False,
        reweight: bool = False,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        num_samples = check_num_samples(num_samples)
        self.keep = check_fraction("keep", keep)
        if not (0.0 < s_min <= s_max):
            raise ValueError(
                f"s_min and s_max must satisfy 0 < s_min <= s_max, got s_min={s_min}, s_max={s_max}"
            )
        if ramp_epochs < 0:
            raise ValueError(f"ramp_epochs must be >= 0, got {ramp_epochs}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if average not in ("mean", "ema"):
            raise ValueError(f"average must be 'mean' or 'ema', got {average!r}")
        if not (0.0 <= ema_decay < 1.0):
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.num_samples = num_samples
        self.s_min, self.s_max = float(s_min), float(s_max)
        self.ramp_epochs, self.warmup_epochs = ramp_epochs, warmup_epochs
        if not (math.isfinite(top_offset) and top_offset >= 0):
            raise ValueError(f"top_offset must be >= 0 and finite, got {top_offset}")
        self.top_offset = float(top_offset)
        self.average, self.ema_decay = average, ema_decay
        self.normalize_by_grad_norm, self.reweight = normalize_by_grad_norm, reweight
        self.device = torch.device(device)
        self.dlp_sum = torch.ones(num_samples, device=self.device)
        self.dlp_count = torch.ones(num_samples, device=self.device)
        self.generator = make_generator(seed, self.device)
        self.epoch = 0
        self.warmup_seen = 0  # rows recorded during the warm-up, to catch a loop without set_epoch
        self._index: torch.Tensor | None = None  # the current step's indices on the history's device
        self._fresh = True  # no step planned, no epoch set, no state loaded yet

    # -- the standalone API -------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Epochs count from 0: the warm-up is epochs 0 … warmup_epochs − 1. A fresh sampler whose first
        epoch is not 0 (a 1-based loop) would skip it, so that warns."""
        if self._fresh and epoch != 0 and self.warmup_epochs > 0:
            warnings.warn(
                f"AUSAM's first set_epoch is {epoch}, not 0: epochs count from 0, and its "
                f"{self.warmup_epochs}-epoch warm-up (epochs 0 to {self.warmup_epochs - 1}), which "
                "fills the per-sample history, is skipped. Call set_epoch(epoch) with 0-based epochs "
                "(set_epoch(e - 1) in a loop that counts from 1)",
                UserWarning,
                stacklevel=3,
            )
        self._fresh = False
        self.epoch = epoch

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._fresh = False

    @property
    def adlp(self) -> torch.Tensor:
        """The averaged DLP of every dataset index."""
        return self.dlp_sum / self.dlp_count

    def in_warmup(self, epoch: int | None = None) -> bool:
        return (self.epoch if epoch is None else epoch) < self.warmup_epochs

    def upper_weight(self, epoch: int | None = None) -> float:
        """s_hi(epoch): linear from s_min at epoch 0 to s_max at ``ramp_epochs``, then constant, plus
        ``top_offset`` (written as the authors' ``fmax - (trans - e)/trans * (fmax - fmin) + 0.000000001``
        so the float values match)."""
        epoch = max(self.epoch if epoch is None else epoch, 0)
        if epoch >= self.ramp_epochs:
            return self.s_max + self.top_offset
        ramp = self.s_max - ((self.ramp_epochs - epoch) / self.ramp_epochs) * (self.s_max - self.s_min)
        return ramp + self.top_offset

    def probabilities(self, index: torch.Tensor, epoch: int | None = None) -> torch.Tensor:
        """Sampling probabilities of the batch rows (sum to 1)."""
        return self._probabilities(self._checked(index), epoch)

    def _probabilities(self, index: torch.Tensor, epoch: int | None) -> torch.Tensor:
        adlp = self.dlp_sum[index] / self.dlp_count[index]  # the batch's rows only, not the whole table
        weights = minmax_weights(adlp, self.s_min, self.upper_weight(epoch))
        return weights / weights.sum()

    def select(
        self, index: torch.Tensor | None, epoch: int | None = None, batch_size: int | None = None
    ) -> torch.Tensor:
        """Batch positions to train on: all rows during the warm-up, else ⌊keep·B⌋ drawn rows."""
        return self._draw(None if index is None else self._checked(index), epoch, batch_size)[0]

    def _draw(
        self, index: torch.Tensor | None, epoch: int | None, batch_size: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows (and their probabilities after the warm-up) for an ``index`` already checked and on the
        history's device: the draw runs there, with no host sync."""
        if self.in_warmup(epoch):
            size = len(index) if index is not None else batch_size
            if size is None:
                raise ValueError("select() needs index (or batch_size during the warm-up)")
            return all_rows(size), None
        if index is None:
            raise ValueError(
                "AUSAM needs the dataset indices of the batch after its warm-up: call step(closure, "
                "index=index) with the indices from flatsam.data.IndexedDataset"
            )
        probs = self._probabilities(index, epoch)
        return draw_without_replacement(probs, kept_rows(self.keep, len(index)), self.generator), probs

    @torch.no_grad()
    def update(
        self,
        index: torch.Tensor,
        loss_before: torch.Tensor,
        loss_after: torch.Tensor,
        grad_norm: torch.Tensor | float | None = None,
        rho: float | None = None,
        epoch: int | None = None,
    ) -> None:
        """Record DLP = |loss_after − loss_before| of the dataset indices ``index`` (the rows trained on).
        Under torch.distributed every rank's (index, DLP) pairs are gathered, so all ranks keep the same
        history (each rank must call ``update`` once per step)."""
        self._record(self._checked(index), loss_before, loss_after, grad_norm, rho, epoch)

    def _record(
        self,
        index: torch.Tensor,
        loss_before: torch.Tensor,
        loss_after: torch.Tensor,
        grad_norm: torch.Tensor | float | None,
        rho: float | None,
        epoch: int | None,
        skip: torch.Tensor | None = None,
    ) -> None:
        """``update`` for an ``index`` already checked and on the history's device. ``skip`` (a 0-dim bool
        tensor, not read on the host): where set, the history stays exactly as it is (each entry is
        written back, or +0 is added to a sum of non-negative values); the rows still count towards the
        warm-up warning."""
        dlp = (loss_after.detach() - loss_before.detach()).abs().to(self.dlp_sum.dtype)
        if self.normalize_by_grad_norm:
            if grad_norm is None or rho is None:
                raise ValueError("normalize_by_grad_norm needs grad_norm and rho in update()")
            denom = torch.as_tensor(grad_norm, dtype=dlp.dtype, device=dlp.device) * rho
            dlp = torch.where(denom > 0, dlp / denom.clamp_min(torch.finfo(dlp.dtype).tiny), 0.0)
        index, dlp = gather_rows(index.to(dlp.device, non_blocking=True), dlp)
        index, dlp = index.to(self.device, non_blocking=True), dlp.to(self.device, non_blocking=True)
        skip = None if skip is None else skip.to(self.device, non_blocking=True)

        def kept(new: torch.Tensor, old: torch.Tensor | float) -> torch.Tensor:
            return new if skip is None else torch.where(skip, old, new)

        if self.in_warmup(epoch):
            self.dlp_sum[index] = kept(dlp * self.dlp_count[index], self.dlp_sum[index])
            self._count_warmup(len(index))
        elif self.average == "ema":
            self.dlp_sum[index] = kept(
                self.ema_decay * self.dlp_sum[index] + (1 - self.ema_decay) * dlp, self.dlp_sum[index]
            )
        else:
            self.dlp_sum.index_add_(0, index, kept(dlp, 0.0))
            self.dlp_count.index_add_(0, index, kept(torch.ones_like(dlp), 0.0))

    def _checked(self, index: torch.Tensor) -> torch.Tensor:
        return checked_index(index, self.num_samples, self.device)

    def _count_warmup(self, rows: int) -> None:
        """Warn once when the warm-up has seen a whole extra pass over the data: set_epoch is missing."""
        limit = (self.warmup_epochs + 1) * self.num_samples
        if self.warmup_seen <= limit < self.warmup_seen + rows:
            warnings.warn(
                f"AUSAM is still in its {self.warmup_epochs}-epoch warm-up (plain SAM on every row) after "
                f"{self.warmup_seen + rows} rows of a {self.num_samples}-sample dataset: call "
                "opt.set_epoch(epoch) (or sampler.set_epoch) at the start of every epoch",
                stacklevel=4,
            )
        self.warmup_seen += rows

    # -- the engine protocol ------------------------------------------------------------------------
    def plan(self, ctx: StepContext, scores: torch.Tensor | None = None) -> RowPlan:
        self._fresh = False
        # the batch's indices are checked and moved to the history's device once per step, for plan and record
        self._index = None if ctx.index is None else self._checked(ctx.index)
        rows, probs = self._draw(self._index, ctx.epoch, ctx.batch_size)
        weights = 1.0 / (probs[rows] * len(probs)) if self.reweight and probs is not None else None
        return RowPlan(rows, rows, descent_weights=weights)

    def record(self, ctx: StepContext, outcome: Outcome) -> None:
        index, self._index = self._index, None
        if ctx.index is not None and (index is None or len(index) != len(ctx.index)):
            index = self._checked(ctx.index)  # a step over micro-batches: plan saw each one, record all
        if index is None or not outcome.ascent or outcome.loss_after is None:
            return
        self._record(
            index[outcome.ascent_rows.to(self.device, non_blocking=True)],
            outcome.loss_before,
            outcome.loss_after,
            outcome.clean_grad_norm,
            ctx.rho,
            ctx.epoch,
            outcome.found_inf,
        )

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, keep={self.keep}, s_min={self.s_min}, s_max={self.s_max}, "
            f"ramp_epochs={self.ramp_epochs}, warmup_epochs={self.warmup_epochs}, "
            f"average={self.average!r}"
        )


class RobustADLPSampler(ADLPSampler):
    """AUSAM's ADLP sampling made less eager to draw mislabelled rows (**ours, not the paper's**).

    Under label noise a mislabelled row's loss moves most under the perturbation, so ADLP draws such rows
    more often than their share (``ADLPSampler``). Three changes, each off at its neutral value (all
    neutral: exactly ``ADLPSampler``'s draws):

    - ``uniform_mix`` λ: draw from (1 − λ)·p_ADLP + λ/B, a mixture of ADLP and uniform sampling (uniform
      sampling of the same half batch ended level with SAM in flatsam's 143-epoch control, ADLP below).
    - ``loss_quantile`` q: only rows whose last recorded clean loss is at most the m-th smallest of the
      batch's, m = max(⌊keep·B⌋, ⌈q·B⌉), can be drawn (ties included), so the rows the model fits worst —
      under label noise, mostly the mislabelled ones — are left out. A row's loss is the clean-pass loss
      of the last step that trained on it (the warm-up records every row); rows never seen count as 0,
      i.e. can be drawn. The loss of a row left out is not refreshed until a warm-up, so it stays out: a
      hard but correctly labelled row can be left out too (that is the price, to be measured).
    - ``keep_end``: the kept fraction moves linearly from ``keep`` in the first epoch after the warm-up to
      ``keep_end`` in the last of ``epochs`` (the run's length, needed then), so that more of the
      sharpness-aware work falls late in training, where SAM's effect is decided (Zhou et al.,
      "Sharpness-Aware Minimization Efficiently Selects Flatter Minima Late in Training", arXiv
      2410.10373); with keep + keep_end = 1 the mean cost is that of keep 0.5.

    Probabilities of rows left out are 0; the others keep their mixed weights, renormalised. Everything
    else (history, warm-up, ramp, ``keep``) is ``ADLPSampler``'s; ``options`` go to it.
    """

    state_fields = (*ADLPSampler.state_fields, "last_loss")

    def __init__(
        self,
        num_samples: int,
        uniform_mix: float = 0.0,
        loss_quantile: float = 1.0,
        keep_end: float | None = None,
        epochs: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(num_samples, **options)
        self._robust(uniform_mix, loss_quantile, keep_end, epochs)

    @classmethod
    def taking_over(cls, sampler: ADLPSampler, *robust_options: Any) -> RobustADLPSampler:
        """A robust sampler with ``sampler``'s settings, history and generator (used by a preset built on
        AUSAM's constructor, so that no extra random number is drawn); ``robust_options`` as the
        constructor's (uniform_mix, loss_quantile, keep_end, epochs)."""
        robust = cls.__new__(cls)
        robust.__dict__.update(sampler.__dict__)
        robust._robust(*robust_options)
        return robust

    def _robust(
        self,
        uniform_mix: float,
        loss_quantile: float,
        keep_end: float | None = None,
        epochs: int | None = None,
    ) -> None:
        if not 0.0 <= uniform_mix <= 1.0:
            raise ValueError(f"uniform_mix must be in [0, 1], got {uniform_mix}")
        self.loss_quantile = check_fraction("loss_quantile", loss_quantile)
        self.uniform_mix = float(uniform_mix)
        self.keep_start = self.keep
        self.keep_end = None if keep_end is None else check_fraction("keep_end", keep_end)
        if keep_end is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"keep_end needs epochs (the run's length, an integer >= 1), got {epochs!r}")
        self.epochs = epochs
        self.last_loss = torch.zeros(self.num_samples, device=self.device)

    def keep_at(self, epoch: int) -> float:
        """The kept fraction of ``epoch``: ``keep``, or on the way from ``keep`` (first epoch after the
        warm-up) to ``keep_end`` (the last epoch)."""
        if self.keep_end is None or self.epochs is None:
            return self.keep_start
        last = self.epochs - 1
        if last <= self.warmup_epochs:
            return self.keep_end
        progress = min(max(epoch - self.warmup_epochs, 0) / (last - self.warmup_epochs), 1.0)
        return self.keep_start + (self.keep_end - self.keep_start) * progress

    def _draw(
        self, index: torch.Tensor | None, epoch: int | None, batch_size: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.keep = self.keep_at(self.epoch if epoch is None else epoch)
        return super()._draw(index, epoch, batch_size)

    def eligible(self, index: torch.Tensor) -> torch.Tensor:
        """Which rows of the batch (dataset indices ``index``, checked) may be drawn (a bool mask)."""
        losses = self.last_loss[index]
        m = max(kept_rows(self.keep, len(index)), math.ceil(self.loss_quantile * len(index)))
        if m >= len(index):
            return torch.ones_like(losses, dtype=torch.bool)
        return losses <= torch.kthvalue(losses, m).values

    def _probabilities(self, index: torch.Tensor, epoch: int | None) -> torch.Tensor:
        probs = super()._probabilities(index, epoch)
        if self.uniform_mix == 0.0 and self.loss_quantile == 1.0:
            return probs
        probs = (1.0 - self.uniform_mix) * probs + self.uniform_mix / len(probs)
        probs = torch.where(self.eligible(index), probs, 0.0)
        return probs / probs.sum()

    def _record(
        self,
        index: torch.Tensor,
        loss_before: torch.Tensor,
        loss_after: torch.Tensor,
        grad_norm: torch.Tensor | float | None,
        rho: float | None,
        epoch: int | None,
        skip: torch.Tensor | None = None,
    ) -> None:
        """``ADLPSampler``'s record, then the clean losses of the rows trained on (kept where ``skip``)."""
        super()._record(index, loss_before, loss_after, grad_norm, rho, epoch, skip)
        rows, losses = gather_rows(index.to(loss_before.device), loss_before.detach().float())
        rows, losses = rows.to(self.device), losses.to(self.device, self.last_loss.dtype)
        if skip is not None:
            losses = torch.where(skip.to(self.device), self.last_loss[rows], losses)
        self.last_loss[rows] = losses

    def extra_repr(self) -> str:
        robust = (
            f"uniform_mix={self.uniform_mix}, loss_quantile={self.loss_quantile}, keep_end={self.keep_end}"
        )
        return f"{super().extra_repr()}, {robust}"


def top_rows(values: torch.Tensor, count: int) -> torch.Tensor:
    """Batch positions of the ``count`` largest values, in batch order (ties: torch.topk's choice), on
    the values' device (no copy to the host)."""
    return torch.topk(values, count).indices.sort().values


class UniformSampler(Selection):
    """Both passes on ⌊keep·B⌋ rows drawn uniformly without replacement (at least one): the random-sampling
    baseline of AUSAM (Deng et al., AAAI 2025; AUSAM with equal probabilities). The first
    ``warmup_epochs`` use every row, like AUSAM's warm-up (``UniformSAM`` sets it to AUSAM's 1, so that
    the two differ only in how rows are drawn after it; 0 here, as a component). Own generator, on
    ``device``: rows drawn on the model's device index its batch there without a copy from the host."""

    skip_on_device = True  # draws in plan, before the clean pass

    def __init__(
        self,
        keep: float = 0.5,
        seed: int | None = None,
        warmup_epochs: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.keep = check_fraction("keep", keep)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        self.device = torch.device(device)
        self.generator = make_generator(seed, self.device)

    def count(self, batch_size: int) -> int:
        return kept_rows(self.keep, batch_size)

    def draw(self, batch_size: int) -> torch.Tensor:
        rows = torch.randperm(batch_size, generator=self.generator, device=self.device)
        return rows[: self.count(batch_size)]

    def plan(self, ctx: StepContext, scores: torch.Tensor | None = None) -> RowPlan:
        rows = all_rows(ctx.batch_size) if ctx.epoch < self.warmup_epochs else self.draw(ctx.batch_size)
        return RowPlan(rows, rows)

    def extra_repr(self) -> str:
        return f"keep={self.keep}, warmup_epochs={self.warmup_epochs}"


class MicroBatch(UniformSampler):
    """Ascent on a random micro-batch of m rows, descent on every row (the noise-injected micro-batch
    scheduler of Wei, Zhang, Tan, Neural Networks 185 (2025) 107205; pair it with
    ``NoisySAMPerturbation``). Cost ≈ 1 + m/B passes.

    m = ``size`` (at most B) if given, else ⌊fraction·B⌋ (at least one row). Only the paper's abstract is
    public, so m is **our choice**: fraction 0.25 (m = 32 of a batch of 128, cost 1.25 passes), in the
    range where the m-sharpness studies find a small-batch ascent generalises at least as well as a
    full-batch one (Foret et al., ICLR 2021, "m-sharpness", quoted in the davda54/sam README on
    per-accelerator ε; Andriushchenko & Flammarion, ICML 2022), and large enough that the abstract's
    warning about too-small micro-batches is met by the injected noise rather than by m. Rows are drawn
    uniformly without replacement from the selection's own generator.
    """

    def __init__(
        self,
        size: int | None = None,
        fraction: float = 0.25,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(check_fraction("fraction", fraction), seed, device=device)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"size (the micro-batch size m) must be an integer >= 1 or None, got {size!r}")
        self.size = size

    @property
    def fraction(self) -> float:
        return self.keep

    def count(self, batch_size: int) -> int:
        return min(self.size, batch_size) if self.size is not None else super().count(batch_size)

    def plan(self, ctx: StepContext, scores: torch.Tensor | None = None) -> RowPlan:
        return RowPlan(self.draw(ctx.batch_size), all_rows(ctx.batch_size))

    def extra_repr(self) -> str:
        return f"size={self.size}" if self.size is not None else f"fraction={self.fraction}"


class MSharpness(Selection):
    """m-sharpness (Foret et al., ICLR 2021, §4.1 and Appendix; the per-accelerator ε of their code): the
    batch is cut into consecutive parts of ``size`` rows (the last may be shorter), each gets its own
    ascent ε from its own gradient, and the descent gradients at those points are averaged. Same cost as
    SAM (2 passes), but each ε sees only m rows; smaller m generalises better in their study.
    ``size`` = 32 (a quarter of a 128 batch) is **our default** (the paper's sweeps go down to m = 16)."""

    def __init__(self, size: int = 32) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size (the part size m) must be an integer >= 1, got {size!r}")
        self.size = size

    def plan(self, ctx: StepContext, scores: torch.Tensor | None = None) -> RowPlan:
        rows = all_rows(ctx.batch_size)
        parts = [RowPlan(part, part) for part in rows.split(self.size)]
        return RowPlan(rows, rows, parts=parts)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class TopKLoss(Selection):
    """K-SAM (Ni et al., 2022, arXiv 2210.12864): a no-grad forward scores every row, then both SAM passes
    run on the k = ⌊keep·B⌋ rows of highest loss (at least one).

    k is not public (abstract and summaries only); keep = 0.5 is **our choice**: it spends the same
    number of samples as AUSAM's default (comparisons at equal cost), and its cost, 1/3 + 2·keep = 1.33
    SGD passes (a forward being a third of a forward+backward), is about the 65 % of SAM's cost that the
    K-SAM summaries report for ImageNet.
    """

    needs_scores = True
    needs_batch_size = False
    skip_on_device = True  # no state, no draws

    def __init__(self, keep: float = 0.5) -> None:
        self.keep = check_fraction("keep", keep)

    def plan(self, ctx: StepContext, scores: torch.Tensor | None = None) -> RowPlan:
        if scores is None:
            raise RuntimeError("TopKLoss plans from the per-sample losses of the engine's scoring forward")
        rows = top_rows(scores, kept_rows(self.keep, len(scores)))
        return RowPlan(rows, rows)

    def extra_repr(self) -> str:
        return f"keep={self.keep}"


class SharpnessSensitiveSelection(Selection):
    """ESAM's sharpness-sensitive data selection (Du et al., ICLR 2022): after the perturbation a no-grad
    forward at w+ε gives each ascent row its instance sharpness ℓ(w+ε) − ℓ(w); the descent pass runs on
    the sharpest rows.

    The official code (github.com/dydjw9/Efficient_SAM, ``utils/Esam.py``) takes k = int(B·γ), the k-th
    largest sharpness as a cutoff, and keeps the rows *strictly* above it: k − 1 rows when there are no
    ties. That is the default; ``exact_topk=True`` keeps exactly k rows. Guards absent from the code:
    k is at least one, and when the strict rule keeps nothing (k = 1, or all sharpness equal) the top k
    rows are used. γ ≥ 0.99 uses every row, as in the code. γ = 0.5 is the authors' value (``run.sh``).
    """

    needs_perturbed_scores = True
    needs_batch_size = False

    def __init__(self, gamma: float = 0.5, exact_topk: bool = False) -> None:
        self.gamma = check_fraction("gamma", gamma)
        self.exact_topk = bool(exact_topk)

    def plan(self, ctx: StepContext, scores: torch.Tensor | None = None) -> RowPlan:
        rows = all_rows(ctx.batch_size)
        return RowPlan(rows, rows)

    def refine(
        self, ctx: StepContext, plan: RowPlan, loss_before: torch.Tensor, loss_perturbed: torch.Tensor
    ) -> RowPlan:
        if self.gamma >= 0.99:
            return plan
        sharpness = loss_perturbed - loss_before
        k = kept_rows(self.gamma, len(sharpness))
        chosen = top_rows(sharpness, k)
        if not self.exact_topk:
            strict = (sharpness > torch.topk(sharpness, k).values[-1]).nonzero().flatten()
            chosen = strict if len(strict) else chosen
        return RowPlan(plan.ascent, plan.ascent.to(chosen.device)[chosen], plan.ascent_weights)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, exact_topk={self.exact_topk}"


class InfoBatchPruning(Selection):
    """InfoBatch (Qin et al., ICLR 2024): well-learned samples are pruned at random and the kept ones
    up-weighted, so the expected gradient of an epoch stays that of the full data.

    Per dataset index a score holds the last observed clean loss (initially 3, as in the official code,
    github.com/NUS-HPC-AI-Lab/InfoBatch ``infobatch/infobatch.py``); a sample is *well learned* when its
    score is below the mean score of the whole table at the start of the epoch. Of the n well-learned
    samples, int((1 − prune_ratio)·n) drawn uniformly without replacement are kept with loss weight
    1/(1 − prune_ratio), the others pruned. Epoch e (from 0) prunes only while e + 1 ≤ delta·epochs
    (the official sampler's ``iterations <= delta·num_epochs``), so the last (1 − delta) of the epochs
    train on every sample with weight 1 (the annealing). Both passes average w·ℓ over the rows of the
    batch. Scores are set from the clean losses of the rows trained on. Defaults prune_ratio = 0.5 and
    delta = 0.875 are the official ones; prune_ratio is limited to [0, 0.9], where the official code
    clamps it.

    ``mode="epoch"`` (default) is the official semantics: the pruned samples leave the epoch, which
    therefore has fewer steps; the loop must iterate over ``epoch_indices(epoch, order)`` (flatsam's
    training loop does: ``for idx in sel.epoch_indices(e, torch.randperm(n)).split(B)``). Differences
    from the official code: the draw uses the selection's own generator (the official one reseeds numpy
    with the epoch count), and weights return to 1 in every epoch without pruning (the official sampler
    resets them only when delta·epochs is a whole number).

    ``mode="batch"`` prunes inside each batch instead, for loops that cannot change the epoch: the data
    loader still yields full batches, the threshold is the mean score at the epoch's first step, and of
    a batch's well-learned rows int((1 − prune_ratio)·n) are kept (one if the batch would keep no row).
    The steps per epoch are unchanged, and each kept row still weighs 1/(1 − prune_ratio) while the
    mean runs over the n_kept rows of the batch: while pruning, the gradient is about B/n_kept times the
    official one (≈ 1.5× at prune_ratio 0.5 when most rows are well learned), a higher effective
    learning rate, not an unbiased estimate.

    Needs ``index=`` in every step and ``set_epoch`` every epoch. Own generator; scores, weights, the
    epoch's kept samples and the batch mode's threshold are in the state.
    """

    state_fields = ("scores", "weights", "kept", "pruned_epoch", "threshold", "threshold_epoch")
    needs_index = True
    MODES = ("epoch", "batch")

    def __init__(
        self,
        num_samples: int,
        epochs: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        initial_score: float = 3.0,
        mode: Literal["epoch", "batch"] = "epoch",
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        num_samples = check_num_samples(num_samples)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(
                f"epochs (the number of training epochs) must be an integer >= 1, got {epochs!r}"
            )
        if not (0.0 <= prune_ratio <= 0.9):
            raise ValueError(
                f"prune_ratio must be in [0, 0.9] (the official code clamps it there), got {prune_ratio}"
            )
        if not (0.0 <= delta <= 1.0):
            raise ValueError(f"delta (the fraction of epochs that prune) must be in [0, 1], got {delta}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.num_samples, self.epochs, self.mode = num_samples, epochs, mode
        self.prune_ratio, self.delta = float(prune_ratio), float(delta)
        self.device = torch.device(device)
        self.scores = torch.full((num_samples,), float(initial_score), device=self.device)
        self.weights = torch.ones(num_samples, device=self.device)
        self.kept = torch.ones(num_samples, dtype=torch.bool, device=self.device)
        self.pruned_epoch = -1
        self.threshold = torch.zeros((), device=self.device)
        self.threshold_epoch = -1
        self.generator = make_generator(seed)

    @property
    def keep_ratio(self) -> float:
        """1 − prune_ratio, bounded to [0.1, 1] as in the official code."""
        return min(1.0, max(0.1, 1.0 - self.prune_ratio))

    def prunes(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (counted from 0) prunes: the official ``iterations <= delta·epochs``."""
        return epoch + 1 <= self.delta * self.epochs

    def _draw_kept(self, learned: torch.Tensor) -> torch.Tensor:
        """int(keep_ratio·n) of the n well-learned ``learned``, uniformly without replacement."""
        draw = torch.randperm(len(learned), generator=self.generator)
        return learned[draw[: int(self.keep_ratio * len(learned))].to(learned.device)]

    def epoch_indices(self, epoch: int, order: torch.Tensor) -> torch.Tensor:
        if self.mode == "batch" or not self.prunes(epoch):
            return order
        if self.pruned_epoch != epoch:  # once per epoch, so a resumed run gets the same epoch back
            well = self.scores < self.scores.mean()
            chosen = self._draw_kept(well.nonzero().flatten())
            self.kept = ~well
            self.kept[chosen] = True
            self.weights = torch.ones_like(self.weights)
            self.weights[chosen] = 1.0 / self.keep_ratio
            self.pruned_epoch = epoch
        return order[self.kept[order.to(self.device)].to(order.device)]

    def _index(self, ctx: StepContext) -> torch.Tensor:
        if ctx.index is None:
            raise ValueError(
                "InfoBatch pruning needs the dataset indices of the batch: call "
                "step(closure, index=index) with the indices from flatsam.data.IndexedDataset"
            )
        return checked_index(ctx.index, self.num_samples, self.device)

    def plan(self, ctx: StepContext, scores: torch.Tensor | None = None) -> RowPlan:
        index = self._index(ctx)
        rows = all_rows(len(index))
        if not self.prunes(ctx.epoch):
            return RowPlan(rows, rows)
        if self.mode == "batch":
            return self._plan_in_batch(ctx, index, rows)
        if self.pruned_epoch != ctx.epoch:
            raise RuntimeError(
                f"InfoBatch (mode='epoch') prunes samples from epoch {ctx.epoch} as a whole: iterate over "
                "selection.epoch_indices(epoch, order) at the start of every epoch (flatsam's training "
                "loop does), or use mode='batch' to prune inside each batch"
            )
        weights = self.weights[index]
        return RowPlan(rows, rows, weights, weights)

    def _plan_in_batch(self, ctx: StepContext, index: torch.Tensor, rows: torch.Tensor) -> RowPlan:
        if self.threshold_epoch != ctx.epoch:
            self.threshold, self.threshold_epoch = self.scores.mean(), ctx.epoch
        well = (self.scores[index] < self.threshold).cpu()
        learned = rows[well]
        kept = self._draw_kept(learned)
        if len(kept) == 0 and len(learned) == len(rows):
            kept = learned[:1]  # a batch of well-learned rows only: keep one rather than none
        rows = torch.cat([rows[~well], kept]).sort().values
        weights = torch.where(well[rows], 1.0 / self.keep_ratio, 1.0)
        return RowPlan(rows, rows, weights, weights)

    def record(self, ctx: StepContext, outcome: Outcome) -> None:
        index = self._index(ctx)
        rows = outcome.ascent_rows.to(index.device)
        losses = outcome.loss_before.detach()
        index, losses = gather_rows(index[rows].to(losses.device), losses)  # same scores on every rank
        self.scores[index.to(self.scores.device)] = losses.to(self.scores)

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, epochs={self.epochs}, prune_ratio={self.prune_ratio}, "
            f"delta={self.delta}, mode={self.mode!r}"
        )


#: Selections by name, for composed methods on the command line (``--selection NAME``).
SELECTIONS: dict[str, type[Selection]] = {
    "all": AllRows,
    "adlp": ADLPSampler,
    "uniform": UniformSampler,
    "microbatch": MicroBatch,
    "msharpness": MSharpness,
    "topk": TopKLoss,
    "sharpness": SharpnessSensitiveSelection,
    "infobatch": InfoBatchPruning,
}
