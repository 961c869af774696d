"""`flatsam report`: where it writes (never into a run folder) and what its plots say about seeds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flatsam.cli import main
from flatsam.train import Run, records, report
from helpers import fabricate, tiny_run_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """``runs/sgd`` (a finished one-epoch run) and ``runs/sgd-copy`` (the same files, another folder)."""
    root = tmp_path_factory.mktemp("report") / "runs"
    Run(tiny_run_config(root / "sgd", method="sgd", method_options={}, epochs=1)).run()
    shutil.copytree(root / "sgd", root / "sgd-copy")
    return root


def files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_one_run_is_reported_beside_it_not_inside(runs, capsys):
    before = files(runs / "sgd")
    assert main(["report", str(runs / "sgd")]) == 0
    assert files(runs / "sgd") == before  # nothing written into the run folder
    out = runs / "sgd-report"
    assert (out / "results.md").is_file() and (out / "accuracy_vs_time.png").is_file()
    assert f"written: {out / 'results.csv'}" in capsys.readouterr().out


def test_default_folders(runs, tmp_path):
    assert report.report_folder([runs / "sgd", runs / "sgd-copy"]) == runs / "report"
    assert report.report_folder([runs]) == runs  # a folder of runs (a benchmark's) holds its report
    assert report.report_folder([runs / "sgd"], tmp_path / "x") == tmp_path / "x"


@pytest.mark.parametrize("inside", ["sgd", "sgd/plots"])
def test_out_inside_a_run_folder_is_refused(runs, inside, capsys):
    assert main(["report", str(runs / "sgd-copy"), "--out", str(runs / inside)]) == 2
    err = capsys.readouterr().err
    assert "inside the run folder" in err and str(runs / "sgd") in err
    assert not (runs / "sgd" / records.RESULT).with_name("results.md").exists()
    assert not (runs / "sgd" / "plots").exists()


def test_plot_titles_say_one_seed(runs, tmp_path, monkeypatch):
    titles: list[str] = []
    finish = report._finish

    def recording(plt, fig, ax, path, xlabel, ylabel, title, legend):
        titles.append(title)
        return finish(plt, fig, ax, path, xlabel, ylabel, title, legend)

    monkeypatch.setattr(report, "_finish", recording)
    report.write_report(report.find_runs([runs / "sgd"]), tmp_path / "one")
    assert len(titles) == 2 and all("(1 seed)" in t for t in titles)
    assert not any("std" in t or "band" in t or "mean" in t for t in titles)
    titles.clear()
    report.write_report(report.find_runs([runs]), tmp_path / "two")  # the copy: two runs of one label
    assert "mean over 2 seeds, band min–max" in titles[0] and "mean over 2 seeds, bars = ± std" in titles[1]


def test_seeds_phrase():
    assert report.seeds_phrase([1, 1], ", x") == "1 seed"
    assert report.seeds_phrase([3, 1], ", x") == "mean over 1–3 seeds, x"


def test_a_suite_of_one_thread_cpu_runs_reports_cpu_time(tmp_path):
    """Speedups, the time plot and the promise table read CPU time where every run recorded it."""
    for label, wall, cpu in (("sgd", 30.0, 10.0), ("sam", 40.0, 20.0), ("ausam", 30.0, 12.0)):
        for seed in range(2):
            fabricate(tmp_path / "runs", label, seed, 0.8 + 0.01 * seed, 0.8, wall, cpu)
    rows = {row.label: row for row in report.summarize(report.find_runs([tmp_path / "runs"]))}
    assert rows["ausam"].time_mean == 12.0 and rows["ausam"].speedup_vs_sam == pytest.approx(20 / 12)
    report.write_report(report.find_runs([tmp_path / "runs"]), tmp_path / "out")
    text = (tmp_path / "out" / "results.md").read_text()
    assert "mean training CPU time (one thread)" in text and "| CPU time (one thread) ÷ SGD's |" in text
