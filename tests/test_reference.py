"""SAM, ASAM and AUSAM against literal slow transcriptions of their update rules (float64, tiny MLPs:
without BatchNorm, and with BatchNorm in train mode and label smoothing); BatchNorm mutants fail them."""

from __future__ import annotations

import pytest
import torch

import flatsam
from helpers import (
    BN_AUTHORS,
    BN_MUTANTS,
    BN_TORCH,
    LR,
    MOMENTUM,
    SETTINGS,
    WD,
    assert_fails_under_mutant,
    assert_matches,
    batches,
)
from reference import (
    MomentumSGD,
    ReferenceAUSAM,
    asam_epsilon,
    sam_epsilon,
    sharpness_aware_step,
    toy_data,
)


@pytest.mark.parametrize("setting", [*SETTINGS, BN_TORCH], ids=str)
@pytest.mark.parametrize("rho", [0.05, 0.5])
def test_sam_matches_transcription(rho, setting):
    x, y = toy_data()
    model = setting.model()
    problem = setting.problem(model, x, y)
    w, ref_opt = problem.weights(), MomentumSGD(LR, MOMENTUM, WD)
    opt = flatsam.SAM(
        model.parameters(), torch.optim.SGD, rho=rho, model=model, lr=LR, momentum=MOMENTUM, weight_decay=WD
    )
    for idx in batches(len(x), 8, 2)[0] + batches(len(x), 8, 2)[1]:
        w, _, _ = sharpness_aware_step(problem, ref_opt, w, idx, lambda _w, g: sam_epsilon(g, rho))
        opt.step(setting.closure(model, x, y, idx), index=idx)
    assert_matches(model, opt, w, ref_opt, problem)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("with_model", [False, True])
def test_asam_matches_transcription(with_model, setting):
    x, y = toy_data()
    model = setting.model()
    problem = setting.problem(model, x, y)
    # the official convention: |w| + eta on parameters named "weight", identity on biases; without the
    # model's names, tensors of more than one dimension (BatchNorm's scale then counts as a bias)
    params = dict(model.named_parameters())
    scaled = [name.endswith("weight") if with_model else params[name].dim() > 1 for name in problem.names]
    w, ref_opt = problem.weights(), MomentumSGD(LR, MOMENTUM, WD)
    opt = flatsam.ASAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.5,
        model=model if with_model else None,
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WD,
    )
    if not with_model and setting.batchnorm:
        opt.model = model  # BatchNorm's running statistics still need the model (not ASAM's names)
    for idx in batches(len(x), 6, 1)[0]:
        w, _, _ = sharpness_aware_step(
            problem, ref_opt, w, idx, lambda w_, g: asam_epsilon(w_, g, 0.5, 0.01, scaled)
        )
        opt.step(setting.closure(model, x, y, idx), index=idx)
    assert_matches(model, opt, w, ref_opt, problem)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_asam_scope_all_is_davda54_adaptive(setting):
    x, y = toy_data()
    model = setting.model()
    problem = setting.problem(model, x, y)
    w, ref_opt = problem.weights(), MomentumSGD(LR, MOMENTUM, WD)
    opt = flatsam.ASAM(
        model.parameters(),
        torch.optim.SGD,
        rho=2.0,
        eta=0.0,
        scope="all",
        model=model,
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WD,
    )
    for idx in batches(len(x), 8, 1)[0]:
        w, _, _ = sharpness_aware_step(
            problem, ref_opt, w, idx, lambda w_, g: asam_epsilon(w_, g, 2.0, 0.0, [True] * len(w_))
        )
        opt.step(setting.closure(model, x, y, idx), index=idx)
    assert_matches(model, opt, w, ref_opt, problem)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("batch", [8, 7])
@pytest.mark.parametrize("name", ["ausam", "ausam-halfrho"])  # the preset: AUSAM at its own ρ (0.05)
def test_ausam_matches_transcription(name, batch, setting):
    x, y = toy_data(n=28)
    model = setting.model()
    problem = setting.problem(model, x, y)
    rho = flatsam.method_info(name).defaults["rho"].value
    kw = dict(keep=0.5, s_min=0.1, s_max=0.5)
    ref = ReferenceAUSAM(
        problem, MomentumSGD(LR, MOMENTUM, WD), len(x), ramp=2, warmup=1, seed=11, rho=rho, **kw
    )
    opt = flatsam.build_method(
        name,
        model.parameters(),
        torch.optim.SGD,
        model=model,
        num_samples=len(x),
        overrides=dict(ramp_epochs=2, warmup_epochs=1, seed=11, **kw),
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WD,
    )
    assert opt.rho == rho
    w = problem.weights()
    rows_seen, rows_expected = [], []
    for epoch, epoch_batches in enumerate(batches(len(x), batch, 4)):
        opt.set_epoch(epoch)
        for idx in epoch_batches:
            w = ref.step(w, epoch, idx)
            info = opt.step(setting.closure(model, x, y, idx), index=idx)
            rows_seen.append(info.ascent_rows)
            rows_expected.append(len(idx) if epoch == 0 else len(idx) // 2)
    assert_matches(model, opt, w, ref.opt, problem)
    torch.testing.assert_close(opt.selection.dlp_sum, ref.S)
    torch.testing.assert_close(opt.selection.dlp_count, ref.C)
    # epoch 0 used every row, epochs 1-3 drew half of each batch and updated the counts
    assert rows_seen == rows_expected
    assert (ref.C > 1).any()


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_sgd_preset_is_the_base_optimizer(setting):
    x, y = toy_data()
    model = setting.model()
    problem = setting.problem(model, x, y)
    w, ref_opt = problem.weights(), MomentumSGD(LR, MOMENTUM, WD)
    opt = flatsam.SGD(
        model.parameters(), torch.optim.SGD, model=model, lr=LR, momentum=MOMENTUM, weight_decay=WD
    )
    for idx in batches(len(x), 8, 1)[0]:
        problem.new_step()
        _, g = problem.losses_and_grads(w, idx)
        w = ref_opt.step(w, g)
        info = opt.step(setting.closure(model, x, y, idx), index=idx)
        assert not info.ascent and info.backward_passes == 1
    assert_matches(model, opt, w, ref_opt, problem)


# -- the BatchNorm mutants: each makes every transcription test above fail ----------------------------


BN_CHECKS = {
    "sam": lambda s: test_sam_matches_transcription(0.05, s),
    "asam": lambda s: test_asam_matches_transcription(True, s),
    "asam-all": test_asam_scope_all_is_davda54_adaptive,
    "ausam": lambda s: test_ausam_matches_transcription("ausam", 7, s),
}


@pytest.mark.parametrize("mutant", BN_MUTANTS)
@pytest.mark.parametrize("check", BN_CHECKS)
def test_batchnorm_mutants_fail_the_transcriptions(check, mutant, monkeypatch):
    assert_fails_under_mutant(mutant, monkeypatch, lambda: BN_CHECKS[check](BN_AUTHORS))
