"""The GPU paths (skipped without CUDA; ``make gpu-check`` runs them on a CUDA machine).

- The sync-free hot path: SAM, AUSAM, uniform sampling, LookSAM and ARSAM steps (``sync_free``, the
  default off the CPU) make no host synchronisation, checked with ``torch.cuda.set_sync_debug_mode("error")``,
  which turns every synchronising CUDA call into a ``RuntimeError`` (torch documents it as catching most,
  not all, synchronising operations; a control below shows it catches ``.item()``).
- Mixed precision on real fp16/bf16 units: SAM and AUSAM steps under autocast, fp16 with a ``GradScaler``
  (an overflow skips the step, leaves the weights and backs the scale off), bf16 without one.
- DDP with NCCL through the harness: ``torchrun`` on every device (two at most), or one process on one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flatsam

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

N, BATCH = 64, 16
#: method → options that make every branch run within a few epochs of 4 steps, sync-free
SYNC_FREE = {
    "sam": {},
    "ausam": {"warmup_epochs": 1, "keep": 0.5, "seed": 3},
    "uniform": {"seed": 3},
    "looksam": {"k": 3},
    "arsam": {"window": 50, "blocks": 5, "warmup_epochs": 1, "seed": 3},  # no window boundary in the check
}


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).cuda()


def data() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Learnable batches: each class shifts the channel means (on the device, with their indices)."""
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 10, (N,), generator=g)
    centres = 2 * torch.randn(10, 3, 1, 1, generator=g)
    x = (torch.randn(N, 3, 8, 8, generator=g) + centres[labels]).cuda()
    y = labels.cuda()
    order = [i.cuda() for i in torch.randperm(N, generator=g).split(BATCH)]  # indices already on the device
    return x, y, order


def closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, amp: torch.dtype | None):
    def losses(rows: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=amp) if amp else contextlib.nullcontext():
            return F.cross_entropy(model(x[idx[rows]]), y[idx[rows]], reduction="none")

    return losses


def build(name: str, model: nn.Module, **over) -> flatsam.SharpnessAware:
    options = {**SYNC_FREE.get(name, {}), **over}
    return flatsam.build_method(
        name, model.parameters(), model=model, num_samples=N, overrides=options, lr=0.05, momentum=0.9
    )


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_sync_debug_mode_catches_a_host_read() -> None:
    value = torch.ones((), device="cuda")
    with pytest.raises(RuntimeError, match="synchroniz"), no_host_sync():
        value.item()


@pytest.mark.parametrize("name", list(SYNC_FREE))
def test_sync_free_steps_make_no_host_synchronisation(name: str) -> None:
    model = net()
    x, y, order = data()
    opt = build(name, model)
    assert opt.sync_free is None or opt.sync_free  # the default off the CPU
    for idx in order:  # epoch 0: the warm-up, and the step that creates the optimizer state
        opt.step(closure(model, x, y, idx, None), index=idx)
    opt.set_epoch(1)
    opt.step(closure(model, x, y, order[0], None), index=order[0])
    before = [p.detach().clone() for p in model.parameters()]
    with no_host_sync():
        infos = [opt.step(closure(model, x, y, idx, None), index=idx) for idx in order[1:]]
    assert not any(info.skipped for info in infos)  # read after the check: one read of the flags
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", ["sam", "ausam"])
def test_fp16_with_grad_scaler_trains_and_an_overflow_skips(name: str) -> None:
    model = net()
    x, y, order = data()
    opt = build(name, model)
    scaler = torch.amp.GradScaler("cuda")
    first = None
    for epoch in range(3):
        opt.set_epoch(epoch)
        for idx in order:
            info = opt.step(closure(model, x, y, idx, torch.float16), index=idx, scaler=scaler)
            first = float(info) if first is None else first
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        last = float(F.cross_entropy(model(x), y))
    assert last < first  # it learns the fixed batches
    weights = [p.detach().clone() for p in model.parameters()]
    scale = scaler.get_scale()
    poisoned = closure(model, x, y, order[0], torch.float16)
    info = opt.step(lambda rows: poisoned(rows) * float("inf"), index=order[0], scaler=scaler)
    assert info.skipped
    assert all(torch.equal(a, p) for a, p in zip(weights, model.parameters(), strict=True))
    assert scaler.get_scale() < scale


@pytest.mark.parametrize("name", ["sam", "ausam"])
def test_bf16_step_is_close_to_float32(name: str) -> None:
    x, y, order = data()
    results = []
    for amp in (None, torch.bfloat16):
        model = net()
        opt = build(name, model)
        for idx in order[:2]:
            opt.step(closure(model, x, y, idx, amp), index=idx)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    change = (results[1] - results[0]).norm() / results[0].norm()
    assert torch.isfinite(results[1]).all() and change < 0.02


def test_ddp_with_nccl_through_the_harness(tmp_path: Path) -> None:
    ranks = min(2, torch.cuda.device_count())
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "-m", "flatsam"]
    command += [
        "train",
        "--device",
        "cuda",
        "--dataset",
        "synthetic",
        "--model",
        "resnet8",
        "--method",
        "ausam",
    ]
    command += ["--epochs", "2", "--batch-size", "64", "--no-progress", "--run-dir", str(run)]
    env = {**os.environ, "NCCL_DEBUG": "WARN"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["epochs"] == 2 and result["skipped_steps"] == 0
    assert 0.0 <= result["final_test_acc"] <= 1.0


def test_the_harness_builds_a_fused_base_whose_steps_read_nothing_on_the_host(tmp_path: Path) -> None:
    """``flatsam train`` on CUDA steps a fused base (it obeys the skip flag itself: no copy of its state, no
    ``where`` per tensor), and its optimizer steps after the first make no host synchronisation."""
    from flatsam.train.loop import Run
    from helpers import tiny_run_config

    config = tiny_run_config(tmp_path / "run", device="cuda", method="sam", method_options={})
    run = Run(config, progress=False)
    base = run.setup.optimizer.base
    assert isinstance(base, torch.optim.SGD) and base.defaults["fused"]
    run.train_step(0, 0)  # creates the momentum buffers (the one step that may read the flag)
    step = run.setup.optimizer.step

    def guarded(*args, **kwargs):
        with no_host_sync():
            return step(*args, **kwargs)

    run.setup.optimizer.step = guarded
    info = run.train_step(0, 1)
    assert not info.skipped
    run.close()
