"""Tables and plots from run folders: accuracy, wall-clock, speedups and effective cost per method."""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flatsam.safe_open import printable
from flatsam.train import analysis, promise, records


@dataclass
class RunRecord:
    """One finished run folder."""

    path: Path
    config: dict[str, Any]
    environment: dict[str, Any]
    result: dict[str, Any]
    metrics: list[dict[str, Any]]

    @property
    def label(self) -> str:
        return self.result.get("label") or self.result["method"]


#: What ``result.json`` must hold for a report, of what type (numbers must also be finite) and, where
#: it is bounded, in which closed range.
RESULT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "method": str,
    "seed": int,
    "final_test_acc": (int, float),
    "best_test_acc": (int, float),
    "train_time": (int, float),
    "cost": (int, float),
    "ascent_fraction": (int, float),
}
RESULT_RANGES: dict[str, tuple[float, float]] = {
    "final_test_acc": (0.0, 1.0),
    "best_test_acc": (0.0, 1.0),
    "cost": (0.0, math.inf),
    "ascent_fraction": (0.0, 1.0),
}
#: What every row of ``metrics.jsonl`` must hold (``test_acc`` may be null between evaluations).
METRIC_FIELDS = ("epoch", "train_time", "forward_samples", "backward_samples", "test_acc")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_result(path: Path, result: Any) -> None:
    """``result.json``'s fields of the right types and within their ranges, else a ``ValueError``."""
    if not isinstance(result, dict):
        raise ValueError(f"{path}: not a JSON object")
    for key, kind in RESULT_FIELDS.items():
        value = result.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is not str and not _number(value)):
            raise ValueError(f"{path}: {key} is {records.shown(repr(value))}")
        low, high = RESULT_RANGES.get(key, (-math.inf, math.inf))
        if kind is not str and not low <= value <= high:
            raise ValueError(f"{path}: {key} is {value!r}, outside [{low:g}, {high:g}]")
    if result["train_time"] <= 0:
        raise ValueError(f"{path}: train_time is {result['train_time']!r}")
    if not isinstance(result.get("label", ""), str):
        raise ValueError(f"{path}: label is not a string")


def _check_metrics(path: Path, metrics: list[Any]) -> None:
    if not metrics or not all(isinstance(row, dict) for row in metrics):
        raise ValueError(f"{path}: no per-epoch rows")
    for row in metrics:
        bad = [
            k for k in METRIC_FIELDS if not (_number(row.get(k)) or (k == "test_acc" and row.get(k) is None))
        ]
        if bad or not 0 <= (row["test_acc"] or 0) <= 1:
            raise ValueError(f"{path}: epoch row without valid {bad or ['test_acc']}")


def load_run(folder: Path) -> RunRecord:
    """One finished run folder, checked: a ``ValueError`` says what is wrong with which file. Files are
    read as ``records`` reads them (no links, FIFOs or devices; bounded size)."""
    config_path = folder / records.CONFIG
    saved = records.read_json(config_path) if records.check_regular(config_path) else {}
    result = records.read_json(folder / records.RESULT)
    metrics = records.read_jsonl(folder / records.METRICS)
    if not isinstance(saved, dict):
        raise ValueError(f"{config_path}: not a run configuration")
    for key in ("config", "environment"):
        if not isinstance(saved.get(key, {}), dict):
            raise ValueError(f"{config_path}: {key!r} is not a JSON object")
    _check_result(folder / records.RESULT, result)
    _check_metrics(folder / records.METRICS, metrics)
    for key in ("method", "label"):  # shown in tables, plots and messages: no escape sequences
        if isinstance(result.get(key), str):
            result[key] = printable(result[key])
    return RunRecord(folder, saved.get("config", {}), saved.get("environment", {}), result, metrics)


def find_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """Every folder at or below ``paths`` that holds a ``result.json`` (in path order). Unfinished runs
    (a ``config.json`` without ``result.json``) and unreadable ones are skipped, each listed on stderr."""
    found: list[RunRecord] = []
    skipped: list[str] = []
    unfinished: list[str] = []
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such run folder: {root}")
        if not root.is_dir():
            continue
        for result in sorted(root.rglob(records.RESULT)):
            try:
                found.append(load_run(result.parent))
            except (ValueError, OSError, RecursionError) as error:
                text = records.shown(" ".join(str(error).split()), 200)
                skipped.append(text if str(result.parent) in text else f"{result}: {text}")
        unfinished += [
            str(c.parent)
            for c in sorted(root.rglob(records.CONFIG))
            if not os.path.lexists(c.parent / records.RESULT)
        ]
    if unfinished:
        print(
            f"flatsam: skipped {len(unfinished)} unfinished run(s): {', '.join(unfinished)}", file=sys.stderr
        )
    if skipped:
        print(f"flatsam: skipped {len(skipped)} unreadable run(s): {'; '.join(skipped)}", file=sys.stderr)
    if not found:
        raise FileNotFoundError(
            f"no finished runs (folders with a valid {records.RESULT}) under {list(map(str, paths))}"
        )
    return found


def is_run_folder(folder: Path) -> bool:
    """``folder`` holds a run (its ``config.json`` or ``result.json``)."""
    return (folder / records.CONFIG).exists() or (folder / records.RESULT).exists()


def report_folder(paths: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Where ``flatsam report PATHS`` writes: ``out`` when given; else the first path when it is a folder
    of runs (a benchmark's), else beside the run folders: ``PARENT/NAME-report`` for one run,
    ``PARENT/report`` for several. Never inside a run folder: that is a ``ValueError`` naming it."""
    first = Path(paths[0])
    if out is not None:
        folder = Path(out)
    elif not is_run_folder(first):
        folder = first
    else:
        run = first.resolve()
        folder = run.parent / (f"{run.name}-report" if len(paths) == 1 else "report")
    resolved = folder.resolve()
    for level in (resolved, *resolved.parents):
        if is_run_folder(level):
            raise ValueError(
                f"--out {folder} is inside the run folder {level}; a report goes beside run folders, "
                "never into one (leave --out out to write beside it)"
            )
    return folder


def seeds_phrase(counts: Iterable[int], spread: str) -> str:
    """What a plot's figures are, from each method's number of seeds: "1 seed" when every method has one
    (there is no spread to draw), else "mean over 3 seeds" (or "1–3 seeds") followed by ``spread``."""
    found = sorted(set(counts))
    if found[-1] == 1:
        return "1 seed"
    seeds = f"{found[0]}–{found[-1]}" if len(found) > 1 else str(found[0])
    return f"mean over {seeds} seeds{spread}"


def escape(text: Any) -> str:
    """``text`` safe in a Markdown table cell: one line, ``|`` escaped, HTML special characters as
    entities (a run label is whatever its author typed)."""
    value = " ".join(str(text).split())
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value.replace("|", "\\|").replace("`", "\\`")


def md_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table: the header ``columns``, its rule and one line per row of cells (already text)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


@dataclass
class Summary:
    """One table row: a method (label) over its seeds."""

    label: str
    method: str
    seeds: int
    acc_mean: float
    acc_std: float
    best_mean: float
    time_mean: float
    cost_mean: float
    ascent_fraction: float
    speedup_vs_sam: float | None = None
    speedup_vs_sgd: float | None = None
    early_mean: float | None = None  # test accuracy at the best-validation epoch (runs with --val-fraction)
    early_std: float | None = None
    final_by_seed: str = ""  # "seed:accuracy" per run, ";"-separated (every seed shown)
    early_by_seed: str = ""


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def group(runs: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs by label; runs of different methods under one label are never averaged together: each
    method's runs become their own group, ``"label [method]"``."""
    methods: dict[str, set[str]] = {}
    for run in runs:
        methods.setdefault(run.label, set()).add(run.result["method"])
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        key = run.label if len(methods[run.label]) == 1 else f"{run.label} [{run.result['method']}]"
        groups.setdefault(key, []).append(run)
    return groups


def summarize(runs: Sequence[RunRecord]) -> list[Summary]:
    """Mean ± std over seeds per label; speedups are ratios of mean training time (on the set's
    ``analysis.clock``) to the reference SAM and SGD runs of the same set (``analysis.reference_label``;
    ``None`` when absent)."""
    key = analysis.clock(runs)
    rows = []
    for label, members in group(runs).items():
        acc = [r.result["final_test_acc"] for r in members]
        rows.append(
            Summary(
                label,
                members[0].result["method"],
                len(members),
                statistics.fmean(acc),
                _std(acc),
                statistics.fmean(r.result["best_test_acc"] for r in members),
                statistics.fmean(r.result[key] for r in members),
                statistics.fmean(r.result["cost"] for r in members),
                statistics.fmean(r.result["ascent_fraction"] for r in members),
            )
        )
    groups = group(runs)
    for row in rows:
        _add_seeds(row, groups[row.label])
    times = {row.label: row.time_mean for row in rows}
    sam, sgd = analysis.reference_label(groups, "sam"), analysis.reference_label(groups, "sgd")
    for row in rows:
        if sam is not None:
            row.speedup_vs_sam = times[sam] / row.time_mean
        if sgd is not None:
            row.speedup_vs_sgd = times[sgd] / row.time_mean
    return rows


def _by_seed(members: Sequence[RunRecord], key: str) -> str:
    return ";".join(
        f"{r.result['seed']}:{'' if r.result.get(key) is None else round(100 * r.result[key], 2)}"
        for r in members
    )


def _add_seeds(row: Summary, members: Sequence[RunRecord]) -> None:
    """The early-stopped mean ± std (when every run has one) and the per-seed accuracies of ``row``."""
    early = analysis.early_accuracies(members)
    if early is not None:
        row.early_mean, row.early_std = statistics.fmean(early), _std(early)
    row.final_by_seed = _by_seed(members, "final_test_acc")
    row.early_by_seed = _by_seed(members, "early_stopped_test_acc")


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


COLUMNS = [
    "method",
    "seeds",
    "test acc % (mean ± std)",
    "early-stopped acc % (mean ± std)",
    "best acc %",
    "train time s",
    "speedup vs SAM",
    "speedup vs SGD",
    "cost per sample ×SGD",
    "ascent fraction",
]


def markdown_table(rows: Sequence[Summary]) -> str:
    return md_table(COLUMNS, map(_summary_cells, rows))


def _summary_cells(r: Summary) -> list[str]:
    return [
        escape(r.label),
        str(r.seeds),
        f"{100 * r.acc_mean:.2f} ± {100 * r.acc_std:.2f}",
        "–" if r.early_mean is None else f"{100 * r.early_mean:.2f} ± {100 * (r.early_std or 0):.2f}",
        f"{100 * r.best_mean:.2f}",
        f"{r.time_mean:.1f}",
        _ratio(r.speedup_vs_sam),
        _ratio(r.speedup_vs_sgd),
        f"{r.cost_mean:.2f}",
        f"{r.ascent_fraction:.2f}",
    ]


BUDGET_COLUMNS = [
    "method",
    "drift, last 20 % of epochs (max over seeds)",
    "whole-run cost ÷ SGD run's",
    "acc % at SGD's time",
    "acc % at SGD's cost",
    "time to SAM − 0.5 (s)",
]


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def budget_table(rows: Sequence[analysis.Budgeted]) -> str:
    """Markdown: convergence drift and the equal-budget view of every method."""
    return md_table(BUDGET_COLUMNS, map(_budget_cells, rows))


def _budget_cells(r: analysis.Budgeted) -> list[str]:
    if r.time_to_target is not None:
        reach = f"{r.time_to_target:.1f}"
    else:
        reach = f"not reached ({r.reached}/{r.seeds} seeds)"
    return [
        escape(r.label),
        _percent(r.drift_max),
        "–" if r.budget_vs_sgd is None else f"{r.budget_vs_sgd:.2f}",
        _percent(r.acc_at_sgd_time),
        _percent(r.acc_at_sgd_cost),
        reach,
    ]


def verdict_lines(ref: analysis.Verdict, rows: Sequence[analysis.Budgeted]) -> str:
    """The header lines that say whether this set of runs can decide the question."""
    lines = []
    if ref.margin is not None and ref.margin_needed is None:
        lines.append(
            f"- SAM over SGD: {100 * ref.margin:+.2f} points — NOT decisive (one seed: no spread to judge by)"
        )
    elif ref.margin is not None:
        state = "decisive" if ref.decisive else "NOT decisive"
        lines.append(
            f"- SAM over SGD: {100 * ref.margin:+.2f} points (needs > {100 * ref.margin_needed:.2f}: "
            f"{analysis.MARGIN_STDS:g} × the larger seed std, at least {100 * analysis.MARGIN_MIN:g})"
            f" — {state}"
        )
    drifts = [f"{escape(r.label)} {_percent(r.drift_max)}" for r in rows]
    if drifts:
        lines.append(
            f"- convergence drift (test-accuracy range over the last {100 * analysis.TAIL:g} % of epochs, "
            f"points, max over seeds): " + ", ".join(drifts)
        )
    if ref.early_margin is not None:
        lines.append(promise.decides_line(ref).rstrip("\n"))
    if ref.target is not None:
        lines.append(
            f"- target (SAM's final accuracy − {100 * analysis.TARGET_SLACK:g}): {100 * ref.target:.2f} %"
        )
    return "".join(line + "\n" for line in lines)


def csv_text(rows: Sequence[Summary], budget: Sequence[analysis.Budgeted]) -> str:
    """One line per method: the summary's fields, then the equal-budget ones."""
    out = io.StringIO()
    extra = [f for f in analysis.Budgeted.__dataclass_fields__ if f not in ("label", "seeds")]
    fields = list(Summary.__dataclass_fields__) + extra
    by_label = {b.label: b for b in budget}
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = {k: getattr(row, k) for k in Summary.__dataclass_fields__}
        values.update({k: getattr(by_label[row.label], k) for k in extra})
        writer.writerow(values)
    return out.getvalue()


def _evaluated(members: Sequence[RunRecord]) -> list[int]:
    """Epoch positions at which every run of the group has a test accuracy."""
    length = min(len(r.metrics) for r in members)
    return [i for i in range(length) if all(r.metrics[i].get("test_acc") is not None for r in members)]


def _mean_curve(members: Sequence[RunRecord], key: str, positions: Sequence[int]) -> list[float]:
    return [statistics.fmean(r.metrics[i][key] for r in members) for i in positions]


def _axes(groups: int):
    """A figure whose colour cycle gives each of ``groups`` methods its own colour (tab20 beyond 10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cycler import cycler

    fig, ax = plt.subplots(figsize=(7 if groups <= 8 else 9.5, 4.5))
    if groups > 10:
        ax.set_prop_cycle(cycler(color=plt.get_cmap("tab20").colors))
    return plt, fig, ax


def _finish(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend: bool) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save_png(plt, fig, path)


def save_png(plt, fig, path: Path, dpi: int = 130) -> Path:
    """Write ``fig`` to ``path`` as PNG and close it, atomically as every run file is written: a link
    planted at ``path`` is replaced, its target never written."""
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=dpi)
    plt.close(fig)
    records.atomic_write(path, lambda f: f.write(image.getvalue()))
    return path


def _reference_lines(ax, target: float | None, budget: float | None, budget_name: str) -> None:
    """SAM's target as a horizontal line and SGD's budget as a vertical one, where known."""
    if target is not None:
        ax.axhline(100 * target, color="0.35", ls=":", lw=1, label="SAM − 0.5 (target)")
    if budget is not None:
        ax.axvline(budget, color="0.35", ls="--", lw=1, label=budget_name)


def plot_accuracy_vs_time(runs: Sequence[RunRecord], path: Path, ref: analysis.Verdict | None = None) -> Path:
    """Test accuracy after each evaluated epoch against cumulative training time (``ref.clock``, else the
    runs' ``analysis.clock``), mean over seeds with a min–max band; SAM's target and SGD's time as
    reference lines."""
    key = analysis.clock(runs) if ref is None else ref.clock
    groups = group(runs)
    plt, fig, ax = _axes(len(groups))
    for label, members in groups.items():
        positions = _evaluated(members)
        t, acc = _mean_curve(members, key, positions), _mean_curve(members, "test_acc", positions)
        lows = [min(r.metrics[i]["test_acc"] for r in members) for i in positions]
        highs = [max(r.metrics[i]["test_acc"] for r in members) for i in positions]
        (line,) = ax.plot(t, [100 * a for a in acc], label=label, lw=1.6, marker=".")
        ax.fill_between(
            t, [100 * v for v in lows], [100 * v for v in highs], color=line.get_color(), alpha=0.12
        )
        early = promise.early_point(members, key)
        if early is not None:  # the early stop: a hollow square of the same colour
            ax.plot(*early, marker="s", mfc="none", ms=8, color=line.get_color())
    if ref is not None:
        _reference_lines(ax, ref.target, ref.sgd_time, f"SGD's {analysis.clock_name(key)}")
    return _finish(
        plt,
        fig,
        ax,
        path,
        f"training {analysis.clock_name(key)} (s)",
        "test accuracy (%); □ early stop"
        if any(map(promise.early_point, groups.values()))
        else "test accuracy (%)",
        f"Test accuracy against training time ({seeds_phrase(map(len, groups.values()), ', band min–max')})",
        legend=True,
    )


def plot_accuracy_vs_cost(
    rows: Sequence[Summary],
    path: Path,
    ref: analysis.Verdict | None = None,
    budget: Sequence[analysis.Budgeted] = (),
) -> Path:
    """Final test accuracy (mean ± std over seeds) against the whole run's effective cost relative to SGD's
    run (against the cost per sample when there is no SGD run); SAM's target and SGD's cost as lines."""
    whole = {b.label: b.budget_vs_sgd for b in budget if b.budget_vs_sgd is not None}
    use_whole = len(whole) == len(rows)
    plt, fig, ax = _axes(len(rows))
    if ref is not None:
        _reference_lines(ax, ref.target, 1.0 if ref.sgd_effective is not None else None, "SGD's cost")
    for r in rows:
        x = whole[r.label] if use_whole else r.cost_mean
        (line, *_) = ax.errorbar(x, 100 * r.acc_mean, yerr=100 * r.acc_std, fmt="o", capsize=3, label=r.label)
        if r.early_mean is not None:  # early-stopped: a hollow marker of the same colour
            ax.errorbar(
                x,
                100 * r.early_mean,
                yerr=100 * (r.early_std or 0),
                fmt="s",
                mfc="none",
                capsize=3,
                color=line.get_color(),
            )
        ax.annotate(r.label, (x, 100 * r.acc_mean), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.margins(x=0.12, y=0.08)
    early = any(r.early_mean is not None for r in rows)
    what = "whole run, ÷ SGD's run" if use_whole else "per training sample, ×SGD"
    return _finish(
        plt,
        fig,
        ax,
        path,
        f"effective cost (forward + 2·backward samples; {what})",
        "test accuracy (%): ● final, □ early-stopped" if early else "final test accuracy (%)",
        f"Accuracy against cost ({seeds_phrase((r.seeds for r in rows), ', bars = ± std')})",
        legend=False,
    )


def _shared(values: list[Any]) -> Any:
    """The value all runs share, else the distinct values joined with ' / ' (in first-seen order)."""
    distinct = list(dict.fromkeys(map(str, values)))
    return values[0] if len(distinct) == 1 else " / ".join(distinct) + " (differs)"


def describe_setup(runs: Sequence[RunRecord]) -> str:
    """The configuration and machine of a set of runs, as Markdown (a setting that differs between runs
    shows each value)."""
    config = {k: _shared([run.config.get(k) for run in runs]) for k in runs[0].config}
    env = {k: _shared([run.environment.get(k) for run in runs]) for k in runs[0].environment}
    keys = [
        "dataset",
        "subset",
        "label_noise",
        "val_fraction",
        "model",
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "weight_decay",
        "lr_warmup_epochs",
        "label_smoothing",
        "crop_padding",
        "flip",
        "cutout",
        "threads",
        "device",
    ]
    setup = ", ".join(f"{k}={escape(config[k])}" for k in keys if k in config)
    machine = ", ".join(
        f"{k}={escape(env[k])}"
        for k in ("cpu", "cpu_count", "torch_threads", "device", "gpu", "torch", "python", "platform")
        if k in env
    )
    return f"- setup: {setup}\n- machine: {machine}\n"


def write_report(
    runs: Sequence[RunRecord], out: Path, *, title: str = "flatsam results", command: str | None = None
) -> dict[str, Path]:
    """Write ``results.md`` (verdict lines, the main table, the equal-budget table), ``results.csv`` and
    the two PNG plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs)
    groups = group(runs)
    ref = analysis.verdict(groups)
    budget = [analysis.budgeted(label, members, ref) for label, members in groups.items()]
    paths = {
        "csv": out / "results.csv",
        "md": out / "results.md",
        "time_plot": plot_accuracy_vs_time(runs, out / "accuracy_vs_time.png", ref),
        "cost_plot": plot_accuracy_vs_cost(rows, out / "accuracy_vs_cost.png", ref, budget),
    }
    records.atomic_write(paths["csv"], lambda f: f.write(csv_text(rows, budget).encode()))
    text = [f"# {title}\n", describe_setup(runs)]
    if command:
        text.append(f"- command: `{' '.join(command.split()).replace('`', chr(39))}`\n")
    text += [
        verdict_lines(ref, budget),
        "\n",
        markdown_table(rows),
        "\n",
        f"Train time and speedups: mean training {analysis.clock_name(ref.clock)} measured in this set of "
        f"runs (evaluation excluded; {analysis.CLOCK_RULE}). Effective cost counts samples through forward "
        "and backward (a backward weighs two forwards) relative to SGD.\n\n",
        promise.section(groups, ref),
        "## At equal budgets\n\n",
        budget_table(budget),
        "\n",
        "Drift: range of test accuracy over the evaluated epochs of the last 20 % of the run, the largest "
        "over seeds (≤ 0.3 points counts as converged). Accuracy at SGD's time / cost: read off each run's "
        "per-epoch curve at the mean training time / effective samples of SGD's runs (linear interpolation; "
        "a run that finished within the budget counts with its final accuracy) — a point inside a longer "
        "run comes before its learning rate has decayed, so it understates a run planned for that budget. "
        "Time to target: training time at the first evaluated epoch reaching SAM's final mean accuracy − "
        "0.5 points, mean over seeds when every seed reaches it.\n\n",
        "![accuracy vs time](accuracy_vs_time.png)\n\n![accuracy vs cost](accuracy_vs_cost.png)\n",
    ]
    records.atomic_write(paths["md"], lambda f: f.write("".join(text).encode()))
    return paths
