"""The training loop: any registered method on in-memory image data, with metrics and exact resume."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from flatsam.data import Augment, ImageData, normalize
from flatsam.data.registry import child_seed as data_child_seed
from flatsam.data.split import split_validation
from flatsam.engine import SharpnessAware, StepInfo
from flatsam.methods import build_method
from flatsam.train import analysis, launch, loggers, records
from flatsam.train.config import TrainConfig
from flatsam.train.interrupts import DeferredInterrupt
from flatsam.train.precise_bn import precise_bn
from flatsam.train.progress import bar_figures, epoch_line
from flatsam.train.rundir import claim
from flatsam.train.tasks import Task, build_model_for, classification_metrics, get_task
from flatsam.train.totals import Totals
from flatsam.validate import check_component_state


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR factor per iteration: an optional linear warm-up over ``warmup_steps`` (ours; none by default),
    then cosine from 1 to 0 per iteration, the schedule of the AUSAM code (``CosineScheduler`` over
    epochs × batches in github.com/ajiaaa/AUSAM ``train.py``, which runs it without a warm-up)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def child_seed(*parts: int) -> int:
    """A seed for (run seed, epoch, batch, …) that never collides for small integers."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part) + 1) % (2**63 - 1)
    return seed


def train_figures(e: Totals) -> dict[str, Any]:
    """Train loss and accuracy of an epoch, from the first forward of every (not skipped) step: it runs
    at the unperturbed weights and costs nothing extra. It covers every row of the batch for SGD, SAM,
    ASAM, the schedulers, ESAM, K-SAM (its scoring forward), m-sharpness and AUSAM's warm-up
    (``train_rows: "all"``), but only the drawn rows for AUSAM after its warm-up, uniform sampling, the
    micro-batch ascent and in-batch InfoBatch (``train_rows: "selected"``, with the covered fraction in
    ``train_rows_fraction``): those figures come from the rows the method trained on, not the batch."""
    return {
        "train_loss": e.loss_sum / max(1, e.seen),
        "train_acc": e.correct / max(1, e.seen),
        "train_rows": "all" if e.seen == e.batch_rows else "selected",
        "train_rows_fraction": e.seen / max(1, e.batch_rows),
    }


@dataclass
class Setup:
    """Everything built from a config before the first step."""

    config: TrainConfig
    device: torch.device
    task: Task
    data: ImageData  # or the task's data (flatsam.pose.PoseData)
    model: nn.Module
    optimizer: SharpnessAware
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    augment: Augment
    steps_per_epoch: int
    val_x: torch.Tensor | None = None  # the validation split held out of the training rows (--val-fraction)
    val_y: torch.Tensor | None = None


def load_data(config: TrainConfig) -> ImageData:
    """The dataset of ``config``'s task, with its seeded training subset (and label noise)."""
    return get_task(config).load()


def fused_on(device: torch.device | None) -> dict[str, Any]:
    """The base optimizer's extra keywords on ``device``: on CUDA, torch's fused kernel (``fused=True``),
    one launch for the update that obeys the engine's skip flag itself, where an unfused base is masked
    by a copy of its state and a ``where`` per tensor, host work that made a ResNet-18 step at batch 256
    on an H200 1.5× torch SGD's (``bench/gpu/``); elsewhere none."""
    return {"fused": True} if device is not None and device.type == "cuda" else {}


def base_optimizer(
    config: TrainConfig, device: torch.device | None = None
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The base optimizer class of ``config`` and its keywords on ``device`` (:func:`fused_on`)."""
    fused = fused_on(device)
    if config.optimizer == "sgd":
        kwargs = dict(
            lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
        )
        return torch.optim.SGD, {**kwargs, **fused}
    return torch.optim.Adam, dict(lr=config.lr, weight_decay=config.weight_decay, **fused)


def check_method(config: TrainConfig) -> None:
    """Build ``config``'s method on a stand-in model: a bad option name or value fails here, before any
    data is loaded or any run of a benchmark trains."""
    model = nn.Linear(2, 2)
    base, base_kwargs = base_optimizer(config)
    build_method(
        config.method,
        model.parameters(),
        base,
        model=model,
        num_samples=config.subset or 1000,
        total_steps=config.epochs * 10,
        epochs=config.epochs,
        overrides=config.method_options,
        **base_kwargs,
    )


def check_splits(data: ImageData, config: TrainConfig) -> None:
    """A run needs training and test rows: an empty split is a ``ValueError`` before any step."""
    for split, rows in (("training", len(data.train_y)), ("test", len(data.test_y))):
        if rows == 0:
            where = f" in {config.data_dir}" if config.data_dir else ""
            raise ValueError(f"dataset {config.dataset!r}{where} has no {split} images; nothing was trained")


#: A run fails (non-zero exit, after writing ``result.json``) when more than this fraction of its steps
#: were skipped for non-finite losses or gradients: it did not train.
MAX_SKIPPED_FRACTION = 0.5


class RunFailed(ValueError):
    """A run that ended without training: no step, (almost) every step skipped, or a non-finite result."""


def failure(totals: Totals, result: dict[str, Any]) -> str | None:
    """Why a finished run did not train (``None`` when it did)."""
    if totals.steps == 0:
        return "it trained 0 steps"
    if totals.skipped > MAX_SKIPPED_FRACTION * totals.steps:
        return (
            f"{totals.skipped} of {totals.steps} steps were skipped for non-finite losses or gradients "
            "(lower --lr or rho, or use --amp bf16)"
        )
    figures = ("final_test_acc", "final_test_loss", "final_train_acc", "cost")
    bad = [k for k in figures if not _finite(result.get(k))]
    if bad:
        return f"its {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite (the weights diverged)"
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def build(config: TrainConfig, data: ImageData | None = None) -> Setup:
    """Data, model, optimizer (the method with its base optimizer) and LR schedule of a run."""
    device = launch.device_for_rank(resolve_device(config.device))
    launch.check_batch(config.batch_size, config.accumulate)
    if config.threads:
        torch.set_num_threads(config.threads)
    task = get_task(config)
    if data is None:
        data = task.load()
    val = None
    if config.val_fraction:
        seed = data_child_seed(config.data_seed, "validation")
        data, val = split_validation(data, config.val_fraction, seed)
    check_splits(data, config)
    torch.manual_seed(config.seed)
    memory = torch.channels_last if config.channels_last else torch.contiguous_format
    model, params = build_model_for(config, task, data)
    model = model.to(device, memory_format=memory)

    def tensors(x: torch.Tensor) -> torch.Tensor:
        return normalize(x, data.mean, data.std).to(device).contiguous(memory_format=memory)

    base, base_kwargs = base_optimizer(config, device)
    steps_per_epoch = math.ceil(data.num_train / config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer = build_method(
        config.method,
        params,
        base,
        model=model,
        num_samples=data.num_train,
        total_steps=total,
        epochs=config.epochs,
        overrides=config.method_options,
        **base_kwargs,
    )
    model = launch.wrap_model(model, device)  # DistributedDataParallel under torchrun
    optimizer.model = model  # so the engine's ascent pass can skip DDP's all-reduce
    warmup = round(config.lr_warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup))
    augment = task.augment(data)
    return Setup(
        config,
        device,
        task,
        data,
        model,
        optimizer,
        scheduler,
        tensors(data.train_x),
        data.train_y.to(device),
        tensors(data.test_x),
        data.test_y.to(device),
        augment,
        steps_per_epoch,
        None if val is None else tensors(val.train_x),
        None if val is None else val.train_y.to(device),
    )


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode."""
    model.eval()
    try:
        return classification_metrics(model, x, y, batch_size)
    finally:
        model.train()


#: Settings a resumed run may change: where it runs and with how many threads (neither changes a number).
RESUME_MAY_CHANGE = ("run_dir", "threads", "log")


def check_optimizer_state(fresh: dict[str, Any], saved: Any) -> None:
    """The components' and counters' state in a checkpoint (``saved``) against a fresh optimizer's of the
    same method (``fresh``): same fields, tensors and numbers where they belong (``flatsam.validate``);
    the base optimizer's state is checked by torch when it loads."""
    if not isinstance(saved, dict):
        raise TypeError(f"the optimizer state is a {type(saved).__name__}, not a dict")
    for name, current in fresh.items():
        if name != "base" and isinstance(current, dict):
            check_component_state(name, current, saved.get(name))


class Interrupted(Exception):
    """Raised when a run stops on Ctrl-C or SIGTERM (or a test's simulated one); ``signum`` names the
    signal, ``saved`` says whether a checkpoint of the stopping point was written."""

    def __init__(self, message: str, signum: int = signal.SIGINT, saved: bool = True) -> None:
        super().__init__(message)
        self.signum, self.saved = signum, saved


class _Stop(Exception):
    """Internal: a requested stop, raised between steps where the state is consistent."""


class Run:
    """One training run writing ``config.json``, ``metrics.jsonl``, ``result.json`` and ``checkpoint.pt``
    to ``config.run_dir``; ``resume=True`` continues from the checkpoint to the same final weights.

    The folder is locked while the run lives (see ``flatsam.train.rundir``); a folder holding a run is
    refused unless ``resume`` (continue it) or ``overwrite`` (delete its files first).
    ``keep_checkpoint=False`` deletes the checkpoint once the run has finished (benchmarks)."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        data: ImageData | None = None,
        keep_checkpoint: bool = True,
        epoch_lines: bool = False,
    ) -> None:
        self.config, self.progress, self.keep_checkpoint = config, progress, keep_checkpoint
        self.epoch_lines = epoch_lines  # one line per epoch on stdout (rank 0), with or without the bar
        self.dir = Path(config.run_dir)
        self.main = launch.is_main()  # rank 0 claims the folder, writes the files and draws the progress bar
        self._lock = claim(self.dir, resume=resume, overwrite=overwrite) if self.main else None
        self.loggers: list[loggers.Logger] = []
        try:
            checkpoint = self.dir / records.CHECKPOINT
            state = records.load_checkpoint(checkpoint) if resume else None
            if state is not None:
                self._check_resumable(state)  # before any data is loaded
            self.setup = build(config, data)
            self.totals = Totals()
            self.epoch = self.batch = 0
            self.epoch_totals = Totals()
            self.metrics: list[dict[str, Any]] = []
            self._orders: tuple[int, torch.Tensor | None] = (-1, None)
            self.scaler = launch.grad_scaler(config.amp, self.setup.device)
            if state is not None:
                self._load(state, checkpoint)
            elif self.main:
                environment = {**records.environment(self.setup.device), "processes": launch.world_size()}
                records.write_json(
                    self.dir / records.CONFIG, {"config": config.to_dict(), "environment": environment}
                )
                records.write_jsonl(self.dir / records.METRICS, [])
            if self.main:
                names, label = loggers.parse(config.log), config.label or config.method
                self.loggers = loggers.open_loggers(names, self.dir, config.to_dict(), label)
        except BaseException:
            self.close(discard_empty=True)
            raise

    def close(self, discard_empty: bool = False) -> None:
        """Close the loggers and release the run folder (done by ``run`` when it returns or raises);
        ``discard_empty``: remove the folder too if this run created it and nothing was written."""
        for logger in self.loggers:
            logger.close()
        self.loggers = []
        if self._lock is not None:
            self._lock.release(discard_empty=discard_empty)

    # -- checkpoints ----------------------------------------------------------------------------------
    def _state(self, epoch_totals: Totals) -> dict[str, Any]:
        s = self.setup
        return {
            "config": records.plain_config(self.config.to_dict()),
            "epoch": self.epoch,
            "batch": self.batch,
            "model": launch.unwrap(s.model).state_dict(),
            "processes": launch.world_size(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "totals": self.totals.as_dict(),
            "epoch_totals": epoch_totals.as_dict(),
            "metrics": self.metrics,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if s.device.type == "cuda" else None,
        }

    def _check_resumable(self, state: dict[str, Any]) -> None:
        """The checkpoint was made with this configuration (but for ``RESUME_MAY_CHANGE``) and as many
        processes; checked before any data is loaded."""
        saved = {k: v for k, v in state["config"].items() if k not in RESUME_MAY_CHANGE}
        current = records.plain_config(self.config.to_dict())
        changed = sorted(k for k in saved if saved[k] != current.get(k))
        if changed:
            raise ValueError(
                f"cannot resume {self.dir}: the checkpoint was made with different {changed} (was "
                f"{records.CONFIG} edited?)"
            )
        processes = state.get("processes", 1)
        if processes != launch.world_size():
            raise ValueError(
                f"cannot resume {self.dir} with {launch.world_size()} process(es): it was trained with "
                f"{processes}"
            )

    def _load(self, state: dict[str, Any], path: Path) -> None:
        s = self.setup
        try:
            check_optimizer_state(s.optimizer.state_dict(), state["optimizer"])
            launch.unwrap(s.model).load_state_dict(state["model"])
            s.optimizer.load_state_dict(state["optimizer"])
            s.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler") is not None:
                self.scaler.load_state_dict(state["scaler"])
            self.totals = Totals.from_dict(state["totals"], "totals")
            self.epoch_totals = Totals.from_dict(state["epoch_totals"], "epoch_totals")
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
            detail = " ".join(str(error).split())[:300]
            raise records.CheckpointError(f"checkpoint {path} does not fit this run: {detail}") from None
        if not self.main:  # every rank's part of an interrupted epoch was saved, summed, by rank 0
            self.epoch_totals = Totals()
        self.epoch, self.batch = state["epoch"], state["batch"]
        self.metrics = state["metrics"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.main:
            records.write_jsonl(self.dir / records.METRICS, self.metrics)  # drop lines past the checkpoint

    def _save(self) -> None:
        epoch_totals = self.epoch_totals
        if self.batch and launch.world_size() > 1:  # mid-epoch: every rank's rows so far, kept by rank 0
            epoch_totals = dataclasses.replace(epoch_totals)
            launch.sum_counters(epoch_totals, self.setup.device)
        if self.main:
            records.save_checkpoint(self.dir / records.CHECKPOINT, self._state(epoch_totals))

    # -- training -------------------------------------------------------------------------------------
    def train_step(self, epoch: int, batch: int) -> StepInfo:
        """One step on this rank's share of batch ``batch`` of ``epoch``'s order, as ``run`` takes it (the
        step-time benchmark's ``--suite`` mode times it); with ``accumulate`` = k, one step over k
        micro-batches of it (``step([closures], index=[...])``)."""
        s, cfg = self.setup, self.config
        index = launch.shard(self._order(epoch)[batch * cfg.batch_size : (batch + 1) * cfg.batch_size])
        device_index = index.to(s.device)
        x = s.train_x[device_index]
        if s.augment.active:
            ranked = (launch.rank(),) if launch.world_size() > 1 else ()
            x = s.augment(x, torch.Generator().manual_seed(child_seed(cfg.seed, epoch, batch, *ranked)))
        y = s.train_y[device_index]
        firsts: list[list[torch.Tensor]] = []  # per micro-batch: loss sum, hits, rows of its first forward
        if cfg.accumulate == 1:
            closure = self._closure(x, y, firsts, device_index)
            info = s.optimizer.step(closure, index=index, scaler=self.scaler)
        else:
            parts = [p for p in torch.arange(len(index)).tensor_split(cfg.accumulate) if len(p)]
            closures = [
                self._closure(x[p.to(s.device)], y[p.to(s.device)], firsts, device_index[p.to(s.device)])
                for p in parts
            ]
            info = s.optimizer.step(closures, index=[index[p] for p in parts], scaler=self.scaler)
        self._schedule_lr(epoch, batch + 1)
        self.epoch_totals.add(info)
        if not info.skipped:
            for first in filter(None, firsts):  # micro-batches whose closure ran
                self.epoch_totals.loss_sum += float(first[0])
                self.epoch_totals.correct += int(first[1])
                self.epoch_totals.seen += int(first[2])
            self.epoch_totals.batch_rows += info.batch_size
        return info

    def _closure(
        self, x: torch.Tensor, y: torch.Tensor, firsts: list[list[torch.Tensor]], index: torch.Tensor
    ):
        """``closure(rows)`` → per-sample losses of rows of (x, y), forwards under ``--amp``'s autocast;
        its first forward (at the unperturbed weights) leaves its loss sum and hits in ``firsts``. A method
        with a trajectory loss (SAF, MESA: ``add_trajectory_loss``) adds it to the losses (not to the
        recorded train loss), given the rows' logits, dataset ``index`` and inputs."""
        s = self.setup
        trajectory = getattr(s.optimizer, "add_trajectory_loss", None)
        first: list[torch.Tensor] = []
        firsts.append(first)

        def closure(rows: torch.Tensor | slice) -> torch.Tensor:
            if isinstance(rows, torch.Tensor):
                rows = rows.to(s.device, non_blocking=True)
            with launch.autocast(self.config.amp, s.device):
                out = s.model(x[rows])
                losses = s.task.loss(out, y[rows])
            if not first:
                correct, counted = s.task.hits(out, y[rows])
                first.extend((losses.detach().float().sum(), correct, torch.tensor(counted)))
            if trajectory is not None:
                with launch.autocast(self.config.amp, s.device):
                    losses = trajectory(losses, out, index[rows], x[rows])
            return losses

        return closure

    def _order(self, epoch: int) -> torch.Tensor:
        """The epoch's sample order: a permutation seeded by (seed, epoch), so a resumed run sees the same,
        restricted to the samples the method's selection keeps in this epoch (InfoBatch prunes some)."""
        if self._orders[0] != epoch:
            generator = torch.Generator().manual_seed(child_seed(self.config.seed, epoch))
            order = torch.randperm(len(self.setup.train_x), generator=generator)
            kept = self.setup.optimizer.selection.epoch_indices(epoch, order)
            self._orders = (epoch, launch.padded(kept))  # every rank gets rows in every batch
        return self._orders[1]

    def batches(self, epoch: int) -> int:
        """Batches in ``epoch`` (fewer where the selection prunes rows: InfoBatch)."""
        return math.ceil(len(self._order(epoch)) / self.config.batch_size)

    def _schedule_lr(self, epoch: int, done: int) -> None:
        """Step the LR schedule to ``done`` batches into ``epoch``. The schedule is laid out on the
        full-data steps; an epoch with fewer batches (InfoBatch) moves through its share of it in
        proportion, as the official InfoBatch code rescales a step-based schedule every epoch."""
        s = self.setup
        batches = self.batches(epoch)
        position = epoch * s.steps_per_epoch + (done * s.steps_per_epoch) // batches
        s.scheduler.last_epoch = position - 1
        s.scheduler.step()

    def _finish_epoch(self, epoch: int) -> dict[str, Any]:
        s, e = self.setup, self.epoch_totals
        launch.sync_epoch(e, s.model, s.device)  # totals over the ranks, rank 0's BatchNorm statistics
        self.totals.accumulate(e)
        tested = self._evaluate(epoch)
        row = {
            "epoch": epoch,
            **train_figures(e),
            **tested,
            "epoch_time": e.train_time,
            "train_time": self.totals.train_time,
            "train_cpu_time": self.totals.cpu_time,  # NaN (null): resumed from a checkpoint without it
            "forward_samples": self.totals.forward_samples,
            "backward_samples": self.totals.backward_samples,
            "samples": self.totals.samples,
            "cost": self.totals.cost,
            "ascent_fraction": e.ascents / max(1, e.steps),
            "skipped": e.skipped,
            "lr": s.optimizer.param_groups[0]["lr"],
        }
        self.metrics.append(row)
        if self.main:
            records.write_jsonl(self.dir / records.METRICS, self.metrics)
        for logger in self.loggers:
            logger.log(self.metrics)
        return row

    def _evaluate(self, epoch: int) -> dict[str, float | None]:
        """Test metrics every ``eval_every`` epochs and after the last; with a validation split, its
        ``val_loss``/``val_acc`` after every epoch, and the test metrics also at every epoch whose
        validation accuracy beats all earlier ones, so the early-stopped test accuracy
        (``analysis.early_stopping``) is always measured."""
        s, cfg = self.setup, self.config
        tested: dict[str, float | None] = {"test_loss": None, "test_acc": None}
        scheduled = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        if s.val_x is None and not scheduled:
            return tested
        model = launch.unwrap(s.model)
        precise = cfg.eval_bn == "precise"
        with precise_bn(model, s.train_x, cfg.batch_size) if precise else contextlib.nullcontext():
            model.eval()
            if s.val_x is not None:
                val = s.task.evaluate(model, s.val_x, s.val_y, s.data)
                tested.update(val_loss=val["test_loss"], val_acc=val["test_acc"])
                scheduled = scheduled or analysis.new_best(self.metrics, val["test_acc"])
            if scheduled:
                tested.update(s.task.evaluate(model, s.test_x, s.test_y, s.data))
            model.train()
        return tested

    def run(self, interrupt_at: tuple[int, int] | None = None) -> dict[str, Any]:
        """Train to the end, or stop on Ctrl-C/SIGTERM (or at ``interrupt_at = (epoch, batch)``, a simulated
        one for tests) with ``Interrupted``.

        A signal is deferred (``flatsam.train.interrupts``): the step in flight, the end-of-epoch
        evaluation and any checkpoint write complete, then a checkpoint of the next step boundary is written
        and the run stops, so ``--resume`` continues bit for bit (weights, buffers, counters, cost). A
        second signal stops at once, keeping the last checkpoint on disk."""
        s, cfg = self.setup, self.config
        bar = tqdm(
            total=cfg.epochs * s.steps_per_epoch,
            initial=self.epoch * s.steps_per_epoch + self.batch,
            desc=cfg.label or cfg.method,
            disable=not (self.progress and self.main),
            unit="step",
            leave=False,
        )
        stop = DeferredInterrupt()
        checkpoint = self.dir / records.CHECKPOINT
        try:
            with stop:
                try:
                    self._train(bar, stop, interrupt_at)
                except _Stop:
                    self._save()
                    raise Interrupted(
                        f"interrupted at epoch {self.epoch}, step {self.batch}; checkpoint saved to "
                        f"{checkpoint}; continue with --resume",
                        stop.received or signal.SIGINT,
                    ) from None
                if stop.received is not None:  # during the last evaluation: stop with a checkpoint too
                    self._save()
                    raise Interrupted(
                        f"interrupted after the last epoch, before {records.RESULT} was written; checkpoint "
                        f"saved to {checkpoint}; finish with --resume",
                        stop.received,
                    )
                result = self._result()
        except KeyboardInterrupt:
            if checkpoint.exists():
                kept = f"the last checkpoint ({checkpoint}) is kept; continue with --resume"
            else:
                kept = "no checkpoint yet; start again with --overwrite"
            raise Interrupted(
                f"stopped at once; {kept}",
                stop.received or signal.SIGINT,
                saved=False,
            ) from None
        finally:
            bar.close()
            self.close()
        if not self.keep_checkpoint and self.main:
            (self.dir / records.CHECKPOINT).unlink(missing_ok=True)
        return result

    def _train(self, bar: tqdm, stop: DeferredInterrupt, interrupt_at: tuple[int, int] | None) -> None:
        s, cfg = self.setup, self.config
        while self.epoch < cfg.epochs:
            s.optimizer.set_epoch(self.epoch)
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                while self.batch < self.batches(self.epoch):
                    if interrupt_at == (self.epoch, self.batch):
                        stop.request()
                    if stop.received is not None:
                        raise _Stop
                    self.train_step(self.epoch, self.batch)
                    self.batch += 1
                    if not bar.disable:
                        self._show(bar, time.perf_counter() - start)
                    bar.update(1)
            finally:
                self._sync()
                self.epoch_totals.train_time += time.perf_counter() - start
                self.epoch_totals.cpu_time += time.process_time() - cpu_start
            row = self._finish_epoch(self.epoch)
            if self.epoch_lines and self.main:
                tqdm.write(epoch_line(row, cfg.epochs))
            self.epoch, self.batch, self.epoch_totals = self.epoch + 1, 0, Totals()
            self._save()

    def _show(self, bar: tqdm, elapsed: float) -> None:
        """The epoch's running loss and train accuracy, throughput and the last test accuracy on the bar
        (drawn at the bar's own pace: no refresh here)."""
        e = self.epoch_totals
        test = next((m["test_acc"] for m in reversed(self.metrics) if m["test_acc"] is not None), None)
        figures = bar_figures(self.epoch, e.loss_sum, e.correct, e.seen, e.samples, elapsed, test)
        bar.set_postfix(figures, refresh=False)

    def _sync(self) -> None:
        if self.setup.device.type == "cuda":
            torch.cuda.synchronize(self.setup.device)

    def _result(self) -> dict[str, Any]:
        t, last = self.totals, self.metrics[-1]
        result = {
            "method": self.config.method,
            "label": self.config.label or self.config.method,
            "seed": self.config.seed,
            "epochs": self.config.epochs,
            "final_test_acc": last["test_acc"],
            "best_test_acc": max(m["test_acc"] for m in self.metrics if m["test_acc"] is not None),
            "final_test_loss": last["test_loss"],
            "final_train_acc": last["train_acc"],
            **analysis.early_stopping(self.metrics),
            **{
                f"final_{k}": v
                for k, v in last.items()
                if k.startswith("test_") and k not in ("test_loss", "test_acc")
            },
            "train_time": t.train_time,
            "train_cpu_time": t.cpu_time,
            "cost": t.cost,
            "steps": t.steps,
            "skipped_steps": t.skipped,
            "ascent_fraction": t.ascents / max(1, t.steps),
            "samples": t.samples,
            "forward_samples": t.forward_samples,
            "backward_samples": t.backward_samples,
            "images_per_s": t.samples / max(t.train_time, 1e-9),
            "processes": launch.world_size(),
            "weights_sha256": launch.all_digests(self.setup.model),  # one per rank: equal when in sync
        }
        if self.main:
            records.write_json(self.dir / records.RESULT, result)
        why = failure(t, result)
        if why is not None:
            raise RunFailed(f"run {self.dir} failed: {why}; {records.RESULT} records it")
        return result


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    data: ImageData | None = None,
) -> dict[str, Any]:
    """Run ``config`` to the end and return the contents of ``result.json``."""
    return Run(config, resume=resume, overwrite=overwrite, progress=progress, data=data).run()
