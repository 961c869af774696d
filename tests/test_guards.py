"""Every guard against a zero, an empty set or a tie, on small literal inputs: the expected values are
worked out by hand in the comments, not recomputed by the code under test."""

from __future__ import annotations

import math

import pytest
import torch

import flatsam.schedule
from flatsam import ADLPSampler
from flatsam.component import Outcome, StepContext
from flatsam.perturbation import ASAMPerturbation, NoisySAMPerturbation, SAMPerturbation
from flatsam.reuse import LookSAMReuse
from flatsam.schedule import AEThreshold, ARSAMWindow, block_variance, relative_trend
from flatsam.selection import (
    InfoBatchPruning,
    MicroBatch,
    MSharpness,
    RowPlan,
    SharpnessSensitiveSelection,
    TopKLoss,
    kept_rows,
    minmax_weights,
)

F64 = torch.float64


def ctx(step: int = 0, epoch: int = 0, batch_size: int = 4, index: torch.Tensor | None = None) -> StepContext:
    return StepContext(step=step, epoch=epoch, batch_size=batch_size, index=index)


def outcome(clean: list[torch.Tensor], descent: list[torch.Tensor], ascent: bool = True) -> Outcome:
    rows = torch.arange(1)
    zero = torch.zeros(1)
    return Outcome(ascent, rows, rows, zero, zero, torch.zeros(()), clean_grads=clean, descent_grads=descent)


# -- ARSAM: vSAM's relative trend and block variance --------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([4.0, 2.0, 1.0], -0.5),  # (2-4)/4 = -0.5, (1-2)/2 = -0.5: mean -0.5
        ([0.0, 0.0, 2.0, 3.0, 6.0], 0.75),  # 0→0 and 0→2 left out; 2→3 = +0.5, 3→6 = +1: mean 0.75
        ([0.0, 0.0, 0.0], 0.0),  # a history of padding only: no term left, 0
        ([2.0, 0.0, 5.0], -1.0),  # 2→0 = -1; 0→5 left out
        ([1.0, 5.0], 1.0),  # +4, clipped to +1
        ([1.0, 1.5, 1.5, 0.75], 0.0),  # +0.5, 0, -0.5: mean 0
    ],
)
def test_relative_trend_leaves_out_zero_denominators(history, expected):
    assert relative_trend(torch.tensor(history, dtype=F64)) == pytest.approx(expected, abs=1e-15)


def test_block_variance_by_hand():
    # sorted 0..6 in blocks of 7 // 2 = 3 (the 6 is dropped): [0,1,2] and [3,4,5], unbiased variance 1 each
    assert float(block_variance(torch.tensor([4.0, 0.0, 2.0, 6.0, 1.0, 3.0, 5.0], dtype=F64), 2)) == 1.0
    # [0,0,0,0] → 0; [0,0,0,8]: mean 2, squared deviations 4+4+4+36 = 48, /3 = 16; mean of the blocks 8
    assert float(block_variance(torch.tensor([0.0] * 7 + [8.0], dtype=F64), 2)) == 8.0
    assert float(block_variance(torch.zeros(6, dtype=F64), 3)) == 0.0  # vSAM's initial padding: 0, not NaN


def window(base_sr: float, ratios: list[float], variances: list[float], gains=(0.5, 0.25)) -> ARSAMWindow:
    """A window of 4 (max_sr = ⌊4·0.8⌋ = 3) with the given quota and histories, no warm-up."""
    w = ARSAMWindow(window=4, blocks=2, max_p=0.8, gains=gains, warmup_epochs=0, seed=0)
    w.base_sr = base_sr
    w.ratios, w.variances = torch.tensor(ratios, dtype=F64), torch.tensor(variances, dtype=F64)
    return w


@pytest.mark.parametrize(
    ("base_sr", "ratios", "variances", "expected"),
    [
        # dr: [0,0,1,2] → only 1→2 = +1; dv: [0,4,2,1] → 0→4 left out, -0.5, -0.5 → -0.5
        # factor 1 + 0.5·1 + 0.25·(-0.5) = 1.375; 2 · 1.375 = 2.75
        (2.0, [0, 0, 1, 2], [0, 4, 2, 1], 2.75),
        # dr = dv = +1 (every step doubles): factor 1.75, 2.75 · 1.75 = 4.8125, clipped to max_sr 3
        (2.75, [1, 2, 4, 8], [1, 2, 4, 8], 3.0),
        # dr = -0.5, dv = 0 (all zero: no term): factor 0.75, 1.2 · 0.75 = 0.9, raised to 1
        (1.2, [4, 2, 1, 0.5], [0, 0, 0, 0], 1.0),
        # the histories right after a warm-up without SAM steps: no trend, the quota stays
        (1.0, [0, 0, 0, 0], [0, 0, 0, 0], 1.0),
    ],
)
def test_arsam_window_update_by_hand(base_sr, ratios, variances, expected):
    w = window(base_sr, ratios, variances)
    w.sr_now = 2
    w._adapt()
    assert w.base_sr == pytest.approx(expected, rel=1e-15)
    assert w.p == pytest.approx(expected / 4, rel=1e-15) and w.sr_now == 0


@pytest.mark.parametrize(
    ("u", "ascents", "draws"),
    [
        # u = 0 never passes u ≥ 1 - p = 0.5: only the forced steps, when the steps left (4 - position)
        # are no more than the quota left (2 - sr_now): positions 2 (2 ≤ 2) and 3 (1 ≤ 1); a draw at every
        # step while sr_now < 2
        (0.0, [False, False, True, True], 4),
        # u = 0.99 passes: the quota is taken at once, after that no draw and no forced step
        (0.99, [True, True, False, False], 2),
    ],
)
def test_arsam_quota_is_drawn_then_forced_at_the_end_of_the_window(monkeypatch, u, ascents, draws):
    calls = []

    def fixed(generator: torch.Generator) -> float:
        calls.append(u)
        return u

    monkeypatch.setattr(flatsam.schedule, "_uniform", fixed)
    w = window(2.0, [1, 1, 1, 1], [1, 1, 1, 1], gains=(0.0, 0.0))  # the update keeps a quota of 2
    w.t = 4  # a window starts
    assert [w.decide(ctx(step=s, epoch=1)) for s in range(4)] == ascents
    assert len(calls) == draws and (w.t, w.sr_now, w.p) == (8, 2, 0.5)


def test_arsam_warmup_steps_ascend_without_counting():
    w = ARSAMWindow(window=4, blocks=2, warmup_epochs=2, seed=0)
    assert all(w.decide(ctx(step=s, epoch=1)) for s in range(9))
    assert (w.t, w.sr_now) == (1, 1)  # vSAM: sr_now = 1 after every warm-up step, the window not started


def test_arsam_record_reads_the_last_tensors_only():
    w = ARSAMWindow(window=4, blocks=2, last_layers=2, warmup_epochs=0, seed=0)
    clean = [torch.tensor([100.0]), torch.tensor([3.0]), torch.tensor([4.0])]
    descent = [torch.tensor([0.0]), torch.tensor([9.0]), torch.tensor([12.0])]
    w.record(ctx(), outcome(clean, descent, ascent=False))  # a plain step records nothing
    assert not w.norms.any()
    w.record(ctx(), outcome(clean, descent))
    # last two tensors: ‖g‖ = ‖(3, 4)‖ = 5, PSF = (6, 8), ‖PSF‖ = 10, ratio 2 (the first tensor ignored);
    # block variance of [0, 0, 0, 10]: blocks [0, 0] → 0 and [0, 10] → 50, mean 25
    assert w.norms.tolist() == [0, 0, 0, 10]
    assert w.ratios.tolist() == [0, 0, 0, 2]
    assert w.variances.tolist() == [0, 0, 0, 25]


# -- AE-SAM's running statistics ----------------------------------------------------------------------------


def test_ae_threshold_by_hand():
    ae = AEThreshold(delta=0.5, lambda1=-1.0, lambda2=1.0, total_steps=2)
    # step 0, ‖g‖² = 4: μ = 0.5·0 + 0.5·4 = 2, σ² = 0.5·0 + 0.5·(4-2)² = 2, c = 0.5·(-1) + 0.5·1 = 0: 4 ≥ 2
    assert ae.decide_after(ctx(step=0), torch.tensor(4.0)) is True
    assert (float(ae.mean), float(ae.var)) == (2.0, 2.0)
    # step 1, ‖g‖² = 1: μ = 1 + 0.5 = 1.5, σ² = 1 + 0.5·0.25 = 1.125, c = -1: 1 ≥ 1.5 - 1.0607
    assert ae.decide_after(ctx(step=1), torch.tensor(1.0)) is True
    assert (float(ae.mean), float(ae.var)) == (1.5, 1.125)
    # step 7 (after T: c held at λ1 = -1), ‖g‖² = 0: μ = 0.75, σ² = 0.5625 + 0.5·0.5625 = 0.84375;
    # 0 ≥ 0.75 - 0.9186 = -0.169: still a SAM step
    assert ae.decide_after(ctx(step=7), torch.tensor(0.0)) is True
    assert float(ae.var) == 0.84375

    high = AEThreshold(delta=0.5, lambda1=1.0, lambda2=1.0, total_steps=1)  # c = 1 throughout
    assert high.decide_after(ctx(), torch.tensor(4.0)) is True  # 4 ≥ 2 + √2 = 3.41
    # μ = 1 + 1 = 2, σ² = 1 + 0.5·0 = 1: 2 ≥ 2 + 1 fails
    assert high.decide_after(ctx(step=1), torch.tensor(2.0)) is False

    previous = AEThreshold(delta=0.5, lambda1=1.0, lambda2=1.0, total_steps=1, variance_mean="previous")
    # the deviation from the old mean 0: σ² = 0.5·16 = 8; 4 ≥ 2 + √8 = 4.83 fails
    assert previous.decide_after(ctx(), torch.tensor(4.0)) is False and float(previous.var) == 8.0


def test_ae_threshold_first_init_has_zero_variance_and_ascends():
    ae = AEThreshold(delta=0.5, lambda1=1.0, lambda2=1.0, total_steps=1, init="first")
    # μ_1 = 4, σ²_1 = 0: the threshold is μ itself, 4 ≥ 4 + 1·√0
    assert ae.decide_after(ctx(), torch.tensor(4.0)) is True
    assert (float(ae.mean), float(ae.var)) == (4.0, 0.0)
    # a constant ‖g‖²: μ = 4, σ² stays 0 (no NaN from √0), the ≥ holds
    assert ae.decide_after(ctx(step=1), torch.tensor(4.0)) is True and float(ae.var) == 0.0


# -- AUSAM's sampler ----------------------------------------------------------------------------------------


def test_minmax_weights_by_hand():
    # [1, 3, 2] onto [0.1, 0.5]: (v - 1)/2 = [0, 1, 0.5] → [0.1, 0.5, 0.3]
    weights = minmax_weights(torch.tensor([1.0, 3.0, 2.0]), 0.1, 0.5)
    torch.testing.assert_close(weights, torch.tensor([0.1, 0.5, 0.3]))
    # no span (equal values, or one row): the low weight everywhere, never 0/0
    assert minmax_weights(torch.tensor([7.0, 7.0]), 0.1, 0.5).tolist() == pytest.approx([0.1, 0.1])
    assert minmax_weights(torch.tensor([5.0]), 0.1, 0.5).tolist() == pytest.approx([0.1])


@pytest.mark.parametrize(
    ("ramp_epochs", "epoch", "expected"),
    [
        (30, 30, [1 / 9, 5 / 9, 3 / 9]),  # weights [0.1, 0.5, 0.3], sum 0.9
        (30, 0, [1 / 3, 1 / 3, 1 / 3]),  # s_hi = s_min at epoch 0: every weight 0.1
        (30, 15, [0.1 / 0.6, 0.3 / 0.6, 0.2 / 0.6]),  # s_hi = 0.3: weights [0.1, 0.3, 0.2]
        (0, 0, [1 / 9, 5 / 9, 3 / 9]),  # no ramp: s_max from epoch 0, no division by the ramp length
    ],
)
def test_adlp_probabilities_by_hand(ramp_epochs, epoch, expected):
    sampler = ADLPSampler(3, s_min=0.1, s_max=0.5, ramp_epochs=ramp_epochs, warmup_epochs=0)
    sampler.dlp_sum = torch.tensor([1.0, 3.0, 2.0])  # counts 1: ADLP [1, 3, 2]
    torch.testing.assert_close(sampler.probabilities(torch.arange(3), epoch), torch.tensor(expected))


def test_normalised_dlp_of_a_zero_gradient_is_zero():
    sampler = ADLPSampler(2, warmup_epochs=0, normalize_by_grad_norm=True)
    # |2 - 1| / (0.1 · 0) is guarded to 0: the running mean of 1 (initial) and 0 is 0.5
    sampler.update(torch.tensor([0]), torch.tensor([1.0]), torch.tensor([2.0]), grad_norm=0.0, rho=0.1)
    assert sampler.adlp.tolist() == [0.5, 1.0]


@pytest.mark.parametrize(
    ("keep", "batch", "rows"),
    # ⌊3.5⌋; ⌊0.5⌋ = 0 raised to 1; 4; ⌊3.0000000000000004⌋
    [(0.5, 7, 3), (0.1, 5, 1), (1.0, 4, 4), (0.3, 10, 3)],
)
def test_kept_rows_by_hand(keep, batch, rows):
    assert kept_rows(keep, batch) == rows


# -- ESAM's sharpness-sensitive selection: ties -------------------------------------------------------------


@pytest.mark.parametrize(
    ("sharpness", "gamma", "rows"),
    [
        ([0.5, 0.5, 0.1, 0.2], 0.5, [0, 1]),  # k = 2, cutoff 0.5, nothing strictly above: the top 2
        ([0.9, 0.5, 0.5, 0.1], 0.5, [0]),  # cutoff 0.5: only 0.9 is above it, one row
        ([0.9, 0.5, 0.5, 0.1], 0.75, [0]),  # k = 3, cutoff still 0.5 (a tie): one row, not k - 1 = 2
        ([0.3, 0.3, 0.3, 0.3], 0.75, 3),  # all tied: nothing above, some 3 rows (torch.topk's choice)
    ],
)
def test_sharpness_selection_under_ties(sharpness, gamma, rows):
    plan = RowPlan(torch.arange(4), torch.arange(4))
    refined = SharpnessSensitiveSelection(gamma).refine(ctx(), plan, torch.zeros(4), torch.tensor(sharpness))
    chosen = refined.descent.tolist()
    assert refined.ascent.tolist() == [0, 1, 2, 3] and len(set(chosen)) == len(chosen)
    assert (len(chosen) if isinstance(rows, int) else sorted(chosen)) == rows


def test_small_selections_keep_at_least_one_row():
    # K-SAM: ⌊0.1·5⌋ = 0 raised to 1, the highest loss
    losses = torch.tensor([0.3, 2.0, 0.1, 1.5, 0.2])
    assert TopKLoss(0.1).plan(ctx(batch_size=5), losses).ascent.tolist() == [1]
    # micro-batch: m = 5 > B = 3 gives the whole batch; ⌊0.25·3⌋ = 0 gives one row
    assert sorted(MicroBatch(size=5, seed=0).plan(ctx(batch_size=3)).ascent.tolist()) == [0, 1, 2]
    assert len(MicroBatch(fraction=0.25, seed=0).plan(ctx(batch_size=3)).ascent) == 1
    # m-sharpness: parts of 4 over 10 rows, the last part shorter
    parts = MSharpness(4).plan(ctx(batch_size=10)).parts
    assert [p.ascent.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# -- InfoBatch ----------------------------------------------------------------------------------------------


def test_infobatch_keep_ratio_clamp_keeps_a_sample_at_prune_ratio_09():
    sel = InfoBatchPruning(20, epochs=10, prune_ratio=0.9, seed=0)
    sel.scores = torch.tensor([0.0] * 10 + [10.0] * 10)  # mean 5: the first 10 well learned
    order = torch.arange(20)
    kept = sel.epoch_indices(0, order)
    # 1 - 0.9 = 0.0999… would keep int(0.999…) = 0 samples; clamped to 0.1 it keeps int(1.0) = 1, weight 10
    assert len(kept) == 11 and set(range(10, 20)) <= set(kept.tolist())
    assert sorted(sel.weights.tolist()) == [1.0] * 19 + [10.0]


def test_infobatch_epoch_without_well_learned_samples_is_whole():
    sel = InfoBatchPruning(6, epochs=10, seed=0)  # every score 3: none below the mean
    order = torch.tensor([5, 0, 3, 1, 4, 2])
    assert sel.epoch_indices(0, order).tolist() == order.tolist() and sel.weights.tolist() == [1.0] * 6


def test_infobatch_epoch_mode_prunes_a_lone_well_learned_sample():
    sel = InfoBatchPruning(4, epochs=10, seed=0)
    sel.scores = torch.tensor([0.0, 5.0, 5.0, 5.0])  # mean 3.75: sample 0 well learned, int(0.5·1) = 0 kept
    assert sel.epoch_indices(0, torch.tensor([2, 0, 3, 1])).tolist() == [2, 3, 1]  # as the official code


def test_infobatch_batch_mode_keeps_one_row_only_when_the_batch_would_be_empty():
    sel = InfoBatchPruning(4, epochs=10, mode="batch", seed=0)
    sel.scores = torch.tensor([0.0, 5.0, 5.0, 5.0])  # threshold 3.75: only sample 0 well learned
    # one well-learned row among others: int(0.5·1) = 0 kept, the batch keeps its 2 other rows
    plan = sel.plan(ctx(batch_size=3, index=torch.tensor([0, 1, 2])))
    assert plan.ascent.tolist() == [1, 2] and plan.ascent_weights.tolist() == [1.0, 1.0]
    # a batch of that row alone would be empty: it is kept, with weight 1/0.5
    plan = sel.plan(ctx(step=1, batch_size=1, index=torch.tensor([0])))
    assert plan.ascent.tolist() == [0] and plan.ascent_weights.tolist() == [2.0]


# -- reuse and perturbations at a zero gradient -------------------------------------------------------------


def test_looksam_reuse_zero_guards():
    reuse = LookSAMReuse(alpha=0.7)
    # g = 0: no projection (0/0 guarded), g_v = g_s
    reuse.record(ctx(), outcome([torch.zeros(2, dtype=F64)], [torch.tensor([1.0, 2.0], dtype=F64)]))
    assert reuse.gv[0].tolist() == [1.0, 2.0]
    # g_s parallel to g: g_v = 0; the plain gradient (3, 4) gets 0.7·5/(0 + 1e-12) · 0 = 0 added
    reuse.record(ctx(), outcome([torch.tensor([1.0, 0.0], dtype=F64)], [torch.tensor([2.0, 0.0], dtype=F64)]))
    assert reuse.gv[0].tolist() == [0.0, 0.0]
    p = torch.nn.Parameter(torch.zeros(2, dtype=F64))
    p.grad = torch.tensor([3.0, 4.0], dtype=F64)
    reuse.apply(ctx(), [p])
    assert p.grad.tolist() == [3.0, 4.0]


@pytest.mark.parametrize(
    "perturbation",
    [SAMPerturbation(), ASAMPerturbation(), NoisySAMPerturbation(noise=0.5, seed=0)],
    ids=["sam", "asam", "noisy"],
)
def test_zero_gradient_gives_zero_epsilon(perturbation):
    # ε = ρ·0/(0 + eps) = 0; the noise is relative to ‖g‖ = 0, so it is 0 too
    p = torch.nn.Parameter(torch.ones(2, 3, dtype=F64))
    p.grad = torch.zeros_like(p)
    ((_, eps),) = perturbation.epsilon(ctx(), [{"params": [p], "rho": 0.05}])
    assert torch.equal(eps, torch.zeros_like(p))
    assert math.isfinite(float(eps.sum()))
