"""LookSAM, AE-SAM, AE-LookSAM, ARSAM and SS-SAM: literal transcriptions, pass counts, resume, errors."""

from __future__ import annotations

import math

import pytest
import torch

import flatsam
from flatsam.component import StepContext
from flatsam.methods.scheduled import AESAM, ARSAM, SSSAM, AELookSAM, LookSAM
from flatsam.reuse import LookSAMReuse, PSFReuse
from flatsam.schedule import AEThreshold, ARSAMWindow, Bernoulli, EveryK
from helpers import (
    KW,
    LR,
    MOMENTUM,
    WD,
    Counting,
    ascent_outcome,
    assert_matches,
    batches,
    bn_model,
    closure_for,
    round_trip,
    same,
)
from helpers import closure_for as per_sample
from reference import MomentumSGD, Problem, ReferenceAUSAM, tiny_mlp, toy_data
from reference_scheduled import (
    ReferenceAESAM,
    ReferenceARSAM,
    ReferenceEveryKPSF,
    ReferenceLookSAM,
    ReferenceOnSampledRows,
    ReferenceSSSAM,
)

F64 = torch.float64


def run_pair(ref, opt, model, x, y, epochs, batch=6, with_epoch=False):
    """Step the transcription and flatsam on the same batches; return flatsam's StepInfos."""
    w, infos = ref.problem.weights(), []
    for epoch, idxs in enumerate(batches(len(x), batch, epochs)):
        opt.set_epoch(epoch)
        for idx in idxs:
            w = ref.step(w, epoch, idx) if with_epoch else ref.step(w, idx)
            infos.append(opt.step(closure_for(model, x, y, idx), index=idx))
    return w, infos


def setup():
    x, y = toy_data()
    model = tiny_mlp()
    return x, y, model, Problem(model, x, y)


# -- literal transcriptions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["global", "tensor"])
def test_looksam_matches_transcription(norm):
    x, y, model, problem = setup()
    ref = ReferenceLookSAM(
        problem, MomentumSGD(LR, MOMENTUM, WD), rho=0.1, k=5, alpha=0.7, per_tensor=norm == "tensor"
    )
    opt = LookSAM(model.parameters(), torch.optim.SGD, rho=0.1, norm=norm, **KW)
    w, infos = run_pair(ref, opt, model, x, y, epochs=4)  # 16 steps: SAM at 0, 5, 10, 15
    assert [i.ascent for i in infos] == ref.ascents == [t % 5 == 0 for t in range(16)]
    assert_matches(model, opt, w, ref.opt)


@pytest.mark.parametrize(("cls", "alpha"), [(AESAM, None), (AELookSAM, 0.7)])
@pytest.mark.parametrize(("init", "variance_mean"), [("zero", "current"), ("first", "previous")])
def test_ae_methods_match_transcription(cls, alpha, init, variance_mean):
    x, y, model, problem = setup()
    ref = ReferenceAESAM(
        problem,
        MomentumSGD(LR, MOMENTUM, WD),
        rho=0.1,
        total_steps=16,
        first=init == "first",
        previous_mean=variance_mean == "previous",
        alpha=alpha,
    )
    opt = cls(
        model.parameters(),
        torch.optim.SGD,
        rho=0.1,
        total_steps=16,
        init=init,
        variance_mean=variance_mean,
        **KW,
    )
    w, infos = run_pair(ref, opt, model, x, y, epochs=4)
    assert [i.ascent for i in infos] == ref.ascents
    assert 0 < sum(ref.ascents) < len(ref.ascents)  # both branches (and reuse after a SAM step) ran
    assert any(not a and any(ref.ascents[:t]) for t, a in enumerate(ref.ascents))
    assert_matches(model, opt, w, ref.opt)
    torch.testing.assert_close(opt.schedule.mean, torch.tensor(ref.mu, dtype=F64), rtol=1e-10, atol=0)
    torch.testing.assert_close(opt.schedule.var, torch.tensor(ref.var, dtype=F64), rtol=1e-8, atol=0)


def arsam_pair(window: int, epochs: int, reuse_steps: int = 6):
    """ARSAM and its vSAM transcription (blocks 2, max_p 0.8, gains 0.9, last 2 tensors, β 0.7, a
    one-epoch warm-up of 4 steps) stepped on the same 4 batches of 6 per epoch."""
    x, y, model, problem = setup()
    hp = dict(blocks=2, max_p=0.8, gains=(0.9, 0.9), beta=0.7, reuse_steps=reuse_steps, seed=21)
    ref = ReferenceARSAM(
        problem, MomentumSGD(LR, MOMENTUM, WD), rho=0.1, K=window, last_layer=2, warmup=1, **hp
    )
    opt = ARSAM(model.parameters(), rho=0.1, window=window, last_layers=2, warmup_epochs=1, **hp, **KW)
    w, infos = run_pair(ref, opt, model, x, y, epochs=epochs, with_epoch=True)
    return ref, opt, model, w, infos


def assert_arsam_matches(ref, opt, model, w, infos) -> None:
    assert [i.ascent for i in infos] == ref.ascents
    assert_matches(model, opt, w, ref.opt)
    s = opt.schedule
    assert (s.t, s.sr_now) == (ref.flag_batch_num, ref.sr_now)
    assert s.base_sr == pytest.approx(ref.base_sr, rel=1e-9)
    assert s.p == pytest.approx(ref.sampling_probability, rel=1e-9)
    k = ref.K
    for mine, theirs in ((s.norms, ref.psf_norms), (s.ratios, ref.ratios), (s.variances, ref.vars[-k:])):
        torch.testing.assert_close(mine, torch.tensor(theirs, dtype=F64), rtol=1e-9, atol=1e-15)
    assert torch.equal(s.generator.get_state(), ref.gen.get_state())
    # the quota really adapted (above 1 SAM step per window at times), and both branches ran after warm-up
    assert len(set(ref.base_srs)) > 1 and max(int(b) for b in ref.base_srs) > 1
    assert 0 < sum(ref.ascents[4:]) < len(ref.ascents) - 4


@pytest.mark.parametrize("reuse_steps", [6, 2])
def test_arsam_matches_vsam_transcription(reuse_steps):
    ref, *rest = arsam_pair(window=4, epochs=8, reuse_steps=reuse_steps)  # warm-up + 7 windows of 4
    assert_arsam_matches(ref, *rest)
    assert sum(ref.skipped) == 0  # a warm-up as long as the window: the histories were full


def test_arsam_with_a_warmup_shorter_than_the_window_takes_the_zero_guard():
    """4 warm-up steps, a window of 8: the first windows' histories still hold vSAM's zero padding (the
    default suite's case: 48 warm-up steps, window 50), where vSAM itself would divide by zero."""
    ref, *rest = arsam_pair(window=8, epochs=10)  # warm-up + 36 steps: 4 window updates
    assert_arsam_matches(ref, *rest)
    assert ref.skipped[0] >= 4 + 4 and sum(ref.skipped) > ref.skipped[0]  # zeros in r and v, two windows on


def test_arsam_zero_guard_mutant_fails_the_transcription(monkeypatch):
    """The guard's rule matters: averaging over every term (the left-out ones counted as 0) instead of
    over the kept ones changes the quota, and the comparison catches it."""

    def counts_every_term(history: torch.Tensor) -> torch.Tensor:
        prev, diff = history[:-1], history[1:] - history[:-1]
        terms = torch.where(prev != 0, diff / torch.where(prev != 0, prev, 1.0), 0.0)
        return terms.mean().clamp(-1.0, 1.0)

    monkeypatch.setattr(flatsam.schedule, "relative_trend_tensor", counts_every_term)
    with pytest.raises(AssertionError):
        assert_arsam_matches(*arsam_pair(window=8, epochs=10))


@pytest.mark.parametrize(
    ("schedule", "p_of_step"),
    [
        ("constant", lambda t: 0.5),
        ("linear", lambda t: min(t, 16) / 16),
        ("cosine", lambda t: (1 - math.cos(math.pi * min(t, 16) / 16)) / 2),
        ("piecewise", lambda t: 0.0 if t < 8 else 1.0),
    ],
)
def test_sssam_matches_transcription(schedule, p_of_step):
    x, y, model, problem = setup()
    ref = ReferenceSSSAM(problem, MomentumSGD(LR, MOMENTUM, WD), rho=0.1, p_of_step=p_of_step, seed=4)
    opt = SSSAM(
        model.parameters(), torch.optim.SGD, rho=0.1, p_schedule=schedule, total_steps=16, seed=4, **KW
    )
    w, infos = run_pair(ref, opt, model, x, y, epochs=4)
    assert [i.ascent for i in infos] == ref.ascents and 0 < sum(ref.ascents) < len(ref.ascents)
    assert_matches(model, opt, w, ref.opt)
    assert torch.equal(opt.schedule.generator.get_state(), ref.gen.get_state())


def test_bernoulli_probabilities():
    sched = {s: Bernoulli(schedule=s, p_start=0.2, p_end=0.8, total_steps=10) for s in Bernoulli.SCHEDULES}
    assert sched["constant"].probability(3) == 0.5
    for s in ("linear", "cosine", "piecewise"):
        assert sched[s].probability(0) == pytest.approx(0.2)
        assert sched[s].probability(10) == pytest.approx(0.8)
        assert sched[s].probability(99) == pytest.approx(0.8)  # held after total_steps
    assert sched["linear"].probability(5) == pytest.approx(0.5) == sched["cosine"].probability(5)
    assert sched["piecewise"].probability(4) == 0.2 and sched["piecewise"].probability(5) == 0.8


def test_ae_threshold_coefficient_per_step_and_per_epoch():
    per_step = AEThreshold(total_steps=4)
    assert [
        per_step.coefficient(StepContext(step=t, epoch=0, batch_size=1)) for t in range(5)
    ] == pytest.approx([0.5, 0.0, -0.5, -1.0, -1.0])
    per_epoch = AEThreshold(total_epochs=2)
    assert [
        per_epoch.coefficient(StepContext(step=100, epoch=e, batch_size=1)) for e in range(3)
    ] == pytest.approx([0.0, -1.0, -1.0])


@pytest.mark.parametrize("beta", [0.7, 0.6, 0.9])
def test_psf_reuse_mixes_exactly_steps_times(beta):
    ctx = StepContext(step=0, epoch=0, batch_size=1)
    reuse = PSFReuse(beta=beta, steps=6)
    p = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    reuse.record(ctx, ascent_outcome([torch.ones(3, dtype=F64)], [torch.full((3,), 3.0, dtype=F64)]))
    added = []
    for _ in range(9):
        p.grad = torch.zeros_like(p)
        reuse.apply(ctx, [p])
        added.append(float(p.grad[0]))
    assert added == pytest.approx([2 * beta**k for k in range(1, 7)] + [0.0] * 3)


def test_looksam_reuse_removes_the_parallel_part():
    ctx = StepContext(step=0, epoch=0, batch_size=1)
    g = [torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([1.0], dtype=F64)]
    gs = [torch.tensor([2.0, 3.0], dtype=F64), torch.tensor([2.0], dtype=F64)]
    reuse = LookSAMReuse(alpha=0.5)
    reuse.record(ctx, ascent_outcome(g, gs))
    torch.testing.assert_close(torch.cat(reuse.gv), torch.tensor([0.0, 3.0, 0.0], dtype=F64))
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in g]
    for p, t in zip(params, g, strict=True):
        p.grad = t.clone()
    reuse.apply(ctx, params)  # g + 0.5 · (√2 / 3) · g_v
    torch.testing.assert_close(
        torch.cat([p.grad for p in params]), torch.tensor([1.0, 0.5 * math.sqrt(2), 1.0], dtype=F64)
    )


@pytest.mark.parametrize("reuse", [LookSAMReuse, PSFReuse])
def test_reuse_before_any_ascent_is_the_base_optimizer(reuse):
    x, y = toy_data()
    a, b = tiny_mlp(), tiny_mlp()
    opt = flatsam.SharpnessAware(
        a.parameters(), torch.optim.SGD, schedule=Bernoulli(p=0.0), reuse=reuse(), **KW
    )
    sgd = torch.optim.SGD(b.parameters(), **KW)
    for idx in torch.arange(24).split(8) * 2:
        opt.step(per_sample(a, x, y, idx), index=idx)
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(b(x[idx]), y[idx]).backward()
        sgd.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


# -- pass counting ------------------------------------------------------------------------------------------


def make(name: str, model, seed: int = 5, **over):
    """Each preset with small windows so that every branch runs within a few epochs of 4 steps."""
    if name == "looksam":
        return LookSAM(model.parameters(), torch.optim.SGD, model=model, **over, **KW)
    if name in ("aesam", "aelooksam"):
        cls = AESAM if name == "aesam" else AELookSAM
        return cls(model.parameters(), torch.optim.SGD, model=model, total_steps=16, **over, **KW)
    if name == "arsam":
        # reuse_steps=2: the PSF runs out between SAM steps
        return ARSAM(
            model.parameters(),
            torch.optim.SGD,
            model=model,
            window=4,
            blocks=2,
            warmup_epochs=1,
            gains=(0.9, 0.9),
            reuse_steps=2,
            seed=seed,
            **over,
            **KW,
        )
    return SSSAM(model.parameters(), torch.optim.SGD, model=model, seed=seed, **over, **KW)


PRESETS = ["looksam", "aesam", "aelooksam", "arsam", "sssam"]


@pytest.mark.parametrize("name", PRESETS)
def test_pass_counting(name):
    x, y = toy_data()
    model = tiny_mlp()
    opt = make(name, model)
    ascents = []
    for epoch in range(4):
        opt.set_epoch(epoch)
        for idx in torch.arange(24).split(6):
            closure = Counting(model, x, y, idx)
            info = opt.step(closure, index=idx)
            passes = 2 if info.ascent else 1
            assert closure.calls == [(6, True)] * passes  # no hidden pass, no no-grad scoring forward
            assert (info.forward_passes, info.backward_passes) == (passes, passes)
            assert (info.forward_samples, info.backward_samples) == (6 * passes, 6 * passes)
            assert (info.ascent_rows, info.descent_rows, info.cost) == (6 if info.ascent else 0, 6, passes)
            ascents.append(info.ascent)
    assert any(ascents) and not all(ascents)
    if name == "looksam":
        assert ascents == [t % 5 == 0 for t in range(16)]  # one ascent in five steps


# -- resume -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_resume_is_bit_for_bit(name):
    x, y = toy_data(n=24)
    g = torch.Generator().manual_seed(9)
    # 3 steps per epoch, 6 epochs, cut after 3: the cut falls inside ARSAM's window of 4 and LookSAM's k = 5
    epochs = [(e, list(torch.randperm(24, generator=g).split(8))) for e in range(6)]

    def run(model, opt, part):
        ascents = []
        for epoch, idxs in part:
            opt.set_epoch(epoch)
            for idx in idxs:
                ascents.append(opt.step(per_sample(model, x, y, idx), index=idx).ascent)
        return ascents

    straight = bn_model()
    opt = make(name, straight)
    ascents = run(straight, opt, epochs)
    assert any(ascents[9:]) and not all(ascents[9:])  # the resumed half has both kinds of step

    first = bn_model()
    opt1 = make(name, first)
    run(first, opt1, epochs[:3])
    ckpt = round_trip({"model": first.state_dict(), "opt": opt1.state_dict()})

    second = bn_model()
    torch.manual_seed(1234)  # a fresh process would not share the first one's RNG
    opt2 = make(name, second, seed=77)
    second.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert run(second, opt2, epochs[3:]) == ascents[9:]

    for k, v in straight.state_dict().items():
        assert torch.equal(v, second.state_dict()[k]), k
    assert same(opt.state_dict(), opt2.state_dict())
    for p, q in zip(straight.parameters(), second.parameters(), strict=True):
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])


# -- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: EveryK(0), r"k must be an int >= 1, got 0"),
        (lambda: EveryK(2.5), r"k must be an int >= 1"),
        (lambda: Bernoulli(p=1.5), r"p must be in \[0.0, 1.0\], got 1.5"),
        (lambda: Bernoulli(p=-0.1), r"p must be in \[0.0, 1.0\]"),
        (lambda: Bernoulli(schedule="exp"), r"schedule must be one of 'constant', 'linear'"),
        (lambda: Bernoulli(schedule="linear"), r"total_steps .* is required for schedule='linear'"),
        (lambda: Bernoulli(schedule="linear", p_end=2.0, total_steps=5), r"p_end must be in \[0.0, 1.0\]"),
        (lambda: AEThreshold(delta=1.0, total_steps=5), r"delta must be in \(0.0, 1.0\), got 1.0"),
        (lambda: AEThreshold(delta=0.0, total_steps=5), r"delta must be in \(0.0, 1.0\)"),
        (lambda: AEThreshold(), r"exactly one of total_steps .* and total_epochs"),
        (lambda: AEThreshold(total_steps=5, total_epochs=2), r"exactly one of total_steps"),
        (lambda: AEThreshold(total_steps=0), r"total_steps must be an int >= 1, got 0"),
        (lambda: AEThreshold(total_steps=5, init="mean"), r"init must be one of 'zero', 'first'"),
        (lambda: AEThreshold(total_steps=5, variance_mean="x"), r"variance_mean must be one of"),
        (lambda: ARSAMWindow(window=0), r"window must be an int >= 1, got 0"),
        (lambda: ARSAMWindow(window=4, blocks=5), r"window // blocks must be >= 2"),
        (lambda: ARSAMWindow(blocks=0), r"blocks must be an int >= 1"),
        (lambda: ARSAMWindow(max_p=0.0), r"max_p must be in \(0.0, 1.0\]"),
        (lambda: ARSAMWindow(window=2, blocks=1, max_p=0.4), r"window \* max_p must be >= 1"),
        (lambda: ARSAMWindow(gains=(-0.1, 0.1)), r"gains\[0\] must be in \[0.0, inf\)"),
        (lambda: ARSAMWindow(gains=(0.1,)), r"gains must be a pair"),
        (lambda: ARSAMWindow(last_layers=0), r"last_layers must be an int >= 1"),
        (lambda: ARSAMWindow(warmup_epochs=-1), r"warmup_epochs must be an int >= 0"),
        (lambda: PSFReuse(beta=1.0), r"beta must be in \(0.0, 1.0\), got 1.0"),
        (lambda: PSFReuse(steps=0), r"steps must be an int >= 1"),
        (lambda: LookSAMReuse(alpha=-0.5), r"alpha must be in \[0.0, inf\)"),
        (lambda: LookSAMReuse(norm="layer"), r"norm must be one of 'global', 'tensor'"),
        (lambda: LookSAM(tiny_mlp().parameters(), k=0, lr=0.1), r"k must be an int >= 1"),
        (lambda: AESAM(tiny_mlp().parameters(), lr=0.1), r"exactly one of total_steps"),
        (lambda: AELookSAM(tiny_mlp().parameters(), total_steps=5, alpha=-1, lr=0.1), r"alpha must be in"),
        (lambda: ARSAM(tiny_mlp().parameters(), beta=1.5, lr=0.1), r"beta must be in \(0.0, 1.0\)"),
        (lambda: SSSAM(tiny_mlp().parameters(), p=2.0, lr=0.1), r"p must be in \[0.0, 1.0\]"),
    ],
)
def test_bad_hyperparameters_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_registry_needs_total_steps_for_ae_methods():
    for name in ("aesam", "aelooksam"):
        assert flatsam.method_info(name).needs == ("total_steps",)
        with pytest.raises(ValueError, match="needs"):
            flatsam.build_method(name, tiny_mlp().parameters(), lr=0.1)
        opt = flatsam.build_method(name, tiny_mlp().parameters(), total_steps=10, lr=0.1)
        assert opt.schedule.total_steps == 10


# -- composition --------------------------------------------------------------------------------------------


#: schedule + reuse composed with ADLP sampling, and the transcription of each composed rule
COMPOSED = {
    "ae+looksam": (
        lambda: AEThreshold(total_steps=12, init="first"),
        LookSAMReuse,
        lambda p, o: ReferenceAESAM(p, o, rho=0.05, total_steps=12, first=True, alpha=0.7),
        False,
    ),
    # 3 warm-up steps and a window of 4: the first window update takes the zero guard
    "arsam+psf": (
        lambda: ARSAMWindow(window=4, blocks=2, warmup_epochs=1, seed=3),
        PSFReuse,
        lambda p, o: ReferenceARSAM(
            p, o, 0.05, 4, 2, 0.8, (0.13, 0.13), last_layer=10, beta=0.7, reuse_steps=6, warmup=1, seed=3
        ),
        True,
    ),
    "every3+psf": (
        lambda: EveryK(3),
        PSFReuse,
        lambda p, o: ReferenceEveryKPSF(p, o, rho=0.05, k=3, beta=0.7, reuse_steps=6),
        True,
    ),
}


@pytest.mark.parametrize("name", COMPOSED)
def test_composition_with_adlp_sampling_matches_the_composed_transcription(name):
    schedule, reuse, inner, with_epoch = COMPOSED[name]
    x, y, model, problem = setup()
    ref_opt = MomentumSGD(LR, MOMENTUM, WD)
    ausam = ReferenceAUSAM(problem, ref_opt, 24, 0.05, 0.5, 0.1, 0.5, ramp=30, warmup=1, seed=2)
    ref = ReferenceOnSampledRows(inner(problem, ref_opt), ausam, with_epoch)
    sampler = flatsam.ADLPSampler(24, keep=0.5, warmup_epochs=1, seed=2)
    opt = flatsam.SharpnessAware(
        model.parameters(), torch.optim.SGD, schedule=schedule(), selection=sampler, reuse=reuse(), **KW
    )
    w, infos = run_pair(ref, opt, model, x, y, epochs=4, batch=8, with_epoch=True)
    assert [i.ascent for i in infos] == ref.ascents
    assert_matches(model, opt, w, ref.opt)
    torch.testing.assert_close(sampler.dlp_sum, ausam.S, rtol=1e-6, atol=1e-7)
    assert torch.equal(sampler.dlp_count, ausam.C)
    for step, info in enumerate(infos):
        rows = 8 if step < 3 else 4  # AUSAM's warm-up uses every row, then half of them
        assert info.descent_rows == rows and info.ascent_rows == (rows if info.ascent else 0)
    # both kinds of step after the warm-up, and the sampler learned from the ascents there
    assert {True, False} <= set(ref.ascents[3:]) and (sampler.dlp_count > 1).any()


# -- distributed --------------------------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, init_file: str, name: str, out: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        torch.set_num_threads(1)
        x, y = toy_data(n=48, seed=rank + 1)  # each rank its own data
        model = torch.nn.parallel.DistributedDataParallel(tiny_mlp())
        opt = make(name, model, seed=5)
        ascents = []
        for epoch in range(4):
            opt.set_epoch(epoch)
            for idx in torch.arange(24).split(6):
                ascents.append(opt.step(per_sample(model, x, y, idx), index=idx).ascent)
        torch.save({"ascents": ascents, "weights": [p.detach() for p in model.parameters()]}, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_arsam_ranks_agree_under_ddp(tmp_path):
    """Two gloo processes with different data: same ascent steps and same weights on both ranks (ARSAM's
    window statistics and the reused PSF come from the all-reduced clean gradient)."""
    out = str(tmp_path / "result")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), "arsam", out), nprocs=2)
    a, b = (torch.load(f"{out}.{r}", weights_only=False) for r in range(2))
    assert a["ascents"] == b["ascents"] and any(a["ascents"]) and not all(a["ascents"])
    for p, q in zip(a["weights"], b["weights"], strict=True):
        assert torch.equal(p, q)
