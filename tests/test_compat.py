"""Drop-in APIs: davda54/sam's loops (step(closure) and first/second step), adaptive=True, closure(rows)
without sizes, the two-step API honouring the method, wrapper copies, plain state dicts, names."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import flatsam
from helpers import KW, LR, MOMENTUM, WD, assert_matches, batches, bn_model, closure_for
from reference import MomentumSGD, Problem, sam_epsilon, sharpness_aware_step, tiny_mlp, toy_data
from reference_compat import davda54_adaptive_epsilon

RHO = 0.1


def reference_run(model, x, y, order, epsilon):
    problem = Problem(model, x, y)
    w, ref_opt = problem.weights(), MomentumSGD(LR, MOMENTUM, WD)
    for idx in order:
        w, _, _ = sharpness_aware_step(problem, ref_opt, w, idx, epsilon)
    return w, ref_opt


def order():
    return batches(24, 8, 2)[0] + batches(24, 8, 2)[1]


def mean_loss(model, x, y, idx):
    return F.cross_entropy(model(x[idx]), y[idx])


def davda54_closure_loop(opt, model, x, y):
    """davda54/sam's README loop: first forward/backward by hand, then step(closure)."""
    for idx in order():

        def closure():
            loss = mean_loss(model, x, y, idx)
            loss.backward()
            return loss

        mean_loss(model, x, y, idx).backward()
        opt.step(closure)
        opt.zero_grad()


def davda54_two_step_loop(opt, model, x, y):
    """davda54/sam's README loop with first_step/second_step."""
    for idx in order():
        mean_loss(model, x, y, idx).backward()
        opt.first_step(zero_grad=True)
        mean_loss(model, x, y, idx).backward()
        opt.second_step(zero_grad=True)


@pytest.mark.parametrize("loop", [davda54_closure_loop, davda54_two_step_loop])
def test_davda54_loops_match_sam_transcription(loop):
    x, y = toy_data()
    model = tiny_mlp()
    w, ref_opt = reference_run(tiny_mlp(), x, y, order(), lambda _w, g: sam_epsilon(g, RHO))
    opt = flatsam.SAM(model.parameters(), torch.optim.SGD, rho=RHO, **KW)
    loop(opt, model, x, y)
    assert_matches(model, opt, w, ref_opt)
    assert opt.step_count == len(order())


def test_closure_without_gradients_runs_both_passes():
    """The composer / Lightning-automatic style: .grad is empty, so the closure also runs the clean pass."""
    x, y = toy_data()
    model = tiny_mlp()
    w, ref_opt = reference_run(tiny_mlp(), x, y, order(), lambda _w, g: sam_epsilon(g, RHO))
    opt = flatsam.SAM(model.parameters(), torch.optim.SGD, rho=RHO, **KW)
    calls = []
    for idx in order():

        def closure():
            calls.append(torch.is_grad_enabled())
            opt.zero_grad()
            loss = mean_loss(model, x, y, idx)
            loss.backward()
            return loss

        with torch.no_grad():
            clean = float(mean_loss(model, x, y, idx))
        info = opt.step(closure)
        opt.zero_grad()
        assert info.loss == pytest.approx(clean) and info.ascent
    assert calls == [True] * 2 * len(order())
    assert_matches(model, opt, w, ref_opt)


def test_closure_rows_without_index_or_batch_size():
    x, y = toy_data()
    model = tiny_mlp()
    w, ref_opt = reference_run(tiny_mlp(), x, y, order(), lambda _w, g: sam_epsilon(g, RHO))
    opt = flatsam.SAM(model.parameters(), torch.optim.SGD, rho=RHO, **KW)
    for idx in order():
        xb, yb = x[idx], y[idx]
        info = opt.step(lambda rows: F.cross_entropy(model(xb[rows]), yb[rows], reduction="none"))
        assert info.batch_size == 8 and info.cost == pytest.approx(2.0)
    assert_matches(model, opt, w, ref_opt)
    # K-SAM's first pass (no-grad scoring) also covers the batch: B is read there
    ksam = flatsam.KSAM(model.parameters(), torch.optim.SGD, keep=0.5, lr=0.1)
    ksam.zero_grad()
    info = ksam.step(lambda rows: F.cross_entropy(model(xb[rows]), yb[rows], reduction="none"))
    assert (info.batch_size, info.ascent_rows) == (8, 4)


def test_adaptive_matches_davda54_rule():
    x, y = toy_data()
    model = tiny_mlp()
    rho = 2.0
    w, ref_opt = reference_run(tiny_mlp(), x, y, order(), lambda w, g: davda54_adaptive_epsilon(w, g, rho))
    opt = flatsam.SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=True, **KW)
    davda54_two_step_loop(opt, model, x, y)
    assert_matches(model, opt, w, ref_opt)
    with pytest.raises(ValueError, match="adaptive=True .* perturbation"):
        flatsam.SAM(model.parameters(), adaptive=True, perturbation=flatsam.SAMPerturbation(), lr=0.1)


def test_row_selecting_methods_refuse_the_caller_owned_passes():
    x, y = toy_data()
    model = tiny_mlp()
    opt = flatsam.AUSAM(model.parameters(), torch.optim.SGD, num_samples=24, lr=0.1)
    mean_loss(model, x, y, torch.arange(8)).backward()
    with pytest.raises(TypeError, match=r"ADLPSampler.*closure\(rows\)"):
        opt.step(lambda: mean_loss(model, x, y, torch.arange(8)).backward())
    with pytest.raises(TypeError, match=r"closure\(rows\)"):
        opt.first_step()
    esam = flatsam.ESAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(TypeError, match=r"closure\(rows\)"):
        esam.first_step()


def aware_two_step_loop(opt, model, x, y, order):
    """A loop that skips the second pass when first_step says there is no ascent."""
    ascents = []
    for idx in order:
        mean_loss(model, x, y, idx).backward()
        ascended = opt.first_step(zero_grad=True)
        if ascended:
            mean_loss(model, x, y, idx).backward()
        assert opt.second_step(zero_grad=True)
        ascents.append(ascended)
    return ascents


def both_passes_loop(opt, model, x, y, order):
    """pytorch_optimizer's LookSAM example: both forward/backward passes on every step, whatever
    first_step decided (with zero_grad=True, as that example passes)."""
    ascents = []
    for idx in order:
        mean_loss(model, x, y, idx).backward()
        ascents.append(opt.first_step(zero_grad=True))
        mean_loss(model, x, y, idx).backward()
        assert opt.second_step(zero_grad=True)
    return ascents


SCHEDULED = {
    "looksam": {"k": 3},
    "aesam": {"init": "first", "lambda1": 0.0, "lambda2": 0.0},
    "sssam": {"seed": 4},
    "arsam": {"seed": 4, "warmup_epochs": 0, "window": 4, "blocks": 2},
}


@pytest.mark.parametrize("loop", [aware_two_step_loop, both_passes_loop])
@pytest.mark.parametrize("name", list(SCHEDULED))
def test_two_step_loops_give_the_engines_model_under_the_schedule(name, loop):
    """The schedule decides in first_step; a loop that skips the second pass without ascent, and one that
    always runs it (its gradient, at the same weights, then replaces the clean one), both give the
    model of the engine's own steps."""
    x, y = toy_data()
    a, b = tiny_mlp(), tiny_mlp()

    def build(model):
        overrides = {"rho": RHO, **SCHEDULED[name]}
        return flatsam.build_method(name, model.parameters(), total_steps=12, overrides=overrides, **KW)

    opt_a, opt_b = build(a), build(b)
    infos = [opt_a.step(closure_for(a, x, y, idx), index=idx) for idx in order() + order()]
    ascents = loop(opt_b, b, x, y, order() + order())
    assert ascents == [info.ascent for info in infos]
    assert 0 < sum(ascents) < len(ascents)  # the method skipped some ascents
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_a_second_backward_added_to_the_clean_gradient_is_refused():
    """Without zero_grad the second backward of a step without ascent would add to the clean gradient."""
    x, y = toy_data()
    model = tiny_mlp()
    opt = flatsam.LookSAM(model.parameters(), torch.optim.SGD, k=2, **KW)
    idx = torch.arange(8)
    for expected in [True, False]:
        mean_loss(model, x, y, idx).backward()
        assert opt.first_step(zero_grad=expected) is expected
        mean_loss(model, x, y, idx).backward()
        if expected:
            opt.second_step(zero_grad=True)
    weights = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match=r"first_step\(zero_grad=True\)"):
        opt.second_step()
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    opt.step(closure_for(model, x, y, idx), index=idx)  # usable again


def test_first_step_twice_and_second_step_alone_are_errors():
    x, y = toy_data()
    model = tiny_mlp()
    opt = flatsam.SAM(model.parameters(), torch.optim.SGD, **KW)
    mean_loss(model, x, y, torch.arange(8)).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="first_step\\(\\) called twice"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="between first_step\\(\\) and second_step\\(\\)"):
        opt.step(closure_for(model, x, y, torch.arange(8)), index=torch.arange(8))
    info = opt.step()  # no closure right after first_step: the second step
    assert info.ascent and not info.skipped
    with pytest.raises(RuntimeError, match="second_step\\(\\) without first_step\\(\\)"):
        opt.second_step()


def test_step_warns_about_gradients_from_the_caller():
    x, y = toy_data()
    model = tiny_mlp()
    opt = flatsam.SAM(model.parameters(), torch.optim.SGD, **KW)
    idx = torch.arange(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(closure_for(model, x, y, idx), index=idx)
        opt.step(closure_for(model, x, y, idx), index=idx)  # the engine's own gradients: no warning
    mean_loss(model, x, y, idx).backward()
    with pytest.warns(UserWarning, match="found gradients in .grad from a backward"):
        opt.step(closure_for(model, x, y, idx), index=idx)


def lightning_style_copy(opt):
    """What Lightning's LightningOptimizer does: a subclass instance holding a copy of the attributes."""
    wrapper = object.__new__(type("LightningWrapped", (type(opt),), {}))
    wrapper.__dict__ = {k: v for k, v in opt.__dict__.items() if k not in ("step", "__del__")}
    return wrapper


def test_counters_survive_a_wrapper_copy_of_the_attributes():
    x, y = toy_data()
    model = tiny_mlp()
    opt = flatsam.AUSAM(model.parameters(), torch.optim.SGD, num_samples=24, seed=0, **KW)
    wrapped = lightning_style_copy(opt)
    idx = torch.arange(24)
    wrapped.set_epoch(0)
    assert opt.step(closure_for(model, x, y, idx), index=idx).ascent_rows == 24  # warm-up
    wrapped.set_epoch(1)
    assert opt.epoch == 1
    assert opt.step(closure_for(model, x, y, idx), index=idx).ascent_rows == 12  # keep = 0.5
    assert wrapped.step_count == opt.step_count == 2
    assert wrapped.state_dict()["engine"] == {"step_count": 2, "epoch": 1}


def test_counters_survive_lightnings_optimizer_wrapper():
    lightning = pytest.importorskip("lightning.pytorch.core.optimizer")
    x, y = toy_data()
    model = tiny_mlp()
    opt = flatsam.AUSAM(model.parameters(), torch.optim.SGD, num_samples=24, seed=0, **KW)
    wrapped = lightning.LightningOptimizer(opt)
    wrapped.set_epoch(1)
    idx = torch.arange(24)
    assert opt.step(closure_for(model, x, y, idx), index=idx).ascent_rows == 12
    assert wrapped.state_dict()["engine"] == {"step_count": 1, "epoch": 1}


def test_plain_adamw_state_dict_loads_into_the_base():
    x, y = toy_data()
    model = tiny_mlp()
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for idx in torch.arange(24).split(8):
        adamw.zero_grad()
        mean_loss(model, x, y, idx).backward()
        adamw.step()
    saved = copy.deepcopy(adamw.state_dict())
    opt = flatsam.SAM(model.parameters(), torch.optim.AdamW, rho=0.07, lr=5e-4)
    with pytest.warns(UserWarning, match="plain AdamW state_dict"):
        opt.load_state_dict(saved)
    assert opt.base_optimizer is opt.base
    assert opt.param_groups is opt.base.param_groups and opt.state is opt.base.state
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.rho == 0.07
    for p in model.parameters():
        assert torch.equal(opt.state[p]["exp_avg"], adamw.state[p]["exp_avg"])
    idx = torch.arange(8)
    opt.zero_grad()
    opt.step(closure_for(model, x, y, idx), index=idx)
    assert opt.state[model[0].weight]["step"] == 4
    with pytest.raises(KeyError, match="nor a plain optimizer state_dict"):
        opt.load_state_dict({"foo": 1})


def test_method_names_are_case_insensitive():
    model = tiny_mlp()
    assert isinstance(flatsam.build_method("SAM", model.parameters(), lr=0.1), flatsam.SAM)
    assert isinstance(flatsam.build_method("AUSAM", model.parameters(), num_samples=4, lr=0.1), flatsam.AUSAM)
    assert flatsam.method_info("LookSAM").name == "looksam"


def test_two_step_batchnorm_statistics_from_the_clean_pass_only():
    x, y = toy_data()
    a, b = bn_model(), bn_model()
    opt_a = flatsam.SAM(a.parameters(), torch.optim.SGD, model=a, **KW)
    opt_b = flatsam.SAM(b.parameters(), torch.optim.SGD, model=b, **KW)
    for idx in order():
        opt_a.step(closure_for(a, x, y, idx), index=idx)

        def closure():
            F.cross_entropy(b(x[idx]), y[idx]).backward()

        F.cross_entropy(b(x[idx]), y[idx]).backward()
        opt_b.step(closure)
        opt_b.zero_grad()
    for (name, u), v in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12, msg=name)
