"""Run folders: never replaced by accident, one writer at a time, resumed from their own configuration."""

from __future__ import annotations

import json
import os

import pytest

from flatsam.cli import main
from flatsam.train import Interrupted, Run, TrainConfig, records
from flatsam.train.rundir import LOCK, FolderLock, RunFolderError, claim
from helpers import small_cli_args

SMALL = small_cli_args()
TRAIN = ["train", "--method", "sgd", "--epochs", "1", "--no-progress", *SMALL]


def tiny(run_dir, **over) -> TrainConfig:
    base = dict(
        method="sam", dataset="synthetic", subset=128, model="mlp", epochs=2, batch_size=64, threads=1
    )
    return TrainConfig(**{**base, "run_dir": str(run_dir), **over})


def test_a_finished_run_is_not_replaced_without_overwrite(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main([*TRAIN, "--run-dir", str(run_dir)]) == 0
    before = (run_dir / records.RESULT).read_bytes()
    assert main([*TRAIN, "--run-dir", str(run_dir), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and "--overwrite" in err and str(run_dir) in err
    assert (run_dir / records.RESULT).read_bytes() == before
    assert main([*TRAIN, "--run-dir", str(run_dir), "--epochs", "2", "--overwrite"]) == 0
    assert json.loads((run_dir / records.RESULT).read_text())["epochs"] == 2
    assert len((run_dir / records.METRICS).read_text().splitlines()) == 2
    assert not (run_dir / LOCK).exists()


def test_an_unfinished_run_is_not_restarted_by_accident(tmp_path):
    config = tiny(tmp_path / "r")
    with pytest.raises(Interrupted):
        Run(config, progress=False).run(interrupt_at=(0, 1))
    with pytest.raises(RunFolderError, match="an unfinished run"):
        Run(config, progress=False)
    with pytest.raises(RunFolderError, match="exclude each other"):
        claim(tmp_path / "r", resume=True, overwrite=True)


def test_overwrite_leaves_no_old_result_behind(tmp_path):
    config = tiny(tmp_path / "r", epochs=1)
    Run(config, progress=False).run()
    run = Run(config, overwrite=True, progress=False)
    assert not (tmp_path / "r" / records.RESULT).exists()  # gone before the new run trains
    run.close()


def test_a_live_lock_stops_a_second_writer(tmp_path):
    holder = FolderLock(tmp_path / "r")
    holder.acquire()
    try:
        with pytest.raises(RunFolderError, match=rf"being written by another process \(pid {os.getpid()}\)"):
            Run(tiny(tmp_path / "r"), progress=False)
    finally:
        holder.release()
    assert not (tmp_path / "r" / LOCK).exists()
    Run(tiny(tmp_path / "r"), progress=False).close()  # free again


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / LOCK).write_text("999999999\n")  # a killed writer: the file stays, its flock is gone
    (tmp_path / "r" / ".checkpoint.pt.abc123").write_bytes(b"half")  # a write cut short
    lock = claim(tmp_path / "r", resume=False, overwrite=False)
    err = capsys.readouterr().err
    assert "taking over the lock" in err and "999999999" in err
    assert (tmp_path / "r" / LOCK).read_text().strip() == str(os.getpid())
    assert not (tmp_path / "r" / ".checkpoint.pt.abc123").exists()
    lock.release()


def test_resume_takes_the_configuration_of_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tiny(tmp_path / "runs" / "x", lr=0.01, label="x")
    with pytest.raises(Interrupted):
        Run(config, progress=False).run(interrupt_at=(1, 0))
    assert main(["train", "--resume", "--name", "x", "--lr", "0.5", "--epochs", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "lr=0.5 (the run has 0.01)" in err and "epochs=3 (the run has 2)" in err
    assert (
        main(["train", "--resume", "--name", "x", "--method", "sam", "--threads", "1", "--no-progress"]) == 0
    )
    result = json.loads((tmp_path / "runs" / "x" / records.RESULT).read_text())
    assert result["epochs"] == 2 and result["method"] == "sam"
    assert (
        main(["train", "--resume", "--name", "x", "--epochs", "3", "--no-progress"]) == 2
    )  # no silent extension
    assert "epochs=3" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/../../x", ".", ""])
def test_names_stay_inside_the_runs_folder(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*TRAIN, "--name", name]) == 2
    assert "--name" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()


def test_bench_refuses_an_used_folder_before_training(tmp_path, capsys):
    out = tmp_path / "b"
    argv = [
        "bench",
        "--quick",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--no-progress",
        "--methods",
        "sgd",
        *SMALL,
    ]
    assert main(argv) == 0
    stamp = (out / "runs" / "sgd-s0" / records.RESULT).stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "runs" / "sgd-s0" / records.RESULT).stat().st_mtime_ns == stamp
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "runs" / "sgd-s0" / records.RESULT).stat().st_mtime_ns != stamp
