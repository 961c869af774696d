"""SAF and MESA: the official training loops written out, cost, λ = 0 is the base optimizer, resume,
errors, the harness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import flatsam
from flatsam.methods import build_method
from flatsam.methods.saf import MESA, SAF, OutputHistory, trajectory_kl
from helpers import KW, LR, MOMENTUM, WD, assert_matches, batches, closure_for, round_trip, same
from reference import MomentumSGD, tiny_mlp, toy_data
from reference_saf import ReferenceMESA, ReferenceSAF, kl_term

SAF_KW = dict(lam=0.5, tau=2.0, lag_epochs=2, start_epoch=2)  # the term from epoch 3, reading epoch 1
MESA_KW = dict(lam=0.5, tau=2.0, start_epoch=1, decay=0.5)


def closure(opt, model, x, y, idx):
    def losses(rows):
        inputs = x[idx[rows]]
        logits = model(inputs)
        per_sample = F.cross_entropy(logits, y[idx[rows]], reduction="none")
        return opt.add_trajectory_loss(per_sample, logits, idx[rows], inputs)

    return losses


def run(opt, model, x, y, epochs, first_epoch=0, ref=None, w=None, infos=None):
    for epoch, idxs in enumerate(batches(len(x), 6, epochs)):
        if epoch < first_epoch:
            continue
        opt.set_epoch(epoch)
        for idx in idxs:
            if ref is not None:
                w = ref.step(w, idx, epoch)
            info = opt.step(closure(opt, model, x, y, idx), index=idx)
            if infos is not None:
                infos.append(info)
    return w


def test_trajectory_kl_is_the_official_term():
    g = torch.Generator().manual_seed(0)
    z, ref = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g)
    torch.testing.assert_close(trajectory_kl(z, ref, 5.0).mean(), kl_term(z, ref.double(), 5.0))
    assert torch.all(trajectory_kl(z, z, 5.0).abs() < 1e-12)


def test_saf_matches_the_official_loop():
    x, y = toy_data()
    model = tiny_mlp()
    ref = ReferenceSAF(
        model, x, y, MomentumSGD(LR, MOMENTUM, WD), lam=0.5, tau=2.0, start=2, lag=2, classes=3
    )
    opt = SAF(model.parameters(), torch.optim.SGD, num_samples=len(x), **SAF_KW, **KW)
    w = run(opt, model, x, y, epochs=6, ref=ref, w=[p.detach().clone() for p in model.parameters()])
    assert_matches(model, opt, w, ref.opt)
    assert torch.equal(opt.trajectory.history, ref.table)
    assert opt.trajectory.history.shape == (24, 3, 3)
    assert opt.trajectory.memory_bytes(3) == 24 * 3 * 3 * 4


def test_mesa_matches_the_official_loop():
    x, y = toy_data()
    model = tiny_mlp()
    ref = ReferenceMESA(model, x, y, MomentumSGD(LR, MOMENTUM, WD), lam=0.5, tau=2.0, start=1, decay=0.5)
    opt = MESA(model.parameters(), torch.optim.SGD, model=model, **MESA_KW, **KW)
    w = run(opt, model, x, y, epochs=4, ref=ref, w=[p.detach().clone() for p in model.parameters()])
    assert_matches(model, opt, w, ref.opt)
    for mine, theirs in zip(opt.trajectory.module.parameters(), ref.ema, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["saf", "mesa"])
def test_the_term_changes_the_weights(method):
    """Against the plain-CE transcription (λ = 0), the term moves the weights (the comparisons can fail)."""
    x, y = toy_data()
    model = tiny_mlp()
    if method == "saf":
        ref = ReferenceSAF(
            model, x, y, MomentumSGD(LR, MOMENTUM, WD), lam=0.0, tau=2.0, start=2, lag=2, classes=3
        )
        opt = SAF(model.parameters(), torch.optim.SGD, num_samples=len(x), **SAF_KW, **KW)
    else:
        ref = ReferenceMESA(model, x, y, MomentumSGD(LR, MOMENTUM, WD), lam=0.0, tau=2.0, start=1, decay=0.5)
        opt = MESA(model.parameters(), torch.optim.SGD, model=model, **MESA_KW, **KW)
    w = run(opt, model, x, y, epochs=4, ref=ref, w=[p.detach().clone() for p in model.parameters()])
    with pytest.raises(AssertionError):
        assert_matches(model, opt, w, ref.opt)


@pytest.mark.parametrize("method", ["saf", "mesa"])
def test_lambda_zero_is_the_base_optimizer_bit_for_bit(method):
    x, y = toy_data()
    models = [tiny_mlp(), tiny_mlp()]
    if method == "saf":
        opt = SAF(models[0].parameters(), num_samples=len(x), **{**SAF_KW, "lam": 0.0}, **KW)
    else:
        opt = MESA(models[0].parameters(), model=models[0], **{**MESA_KW, "lam": 0.0}, **KW)
    sgd = flatsam.SGD(models[1].parameters(), **KW)
    run(opt, models[0], x, y, epochs=4)
    for epoch, idxs in enumerate(batches(len(x), 6, 4)):
        sgd.set_epoch(epoch)
        for idx in idxs:
            sgd.step(
                lambda rows, idx=idx: F.cross_entropy(models[1](x[idx[rows]]), y[idx[rows]], reduction="none")
            )
    for a, b in zip(*(m.parameters() for m in models), strict=True):
        assert torch.equal(a, b)


def test_cost_one_pass_and_mesas_ema_forward():
    x, y = toy_data()
    model = tiny_mlp()
    saf_infos, mesa_infos = [], []
    saf = SAF(model.parameters(), num_samples=len(x), **SAF_KW, **KW)
    run(saf, model, x, y, epochs=4, infos=saf_infos)
    assert all((i.forward_samples, i.backward_samples, i.cost) == (6, 6, 1.0) for i in saf_infos)
    model = tiny_mlp()
    mesa = MESA(model.parameters(), model=model, **MESA_KW, **KW)
    run(mesa, model, x, y, epochs=3, infos=mesa_infos)
    # epochs 0 and 1: no term, no EMA forward; epoch 2: the EMA forward counts as a forward
    assert [i.forward_samples for i in mesa_infos] == [6] * 8 + [12] * 4
    assert all(i.backward_samples == 6 and not i.ascent for i in mesa_infos)


@pytest.mark.parametrize("method", ["saf", "mesa"])
def test_resume_is_bit_for_bit(method):
    x, y = toy_data()

    def make(model):
        if method == "saf":
            return SAF(model.parameters(), num_samples=len(x), **SAF_KW, **KW)
        return MESA(model.parameters(), model=model, **MESA_KW, **KW)

    whole, first, second = tiny_mlp(), tiny_mlp(), tiny_mlp()
    run(make(whole), whole, x, y, epochs=5)
    part = make(first)
    run(part, first, x, y, epochs=3)  # stops inside the term's epochs
    second.load_state_dict(first.state_dict())
    resumed = make(second)
    state = round_trip(part.state_dict())
    assert "trajectory" in state
    resumed.load_state_dict(state)
    assert same(resumed.trajectory.state_dict(), part.trajectory.state_dict())
    run(resumed, second, x, y, epochs=5, first_epoch=3)
    for a, b in zip(whole.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bad_input_raises():
    params = tiny_mlp().parameters
    with pytest.raises(ValueError, match="start_epoch"):
        SAF(params(), num_samples=8, lag_epochs=4, start_epoch=1)
    with pytest.raises(ValueError, match="tau"):
        SAF(params(), num_samples=8, tau=0.0)
    with pytest.raises(ValueError, match="lam"):
        SAF(params(), num_samples=8, lam=-1.0)
    with pytest.raises(ValueError, match="end_epoch"):
        SAF(params(), num_samples=8, end_epoch=5)
    with pytest.raises(ValueError, match="model="):
        MESA(params())
    with pytest.raises(ValueError, match="decay"):
        MESA(params(), model=tiny_mlp(), decay=1.0)
    opt = SAF(params(), num_samples=8, lr=0.1)
    logits = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="indices"):
        opt.add_trajectory_loss(torch.zeros(4, dtype=torch.float64), logits)
    with pytest.raises(ValueError, match=r"\[rows, classes\]"):
        opt.add_trajectory_loss(torch.zeros(4), torch.zeros(4, 3, 2), torch.arange(4))


@pytest.mark.parametrize(("method", "advice"), [("saf", r"index\[rows\]\)"), ("mesa", r"inputs=x\[rows\]")])
def test_a_step_without_the_term_is_refused_before_the_update(method, advice):
    """A closure (or a two-step loop) that never calls add_trajectory_loss would train plain SGD under
    SAF's or MESA's name: the first step fails with the call to make, and the weights have not moved."""
    x, y = toy_data()
    model = tiny_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_method(method, model.parameters(), model=model, num_samples=len(x), lr=LR)
    idx = torch.arange(6)
    with pytest.raises(RuntimeError, match=advice):
        opt.step(lambda rows: F.cross_entropy(model(x[idx[rows]]), y[idx[rows]], reduction="none"), index=idx)
    F.cross_entropy(model(x[idx]), y[idx]).backward()
    with pytest.raises(RuntimeError, match="did not go through opt.add_trajectory_loss"):
        opt.step(lambda: None)  # davda54/sam's style: no ascent, so the closure is not called
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
    opt.zero_grad()
    opt.step(closure(opt, model, x, y, idx), index=idx)  # with the term, the same optimizer steps
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("method", ["saf", "mesa"])
def test_a_skipped_step_does_not_excuse_the_next_one(method):
    """A step skipped for a non-finite loss spends its term: the next step without it is still refused."""
    x, y = toy_data()
    model = tiny_mlp()
    opt = build_method(method, model.parameters(), model=model, num_samples=len(x), lr=LR)
    idx = torch.arange(6)
    with_term = closure(opt, model, x, y, idx)
    assert opt.step(lambda rows: with_term(rows) * float("nan"), index=idx).skipped
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="did not go through opt.add_trajectory_loss"):
        opt.step(lambda rows: F.cross_entropy(model(x[idx[rows]]), y[idx[rows]], reduction="none"), index=idx)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


def test_history_keeps_a_row_whose_logits_are_not_finite():
    table = OutputHistory(4, lag_epochs=1, start_epoch=0)
    table.losses(torch.zeros(2), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 1]))
    table.losses(torch.zeros(2), torch.tensor([[float("nan"), 0.0], [5.0, 6.0]]), torch.tensor([0, 1]))
    assert table.history[:2, 0].tolist() == [[1.0, 2.0], [5.0, 6.0]]


def test_registered_with_sources():
    for name, key in (("saf", "lag_epochs"), ("mesa", "decay")):
        info = flatsam.method_info(name)
        assert "AngusDujw/SAF" in info.defaults[key].source and not info.sam_rho
    model = tiny_mlp()
    opt = build_method("saf", model.parameters(), num_samples=24, lr=0.1, overrides={"lam": 0.1})
    assert isinstance(opt, SAF) and opt.trajectory.lam == 0.1
    mesa = build_method("mesa", model.parameters(), model=model, lr=0.1)
    assert isinstance(mesa, MESA) and mesa.trajectory.decay == 0.9998


@pytest.mark.parametrize(
    ("method", "options"),
    [("saf", {"lag_epochs": 1, "start_epoch": 0}), ("mesa", {"start_epoch": 0, "decay": 0.9})],
)
def test_harness_trains_and_resumes(tmp_path, method, options):
    """``flatsam train --method saf|mesa``: the loop adds the term (the run differs from SGD's), MESA's EMA
    forward shows in the cost, and an interrupted run resumes to the same weights."""
    from flatsam.train import Interrupted, Run
    from helpers import tiny_run_config

    def config(name, **over):
        return tiny_run_config(tmp_path / name, **{"method": method, "method_options": options, **over})

    straight = Run(config("straight"), progress=False)
    expected = straight.run()
    assert expected["cost"] == pytest.approx(1.0 if method == "saf" else 1 + 2 / 9, rel=0.02)
    with pytest.raises(Interrupted):
        Run(config("cut"), progress=False).run(interrupt_at=(2, 1))
    resumed = Run(config("cut"), resume=True, progress=False)
    resumed.run()
    plain = Run(config("sgd", method="sgd", method_options={}), progress=False)
    plain.run()
    mine, theirs, sgd = (r.setup.model.state_dict() for r in (straight, resumed, plain))
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not all(torch.equal(mine[k], sgd[k]) for k in mine)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("method", "options"),
    [("saf", {"lag_epochs": 1, "start_epoch": 0}), ("mesa", {"start_epoch": 0}), ("gsam", {})],
)
def test_cuda_steps_make_no_host_synchronisation(method, options):
    """On CUDA (sync_free by default), SAF's table, MESA's EMA forward and update, and GSAM's correction
    read nothing on the host once the optimizer state exists (``set_sync_debug_mode("error")``)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).cuda()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 5, generator=g).cuda(), torch.randint(0, 3, (24,), generator=g).cuda()
    order = [i.cuda() for i in torch.randperm(24, generator=g).split(6)]
    opt = build_method(method, model.parameters(), model=model, num_samples=24, overrides=options, lr=0.1)
    for epoch in range(3):
        opt.set_epoch(epoch)
        for step, idx in enumerate(order):
            losses = closure_for(model, x, y, idx) if method == "gsam" else closure(opt, model, x, y, idx)
            if epoch == 0 and step == 0:  # the step that creates the optimizer state may read the flag
                opt.step(losses, index=idx)
                continue
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                info = opt.step(losses, index=idx)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            assert not info.skipped
    assert torch.isfinite(torch.cat([p.detach().flatten() for p in model.parameters()])).all()
