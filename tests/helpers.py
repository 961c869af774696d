"""Shared test plumbing: closures over toy data, a pass-counting closure, batch orders, exact state
comparison, checkpoint round trips and the small models the engine tests use."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import flatsam.engine
import flatsam.two_step
import flatsam.walk
from flatsam.component import Outcome
from flatsam.losses import cross_entropy
from flatsam.train import TrainConfig, records
from reference import Problem, bn_mlp, tiny_mlp

LR, MOMENTUM, WD = 0.1, 0.9, 1e-3
KW = dict(lr=LR, momentum=MOMENTUM, weight_decay=WD)


def closure_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
    """closure(rows) → per-sample cross-entropy of the batch ``idx`` restricted to ``rows``."""
    return lambda rows: F.cross_entropy(model(x[idx[rows]]), y[idx[rows]], reduction="none")


class Counting:
    """A closure that records every call: ``calls`` holds (row count, whether grad was enabled) and
    ``rows`` the rows themselves."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
        self.inner, self.calls, self.rows = closure_for(model, x, y, idx), [], []
        self.size = len(idx)

    def __call__(self, rows: torch.Tensor | slice) -> torch.Tensor:
        if isinstance(rows, slice):  # every row, in order
            rows = torch.arange(self.size)[rows]
        self.calls.append((len(rows), torch.is_grad_enabled()))
        self.rows.append(rows.clone())
        return self.inner(rows)


def batches(n: int, batch: int, epochs: int, seed: int = 3) -> list[list[torch.Tensor]]:
    """A seeded shuffled split of range(n) per epoch."""
    g = torch.Generator().manual_seed(seed)
    return [list(torch.randperm(n, generator=g).split(batch)) for _ in range(epochs)]


def assert_matches(
    model: nn.Module, opt: torch.optim.Optimizer, w_ref, ref_opt, problem: Problem | None = None
) -> None:
    """Weights, SGD momentum buffers and (given the transcription's ``problem``) the BatchNorm running
    statistics equal a transcription's, to float64 rounding."""
    for p, w in zip(model.parameters(), w_ref, strict=True):
        torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)
    for p, b in zip(model.parameters(), ref_opt.buf, strict=True):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], b, rtol=1e-10, atol=1e-12)
    if problem is not None:
        mine = dict(model.named_buffers())
        assert mine.keys() == problem.buffers.keys()
        for name, b in problem.buffers.items():
            torch.testing.assert_close(mine[name], b, rtol=1e-10, atol=1e-12, msg=f"buffer {name}")


@dataclass(frozen=True)
class Setting:
    """Model and loss of a reference test: the BatchNorm-free MLP with plain cross-entropy, or an MLP
    with BatchNorm in train mode and label smoothing (flatsam's loss in the closure, the written-out
    one in the transcription)."""

    name: str
    batchnorm: bool = False
    smoothing: float = 0.0
    form: str = "torch"

    def model(self, seed: int = 0) -> nn.Module:
        return bn_mlp(seed) if self.batchnorm else tiny_mlp(seed)

    def problem(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Problem:
        return Problem(model, x, y, self.smoothing, self.form)

    def closure(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        return lambda rows: cross_entropy(model(x[idx[rows]]), y[idx[rows]], self.smoothing, self.form)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return self.name


PLAIN = Setting("plain")
BN_AUTHORS = Setting("bn-smoothing-authors", batchnorm=True, smoothing=0.1, form="authors")
BN_TORCH = Setting("bn-smoothing-torch", batchnorm=True, smoothing=0.1, form="torch")
SETTINGS = [PLAIN, BN_AUTHORS]


# -- mutants of the engine's BatchNorm handling: the reference tests must catch each -----------------------


@contextlib.contextmanager
def _bn_eval_in_later_passes(model: nn.Module | None) -> Iterator[None]:
    """Mutant: the passes after the first run BatchNorm in eval mode (running statistics)."""
    layers = [] if model is None else [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for layer in layers:
        layer.eval()
    try:
        yield
    finally:
        for layer in layers:
            layer.train()


def _bn_stats_updated_again(model: nn.Module | None) -> contextlib.AbstractContextManager:
    """Mutant: every pass of a step updates the running statistics."""
    return contextlib.nullcontext()


BN_MUTANTS: dict[str, Callable[[nn.Module | None], contextlib.AbstractContextManager]] = {
    "eval-mode-in-later-passes": _bn_eval_in_later_passes,
    "statistics-updated-twice": _bn_stats_updated_again,
}


def assert_fails_under_mutant(mutant: str, monkeypatch: pytest.MonkeyPatch, check: Callable[[], Any]) -> None:
    """``check`` (a reference comparison that passes on the real engine) fails once the engine's
    BatchNorm helper is replaced by the mutant."""
    for module in (flatsam.walk, flatsam.two_step):  # the walk's passes and the two-step API's watch
        monkeypatch.setattr(module, "running_stats_frozen", BN_MUTANTS[mutant])
    with pytest.raises(AssertionError):
        check()


def same(a: Any, b: Any) -> bool:
    """Deep, exact equality of nested state (dicts, lists, tuples, tensors with dtype, numbers)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return type(a) is type(b) and a == b


def round_trip(state: Any) -> Any:
    """``state`` through torch.save / torch.load, as a checkpoint on disk."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # state dicts hold plain types only


def bn_model(momentum: float | None = 0.1) -> nn.Module:
    """A float64 MLP with a BatchNorm layer (fixed initialisation)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 6), nn.BatchNorm1d(6, momentum=momentum), nn.ReLU(), nn.Linear(6, 3)
    ).double()


#: Python-level reads of a tensor's values on the host: each is a device synchronisation on a GPU.
HOST_READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy")


class HostReads:
    """Counts the host reads of tensor values (``HOST_READS``) made inside the ``with`` block, by name.

    On a CPU nothing waits, but each of these calls would wait for the device's queue on a GPU; reads that
    torch makes inside C++ are not seen (``torch.cuda.set_sync_debug_mode`` catches those on a GPU).
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> HostReads:
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                self.calls.append(_name)
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)


def small_cli_args(subset: int = 128) -> list[str]:
    """Command-line flags of a tiny synthetic run: an MLP, batch 64, one thread."""
    return [
        "--dataset",
        "synthetic",
        "--subset",
        str(subset),
        "--model",
        "mlp",
        "--batch-size",
        "64",
        "--threads",
        "1",
    ]


def tiny_run_config(run_dir: Path, **over: Any) -> TrainConfig:
    """A few-second AUSAM run on the synthetic task: noisy labels, crop and flip, a short warm-up and ramp."""
    base = dict(
        method="ausam",
        method_options={"warmup_epochs": 1, "ramp_epochs": 2},
        dataset="synthetic",
        model="mlp",
        epochs=3,
        batch_size=64,
        threads=1,
        label_noise=0.2,
        crop_padding=2,
        flip=True,
    )
    return TrainConfig(**{**base, "run_dir": str(run_dir), **over})


def ascent_outcome(clean: list, descent: list, found_inf: torch.Tensor | None = None) -> Outcome:
    """The outcome of a one-row ascent step with these clean and descent gradients (for a component's
    ``record``)."""
    return Outcome(
        ascent=True,
        ascent_rows=torch.arange(1),
        descent_rows=torch.arange(1),
        loss_before=torch.zeros(1),
        loss_after=torch.zeros(1),
        clean_grad_norm=torch.zeros(()),
        clean_grads=clean,
        descent_grads=descent,
        found_inf=found_inf,
    )


def fabricate(
    root, label: str, seed: int, final: float, early: float | None, time: float, cpu: float | None = None
) -> None:
    """A finished run folder ``root/LABEL-sSEED`` with two epochs (early-stopped at the first); SGD and
    SAM under their names, any other label as an AUSAM run; with ``cpu``, a one-thread CPU run that
    recorded ``cpu`` seconds of CPU time beside its ``time`` of wall-clock."""
    folder = root / f"{label}-s{seed}"
    folder.mkdir(parents=True)
    config = {
        "method": label if label in ("sgd", "sam") else "ausam",
        "method_options": {},
        "val_fraction": 0.1,
        "threads": None if cpu is None else 1,
    }
    environment = {} if cpu is None else {"device": "cpu"}
    records.write_json(folder / records.CONFIG, {"config": config, "environment": environment})
    rows = [
        {"epoch": 0, "train_time": time / 2, "forward_samples": 100, "backward_samples": 100,
         "test_acc": early, "val_acc": 0.6},
        {"epoch": 1, "train_time": time, "forward_samples": 200, "backward_samples": 200,
         "test_acc": final, "val_acc": 0.5},
    ]  # fmt: skip
    if cpu is not None:
        rows[0]["train_cpu_time"], rows[1]["train_cpu_time"] = cpu / 2, cpu
    records.write_jsonl(folder / records.METRICS, rows)
    result = {
        "method": config["method"],
        "label": label,
        "seed": seed,
        "epochs": 2,
        "final_test_acc": final,
        "best_test_acc": max(final, early or 0),
        "train_time": time,
        **({} if cpu is None else {"train_cpu_time": cpu}),
        "cost": 1.0,
        "ascent_fraction": 0.0,
        **({} if early is None else {"early_stopped_test_acc": early, "best_val_epoch": 0}),
    }
    records.write_json(folder / records.RESULT, result)
