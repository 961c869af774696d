"""flatsam.integrations.accelerate: stepping through AcceleratedOptimizer inside Accelerate's
accumulation equals the engine's own multi-closure step (skipped without the accelerate extra)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("accelerate")

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

import flatsam  # noqa: E402
from flatsam.integrations.accelerate import SharpnessAwareAcceleratedOptimizer, prepare  # noqa: E402

N, BATCH, ACCUMULATE, EPOCHS = 48, 8, 2, 3
STEPS = EPOCHS * N // (BATCH * ACCUMULATE)
OPTIONS = dict(lr=0.1, momentum=0.9, rho=0.1, warmup_epochs=1, ramp_epochs=1, seed=5)


@pytest.fixture(autouse=True)
def fresh_state():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def dataset() -> flatsam.data.IndexedDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 6, generator=g)
    return flatsam.data.IndexedDataset(TensorDataset(x, (x[:, :3].sum(1) > 0).long()))


def setup() -> tuple[nn.Module, flatsam.SharpnessAware, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = flatsam.AUSAM(model.parameters(), torch.optim.SGD, model=model, num_samples=N, **OPTIONS)
    return model, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)


def losses(model, x, y):
    return lambda rows: F.cross_entropy(model(x[rows]), y[rows], reduction="none")


def accelerated(mixed_precision: str = "no"):
    accelerator = Accelerator(
        cpu=True, mixed_precision=mixed_precision, gradient_accumulation_steps=ACCUMULATE
    )
    model, opt, schedule = setup()
    model, loader = accelerator.prepare(model, DataLoader(dataset(), batch_size=BATCH))
    opt = prepare(accelerator, opt)
    schedule = accelerator.prepare(schedule)
    infos = []
    for epoch in range(EPOCHS):
        opt.optimizer.set_epoch(epoch)
        for x, y, index in loader:
            with accelerator.accumulate(model):
                infos.append(opt.step(losses(model, x, y), index=index))
                schedule.step()
    return model, opt, infos


def test_accumulated_steps_equal_the_engines_multi_closure_step():
    model, opt, infos = accelerated()
    assert isinstance(opt, SharpnessAwareAcceleratedOptimizer)
    assert [info is None for info in infos] == [True, False] * (len(infos) // 2)  # collected, then stepped
    ref_model, ref_opt, ref_schedule = setup()
    batches = list(DataLoader(dataset(), batch_size=BATCH))
    for epoch in range(EPOCHS):
        ref_opt.set_epoch(epoch)
        for first, second in zip(batches[::2], batches[1::2], strict=True):
            ref_opt.step(
                [losses(ref_model, *first[:2]), losses(ref_model, *second[:2])], index=[first[2], second[2]]
            )
            ref_schedule.step()
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    engine = opt.optimizer
    assert engine.step_count == ref_opt.step_count == STEPS
    assert torch.equal(engine.selection.dlp_count, ref_opt.selection.dlp_count)
    assert infos[-1].batch_size == 2 * BATCH and infos[-1].ascent_rows < 2 * BATCH  # AUSAM after warm-up
    assert engine.base.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
    assert engine.base.param_groups[0]["lr"] < 1e-3  # the prepared scheduler advanced once per step


def test_bf16_autocast_trains():
    model, opt, infos = accelerated("bf16")
    assert opt.optimizer.step_count == STEPS and not any(i.skipped for i in infos if i is not None)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_prepare_refuses_a_plain_optimizer():
    accelerator = Accelerator(cpu=True)
    with pytest.raises(TypeError, match="flatsam optimizer"):
        prepare(accelerator, torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))


@pytest.mark.parametrize("accumulate", [1, ACCUMULATE])
def test_the_usual_accelerate_idiom_is_refused_at_its_first_step(accumulate):
    """accelerator.prepare(model, opt) alone: AcceleratedOptimizer.step would run the engine on the last
    micro-batch of each cycle only; the first step that reaches the engine refuses, naming prepare."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulate)
    model, opt, _ = setup()
    before = [p.detach().clone() for p in model.parameters()]
    model, opt, loader = accelerator.prepare(model, opt, DataLoader(dataset(), batch_size=BATCH))
    batches = iter(loader)
    with pytest.raises(RuntimeError, match=r"flatsam.integrations.accelerate.prepare\(accelerator, opt\)"):
        for x, y, _ in batches:
            with accelerator.accumulate(model):
                opt.step(losses(model, x, y))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert opt.optimizer.step_count == 0
