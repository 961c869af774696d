"""The harness at scale: torchrun with gloo (identical weights on every rank, resume on the same number of
processes), --amp, --accumulate and --log."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from flatsam.cli import main
from flatsam.train import Run, TrainConfig, launch, records
from flatsam.train.rundir import RunFolderError

ROOT = Path(__file__).parents[1]
SMALL = [
    "--dataset",
    "synthetic",
    "--subset",
    "240",
    "--model",
    "mlp",
    "--batch-size",
    "48",
    "--threads",
    "1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(run_dir: Path, *args: str, attempts: int = 2, timeout: float = 240) -> None:
    """``flatsam train`` under a two-process torchrun. A launch that hangs (a normal run takes under a
    minute) is killed with its workers and retried once on a fresh port, from a clean folder unless it
    resumes, with a warning. The hang once seen here in one launch in three to ten, gloo's group
    destroyed by a late-freed DDP reducer at exit (see ``launch.distributed``), is fixed: 0 in 14 launches
    after the fix against 5 in 18 before; the retry stays as a guard that still says when it was used."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for _ in range(attempts):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
        ]
        command += ["-m", "flatsam", "train", "--method", "ausam", "--opt", "ramp_epochs=1", *SMALL]
        command += ["--run-dir", str(run_dir), "--no-progress", *args]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            _, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            warnings.warn(f"torchrun hung for {timeout} s and was killed; retrying", stacklevel=2)
            if "--resume" not in args:
                shutil.rmtree(run_dir, ignore_errors=True)
            continue
        assert process.returncode == 0, err.decode(errors="replace")[-3000:]
        return
    pytest.fail(f"torchrun hung {attempts} times")


def checkpoint_digest(run_dir: Path) -> str:
    """SHA-256 of the model weights in the checkpoint (rank 0's)."""
    return launch.state_digest(records.load_checkpoint(run_dir / records.CHECKPOINT)["model"])


def test_two_gloo_processes_end_with_identical_weights_and_resume(tmp_path):
    run_dir = tmp_path / "ddp"
    torchrun(run_dir, "--epochs", "2")
    result = json.loads((run_dir / records.RESULT).read_text())
    assert result["processes"] == 2
    first, second = result["weights_sha256"]
    assert first == second == checkpoint_digest(run_dir)  # both ranks, and the checkpoint rank 0 wrote
    rows = records.read_jsonl(run_dir / records.METRICS)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["samples"] == 240 and result["steps"] == 2 * 5  # 240 rows in batches of 48, shared
    assert rows[1]["train_rows"] == "selected"  # AUSAM after its warm-up, its history gathered
    # a resume needs the same number of processes (the finished run resumes to itself)
    assert main(["train", "--resume", "--run-dir", str(run_dir)]) == 2
    torchrun(run_dir, "--epochs", "2", "--resume")
    result = json.loads((run_dir / records.RESULT).read_text())
    assert result["weights_sha256"] == [first, first]
    assert [r["epoch"] for r in records.read_jsonl(run_dir / records.METRICS)] == [0, 1]


def config(tmp_path: Path, name: str, **over) -> TrainConfig:
    base = dict(
        method="sam",
        dataset="synthetic",
        subset=240,
        model="mlp",  # no BatchNorm: micro-batches are exactly the batch
        epochs=2,
        batch_size=48,
        threads=1,
        run_dir=str(tmp_path / name),
    )
    return TrainConfig(**{**base, **over})


def test_accumulated_steps_equal_whole_batches_and_bf16_runs(tmp_path):
    whole = Run(config(tmp_path, "whole"), progress=False)
    whole.run()
    parts = Run(config(tmp_path, "parts", accumulate=3), progress=False)
    result = parts.run()
    mine, theirs = whole.setup.model.state_dict(), parts.setup.model.state_dict()
    for (name, p), q in zip(mine.items(), theirs.values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    assert result["steps"] == 10 and result["cost"] == pytest.approx(2.0)  # one SAM step per batch
    mixed = Run(config(tmp_path, "mixed", amp="bf16", accumulate=2, method="ausam"), progress=False).run()
    assert mixed["steps"] == 10 and mixed["skipped_steps"] == 0
    assert 0 < mixed["final_test_acc"] <= 1 and mixed["final_test_loss"] < 10


def test_fp16_uses_a_grad_scaler_that_checkpoints(tmp_path):
    run = Run(config(tmp_path, "fp16", amp="fp16", epochs=1), progress=False)
    assert isinstance(run.scaler, torch.amp.GradScaler)
    run.run()
    state = records.load_checkpoint(tmp_path / "fp16" / records.CHECKPOINT)
    assert state["scaler"]["scale"] > 0 and state["processes"] == 1


def test_csv_log_and_bad_values(tmp_path, capsys):
    run_dir = tmp_path / "logged"
    assert (
        main(["train", "--method", "sgd", "--epochs", "2", "--log", "csv", "--run-dir", str(run_dir), *SMALL])
        == 0
    )
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    jsonl = records.read_jsonl(run_dir / records.METRICS)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[1]["test_acc"]) == pytest.approx(jsonl[1]["test_acc"])
    for flag, value, message in (
        ("--amp", "fp8", "amp must be 'bf16', 'fp16' or unset"),
        ("--log", "mlflow", "unknown logger"),
        ("--accumulate", "0", "accumulate must be >= 1"),
    ):
        assert main(["train", flag, value, "--run-dir", str(tmp_path / "x"), *SMALL]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch_size must be >= processes × accumulate"):
        launch.check_batch(4, 8)


def test_tensorboard_log(tmp_path):
    pytest.importorskip("tensorboard")
    Run(config(tmp_path, "tb", epochs=1, log="tensorboard"), progress=False).run()
    assert any((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))


def test_wandb_log_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    Run(config(tmp_path, "wb", epochs=1, log="wandb"), progress=False).run()
    assert any((tmp_path / "wb" / "wandb").glob("offline-run-*"))


def test_wandb_is_offline_without_a_key_or_an_explicit_mode(tmp_path, monkeypatch):
    from flatsam.train.loggers import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_a_logger_folder_that_is_a_link_is_refused(tmp_path):
    """``tensorboard/`` planted as a link to a folder outside the run: refused, nothing written there."""
    pytest.importorskip("tensorboard")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "tensorboard").symlink_to(outside)
    with pytest.raises(RunFolderError, match="symbolic link"):
        Run(config(tmp_path, "tb", epochs=1, log="tensorboard"), progress=False).run()
    assert not any(outside.iterdir())
