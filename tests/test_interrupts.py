"""Ctrl-C and kill -9 lose nothing: a real signal during a step, an evaluation or a checkpoint write, then
a resume, ends exactly where an uninterrupted run ends (weights, buffers, optimizer state, counters)."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flatsam.cli import main
from flatsam.train import Interrupted, Run, TrainConfig, records
from flatsam.train.rundir import RunFolderError
from helpers import same, tiny_run_config

SRC = str(Path(__file__).parents[1] / "src")
COMPARED = ("steps", "ascents", "skipped", "samples", "forward_samples", "backward_samples", "cost")


def tiny(run_dir: Path, **over) -> TrainConfig:
    return tiny_run_config(run_dir, **{"model": "cnn", "subset": 256, **over})  # a CNN: BatchNorm buffers


def assert_same_end(a: Path, b: Path) -> None:
    """Two finished run folders hold the same final state and the same cost figures."""
    x, y = records.load_checkpoint(a / records.CHECKPOINT), records.load_checkpoint(b / records.CHECKPOINT)
    assert same(x["model"], y["model"])  # weights and BatchNorm buffers, bit for bit
    assert same(x["optimizer"], y["optimizer"])  # momentum, step count, AUSAM history, generators
    assert same(x["torch_rng"], y["torch_rng"])
    result_a, result_b = (records.read_json(p / records.RESULT) for p in (a, b))
    for key in (*COMPARED, "final_test_acc", "final_test_loss", "final_train_acc"):
        assert result_a.get(key) == result_b.get(key), key
    rows_a, rows_b = records.read_jsonl(a / records.METRICS), records.read_jsonl(b / records.METRICS)
    untimed = [{k: v for k, v in r.items() if not k.endswith("time")} for r in rows_a]
    assert untimed == [{k: v for k, v in r.items() if not k.endswith("time")} for r in rows_b]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    Run(tiny(run_dir), progress=False).run()
    return run_dir


def signal_on_call(obj, name: str, call: int, signum: int = signal.SIGINT):
    """Wrap ``obj.name`` so that its ``call``-th call sends ``signum`` to this process before it runs."""
    original, calls = getattr(obj, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    setattr(obj, name, wrapped)


@pytest.mark.parametrize(
    ("where", "call", "signum"),
    [
        ("forward", 11, signal.SIGINT),  # the second pass of an AUSAM step in epoch 1 (after the warm-up)
        ("forward", 4, signal.SIGTERM),  # the second pass of a step in epoch 0
        ("evaluate", 1, signal.SIGINT),  # the end-of-epoch evaluation
    ],
)
def test_signal_mid_step_or_evaluation_resumes_bit_for_bit(straight, tmp_path, where, call, signum):
    config = tiny(tmp_path / "cut")
    run = Run(config, progress=False)
    target = run.setup.model if where == "forward" else run.setup.task
    signal_on_call(target, where, call, signum)
    with pytest.raises(Interrupted, match="checkpoint saved") as stop:
        run.run()
    assert stop.value.signum == signum and stop.value.saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back
    state = records.load_checkpoint(tmp_path / "cut" / records.CHECKPOINT)
    assert state["totals"]["steps"] + state["epoch_totals"]["steps"] == state["epoch"] * 4 + state["batch"]
    Run(config, resume=True, progress=False).run()
    assert_same_end(straight, tmp_path / "cut")


def test_a_second_sigint_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    config = tiny(tmp_path / "cut", epochs=2)
    run = Run(config, progress=False)
    signal_on_call(run.setup.model, "forward", 12)  # epoch 1: a checkpoint of epoch 0's end exists
    signal_on_call(run.setup.model, "forward", 13)
    with pytest.raises(Interrupted, match="stopped at once") as stop:
        run.run()
    assert not stop.value.saved
    assert records.load_checkpoint(tmp_path / "cut" / records.CHECKPOINT)["epoch"] == 1


def launch(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-m", "flatsam", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


CLI = [
    "train",
    "--method",
    "ausam",
    "--opt",
    "warmup_epochs=1",
    "--opt",
    "ramp_epochs=2",
    "--dataset",
    "synthetic",
    "--subset",
    "256",
    "--model",
    "cnn",
    "--batch-size",
    "64",
    "--threads",
    "1",
    "--label-noise",
    "0.2",
    "--crop-padding",
    "2",
    "--flip",
    "--no-progress",
]


def interrupt_process(run_dir: Path, epochs: int, signum: int, delay: float) -> int | None:
    """Start a training process, send ``signum`` ``delay`` seconds after its first checkpoint, and return
    its exit status (None: it finished first)."""
    proc = launch([*CLI, "--epochs", str(epochs), "--run-dir", str(run_dir)])
    deadline = time.time() + 300
    while not (run_dir / records.CHECKPOINT).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        return None
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    if signum == signal.SIGINT:
        assert b"Traceback" not in err, err.decode()
    return proc.returncode


def test_real_sigint_to_a_training_process_then_resume(straight, tmp_path):
    """A real process, a real Ctrl-C mid-training: exit status 130, then --resume ends bit for bit as the
    uninterrupted run of the same configuration."""
    code = interrupt_process(tmp_path / "cut", 3, signal.SIGINT, 0.0)
    if code is None:
        pytest.skip("the run finished before the signal")
    assert code == 130
    assert main([*CLI, "--epochs", "3", "--run-dir", str(tmp_path / "cut"), "--resume"]) == 0
    assert_same_end(straight, tmp_path / "cut")


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(6))
def test_random_sigint_and_sigkill_then_resume(tmp_path, trial):
    """SIGINT or SIGKILL at a random moment (inside steps, evaluations or checkpoint writes), resumed
    until done, ends as the uninterrupted run."""
    rng = random.Random(trial)
    epochs = 8
    assert main([*CLI, "--epochs", str(epochs), "--run-dir", str(tmp_path / "straight")]) == 0
    cut = tmp_path / "cut"
    for attempt in range(3):
        signum = signal.SIGKILL if (trial + attempt) % 2 else signal.SIGINT
        if attempt == 0:
            code = interrupt_process(cut, epochs, signum, rng.uniform(0.0, 1.5))
        else:
            proc = launch([*CLI, "--epochs", str(epochs), "--run-dir", str(cut), "--resume"])
            time.sleep(rng.uniform(3.0, 8.0))
            if proc.poll() is None:
                proc.send_signal(signum)
            proc.communicate(timeout=300)
            code = proc.returncode
        assert code in (None, 0, 130, -signal.SIGINT, -signal.SIGKILL)  # -SIGINT: during start-up
    if not (cut / records.RESULT).exists():
        assert main([*CLI, "--epochs", str(epochs), "--run-dir", str(cut), "--resume"]) == 0
    assert_same_end(tmp_path / "straight", cut)


@pytest.mark.slow
def test_lock_of_a_live_process_then_of_a_killed_one(tmp_path, capsys):
    """Another process holding the folder stops a run; once it is killed, its lock is taken over."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from flatsam.train.rundir import FolderLock; "
            "FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)",
            str(tmp_path / "r"),
        ],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
    )
    assert holder.stdout.readline().strip() == b"held"
    with pytest.raises(RunFolderError, match=rf"another process \(pid {holder.pid}\)"):
        Run(tiny(tmp_path / "r", epochs=1), progress=False)
    holder.kill()
    holder.wait()
    Run(tiny(tmp_path / "r", epochs=1), progress=False).run()
    assert f"left by process {holder.pid}" in capsys.readouterr().err


def _ddp_worker(rank: int, world: int, init_file: str, run_dir: str, phase: str) -> None:
    """One rank of a two-process run: ``straight`` to the end, ``cut`` stopped mid-epoch, ``resume``."""
    import gc

    import torch

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        config = tiny(Path(run_dir))
        if phase == "cut":
            with pytest.raises(Interrupted):
                Run(config, progress=False).run(interrupt_at=(1, 2))
        else:
            Run(config, resume=phase == "resume", progress=False).run()
    finally:
        gc.collect()  # the DDP model goes before its process group (pytorch/pytorch#56297)
        torch.distributed.destroy_process_group()


def _two_processes(tmp_path: Path) -> tuple[Path, Path]:
    import torch

    tmp_path.mkdir(parents=True, exist_ok=True)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    for number, (run_dir, phase) in enumerate([(straight, "straight"), (cut, "cut"), (cut, "resume")]):
        args = (2, str(tmp_path / f"init{number}"), str(run_dir), phase)
        torch.multiprocessing.spawn(_ddp_worker, args=args, nprocs=2)
    return straight, cut


@pytest.mark.slow
def test_two_processes_interrupted_mid_epoch_resume_with_every_counter(tmp_path):
    """Under torch.distributed (two gloo processes), a stop in the middle of an epoch and a resume give the
    counters of the uninterrupted run: every rank's rows of the interrupted epoch are in the checkpoint."""
    import warnings

    import torch

    for attempt in range(2):  # gloo's teardown aborts about one launch in 16 (see test_distributed)
        try:
            straight, cut = _two_processes(tmp_path / str(attempt))
            break
        except torch.multiprocessing.ProcessExitedException as error:
            if error.signal_name != "SIGABRT" or attempt:
                raise
            warnings.warn(f"a gloo worker aborted ({error}); retrying", stacklevel=2)
    a, b = records.read_json(straight / records.RESULT), records.read_json(cut / records.RESULT)
    assert a["processes"] == b["processes"] == 2
    counters = ("steps", "skipped_steps", "samples", "forward_samples", "backward_samples", "cost")
    for key in (*counters, "ascent_fraction", "final_train_acc", "final_test_acc", "weights_sha256"):
        assert a[key] == b[key], key
    assert a["samples"] == 3 * 256  # every row of every epoch, both ranks' shares
    rows_a, rows_b = records.read_jsonl(straight / records.METRICS), records.read_jsonl(cut / records.METRICS)
    untimed = [{k: v for k, v in r.items() if not k.endswith("time")} for r in rows_a]
    assert untimed == [{k: v for k, v in r.items() if not k.endswith("time")} for r in rows_b]


def test_repeated_ctrl_c_prints_no_traceback(tmp_path):
    """An impatient user presses Ctrl-C again and again: the process stops with 130 and one message,
    never a traceback (not even from the interpreter's exit handlers)."""
    run_dir = tmp_path / "cut"
    proc = launch([*CLI, "--epochs", "30", "--run-dir", str(run_dir)])
    deadline = time.time() + 120
    while not (run_dir / records.CHECKPOINT).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    while proc.poll() is None:  # SIGINT every 20 ms until it has gone
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    err = proc.stderr.read().decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_cpu_time_is_recorded_and_unknown_after_a_checkpoint_without_it(straight, tmp_path):
    """``train_cpu_time`` (process CPU seconds over the timed span) is in every epoch row and the result; a
    run resumed from a checkpoint written before it existed reports it as unknown (null), not a part."""
    result = records.read_json(straight / records.RESULT)
    rows = records.read_jsonl(straight / records.METRICS)
    assert result["train_cpu_time"] > 0 and result["train_cpu_time"] == rows[-1]["train_cpu_time"]
    assert all(a["train_cpu_time"] < b["train_cpu_time"] for a, b in itertools.pairwise(rows))
    config = tiny(tmp_path / "old")
    with pytest.raises(Interrupted):
        Run(config, progress=False).run(interrupt_at=(1, 2))
    path = tmp_path / "old" / records.CHECKPOINT
    state = records.load_checkpoint(path)
    for key in ("totals", "epoch_totals"):
        del state[key]["cpu_time"]  # as 0.1.0 wrote them
    records.save_checkpoint(path, state)
    Run(config, progress=False, resume=True).run()
    assert records.read_json(tmp_path / "old" / records.RESULT)["train_cpu_time"] is None
    rows = records.read_jsonl(tmp_path / "old" / records.METRICS)
    assert rows[0]["train_cpu_time"] > 0
    assert [r["train_cpu_time"] for r in rows[1:]] == [None] * (len(rows) - 1)
    assert_same_end(tmp_path / "old", straight)  # the model does not depend on it
