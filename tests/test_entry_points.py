"""Every entry point gives the reference's model or fails on its first step with a message that says what
to do: plans read without a model, BatchNorm in the two-step API, GradScaler's unscale_ and growth count,
the step's loss, davda54/pytorch_optimizer call shapes, 0-based epochs, non-finite scoring passes."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import flatsam
from flatsam.perturbation import NoisySAMPerturbation, SAMPerturbation, StochasticWeightPerturbation
from flatsam.plan import Kind, build
from flatsam.selection import AllRows, MSharpness, SharpnessSensitiveSelection, TopKLoss
from helpers import KW, bn_model, closure_for
from reference import tiny_mlp, toy_data

C, P, D, R = Kind.CLEAN, Kind.PERTURB, Kind.DESCENT, Kind.RESTORE


def kinds(plan):
    return [p.kind for p in plan]


# -- plans, read without a model ----------------------------------------------------------------------
def test_the_plans_of_the_methods():
    assert kinds(build(AllRows(), ascend=True)) == [C, P, D, R]  # SAM
    assert kinds(build(AllRows(), ascend=False)) == [C]  # a step without ascent (LookSAM, SS-SAM, ...)
    assert kinds(build(AllRows(), ascend=None)) == [C, Kind.DECIDE, P, D, R]  # AE-SAM
    assert kinds(build(TopKLoss(), ascend=True)) == [Kind.SCORE, C, P, D, R]  # K-SAM
    assert kinds(build(SharpnessSensitiveSelection(), ascend=True)) == [C, P, Kind.REFINE, D, R]  # ESAM
    assert kinds(build(MSharpness(4), ascend=True, parts=2)) == [C, P, D, R, C, P, D, R]


def test_micro_batches_sync_and_accumulate_on_the_last():
    plan = build(AllRows(), ascend=True, micros=3)
    assert kinds(plan) == [C, C, C, P, D, D, D, R]
    clean, descent = plan[:3], plan[4:7]
    assert [p.micro for p in clean] == [0, 1, 2] and [p.accumulate for p in clean] == [False, True, True]
    assert not any(p.sync for p in clean)  # ε from each rank's own gradient, as SAM's reference code
    assert [p.sync for p in descent] == [False, False, True] and [p.check for p in descent] == [0, 0, 1]
    kept = build(AllRows(), ascend=True, micros=2, keeps_clean_grads=True)  # LookSAM, ARSAM: all-reduced
    assert [p.sync for p in kept[:2]] == [False, True]
    parts = build(MSharpness(4), ascend=True, parts=3)
    assert [p.accumulate for p in parts if p.kind is D] == [False, True, True]
    assert [p.sync for p in parts if p.kind is D] == [False, False, True]


def test_the_two_step_api_walks_the_same_plan_with_the_callers_passes():
    plan = build(AllRows(), ascend=True, external=True)
    assert kinds(plan) == [C, P, D, R] and [p.external for p in plan] == [True, False, True, False]
    looksam = flatsam.LookSAM(tiny_mlp().parameters(), torch.optim.SGD, k=5, lr=0.1)
    assert kinds(looksam.plan(True)) == [C, P, D, R] and kinds(looksam.plan(False)) == [C]
    assert repr(looksam.plan(True)[0]) == "clean(check)"  # keeps the clean gradient: all-reduced


# -- (1) the two-step API keeps BatchNorm statistics to the clean pass ---------------------------------
def test_first_step_freezes_batchnorm_until_second_step():
    x, y = torch.randn(24, 5, dtype=torch.float64), torch.randint(0, 3, (24,))
    a, b = bn_model(), bn_model()
    engine = flatsam.SAM(a.parameters(), torch.optim.SGD, rho=0.1, model=a, **KW)
    two_step = flatsam.SAM(b.parameters(), torch.optim.SGD, rho=0.1, model=b, **KW)
    for idx in torch.arange(24).split(6):
        engine.step(closure_for(a, x, y, idx), index=idx)
        F.cross_entropy(b(x[idx]), y[idx]).backward()
        assert two_step.first_step(zero_grad=True)
        F.cross_entropy(b(x[idx]), y[idx]).backward()
        two_step.second_step(zero_grad=True)
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
    for name, value in buffers_a.items():
        torch.testing.assert_close(buffers_b[name], value, rtol=1e-12, atol=1e-14)
    assert {int(v) for k, v in buffers_b.items() if k.endswith("num_batches_tracked")} == {4}
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)


# -- (3), (4) GradScaler ------------------------------------------------------------------------------
def scaled_two_step(unscale_before: bool, pass_scaler: bool, steps: int = 4):
    x, y = toy_data()
    model = tiny_mlp()
    opt = flatsam.SAM(model.parameters(), torch.optim.SGD, rho=0.1, **KW)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for idx in torch.arange(24).split(8)[:steps]:
        scaler.scale(F.cross_entropy(model(x[idx]), y[idx])).backward()
        if unscale_before:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)  # why users unscale here
        opt.first_step(zero_grad=True, scaler=scaler if pass_scaler else None)
        scaler.scale(F.cross_entropy(model(x[idx]), y[idx])).backward()
        if not unscale_before:
            scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    return model, scaler


def fp32_sam(steps: int = 4):
    x, y = toy_data()
    model = tiny_mlp()
    opt = flatsam.SAM(model.parameters(), torch.optim.SGD, rho=0.1, **KW)
    for idx in torch.arange(24).split(8)[:steps]:
        opt.step(closure_for(model, x, y, idx), index=idx)
    return model


def test_unscale_before_first_step_is_taken_over_when_first_step_has_the_scaler():
    reference = fp32_sam(3)
    for unscale_before in (False, True):
        model, scaler = scaled_two_step(unscale_before, pass_scaler=True, steps=3)
        assert scaler.get_scale() == 2.0**10  # no overflow was seen
        for p, q in zip(reference.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12)


def test_unscale_before_first_step_without_the_scaler_is_refused_on_the_first_step():
    x, y = toy_data()
    model = tiny_mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match=r"unscale_\(opt\) ran before first_step.*scaler=scaler"):
        scaled_two_step(unscale_before=True, pass_scaler=False, steps=1)
    assert all(torch.equal(v, before[k]) for k, v in tiny_mlp().state_dict().items())


def scales(step_fn, pattern):
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    seen = []
    for bad in pattern:
        step_fn(scaler, bad)
        seen.append(scaler.get_scale())
    return seen


def test_a_skipped_step_restarts_the_growth_count_as_gradscaler_does():
    x, y = toy_data()
    pattern = [False, True, False, False, False, True, False]
    torch_model, flat_model = tiny_mlp(), tiny_mlp()
    sgd = torch.optim.SGD(torch_model.parameters(), lr=0.01)
    opt = flatsam.SAM(flat_model.parameters(), torch.optim.SGD, rho=0.1, lr=0.01)
    idx = torch.arange(8)

    def torch_step(scaler, bad):
        sgd.zero_grad()
        loss = F.cross_entropy(torch_model(x[idx]), y[idx]) * (float("inf") if bad else 1.0)
        scaler.scale(loss).backward()
        scaler.step(sgd)
        scaler.update()

    def flatsam_step(scaler, bad):
        factor = float("inf") if bad else 1.0
        closure = closure_for(flat_model, x, y, idx)
        info = opt.step(lambda rows: closure(rows) * factor, index=idx, scaler=scaler)
        assert info.skipped is bad

    expected = scales(torch_step, pattern)
    assert expected == [1024.0, 512.0, 512.0, 1024.0, 1024.0, 512.0, 512.0]
    assert scales(flatsam_step, pattern) == expected


# -- (6) epochs count from 0 --------------------------------------------------------------------------
def test_a_fresh_ausam_whose_first_epoch_is_not_zero_warns():
    model = tiny_mlp()

    def ausam():
        return flatsam.AUSAM(model.parameters(), torch.optim.SGD, num_samples=24, lr=0.1)

    with pytest.warns(UserWarning, match="epochs count from 0.*warm-up"):
        ausam().set_epoch(1)
    quiet = ausam()
    resumed = ausam()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.set_epoch(0)
        quiet.set_epoch(1)
        resumed.load_state_dict(quiet.state_dict())
        resumed.set_epoch(5)


# -- (7) the step's loss, as torch's optimizers return it ----------------------------------------------
def test_a_zero_argument_closure_hands_back_its_loss():
    x, y = toy_data()
    idx = torch.arange(8)
    model = tiny_mlp()
    opt = flatsam.SAM(model.parameters(), torch.optim.SGD, 0.1, **KW)
    returned = []

    def closure():
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        returned.append(loss.item())
        return loss

    info = opt.step(closure)  # .grad empty: the closure runs the clean pass, then the one at w+ε
    assert len(returned) == 2 and float(info) == info.loss == returned[0]
    closure()  # davda54's README loop: the caller runs the clean pass
    returned.clear()
    info = opt.step(closure)
    assert len(returned) == 1 and float(info) == returned[0]


# -- (8) davda54/sam and pytorch_optimizer call shapes --------------------------------------------------
def test_rho_may_be_positional_and_foreign_keywords_name_flatsams_way():
    params = list(tiny_mlp().parameters())
    assert flatsam.SAM(params, torch.optim.SGD, 0.07, lr=0.1).rho == 0.07
    assert flatsam.ASAM(params, torch.optim.SGD, 1.5, lr=0.1).rho == 1.5
    with pytest.raises(TypeError, match="use_gc= .*gradient centralization"):
        flatsam.SAM(params, torch.optim.SGD, rho=0.05, lr=0.1, use_gc=True)
    with pytest.raises(TypeError, match=r"perturb_eps= .*SAMPerturbation\(eps=...\)"):
        flatsam.SAM(params, torch.optim.SGD, rho=0.05, lr=0.1, perturb_eps=1e-12)
    with pytest.raises(TypeError, match=r"adaptive= .*flatsam.ASAM"):
        flatsam.LookSAM(params, torch.optim.SGD, lr=0.1, adaptive=True)


# -- (9) a non-finite scoring pass skips the step like any other ---------------------------------------
def test_a_non_finite_scoring_pass_skips_the_step():
    x, y = toy_data()
    idx = torch.arange(8)
    model = tiny_mlp()
    opt = flatsam.KSAM(model.parameters(), torch.optim.SGD, **KW)
    before = copy.deepcopy(model.state_dict())

    def closure(rows):
        losses = closure_for(model, x, y, idx)(rows)
        return losses if torch.is_grad_enabled() else losses * float("nan")  # the no-grad scoring pass

    info = opt.step(closure, index=idx)
    assert info.skipped and "scoring pass" in info.reason and info.forward_passes == 1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not opt.step(closure_for(model, x, y, idx), index=idx).skipped


# -- components keep their promises through subclasses --------------------------------------------------
def test_a_subclass_keeps_skip_on_device_unless_it_draws_after_the_clean_pass():
    class Mine(SAMPerturbation):
        pass

    assert Mine.skips_on_device() and SAMPerturbation.skips_on_device()
    assert not NoisySAMPerturbation.skips_on_device()  # draws its noise at the perturbation
    assert not StochasticWeightPerturbation.skips_on_device()  # draws in record


@pytest.mark.parametrize(("key", "value"), [("rho", -1.0), ("lr", float("inf")), ("lr", float("nan"))])
def test_a_param_group_value_written_between_steps_is_checked_at_the_next_step(key, value):
    x, y = toy_data()
    idx = torch.arange(8)
    model = tiny_mlp()
    opt = flatsam.SAM(model.parameters(), torch.optim.SGD, 0.05, **KW)
    opt.step(closure_for(model, x, y, idx), index=idx)
    opt.param_groups[0][key] = value
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=rf"param_groups\[0\]\['{key}'\] is .*finite number >= 0"):
        opt.step(closure_for(model, x, y, idx), index=idx)
    F.cross_entropy(model(x[idx]), y[idx]).backward()
    with pytest.raises(ValueError, match=key):
        opt.first_step()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_values_are_checked_where_they_enter_the_library():
    params = list(tiny_mlp().parameters())
    with pytest.raises(TypeError, match="sync_free must be true, false or none, got 'maybe'"):
        flatsam.SAM(params, torch.optim.SGD, 0.05, lr=0.1, sync_free="maybe")
    with pytest.raises(ValueError, match="seed must be an integer"):
        flatsam.AUSAM(params, torch.optim.SGD, num_samples=8, lr=0.1, seed=2**64)
    opt = flatsam.AUSAM(params, torch.optim.SGD, num_samples=8, lr=0.1)
    state = opt.state_dict()
    state["selection"]["dlp_sum"] = 5.0  # an edited checkpoint
    with pytest.raises(ValueError, match="dlp_sum is a float, not a tensor"):
        opt.load_state_dict(state)
