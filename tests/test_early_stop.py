"""The validation split, the early-stopped test accuracy of a run, and their report (on fabricated runs)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from flatsam.data import load_dataset
from flatsam.data.split import split_validation, validation_indices
from flatsam.train import Run, TrainConfig, analysis, promise, records
from flatsam.train.report import find_runs, write_report
from helpers import fabricate


def tiny(run_dir, **over) -> TrainConfig:
    base = dict(
        method="sgd",
        dataset="synthetic",
        subset=200,
        label_noise=0.3,
        model="mlp",
        epochs=4,
        batch_size=50,
        threads=1,
        val_fraction=0.2,
        eval_every=2,
    )
    return TrainConfig(**{**base, "run_dir": str(run_dir), **over})


# -- the split ---------------------------------------------------------------------------------------


def test_split_is_disjoint_seeded_and_stratified():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    train, val = validation_indices(labels, 0.1, seed=5)
    assert len(val) == 10 and len(train) == 90
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    assert torch.bincount(labels[val], minlength=3).tolist() == [6, 3, 1]  # each class its share
    assert torch.equal(val, validation_indices(labels, 0.1, seed=5)[1])
    assert not torch.equal(val, validation_indices(labels, 0.1, seed=6)[1])


def test_split_keeps_the_label_noise_of_each_part():
    data = load_dataset("synthetic", subset=200, label_noise=0.4, seed=3)
    train, val = split_validation(data, 0.25, seed=1)
    assert train.num_train + val.num_train == 200 and val.num_train == 50
    for part in (train, val):  # noisy_indices point at the rows whose label differs from the clean one
        wrong = (part.train_y != part.clean_train_y).nonzero().flatten()
        assert torch.equal(wrong, part.noisy_indices)
    assert len(train.noisy_indices) + len(val.noisy_indices) == len(data.noisy_indices)
    assert len(val.noisy_indices) > 0  # the validation rows carry noise too, as a user's would
    assert torch.equal(train.test_x, data.test_x)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match="val_fraction must be in"):
        validation_indices(torch.zeros(10, dtype=torch.long), fraction, 0)


def test_config_checks_val_fraction():
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 0.5\]"):
        TrainConfig(val_fraction=0.7)
    with pytest.raises(ValueError, match="val_fraction must be 0 for the pose task"):
        TrainConfig(task="pose", val_fraction=0.1)


# -- the loop ------------------------------------------------------------------------------------------


def test_run_evaluates_the_split_every_epoch_and_records_the_early_stopped_accuracy(tmp_path):
    run = Run(tiny(tmp_path / "r"), progress=False)
    assert run.setup.train_x.shape[0] == 160 and run.setup.val_x.shape[0] == 40
    assert run.setup.optimizer.param_groups  # AUSAM etc. would see num_samples = 160
    result = run.run()
    metrics = records.read_jsonl(tmp_path / "r" / records.METRICS)
    assert all(row["val_acc"] is not None for row in metrics)
    best = max(metrics, key=lambda row: row["val_acc"])
    assert best["test_acc"] is not None  # measured at the best-validation epoch, even off eval_every
    assert result["best_val_epoch"] == best["epoch"]
    assert result["early_stopped_test_acc"] == best["test_acc"]
    assert json.loads((tmp_path / "r" / records.RESULT).read_text())["best_val_acc"] == best["val_acc"]


def test_without_a_split_nothing_changes(tmp_path):
    result = Run(tiny(tmp_path / "r", val_fraction=0.0), progress=False).run()
    metrics = records.read_jsonl(tmp_path / "r" / records.METRICS)
    assert "early_stopped_test_acc" not in result and "val_acc" not in metrics[0]
    assert [row["test_acc"] is not None for row in metrics] == [False, True, False, True]


def test_early_stopping_takes_the_first_best_epoch():
    rows = [
        {"epoch": 0, "val_acc": 0.5, "test_acc": 0.4},
        {"epoch": 1, "val_acc": 0.7, "test_acc": 0.6},
        {"epoch": 2, "val_acc": 0.7, "test_acc": 0.9},
        {"epoch": 3, "val_acc": 0.6, "test_acc": None},
    ]
    assert analysis.early_stopping(rows) == {
        "early_stopped_test_acc": 0.6,
        "best_val_acc": 0.7,
        "best_val_epoch": 1,
    }
    assert analysis.new_best(rows, 0.71) and not analysis.new_best(rows, 0.7)
    assert analysis.early_stopping([{"epoch": 0, "test_acc": 0.5}]) == {}


# -- the report, on fabricated run folders ---------------------------------------------------------------

#: final and early-stopped test accuracy per seed: SAM beats SGD early-stopped by 1.5 points (std 0.1)
RECORDED = {
    "sgd": [(0.800, 0.840), (0.802, 0.841), (0.798, 0.839)],
    "sam": [(0.860, 0.856), (0.862, 0.855), (0.858, 0.854)],
    "cand": [(0.857, 0.852), (0.856, 0.853), (0.858, 0.851)],
    "slow": [(0.861, 0.857), (0.860, 0.856), (0.862, 0.855)],
}
TIMES = {"sgd": 10.0, "sam": 20.0, "cand": 9.8, "slow": 10.5}


def recorded(tmp_path, table=RECORDED):
    for label, seeds in table.items():
        for seed, (final, early) in enumerate(seeds):
            fabricate(tmp_path / "runs", label, seed, final, early, TIMES[label])
    return find_runs([tmp_path / "runs"])


def test_report_shows_the_early_stopped_column_every_seed_and_the_promise(tmp_path):
    runs = recorded(tmp_path)
    paths = write_report(runs, tmp_path / "out")
    text = paths["md"].read_text()
    assert "early-stopped acc % (mean ± std)" in text
    assert "| sam | 3 | 86.00 ± 0.20 | 85.50 ± 0.10 |" in text
    assert "| sgd | 1 | 80.20 | 84.10 | 0 | 10.0 |" in text  # every seed, with its early-stopped figure
    assert "early-stopped (test accuracy at the best-validation epoch): +1.50 points" in text
    assert "— decides" in text
    promised = {
        line.split(" | ")[0][2:]: line for line in text.splitlines() if line.endswith(("yes |", "no |"))
    }
    assert promised["cand"].endswith("| -0.30 | -0.30 | 0.98 | yes |")  # within 0.5 of SAM, faster than SGD
    assert promised["slow"].endswith("| no |")  # as accurate as SAM, but slower than SGD
    rows = {row["label"]: row for row in csv.DictReader(paths["csv"].open())}
    assert float(rows["sam"]["early_mean"]) == pytest.approx(0.855)
    assert rows["sgd"]["early_by_seed"] == "0:84.0;1:84.1;2:83.9"
    assert rows["sgd"]["final_by_seed"] == "0:80.0;1:80.2;2:79.8"
    assert paths["cost_plot"].stat().st_size > 0 and paths["time_plot"].stat().st_size > 0
    groups = {label: [r for r in runs if r.label == label] for label in RECORDED}
    assert promise.early_point(groups["sgd"]) == pytest.approx((TIMES["sgd"] / 2, 84.0))  # epoch 0's time


def test_a_setting_whose_early_stopped_gap_is_small_or_noisy_does_not_decide(tmp_path):
    table = {
        "sgd": [(0.80, 0.850), (0.80, 0.851), (0.80, 0.849)],  # SGD early-stopped within a point of SAM
        "sam": [(0.86, 0.858), (0.86, 0.859), (0.86, 0.857)],
    }
    text = write_report(recorded(tmp_path, table), tmp_path / "out")["md"].read_text()
    assert "early-stopped (test accuracy at the best-validation epoch): +0.80 points" in text
    assert "does NOT decide" in text
    ref = analysis.Verdict("sam", "sgd", early_margin=0.02, early_std=0.007)  # 2 points, but 3 × std = 2.1
    assert not ref.decides
    assert analysis.Verdict("sam", "sgd", early_margin=0.02, early_std=0.006).decides


def test_runs_without_a_split_report_a_dash(tmp_path):
    for seed in (0, 1):
        fabricate(tmp_path / "runs", "sgd", seed, 0.8, None, 10.0)
        fabricate(tmp_path / "runs", "sam", seed, 0.86, None, 20.0)
    text = write_report(find_runs([tmp_path / "runs"]), tmp_path / "out")["md"].read_text()
    assert "| sgd | 2 | 80.00 ± 0.00 | – |" in text and "decide" not in text


def test_an_interrupted_run_with_a_split_resumes_to_the_same_early_stopped_result(tmp_path):
    from flatsam.train import Interrupted

    whole = Run(tiny(tmp_path / "a"), progress=False).run()
    with pytest.raises(Interrupted):
        Run(tiny(tmp_path / "b"), progress=False).run(interrupt_at=(2, 1))
    resumed = Run(tiny(tmp_path / "b"), resume=True, progress=False).run()
    for key in ("early_stopped_test_acc", "best_val_acc", "best_val_epoch", "final_test_acc"):
        assert resumed[key] == whole[key]
    metrics = [records.read_jsonl(tmp_path / name / records.METRICS) for name in "ab"]
    assert [row["val_acc"] for row in metrics[0]] == [row["val_acc"] for row in metrics[1]]


def test_flatsam_train_says_the_early_stopped_accuracy(tmp_path, capsys):
    from flatsam.cli import main

    args = ["train", "--method", "sgd", "--dataset", "synthetic", "--subset", "200", "--model", "mlp"]
    args += ["--epochs", "2", "--batch-size", "50", "--threads", "1", "--no-progress"]
    assert main([*args, "--val-fraction", "0.1", "--run-dir", str(tmp_path / "r")]) == 0
    result = json.loads((tmp_path / "r" / records.RESULT).read_text())
    expected = (
        f"early-stopped {100 * result['early_stopped_test_acc']:.2f}% (epoch {result['best_val_epoch'] + 1})"
    )
    assert expected in capsys.readouterr().out
    assert main([*args, "--run-dir", str(tmp_path / "s")]) == 0
    assert "early-stopped" not in capsys.readouterr().out
