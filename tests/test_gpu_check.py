"""The GPU check's plumbing on the CPU: its CIFAR-shaped stand-in reads as CIFAR-10, its step list covers the
issue's parts on CUDA, and (slow) the CPU part runs end to end and exits 0."""

from pathlib import Path

import pytest
import torch

from flatsam import cli
from flatsam.data import load_cifar10
from flatsam.train import gpu_check


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FLATSAM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def test_stand_in_reads_as_cifar10_and_is_seeded(tmp_path: Path) -> None:
    data = load_cifar10(gpu_check.write_cifar_like(tmp_path / "a", 50, 20))
    again = load_cifar10(gpu_check.write_cifar_like(tmp_path / "b", 50, 20))
    assert data.train_x.shape == (50, 3, 32, 32) and data.test_x.shape == (20, 3, 32, 32)
    assert torch.equal(data.train_x, again.train_x) and sorted(set(data.train_y.tolist())) == list(range(10))
    assert data.class_names[0] == "pattern0"


def test_cuda_steps_cover_tests_speed_training_and_dry_runs(tmp_path: Path) -> None:
    steps = {s.name: s for s in gpu_check.steps(tmp_path, True, tmp_path / "data")}
    assert list(steps) == [
        "cuda-tests",
        "speed",
        "train-sgd",
        "train-sam",
        "train-ausam",
        "dry-run-paper-cifar10",
        "dry-run-paper-tiny",
    ]
    speed = steps["speed"].argv
    assert speed[speed.index("--models") + 1 : speed.index("--models") + 3] == ("resnet18", "wrn28-10")
    assert "cuda" in speed and "cuda" in steps["train-ausam"].argv and "-m" in steps["cuda-tests"].argv
    assert "--channels-last" in speed  # the memory format flatsam train uses
    parsed = cli.build_parser().parse_args(list(speed[1:]))
    cli.refuse_unused_speed_options(parsed, suite=False)  # every option is one the benchmark uses
    assert sum(s.timeout for s in steps.values()) < 60 * 60  # limits, not the expected time (minutes)


def test_no_cuda_means_the_cpu_part() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    names = [s.name for s in gpu_check.steps(Path("out"), False, Path("data"))]
    assert names == ["cuda-tests", "speed", "train-ausam", "dry-run-paper-cifar10"]


@pytest.mark.slow
def test_cpu_part_runs_and_exits_zero(tmp_path: Path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the full check runs instead")
    assert gpu_check.main(["--out", str(tmp_path / "check")]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device on this machine" in out
    summary = (tmp_path / "check" / "summary.md").read_text()
    assert summary.count("| ok |") == 4
    assert (tmp_path / "check" / "train-ausam" / "result.json").is_file()
    # the folder is ready to commit (and small enough to bring back from a lent GPU machine)
    assert not (tmp_path / "check" / "train-ausam" / "checkpoint.pt").exists()
