"""`flatsam --help`: every real default shown once and equal to what a run uses; the per-epoch line and
the progress bar's live figures of `flatsam train`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import pytest

from flatsam.cli import CONFIG_HELP, FLAGS, build_parser, given_config, main, shown
from flatsam.train import loop
from flatsam.train.config import TrainConfig
from flatsam.train.progress import epoch_line
from flatsam.train.tasks import TASK_DEFAULTS
from helpers import small_cli_args, tiny_run_config


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help as ``--help`` prints it (dest → text)."""
    formatter = parser._get_formatter()
    return {a.dest: formatter._expand_help(a) for a in parser._actions if a.help and a.dest != "help"}


@pytest.mark.parametrize("command", ["train", "bench", "report", "methods"])
def test_no_option_shows_none_or_two_defaults(command):
    for dest, text in helps(subparser(command)).items():
        assert "(default: None)" not in text, dest
        assert text.count("(default") <= 1, f"{dest}: {text}"


def test_train_help_shows_the_defaults_a_run_uses():
    parser = subparser("train")
    texts = helps(parser)
    used = given_config(parser.parse_args([]))  # what `flatsam train` with no options runs
    checked = 0
    for f in dataclasses.fields(TrainConfig):
        value = getattr(used, f.name)
        if f.name not in CONFIG_HELP and f.name not in FLAGS or value is None:
            continue
        if "default" in CONFIG_HELP.get(f.name, FLAGS.get(f.name, "")):  # the help says it in its own words
            assert shown(value) in texts[f.name], f.name
            continue
        assert f"(default: {shown(value)}" in texts[f.name], f.name
        pose = TASK_DEFAULTS["pose"].get(f.name, value)
        if pose != value:
            assert f"with --task pose: {shown(pose)})" in texts[f.name], f.name
        checked += 1
    assert checked >= 25  # the run configuration, not a handful of options
    assert "(default: ausam;" in texts["method"]
    assert texts["epochs"] == "number of epochs (default: 30)"


def test_bench_config_options_name_the_suite_not_train_defaults():
    parser = subparser("bench")
    texts = helps(parser)
    assert "default" not in texts["epochs"] and "default" not in texts["lr"]
    assert any("the suite's values" in (g.title or "") for g in parser._action_groups)
    assert texts["repeats"] == "interleaved rounds (default: 10)"


def test_printed_help_has_the_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in out
    assert re.search(r"--lr LR +peak learning rate .*\(default: 0\.05; with --task pose: 0\.001\)", out)
    assert "Nesterov momentum (default: off)" in out


def test_epoch_line_reads_a_metrics_row():
    row = {"epoch": 2, "train_loss": 0.61234, "train_acc": 0.7841, "test_acc": None, "epoch_time": 12.34}
    row.update(cost=1.0234, skipped=0)
    expected = "epoch  3/30  train loss 0.6123 acc 78.41%  test acc -  12.3 s  cost 1.02× SGD"
    assert epoch_line(row, 30) == expected
    line = epoch_line({**row, "val_acc": 0.5, "test_acc": 0.8, "skipped": 2}, 30)
    assert "val acc 50.00%  test acc 80.00%" in line and line.endswith("2 skipped")


def test_train_prints_one_line_per_epoch(tmp_path, capsys):
    run_dir = tmp_path / "r"
    argv = ["train", "--method", "sam", "--epochs", "2", "--run-dir", str(run_dir), "--no-progress"]
    assert main([*argv, *small_cli_args(256)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lines = [line for line in out if line.startswith("epoch ")]
    assert lines == [epoch_line(row, 2) for row in rows]
    pattern = r"epoch 2/2  train loss \d\.\d{4} acc [\d.]+%  test acc [\d.]+%  [\d.]+ s  cost 2\.00× SGD"
    assert re.fullmatch(pattern, lines[1])
    assert out[-1].startswith("sam: test accuracy")  # the summary stays last


def test_progress_bar_shows_the_loss_from_the_first_step(tmp_path, monkeypatch):
    postfixes: list[dict] = []

    class Recording(loop.tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            postfixes.append(dict(ordered_dict or {}, **kwargs))
            super().set_postfix(ordered_dict, refresh=refresh, **kwargs)

    monkeypatch.setattr(loop, "tqdm", Recording)
    config = tiny_run_config(tmp_path / "r", epochs=1, subset=192)  # 3 steps: fewer than 10
    loop.Run(config, progress=True).run()
    assert len(postfixes) == 3
    assert postfixes[0]["epoch"] == "1" and float(postfixes[0]["loss"]) > 0 and postfixes[0]["test"] == "-"


def test_train_keeps_its_checkpoint_unless_told_not_to(tmp_path, capsys):
    """``--no-keep-checkpoint`` deletes the finished run's checkpoint and nothing else; by default it stays
    (``--resume`` of a finished run, or a longer run from it, needs it)."""
    for flag, kept in ((None, True), ("--no-keep-checkpoint", False)):
        run_dir = tmp_path / str(kept)
        argv = ["train", "--method", "sgd", "--epochs", "1", "--run-dir", str(run_dir), "--no-progress"]
        assert main([*argv, *small_cli_args(128), *([flag] if flag else [])]) == 0
        assert (run_dir / "checkpoint.pt").exists() == kept
        assert {"config.json", "metrics.jsonl", "result.json"} <= {p.name for p in run_dir.iterdir()}
