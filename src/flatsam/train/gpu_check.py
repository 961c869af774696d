"""``make gpu-check`` (``python -m flatsam.train.gpu_check``): the GPU paths, in one command, into one folder.

On a CUDA machine, in about 3 minutes on an H200: the CUDA-marked tests (no host synchronisation on the
sync-free path, fp16 with ``GradScaler`` and bf16, DDP with NCCL), the step-time benchmark of ResNet-18
and WRN-28-10 (AUSAM/SAM, SAM/hand-written, images/s), short CIFAR-shaped training runs of SGD, SAM and
AUSAM, and the paper suites' dry-runs with their time probe. Without CUDA it says so and runs the
CPU-runnable part (the CUDA tests are collected and skipped; a tiny speed benchmark, training run and
dry-run), in about a minute, so that CI keeps the command working.

CIFAR-10 is used where flatsam finds it (``$FLATSAM_DATA``, the user cache); else a CIFAR-shaped stand-in
(seeded class patterns plus noise, written in CIFAR-10's python format) is made in a temporary folder, so
nothing is downloaded. Every step's output goes to ``OUT/<step>.log``; ``OUT/summary.md`` lists the steps,
their exit status and time. The exit status is 0 when every step passed.
"""

from __future__ import annotations

import argparse
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from flatsam.data.synthetic import make_synthetic

#: The tests of a source checkout, whose CUDA-marked ones the check runs (test_cuda.py, and the methods'
#: own, e.g. SAF's and GSAM's sync-free steps); absent from an installed wheel: that step is then left out.
CUDA_TESTS = Path(__file__).resolve().parents[3] / "tests"


@dataclass(frozen=True)
class Step:
    """One command of the check: its name (the log file's), arguments after ``python -m`` and time limit."""

    name: str
    argv: tuple[str, ...]
    timeout: float


def write_cifar_like(folder: Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """A learnable CIFAR-10 stand-in in the official python layout (``cifar-10-batches-py/``) under
    ``folder``: 3×32×32 seeded class patterns with noise (:func:`flatsam.data.synthetic.make_synthetic`)."""
    data = make_synthetic(num_train, num_test, num_classes=10, image_size=32, channels=3, seed=seed)
    target = folder / "cifar-10-batches-py"
    target.mkdir(parents=True, exist_ok=True)
    train_parts = list(zip(data.train_x.chunk(5), data.train_y.chunk(5), strict=True))
    batches = {f"data_batch_{i + 1}": part for i, part in enumerate(train_parts)}
    batches["test_batch"] = (data.test_x, data.test_y)
    for name, (x, y) in batches.items():
        batch = {b"batch_label": name.encode(), b"labels": y.tolist(), b"data": x.reshape(len(x), -1).numpy()}
        (target / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"pattern{i}".encode() for i in range(10)]}
    (target / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def cifar_folder(scratch: Path, cuda: bool) -> tuple[Path | None, str]:
    """Where the short training runs read CIFAR-10: the real set if flatsam finds it, else a stand-in
    written under ``scratch``."""
    from flatsam.data import cifar

    try:
        source = cifar._locate(cifar.CIFAR10, None)
        return source.path, f"CIFAR-10 found at {source.path}"
    except FileNotFoundError:
        n_train, n_test = (10_000, 2_000) if cuda else (512, 256)
        folder = write_cifar_like(scratch / "cifar-like", n_train, n_test)
        return folder, f"CIFAR-10 not found: a CIFAR-shaped stand-in of {n_train:,} training images"


def steps(out: Path, cuda: bool, data_dir: Path | None) -> list[Step]:
    """The check's commands on this machine (the CPU part without CUDA)."""
    device = "cuda" if cuda else "cpu"
    tests = ("pytest", "-q", "-m", "cuda", str(CUDA_TESTS), "-p", "no:cacheprovider", "-rs")
    plan = [Step("cuda-tests", (*tests, "--junitxml", str(out / "cuda-tests.xml")), 420)]
    if not (CUDA_TESTS / "test_cuda.py").is_file():
        plan = []
    if cuda:
        speed = (
            "--models",
            "resnet18",
            "wrn28-10",
            "--methods",
            "torch-sgd",
            "hand-sam",
            "sgd",
            "sam",
            "ausam",
        )
        speed += ("--batch-sizes", "128", "256", "--repeats", "5", "--channels-last")  # as flatsam train
    else:
        speed = ("--quick", "--methods", "torch-sgd", "hand-sam", "sam", "ausam")
    bench = ("flatsam", "bench", "--no-progress", "--no-record-command")
    plan.append(
        Step("speed", (*bench, "--speed", *speed, "--device", device, "--out", str(out / "speed")), 300)
    )
    train = ["flatsam", "train", "--dataset", "cifar10", "--data-dir", str(data_dir), "--device", device]
    train += ["--crop-padding", "4", "--flip", "--cutout", "16", "--no-progress", "--no-keep-checkpoint"]
    train += ["--model", "resnet18", "--epochs", "3", "--batch-size", "256", "--lr", "0.1"] if cuda else []
    train += [] if cuda else ["--model", "resnet8", "--epochs", "1", "--batch-size", "64"]
    for method in ("sgd", "sam", "ausam") if cuda else ("ausam",):
        plan.append(
            Step(
                f"train-{method}",
                (*train, "--method", method, "--run-dir", str(out / f"train-{method}")),
                240,
            )
        )
    probe = ("--probe-steps", "5") if cuda else ("--probe-steps", "0")
    for suite in ("paper-cifar10", "paper-tiny") if cuda else ("paper-cifar10",):
        plan.append(
            Step(f"dry-run-{suite}", (*bench, "--suite", suite, "--dry-run", "--device", device, *probe), 240)
        )
    return plan


def run_step(step: Step, out: Path) -> tuple[int, float]:
    """Run one step with its output in ``OUT/<name>.log`` (and on the screen); returns (status, seconds)."""
    log = out / f"{step.name}.log"
    command = [sys.executable, "-m", *step.argv]
    print(f"\n== {step.name}: {' '.join(step.argv)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        handle.write(f"$ python -m {' '.join(step.argv)}\n")
        handle.flush()
        try:
            process = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=step.timeout)
            status = process.returncode
        except subprocess.TimeoutExpired:
            handle.write(f"\n[gpu-check] stopped after {step.timeout:.0f} s\n")
            status = 124
    seconds = time.perf_counter() - start
    tail = log.read_text().splitlines()[-15:]
    print("\n".join(tail), flush=True)
    return status, seconds


def environment() -> str:
    lines = [f"python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(
                f"cuda:{i} {props.name}, {props.total_memory / 2**30:.0f} GiB, "
                f"capability {props.major}.{props.minor}"
            )
        lines.append(
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"NCCL {torch.cuda.nccl.version()}"
        )
    else:
        lines.append("no CUDA device")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flatsam.train.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default="runs/gpu-check", help="output folder (default: runs/gpu-check)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    env = environment()
    (out / "environment.txt").write_text(env + "\n")
    print(env)
    if not cuda:
        print("gpu-check: no CUDA device on this machine: running the CPU part only (CUDA tests skipped)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="flatsam-gpu-check-") as scratch:
        data_dir, data_note = cifar_folder(Path(scratch), cuda)
        print(data_note)
        for step in steps(out, cuda, data_dir):
            status, seconds = run_step(step, out)
            verdict = "ok" if status == 0 else f"FAILED ({status})"
            rows.append(f"| {step.name} | {verdict} | {seconds:.0f} | {step.name}.log |")
    summary = [
        f"# gpu-check ({'CUDA' if cuda else 'CPU part only: no CUDA device'})",
        "",
        "```",
        env,
        "```",
        "",
        data_note,
        "",
        "| step | status | seconds | log |",
        "|---|---|---|---|",
        *rows,
    ]
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    print("\n" + "\n".join(summary) + f"\nwritten: {out}")
    return 0 if all("| ok |" in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
