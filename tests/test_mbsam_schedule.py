"""The micro-batch scheduler's switching (MicroBatchScheduler, mbsam-switch): which steps ascend, the
method against a transcription, cost, resume, errors, provenance."""

from __future__ import annotations

import pytest
import torch

import flatsam
from flatsam.component import StepContext
from flatsam.methods import build_method
from flatsam.methods.sampled import MicroBatchSAM
from flatsam.schedule import SCHEDULES, EveryK, MicroBatchScheduler
from helpers import KW, LR, MOMENTUM, WD, assert_matches, batches, closure_for, round_trip
from reference import MomentumSGD, Problem, tiny_mlp, toy_data
from reference_sampled import ReferenceMicroBatchSAM


def ascends(schedule, steps: int) -> list[bool]:
    return [schedule.decide(StepContext(step=t, epoch=0, batch_size=8)) for t in range(steps)]


def even(p: int, q: int, t: int) -> bool:
    """Step t of a rate p/q ascends when ceil((t+1)p/q) > ceil(tp/q), in integers."""
    return -((-(t + 1) * p) // q) > -((-t * p) // q)


@pytest.mark.parametrize(
    ("budget", "fraction", "p", "q"), [(0.125, 0.25, 1, 2), (0.3, 0.8, 3, 8), (0.1, 0.3, 1, 3)]
)
def test_ascents_are_spread_evenly(budget, fraction, p, q):
    got = ascends(MicroBatchScheduler(budget, fraction), 48)
    assert got == [even(p, q, t) for t in range(48)]
    assert sum(got) == 48 * p // q and got[0]


def test_the_two_ideas_it_unifies():
    """budget = fraction: every step (flatsam's mbsam); fraction 1, budget 1/k: LookSAM's every k steps."""
    assert all(ascends(MicroBatchScheduler(0.25, 0.25), 30))
    assert ascends(MicroBatchScheduler(0.2, 1.0), 50) == ascends(EveryK(5), 50)
    assert SCHEDULES["microbatch"] is MicroBatchScheduler


class ReferenceSwitching(ReferenceMicroBatchSAM):
    """The micro-batch ascent on the steps where ``even(p, q, t)``, the base optimizer on every row
    elsewhere; rows are drawn on every step (the selection plans before the schedule decides), the noise
    only on ascent steps."""

    def __init__(self, *args, p: int, q: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.p, self.q, self.t = p, q, 0
        self.ascents: list[bool] = []

    def step(self, w, idx):
        ascent = even(self.p, self.q, self.t)
        self.t += 1
        self.ascents.append(ascent)
        if ascent:
            return super().step(w, idx)
        self.problem.new_step()
        torch.randperm(len(idx), generator=self.rows_gen)  # the draw the selection makes anyway
        _, g = self.problem.losses_and_grads(w, idx)
        return self.opt.step(w, g)


def test_mbsam_switch_matches_transcription():
    x, y = toy_data()
    model = tiny_mlp()
    problem = Problem(model, x, y)
    ref = ReferenceSwitching(
        problem, MomentumSGD(LR, MOMENTUM, WD), rho=0.05, m=2, sigma=0.5, seed=8, p=1, q=2
    )
    opt = MicroBatchSAM(model.parameters(), rho=0.05, fraction=0.25, budget=0.125, seed=8, **KW)
    w = problem.weights()
    infos = []
    for idxs in batches(len(x), 8, 3):
        for idx in idxs:
            w = ref.step(w, idx)
            infos.append(opt.step(closure_for(model, x, y, idx), index=idx))
    assert [i.ascent for i in infos] == ref.ascents == [t % 2 == 0 for t in range(9)]
    assert [(i.ascent_rows, i.descent_rows) for i in infos] == [
        (2, 8) if t % 2 == 0 else (0, 8) for t in range(9)
    ]
    assert sum(i.cost for i in infos) / 9 == pytest.approx((5 * 1.25 + 4) / 9)
    assert_matches(model, opt, w, ref.opt)


def test_every_step_variant_stays_the_default():
    opt = build_method("mbsam", tiny_mlp().parameters(), lr=0.1)
    assert isinstance(opt.schedule, flatsam.Always)
    switch = build_method("mbsam-switch", tiny_mlp().parameters(), lr=0.1)
    assert isinstance(switch.schedule, MicroBatchScheduler) and switch.schedule.budget == 0.125
    info = flatsam.method_info("mbsam-switch")
    assert "our choice" in info.defaults["budget"].source and "our choice" in info.defaults["fraction"].source


def test_resume_is_bit_for_bit():
    x, y = toy_data()
    steps = [idx for idxs in batches(len(x), 6, 3) for idx in idxs]  # 12 steps

    def make(model):
        return MicroBatchSAM(model.parameters(), fraction=0.5, budget=0.2, seed=3, **KW)  # 2 in 5 steps

    whole, first, second = tiny_mlp(), tiny_mlp(), tiny_mlp()
    opt = make(whole)
    for idx in steps:
        opt.step(closure_for(whole, x, y, idx), index=idx)
    part = make(first)
    for idx in steps[:7]:
        part.step(closure_for(first, x, y, idx), index=idx)
    second.load_state_dict(first.state_dict())
    resumed = make(second)
    resumed.load_state_dict(round_trip(part.state_dict()))
    for idx in steps[7:]:
        resumed.step(closure_for(second, x, y, idx), index=idx)
    for a, b in zip(whole.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(budget=0.5, fraction=0.25), r"budget .* must be in \(0.0, 0.25\]"),
        (dict(budget=0.0), r"budget .* must be in \(0.0"),
        (dict(budget=0.1, size=4), "needs fraction=, not size="),
    ],
)
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MicroBatchSAM(tiny_mlp().parameters(), lr=0.1, **kwargs)
