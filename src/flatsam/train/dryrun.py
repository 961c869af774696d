"""``flatsam bench --dry-run``: what a suite will run, how many optimizer steps, and how long on this device.

The plan needs no data on disk: the training-set sizes of the real datasets are known (a ``--subset``
replaces them). The time estimate comes from a short probe: each (model, method) pair of the plan takes a
few training steps on random data of the dataset's image size and class count, on the run's device, and
the median step time is multiplied by the run's steps. The probe steps are taken past every method's
warm-up (so AUSAM's first, full-SAM epoch is priced at AUSAM's rate), training only: evaluation and data
loading are not counted. The probe's base optimizer is SGD for every suite (Adam's step costs about the
same), and pose models are timed as their backbone classifying 16 classes (the SimCC head is small).
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass
from typing import Any

import torch

from flatsam.models import build_model
from flatsam.train.config import MethodSpec, TrainConfig

#: (training images, channels, image side, classes) of the datasets, before any subset.
DATASET_SHAPES = {
    "fashion-mnist": (60_000, 1, 28, 10),
    "cifar10": (50_000, 3, 32, 10),
    "cifar100": (50_000, 3, 32, 100),
    "tiny-imagenet": (100_000, 3, 64, 200),
    "synthetic": (512, 1, 16, 10),
    "mpii": (22_246, 3, 0, 16),  # the HRNet/mmpose train split; side = --pose-size
    "stickfigures": (4_000, 1, 0, 16),
}


@dataclass(frozen=True)
class PlannedRun:
    """One method of the plan: its label, method name, run configuration and the seeds it runs for."""

    label: str
    method: str
    config: TrainConfig
    seeds: tuple[int, ...]

    @property
    def steps(self) -> int:
        """Optimizer steps of one run (one per batch, the last batch may be short)."""
        return self.config.epochs * math.ceil(train_size(self.config) / self.config.batch_size)


def _shape(config: TrainConfig) -> tuple[int, int, int, int]:
    from flatsam.data.registry import canonical_name

    key = config.dataset if config.task == "pose" else canonical_name(config.dataset)
    count, channels, side, classes = DATASET_SHAPES[key]
    return count, channels, side or config.pose_size, classes


def train_size(config: TrainConfig) -> int:
    """Training images of ``config``'s dataset after its subset (the stick figures default to 4,000) and
    its validation split (``round(val_fraction · N)`` rows, at least one, as ``flatsam.data.split``)."""
    count = config.subset or _shape(config)[0]
    fraction = config.val_fraction
    return count - max(1, round(fraction * count)) if fraction else count


def plan(
    config: TrainConfig, specs: list[MethodSpec], seeds: list[int], rho: float | None
) -> list[PlannedRun]:
    """The runs ``run_bench`` would make, method by method (the same spec handling)."""
    from flatsam.train.bench import split_overrides, with_common_rho

    runs = []
    for spec in specs:
        method_spec, run_config = split_overrides(with_common_rho(spec, rho), config)
        run_config = run_config.replace(method=method_spec.name, method_options=dict(method_spec.options))
        runs.append(PlannedRun(method_spec.label, method_spec.name, run_config, tuple(seeds)))
    return runs


def probe_step_seconds(config: TrainConfig, steps: int = 3) -> float:
    """Median seconds of one training step of ``config``'s method and model on its device, on a random
    batch of the dataset's shape (``steps`` timed steps after three untimed ones)."""
    from flatsam.train.loop import resolve_device
    from flatsam.train.speed import TIMED_EPOCH, Clock, make_contender

    device = resolve_device(config.device)
    _, channels, side, classes = _shape(config)
    batch = config.batch_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((batch, channels, side, side), generator=generator).to(device)
    y = torch.randint(0, classes, (batch,), generator=generator).to(device)
    index = torch.arange(batch)
    model = build_model(config.model, channels, classes).to(device)
    if config.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    spec = MethodSpec(config.method, dict(config.method_options), config.method)
    contender = make_contender(_spec_text(spec), copy.deepcopy(model), batch, 1)
    contender.set_epoch(0)
    contender.step(x, y, index)  # fills AUSAM's history
    contender.set_epoch(TIMED_EPOCH)
    for _ in range(2):
        contender.step(x, y, index)
    clock = Clock(device)
    marks = [clock.mark()]
    for _ in range(steps):
        contender.step(x, y, index)
        marks.append(clock.mark())
    return statistics.median(clock.seconds(marks))


def _spec_text(spec: MethodSpec) -> str:
    options = ",".join(f"{k}={v}" for k, v in spec.options.items())
    return f"{spec.name}:{options}" if options else spec.name


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def describe(
    suite: str, description: str, runs: list[PlannedRun], probe_steps: int, progress: bool = False
) -> str:
    """The dry-run text: one line per method (model, epochs, batch, steps per run, seeds, estimated time
    per run) and the totals; with ``probe_steps`` 0 no probe runs and no time is estimated."""
    from flatsam.train.loop import resolve_device

    if probe_steps < 0:
        raise ValueError(f"--probe-steps must be >= 0, got {probe_steps}")
    first = runs[0].config
    device = resolve_device(first.device)
    lines = [
        f"suite {suite}: {description}",
        f"dataset {first.dataset} ({train_size(first):,} training images), device {device}; "
        f"{sum(len(r.seeds) for r in runs)} runs",
        "",
        f"{'run':<34} {'model':<14} {'epochs':>6} {'batch':>5} {'steps/run':>10} {'seeds':>5} {'step':>9} "
        f"{'time/run':>14}",
    ]
    probes: dict[tuple[Any, ...], float] = {}
    total_steps = total_seconds = 0.0
    for run in runs:
        c = run.config
        key = (c.model, c.method, c.batch_size, c.dataset, c.pose_size, c.device)
        if probe_steps and key not in probes:
            if progress:
                print(f"  probing {c.model} / {c.method} at batch {c.batch_size} ...", flush=True)
            probes[key] = probe_step_seconds(c, probe_steps)
        step = probes.get(key)
        seconds = step * run.steps if step is not None else None
        total_steps += run.steps * len(run.seeds)
        total_seconds += (seconds or 0.0) * len(run.seeds)
        timing = (
            f"{1000 * step:>7.1f}ms {_duration(seconds):>14}" if step and seconds else f"{'-':>9} {'-':>14}"
        )
        lines.append(
            f"{run.label:<34} {c.model:<14} {c.epochs:>6} {c.batch_size:>5} {run.steps:>10,} "
            f"{len(run.seeds):>5} {timing}"
        )
    lines.append("")
    lines.append(f"total: {int(total_steps):,} optimizer steps")
    if probe_steps:
        lines[-1] += (
            f", about {_duration(total_seconds)} of training on {device} (probe: median of "
            f"{probe_steps} steps per model and method on random data, past the methods' warm-ups; "
            "evaluation and data loading not counted)"
        )
    return "\n".join(lines)
