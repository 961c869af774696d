"""The harness end to end on the synthetic dataset: train, resume, bench, report, methods, errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flatsam.cli import main
from flatsam.train import Interrupted, Run, TrainConfig, records
from helpers import small_cli_args, tiny_run_config

SMALL = small_cli_args(400)


def tiny_config(tmp_path: Path, **over) -> TrainConfig:
    return tiny_run_config(over.pop("run_dir", tmp_path / "run"), **over)


def test_train_quick_writes_valid_run_files(tmp_path, capsys):
    run_dir = tmp_path / "r"
    code = main(
        [
            "train",
            "--method",
            "ausam:keep=0.5",
            "--epochs",
            "1",
            "--run-dir",
            str(run_dir),
            "--no-progress",
            *SMALL,
        ]
    )
    assert code == 0
    assert "test accuracy" in capsys.readouterr().out
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["method"] == "ausam" and config["config"]["method_options"] == {"keep": 0.5}
    assert config["environment"]["torch"] == torch.__version__
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    for key in (
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "train_time",
        "forward_samples",
        "backward_samples",
        "cost",
        "ascent_fraction",
    ):
        assert key in rows[0]
    assert 0 <= rows[0]["test_acc"] <= 1 and rows[0]["train_time"] > 0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["final_test_acc"] == rows[0]["test_acc"]
    assert result["cost"] == pytest.approx(2.0)  # epoch 0 of AUSAM is the SAM warm-up


@pytest.mark.parametrize(
    ("method", "options"),
    [("sgd", {}), ("sam", {}), ("ausam", {"warmup_epochs": 1, "ramp_epochs": 2})],
)
def test_training_learns_the_synthetic_task(tmp_path, method, options):
    """Clean labels, no augmentation, 4 epochs: every method learns (measured: test accuracy 0.83-0.92,
    train loss down from 2.24 to 0.53-0.87)."""
    config = tiny_config(
        tmp_path, method=method, label_noise=0.0, epochs=4, crop_padding=0, flip=False, method_options=options
    )
    result = Run(config, progress=False).run()
    assert result["final_test_acc"] > 0.7  # 10 classes: chance is 0.1
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]


def weights(run: Run) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in run.setup.model.state_dict().items()}


@pytest.mark.parametrize("stop", [(1, 3), (2, 0)])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, stop):
    straight = Run(tiny_config(tmp_path, run_dir=str(tmp_path / "straight")), progress=False)
    expected = straight.run()
    config = tiny_config(tmp_path, run_dir=str(tmp_path / "cut"))
    with pytest.raises(Interrupted, match="--resume"):
        Run(config, progress=False).run(interrupt_at=stop)
    resumed = Run(config, resume=True, progress=False)
    assert (resumed.epoch, resumed.batch) == stop
    result = resumed.run()
    for key, value in weights(straight).items():
        assert torch.equal(value, weights(resumed)[key]), key
    assert result["final_test_acc"] == expected["final_test_acc"] and result["cost"] == expected["cost"]
    assert torch.equal(straight.setup.optimizer.selection.dlp_sum, resumed.setup.optimizer.selection.dlp_sum)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_resume_refuses_a_different_config(tmp_path):
    config = tiny_config(tmp_path)
    with pytest.raises(Interrupted):
        Run(config, progress=False).run(interrupt_at=(0, 2))
    with pytest.raises(ValueError, match=r"different \['lr'\]"):
        Run(config.replace(lr=0.5), resume=True, progress=False)


def test_killed_process_resumes_from_its_last_checkpoint(tmp_path):
    """A real SIGKILL mid-training, then `--resume`, ends with the weights of an uninterrupted run."""
    args = ["train", "--method", "sam", "--epochs", "6", "--no-progress", *SMALL, "--label-noise", "0.2"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flatsam", *args, "--run-dir", str(cut)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (cut / records.CHECKPOINT).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch = records.load_checkpoint(cut / records.CHECKPOINT)["epoch"]
    if epoch >= 6:
        pytest.skip("the run finished before it could be killed")
    assert main([*args, "--run-dir", str(cut), "--resume"]) == 0
    assert main([*args, "--run-dir", str(tmp_path / "straight")]) == 0
    a = records.load_checkpoint(cut / records.CHECKPOINT)["model"]
    b = records.load_checkpoint(tmp_path / "straight" / records.CHECKPOINT)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bench_quick_writes_table_csv_and_plots(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(
        [
            "bench",
            "--quick",
            "--out",
            str(out),
            "--no-progress",
            "--methods",
            "sgd",
            "sam",
            "ausam",
            "half=ausam:keep=0.25",
            *SMALL,
        ]
    )
    assert code == 0
    table = (out / "results.md").read_text()
    for label in ("| sgd |", "| sam |", "| ausam |", "| half |"):
        assert label in table
    assert "speedup vs SAM" in table and "`flatsam bench --quick --out" in table
    rows = {row["label"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert float(rows["sam"]["speedup_vs_sam"]) == pytest.approx(1.0)
    assert float(rows["sgd"]["cost_mean"]) == pytest.approx(1.0)
    assert float(rows["sam"]["cost_mean"]) == pytest.approx(2.0)
    assert float(rows["half"]["cost_mean"]) < float(rows["ausam"]["cost_mean"]) < 2.0
    for png in ("accuracy_vs_time.png", "accuracy_vs_cost.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same table again from the run folders
    capsys.readouterr()
    assert main(["report", str(out / "runs"), "--out", str(tmp_path / "again")]) == 0
    assert "| half |" in (tmp_path / "again" / "results.md").read_text()


def test_bench_resume_skips_finished_runs(tmp_path):
    out = tmp_path / "b"
    argv = ["bench", "--quick", "--out", str(out), "--no-progress", "--methods", "sgd", *SMALL]
    assert main(argv) == 0
    stamp = (out / "runs" / "sgd-s0" / "result.json").stat().st_mtime_ns
    assert main([*argv, "--resume"]) == 0
    assert (out / "runs" / "sgd-s0" / "result.json").stat().st_mtime_ns == stamp
    assert not (out / "runs" / "sgd-s0" / records.CHECKPOINT).exists()  # finished bench runs drop it


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--method", "nosuch"], "valid methods: "),
        (["train", "--dataset", "imagenet1k"], "fashion-mnist"),
        (["train", "--model", "vgg"], "valid models: "),
        (["bench", "--methods", "sam", "bogus"], "valid methods: "),
        (["train", "--method", "ausam:keep"], "expected key=value"),
        (["report", "/nonexistent/folder"], "no such run folder"),
    ],
)
def test_bad_names_list_the_valid_ones(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_methods_lists_defaults_with_sources(capsys):
    assert main(["methods", "--components"]) == 0
    out = capsys.readouterr().out
    assert "ausam" in out and "ajiaaa/AUSAM" in out and "keep = 0.5" in out
    assert "schedule:" in out and "selection:" in out and "adlp" in out


@pytest.mark.parametrize("command", [[], ["train"], ["bench"], ["report"], ["methods"]])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: flatsam" in capsys.readouterr().out


def test_composed_method_from_the_command_line(tmp_path):
    run_dir = tmp_path / "c"
    argv = [
        "train",
        "--method",
        "custom",
        "--schedule",
        "ae",
        "--selection",
        "adlp",
        "--reuse",
        "looksam",
        "--opt",
        "selection.keep=0.25",
        "--opt",
        "selection.warmup_epochs=0",
        "--opt",
        "schedule.init=first",
        "--epochs",
        "3",
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *SMALL,
    ]
    assert main(argv) == 0
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["method_options"] == {
        "schedule": "ae",
        "selection": "adlp",
        "reuse": "looksam",
        "selection.keep": 0.25,
        "selection.warmup_epochs": 0,
        "schedule.init": "first",
    }
    result = json.loads((run_dir / "result.json").read_text())
    assert 0 < result["ascent_fraction"] < 1  # AE-SAM's threshold skipped some ascents
    assert result["cost"] < 1.0  # every pass on a quarter of the batch


def test_component_flags_need_the_custom_method(capsys):
    assert main(["train", "--method", "ausam", "--schedule", "ae", *SMALL]) == 2
    assert "--method custom" in capsys.readouterr().err
    assert main(["train", "--method", "custom", "--schedule", "nosuch", *SMALL]) == 2
    assert "valid: always, never" in capsys.readouterr().err


def test_eval_every_skips_intermediate_evaluations(tmp_path):
    run = Run(tiny_config(tmp_path, epochs=4, eval_every=3), progress=False)
    result = run.run()
    assert [m["test_acc"] is not None for m in run.metrics] == [False, False, True, True]
    assert result["best_test_acc"] >= result["final_test_acc"]
