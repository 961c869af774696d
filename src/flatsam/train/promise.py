"""The early-stopped view of a set of runs: whether the setting decides, every seed's accuracies, and
whether each method keeps the promise (SAM's accuracy, final and early-stopped, at SGD's wall-clock)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from flatsam.train import analysis

#: A method keeps the promise in a setting when its mean accuracy, final and early-stopped, is at most
#: this far below SAM's (points / 100) …
PROMISE_SLACK = 0.005
#: … and its mean training wall-clock is at most this multiple of SGD's (timed in the same set of runs).
PROMISE_TIME = 1.0


def _cell(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def decides_line(ref: analysis.Verdict) -> str:
    """The header line saying whether the early-stopped comparison decides (empty without one)."""
    if ref.early_margin is None:
        return ""
    if ref.early_std is None:
        return (
            f"- SAM over SGD, early-stopped: {100 * ref.early_margin:+.2f} points — does NOT decide "
            "(one seed: no spread to judge by)\n"
        )
    state = "decides" if ref.decides else "does NOT decide"
    return (
        f"- SAM over SGD, early-stopped (test accuracy at the best-validation epoch): "
        f"{100 * ref.early_margin:+.2f} points (needs ≥ {100 * analysis.DECIDES_MIN:g} and > "
        f"{analysis.DECIDES_STDS:g} × the larger seed std = "
        f"{100 * analysis.DECIDES_STDS * ref.early_std:.2f})"
        f" — {state}\n"
    )


def early_point(runs: Sequence[analysis.Run], key: str = analysis.WALL) -> tuple[float, float] | None:
    """Where a method's early stop lies on the accuracy-against-time plot: the mean training time (clock
    ``key``) at the best-validation epochs and the mean early-stopped test accuracy (%); ``None`` without
    them."""
    accs = analysis.early_accuracies(runs)
    epochs = [run.result.get("best_val_epoch") for run in runs]
    if accs is None or None in epochs:
        return None
    times = [
        next((row[key] for row in run.metrics if row["epoch"] == epoch), None)
        for run, epoch in zip(runs, epochs, strict=True)
    ]
    if None in times:
        return None
    return statistics.fmean(times), 100 * statistics.fmean(accs)


def seed_table(groups: dict[str, Sequence[analysis.Run]]) -> str:
    """Markdown: one line per run — final and early-stopped test accuracy, best-validation epoch, training
    wall-clock and CPU time ('–' where not recorded)."""
    from flatsam.train.report import escape, md_table

    def cells(label: str, r: dict) -> list[str]:
        epoch = r.get("best_val_epoch")
        return [
            escape(label),
            str(r["seed"]),
            _cell(r["final_test_acc"]),
            _cell(r.get("early_stopped_test_acc")),
            "–" if epoch is None else str(epoch),
            f"{r['train_time']:.1f}",
            "–" if r.get(analysis.CPU) is None else f"{r[analysis.CPU]:.1f}",
        ]

    columns = [
        "method", "seed", "final acc %", "early-stopped acc %", "best-val epoch", "train time s", "CPU s"
    ]  # fmt: skip
    return md_table(columns, (cells(label, run.result) for label, runs in groups.items() for run in runs))


@dataclass
class Promise:
    """One method against the references: mean gaps to SAM (negative: below) and time over SGD's."""

    label: str
    final_gap: float
    early_gap: float | None
    time_vs_sgd: float

    @property
    def holds(self) -> bool:
        gaps = (self.final_gap, self.early_gap)
        return None not in gaps and min(gaps) >= -PROMISE_SLACK - 1e-12 and self.time_vs_sgd <= PROMISE_TIME


def promises(groups: dict[str, Sequence[analysis.Run]], ref: analysis.Verdict) -> list[Promise]:
    """Every method other than the references, against SAM's means and SGD's mean time (``ref.clock``)."""
    if ref.sam_label is None or ref.sgd_label is None or ref.sam_acc is None or not ref.sgd_time:
        return []
    out = []
    for label, runs in groups.items():
        if label in (ref.sam_label, ref.sgd_label):
            continue
        early = analysis.early_accuracies(runs)
        early_gap = (
            None if early is None or ref.sam_early is None else statistics.fmean(early) - ref.sam_early
        )
        out.append(
            Promise(
                label,
                statistics.fmean(r.result["final_test_acc"] for r in runs) - ref.sam_acc,
                early_gap,
                statistics.fmean(r.result[ref.clock] for r in runs) / ref.sgd_time,
            )
        )
    return out


def promise_table(rows: Sequence[Promise], key: str = analysis.WALL) -> str:
    """Markdown: each method's gaps to SAM and time (clock ``key``) over SGD's, and whether it keeps the
    promise."""
    from flatsam.train.report import escape, md_table

    columns = [
        "method",
        "final − SAM (points)",
        "early-stopped − SAM (points)",
        f"{analysis.clock_name(key)} ÷ SGD's",
        "keeps the promise",
    ]
    return md_table(
        columns,
        (
            [
                escape(p.label),
                f"{100 * p.final_gap:+.2f}",
                "–" if p.early_gap is None else f"{100 * p.early_gap:+.2f}",
                f"{p.time_vs_sgd:.2f}",
                "yes" if p.holds else "no",
            ]
            for p in rows
        ),
    )


def section(groups: dict[str, Sequence[analysis.Run]], ref: analysis.Verdict) -> str:
    """The Markdown section of ``results.md``: the promise table (when SAM and SGD ran) and every seed."""
    text = ["## Every seed, final and early-stopped\n\n", seed_table(groups), "\n"]
    text.append(
        "Early-stopped: the test accuracy at the epoch of the best accuracy on the validation split (held "
        "out of the training rows with the same label noise; the first such epoch on a tie), what a user "
        "who early-stops gets; '–' for runs without a validation split.\n\n"
    )
    rows = promises(groups, ref)
    if rows:
        text += [
            "## The promise: SAM's accuracy at SGD's wall-clock\n\n",
            promise_table(rows, ref.clock),
            "\n",
            f"Keeps the promise: mean final and early-stopped accuracy at most {100 * PROMISE_SLACK:g} "
            f"points below SAM's, at most {PROMISE_TIME:.1f}× SGD's mean training "
            f"{analysis.clock_name(ref.clock)} (measured in this set of runs; {analysis.CLOCK_RULE}).\n\n",
        ]
    return "".join(text)
