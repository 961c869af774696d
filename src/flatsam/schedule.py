"""Schedules: does this step run an ascent (a sharpness-aware step) or a single plain pass?"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from flatsam import gradlist
from flatsam.component import Component, Outcome, StepContext, make_generator
from flatsam.skipping import unless_skipped


class Schedule(Component):
    """Decides per step whether to ascend.

    ``decide`` runs before any pass: ``True`` (ascent), ``False`` (one plain pass) or ``None`` when the
    decision needs the clean gradient, in which case the engine runs the clean pass and asks
    ``decide_after`` with the squared norm of the unscaled clean gradient (AE-SAM's statistic).
    """

    def decide(self, ctx: StepContext) -> bool | None:
        raise NotImplementedError

    def decide_after(self, ctx: StepContext, grad_sq_norm: torch.Tensor) -> bool:
        raise NotImplementedError(f"{type(self).__name__} decides before the clean pass")


class Always(Schedule):
    """Every step is a sharpness-aware step (SAM, ASAM, AUSAM, ESAM, K-SAM)."""

    skip_on_device = True

    def decide(self, ctx: StepContext) -> bool:
        return True


class Never(Schedule):
    """No step ascends: the base optimizer through the same engine (the SGD reference of a benchmark)."""

    skip_on_device = True

    def decide(self, ctx: StepContext) -> bool:
        return False


# -- validation shared by the schedule and reuse components ---------------------------------------------


def check_int(name: str, value: int, low: int) -> int:
    """An int >= ``low`` (bools refused), else a ``ValueError`` naming the parameter and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def check_interval(name: str, value: float, low: float, high: float, *, closed: str = "[]") -> float:
    """A float in the interval from ``low`` to ``high``; ``closed`` marks each end "[" / "]" (included)
    or "(" / ")" (excluded)."""
    ok_low = value >= low if closed[0] == "[" else value > low
    ok_high = value <= high if closed[1] == "]" else value < high
    if isinstance(value, bool) or not isinstance(value, int | float) or not (ok_low and ok_high):
        raise ValueError(f"{name} must be in {closed[0]}{low}, {high}{closed[1]}, got {value!r}")
    return float(value)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _uniform(generator: torch.Generator) -> float:
    """One U[0, 1) draw from a private CPU generator (no device sync)."""
    return float(torch.rand((), generator=generator, dtype=torch.float64))


# -- every k steps: LookSAM ---------------------------------------------------------------------------


class EveryK(Schedule):
    """Ascent on every k-th step, step 0 included (LookSAM, Liu et al., CVPR 2022: k = 5).

    The step is the engine's step counter (``ctx.step``), so the period survives a resume.
    """

    skip_on_device = True

    def __init__(self, k: int = 5) -> None:
        self.k = check_int("k", k, 1)

    def decide(self, ctx: StepContext) -> bool:
        return ctx.step % self.k == 0

    def extra_repr(self) -> str:
        return f"k={self.k}"


# -- a Bernoulli trial per step: SS-SAM ---------------------------------------------------------------


class Bernoulli(Schedule):
    """Ascent with probability p_t, else one plain pass (SS-SAM, Zhao et al. 2022; RST/G-RST).

    SS-SAM draws a Bernoulli trial per step with p_t from a scheduling function (the summaries name
    constant, piecewise, linear and trigonometric ones); its headline setting is the constant p = 0.5,
    1.5 passes per step on average (marktechpost/syncedreview summaries of the paper; the paper itself
    unverified). The exact non-constant functions were not retrievable; flatsam's are ramps from
    ``p_start`` to ``p_end`` over ``total_steps`` (t = ``ctx.step``, held at the end afterwards), all
    with mean (p_start + p_end)/2:

    - ``"constant"``: p_t = ``p``;
    - ``"linear"``: p_t = p_start + (p_end − p_start)·t/T;
    - ``"cosine"``: p_t = p_end + (p_start − p_end)·(1 + cos(π t/T))/2 (the trigonometric ramp);
    - ``"piecewise"``: p_start for t < T/2, p_end from then on.

    One U[0,1) draw per step from the component's own generator (``seed``; from torch's global RNG
    without one); the step ascends when u < p_t. Its state is in ``state_dict``. Under torch.distributed
    give every rank the same ``seed`` (or the same ``torch.manual_seed``) so that all take the same steps.
    """

    SCHEDULES = ("constant", "linear", "cosine", "piecewise")
    skip_on_device = True  # its one draw comes before the clean pass

    def __init__(
        self,
        p: float = 0.5,
        schedule: str = "constant",
        *,
        p_start: float = 0.0,
        p_end: float = 1.0,
        total_steps: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.p = check_interval("p", p, 0.0, 1.0)
        self.schedule = check_choice("schedule", schedule, self.SCHEDULES)
        self.p_start = check_interval("p_start", p_start, 0.0, 1.0)
        self.p_end = check_interval("p_end", p_end, 0.0, 1.0)
        if schedule != "constant" and total_steps is None:
            raise ValueError(
                f"total_steps (the number of optimizer steps of the run, an int >= 1) is "
                f"required for schedule={schedule!r}"
            )
        self.total_steps = None if total_steps is None else check_int("total_steps", total_steps, 1)
        self.generator = make_generator(seed)

    def probability(self, step: int) -> float:
        """p_t at engine step ``step``."""
        if self.schedule == "constant":
            return self.p
        assert self.total_steps is not None
        frac = min(step, self.total_steps) / self.total_steps
        if self.schedule == "linear":
            return self.p_start + (self.p_end - self.p_start) * frac
        if self.schedule == "cosine":
            return self.p_end + (self.p_start - self.p_end) * (1 + math.cos(math.pi * frac)) / 2
        return self.p_start if frac < 0.5 else self.p_end

    def decide(self, ctx: StepContext) -> bool:
        return _uniform(self.generator) < self.probability(ctx.step)

    def extra_repr(self) -> str:
        if self.schedule == "constant":
            return f"p={self.p}"
        return f"schedule={self.schedule!r}, p_start={self.p_start}, p_end={self.p_end}, T={self.total_steps}"


# -- AE-SAM's adaptive threshold ----------------------------------------------------------------------


class AEThreshold(Schedule):
    """AE-SAM's policy (Jiang, Yang, Zhang, Kwok, ICLR 2023): ascend when the squared norm of the clean
    gradient is large against its running statistics.

    After the clean pass (``decide`` returns ``None``), with ‖g_t‖² the squared norm of the unscaled clean
    gradient::

        μ_t  = δ μ_{t−1}  + (1 − δ) ‖g_t‖²
        σ²_t = δ σ²_{t−1} + (1 − δ) (‖g_t‖² − μ_t)²
        c_t  = (t/T) λ1 + (1 − t/T) λ2                  (t = 1 … T, held at λ1 after T)
        SAM step  ⇔  ‖g_t‖² ≥ μ_t + c_t σ_t

    The rule and δ = 0.9, λ1 = −1, λ2 = 1 are the paper's as summarised, unverified against the paper
    (its full text and code were not retrievable). With a Gaussian ‖g‖² the SAM fraction sweeps from
    Φ(−1) ≈ 16 % to Φ(1) ≈ 84 %, 50 % on average. Choices the sources leave open, with the alternative:

    - ``init="zero"`` (default): μ_0 = σ²_0 = 0, the recursion as written from t = 1 (read literally),
      so the first steps are SAM steps while the average warms up; ``init="first"``: μ_1 = ‖g_1‖², σ²_1 = 0.
    - ``variance_mean="current"`` (default, the recursion as written): the deviation is taken from
      μ_t; ``"previous"``: from μ_{t−1} (Welford-like).
    - c_t per iteration over ``total_steps`` T (T the total number of iterations; unverified);
      giving ``total_epochs`` instead makes c_t per epoch, with t/T = (epoch + 1)/total_epochs.

    The statistics stay float64 tensors on the gradient's device; the decision is the only host sync.
    """

    state_fields = ("mean", "var", "seen")

    def __init__(
        self,
        delta: float = 0.9,
        lambda1: float = -1.0,
        lambda2: float = 1.0,
        total_steps: int | None = None,
        *,
        total_epochs: int | None = None,
        init: str = "zero",
        variance_mean: str = "current",
    ) -> None:
        self.delta = check_interval("delta", delta, 0.0, 1.0, closed="()")
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)
        if (total_steps is None) == (total_epochs is None):
            raise ValueError(
                "AEThreshold needs exactly one of total_steps (the number of optimizer steps of "
                "the run, an int >= 1: c_t per iteration) and total_epochs (c_t per epoch); got "
                f"total_steps={total_steps!r}, total_epochs={total_epochs!r}"
            )
        self.total_steps = None if total_steps is None else check_int("total_steps", total_steps, 1)
        self.total_epochs = None if total_epochs is None else check_int("total_epochs", total_epochs, 1)
        self.init = check_choice("init", init, ("zero", "first"))
        self.variance_mean = check_choice("variance_mean", variance_mean, ("current", "previous"))
        self.mean = torch.zeros((), dtype=torch.float64)
        self.var = torch.zeros((), dtype=torch.float64)
        self.seen = False

    def coefficient(self, ctx: StepContext) -> float:
        """c_t of the step ``ctx``."""
        if self.total_steps is not None:
            frac = min(ctx.step + 1, self.total_steps) / self.total_steps
        else:
            assert self.total_epochs is not None
            frac = min(ctx.epoch + 1, self.total_epochs) / self.total_epochs
        return frac * self.lambda1 + (1 - frac) * self.lambda2

    def decide(self, ctx: StepContext) -> None:
        return None

    @torch.no_grad()
    def decide_after(self, ctx: StepContext, grad_sq_norm: torch.Tensor) -> bool:
        g2 = grad_sq_norm.detach().to(torch.float64)
        mean, var = self.mean.to(g2.device), self.var.to(g2.device)
        if self.init == "first" and not self.seen:
            mean, var = g2.clone(), torch.zeros_like(g2)
        else:
            new_mean = self.delta * mean + (1 - self.delta) * g2
            centre = new_mean if self.variance_mean == "current" else mean
            var = self.delta * var + (1 - self.delta) * (g2 - centre).square()
            mean = new_mean
        self.mean, self.var, self.seen = mean, var, True
        return bool(g2 >= mean + self.coefficient(ctx) * var.sqrt())

    def extra_repr(self) -> str:
        horizon = (
            f"total_steps={self.total_steps}" if self.total_steps else f"total_epochs={self.total_epochs}"
        )
        return f"delta={self.delta}, lambda1={self.lambda1}, lambda2={self.lambda2}, {horizon}"


# -- ARSAM's adaptive window quota (after the authors' vSAM code) ------------------------------------------


def relative_trend(history: torch.Tensor) -> float:
    """Mean relative change (x[j+1] − x[j]) / x[j] over a history, clipped to [−1, 1] (vSAM): the value of
    ``relative_trend_tensor``, read on the host.

    Terms whose denominator is 0 are left out (0 when none is left): our guard. vSAM pads its histories
    with zeros and divides by every entry, which gives +inf for a change from 0 (its clip then says +1)
    and NaN for 0 → 0 (a NaN quota, which its ``int(base_sr)`` refuses). That happens only while fewer
    SAM steps than a window have been recorded, i.e. with a warm-up shorter than the window (flatsam's
    default suite: 48 warm-up steps, window 50), which vSAM's 3-epoch CIFAR warm-up never is."""
    return float(relative_trend_tensor(history))


def relative_trend_tensor(history: torch.Tensor) -> torch.Tensor:
    """``relative_trend`` as a 0-dim tensor on the history's device (nothing read on the host)."""
    prev, diff = history[:-1], history[1:] - history[:-1]
    valid = prev != 0
    count = valid.sum()
    total = torch.where(valid, diff / torch.where(valid, prev, 1.0), 0.0).sum()
    mean = torch.where(count > 0, total / count.clamp_min(1), 0.0)
    return mean.clamp(-1.0, 1.0)


def block_variance(values: torch.Tensor, blocks: int) -> torch.Tensor:
    """vSAM's variance estimate: sort, cut into ``blocks`` blocks of ⌊len/blocks⌋ values (a remainder is
    dropped), and average the blocks' unbiased variances."""
    size = len(values) // blocks
    return torch.sort(values).values[: blocks * size].view(blocks, size).var(dim=1).mean()


def _push(history: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Drop the oldest entry, append ``value`` (a fixed-length history, as vSAM's sliced buffers)."""
    return torch.cat([history.to(value.device)[1:], value.reshape(1).to(history.dtype)])


class ARSAMWindow(Schedule):
    """ARSAM's schedule (Deng & Pang 2025, arXiv 2510.03763): full SAM on an adaptive quota of steps per
    window, the other steps reuse the stored PSF (see ``PSFReuse``).

    ARSAM's code was not retrievable; this follows its precursor, the authors' vSAM code
    (github.com/ajiaaa/vSAM ``vsam/vsam.py``, ``train_vsam.py``), step for step:

    - the first ``warmup_epochs`` (3) epochs are full SAM; then a counter t starts at 1;
    - on every SAM step the histories of the last K values of r = ‖PSF‖_N/‖g‖_N, of ‖PSF‖_N and of
      v = ``block_variance`` of the ‖PSF‖_N history (``blocks`` = 5) are updated, PSF = g_SAM − g and
      ‖·‖_N the norm over the last N = ``last_layers`` (10) parameter tensors (the ``--last_layer`` of
      the train script; over all groups together here, vSAM counts in its last group);
    - when t mod K = 0 (K = ``window``, 50): base_sr ← clip(base_sr·(1 + a1·dr + a2·dv), 1, ⌊K·max_p⌋)
      with dr, dv the ``relative_trend`` of the r and v histories, gains (a1, a2) = (0.13, 0.13),
      max_p = 0.8; p ← base_sr/K; the window's SAM count sr_now ← 0;
    - a step is a SAM step if (sr_now < ⌊base_sr⌋ and u ≥ 1 − p), u ~ U[0,1) drawn from the own
      generator only when the first condition holds, or if K − (t mod K) ≤ ⌊base_sr⌋ − sr_now (the quota
      is forced at the end of the window); then t ← t + 1.

    vSAM's initial state is kept: base_sr = 1, p = 0.5, sr_now = 0 (1 after every warm-up step, so the
    first window after the warm-up has no SAM step), histories of K zeros. base_sr and p are float64
    Python numbers (vSAM: float32 tensors); the histories are float64 tensors on the gradient's device.
    A skipped step (non-finite loss) still counts in the window, and its SAM step leaves the histories
    exactly as they were, selected on the device (``skip_on_device``: the draw comes before the clean
    pass). Host syncs: one per window (both trends read together at its start), none on other steps.
    Under torch.distributed the statistics come from all-reduced gradients; give every rank the same
    ``seed``.
    """

    needs_clean_grads = True
    state_fields = ("t", "sr_now", "base_sr", "p", "ratios", "norms", "variances")
    skip_on_device = True

    def __init__(
        self,
        window: int = 50,
        blocks: int = 5,
        max_p: float = 0.8,
        gains: tuple[float, float] = (0.13, 0.13),
        last_layers: int = 10,
        warmup_epochs: int = 3,
        seed: int | None = None,
    ) -> None:
        self.window = check_int("window", window, 1)
        self.blocks = check_int("blocks", blocks, 1)
        if window // blocks < 2:
            raise ValueError(
                f"window // blocks must be >= 2 (each block needs two values for a variance), "
                f"got window={window}, blocks={blocks}"
            )
        self.max_p = check_interval("max_p", max_p, 0.0, 1.0, closed="(]")
        self.max_sr = int(window * max_p)
        if self.max_sr < 1:
            raise ValueError(
                f"window * max_p must be >= 1 (at least one SAM step per window), "
                f"got window={window}, max_p={max_p}"
            )
        if len(gains) != 2:
            raise ValueError(f"gains must be a pair (a1, a2) of floats >= 0, got {gains!r}")
        self.gains = (
            check_interval("gains[0]", gains[0], 0.0, math.inf, closed="[)"),
            check_interval("gains[1]", gains[1], 0.0, math.inf, closed="[)"),
        )
        self.last_layers = check_int("last_layers", last_layers, 1)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
        self.generator = make_generator(seed)
        self.t, self.sr_now, self.base_sr, self.p = 1, 0, 1.0, 0.5
        self.ratios = torch.zeros(window, dtype=torch.float64)
        self.norms = torch.zeros(window, dtype=torch.float64)
        self.variances = torch.zeros(window, dtype=torch.float64)

    @property
    def quota(self) -> int:
        """SAM steps due in the current window: ⌊base_sr⌋."""
        return int(self.base_sr)

    def _adapt(self) -> None:
        trends = [relative_trend_tensor(self.ratios), relative_trend_tensor(self.variances.to(self.ratios))]
        dr, dv = torch.stack(trends).tolist()  # the window's one host read
        factor = 1 + self.gains[0] * dr + self.gains[1] * dv
        self.base_sr = max(1.0, min(self.base_sr * factor, float(self.max_sr)))
        self.p = self.base_sr / self.window
        self.sr_now = 0

    def decide(self, ctx: StepContext) -> bool:
        if ctx.epoch < self.warmup_epochs:
            self.sr_now = 1
            return True
        position = self.t % self.window
        if position == 0:
            self._adapt()
        ascend = self.sr_now < self.quota and _uniform(self.generator) >= 1 - self.p
        ascend = ascend or self.window - position <= self.quota - self.sr_now
        self.sr_now += int(ascend)
        self.t += 1
        return ascend

    @torch.no_grad()
    def record(self, ctx: StepContext, outcome: Outcome) -> None:
        if not outcome.ascent or outcome.clean_grads is None:
            return
        start = max(0, len(outcome.descent_grads) - self.last_layers)
        clean = outcome.clean_grads[start:]
        psf = gradlist.difference(outcome.descent_grads[start:], clean)
        psf_norm = gradlist.norm(psf).to(torch.float64)
        grad_norm = gradlist.norm(clean).to(torch.float64)
        norms = _push(self.norms, psf_norm)
        ratios = _push(self.ratios, psf_norm / grad_norm)
        variances = _push(self.variances, block_variance(norms, self.blocks))
        found_inf = outcome.found_inf
        self.norms = unless_skipped(found_inf, self.norms, norms)
        self.ratios = unless_skipped(found_inf, self.ratios, ratios)
        self.variances = unless_skipped(found_inf, self.variances, variances)

    def extra_repr(self) -> str:
        return (
            f"window={self.window}, blocks={self.blocks}, max_p={self.max_p}, gains={self.gains}, "
            f"last_layers={self.last_layers}, warmup_epochs={self.warmup_epochs}"
        )


#: Schedules by name, for composed methods on the command line (``--schedule NAME``).
# -- a budget of ascent rows, spent evenly: the micro-batch scheduler ------------------------------------


class MicroBatchScheduler(Schedule):
    """Micro-batch ascents on an even share of the steps, the base optimizer alone on the rest.

    The switching of the noise-injected micro-batch scheduler of Wei, Zhang, Tan (Neural Networks 185 (2025)
    107205). The paper's abstract (the only public text) unifies the efficient SAMs that *switch* between
    SAM and the base optimizer (LookSAM, SS-SAM, AE-SAM) with those that *reduce the data* of the ascent
    (ESAM, K-SAM) as one micro-batch scheduler: both compute the perturbation from fewer samples than the
    descent. This class models that view (our modelling; the paper's rule is not public): a budget of ascent
    rows per batch row, ``budget``, spent by ascents on micro-batches of ``fraction`` of the batch, so a
    fraction r = budget/fraction of the steps ascend, spread evenly: step t ascends when ⌈(t + 1)·r⌉ > ⌈t·r⌉
    (step 0 always; r in exact rationals, from ``ctx.step``, so a resume and every DDP rank agree). budget =
    fraction is an ascent on every step (flatsam's ``mbsam``); fraction 1 with budget 1/k is LookSAM's
    switching every k steps (``EveryK(k)``); in between, micro-batch ascents on some steps only. Cost ≈ 1 +
    budget passes per step.
    """

    skip_on_device = True

    def __init__(self, budget: float = 0.125, fraction: float = 0.25) -> None:
        self.fraction = check_interval("fraction", fraction, 0.0, 1.0, closed="(]")
        name = f"budget (ascent rows per batch row, at most fraction={fraction})"
        self.budget = check_interval(name, budget, 0.0, self.fraction, closed="(]")
        self.rate = Fraction(self.budget / self.fraction).limit_denominator(10**6)

    def decide(self, ctx: StepContext) -> bool:
        return math.ceil((ctx.step + 1) * self.rate) > math.ceil(ctx.step * self.rate)

    def extra_repr(self) -> str:
        return f"budget={self.budget}, fraction={self.fraction}"


SCHEDULES: dict[str, type[Schedule]] = {
    "always": Always,
    "never": Never,
    "every_k": EveryK,
    "bernoulli": Bernoulli,
    "ae": AEThreshold,
    "arsam": ARSAMWindow,
    "microbatch": MicroBatchScheduler,
}
