"""The engine's step without host reads: SGD, SAM, ASAM and AUSAM (during and after its warm-up) decide a
non-finite skip on the device, and a skipped step still leaves weights, momentum, step counters and
AUSAM's history exactly as they were; the flag is read once, when asked."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import flatsam
from flatsam.skipping import Verdict, masked_step
from helpers import KW, HostReads, same
from helpers import closure_for as per_sample
from reference import bn_mlp, toy_data

ON_DEVICE = ("sgd", "sam", "asam", "ausam")


def build(name: str, model: torch.nn.Module, **over) -> flatsam.SharpnessAware:
    if name == "ausam":
        over = {"warmup_epochs": 1, "seed": 5, "keep": 0.5, **over}
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
        opt = build("ausam", model)
        if not defer:
            opt._verdict = lambda ascend, scaler: Verdict(defer=False)
        for epoch in range(3):
            opt.set_epoch(epoch)
            for step, idx in enumerate(torch.arange(24).split(8)):
                at = {(1, 1): 0, (2, 0): 1}.get((epoch, step))
                plain = at is None
                closure = per_sample(model, x, y, idx) if plain else poisoned(model, x, y, idx, at, 1e400)
                assert opt.step(closure, index=idx).skipped == (at is not None)
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
