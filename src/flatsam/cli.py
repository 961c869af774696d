"""Command line: ``flatsam train | bench | report | methods`` (also ``python -m flatsam``)."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

from flatsam.train.config import MethodSpec, TrainConfig, parse_options
from flatsam.train.grid import SUITE_NAMES as GRID_SUITES

CONFIG_HELP = {
    "dataset": "dataset: fashion-mnist, cifar10, cifar100, tiny-imagenet or synthetic",
    "data_dir": "folder (or tarball) holding the dataset files (unset: $FLATSAM_DATA, then the usual places)",
    "subset": "train on a seeded, class-stratified subset of this many images (unset: all of them)",
    "label_noise": "fraction of training labels replaced by a different random class (seeded)",
    "model": "network name (cnn, mlp, resnet8…110, resnet18, wrn16-8, wrn28-10, pyramidnet110, resnet50, "
    "mobilenetv1)",
    "epochs": "number of epochs",
    "batch_size": "minibatch size",
    "optimizer": "base optimizer: sgd or adam",
    "lr": "peak learning rate (cosine decay to 0 per iteration)",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay (coupled L2, as torch.optim.SGD)",
    "lr_warmup_epochs": "linear LR warm-up length in epochs",
    "label_smoothing": "label smoothing ε of the cross-entropy",
    "smoothing_form": "torch: ε/K to every class (F.cross_entropy); authors: 1-ε to the true class, "
    "ε/(K-1) to each other (the AUSAM/vSAM/davda54 code; use it to reproduce their recipes)",
    "crop_padding": "random-crop padding in pixels (0 = off)",
    "cutout": "cutout square size in pixels (0 = off)",
    "seed": "training seed (initialisation, batch order, augmentation, method randomness)",
    "data_seed": "seed of the training subset and of the label noise",
    "threads": "torch.set_num_threads (unset: torch's choice)",
    "device": "cpu, cuda, cuda:N or auto",
    "eval_batch_size": "batch size of the test evaluation",
    "eval_every": "evaluate on the test set every N epochs (and after the last)",
    "val_fraction": "hold out this fraction of the training rows (stratified, seeded by --data-seed, with "
    "the same label noise) as a validation split, evaluated every epoch; result.json then records the test "
    "accuracy at the best-validation epoch (early_stopped_test_acc). 0 (default): no split",
    "eval_bn": "BatchNorm statistics of the evaluation: running (the training's moving average) or precise "
    "(recomputed over the training set for each evaluation, then put back; training is unchanged)",
    "task": "classify, or pose (SimCC keypoints; changes the values marked 'with --task pose')",
    "quantize": "quantization-aware training with LSQ, e.g. w4a4 (weight/activation bits in 2, 3, 4, 8; "
    "first and last layer at 8 bits)",
    "quantize_init": "full-precision run folder or checkpoint to start quantization-aware training from",
    "pose_size": "pose input size in pixels (square crops)",
    "simcc_split": "SimCC splitting factor (bins per pixel)",
    "simcc_sigma": "SimCC label sigma in bins (default: 6 at 256 px, scaled to --pose-size)",
    "amp": "mixed precision of the forward passes: bf16 (autocast) or fp16 (autocast and a GradScaler) "
    "(unset: float32)",
    "accumulate": "split each batch into this many micro-batches, one step over all (gradient accumulation)",
    "log": "also log each epoch to: csv, tensorboard, wandb (comma-separated; wandb offline without network; "
    "unset: metrics.jsonl only)",
}
COMPONENT_KINDS = ("schedule", "selection", "perturbation", "reuse")
FLAGS = {
    "nesterov": "Nesterov momentum",
    "flip": "random horizontal flips",
    "download": "download if missing",
    "channels_last": "channels-last memory format",
    "perturb_step_sizes": "let SAM's ascent perturb the LSQ step sizes too, not only the latent weights",
}


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help where X is a real value (not None, not an unset
    switch) and the help does not already state its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == argparse.SUPPRESS:
            return text
        value = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else shown(default)
        return f"{text} (default: {value.replace('%', '%%')})"


def shown(value: Any) -> str:
    """A default as ``--help`` writes it: on/off for switches, ``%g`` for floats."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_default(name: str) -> str:
    """`` (default: X)`` for a TrainConfig field, from ``TrainConfig()``, with ``--task pose``'s value where
    that task changes it; empty where the field is unset by default (its help says what unset means)."""
    from flatsam.train.tasks import TASK_DEFAULTS

    value = getattr(TrainConfig(), name)
    if value is None or "default" in CONFIG_HELP.get(name, FLAGS.get(name, "")):
        return ""
    pose = TASK_DEFAULTS["pose"].get(name, value)
    extra = f"; with --task pose: {shown(pose)}" if pose != value else ""
    return f" (default: {shown(value)}{extra})"


def add_config_arguments(parser: argparse.ArgumentParser, *, suite: bool = False) -> None:
    """One option per TrainConfig field; unspecified options are absent from the namespace. Each help
    shows the TrainConfig default, or, for ``bench`` (``suite=True``), the group says the suite sets them."""
    title = (
        "run configuration (unset options keep the suite's values: see --suite)"
        if suite
        else "run configuration (unset options keep the defaults shown; with --resume: the run's)"
    )
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = "" if suite else config_default(f.name)
        if f.name in FLAGS:
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=FLAGS[f.name] + default,
            )
        elif f.name in CONFIG_HELP:
            kind = {"int": int, "float": float}.get(str(f.type).removesuffix(" | None"), str)
            group.add_argument(
                flag, dest=f.name, type=kind, default=argparse.SUPPRESS, help=CONFIG_HELP[f.name] + default
            )


def overlay(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return config.replace(**{k: v for k, v in vars(args).items() if k in names and v is not None})


def with_task_defaults(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """``config`` with the defaults of the task named by ``--task`` (pose: Adam, batch 64, …)."""
    from flatsam.train.tasks import TASK_DEFAULTS

    task = getattr(args, "task", config.task)
    if task not in TASK_DEFAULTS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASK_DEFAULTS)}")
    return config.replace(task=task, **TASK_DEFAULTS[task])


def check_data_dir(path: Path) -> None:
    """``--data-dir`` is a folder, or an archive (tar or zip) the readers unpack: any other file (say
    ``/etc/passwd``) is refused before a reader tries to download into it."""
    import tarfile
    import zipfile

    if path.is_dir():
        return
    if not path.is_file():
        raise ValueError(f"--data-dir {path} is neither a folder nor a file")
    try:
        archive = tarfile.is_tarfile(path) or zipfile.is_zipfile(path)
    except OSError as error:
        raise ValueError(f"--data-dir {path} cannot be read ({error.strerror})") from None
    if not archive:
        raise ValueError(f"--data-dir {path} is a file, not a folder or a tar/zip archive of the dataset")


def check_names(config: TrainConfig) -> None:
    """Fail on unknown method, dataset or model names before any data is loaded."""
    from flatsam.data.registry import canonical_name
    from flatsam.methods import method_info
    from flatsam.models import MODELS
    from flatsam.pose import POSE_DATASETS

    method_info(config.method)
    if config.data_dir is not None and not Path(config.data_dir).expanduser().exists():
        raise FileNotFoundError(
            f"--data-dir {config.data_dir} does not exist (give the folder or tarball "
            "that holds the dataset, or leave it out to use the default places)"
        )
    if config.data_dir is not None:
        check_data_dir(Path(config.data_dir).expanduser())
    if config.task == "pose":
        if config.dataset not in POSE_DATASETS:
            raise ValueError(f"unknown pose dataset {config.dataset!r}; valid: {', '.join(POSE_DATASETS)}")
    else:
        canonical_name(config.dataset)
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; valid models: {', '.join(MODELS)}")


# -- subcommands ----------------------------------------------------------------------------------------


def quick_settings(dataset: str) -> dict[str, Any]:
    """``--quick``: 2 epochs on 600 training images (all 512 of the synthetic set)."""
    return {"subset": None if dataset == "synthetic" else 600, "epochs": 2}


def given_config(args: argparse.Namespace) -> TrainConfig:
    """The configuration of a new run from the command line (defaults, task defaults, flags, method)."""
    config = overlay(with_task_defaults(TrainConfig(), args), args)
    if args.quick:
        config = overlay(config.replace(**quick_settings(config.dataset)), args)
    spec = MethodSpec.parse("ausam" if args.method is None else args.method)
    parts = {kind: getattr(args, kind) for kind in COMPONENT_KINDS if getattr(args, kind) is not None}
    if parts and spec.name != "custom":
        raise ValueError(f"--{'/--'.join(parts)} compose a method: use them with --method custom")
    options = {**spec.options, **parts, **parse_options(args.opt or [], "--opt")}
    return config.replace(method=spec.name, method_options=options, label=args.name or spec.display())


def train_folder(args: argparse.Namespace) -> Path:
    """``--run-dir``, else ``runs/NAME`` (``--name``, checked to stay inside ``runs/``), else the method."""
    from flatsam.train.rundir import run_folder

    if args.run_dir:
        return Path(args.run_dir)
    if args.name is not None:
        return run_folder("runs", args.name)
    if args.resume:
        raise ValueError("--resume needs --name (or --run-dir) of the run to continue")
    return run_folder("runs", MethodSpec.parse("ausam" if args.method is None else args.method).display())


def resumed_config(run_dir: Path, args: argparse.Namespace) -> TrainConfig:
    """The configuration saved in ``run_dir/config.json``; flags given again must agree with it (only
    ``--threads`` may change), else the error lists each difference."""
    from flatsam.train import records
    from flatsam.train.loop import RESUME_MAY_CHANGE

    path = run_dir / records.CONFIG
    if not records.check_regular(path):  # a link, FIFO or device in its place is refused, naming it
        raise FileNotFoundError(f"--resume: no run at {run_dir} (no {records.CONFIG})")
    try:
        saved = TrainConfig.from_dict(records.read_json(path)["config"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--resume: {path} is not a flatsam run configuration ({error})") from None
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.method is not None or args.opt or any(getattr(args, kind) for kind in COMPONENT_KINDS):
        method = given_config(args)
        given.update(method=method.method, method_options=method.method_options)
    if args.quick:
        given = {**quick_settings(given.get("dataset", saved.dataset)), **given}
    old, new = records.plain_config(saved.to_dict()), records.plain_config(given)
    differ = [
        f"{k}={new[k]!r} (the run has {old[k]!r})"
        for k in new
        if k not in RESUME_MAY_CHANGE and new[k] != old[k]
    ]
    if differ:
        raise ValueError(
            f"--resume: {run_dir} was made with other settings: {'; '.join(differ)}; drop these flags "
            "(the run's config.json is used) or start a new run under another --name"
        )
    kept = {k: v for k, v in given.items() if k in RESUME_MAY_CHANGE and k != "run_dir"}
    return saved.replace(**kept, run_dir=str(run_dir))


def early_stopped(result: dict[str, Any]) -> str:
    """``", early-stopped X% (epoch N)"`` for a run with a validation split, else nothing."""
    acc = result.get("early_stopped_test_acc")
    return "" if acc is None else f", early-stopped {100 * acc:.2f}% (epoch {result['best_val_epoch'] + 1})"


def cmd_train(args: argparse.Namespace) -> int:
    from flatsam.train.loop import Run, check_method

    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    run_dir = train_folder(args)
    if args.resume:
        config = resumed_config(run_dir, args)
    else:
        config = given_config(args).replace(run_dir=str(run_dir))
    check_names(config)
    check_method(config)
    from flatsam.train import launch

    with launch.distributed(config.device):  # joins torchrun's process group, if any
        # the Run is a temporary, not a local: it and its DDP model are freed before the process group
        progress = not args.no_progress
        result = Run(
            config,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=progress,
            epoch_lines=True,
            keep_checkpoint=args.keep_checkpoint,
        ).run()
        if not launch.is_main():
            return 0
    metric = "test accuracy"
    if config.task == "pose":
        metric = "PCKh@0.5" if result.get("final_test_pckh") is not None else "PCK@0.2"
    print(
        f"{result['label']}: {metric} {100 * result['final_test_acc']:.2f}% "
        f"(best {100 * result['best_test_acc']:.2f}%{early_stopped(result)}), "
        f"{result['train_time']:.1f} s of training, "
        f"cost {result['cost']:.2f}× SGD, ascent fraction {result['ascent_fraction']:.2f} → {run_dir}"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.speed and args.suite is None:
        return cmd_speed(args)
    from flatsam.train.bench import SUITES, method_configs, run_bench

    suite_name = "quick" if args.quick and not args.speed else args.suite or "default"
    suite = SUITES[suite_name]
    specs = [MethodSpec.parse(m) for m in (args.methods or suite.methods)]
    asked = getattr(args, "task", suite.config.task)
    base = suite.config if asked == suite.config.task else with_task_defaults(suite.config, args)
    if "epochs" in vars(args) and "lr_warmup_epochs" not in vars(args) and base.lr_warmup_epochs:
        # the suite's warm-up is a fraction of its epochs: keep the fraction for the epochs given
        warmup = base.lr_warmup_epochs * args.epochs / base.epochs
        print(f"flatsam: LR warm-up {warmup:g} epochs (the suite's fraction of --epochs)", file=sys.stderr)
        base = base.replace(epochs=args.epochs, lr_warmup_epochs=warmup)
    config = overlay(base, args)
    for spec in specs:
        check_names(config.replace(method=spec.name))
    rho = args.rho if args.rho is not None else suite.rho
    if args.speed:
        return cmd_speed(args, (suite_name, method_configs(config, specs, 0, Path(), rho)))
    out = Path(args.out or Path("runs") / "bench" / suite_name)
    seeds = args.seeds if args.seeds is not None else list(suite.seeds)
    if args.dry_run:
        from flatsam.train import dryrun

        runs = dryrun.plan(config, specs, seeds, rho)
        print(dryrun.describe(suite_name, suite.description, runs, args.probe_steps, not args.no_progress))
        return 0
    command = "flatsam " + shlex.join(args.argv) if args.record_command else None
    paths = run_bench(
        config,
        specs,
        seeds,
        out,
        rho=rho,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        command=command,
    )
    print(paths["md"].read_text())
    print("written:", ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_speed(args: argparse.Namespace, suite: tuple[str, list[TrainConfig]] | None = None) -> int:
    """``bench --speed``: step times on random images, or with ``suite`` (its name and one run
    configuration per method) of that suite's own runs through the training loop's step."""
    from flatsam.train.speed import QUICK, SpeedConfig, run_speed
    from flatsam.train.speed_suite import run_suite_speed

    refuse_unused_speed_options(args, suite is not None)
    given = {
        "contenders": None if suite else args.methods,
        "models": args.models,
        "batch_sizes": args.batch_sizes,
        "repeats": args.repeats,
        "steps": args.steps,
        "device": getattr(args, "device", None),
        "threads": getattr(args, "threads", None),
        "channels_last": None if suite else getattr(args, "channels_last", None),
        "profile": args.profile or None,
    }
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
    config = dataclasses.replace(QUICK if args.quick else SpeedConfig(), **given)
    out = Path(args.out or Path("runs") / "bench" / ("speed" if suite is None else f"speed-{suite[0]}"))
    command = "flatsam " + shlex.join(args.argv) if args.record_command else None
    if suite is None:
        paths = run_speed(config, out, command=command, progress=not args.no_progress)
    else:
        paths = run_suite_speed(config, *suite, out, command=command, progress=not args.no_progress)
    print(paths["md"].read_text())
    print("written:", ", ".join(str(p) for p in paths.values()))
    return 0


#: run options the random-image step-time benchmark uses; the others configure a training run
SPEED_RUN_OPTIONS = ("device", "threads", "channels_last")


def refuse_unused_speed_options(args: argparse.Namespace, suite: bool) -> None:
    """``bench --speed`` ignores what it does not use: refuse such options rather than drop them."""
    if suite:
        unused = [name for name in ("models", "batch_sizes") if getattr(args, name)]
        advice = "with --suite the suite's runs fix the model and batch (change them: --model, --batch-size)"
    else:
        run_options = {f.name for f in dataclasses.fields(TrainConfig)} - set(SPEED_RUN_OPTIONS)
        unused = sorted(run_options & set(vars(args)))
        advice = (
            "they configure a training run, and --speed alone times random images with its own recipe: "
            "choose models and batches with --models and --batch-sizes, or add --suite NAME to time that "
            "suite's runs with these options"
        )
    if unused:
        raise ValueError(f"bench --speed does not use {_flags(unused)}: {advice}")
    if args.seeds or args.dry_run:
        flags = _flags(["seeds", "dry_run"])
        raise ValueError(f"bench --speed does not use {flags}: it times the steps of seed 0's runs")


def _flags(names: list[str]) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in names)


def cmd_report(args: argparse.Namespace) -> int:
    from flatsam.train.report import find_runs, report_folder, write_report

    if args.grid:
        return _grid_report(args)
    out = report_folder(args.paths, args.out)
    runs = find_runs(args.paths)
    paths = write_report(runs, out)
    print(paths["md"].read_text())
    print("written:", ", ".join(str(p) for p in paths.values()))
    return 0


def _grid_report(args: argparse.Namespace) -> int:
    from flatsam.train.grid_report import write_grid_report

    if len(args.paths) != 1:
        raise ValueError(f"--grid reads one folder (the one holding grid-*/), got {len(args.paths)}")
    paths = write_grid_report(Path(args.paths[0]), None if args.out is None else Path(args.out))
    print(paths["md"].read_text())
    print("written:", ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from flatsam.methods import METHODS

    for info in METHODS.values():
        print(f"{info.name:<10} {info.summary}  [{info.paper}]")
        for key, default in info.defaults.items():
            print(f"{'':<12}{key} = {default.value!r}  ({default.source})")
        if info.needs:
            print(f"{'':<12}needs: {', '.join(info.needs)} (filled in by the harness)")
    if args.components:
        from flatsam.perturbation import PERTURBATIONS
        from flatsam.reuse import REUSES
        from flatsam.schedule import SCHEDULES
        from flatsam.selection import SELECTIONS

        print(
            "\ncomponents (compose: flatsam train --method custom --schedule S --selection S ... "
            "--opt selection.keep=0.3):"
        )
        for kind, table in (
            ("schedule", SCHEDULES),
            ("selection", SELECTIONS),
            ("perturbation", PERTURBATIONS),
            ("reuse", REUSES),
        ):
            print(f"  {kind}:")
            for name, cls in table.items():
                doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
                print(f"    {name:<14} {cls.__name__}: {doc}")
    return 0


def add_data_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-url",
        help="mirror holding the dataset files under their official names (URL or folder; overrides "
        "$FLATSAM_MIRROR)",
    )


def cmd_download(args: argparse.Namespace) -> int:
    from flatsam.data.registry import fetch_dataset

    print(fetch_dataset(args.dataset, args.data_dir, images=args.images, progress=not args.no_progress))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from flatsam.train.speed import SpeedConfig

    parser = argparse.ArgumentParser(
        prog="flatsam",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sharpness-aware minimization at the cost of SGD: train, benchmark and compare methods.",
        epilog=textwrap.dedent("""\
            examples:
              flatsam bench --quick                       # one-minute smoke benchmark
              flatsam bench                               # SGD vs SAM vs AUSAM, 3 seeds (~6 min on 2 cores)
              flatsam bench --speed --quick               # step times of every method, interleaved
              flatsam train --method ausam --model resnet8 --epochs 30 --subset 5000 --label-noise 0.4
              flatsam train --method ausam --opt keep=0.3 --opt s_max=1.0
              flatsam train --quantize w4a4 --method sam --model resnet8 --subset 5000
              flatsam train --task pose --method ausam --epochs 10
              flatsam train --quick --amp bf16 --accumulate 2 --log csv,tensorboard
              torchrun --nproc_per_node=2 -m flatsam train --quick   # gloo on CPU, one shard per process
              flatsam report runs/bench/default
              flatsam methods --components"""),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one run", formatter_class=HelpFormatter)
    train.add_argument(
        "--method",
        help="registered method, optionally with options: 'ausam' or 'ausam:keep=0.3,s_max=1' "
        "(default: ausam; with --resume: the run's)",
    )
    train.add_argument("--opt", action="append", metavar="KEY=VALUE", help="a method option (repeatable)")
    train.add_argument("--name", help="run name (folder runs/NAME); default: the method spec")
    train.add_argument("--run-dir", help="run folder (overrides --name)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the run folder, with the configuration of its config.json",
    )
    train.add_argument(
        "--overwrite", action="store_true", help="replace a run already in the run folder (deletes its files)"
    )
    train.add_argument(
        "--quick", action="store_true", help="600 images (the synthetic set: all 512), 2 epochs"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--keep-checkpoint",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the last checkpoint once the run has finished; --no-keep-checkpoint deletes it (a run "
        "stopped early still leaves one to resume from)",
    )
    compose = train.add_argument_group("composition (with --method custom; options as --opt KIND.KEY=VALUE)")
    for kind in COMPONENT_KINDS:
        compose.add_argument(f"--{kind}", help=f"{kind} by name (see: flatsam methods --components)")
    add_config_arguments(train)
    add_data_url(train)
    train.set_defaults(func=cmd_train)

    bench = sub.add_parser(
        "bench",
        help="several methods × seeds on one setup, then a report",
        formatter_class=HelpFormatter,
    )
    bench.add_argument(
        "--suite",
        choices=[
            "default",
            "quick",
            "all",
            "long-n40",
            "long-n20",
            "long-clean",
            "long-n40-crop",
            "long-n20-crop",
            "long-n30-crop",
            "long-n30-crop-150ep",
            "long-n40-crop-10k",
            "ablation",
            "quant",
            "pose",
            "paper-cifar10",
            "paper-cifar100",
            "paper-tiny",
            "paper-pose",
            *GRID_SUITES,
        ],
        help="the suite to run (default: default; with --speed: time this suite's own runs' steps). default: "
        "sgd, sam, ausam × 3 seeds; all: every method and "
        "two compositions; long-n40/long-n20: "
        "the long regime (5× the steps) at 40 %%/20 %% label noise with SAM at SGD's budget and controls; "
        "long-clean: the same without label noise; long-n40-crop: 40 %% noise with random crops, 100 epochs, "
        "precise-BN evaluation (the converged regime); long-n20-crop/long-n30-crop: the same at 20 %%/30 %% "
        "noise, with AUSAM at ρ 0.05 planned for SGD's wall-clock; long-n30-crop-150ep: 30 %% noise for 150 "
        "epochs; long-n40-crop-10k: 40 %% noise, crops, "
        "10,000 images, 60 epochs; "
        "ablation: AUSAM's budget, options and the authors' recipe on the default setting; quant/pose: the "
        "paper's other tasks (LSQ w4a4 QAT; SimCC on the stick-figure stand-in); grid-*: the eight settings "
        "of the robust-promise grid (bench/README, 'The grid')",
    )
    bench.add_argument("--quick", action="store_true", help="the quick suite (about a minute)")
    bench.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs, their optimizer steps and a time estimate from a short probe on --device; "
        "train nothing",
    )
    bench.add_argument(
        "--probe-steps", type=int, default=3, help="timed steps per model and method of --dry-run (0: none)"
    )
    bench.add_argument(
        "--methods",
        nargs="+",
        metavar="SPEC",
        help="method specs: NAME, NAME:key=value,...  or LABEL=NAME:key=value (default: the suite's)",
    )
    bench.add_argument("--seeds", nargs="+", type=int, help="training seeds (default: the suite's)")
    bench.add_argument("--rho", type=float, help="common ρ for methods on SAM's scale (default: the suite's)")
    bench.add_argument("--out", help="output folder (default: runs/bench/SUITE)")
    bench.add_argument("--resume", action="store_true", help="skip finished runs, continue interrupted ones")
    bench.add_argument("--overwrite", action="store_true", help="redo runs already in the output folder")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.add_argument(
        "--record-command",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the command line into results.md",
    )
    speed = bench.add_argument_group(
        "step-time benchmark (--speed; --methods also takes torch-sgd and hand-sam, --quick is a tiny run)"
    )
    speed.add_argument(
        "--speed",
        action="store_true",
        help="time training steps of every method, interleaved, not accuracy: on random images, or with "
        "--suite of that suite's own runs (its data, model and recipe) through flatsam train's step",
    )
    timing = SpeedConfig()
    speed.add_argument("--models", nargs="+", help=f"models to time (default: {' '.join(timing.models)})")
    speed.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        help=f"batch sizes to time (default: {' '.join(map(str, timing.batch_sizes))})",
    )
    speed.add_argument("--repeats", type=int, help=f"interleaved rounds (default: {timing.repeats})")
    speed.add_argument("--steps", type=int, help=f"steps per contender and round (default: {timing.steps})")
    speed.add_argument(
        "--profile", action="store_true", help="also write profiler tables of SGD, SAM and AUSAM steps"
    )
    add_config_arguments(bench, suite=True)
    add_data_url(bench)
    bench.set_defaults(func=cmd_bench)

    report = sub.add_parser(
        "report", help="table and plots from existing run folders", formatter_class=HelpFormatter
    )
    report.add_argument("paths", nargs="+", help="run folders or folders containing them")
    report.add_argument(
        "--out",
        help="where to write results.md/csv and plots, never inside a run folder (default: the first path "
        "when it holds runs; beside a run folder: RUN-report, or report for several runs)",
    )
    report.add_argument(
        "--grid",
        action="store_true",
        help="read PATH as the folder holding the robust-promise grid's settings (grid-*/) and write the "
        "grid's verdict across them into PATH/grid (or --out)",
    )
    report.set_defaults(func=cmd_report)

    methods = sub.add_parser(
        "methods",
        help="every registered method with its defaults and their sources",
        formatter_class=HelpFormatter,
    )
    methods.add_argument("--components", action="store_true", help="also list the composable components")
    methods.set_defaults(func=cmd_methods)

    download = sub.add_parser(
        "download", help="fetch a dataset (checksummed) without training", formatter_class=HelpFormatter
    )
    download.add_argument("dataset", help="cifar10, cifar100, tiny-imagenet, fashion-mnist or mpii")
    download.add_argument("--data-dir", help="target folder (default: $FLATSAM_DATA, else ~/.cache/flatsam)")
    download.add_argument("--images", action="store_true", help="mpii: also the 12.9 GB image tarball")
    download.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_data_url(download)
    download.set_defaults(func=cmd_download)
    return parser


#: Errors that come from what the user gave (flags, files, folders): exit status 2, one line.
USER_ERRORS = (ValueError, KeyError, TypeError, OSError)


def describe(error: BaseException) -> str:
    """One line for ``error``: file-system errors say what failed where, in plain words."""
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.errno is not None:
        where = f"{error.filename}: " if error.filename else ""
        reason = {
            errno.ENOSPC: "no space left on the device",
            errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted",
        }.get(error.errno, error.strerror or str(error))
        kept = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
        return f"{where}{reason}{'; the files written before are intact' if kept else ''}"
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split()) or type(error).__name__


def peer_lost(error: BaseException) -> bool:
    """Under torchrun, a rank other than 0 whose collective failed because another process has gone
    (rank 0 stopped on a bad input, say): that process's message says why, this one need not."""
    lost = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    return (
        int(os.environ.get("WORLD_SIZE", "1")) > 1
        and os.environ.get("RANK", "0") != "0"
        and isinstance(error, RuntimeError)
        and any(text in str(error) for text in lost)
    )


def ignore_signals() -> None:
    """After a stop on a signal the process only exits: a further Ctrl-C or SIGTERM (impatient users
    press it twice) must not raise inside the interpreter's exit handlers and print a traceback."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _interrupted(entry_point: bool) -> int:
    """Ctrl-C (pressed twice, or outside the training loop): status 130, and no further signal may
    raise in the interpreter's exit handlers."""
    if entry_point:
        ignore_signals()
    print("flatsam: interrupted", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    """Run the command line; errors of the input are one line on stderr with exit status 2 (set
    ``FLATSAM_DEBUG=1`` for the traceback), Ctrl-C is 130, a closed output pipe ends quietly."""
    from flatsam.train.interrupts import forget_stops, stopped_at_once
    from flatsam.train.loop import Interrupted

    forget_stops()
    entry_point = argv is None  # the process's own command line: it exits when main returns
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "data_url", None):
        os.environ["FLATSAM_MIRROR"] = args.data_url  # read by every dataset download
    debug = os.environ.get("FLATSAM_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except Interrupted as stop:
        if entry_point:
            ignore_signals()
        print(f"flatsam: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        return _interrupted(entry_point)
    except BrokenPipeError:  # e.g. `flatsam methods | head`: the reader has gone, so has the output
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as error:
        if debug and not stopped_at_once():
            raise
        return _failed(error, entry_point)


def _failed(error: Exception, entry_point: bool) -> int:
    """The exit status and one line for an error that stopped a command: 2 for the user's input, 1 for
    a lost peer process or an internal error, 130 when a second Ctrl-C broke a write."""
    from flatsam.train.interrupts import stopped_at_once

    if stopped_at_once():  # the KeyboardInterrupt surfaced as another error: the stop is the user's
        return _interrupted(entry_point)
    if isinstance(error, USER_ERRORS):
        print(f"flatsam: error: {describe(error)}", file=sys.stderr)
        return 2
    if peer_lost(error):
        rank = os.environ.get("RANK", "?")
        print(f"flatsam: rank {rank}: stopped because another process of this run ended", file=sys.stderr)
        return 1
    print(
        f"flatsam: internal error: {type(error).__name__}: {describe(error)} (FLATSAM_DEBUG=1 shows the "
        "traceback; please report it)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
