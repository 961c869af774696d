"""The hot path of AUSAM and SAM outside the engine: sampler draws and history on the parameters' device
with no host read, the draw equal to torch.multinomial's, ε by foreach kernels equal to per-tensor ones."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import flatsam
from flatsam.component import Outcome, StepContext
from flatsam.methods.registry import resolve_device
from flatsam.perturbation import SAMPerturbation, scaled
from flatsam.selection import ADLPSampler, draw_without_replacement
from helpers import HostReads


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(1, 200),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
    double=st.booleans(),
)
def test_draw_equals_torch_multinomial_and_leaves_the_same_generator_state(size, fraction, seed, double):
    data = torch.Generator().manual_seed(seed)
    probs = torch.rand(size, generator=data, dtype=torch.float64 if double else torch.float32) + 0.05
    probs = probs / probs.sum()
    count = max(1, round(fraction * size))
    ours, torchs = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    rows = draw_without_replacement(probs, count, ours)
    assert torch.equal(rows, torch.multinomial(probs, count, replacement=False, generator=torchs))
    assert torch.equal(ours.get_state(), torchs.get_state())


def _after_warmup(n: int = 32, batch: int = 8) -> tuple[ADLPSampler, torch.Tensor]:
    sampler = ADLPSampler(n, keep=0.5, seed=0)
    sampler.dlp_sum = torch.rand(n, generator=torch.Generator().manual_seed(1)) + 0.5
    sampler.set_epoch(1)
    return sampler, torch.randperm(n, generator=torch.Generator().manual_seed(2))[:batch]


def test_sampler_plan_and_record_read_nothing_on_the_host():
    sampler, index = _after_warmup()
    ctx = StepContext(step=0, epoch=1, batch_size=len(index), index=index, rho=0.1)
    before = sampler.dlp_count.clone()
    with HostReads() as reads:
        plan = sampler.plan(ctx)
        losses = torch.rand(len(plan.ascent))
        outcome = Outcome(True, plan.ascent, plan.descent, losses, losses + 1, torch.ones(()))
        sampler.record(ctx, outcome)
    assert reads.calls == []
    assert torch.equal(
        sampler.dlp_count - before, torch.zeros_like(before).index_fill_(0, index[plan.ascent], 1)
    )


def test_a_bad_cpu_index_still_fails_at_once_with_its_range():
    sampler, _ = _after_warmup()
    with pytest.raises(ValueError, match=r"\[0, 32\).*got range \[3, 40\]"):
        sampler.select(torch.tensor([3, 40]))


def test_host_read_counter_sees_reads():
    t = torch.ones(())
    with HostReads() as reads:
        bool(t), float(t), t.item(), t.tolist()
    assert reads.calls == ["__bool__", "__float__", "item", "tolist"]
    t.item()
    assert len(reads.calls) == 4  # the methods are put back on exit


def test_epsilon_by_foreach_equals_per_tensor_products():
    torch.manual_seed(0)
    tensors = [torch.randn(5, 3), torch.randn(7), torch.randn(())]
    scale = torch.tensor(0.37)
    for got, t in zip(scaled(tensors, scale), tensors, strict=True):
        assert torch.equal(got, t * scale)
    mixed = [torch.randn(4), torch.randn(4, dtype=torch.float64)]
    for got, t in zip(scaled(mixed, scale), mixed, strict=True):
        assert got.dtype == t.dtype and torch.equal(got, t * scale.to(t))
    model = nn.Linear(3, 2)
    model(torch.randn(4, 3)).square().sum().backward()
    groups = [{"params": list(model.parameters()), "rho": 0.05}]
    with HostReads() as reads:
        eps = SAMPerturbation().epsilon(StepContext(0, 0, 4, rho=0.05), groups)
    assert reads.calls == []
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    for (p, e), q in zip(eps, model.parameters(), strict=True):
        assert p is q
        torch.testing.assert_close(e, 0.05 * p.grad / norm)


def test_presets_keep_history_and_draws_on_the_parameters_device():
    model = nn.Linear(3, 2)
    params, device = resolve_device(iter(model.parameters()), torch.optim.SGD, None)
    assert device == torch.device("cpu") and len(params) == 2  # an iterator is materialised, not consumed
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    assert resolve_device(None, base, None) == (None, torch.device("cpu"))
    assert resolve_device(params, torch.optim.SGD, "meta")[1] == torch.device("meta")
    opt = flatsam.AUSAM(model.parameters(), torch.optim.SGD, lr=0.1, num_samples=10)
    assert len(opt.params) == 2 and opt.selection.device == torch.device("cpu")
    assert opt.selection.generator.device == torch.device("cpu")
