"""Step times of a benchmark suite's own runs (``flatsam bench --speed --suite NAME``).

Each method's seed-0 run is built as ``flatsam train`` builds it (the suite's data, subset, label noise,
validation split, augmentation, model, memory format, base optimizer and LR schedule) and stepped
through the training loop's own ``Run.train_step``, the contenders interleaved in blocks as in
:mod:`flatsam.train.speed`. Random images with a fixed recipe (``--speed`` alone) time a step in the
abstract; this times the step the suite's runs take, so its ratios are the ones their training times
should show. Measured on this project's grid (``bench/grid-speed/``): on ResNet-8 with Fashion-MNIST's
1×28×28 images in the channels-last format, a half-batch AUSAM step costs 1.02–1.06× an SGD step, where
random 3×32×32 images in the contiguous format made it 0.91–0.93×.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from flatsam.data.images import ImageData
from flatsam.train.config import TrainConfig
from flatsam.train.loop import Run, load_data, resolve_device
from flatsam.train.speed import SpeedConfig, time_contenders, write_speed


class LoopContender:
    """One method's training run in a temporary folder, stepped one batch at a time."""

    def __init__(self, config: TrainConfig, data: ImageData) -> None:
        self.run = Run(config, progress=False, data=data, keep_checkpoint=False)
        self.model = self.run.setup.model
        self.optimizer = self.run.setup.optimizer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.optimizer.set_epoch(epoch)

    def step(self, batch: int) -> bool:
        """Batch ``batch`` (modulo the epoch's batches) of the current epoch; whether it ascended."""
        return self.run.train_step(self.epoch, batch % self.run.batches(self.epoch)).ran_ascent

    def close(self) -> None:
        self.run.close()


def suite_setting(config: SpeedConfig, name: str, runs: list[TrainConfig], progress: bool) -> dict[str, Any]:
    """Warm up and time the runs' steps, interleaved (labelled by ``config.contenders``); one setting of
    the report."""
    first = runs[0]
    data = load_data(first)
    with tempfile.TemporaryDirectory(prefix="flatsam-speed-") as tmp, contextlib.ExitStack() as stack:
        contenders: dict[str, LoopContender] = {}
        for number, (label, run) in enumerate(zip(config.contenders, runs, strict=True)):
            contender = LoopContender(run.replace(run_dir=str(Path(tmp) / str(number))), data)
            stack.callback(contender.close)
            contenders[label] = contender
        steps = next(iter(contenders.values())).run.setup.steps_per_epoch
        device = resolve_device(first.device)
        batches = [(batch,) for batch in range(steps)]
        timed = time_contenders(contenders, batches, first.batch_size, config, device, name, progress)
    return {"suite": name, "model": first.model, **timed}


def setup_text(name: str, run: TrainConfig) -> str:
    """What was timed, for the report's first paragraph."""
    images = f" ({run.subset} images" if run.subset else " (all images"
    images += f", {run.val_fraction:.0%} held out for validation)" if run.val_fraction else ")"
    noise = f", {run.label_noise:.0%} label noise" if run.label_noise else ""
    crops = f", random crops (padding {run.crop_padding})" if run.crop_padding else ""
    memory = "channels-last" if run.channels_last else "contiguous"
    nesterov = " (Nesterov)" if run.nesterov and run.optimizer == "sgd" else ""
    return (
        f"The runs of suite `{name}` (seed 0), stepped through `flatsam train`'s own step: {run.dataset}"
        f"{images}{noise}{crops}, {run.model} in the "
        f"{memory} memory format, batch {run.batch_size}, {run.optimizer}{nesterov} lr {run.lr:g} with the "
        f"suite's schedule, each method with the suite's options."
    )


def run_suite_speed(
    config: SpeedConfig,
    name: str,
    runs: list[TrainConfig],
    out: Path,
    *,
    command: str | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Time the steps of ``runs`` (one per method of suite ``name``); write ``speed.md``, ``speed.json``."""
    if not runs:
        raise ValueError("give at least one method to time")
    config = dataclasses.replace(  # what the suite's runs fix, recorded with the rest
        config,
        contenders=tuple(run.label or run.method for run in runs),
        models=(runs[0].model,),
        batch_sizes=(runs[0].batch_size,),
        threads=runs[0].threads or config.threads,
        device=runs[0].device,
    )
    return write_speed(
        config,
        setup_text(name, runs[0]),
        lambda: [suite_setting(config, name, runs, progress)],
        out,
        command,
        extra={"suite": name},
    )
