"""What a set of benchmark runs can decide: convergence, SAM's margin over SGD, accuracy at equal
budgets (SGD's wall-clock, SGD's effective cost) and time to SAM's accuracy.

Times are read on one clock per set of runs (:func:`clock`): the process CPU time where every run
trained on one CPU thread and recorded it, which is that run's wall-clock on a core of its own whatever
else loaded the machine meanwhile; else the wall-clock.

Every figure comes from the per-epoch records (``metrics.jsonl``) of finished runs. An accuracy "at a
budget" is read off the run's curve of test accuracy against cumulative training time (or effective
cost) by linear interpolation between evaluated epochs; a run that finished within the budget counts
with its final accuracy. Such a point of a longer run lies before its learning rate has decayed, so
it understates what a run *planned* for that budget reaches: a suite can add such runs with a
``train.epochs=`` override (see :func:`flatsam.train.bench.split_overrides`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: Fraction of the epochs at the end of a run over which convergence drift is measured.
TAIL = 0.2
#: A method "reaches" SAM when its test accuracy is at least SAM's final mean minus this (points / 100).
TARGET_SLACK = 0.005
#: SAM's lead over SGD decides a question only when it exceeds this many seed standard deviations…
MARGIN_STDS = 3.0
#: … and this many points (as a fraction).
MARGIN_MIN = 0.03
#: A setting *decides* (the question a user asks: does SAM beat SGD when both are early-stopped on the
#: validation split?) when SAM's early-stopped accuracy beats SGD's by at least this (points / 100) …
DECIDES_MIN = 0.01
#: … and by more than this many seed standard deviations (the larger of SAM's and SGD's).
DECIDES_STDS = 3.0


class Run(Protocol):
    """What the analysis needs of a run (``flatsam.train.report.RunRecord`` has it, and also ``config``
    and ``environment``, which :func:`clock` and :func:`reference_label` read where present)."""

    label: str
    result: dict[str, Any]
    metrics: list[dict[str, Any]]


#: the two clocks a run records: training wall-clock, and the process CPU time over the same span
WALL, CPU = "train_time", "train_cpu_time"


def _one_thread_cpu_timed(run: Run) -> bool:
    """The run trained on one CPU thread and recorded its CPU time for every epoch."""
    config, environment = getattr(run, "config", {}) or {}, getattr(run, "environment", {}) or {}
    return (
        config.get("threads") == 1
        and environment.get("device") == "cpu"
        and run.result.get(CPU) is not None
        and all(row.get(CPU) is not None for row in run.metrics)
    )


def clock(runs: Iterable[Run]) -> str:
    """The clock to compare ``runs`` on: ``CPU`` where every one of them is one-thread CPU-timed
    (one thread's CPU seconds are its wall-clock on a free core, unaffected by other processes taking
    turns on the cores), else ``WALL``."""
    runs = list(runs)
    return CPU if runs and all(map(_one_thread_cpu_timed, runs)) else WALL


#: how reports state the rule of :func:`clock`
CLOCK_RULE = (
    "times are CPU time where every run trained on one CPU thread and recorded it: a thread's CPU seconds "
    "are its wall-clock on a core of its own, whatever else took turns on the machine; else wall-clock"
)


def clock_name(key: str) -> str:
    """How reports name a clock."""
    return "CPU time (one thread)" if key == CPU else "wall-clock"


def evaluated(run: Run) -> list[dict[str, Any]]:
    """The run's per-epoch rows that hold a test accuracy, in epoch order."""
    return [row for row in run.metrics if row.get("test_acc") is not None]


def new_best(metrics: Sequence[dict[str, Any]], val_acc: float) -> bool:
    """Whether ``val_acc`` beats the validation accuracy of every earlier row of ``metrics`` (strictly: on
    a tie the earlier epoch stays the best)."""
    earlier = [row["val_acc"] for row in metrics if row.get("val_acc") is not None]
    return not earlier or val_acc > max(earlier)


def early_stopping(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a user who early-stops on the validation split gets: the epoch of the best validation
    accuracy (the first on a tie), that accuracy and the test accuracy at that epoch
    (``early_stopped_test_acc``). Empty for a run without a validation split."""
    rows = [row for row in metrics if row.get("val_acc") is not None]
    if not rows:
        return {}
    best = max(rows, key=lambda row: row["val_acc"])  # max keeps the first of equal values
    return {
        "early_stopped_test_acc": best.get("test_acc"),
        "best_val_acc": best["val_acc"],
        "best_val_epoch": best["epoch"],
    }


def effective_samples(row: dict[str, Any]) -> float:
    """Cumulative forward + 2 × backward samples of a per-epoch row (SGD: 3 per training sample)."""
    return row["forward_samples"] + 2 * row["backward_samples"]


def drift(run: Run, tail: float = TAIL) -> float | None:
    """Range (max − min) of test accuracy over the evaluated epochs in the last ``tail`` of the run's
    epochs; ``None`` when fewer than two evaluations fall there."""
    epochs = int(run.result.get("epochs") or len(run.metrics))
    first = epochs - max(1, math.ceil(tail * epochs))
    accs = [row["test_acc"] for row in evaluated(run) if row["epoch"] >= first]
    return max(accs) - min(accs) if len(accs) >= 2 else None


def value_at(run: Run, x: Callable[[dict[str, Any]], float], budget: float) -> float | None:
    """Test accuracy at ``budget`` on the curve (x(row), test_acc) of the evaluated epochs: linear
    interpolation inside the curve, the final accuracy past its end, ``None`` before its first point."""
    points = [(x(row), row["test_acc"]) for row in evaluated(run)]
    if not points or budget < points[0][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= budget <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (budget - x0) / (x1 - x0)
    return points[-1][1]


def time_to(run: Run, target: float, key: str = WALL) -> float | None:
    """Training time on clock ``key`` at the first evaluated epoch with test accuracy ≥ ``target`` (else
    ``None``)."""
    return next((row[key] for row in evaluated(run) if row["test_acc"] >= target), None)


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class Budgeted:
    """One method's figures at equal budgets (means over its seeds; ``None`` where undefined)."""

    label: str
    drift_max: float | None
    budget_vs_sgd: float | None  # the run's whole effective cost over SGD's run's
    acc_at_sgd_time: float | None
    acc_at_sgd_cost: float | None
    time_to_target: float | None
    reached: int
    seeds: int


@dataclass
class Verdict:
    """What the reference runs say about the setting itself."""

    sam_label: str | None
    sgd_label: str | None
    sam_acc: float | None = None
    sgd_acc: float | None = None
    margin: float | None = None
    margin_needed: float | None = None
    target: float | None = None
    sgd_time: float | None = None  # on ``clock``
    clock: str = WALL  # the key of the time every comparison with these references reads
    sgd_effective: float | None = None
    sam_early: float | None = None  # mean early-stopped test accuracy (runs with a validation split)
    sgd_early: float | None = None
    early_margin: float | None = None
    early_std: float | None = None  # the larger seed std of SAM's and SGD's early-stopped accuracies

    @property
    def decisive(self) -> bool:
        """SAM leads by more than the needed margin (never with fewer than two seeds of either)."""
        return self.margin is not None and self.margin_needed is not None and self.margin > self.margin_needed

    @property
    def leads(self) -> bool:
        """SAM's early-stopped accuracy beats SGD's by ≥ ``DECIDES_MIN``, whatever the seeds' spread."""
        return self.early_margin is not None and self.early_margin >= DECIDES_MIN - 1e-12

    @property
    def decides(self) -> bool:
        """SAM ``leads`` and by more than ``DECIDES_STDS`` seed standard deviations (never with fewer than
        two seeds of either)."""
        if not self.leads or self.early_std is None:
            return False
        return self.early_margin > DECIDES_STDS * self.early_std  # type: ignore[operator]


def early_accuracies(runs: Sequence[Run]) -> list[float] | None:
    """The early-stopped test accuracy of every run, or ``None`` when a run has none (no validation
    split)."""
    values = [run.result.get("early_stopped_test_acc") for run in runs]
    return None if not values or None in values else [float(v) for v in values]


def reference_label(groups: dict[str, Sequence[Run]], method: str) -> str | None:
    """The label of the reference runs of ``method``: the group labelled exactly so, else the only group
    of that method without options."""
    if method in groups:
        return method
    plain = [
        label
        for label, runs in groups.items()
        if runs[0].result.get("method") == method and not getattr(runs[0], "config", {}).get("method_options")
    ]
    return plain[0] if len(plain) == 1 else None


def verdict(groups: dict[str, Sequence[Run]], key: str | None = None) -> Verdict:
    """SAM's margin over SGD (mean final accuracy), the margin a decision needs (the larger of
    ``MARGIN_MIN`` and ``MARGIN_STDS`` × the larger seed std; undefined with one seed), the target
    (SAM − ``TARGET_SLACK``) and SGD's budgets (mean training time on clock ``key``, by default the
    :func:`clock` of every run in ``groups``, and mean effective samples)."""
    sam, sgd = reference_label(groups, "sam"), reference_label(groups, "sgd")
    key = key or clock(run for runs in groups.values() for run in runs)
    out = Verdict(sam, sgd, clock=key)
    if sam is not None:
        accs = [r.result["final_test_acc"] for r in groups[sam]]
        out.sam_acc, out.target = statistics.fmean(accs), statistics.fmean(accs) - TARGET_SLACK
    if sgd is not None:
        runs = groups[sgd]
        out.sgd_acc = statistics.fmean(r.result["final_test_acc"] for r in runs)
        out.sgd_time = statistics.fmean(r.result[key] for r in runs)
        out.sgd_effective = statistics.fmean(effective_samples(r.metrics[-1]) for r in runs)
    if sam is not None and sgd is not None:
        out.margin = out.sam_acc - out.sgd_acc
        if min(len(groups[sam]), len(groups[sgd])) >= 2:  # one seed has no spread to compare with
            spread = max(_std([r.result["final_test_acc"] for r in groups[k]]) for k in (sam, sgd))
            out.margin_needed = max(MARGIN_MIN, MARGIN_STDS * spread)
    _early_verdict(out, groups)
    return out


def _early_verdict(out: Verdict, groups: dict[str, Sequence[Run]]) -> None:
    """Fill ``out``'s early-stopped figures where both reference groups have them."""
    if out.sam_label is None or out.sgd_label is None:
        return
    sam, sgd = early_accuracies(groups[out.sam_label]), early_accuracies(groups[out.sgd_label])
    if sam is None or sgd is None:
        return
    out.sam_early, out.sgd_early = statistics.fmean(sam), statistics.fmean(sgd)
    out.early_margin = out.sam_early - out.sgd_early
    if min(len(sam), len(sgd)) >= 2:
        out.early_std = max(_std(sam), _std(sgd))


def budgeted(label: str, runs: Sequence[Run], ref: Verdict) -> Budgeted:
    """Drift, accuracy at SGD's time and cost, and time to target of one method's runs."""
    drifts = [d for d in map(drift, runs) if d is not None]

    def at(x: Callable[[dict[str, Any]], float], budget: float | None) -> float | None:
        if budget is None:
            return None
        values = [value_at(run, x, budget) for run in runs]
        return None if None in values else statistics.fmean(values)

    times = [] if ref.target is None else [time_to(run, ref.target, ref.clock) for run in runs]
    hits = [t for t in times if t is not None]
    spent = statistics.fmean(effective_samples(run.metrics[-1]) for run in runs)
    return Budgeted(
        label,
        max(drifts) if drifts else None,
        None if not ref.sgd_effective else spent / ref.sgd_effective,
        at(lambda row: row[ref.clock], ref.sgd_time),
        at(effective_samples, ref.sgd_effective),
        _mean(hits) if len(hits) == len(runs) else None,
        len(hits),
        len(runs),
    )
