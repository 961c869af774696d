"""The engine's step without host reads (``sync_free=True``, the default off the CPU): SGD, SAM, ASAM,
AUSAM (during and after its warm-up), K-SAM, LookSAM, ARSAM and an every-k schedule with ARSAM's PSF
reuse decide a non-finite skip on the device, and a skipped step still leaves weights, momentum, step
counters, AUSAM's history, LookSAM's g_v and ARSAM's PSF, weights and histories exactly as they were;
the flag is read once, when asked. On the CPU (the default there) the flag is read after each pass and
SAM keeps one copy of the weights, no copy of the optimizer state; a fused base needs none either way."""

from __future__ import annotations

import copy
import warnings
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import flatsam
import flatsam.schedule
from flatsam.component import StepContext
from flatsam.reuse import LookSAMReuse, PSFReuse
from flatsam.schedule import ARSAMWindow
from flatsam.skipping import Verdict, masked_step
from helpers import KW, HostReads, ascent_outcome, round_trip, same
from helpers import closure_for as per_sample
from reference import bn_mlp, toy_data

# these tests force sync_free with an unfused base on purpose; the hint it earns is tested on its own below
pytestmark = pytest.mark.filterwarnings("ignore:the base optimizer .* is not fused:UserWarning")

ON_DEVICE = ("sgd", "sam", "asam", "ausam", "ksam")
#: Methods with a reuse rule, small enough that every branch runs within a few epochs of 3 steps: LookSAM
#: ascends at steps 0, 3, 6, …; ARSAM's warm-up is epoch 0, its windows of 4 start with epoch 1 (the first
#: without a SAM step), its PSF lasts 2 steps; the composition ascends every 3rd step, its PSF lasts 1 step.
SCHEDULED = {
    "looksam": {"k": 3},
    "arsam": {"window": 4, "blocks": 2, "warmup_epochs": 1, "seed": 5, "reuse_steps": 2},
    "every_k+psf": {"schedule": "every_k", "reuse": "psf", "schedule.k": 3, "reuse.steps": 1},
}


def build(name: str, model: torch.nn.Module, **over) -> flatsam.SharpnessAware:
    """The method ``name`` with its flags kept on the device (the default only off the CPU)."""
    over = {"sync_free": True, **over}
    if name == "ausam":
        over = {"warmup_epochs": 1, "seed": 5, "keep": 0.5, **over}
    if name in SCHEDULED:
        over = {**SCHEDULED[name], **over}
        name = "custom" if name == "every_k+psf" else name
    return flatsam.build_method(name, model.parameters(), model=model, num_samples=24, overrides=over, **KW)


def warmed_up(name: str, epoch: int = 1, **over):
    """A model (with BatchNorm) and its optimizer after one epoch of 3 steps, now in ``epoch``."""
    x, y = toy_data()
    model = bn_mlp()
    opt = build(name, model, **over)
    for idx in torch.arange(24).split(8):
        opt.step(per_sample(model, x, y, idx), index=idx)
    opt.set_epoch(epoch)
    return model, opt, x, y


def snapshot(model, opt) -> dict:
    return copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})


def comparable(model, opt) -> dict:
    """``snapshot`` without what a skipped step does change: the step counter (it counts skipped steps),
    the BatchNorm statistics (the clean forward ran; host and device skips agree on them, see below) and
    AUSAM's generator (its draw comes before the clean pass) and warm-up row count (a warning's timer)."""
    state = snapshot(model, opt)
    del state["opt"]["engine"]
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        del state["model"][key]
    if "generator" in state["opt"]["selection"]:
        del state["opt"]["selection"]["generator"], state["opt"]["selection"]["warmup_seen"]
    if isinstance(opt.schedule, ARSAMWindow):  # its window counts every step, skipped or not; draws before
        for key in ("t", "sr_now", "generator"):
            del state["opt"]["schedule"][key]
    return state


@pytest.mark.parametrize("epoch", [0, 1], ids=["warm-up", "after-warm-up"])
@pytest.mark.parametrize("name", ON_DEVICE)
def test_steps_read_nothing_on_the_host_until_skipped_is_asked(name, epoch):
    model, opt, x, y = warmed_up(name, epoch)
    with HostReads() as reads:
        infos = [opt.step(per_sample(model, x, y, idx), index=idx) for idx in torch.arange(24).split(8)]
    assert reads.calls == []
    if name == "ausam" and epoch == 1:
        assert [i.ran_ascent_rows for i in infos] == [4, 4, 4]  # the draws ran, on the device
    with HostReads() as reads:
        assert not infos[0].skipped and infos[0].reason is None
        assert infos[0].ascent == (name != "sgd")
    assert reads.calls == ["tolist"]  # one read of the step's flags, then kept


def test_only_the_step_that_creates_the_optimizer_state_reads_the_flag():
    x, y = toy_data()
    model = bn_mlp()
    opt = build("sam", model)
    idx = torch.arange(8)
    with HostReads() as reads:
        opt.step(per_sample(model, x, y, idx), index=idx)
    # the first step creates the momentum buffers, which masking cannot undo: the flag is read there
    assert reads.calls == ["__bool__"]
    with HostReads() as reads:
        opt.step(per_sample(model, x, y, idx), index=idx)
    assert reads.calls == []


def poisoned(model, x, y, idx, at: int, value: float):
    """Per-sample losses times ``value`` in the closure's ``at``-th call (0: the clean pass)."""
    calls = []

    def closure(rows):
        calls.append(1)
        losses = per_sample(model, x, y, idx)(rows)
        return losses * value if len(calls) - 1 == at else losses

    return closure


@pytest.mark.parametrize("epoch", [0, 1], ids=["warm-up", "after-warm-up"])
@pytest.mark.parametrize(
    ("name", "at", "reason", "over"),
    [
        ("sgd", 0, "clean pass", {}),
        ("sam", 0, "clean pass", {}),
        ("sam", 1, "descent pass", {}),
        ("asam", 1, "descent pass", {}),
        ("ausam", 0, "clean pass", {}),
        ("ausam", 1, "descent pass", {}),
        ("ausam", 1, "descent pass", {"average": "ema"}),
        ("ksam", 2, "descent pass", {}),  # after its scoring forward and the clean pass
    ],
)
def test_a_step_skipped_on_the_device_changes_nothing(name, at, reason, over, epoch):
    model, opt, x, y = warmed_up(name, epoch, **over)
    before = comparable(model, opt)
    idx = torch.arange(8, 16)
    for value in (float("nan"), float("inf")):
        with HostReads() as reads:
            info = opt.step(poisoned(model, x, y, idx, at, value), index=idx)
        assert reads.calls == []  # decided and undone on the device
        assert info.skipped and reason in info.reason
        assert not info.ascent and info.ascent_rows == info.descent_rows == 0
        assert same(comparable(model, opt), before)


def test_a_skipped_first_step_leaves_no_optimizer_state():
    x, y = toy_data()
    model = bn_mlp()
    opt = build("sam", model)
    weights = copy.deepcopy([p.detach() for p in model.parameters()])
    idx = torch.arange(8)
    info = opt.step(poisoned(model, x, y, idx, 1, float("nan")), index=idx)
    assert info.skipped and len(opt.base.state) == 0
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))


def test_skipping_on_the_device_matches_skipping_on_the_host():
    """The same run with the flag read after every pass (check on the host) and deferred to the device:
    equal weights, momentum and history, bit for bit, through skipped steps of both kinds."""
    runs = []
    for defer in (True, False):
        x, y = toy_data()
        model = bn_mlp()
        opt = build("ausam", model, sync_free=defer)
        for epoch in range(3):
            opt.set_epoch(epoch)
            for step, idx in enumerate(torch.arange(24).split(8)):
                at = {(1, 1): 0, (2, 0): 1}.get((epoch, step))
                plain = at is None
                closure = per_sample(model, x, y, idx) if plain else poisoned(model, x, y, idx, at, 1e400)
                assert opt.step(closure, index=idx).skipped == (at is not None)
        runs.append(snapshot(model, opt))
    assert same(runs[0], runs[1])


def test_a_torch_without_foreach_clone_gives_the_same_steps(monkeypatch):
    """torch 2.11 (a CUDA image's) has no ``torch._foreach_clone``: the engine's copies fall back to one
    ``clone`` each, with the same weights and state bit for bit, skipped steps included."""
    runs = []
    for lacks in (False, True):
        if lacks:
            monkeypatch.delattr(torch, "_foreach_clone")
        x, y = toy_data()
        model = bn_mlp()
        opt = build("ausam", model)
        for epoch in range(2):
            opt.set_epoch(epoch)
            for step, idx in enumerate(torch.arange(24).split(8)):
                skip = (epoch, step) == (1, 1)
                closure = poisoned(model, x, y, idx, 0, 1e400) if skip else per_sample(model, x, y, idx)
                assert opt.step(closure, index=idx).skipped == skip
        runs.append(snapshot(model, opt))
    assert not hasattr(torch, "_foreach_clone")
    assert same(runs[0], runs[1])


def cloned_sizes(monkeypatch) -> list[int]:
    """Element counts of every ``torch._foreach_clone`` call from now on (the engine's copies)."""
    sizes: list[int] = []
    clone = torch._foreach_clone
    counted = lambda ts: sizes.append(sum(t.numel() for t in ts)) or clone(ts)  # noqa: E731
    monkeypatch.setattr(torch, "_foreach_clone", counted)
    return sizes


def test_on_the_cpu_flags_are_read_after_each_pass_and_sam_copies_the_weights_once(monkeypatch):
    """The default on the CPU: the check of each pass is read at once (two reads of a SAM step), and the
    only copy is of the weights before the perturbation, none of the optimizer state."""
    x, y = toy_data()
    model = bn_mlp()
    opt = flatsam.build_method("sam", model.parameters(), model=model, **KW)
    idx = torch.arange(8)
    opt.step(per_sample(model, x, y, idx), index=idx)
    sizes = cloned_sizes(monkeypatch)
    with HostReads() as reads:
        info = opt.step(per_sample(model, x, y, idx), index=idx)
    assert reads.calls == ["__bool__", "__bool__"] and not info.skipped
    assert sizes == [sum(p.numel() for p in model.parameters())]
    before = comparable(model, opt)
    info = opt.step(poisoned(model, x, y, idx, 1, float("nan")), index=idx)
    assert info.skipped and "descent pass" in info.reason
    assert same(comparable(model, opt), before)


@pytest.mark.parametrize("name", ["sam", "ausam", "looksam"])
def test_the_clean_gradient_is_freed_before_the_weights_are_copied(monkeypatch, name):
    """Gradient, ε and saved weights are never alive together: when the weights are copied, no parameter
    holds a gradient (LookSAM keeps its own copy of the clean gradient before)."""
    x, y = toy_data()
    model = bn_mlp()
    opt = flatsam.build_method(name, model.parameters(), model=model, num_samples=len(x), **KW)
    opt.set_epoch(1)
    graded: list[int] = []
    clone = torch._foreach_clone
    counted = lambda ts: graded.append(sum(p.grad is not None for p in model.parameters())) or clone(ts)  # noqa: E731
    monkeypatch.setattr(torch, "_foreach_clone", counted)
    idx = torch.arange(8)
    assert opt.step(per_sample(model, x, y, idx), index=idx).ascent
    assert graded == [0]


def test_first_step_keeps_the_clean_gradient_unless_told_to_zero_it():
    x, y = toy_data()
    for zero_grad in (False, True):
        model = bn_mlp()
        opt = flatsam.build_method("sam", model.parameters(), model=model, **KW)
        F.cross_entropy(model(x), y).backward()
        clean = [p.grad.clone() for p in model.parameters()]
        assert opt.first_step(zero_grad=zero_grad)
        kept = [p.grad for p in model.parameters()]
        if zero_grad:
            assert all(g is None for g in kept)
        else:
            assert all(torch.equal(g, c) for g, c in zip(kept, clean, strict=True))
        opt.restore()


def test_a_fused_base_skips_on_the_flag_without_a_copy_of_its_state(monkeypatch):
    """``fused=True`` SGD takes the flag as GradScaler hands it: no host read, one copy (SAM's weights),
    and the run equals the one checked on the host, bit for bit, through skipped steps."""
    params = sum(p.numel() for p in bn_mlp().parameters())
    runs = []
    for defer in (True, False):
        x, y = toy_data()
        model = bn_mlp()
        over = {"sync_free": defer}
        opt = flatsam.build_method("sam", model.parameters(), model=model, overrides=over, fused=True, **KW)
        for epoch in range(2):
            for step, idx in enumerate(torch.arange(24).split(8)):
                at = {(1, 0): 0, (1, 2): 1}.get((epoch, step))
                closure = per_sample(model, x, y, idx)
                if at is not None:
                    closure = poisoned(model, x, y, idx, at, 1e400)
                if defer and epoch == 1:
                    sizes = cloned_sizes(monkeypatch)
                    with HostReads() as reads:
                        info = opt.step(closure, index=idx)
                    assert reads.calls == [] and sizes == [params]  # deferred: every pass runs
                    monkeypatch.undo()
                else:
                    info = opt.step(closure, index=idx)
                assert info.skipped == (at is not None)
        runs.append(snapshot(model, opt))
    assert same(runs[0], runs[1])


def test_masked_step_undoes_adamw_exactly():
    """A base optimizer with more state (AdamW: two moments and a step count): a skipped step leaves all
    of it, and the weights, bit for bit; a kept step is AdamW's own."""
    x, y = toy_data()
    model, twin = bn_mlp(), bn_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    ref = torch.optim.AdamW(twin.parameters(), lr=0.01)
    for idx in torch.arange(24).split(8):
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            F.cross_entropy(m(x[idx]), y[idx]).backward()
        masked_step(opt, torch.tensor(False))
        ref.step()
        before = copy.deepcopy((model.state_dict(), opt.state_dict()))
        masked_step(opt, torch.tensor(True))
        assert same(copy.deepcopy((model.state_dict(), opt.state_dict())), before)
    assert same(model.state_dict(), twin.state_dict()) and same(opt.state_dict(), ref.state_dict())


def test_verdict_reports_the_first_failed_pass_and_reads_once():
    verdict = Verdict(defer=True)
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    assert not verdict.check(one, one, "clean") and not verdict.check(one, nan, "descent")
    assert verdict.found_inf is not None and verdict.found_inf.item()
    with HostReads() as reads:
        assert verdict.reason == "descent" and verdict.skipped and verdict.reason == "descent"
    assert reads.calls == ["tolist"]
    with pytest.raises(RuntimeError, match="already joined"):
        verdict.check(one, one, "late")
    immediate = Verdict()
    assert immediate.check(nan, one, "clean") and immediate.reason == "clean" and immediate.found_inf is None


# -- LookSAM, ARSAM, an every-k schedule with the PSF reuse --------------------------------------------------


def steps(model, opt, x, y, epochs) -> list:
    """Kept steps over ``epochs`` (3 batches of 8 each), epoch by epoch."""
    infos = []
    for epoch in epochs:
        opt.set_epoch(epoch)
        infos += [opt.step(per_sample(model, x, y, idx), index=idx) for idx in torch.arange(24).split(8)]
    return infos


@pytest.mark.parametrize("name", SCHEDULED)
def test_scheduled_steps_read_nothing_on_the_host(name, monkeypatch):
    """SAM steps, reuse steps and spent-PSF steps read nothing; ARSAM reads its two trends once per window
    (``tolist``) and its U[0,1) draws from a CPU generator (``__float__``, before the clean pass)."""
    model, opt, x, y = warmed_up(name, epoch=1)
    draws, adapts = [], []
    uniform, adapt = flatsam.schedule._uniform, ARSAMWindow._adapt
    monkeypatch.setattr(flatsam.schedule, "_uniform", lambda g: draws.append(1) or uniform(g))
    monkeypatch.setattr(ARSAMWindow, "_adapt", lambda self: adapts.append(1) or adapt(self))
    with HostReads() as reads:
        infos = steps(model, opt, x, y, range(1, 4))
    ascents = [i.ran_ascent for i in infos]
    assert any(ascents) and not all(ascents)
    if name == "arsam":
        assert len(adapts) == 2 and draws  # windows start at t = 4 and 8; draws while the quota is open
    else:
        assert ascents == [t % 3 == 0 for t in range(3, 12)] and not draws and not adapts
    assert Counter(reads.calls) == Counter({"__float__": len(draws), "tolist": len(adapts)})
    with HostReads() as reads:
        assert not any(i.skipped for i in infos)
    assert reads.calls == ["tolist"] * len(infos)


def _skip_cases():
    # (name, epoch after the warm-up epoch, kept steps before the skipped one, poisoned pass, kind of step)
    for name in ("looksam", "every_k+psf"):
        yield name, 1, 0, 0, "sam"
        yield name, 1, 0, 1, "sam"
        yield name, 1, 1, 0, "reuse"
    yield "arsam", 0, 0, 0, "sam"  # a warm-up step: a SAM step that records the histories and the PSF
    yield "arsam", 0, 0, 1, "sam"
    yield "arsam", 1, 0, 0, "reuse"  # the first window after the warm-up has no SAM step: the PSF is mixed


@pytest.mark.parametrize(("name", "epoch", "kept", "at", "kind"), list(_skip_cases()))
def test_a_scheduled_step_skipped_on_the_device_changes_nothing(name, epoch, kept, at, kind):
    model, opt, x, y = warmed_up(name, epoch)
    idx = torch.arange(8)
    for _ in range(kept):
        opt.step(per_sample(model, x, y, idx), index=idx)
    before = comparable(model, opt)
    reuse = opt.reuse
    if kind == "reuse":  # the PSF (or g_v) is mixed in on this step
        assert reuse.seen.item() if name == "looksam" else reuse.reused.item() < reuse.steps
    with HostReads() as reads:
        info = opt.step(poisoned(model, x, y, idx, at, float("nan") if at == 0 else float("inf")), index=idx)
    assert reads.calls == []
    assert info.ran_ascent == (kind == "sam")
    assert info.skipped and ("clean pass" if at == 0 else "descent pass") in info.reason
    assert same(comparable(model, opt), before)  # weights, momentum, g_v / PSF, w, count, histories


@pytest.mark.parametrize("name", SCHEDULED)
def test_scheduled_skipping_on_the_device_matches_skipping_on_the_host(name):
    """Host and device skipping give the same run, bit for bit, through skipped SAM steps (clean and
    descent pass) and skipped reuse steps; ARSAM's skips fall in its warm-up and windows."""
    poison = {(1, 0): 0, (1, 1): 0, (2, 0): 1, (3, 2): 0}
    if name == "arsam":
        poison = {(0, 1): 1, (1, 1): 0, (2, 2): 0}
    runs, skips = [], []
    for defer in (True, False):
        x, y = toy_data()
        model = bn_mlp()
        opt = build(name, model, sync_free=defer)
        skipped = []
        for epoch in range(5):
            opt.set_epoch(epoch)
            for step, idx in enumerate(torch.arange(24).split(8)):
                at = poison.get((epoch, step))
                closure = poisoned(model, x, y, idx, at, 1e400) if at is not None else None
                closure = closure or per_sample(model, x, y, idx)
                skipped.append(opt.step(closure, index=idx).skipped)
        runs.append(snapshot(model, opt))
        skips.append(skipped)
    assert skips[0] == skips[1] and sum(skips[0]) == len(poison)
    assert same(runs[0], runs[1])


@pytest.mark.parametrize("name", ["looksam", "every_k+psf"])
def test_after_a_skipped_first_ascent_the_plain_gradient_is_used(name):
    """Until the first kept ascent there is no g_v / PSF: the reuse steps after a skipped first SAM step are
    the base optimizer's own steps, bit for bit (the stored zeros add exactly nothing)."""
    x, y = toy_data()
    model, twin = bn_mlp(), bn_mlp()
    opt = build(name, model)
    sgd = torch.optim.SGD(twin.parameters(), **KW)
    first = torch.arange(8)
    assert opt.step(poisoned(model, x, y, first, 1, float("nan")), index=first).skipped
    for idx in torch.arange(8, 24).split(8):  # steps 1 and 2: reuse steps
        assert not opt.step(per_sample(model, x, y, idx), index=idx).ran_ascent
        sgd.zero_grad()
        F.cross_entropy(twin(x[idx]), y[idx]).backward()
        sgd.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True))


def host_era(state: dict) -> dict:
    """A reuse state as saved before the device counters: the PSF weight and count as Python numbers,
    LookSAM without ``seen``."""
    old = dict(state)
    if old["kind"] == "LookSAMReuse":
        del old["seen"]
    else:
        old["weight"], old["reused"] = float(old["weight"]), int(old["reused"])
    return old


@pytest.mark.parametrize("name", ["looksam", "every_k+psf"])
@pytest.mark.parametrize("cut", [0, 2], ids=["fresh", "mid-run"])
def test_checkpoints_of_the_host_read_era_load(name, cut):
    """Such a state (fresh: no g_v / PSF, with the old fresh count 0; or after two epochs, cut between
    reuse steps: ascents at steps 0, 4, 8) loads, and the run goes on exactly as from the current format."""
    x, y = toy_data()
    model = bn_mlp()
    over = {"k": 4} if name == "looksam" else {"schedule.k": 4, "reuse.steps": 3}
    opt = build(name, model, **over)
    steps(model, opt, x, y, range(cut))
    current = round_trip({"model": model.state_dict(), "opt": opt.state_dict()})
    old = host_era(current["opt"]["reuse"])
    if cut == 0:
        assert old.get("gv", old.get("psf", 0)) is None
        old.update({"reused": 0} if "reused" in old else {})
    results = []
    for reuse_state in (current["opt"]["reuse"], old):
        ckpt = copy.deepcopy(current)  # the base optimizer loads its momentum buffers without a copy
        resumed_model = bn_mlp()
        resumed = build(name, resumed_model, **over)
        resumed_model.load_state_dict(ckpt["model"])
        resumed.load_state_dict({**ckpt["opt"], "reuse": reuse_state})
        steps(resumed_model, resumed, x, y, range(cut, cut + 2))
        results.append(snapshot(resumed_model, resumed))
    assert same(results[0], results[1])


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float64 tensor (``torch.equal`` takes −0 for +0)."""
    return t.view(torch.int64)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LookSAMReuse(),
        lambda: LookSAMReuse(norm="tensor"),
        lambda: PSFReuse(),
        lambda: PSFReuse(steps=2),
    ],
    ids=["looksam-global", "looksam-tensor", "psf", "psf-host-era-fresh"],
)
def test_a_skipped_first_ascent_leaves_the_reuse_adding_exactly_nothing(make):
    """Unit level: a first ascent recorded under ``found_inf`` stores zeros (LookSAM: ``seen`` false; PSF:
    the count spent, also from a host-era fresh state whose count was 0), and a reuse step then leaves the
    gradient's bits as they are, −0 included; the next kept ascent stores its g_v / PSF as always."""
    reuse = make()
    if isinstance(reuse, PSFReuse) and reuse.steps == 2:
        reuse.load_state_dict(host_era({**reuse.state_dict(), "reused": 0}))
    ctx = StepContext(step=0, epoch=0, batch_size=1)
    nan = torch.full((3,), float("nan"), dtype=torch.float64)


    with HostReads() as reads:
        reuse.record(ctx, ascent_outcome([torch.ones(3, dtype=torch.float64)], [nan], torch.tensor(True)))
    assert reads.calls == []
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    grad = torch.tensor([-0.0, 1.0, -2.5], dtype=torch.float64)
    p.grad = grad.clone()
    reuse.apply(ctx, [p])
    assert torch.equal(bits(p.grad), bits(grad))
    g, gs = torch.tensor([1.0, 0.0, 0.0]).double(), torch.tensor([2.0, 3.0, 0.0]).double()
    reuse.record(ctx, ascent_outcome([g], [gs], torch.tensor(False)))
    looksam = isinstance(reuse, LookSAMReuse)
    stored = reuse.gv if looksam else reuse.psf
    assert torch.equal(stored[0], torch.tensor([0.0, 3.0, 0.0] if looksam else [1.0, 3.0, 0.0]).double())
    p.grad = grad.clone()
    reuse.apply(ctx, [p])
    assert not torch.equal(p.grad, grad)  # mixed in now


class Plain(torch.optim.Optimizer):
    """A base optimizer with no fused kernel to offer: ``w ← w − lr g``."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])


@pytest.mark.parametrize(
    ("base", "kwargs", "hinted"),
    [
        (torch.optim.SGD, dict(KW), True),
        (torch.optim.SGD, {**KW, "fused": True}, False),
        (torch.optim.AdamW, {"lr": 0.01}, True),
        (Plain, {"lr": 0.1}, False),
    ],
    ids=["sgd", "sgd-fused", "adamw", "no-fused-kernel"],
)
def test_an_unfused_base_that_could_be_fused_is_named_once(base, kwargs, hinted):
    """A sync-free step masks an unfused base by a copy and a ``where`` per tensor: flatsam says so once,
    at the caller's line, with the way out (``fused=True`` or ``sync_free=False``); never for a fused base
    or one that has no fused kernel."""
    x, y = toy_data()
    model = bn_mlp()
    over = {"sync_free": True}
    opt = flatsam.build_method("sam", model.parameters(), base, model=model, overrides=over, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for idx in torch.arange(24).split(8):
            opt.step(per_sample(model, x, y, idx), index=idx)
    hints = [w for w in caught if "is not fused" in str(w.message)]
    assert len(hints) == (1 if hinted else 0)
    if hinted:
        assert f"Pass fused=True to {base.__name__}" in str(hints[0].message)
        assert "sync_free=False" in str(hints[0].message)
        assert hints[0].filename == __file__
