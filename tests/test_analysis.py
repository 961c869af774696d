"""The benchmark's decision figures on small hand-made run records: drift, margin, equal budgets,
time to target, the report's verdict lines and the per-method configuration overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from flatsam.train import analysis
from flatsam.train.bench import split_overrides
from flatsam.train.config import MethodSpec, TrainConfig
from flatsam.train.report import RunRecord, write_report


def record(label: str, method: str, seed: int, curve: list[tuple[float, float | None]], *, cost=1.0):
    """A finished run with one epoch per (train_time, test_acc) point; ``cost`` passes per sample."""
    metrics = []
    for epoch, (t, acc) in enumerate(curve):
        samples = 100 * (epoch + 1)
        metrics.append(
            dict(
                epoch=epoch,
                test_acc=acc,
                train_time=t,
                forward_samples=cost * samples,
                backward_samples=cost * samples,
                samples=samples,
                train_loss=1.0,
                train_acc=0.5,
            )
        )
    final = [a for _, a in curve if a is not None][-1]
    result = dict(
        label=label,
        method=method,
        seed=seed,
        epochs=len(curve),
        final_test_acc=final,
        best_test_acc=max(a for _, a in curve if a is not None),
        train_time=curve[-1][0],
        cost=cost,
        ascent_fraction=1.0 if cost > 1 else 0.0,
    )
    return RunRecord(Path(f"/runs/{label}-s{seed}"), {"method_options": {}}, {}, result, metrics)


def test_drift_is_the_range_over_the_last_fifth_of_epochs():
    # 10 epochs: the last 20 % are epochs 8 and 9; epoch 7's 0.30 lies outside.
    run = record("x", "sgd", 0, [(i, 0.5) for i in range(7)] + [(7, 0.30), (8, 0.70), (9, 0.72)])
    assert analysis.drift(run) == pytest.approx(0.02)
    # Only one evaluation in the tail: undefined, not zero.
    sparse = record("x", "sgd", 0, [(i, None) for i in range(9)] + [(9, 0.7)])
    assert analysis.drift(sparse) is None


def test_value_at_interpolates_and_holds_the_final_accuracy_past_the_end():
    run = record("x", "sam", 0, [(10.0, 0.50), (20.0, None), (30.0, 0.70)])
    time = lambda row: row["train_time"]  # noqa: E731
    assert analysis.value_at(run, time, 5.0) is None  # before the first evaluation
    assert analysis.value_at(run, time, 10.0) == pytest.approx(0.50)
    assert analysis.value_at(run, time, 25.0) == pytest.approx(0.65)  # halfway 10 → 30 is 20 … 25 is 3/4
    assert analysis.value_at(run, time, 99.0) == pytest.approx(0.70)


def test_time_to_target_is_the_first_evaluated_epoch_at_or_above_it():
    run = record("x", "sam", 0, [(1.0, 0.60), (2.0, None), (3.0, 0.795), (4.0, 0.81)])
    assert analysis.time_to(run, 0.795) == 3.0
    assert analysis.time_to(run, 0.9) is None


def suite(sam_accs, sgd_accs):
    runs = []
    for seed, (a_sam, a_sgd) in enumerate(zip(sam_accs, sgd_accs, strict=True)):
        runs.append(record("sam", "sam", seed, [(10.0, a_sam - 0.1), (20.0, a_sam)], cost=2.0))
        runs.append(record("sgd", "sgd", seed, [(5.0, a_sgd - 0.05), (10.0, a_sgd)]))
        runs.append(record("fast", "ausam", seed, [(4.0, a_sam - 0.2), (9.0, a_sam - 0.004)]))
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return runs, groups


def test_verdict_needs_three_seed_stds_and_three_points():
    _, groups = suite([0.80, 0.81, 0.79], [0.70, 0.70, 0.70])
    ref = analysis.verdict(groups)
    assert ref.margin == pytest.approx(0.10)
    assert ref.margin_needed == pytest.approx(0.03)  # 3 × 0.01 = 0.03, and the 3-point floor is 0.03
    assert ref.decisive
    assert ref.target == pytest.approx(0.795)
    assert ref.sgd_time == pytest.approx(10.0)
    assert ref.sgd_effective == pytest.approx(600.0)  # 2 epochs × 100 samples × (1 + 2)
    _, noisy = suite([0.80, 0.90, 0.70], [0.70, 0.70, 0.70])  # std 0.1: margin 0.1 < 0.3
    assert not analysis.verdict(noisy).decisive
    _, small = suite([0.72, 0.72, 0.72], [0.70, 0.70, 0.70])  # tiny spread but only 2 points
    assert not analysis.verdict(small).decisive
    _, single = suite([0.90], [0.60])  # one seed: a 30-point lead, but no spread to judge it by
    assert analysis.verdict(single).margin_needed is None and not analysis.verdict(single).decisive


def test_budgeted_figures_of_a_method():
    _, groups = suite([0.80, 0.80, 0.80], [0.70, 0.70, 0.70])
    ref = analysis.verdict(groups)
    fast = analysis.budgeted("fast", groups["fast"], ref)
    # Finished at 9 s < SGD's 10 s: its final accuracy counts at SGD's time.
    assert fast.acc_at_sgd_time == pytest.approx(0.796)
    assert fast.time_to_target == 9.0 and fast.reached == 3
    sam = analysis.budgeted("sam", groups["sam"], ref)
    assert sam.acc_at_sgd_time == pytest.approx(0.70)  # SAM's first evaluation at 10 s
    # SGD's effective samples (600) are SAM's after its first epoch (2 × 100 × 3).
    assert sam.acc_at_sgd_cost == pytest.approx(0.70)
    sgd = analysis.budgeted("sgd", groups["sgd"], ref)
    assert sgd.reached == 0 and sgd.time_to_target is None
    # Whole-run cost over SGD's run: SAM's 2 epochs at 2 passes per sample are twice SGD's 2 epochs.
    assert sam.budget_vs_sgd == pytest.approx(2.0) and sgd.budget_vs_sgd == pytest.approx(1.0)


def test_report_prints_the_verdict_and_the_equal_budget_table(tmp_path):
    runs, _ = suite([0.80, 0.81, 0.79], [0.70, 0.70, 0.70])
    paths = write_report(runs, tmp_path)
    text = paths["md"].read_text()
    assert "SAM over SGD: +10.00 points" in text and "decisive" in text and "NOT decisive" not in text
    assert "target (SAM's final accuracy − 0.5): 79.50 %" in text
    row = next(line for line in text.splitlines() if line.startswith("| sgd |") and "not reached" in line)
    assert "not reached (0/3 seeds)" in row
    header = paths["csv"].read_text().splitlines()[0].split(",")
    assert {"drift_max", "budget_vs_sgd", "acc_at_sgd_time", "acc_at_sgd_cost", "time_to_target"} <= set(
        header
    )


def test_train_prefixed_spec_options_override_the_run_configuration():
    config = TrainConfig(epochs=30)
    spec, cfg = split_overrides(MethodSpec.parse("long=ausam:keep=0.5,train.epochs=60"), config)
    assert cfg.epochs == 60 and spec.options == {"keep": 0.5} and spec.label == "long"
    with pytest.raises(ValueError, match="train.seed"):
        split_overrides(MethodSpec.parse("x=sam:train.seed=3"), config)
    with pytest.raises(ValueError, match="train.epoch"):
        split_overrides(MethodSpec.parse("x=sam:train.epoch=3"), config)
