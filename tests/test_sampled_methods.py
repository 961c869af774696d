"""ESAM, K-SAM, micro-batch SAM, uniform sampling and InfoBatch-style pruning: literal transcriptions,
pass and sample counts, exact resume, hyperparameter errors, composition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flatsam
from flatsam.component import Outcome, StepContext
from flatsam.methods.sampled import ESAM, KSAM, InfoBatchSAM, MicroBatchSAM, UniformSAM
from flatsam.perturbation import NoisySAMPerturbation, SAMPerturbation, StochasticWeightPerturbation
from flatsam.selection import (
    InfoBatchPruning,
    MicroBatch,
    RowPlan,
    SharpnessSensitiveSelection,
    TopKLoss,
    UniformSampler,
)
from helpers import (
    BN_AUTHORS,
    BN_MUTANTS,
    BN_TORCH,
    KW,
    LR,
    MOMENTUM,
    PLAIN,
    SETTINGS,
    WD,
    Counting,
    assert_fails_under_mutant,
    assert_matches,
    batches,
    bn_model,
    closure_for,
    round_trip,
    same,
)
from reference import MomentumSGD, Problem, tiny_mlp, toy_data
from reference_sampled import (
    ASAMEpsilon,
    NoisyEpsilon,
    ReferenceESAM,
    ReferenceInfoBatch,
    ReferenceInfoBatchInBatch,
    ReferenceKSAM,
    ReferenceMicroBatchSAM,
    ReferenceUniform,
    SAMEpsilon,
    SWPEpsilon,
)


def setup(n: int = 24, setting=PLAIN):
    x, y = toy_data(n=n)
    model = setting.model()
    problem = setting.problem(model, x, y)
    return x, y, model, problem, problem.weights(), MomentumSGD(LR, MOMENTUM, WD)


# -- literal transcriptions ---------------------------------------------------------------------------

ESAM_CASES = [(0.6, 0.5, False), (0.6, 0.5, True), (0.1, 0.3, False), (0.6, 0.99, False)]


@pytest.mark.parametrize(
    ("beta", "gamma", "exact", "setting"),
    # with BatchNorm, not the case whose strict cutoff leaves a one-row descent pass (no batch variance)
    [(*case, s) for s in SETTINGS for case in ESAM_CASES if not (s.batchnorm and case[1] == 0.3)],
    ids=str,
)
def test_esam_matches_transcription(beta, gamma, exact, setting):
    x, y, model, problem, w, ref_opt = setup(setting=setting)
    ref = ReferenceESAM(problem, ref_opt, rho=0.05, beta=beta, gamma=gamma, seed=4, exact_topk=exact)
    opt = ESAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.05,
        beta=beta,
        gamma=gamma,
        exact_topk=exact,
        seed=4,
        model=model,
        **KW,
    )
    sizes = []
    for epoch_batches in batches(len(x), 8, 3):
        for idx in epoch_batches:
            w = ref.step(w, idx)
            sizes.append(opt.step(setting.closure(model, x, y, idx), index=idx).descent_rows)
    assert_matches(model, opt, w, ref.opt, problem)
    assert sizes == ref.descent_sizes
    assert ref.perturbation.steps_with_frozen > 0  # the weight perturbation froze tensors in some steps
    k = max(1, int(8 * gamma))
    if gamma >= 0.99:
        assert set(sizes) == {8}
    elif exact:
        assert set(sizes) == {k}
    else:
        assert set(sizes) == {k - 1}  # the authors' strict cutoff keeps one row fewer than k
    if beta == 0.1:
        assert ref.perturbation.guard_hits > 0  # a draw excluded every tensor: the guard kept them all


def test_esam_with_statistics_in_every_pass_matches_the_official_batchnorm_handling():
    """``bn_updates="every"``: the running statistics move in all three forwards of a step (clean, the
    sharpness forward at w+ε, the descent pass on the selected rows), as in the official code."""
    x, y = toy_data()
    model = BN_TORCH.model()
    problem = Problem(model, x, y, BN_TORCH.smoothing, BN_TORCH.form, every_forward=True)
    w = problem.weights()
    ref = ReferenceESAM(
        problem, MomentumSGD(LR, MOMENTUM, WD), rho=0.05, beta=0.6, gamma=0.5, seed=4, exact_topk=True
    )
    opt = ESAM(
        model.parameters(), rho=0.05, beta=0.6, exact_topk=True, bn_updates="every", seed=4, model=model, **KW
    )
    for epoch_batches in batches(len(x), 8, 3):
        for idx in epoch_batches:
            w = ref.step(w, idx)
            opt.step(BN_TORCH.closure(model, x, y, idx), index=idx)
    assert_matches(model, opt, w, ref.opt, problem)
    assert int(model[1].num_batches_tracked) == 3 * 9  # three forwards in each of the 9 steps
    with pytest.raises(ValueError, match=r"bn_updates must be one of \('first', 'every'\), got 'all'"):
        ESAM(model.parameters(), bn_updates="all", model=model, lr=0.1)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("batch", [8, 7])
def test_ksam_matches_transcription(batch, setting):
    x, y, model, problem, w, ref_opt = setup(28, setting)  # no one-row pass: BatchNorm needs two
    ref = ReferenceKSAM(problem, ref_opt, rho=0.05, keep=0.5)
    opt = KSAM(model.parameters(), torch.optim.SGD, rho=0.05, keep=0.5, model=model, **KW)
    for epoch_batches in batches(len(x), batch, 2):
        for idx in epoch_batches:
            w = ref.step(w, idx)
            opt.step(setting.closure(model, x, y, idx), index=idx)
    assert_matches(model, opt, w, ref.opt, problem)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize(("size", "fraction", "m"), [(None, 0.25, 2), (3, 0.25, 3), (None, 0.5, 4)])
def test_microbatch_sam_matches_transcription(size, fraction, m, setting):
    x, y, model, problem, w, ref_opt = setup(setting=setting)
    ref = ReferenceMicroBatchSAM(problem, ref_opt, rho=0.05, m=m, sigma=0.5, seed=8)
    opt = MicroBatchSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.05,
        size=size,
        fraction=fraction,
        noise=0.5,
        seed=8,
        model=model,
        **KW,
    )
    for epoch_batches in batches(len(x), 8, 2):
        for idx in epoch_batches:
            w = ref.step(w, idx)
            opt.step(setting.closure(model, x, y, idx), index=idx)
    assert_matches(model, opt, w, ref.opt, problem)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("warmup", [0, 1])
def test_uniform_matches_transcription(warmup, setting):
    x, y, model, problem, w, ref_opt = setup(26, setting)
    ref = ReferenceUniform(problem, ref_opt, rho=0.1, keep=0.5, warmup=warmup, seed=6)
    opt = UniformSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.1,
        keep=0.5,
        warmup_epochs=warmup,
        seed=6,
        model=model,
        **KW,
    )
    rows = []
    for epoch, epoch_batches in enumerate(batches(len(x), 7, 2)):
        opt.set_epoch(epoch)
        for idx in epoch_batches:
            w = ref.step(w, epoch, idx)
            rows.append(opt.step(setting.closure(model, x, y, idx), index=idx).descent_rows)
    assert_matches(model, opt, w, ref.opt, problem)
    # 26 rows in batches of 7, 7, 7, 5: the warm-up epoch trains on every row, the others on ⌊B/2⌋
    assert rows == ([7, 7, 7, 5] if warmup else [3, 3, 3, 2]) + [3, 3, 3, 2]


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_infobatch_matches_official_transcription(setting):
    n, epochs, batch = 30, 5, 8
    x, y, model, problem, w, ref_opt = setup(n, setting)
    ref = ReferenceInfoBatch(problem, ref_opt, n, epochs, rho=0.1, prune_ratio=0.5, delta=0.6, seed=2)
    opt = InfoBatchSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.1,
        num_samples=n,
        epochs=epochs,
        delta=0.6,
        seed=2,
        model=model,
        **KW,
    )
    g = torch.Generator().manual_seed(3)
    visited = []
    for epoch in range(epochs):
        permutation = torch.randperm(n, generator=g)
        order = opt.selection.epoch_indices(epoch, permutation)
        assert torch.equal(order, ref.epoch_order(epoch, permutation))
        opt.set_epoch(epoch)
        for idx in order.split(batch):
            w = ref.step(w, idx)
            info = opt.step(setting.closure(model, x, y, idx), index=idx)
            assert info.ascent_rows == info.descent_rows == len(idx)
        visited.append(len(order))
    assert_matches(model, opt, w, ref.opt, problem)
    torch.testing.assert_close(opt.selection.scores, ref.scores)
    # epoch 0: every score is 3, nothing below the mean; epochs 1-2 leave samples out (fewer steps);
    # epochs 3-4 (past delta · epochs = 3) visit every sample again
    assert visited[0] == n and visited[1] < n and visited[2] < n and visited[3] == visited[4] == n


def test_infobatch_resumes_inside_a_pruned_epoch():
    """The epoch's kept samples and weights are in the state: a resumed loop asking again for the epoch
    gets the same indices back."""
    sel = InfoBatchPruning(10, epochs=4, seed=0)
    sel.scores[:] = torch.arange(10.0)  # mean 4.5: samples 0-4 well learned, int(0.5 · 5) = 2 of them kept
    order = torch.randperm(10)
    first = sel.epoch_indices(1, order)
    fresh = InfoBatchPruning(10, epochs=4, seed=1)
    fresh.load_state_dict(round_trip(sel.state_dict()))
    assert torch.equal(fresh.epoch_indices(1, order), first) and torch.equal(fresh.weights, sel.weights)
    assert len(first) == 7 and sorted(sel.weights.tolist()) == [1.0] * 8 + [2.0] * 2
    assert set(range(5, 10)) <= set(first.tolist())  # the not-well-learned all stay


def test_infobatch_epoch_mode_needs_the_epoch_indices():
    model = tiny_mlp()
    x, y = toy_data()
    opt = InfoBatchSAM(model.parameters(), num_samples=24, epochs=3, **KW)
    idx = torch.arange(8)
    with pytest.raises(RuntimeError, match=r"iterate over selection.epoch_indices\(epoch, order\)"):
        opt.step(closure_for(model, x, y, idx), index=idx)
    opt.selection.epoch_indices(0, torch.arange(24))
    assert opt.step(closure_for(model, x, y, idx), index=idx).descent_rows == 8


def test_infobatch_in_batch_matches_transcription():
    n, epochs = 32, 5
    x, y, model, problem, w, ref_opt = setup(n)
    ref = ReferenceInfoBatchInBatch(problem, ref_opt, n, epochs, rho=0.1, prune_ratio=0.5, delta=0.6, seed=2)
    opt = InfoBatchSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.1,
        num_samples=n,
        epochs=epochs,
        delta=0.6,
        mode="batch",
        seed=2,
        **KW,
    )
    rows = {}
    for epoch, epoch_batches in enumerate(batches(n, 8, epochs)):
        opt.set_epoch(epoch)
        for idx in epoch_batches:
            w = ref.step(w, epoch, idx)
            info = opt.step(closure_for(model, x, y, idx), index=idx)
            rows[epoch] = rows.get(epoch, 0) + info.descent_rows
    assert_matches(model, opt, w, ref.opt)
    torch.testing.assert_close(opt.selection.scores, ref.scores)
    assert rows == ref.rows_per_epoch
    # epoch 0: every score is 3, nothing below the mean; epochs 1-2 prune; epochs 3-4 (> delta) train on all
    assert rows[0] == n and rows[1] < n and rows[2] < n and rows[3] == rows[4] == n
    assert ref.pruned_rows > 0


BN_CHECKS = {
    "esam": lambda s: test_esam_matches_transcription(0.6, 0.5, True, s),
    "ksam": lambda s: test_ksam_matches_transcription(8, s),
    "mbsam": lambda s: test_microbatch_sam_matches_transcription(None, 0.25, 2, s),
    "uniform": lambda s: test_uniform_matches_transcription(1, s),
    "infobatch": lambda s: test_infobatch_matches_official_transcription(s),
}


@pytest.mark.parametrize("mutant", BN_MUTANTS)
@pytest.mark.parametrize("check", BN_CHECKS)
def test_batchnorm_mutants_fail_the_transcriptions(check, mutant, monkeypatch):
    assert_fails_under_mutant(mutant, monkeypatch, lambda: BN_CHECKS[check](BN_AUTHORS))


# -- pass and sample counting -------------------------------------------------------------------------


def count(opt, batch: int = 10, epoch: int = 0):
    x, y = toy_data()
    model = opt.model
    idx = torch.arange(batch)
    opt.set_epoch(epoch)
    closure = Counting(model, x, y, idx)
    return closure.calls, opt.step(closure, index=idx)


def test_ksam_counts_one_scoring_forward_then_two_passes_on_k():
    model = tiny_mlp()
    calls, info = count(KSAM(model.parameters(), model=model, keep=0.3, **KW))
    assert calls == [(10, False), (3, True), (3, True)]
    assert (info.forward_passes, info.backward_passes) == (3, 2)
    assert (info.forward_samples, info.backward_samples, info.ascent_rows, info.descent_rows) == (16, 6, 3, 3)
    assert info.cost == pytest.approx((16 + 12) / 30)


@pytest.mark.parametrize(("size", "fraction", "m"), [(None, 0.25, 2), (4, 0.25, 4), (50, 0.25, 10)])
def test_microbatch_counts_m_rows_in_the_ascent_and_b_in_the_descent(size, fraction, m):
    model = tiny_mlp()
    opt = MicroBatchSAM(model.parameters(), model=model, size=size, fraction=fraction, seed=0, **KW)
    calls, info = count(opt)
    assert calls == [(m, True), (10, True)]
    assert (info.ascent_rows, info.descent_rows, info.backward_samples) == (m, 10, m + 10)


def test_uniform_counts_half_the_rows_in_both_passes():
    model = tiny_mlp()
    calls, info = count(UniformSAM(model.parameters(), model=model, keep=0.5, seed=0, **KW), batch=9, epoch=1)
    assert calls == [(4, True), (4, True)]
    assert (info.ascent_rows, info.descent_rows, info.forward_samples) == (4, 4, 8)


def test_esam_counts_clean_pass_scoring_forward_and_selected_rows():
    model = tiny_mlp()
    calls, info = count(ESAM(model.parameters(), model=model, gamma=0.5, seed=0, **KW))
    assert calls == [(10, True), (10, False), (4, True)]  # strict cutoff: k - 1 = 4 rows
    assert (info.forward_passes, info.backward_passes) == (3, 2)
    assert (info.ascent_rows, info.descent_rows) == (10, 4)
    assert (info.forward_samples, info.backward_samples) == (24, 14)


def test_infobatch_counts_the_kept_rows():
    model = tiny_mlp()
    opt = InfoBatchSAM(model.parameters(), model=model, num_samples=24, epochs=10, mode="batch", seed=0, **KW)
    opt.selection.scores[:10] = torch.tensor([0.1, 5.0] * 5)  # rows 0, 2, 4, 6, 8 well learned
    calls, info = count(opt, epoch=1)
    assert calls == [(7, True), (7, True)]  # 5 not learned + int(0.5 · 5) = 2 kept
    assert info.ascent_rows == info.descent_rows == 7


# -- component rules ----------------------------------------------------------------------------------


def test_sharpness_selection_strict_cutoff_exact_topk_and_guards():
    ctx = StepContext(step=0, epoch=0, batch_size=4)
    plan = RowPlan(torch.arange(4), torch.arange(4))
    sharp = torch.tensor([0.1, 0.5, 0.3, 0.9])

    def rows(gamma, sharpness=sharp, exact=False):
        selection = SharpnessSensitiveSelection(gamma, exact_topk=exact)
        return selection.refine(ctx, plan, torch.zeros(4), sharpness).descent.tolist()

    assert rows(0.5) == [3]  # k = 2, strictly above the 2nd largest: one row
    assert rows(0.5, exact=True) == [1, 3]
    # the strict rule keeps nothing (all sharpness equal, or k = 1): the top k rows are used instead
    assert len(rows(0.5, torch.ones(4))) == 2
    assert rows(0.25) == [3]
    assert rows(0.1) == [3]  # k = int(0.4) = 0 is raised to 1
    assert rows(0.99) == [0, 1, 2, 3]


def test_topk_picks_the_highest_losses_in_batch_order():
    ctx = StepContext(step=0, epoch=0, batch_size=5)
    plan = TopKLoss(0.4).plan(ctx, torch.tensor([0.3, 2.0, 0.1, 1.5, 0.2]))
    assert plan.ascent.tolist() == plan.descent.tolist() == [1, 3]


def test_random_rows_are_distinct_and_reproducible():
    a, b = UniformSampler(0.5, seed=3), UniformSampler(0.5, seed=3)
    ctx = StepContext(step=0, epoch=0, batch_size=11)
    for _ in range(5):
        rows = a.plan(ctx).ascent
        assert len(set(rows.tolist())) == len(rows) == 5 and torch.equal(rows, b.plan(ctx).ascent)
    plan = MicroBatch(size=3, seed=0).plan(ctx)
    assert len(set(plan.ascent.tolist())) == 3 and plan.descent.tolist() == list(range(11))


def test_swp_freezes_tensors_in_the_clean_pass_only_and_restores_them():
    model = tiny_mlp()
    params = list(model.parameters())
    swp = StochasticWeightPerturbation(beta=0.5, seed=0)
    ctx = StepContext(step=0, epoch=0, batch_size=4)
    swp.excluded = torch.tensor([True, False, True, False])
    with swp.clean_pass(ctx, params):
        assert [p.requires_grad for p in params] == [False, True, False, True]
    assert all(p.requires_grad for p in params)
    swp.excluded = torch.ones(4, dtype=torch.bool)  # every tensor: the guard freezes none
    with swp.clean_pass(ctx, params):
        assert all(p.requires_grad for p in params)
    # the next step's mask: one uniform per tensor, excluded with probability 1 - beta
    outcome = Outcome(
        True,
        torch.arange(4),
        torch.arange(4),
        torch.zeros(4),
        torch.zeros(4),
        torch.zeros(()),
        descent_grads=[None] * 4,
    )
    drawn = []
    for _ in range(400):
        swp.record(ctx, outcome)
        drawn.append(swp.excluded.float().mean())
    assert 0.45 < float(torch.stack(drawn).mean()) < 0.55


def test_noise_is_relative_to_the_gradient_and_invariant_to_loss_scale():
    torch.manual_seed(0)
    p = nn.Parameter(torch.zeros(20000, dtype=torch.float64))
    g = torch.randn(20000, dtype=torch.float64)
    ctx = StepContext(step=0, epoch=0, batch_size=1)
    eps = []
    for scale in (1.0, 1024.0):
        p.grad = g * scale
        eps.append(NoisySAMPerturbation(noise=0.5, seed=1).epsilon(ctx, [{"params": [p], "rho": 0.1}])[0][1])
    torch.testing.assert_close(eps[0], eps[1], rtol=1e-12, atol=1e-15)
    assert float(eps[0].norm()) == pytest.approx(0.1)
    noisy = NoisySAMPerturbation(noise=0.5, seed=1).directions(ctx, [p])[0]
    assert float((noisy - p.grad).norm() / p.grad.norm()) == pytest.approx(0.5, rel=0.03)
    p.grad = g
    zero = NoisySAMPerturbation(noise=0.0).epsilon(ctx, [{"params": [p], "rho": 0.1}])[0][1]
    assert torch.equal(zero, SAMPerturbation().epsilon(ctx, [{"params": [p], "rho": 0.1}])[0][1])


def test_infobatch_prunes_the_official_number_of_epochs_and_keeps_a_row():
    sel = InfoBatchPruning(10, epochs=200, mode="batch")
    assert sum(sel.prunes(e) for e in range(200)) == 175 and sel.prunes(174) and not sel.prunes(175)
    # the official sampler prunes while its 1-based epoch count is <= delta·epochs
    half = InfoBatchPruning(10, epochs=5, delta=0.5)
    assert [half.prunes(e) for e in range(5)] == [True, True, False, False, False]
    sel.scores[:] = torch.arange(10.0)
    plan = sel.plan(StepContext(step=0, epoch=0, batch_size=1, index=torch.tensor([0])))
    assert plan.ascent.tolist() == [0] and plan.ascent_weights.tolist() == [2.0]  # one row kept, not none


def test_infobatch_threshold_is_taken_once_per_epoch_and_resumes():
    sel = InfoBatchPruning(10, epochs=10, mode="batch", seed=0)
    sel.scores[:] = torch.arange(10.0)  # mean 4.5: rows 0-4 well learned
    ctx = StepContext(step=0, epoch=1, batch_size=10, index=torch.arange(10))
    first = sel.plan(ctx)
    sel.scores[:5] = 100.0  # later steps of the same epoch raise scores; the epoch keeps its threshold
    fresh = InfoBatchPruning(10, epochs=10, mode="batch", seed=1)
    fresh.load_state_dict(round_trip(sel.state_dict()))
    for s in (sel, fresh):
        plan = s.plan(ctx)
        assert float(s.threshold) == 4.5 and plan.ascent.tolist() == list(range(10))  # nothing below 4.5 now
        assert plan.ascent_weights.tolist() == [1.0] * 10
    assert len(first.ascent) == 5 + 2 and sorted(first.ascent_weights.tolist()) == [1.0] * 5 + [2.0] * 2
    sel.plan(StepContext(step=1, epoch=2, batch_size=10, index=torch.arange(10)))
    assert float(sel.threshold) == pytest.approx(53.5)  # a new epoch takes a new mean


def test_infobatch_needs_the_index():
    model = tiny_mlp()
    x, y = toy_data()
    opt = InfoBatchSAM(model.parameters(), num_samples=24, epochs=3, **KW)
    with pytest.raises(ValueError, match="InfoBatchPruning keeps a per-sample history, so every step needs"):
        opt.step(closure_for(model, x, y, torch.arange(8)), batch_size=8)
    idx = torch.tensor([0, 30])
    with pytest.raises(ValueError, match=r"index values must be in \[0, num_samples\) = \[0, 24\)"):
        opt.step(closure_for(model, x, y, torch.arange(2)), index=idx)


# -- resume -------------------------------------------------------------------------------------------

BUILDERS = {
    # exact top-k: with BatchNorm, tied sharpness could leave the strict rule a single row
    "esam": lambda m, seed: ESAM(m.parameters(), model=m, beta=0.5, exact_topk=True, seed=seed, **KW),
    "ksam": lambda m, seed: KSAM(m.parameters(), model=m, **KW),
    "mbsam": lambda m, seed: MicroBatchSAM(m.parameters(), model=m, size=2, seed=seed, **KW),
    "uniform": lambda m, seed: UniformSAM(m.parameters(), model=m, seed=seed, **KW),
    "infobatch-in-batch": lambda m, seed: InfoBatchSAM(
        m.parameters(), model=m, num_samples=24, epochs=4, delta=0.75, mode="batch", seed=seed, **KW
    ),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_resume_mid_epoch_is_bit_for_bit(name):
    x, y = toy_data(n=24)
    g = torch.Generator().manual_seed(9)
    steps = [(e, idx) for e in range(4) for idx in torch.randperm(24, generator=g).split(6)]
    half = 6  # in the middle of epoch 1

    def run(model, opt, part):
        for epoch, idx in part:
            opt.set_epoch(epoch)  # as a loop that (re)starts in this epoch would
            opt.step(closure_for(model, x, y, idx), index=idx)

    straight = bn_model()
    opt = BUILDERS[name](straight, 5)
    run(straight, opt, steps)

    first = bn_model()
    opt1 = BUILDERS[name](first, 5)
    run(first, opt1, steps[:half])
    ckpt = round_trip({"model": first.state_dict(), "opt": opt1.state_dict()})

    second = bn_model()
    torch.manual_seed(1234)  # a fresh process would not share the first one's RNG
    opt2 = BUILDERS[name](second, 77)
    second.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    run(second, opt2, steps[half:])

    for k, v in straight.state_dict().items():
        assert torch.equal(v, second.state_dict()[k]), k
    assert same(opt.state_dict(), opt2.state_dict())
    for p, q in zip(straight.parameters(), second.parameters(), strict=True):
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])


# -- errors and composition ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (ESAM, {"beta": 0.0}, r"beta .* must be in \(0, 1\], got 0.0"),
        (ESAM, {"beta": 1.5}, r"beta .* must be in \(0, 1\]"),
        (ESAM, {"gamma": 0.0}, r"gamma must be in \(0, 1\]"),
        (ESAM, {"rho": -1.0}, r"rho must be >= 0"),
        (KSAM, {"keep": 0.0}, r"keep must be in \(0, 1\]"),
        (KSAM, {"keep": 1.2}, r"keep must be in \(0, 1\]"),
        (MicroBatchSAM, {"fraction": 1.5}, r"fraction must be in \(0, 1\]"),
        (MicroBatchSAM, {"size": 0}, r"size .* must be an integer >= 1 or None"),
        (MicroBatchSAM, {"size": 2.5}, r"size .* must be an integer >= 1 or None"),
        (MicroBatchSAM, {"noise": -0.1}, r"noise .* must be a finite value >= 0"),
        (MicroBatchSAM, {"noise": float("nan")}, r"noise .* must be a finite value >= 0"),
        (UniformSAM, {"keep": -0.5}, r"keep must be in \(0, 1\]"),
        (InfoBatchSAM, {"prune_ratio": 0.95}, r"prune_ratio must be in \[0, 0.9\]"),
        (InfoBatchSAM, {"prune_ratio": -0.1}, r"prune_ratio must be in \[0, 0.9\]"),
        (InfoBatchSAM, {"delta": 1.5}, r"delta .* must be in \[0, 1\]"),
        (InfoBatchSAM, {"epochs": 0}, r"epochs .* must be an integer >= 1"),
        (InfoBatchSAM, {"num_samples": 0}, r"num_samples .* must be an integer >= 1"),
        (InfoBatchSAM, {"mode": "step"}, r"mode must be one of \('epoch', 'batch'\), got 'step'"),
    ],
)
def test_bad_hyperparameters_raise(cls, kwargs, match):
    model = tiny_mlp()
    base = {"num_samples": 10, "epochs": 5} if cls is InfoBatchSAM else {}
    with pytest.raises(ValueError, match=match):
        cls(model.parameters(), torch.optim.SGD, lr=0.1, **{**base, **kwargs})


def _scaled(problem) -> list[bool]:
    """ASAM without a model scales the tensors of more than one dimension (the weights here)."""
    return [w.dim() > 1 for w in problem.weights()]


#: selection + perturbation, the (ascent, descent) rows of each step, and the transcription of the composed
#: rule built from the references of the two parts
COMPONENTS = {
    "topk+noisy": (
        lambda: TopKLoss(0.5),
        lambda: NoisySAMPerturbation(noise=0.3, seed=0),
        (4, 4),
        lambda p, o: ReferenceKSAM(p, o, 0.05, keep=0.5, perturbation=NoisyEpsilon(0.05, 0.3, seed=0)),
    ),
    "microbatch+swp": (
        lambda: MicroBatch(size=2, seed=0),
        lambda: StochasticWeightPerturbation(0.5, seed=0),
        (2, 8),
        lambda p, o: ReferenceMicroBatchSAM(
            p, o, 0.05, m=2, sigma=0.0, seed=0, perturbation=SWPEpsilon(0.05, 0.5, seed=0)
        ),
    ),
    "sharpness+sam": (
        lambda: SharpnessSensitiveSelection(0.5, exact_topk=True),
        lambda: SAMPerturbation(),
        (8, 4),
        lambda p, o: ReferenceESAM(
            p, o, 0.05, beta=1.0, gamma=0.5, seed=0, exact_topk=True, perturbation=SAMEpsilon(0.05)
        ),
    ),
    "uniform+asam": (
        lambda: UniformSampler(0.5, seed=0),
        lambda: flatsam.ASAMPerturbation(),
        (4, 4),
        lambda p, o: ReferenceUniform(
            p, o, 0.05, keep=0.5, warmup=0, seed=0, perturbation=ASAMEpsilon(0.05, 0.01, _scaled(p))
        ),
    ),
}


@pytest.mark.parametrize("name", COMPONENTS)
def test_components_compose_as_the_composed_transcription(name):
    selection, perturbation, rows, reference = COMPONENTS[name]
    x, y, model, problem, w, ref_opt = setup()
    ref = reference(problem, ref_opt)
    opt = flatsam.SharpnessAware(
        model.parameters(),
        torch.optim.SGD,
        selection=selection(),
        perturbation=perturbation(),
        rho=0.05,
        **KW,
    )
    for epoch, epoch_batches in enumerate(batches(len(x), 8, 2)):
        for idx in epoch_batches:
            w = ref.step(w, epoch, idx) if isinstance(ref, ReferenceUniform) else ref.step(w, idx)
            info = opt.step(closure_for(model, x, y, idx), index=idx)
            assert info.ascent and not info.skipped and (info.ascent_rows, info.descent_rows) == rows
    assert_matches(model, opt, w, ref.opt)
    if name == "microbatch+swp":
        assert ref.perturbation.steps_with_frozen > 0  # tensors were left out of some ascents


def test_registry_builds_the_sampled_methods_with_their_needs():
    model = tiny_mlp()
    for name in ("esam", "ksam", "mbsam", "uniform", "infobatch"):
        opt = flatsam.build_method(name, model.parameters(), num_samples=24, epochs=3, lr=0.1)
        assert isinstance(opt, flatsam.SharpnessAware)
    with pytest.raises(ValueError, match=r"needs \['epochs'\]"):
        flatsam.build_method("infobatch", model.parameters(), num_samples=24, lr=0.1)
