"""Step-time benchmark (``flatsam bench --speed``): torch SGD, a hand-written SAM loop and flatsam's presets,
timed interleaved in one process on the same model, data and batch.

Every contender owns a copy of one initial model and its own optimizer and sees the same batches. After a
warm-up (one epoch at ``set_epoch(0)``, which fills AUSAM's history, then a few steps in the timed epoch,
past every preset's warm-up), the contenders take turns: a block of ``steps`` steps each, A B C … A B C …,
``repeats`` times (the starting contender rotates). Each step is timed alone (CUDA events on a GPU, so the
host never waits on the device between steps), a block's mean is one repeat, and ratios are taken per
repeat between blocks that ran next to each other, then summarised by their median and quartiles.

Memory, per contender: ``held`` counts the bytes of the tensors the optimizer keeps between steps (base
state such as momentum, component state such as AUSAM's history; found by walking the optimizer object,
parameters and their gradients excluded); ``peak`` is the highest allocation during one step above its
start (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the allocation and free events of torch's profiler,
summed in time order). Both are reported as the excess over torch SGD.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flatsam.engine import running_stats_frozen
from flatsam.methods import METHODS, build_method, method_info
from flatsam.models import build_model
from flatsam.train import records
from flatsam.train.config import MethodSpec
from flatsam.train.loop import fused_on, resolve_device

TORCH_SGD, HAND_SAM = "torch-sgd", "hand-sam"
#: presets whose steps without an ascent are compared with a torch SGD step
SKIPPING = ("looksam", "aesam", "arsam")
#: the epoch the timed steps run in: past AUSAM's (1) and ARSAM's (3) warm-up epochs, and inside SAF's and
#: MESA's trajectory term (on from epoch 6 at their default start epoch 5; at 5 it was off, so they were
#: timed as plain SGD). A schedule over the run (``ausam-late``'s kept fraction) is timed at this epoch's
#: value, not its mean.
TIMED_EPOCH = 6
#: the contenders whose steps ``--profile`` breaks down by operator
PROFILED = (TORCH_SGD, HAND_SAM, "sgd", "sam", "ausam", "ausam-0.25")
#: epochs and steps the presets are told the run has (AE-SAM's and InfoBatch's schedules need them)
RUN_EPOCHS = 100
BASE = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
RHO = 0.05  # SAM's and the hand-written loop's radius (the paper's CIFAR-10 value)


def default_contenders() -> list[str]:
    """The references, flatsam's SGD and SAM, AUSAM at keep 0.5 and 0.25, then every other preset."""
    first = [TORCH_SGD, HAND_SAM, "sgd", "sam", "ausam", "ausam-0.25=ausam:keep=0.25"]
    # InfoBatch's official mode prunes whole epochs (fewer steps): a step benchmark times its in-batch mode.
    rest = [name for name in METHODS if name not in ("sgd", "sam", "ausam", "custom", "infobatch")]
    return first + ["infobatch=infobatch:mode=batch"] + rest


def contender_label(text: str) -> str:
    return text if text in (TORCH_SGD, HAND_SAM) else MethodSpec.parse(text).display()


@dataclass(frozen=True)
class SpeedConfig:
    """What to time: contenders (method specs, or ``torch-sgd`` / ``hand-sam``) × models × batch sizes."""

    contenders: tuple[str, ...] = tuple(default_contenders())
    models: tuple[str, ...] = ("cnn", "resnet18")
    batch_sizes: tuple[int, ...] = (128, 256)
    repeats: int = 10
    steps: int = 5  # per block; 5 holds one SAM step of LookSAM (k = 5)
    warmup_steps: int = 2  # untimed steps in the timed epoch, after the warm-up epoch
    batches: int = 4  # distinct batches (the dataset: batches × batch size images)
    image_size: int = 32
    num_classes: int = 10
    channels_last: bool = False  # images and model in the channels-last memory format (as flatsam train)
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    profile: bool = False  # write torch profiler tables of the headline contenders' steps

    def __post_init__(self) -> None:
        for name in ("repeats", "steps", "batches", "image_size", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be >= 1, got {list(self.batch_sizes)}")
        if not self.contenders or not self.models:
            raise ValueError("give at least one contender and one model")
        labels = [contender_label(c) for c in self.contenders]
        if len(set(labels)) != len(labels):
            raise ValueError(f"contender labels must be distinct, got {labels}")


QUICK = SpeedConfig(models=("cnn",), batch_sizes=(16,), repeats=3, steps=2, warmup_steps=1, batches=2)


# -- the contenders ---------------------------------------------------------------------------------------


def base_for(model: nn.Module) -> dict[str, Any]:
    """The base SGD's keywords for ``model``'s device, for every contender alike, as ``flatsam train``
    builds it there (:func:`~flatsam.train.loop.fused_on`: fused on CUDA, the fastest plain loop torch
    offers, so the comparison is conservative)."""
    return {**BASE, **fused_on(next(model.parameters()).device)}


class TorchSGD:
    """The base optimizer alone, the plain loop every user starts from."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), **base_for(model))

    def set_epoch(self, epoch: int) -> None:
        pass

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> bool:
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(x), y).backward()
        self.optimizer.step()
        return False


class HandSAM(TorchSGD):
    """SAM written out in the training loop, the way users copy it (after davda54/sam's ``first_step`` /
    ``second_step``): ε = ρ g/(‖g‖ + 1e-12) with the norm of the per-tensor norms, the weights saved and
    copied back, BatchNorm statistics from the first pass only (the same work flatsam does with
    ``model=``)."""

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> bool:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(x), y).backward()
        with torch.no_grad():
            norm = torch.stack([p.grad.norm(2) for p in params if p.grad is not None]).norm(2)
            scale = RHO / (norm + 1e-12)
            saved = {}
            for p in params:
                if p.grad is not None:
                    saved[p] = p.detach().clone()
                    p.add_(p.grad * scale)
        self.optimizer.zero_grad(set_to_none=True)
        with running_stats_frozen(self.model):
            F.cross_entropy(self.model(x), y).backward()
        with torch.no_grad():
            for p, weights in saved.items():
                p.copy_(weights)
        self.optimizer.step()
        return True


class Flatsam:
    """A registered preset, stepped with the per-sample-loss closure of the user contract (with SAF's and
    MESA's trajectory term added, as ``flatsam train`` does: without it they would refuse the step)."""

    def __init__(self, spec: MethodSpec, model: nn.Module, num_samples: int, steps_per_epoch: int) -> None:
        self.model = model
        options = dict(spec.options)
        if method_info(spec.name).sam_rho and spec.name != "sgd":
            options.setdefault("rho", RHO)
        self.optimizer = build_method(
            spec.name,
            model.parameters(),
            torch.optim.SGD,
            model=model,
            num_samples=num_samples,
            total_steps=RUN_EPOCHS * steps_per_epoch,
            epochs=RUN_EPOCHS,
            overrides=options,
            **base_for(model),
        )

    def set_epoch(self, epoch: int) -> None:
        self.optimizer.set_epoch(epoch)

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> bool:
        model, trajectory = self.model, getattr(self.optimizer, "add_trajectory_loss", None)

        def losses(rows: torch.Tensor | slice) -> torch.Tensor:
            logits = model(x[rows])
            per_sample = F.cross_entropy(logits, y[rows], reduction="none")
            if trajectory is None:
                return per_sample
            return trajectory(per_sample, logits, index[rows], x[rows])  # SAF, MESA: rows is every row

        info = self.optimizer.step(losses, index=index)
        return info.ran_ascent  # known on the host: reading `ascent` would wait for the step on a GPU


Contender = TorchSGD | Flatsam


def make_contender(text: str, model: nn.Module, num_samples: int, steps_per_epoch: int) -> Contender:
    if text == TORCH_SGD:
        return TorchSGD(model)
    if text == HAND_SAM:
        return HandSAM(model)
    return Flatsam(MethodSpec.parse(text), model, num_samples, steps_per_epoch)


# -- measuring --------------------------------------------------------------------------------------------


class Clock:
    """Per-step times: CUDA events on a GPU (read once per block, so steps are not serialised); on one
    CPU thread the process's CPU time (``time.process_time``: the step's time on a core of its own,
    whatever else takes turns on the machine); else ``time.perf_counter``."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.cpu_time = not self.cuda and torch.get_num_threads() == 1
        self.name = "CUDA events" if self.cuda else "CPU time" if self.cpu_time else "wall-clock"

    def mark(self) -> Any:
        if not self.cuda:
            return time.process_time() if self.cpu_time else time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, marks: list[Any]) -> list[float]:
        if not self.cuda:
            return [b - a for a, b in itertools.pairwise(marks)]
        torch.cuda.synchronize()
        return [a.elapsed_time(b) / 1000 for a, b in itertools.pairwise(marks)]


def _tensors(obj: Any, seen: set[int]) -> Iterator[torch.Tensor]:
    """Tensors reachable from ``obj`` through attributes, dict values and sequences; of a module, its
    parameters and buffers (MESA's EMA copy of the model, say)."""
    if id(obj) in seen or isinstance(obj, (torch.Generator, type, str, bytes, int, float)):
        return
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
    elif isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:
            yield from _tensors(value, seen)
    elif hasattr(obj, "__dict__"):
        for name, value in vars(obj).items():
            if name != "param_groups":
                yield from _tensors(value, seen)


def held_bytes(optimizer: Any, model: nn.Module) -> int:
    """Bytes of the distinct storages an optimizer keeps, the model's parameters, gradients and buffers
    excluded."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    own |= {p.grad.untyped_storage().data_ptr() for p in model.parameters() if p.grad is not None}
    storages: dict[int, int] = {}
    for t in _tensors(optimizer, set()):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _cpu_peak(step: Any) -> int | None:
    """Peak bytes allocated during ``step()`` above its start, from the profiler's memory events (``None``
    where this torch's profiler does not expose them)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        sizes = [e.nbytes() for e in sorted(events, key=lambda e: e.start_ns())]
    except AttributeError:
        return None
    return max(itertools.accumulate(sizes, initial=0))


def peak_bytes(contender: Contender, batch: tuple[torch.Tensor, ...], device: torch.device) -> int | None:
    """Peak allocation of one step of ``contender`` (gradients cleared first, as at a loop's start)."""
    contender.model.zero_grad(set_to_none=True)
    if device.type != "cuda":
        return _cpu_peak(lambda: contender.step(*batch))
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    contender.step(*batch)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - start


def profile_table(contender: Contender, batches: list[tuple[torch.Tensor, ...]], device: torch.device) -> str:
    """Operators of a pass over ``batches`` by ``contender``, by self time (the device's on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        for batch in batches:
            contender.step(*batch)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=30)


def quartiles(values: list[float]) -> dict[str, float]:
    """Median, quartiles, min and max."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": median, "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


@dataclass
class Timing:
    """Everything measured for one contender in one (model, batch size) setting."""

    label: str
    block_means: list[float] = field(default_factory=list)  # seconds per step, one per repeat
    skip_steps: list[float] = field(default_factory=list)  # steps without an ascent
    ascent_steps: list[float] = field(default_factory=list)
    held: int = 0
    peak: int | None = None


def run_setting(config: SpeedConfig, model_name: str, batch_size: int, progress: bool) -> dict[str, Any]:
    """Warm up and time every contender on one model and batch size, on random images."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    n = config.batches * batch_size
    shape = (n, 3, config.image_size, config.image_size)
    memory = torch.channels_last if config.channels_last else torch.contiguous_format
    images = torch.randn(shape).to(device).contiguous(memory_format=memory)
    labels = torch.randint(0, config.num_classes, (n,)).to(device)
    order = torch.randperm(n)
    batches = [(images[i.to(device)], labels[i.to(device)], i) for i in order.split(batch_size)]
    initial = build_model(model_name, 3, config.num_classes).to(device, memory_format=memory)
    contenders = {
        contender_label(text): make_contender(text, copy.deepcopy(initial), n, config.batches)
        for text in config.contenders
    }
    title = f"{model_name} batch {batch_size}"
    timed = time_contenders(contenders, batches, batch_size, config, device, title, progress)
    return {"model": model_name, **timed}


def time_contenders(
    contenders: dict[str, Any],
    batches: list[tuple[Any, ...]],
    batch_size: int,
    config: SpeedConfig,
    device: torch.device,
    title: str,
    progress: bool,
) -> dict[str, Any]:
    """Warm every contender up (an epoch of ``batches`` at ``set_epoch(0)``, then ``warmup_steps`` steps of
    the timed epoch), time them in interleaved blocks, measure their memory: ``summarise``'s rows and
    ratios, the clock, and profiler tables when ``config.profile``. A contender has ``set_epoch(epoch)``,
    ``step(*batch) -> ascended``, ``model`` and ``optimizer``."""
    timings = {label: Timing(label) for label in contenders}
    cursor = dict.fromkeys(contenders, 0)
    clock = Clock(device)

    def run(label: str, count: int) -> tuple[list[Any], list[bool]]:
        marks, ascents = [clock.mark()], []
        for _ in range(count):
            ascents.append(contenders[label].step(*batches[cursor[label] % len(batches)]))
            cursor[label] += 1
            marks.append(clock.mark())
        return marks, ascents

    for label, contender in contenders.items():  # the warm-up epoch, then the first steps of the timed one
        contender.set_epoch(0)
        run(label, len(batches))
        contender.set_epoch(TIMED_EPOCH)
        run(label, config.warmup_steps)
    labels = list(contenders)
    for repeat in range(config.repeats):
        if progress:
            print(f"  {title}: repeat {repeat + 1}/{config.repeats}", flush=True)
        shift = repeat % len(labels)
        for label in labels[shift:] + labels[:shift]:
            marks, ascents = run(label, config.steps)
            times = clock.seconds(marks)
            timing = timings[label]
            timing.block_means.append(sum(times) / len(times))
            for seconds, ascent in zip(times, ascents, strict=True):
                (timing.ascent_steps if ascent else timing.skip_steps).append(seconds)
    for label, contender in contenders.items():
        timing = timings[label]
        timing.held = held_bytes(contender.optimizer, contender.model)
        timing.peak = peak_bytes(contender, batches[0], device)
    setting = {"batch_size": batch_size, **summarise(timings, batch_size), "clock": clock.name}
    if config.profile:
        setting["profiles"] = {
            label: profile_table(contenders[label], batches, device)
            for label in PROFILED
            if label in contenders
        }
    return setting


def _paired(a: Timing, b: Timing) -> dict[str, float]:
    """Per-repeat ratios a/b of blocks that ran in the same round, summarised."""
    return quartiles([x / y for x, y in zip(a.block_means, b.block_means, strict=True)])


def summarise(timings: dict[str, Timing], batch_size: int) -> dict[str, Any]:
    """Per contender: step time, throughput, ascent fraction, memory; and the paired ratios."""
    rows = []
    base = timings.get(TORCH_SGD)
    plain = base or timings.get("sgd")  # the memory baseline: torch SGD, else flatsam's SGD preset
    for t in timings.values():
        step = quartiles(t.block_means)
        rows.append(
            {
                "label": t.label,
                "step_s": step,
                "images_per_s": batch_size / step["median"],
                "ascent_fraction": len(t.ascent_steps) / (len(t.ascent_steps) + len(t.skip_steps)),
                "skip_step_s": statistics.median(t.skip_steps) if t.skip_steps else None,
                "held_bytes": t.held,
                "peak_bytes": t.peak,
                "held_extra_bytes": None if plain is None else t.held - plain.held,
                "peak_extra_bytes": None
                if plain is None or t.peak is None or plain.peak is None
                else t.peak - plain.peak,
                "block_means_s": t.block_means,
            }
        )
    ratios: dict[str, dict[str, float]] = {}
    pairs = [
        ("ausam / sam", "ausam", "sam"),
        ("ausam-0.25 / sam", "ausam-0.25", "sam"),
        ("ausam / torch-sgd", "ausam", TORCH_SGD),
        ("ausam-0.25 / torch-sgd", "ausam-0.25", TORCH_SGD),
        ("sam / hand-sam", "sam", HAND_SAM),
        ("sgd / torch-sgd", "sgd", TORCH_SGD),
    ]
    if "sgd" in timings:  # every other contender against flatsam's SGD, run in the same rounds
        pairs += [(f"{label} / sgd", label, "sgd") for label in timings if label not in ("sgd", TORCH_SGD)]
    for name, a, b in pairs:
        if a in timings and b in timings and name not in ratios:
            ratios[name] = _paired(timings[a], timings[b])
    if base is not None:
        sgd_step = statistics.median(base.skip_steps)
        for label in SKIPPING:
            if label in timings and timings[label].skip_steps:
                ratios[f"{label} skipping step / torch-sgd"] = {
                    "median": statistics.median(timings[label].skip_steps) / sgd_step
                }
    return {"rows": rows, "ratios": ratios}


# -- the report -------------------------------------------------------------------------------------------


def _size(value: int | None) -> str:
    """Signed bytes in B, KiB or MiB."""
    if value is None:
        return "–"
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:+.2f} {unit}"
    return f"{value:+d} B"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{1000 * value:.1f}"


def random_setup(config: SpeedConfig) -> str:
    """What the random-image settings time, for the report's first paragraph."""
    return (
        f"Random 3×{config.image_size}×{config.image_size} images "
        f"({'channels-last' if config.channels_last else 'contiguous'} memory format), "
        f"{config.num_classes} classes, {config.batches} distinct batches; SGD lr {BASE['lr']}, momentum "
        f"{BASE['momentum']}, weight decay {BASE['weight_decay']} (every contender's SGD `fused=True` on "
        f"CUDA, as `flatsam train` builds it), ρ {RHO} where on SAM's scale."
    )


def markdown(result: dict[str, Any]) -> str:
    env, cfg = result["environment"], result["config"]
    lines = [
        "# flatsam step-time benchmark",
        "",
        f"{env['cpu']} ({env['cpu_count']} logical CPUs, {env['torch_threads']} torch threads), device "
        f"{env['device']}{' (' + env['gpu'] + ')' if 'gpu' in env else ''}; torch {env['torch']}, "
        f"Python {env['python']}, flatsam {env['flatsam']}; {result['date']}.",
        "",
        f"{result['setup']} Contenders interleaved: {cfg['repeats']} "
        f"repeats of {cfg['steps']} steps each after a warm-up epoch and {cfg['warmup_steps']} more steps "
        f"(timed epoch {TIMED_EPOCH}). Step time: median over repeats of a block's mean [quartiles]. "
        "Ratios: median [quartiles] of per-repeat ratios. Memory: excess over torch SGD (flatsam's SGD where "
        "torch SGD is not timed) of the tensors the optimizer holds between steps, and of the peak "
        "allocation during one step.",
    ]
    if result.get("command"):
        lines += ["", f"Command: `{result['command']}`"]
    for setting in result["settings"]:
        lines += [
            "",
            f"## {setting.get('suite', setting['model'])}, batch {setting['batch_size']}",
            "",
            f"Timed on {setting.get('clock', 'wall-clock')}.",
            "",
            "| contender | step ms [q1, q3] | images/s | ascent fraction | skipping step ms | held | peak |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in setting["rows"]:
            s = row["step_s"]
            lines.append(
                f"| {row['label']} | {_ms(s['median'])} [{_ms(s['q1'])}, {_ms(s['q3'])}] | "
                f"{row['images_per_s']:.0f} | {row['ascent_fraction']:.2f} | {_ms(row['skip_step_s'])} | "
                f"{_size(row['held_extra_bytes'])} | {_size(row['peak_extra_bytes'])} |"
            )
        if setting["ratios"]:
            lines += ["", "| ratio | median [q1, q3] |", "|---|---|"]
            for name, r in setting["ratios"].items():
                spread = f" [{r['q1']:.3f}, {r['q3']:.3f}]" if "q1" in r else ""
                lines.append(f"| {name} | {r['median']:.3f}{spread} |")
    return "\n".join(lines) + "\n"


def run_speed(
    config: SpeedConfig, out: Path, *, command: str | None = None, progress: bool = True
) -> dict[str, Path]:
    """Time every (model, batch size) setting on random images; write ``speed.md`` and ``speed.json``."""
    for text in config.contenders:
        if text not in (TORCH_SGD, HAND_SAM):
            method_info(MethodSpec.parse(text).name)  # fail on a bad name before any timing
    for model_name in config.models:
        build_model(model_name, 3, config.num_classes)

    def settings() -> list[dict[str, Any]]:
        return [
            run_setting(config, model_name, batch_size, progress)
            for model_name in config.models
            for batch_size in config.batch_sizes
        ]

    return write_speed(config, random_setup(config), settings, out, command)


def write_speed(
    config: SpeedConfig,
    setup: str,
    measure: Callable[[], list[dict[str, Any]]],
    out: Path,
    command: str | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Run ``measure`` on ``config.threads`` threads (put back after), then write ``speed.md``,
    ``speed.json`` and any profiler tables into ``out``; ``setup`` says what was timed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or threads)
    try:
        settings = measure()
        environment = records.environment(resolve_device(config.device))
    finally:
        torch.set_num_threads(threads)
    result = {
        "environment": environment,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "setup": setup,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
        **(extra or {}),
        "settings": settings,
    }
    paths = {"md": Path(out) / "speed.md", "json": Path(out) / "speed.json"}
    for setting in settings:
        for label, table in setting.pop("profiles", {}).items():
            name = f"profile-{setting.get('suite', setting['model'])}-b{setting['batch_size']}-{label}.txt"
            records.atomic_write(Path(out) / name, lambda f, table=table: f.write(table.encode()))
            paths[name] = Path(out) / name
    records.atomic_write(paths["md"], lambda f: f.write(markdown(result).encode()))
    records.write_json(paths["json"], result)
    return paths
