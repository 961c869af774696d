"""GSAM: the official update rule written out, α = 0 is SAM, the ρ schedule, resume, errors."""

from __future__ import annotations

import pytest
import torch

import flatsam
from flatsam.methods import build_method
from flatsam.methods.gsam import GSAM
from flatsam.perturbation import GSAMPerturbation
from helpers import KW, LR, MOMENTUM, WD, assert_matches, batches, closure_for, round_trip
from reference import MomentumSGD, Problem, tiny_mlp, toy_data
from reference_gsam import ReferenceGSAM, proportion

STEPS = 20


def lr_of_step(t: int) -> float:
    return LR * (1 - t / STEPS)


def run(opt, model, x, y, epochs, start=0, ref=None, w=None):
    """Step flatsam (and the transcription, given) on the seeded batches, the LR falling linearly."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / STEPS, last_epoch=start - 1)
    t = 0
    for idxs in batches(len(x), 6, epochs):
        for idx in idxs:
            if t >= start:
                if ref is not None:
                    w = ref.step(w, idx)
                opt.step(closure_for(model, x, y, idx), index=idx)
                scheduler.step()
            t += 1
    return w


@pytest.mark.parametrize("adaptive", [None, "pytorch", "jax"])
def test_gsam_matches_the_official_rule(adaptive):
    x, y = toy_data()
    model = tiny_mlp()
    rho = 0.5 if adaptive else 0.1
    ref = ReferenceGSAM(
        Problem(model, x, y),
        MomentumSGD(LR, MOMENTUM, WD),
        rho_max=rho,
        rho_min=rho / 4,
        alpha=0.4,
        lr_max=LR,
        lr_min=0.0,
        lr_of_step=lr_of_step,
        adaptive=adaptive,
    )
    form = dict(adaptive=adaptive is not None, adaptive_form=adaptive or "pytorch")
    opt = GSAM(model.parameters(), torch.optim.SGD, rho=rho, rho_min=rho / 4, **form, **KW)
    w = run(opt, model, x, y, epochs=3, ref=ref, w=ref.problem.weights())  # 12 steps
    assert ref.rhos[0] == pytest.approx(rho) and ref.rhos[-1] < 0.6 * rho  # ρ_t really moved
    assert_matches(model, opt, w, ref.opt)


def test_the_correction_changes_the_step():
    """Against the same transcription with α = 0, α = 0.4 lands elsewhere (the comparison can fail)."""
    x, y = toy_data()
    model = tiny_mlp()
    ref = ReferenceGSAM(
        Problem(model, x, y),
        MomentumSGD(LR, MOMENTUM, WD),
        rho_max=0.1,
        rho_min=0.05,
        alpha=0.0,
        lr_max=LR,
        lr_min=0.0,
        lr_of_step=lr_of_step,
    )
    opt = GSAM(model.parameters(), torch.optim.SGD, rho=0.1, alpha=0.4, **KW)
    w = run(opt, model, x, y, epochs=2, ref=ref, w=ref.problem.weights())
    with pytest.raises(AssertionError):
        assert_matches(model, opt, w, ref.opt)


def test_alpha_zero_and_constant_rho_is_sam_bit_for_bit():
    x, y = toy_data()
    models = [tiny_mlp(), tiny_mlp()]
    gsam = GSAM(models[0].parameters(), torch.optim.SGD, rho=0.1, alpha=0.0, rho_min=0.1, **KW)
    sam = flatsam.SAM(models[1].parameters(), torch.optim.SGD, rho=0.1, **KW)
    for opt, model in zip((gsam, sam), models, strict=True):
        run(opt, model, x, y, epochs=2)
    for a, b in zip(*(m.parameters() for m in models), strict=True):
        assert torch.equal(a, b)


def test_rho_follows_the_learning_rate():
    p = GSAMPerturbation(rho_min=0.02, lr_max=1.6, lr_min=0.016)
    assert p.rho_at(0.04, 1.6) == pytest.approx(0.04)
    assert p.rho_at(0.04, 0.016) == pytest.approx(0.02)
    assert p.rho_at(0.04, 0.808) == pytest.approx(0.03)
    assert p.rho_at(0.04, 0.0) == pytest.approx(proportion(0.0, 1.6, 0.016, 0.04, 0.02))  # not clamped
    assert GSAMPerturbation(lr_max=0.1).rho_at(0.08, 0.0) == pytest.approx(0.04)  # default ρ_min = ρ/2
    assert GSAMPerturbation(lr_max=0.1, lr_min=0.1).rho_at(0.08, 0.0) == 0.08  # constant


def test_lr_max_defaults_to_the_learning_rate_when_built():
    model = tiny_mlp()
    opt = GSAM(model.parameters(), torch.optim.SGD, lr=0.3)
    assert opt.perturbation.lr_max == 0.3
    standalone = GSAMPerturbation()
    group = {"params": [], "lr": 0.05, "initial_lr": 0.2, "rho": 0.1}
    standalone.epsilon(None, [group])  # type: ignore[arg-type]
    assert standalone.lr_max == 0.2  # a torch LR scheduler's initial_lr


def test_resume_is_bit_for_bit():
    x, y = toy_data()
    whole, first, second = tiny_mlp(), tiny_mlp(), tiny_mlp()
    kw = dict(rho=0.1, lr_max=None, **KW)
    opt = GSAM(whole.parameters(), torch.optim.SGD, **kw)
    run(opt, whole, x, y, epochs=3)
    part = GSAM(first.parameters(), torch.optim.SGD, **kw)
    run(part, first, x, y, epochs=2)  # 8 of the 12 steps
    second.load_state_dict(first.state_dict())
    resumed = GSAM(second.parameters(), torch.optim.SGD, **{**kw, "lr": 0.7})  # lr_max comes from the state
    resumed.load_state_dict(round_trip(part.state_dict()))
    assert resumed.perturbation.lr_max == LR
    run(resumed, second, x, y, epochs=3, start=8)
    for a, b in zip(whole.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(alpha=-0.1), "alpha"),
        (dict(rho_min=-1.0), "rho_min"),
        (dict(rho_min=0.2, rho=0.1), "rho_min must be <= rho"),
        (dict(lr_max=0.01, lr_min=0.1), "lr_max must be >= lr_min"),
        (dict(lr_min=0.5), "lr_min"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(adaptive=True, adaptive_form="paper"), "adaptive_form"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GSAM(tiny_mlp().parameters(), torch.optim.SGD, lr=0.1, **kwargs)


def test_registered_with_sources():
    info = flatsam.method_info("gsam")
    assert info.defaults["alpha"].value == 0.4 and "juntang-zhuang/GSAM" in info.defaults["alpha"].source
    opt = build_method("gsam", tiny_mlp().parameters(), torch.optim.SGD, lr=0.1, overrides={"alpha": 0.2})
    assert isinstance(opt, GSAM) and opt.perturbation.alpha == 0.2
    assert flatsam.GSAM is GSAM


def test_composes_by_name_as_the_preset_does():
    """``custom:perturbation=gsam`` (here with every row, so the same as the preset) steps bit for bit as
    ``GSAM``; the composed perturbation takes lr_max from the LR scheduler's initial_lr at its first step."""
    x, y = toy_data()
    models = [tiny_mlp(), tiny_mlp()]
    composed = build_method(
        "custom", models[0].parameters(), lr=LR, overrides={"perturbation": "gsam", "rho": 0.1}
    )
    preset = GSAM(models[1].parameters(), rho=0.1, lr=LR)
    for opt, model in zip((composed, preset), models, strict=True):
        run(opt, model, x, y, epochs=2)
    assert composed.perturbation.lr_max == preset.perturbation.lr_max == LR
    for a, b in zip(*(m.parameters() for m in models), strict=True):
        assert torch.equal(a, b)
