"""The grid's report across its settings (``flatsam report --grid``), on fabricated run folders."""

from __future__ import annotations

import csv

import pytest

from flatsam.cli import main
from flatsam.train import grid, grid_report, records
from helpers import fabricate

TUNING = "grid-cnn-40ep-n40-crop"
HELD = "grid-cnn-40ep-n20"  # held out, decides
FLAT = "grid-resnet8-40ep-n40"  # held out, does not decide
PARTIAL = "grid-cnn-100ep-n40"  # SAM has one seed of three


def setting(name: str) -> grid.Setting:
    return next(s for s in grid.SETTINGS if s.name == name)


def runs(root, name: str, table: dict[str, tuple[float, float, float]], seeds=(0, 1, 2)) -> None:
    """Fabricated finished runs of ``name``: label -> (final, early-stopped, train time); candidates are
    given by their grid names and stored under their planned labels (``NAME-38ep``)."""
    for label, (final, early, time) in table.items():
        stored = label if label in ("sgd", "sam") else grid_report.candidate_label(label, setting(name))
        for seed in seeds:
            jitter = 0.001 * (seed - 1)  # a seed spread of 0.1 points
            fabricate(root / name / "runs", stored, seed, final + jitter, early + jitter, time)


REFS = {"sgd": (0.80, 0.81, 10.0), "sam": (0.85, 0.85, 20.0)}


@pytest.fixture
def bench(tmp_path):
    runs(tmp_path, TUNING, REFS | {
        "ausam-halfrho": (0.847, 0.846, 9.6),  # -0.3 / -0.4 at 0.96x SGD: kept
        "uniform-halfrho": (0.84, 0.845, 9.5),  # -1.0 final: missed
        "ausam-lowloss": (0.849, 0.848, 9.7),  # kept
        "saf": (0.849, 0.85, 10.4),  # accurate, but slower than SGD: missed
    })  # fmt: skip
    runs(tmp_path, HELD, REFS | {
        "ausam-halfrho": (0.843, 0.845, 9.6),  # -0.7 final: missed
        "uniform-halfrho": (0.838, 0.84, 9.5),  # -1.2 final: its worst setting
        "ausam-lowloss": (0.848, 0.849, 9.8),  # kept: the only candidate kept in both
        "saf": (0.85, 0.85, 10.2),
    })  # fmt: skip
    flat = {"sgd": (0.80, 0.845, 10.0), "sam": (0.85, 0.85, 20.0), "ausam-halfrho": (0.80, 0.80, 9.0)}
    runs(tmp_path, FLAT, flat)  # SAM's early-stopped lead is 0.5 points: decides nothing
    runs(tmp_path, PARTIAL, {"sgd": REFS["sgd"]})
    runs(tmp_path, PARTIAL, {"sam": REFS["sam"]}, seeds=(0,))
    return tmp_path


def test_the_candidate_labels_are_those_the_grid_suites_run():
    for s in grid.SETTINGS:
        labels = [spec.partition("=")[0] for spec in grid.methods(s)[2:]]
        assert labels == [grid_report.candidate_label(name, s) for name, _ in grid.CANDIDATES]


def test_settings_are_read_with_their_verdicts_and_missing_runs_left_out(bench):
    results = {r.setting.name: r for r in grid_report.read_grid(bench)}
    assert results[TUNING].decides and results[HELD].decides
    assert results[FLAT].verdict is not None and not results[FLAT].decides
    assert results[PARTIAL].verdict is None and results[PARTIAL].seeds["sam"] == 1
    assert not results[TUNING].complete  # ausam-mix, ausam-late, mesa, mesa-ema4ep did not run
    assert results["grid-resnet8-100ep-n20"].seeds == dict.fromkeys(results[TUNING].seeds, 0)
    kept = {name for name, p in results[TUNING].promises.items() if p.holds}
    assert kept == {"ausam-halfrho", "ausam-lowloss"}
    p = results[TUNING].promises["ausam-halfrho"]
    assert (p.final_gap, p.early_gap, p.time_vs_sgd) == pytest.approx((-0.003, -0.004, 0.96))


def test_standings_count_deciding_settings_held_out_apart_and_pending_ones_as_such(bench):
    results = grid_report.read_grid(bench)
    every = {s.name: s for s in grid_report.standings(results)}
    assert every["ausam-lowloss"].robust and every["ausam-lowloss"].kept == [HELD, TUNING]  # in grid order
    assert not every["ausam-halfrho"].robust and every["ausam-halfrho"].missed == [HELD]
    assert every["uniform-halfrho"].worst == (HELD, pytest.approx(-0.012))
    assert every["saf"].slowest == pytest.approx(1.04) and not every["saf"].robust
    assert every["ausam-mix"].pending == [HELD, TUNING] and every["ausam-mix"].worst is None
    held = {s.name: s for s in grid_report.standings(results, held_out=True)}
    assert held["ausam-halfrho"].kept == [] and held["ausam-halfrho"].missed == [HELD]  # FLAT never counts
    tuning = {s.name: s for s in grid_report.standings(results, held_out=False)}
    assert tuning["ausam-halfrho"].kept == [TUNING]
    assert "Kept the promise in every deciding setting so far: ausam-lowloss." in grid_report.verdict_text(
        results
    )


def test_sgd_and_sam_are_placed_on_the_candidates_scales(bench):
    refs = {r.setting.name: r for r in grid_report.read_grid(bench)}[TUNING].references
    assert (refs["sgd"].final_gap, refs["sgd"].early_gap, refs["sgd"].time_vs_sgd) == pytest.approx(
        (-0.05, -0.04, 1)
    )
    assert (refs["sam"].final_gap, refs["sam"].early_gap, refs["sam"].time_vs_sgd) == pytest.approx((0, 0, 2))


def test_until_sgd_and_sam_have_every_seed_no_candidate_is_judged(tmp_path):
    runs(tmp_path, TUNING, {"sgd": REFS["sgd"], "ausam-halfrho": (0.85, 0.85, 9.0)})
    runs(tmp_path, TUNING, {"sam": REFS["sam"]}, seeds=(0, 1))
    text = grid_report.verdict_text(grid_report.read_grid(tmp_path))
    head = "0 of 8 settings complete; 0 have every SGD and SAM seed, and 0 of those decide (0 held out)."
    assert text == f"{head} No candidate can be judged yet.\n"
    paths = grid_report.write_grid_report(tmp_path)  # the plots say so rather than fail
    assert paths["frontier"].stat().st_size > 0 and paths["plot"].stat().st_size > 0


def test_when_every_setting_has_its_references_and_none_decides_the_grid_says_it_cannot_test(tmp_path):
    flat = {"sgd": (0.80, 0.845, 10.0), "sam": (0.85, 0.85, 20.0)}  # SAM leads by 0.5 early-stopped
    for s in grid.SETTINGS[:-1]:
        runs(tmp_path, s.name, flat)
    pending = grid_report.verdict_text(grid_report.read_grid(tmp_path))
    assert pending.endswith("No candidate can be judged yet.\n")  # one setting has no references yet
    runs(tmp_path, grid.SETTINGS[-1].name, flat | {"ausam-halfrho": (0.85, 0.85, 9.0)})
    text = grid_report.verdict_text(grid_report.read_grid(tmp_path))
    head = "0 of 8 settings complete; 8 have every SGD and SAM seed, and 0 of those decide (0 held out)."
    assert text.startswith(f"{head} Which settings decide is final, and so is the verdict.")
    assert "No setting decides" in text and "cannot test the promise" in text


def test_without_a_robust_candidate_the_closest_is_named_with_its_worst_setting(bench):
    runs(bench, TUNING, {"ausam-lowloss": (0.82, 0.82, 9.7)}, seeds=(3,))  # a 4th seed: mean -0.8 points
    text = grid_report.verdict_text(grid_report.read_grid(bench))
    assert "No candidate has kept the promise in every deciding setting so far." in text
    # saf is closer to SAM (-0.10) but slower than SGD: the closest within SGD's wall-clock comes first
    assert (
        f"The closest, ausam-halfrho, stays -0.70 points from SAM at its worst ({HELD}), at up to 0.96×"
        in text
    )


def test_once_every_setting_has_its_references_the_verdict_waits_only_for_deciding_settings(bench):
    flat = {"sgd": (0.80, 0.845, 10.0), "sam": (0.85, 0.85, 20.0)}
    for s in grid.SETTINGS:
        if s.name not in (TUNING, HELD, FLAT, PARTIAL):
            runs(bench, s.name, flat)  # nothing else decides
    runs(bench, PARTIAL, {"sam": REFS["sam"]}, seeds=(1, 2))  # PARTIAL now decides, without candidates
    text = grid_report.verdict_text(grid_report.read_grid(bench))
    assert "8 have every SGD and SAM seed, and 3 of those decide (2 held out)." in text
    assert "Which settings decide is final; the verdict waits for candidates' seeds." in text
    assert "Kept the promise in every deciding setting so far: " not in text  # PARTIAL has no candidate
    missing = {"ausam-mix", "ausam-late", "mesa", "mesa-ema4ep"}  # kept wherever they run
    kept = {name: (0.849, 0.849, 9.7) for name, _ in grid.CANDIDATES if name in missing}
    runs(bench, TUNING, kept)
    runs(bench, HELD, kept)
    runs(bench, PARTIAL, {name: (0.849, 0.849, 9.7) for name, _ in grid.CANDIDATES})
    text = grid_report.verdict_text(grid_report.read_grid(bench))
    assert "Which settings decide is final, and so is the verdict." in text
    assert "Kept the promise in every deciding setting: ausam-mix, ausam-lowloss, ausam-late, mesa," in text


def test_the_looser_bar_counts_a_lead_of_a_point_whatever_the_seed_spread_and_is_labelled_not_the_rule(bench):
    noisy = "grid-resnet8-100ep-n20"
    for seed, sgd_early in enumerate((0.78, 0.82, 0.80)):  # SGD's seeds 2 points apart
        fabricate(bench / noisy / "runs", "sgd", seed, 0.80, sgd_early, 10.0)
        fabricate(bench / noisy / "runs", "sam", seed, 0.85, 0.83, 20.0)  # leads by 3: the bar is 6
    runs(bench, noisy, {"ausam-lowloss": (0.849, 0.829, 9.7)})  # kept there too
    results = {r.setting.name: r for r in grid_report.read_grid(bench)}
    assert results[noisy].leads and not results[noisy].decides
    assert not results[FLAT].leads  # a 0.5-point lead counts under neither bar
    looser = {s.name: s for s in grid_report.standings(list(results.values()), counts=lambda r: r.leads)}
    assert looser["ausam-lowloss"].kept == [HELD, TUNING, noisy] and looser["ausam-lowloss"].robust
    assert looser["ausam-halfrho"].pending == [noisy]  # no run there: never judged
    text = grid_report.write_grid_report(bench)["md"].read_text()
    section = text.split("## After the fact: a looser bar (not the rule)")[1]
    assert f"({HELD}, {TUNING}, {noisy})" in section
    assert "Kept in every one of them: ausam-lowloss." in section
    assert "Kept the promise in every deciding setting so far: ausam-lowloss." in text  # the rule's verdict


def test_a_recorded_step_time_check_is_shown_beside_the_rule(bench):
    assert "step-time check" not in (grid_report.write_grid_report(bench)["md"]).read_text()
    label = grid_report.candidate_label("ausam-halfrho", setting(HELD))
    ratios = {f"{label} / sgd": {"median": 1.021, "q1": 1.002, "q3": 1.073}}
    ratios["sam / sgd"] = {"median": 2.0, "q1": 1.94, "q3": 2.08}
    records.write_json(bench / "grid-speed" / HELD / "speed.json", {"settings": [{"ratios": ratios}]})
    text = grid_report.write_grid_report(bench)["md"].read_text()
    section = text.split("## The step-time check (beside the rule, not part of it)")[1]
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines() if line.startswith("| ")}
    assert rows["ausam-halfrho"] == "| ausam-halfrho | 1.02 [1.00, 1.07] |"
    assert rows["sam"] == "| sam | 2.00 [1.94, 2.08] |" and rows["saf"] == "| saf | – |"
    assert f"| candidate | `{HELD}` |" in section  # only the settings whose check is recorded


def test_the_report_files_show_every_setting_and_candidate(bench, capsys):
    assert main(["report", "--grid", str(bench)]) == 0
    text = (bench / "grid" / "results.md").read_text()
    assert text == capsys.readouterr().out.split("written:")[0].rstrip("\n") + "\n"
    assert f"| {TUNING} | tuning | 18 of 30 | +4.00 | 0.30 | yes |" in text
    assert f"| {FLAT} | held out | 9 of 30 | +0.50 | 0.30 | no |" in text
    assert f"| {PARTIAL} | held out | 4 of 30 | – | – | – |" in text
    row = next(line for line in text.splitlines() if line.startswith("| ausam-halfrho |") and "×" in line)
    cells = dict(zip(grid.SUITE_NAMES, row.split(" | ")[1:], strict=True))
    assert cells[TUNING] == "-0.30 / -0.40, 0.96× ✓"
    assert cells[HELD] == "-0.70 / -0.50, 0.96× ✗"
    assert cells[FLAT] == "(-5.00 / -5.00, 0.90×)"  # a setting that does not decide: in parentheses
    assert cells[PARTIAL] == "–"
    rows = list(csv.DictReader((bench / "grid" / "results.csv").open()))
    assert len(rows) == len(grid.SETTINGS) * len(grid.CANDIDATES)
    mesa = next(r for r in rows if r["setting"] == TUNING and r["candidate"] == "mesa")
    assert mesa["seeds"] == "0" and mesa["final_gap"] == ""
    assert (bench / "grid" / "gaps.png").stat().st_size > 0 and (
        bench / "grid" / "frontier.png"
    ).stat().st_size > 0
    assert "![frontier](frontier.png)" in text


def test_a_folder_without_grid_runs_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished grid runs"):
        grid_report.write_grid_report(tmp_path)
    assert main(["report", "--grid", str(tmp_path), str(tmp_path)]) == 2


def test_a_setting_is_timed_on_cpu_time_only_where_every_run_recorded_it(tmp_path):
    """One-thread CPU runs compare CPU seconds (a loaded machine inflates wall-clock, here SGD's runs by
    half); a single run without CPU time puts the whole setting back on wall-clock."""
    root = tmp_path / HELD / "runs"
    table = {"sgd": (0.80, 0.81, 15.0, 10.0), "sam": (0.85, 0.85, 20.0, 20.0)}
    table["ausam-halfrho-38ep"] = (0.849, 0.849, 10.0, 10.5)
    for label, (final, early, wall, cpu) in table.items():
        for seed in range(3):
            fabricate(root, label, seed, final + 0.001 * seed, early + 0.001 * seed, wall, cpu)
    result = {r.setting.name: r for r in grid_report.read_grid(tmp_path)}[HELD]
    assert result.verdict.clock == "train_cpu_time"
    assert result.promises["ausam-halfrho"].time_vs_sgd == pytest.approx(1.05)
    assert not result.promises["ausam-halfrho"].holds  # on wall-clock it would be 0.67x and kept
    assert "CPU time (one thread)" in grid_report.settings_table([result])
    fabricate(root, "uniform-halfrho-38ep", 0, 0.85, 0.85, 10.0)  # no CPU time recorded
    result = {r.setting.name: r for r in grid_report.read_grid(tmp_path)}[HELD]
    assert result.verdict.clock == "train_time"
    assert result.promises["ausam-halfrho"].time_vs_sgd == pytest.approx(10 / 15)


def test_a_candidate_short_of_seeds_shows_how_many_it_has(bench):
    runs(bench, FLAT, {"ausam-mix": (0.85, 0.85, 9.0)}, seeds=(0,))
    runs(bench, FLAT, {"ausam-late": (0.85, 0.85, 9.0)}, seeds=(0, 1))
    table = grid_report.matrix_table(grid_report.read_grid(bench))
    rows = {line.split(" | ")[0]: line for line in table.splitlines()}
    assert rows["| ausam-mix"].count("(1 seed)") == 1 and rows["| ausam-late"].count("(2 seeds)") == 1
    assert "seed" not in rows["| ausam-halfrho"]  # all three of its seeds, where it ran
