"""The robust-promise grid: its design (a half fraction of four two-level factors, one tuning setting), and
every suite builds checked runs (every method spec valid, candidates planned for SGD's wall-clock)."""

from __future__ import annotations

import collections
import math

import pytest

from flatsam.cli import build_parser
from flatsam.train import grid, records
from flatsam.train.bench import SUITES, equal_time_epochs, run_bench, split_overrides, with_common_rho
from flatsam.train.config import MethodSpec
from flatsam.train.loop import check_method
from flatsam.train.report import find_runs


def test_the_grid_is_a_half_fraction_where_every_factor_varies():
    settings = grid.SETTINGS
    assert len(settings) == 8 and len({s.name for s in settings}) == 8
    for factor in ("model", "epochs", "noise", "crops"):
        counts = collections.Counter(getattr(s, factor) for s in settings)
        assert sorted(counts.values()) == [4, 4], factor  # two levels, four settings each
    code = {"cnn": -1, "resnet8": 1, 40: -1, 100: 1, 0.2: -1, 0.4: 1}
    for s in settings:  # I = ABCD: crops where model × length × noise codes to +1
        assert s.crops == (code[s.model] * code[s.epochs] * code[s.noise] == 1)
    for a, b in ((0, 1), (0, 2), (1, 2)):  # and every pair of the first three factors is fully crossed
        pairs = {(s.model, s.epochs, s.noise)[a : b + 1 : b - a] for s in settings}
        assert len(pairs) == 4
    assert [s.name for s in settings if s.tuning] == [grid.TUNING]
    assert all(0.2 <= s.noise <= 0.4 for s in settings)
    base = grid.base()
    train_rows = base.subset - round(base.val_fraction * base.subset)
    assert math.ceil(train_rows / base.batch_size) == 36  # as mesa-ema4ep's decay assumes


@pytest.mark.parametrize("name", grid.SUITE_NAMES)
def test_every_grid_suite_builds_checked_runs(name):
    suite = SUITES[name]
    setting = next(s for s in grid.SETTINGS if s.name == name)
    assert suite.seeds == (0, 1, 2) and suite.config.val_fraction == 0.1 and suite.config.threads == 1
    expected = dict(subset=5000, batch_size=128, lr=0.02, nesterov=True, weight_decay=5e-4, eval_bn="precise")
    assert {key: getattr(suite.config, key) for key in expected} == expected
    assert (suite.config.model, suite.config.epochs, suite.config.label_noise) == (
        setting.model,
        setting.epochs,
        setting.noise,
    )
    assert suite.config.crop_padding == (grid.CROP if setting.crops else 0)
    labels, epochs = [], {}
    for text in suite.methods:
        spec, config = split_overrides(with_common_rho(MethodSpec.parse(text), suite.rho), suite.config)
        run = config.replace(method=spec.name, method_options=dict(spec.options), label=spec.label)
        check_method(run)  # names, options and their values
        labels.append(spec.label)
        epochs[spec.name if spec.name in ("sgd", "sam") else spec.label] = run.epochs
        assert run.lr_warmup_epochs == pytest.approx(run.epochs / 10)
    assert len(set(labels)) == len(labels) == 2 + len(grid.CANDIDATES)
    planned = equal_time_epochs(setting.epochs)
    assert epochs.pop("sgd") == epochs.pop("sam") == setting.epochs
    assert set(epochs.values()) == {planned} and planned < setting.epochs


def test_the_cli_accepts_every_grid_suite():
    parser = build_parser()
    for name in grid.SUITE_NAMES:
        assert parser.parse_args(["bench", "--suite", name]).suite == name


def test_a_grid_suite_runs_end_to_end_at_toy_size(tmp_path):
    """The tuning suite's method specs, on a few synthetic images for 2-3 epochs: every run finishes and
    the report holds the early-stopped column and the promise table."""
    suite = SUITES[grid.TUNING]
    config = suite.config.replace(
        dataset="synthetic", subset=100, model="mlp", batch_size=50, epochs=3, lr_warmup_epochs=0.3
    )
    shrink = {"train.epochs=38": "train.epochs=2", "train.lr_warmup_epochs=3.8": "train.lr_warmup_epochs=0.2"}
    texts = list(suite.methods)
    for old, new in shrink.items():
        assert all(old in text for text in texts[2:])  # the candidates' planned length and warm-up
        texts = [text.replace(old, new) for text in texts]
    methods = [MethodSpec.parse(text) for text in texts]
    paths = run_bench(config, methods, [0], tmp_path, rho=suite.rho, progress=False)
    runs = find_runs([tmp_path / "runs"])
    assert len(runs) == len(methods)
    assert all(run.result["early_stopped_test_acc"] is not None for run in runs)
    assert all(records.read_json(run.path / records.CONFIG)["config"]["val_fraction"] == 0.1 for run in runs)
    text = paths["md"].read_text()
    assert "early-stopped acc %" in text and "keeps the promise" in text


def test_the_held_out_queue_is_every_held_out_setting_longest_first():
    queue = grid.held_out_queue()
    assert sorted(queue) == sorted(n for n in grid.SUITE_NAMES if n != grid.TUNING)
    setting = {s.name: s for s in grid.SETTINGS}
    costs = [grid.SECONDS_PER_EPOCH[setting[n].model] * setting[n].epochs for n in queue]
    assert costs == sorted(costs, reverse=True)
    assert queue[:2] == ["grid-resnet8-100ep-n40-crop", "grid-resnet8-100ep-n20"]  # crops first on a tie
