"""bench/noisy-selection/measure.py: counting AUSAM's draws must leave the training untouched."""

import importlib.util
import json
from pathlib import Path

import pytest

from flatsam.train.loop import train
from flatsam.train.records import write_json
from helpers import tiny_run_config

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "noisy-selection" / "measure.py"


def _measure_module():
    spec = importlib.util.spec_from_file_location("noisy_selection_measure", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_counted_rerun_matches_the_recorded_run_and_counts_every_drawn_row(tmp_path):
    config = tiny_run_config(tmp_path / "recorded", subset=256, label_noise=0.3)
    recorded = train(config, progress=False)
    out = tmp_path / "measured"
    out.mkdir()
    summary = _measure_module().measure(tmp_path / "recorded", out)

    assert summary["final_test_acc"] == recorded["final_test_acc"]  # the wrapper changes nothing
    # the warm-up (epoch 0) trains on every row, later epochs on half of each batch of 64
    assert summary["drawn_rows_by_epoch"] == {0: 256, 1: 128, 2: 128}
    shares = summary["noisy_share_by_epoch"]
    assert shares[0] == summary["noise_rate"] == 77 / 256  # every row once: the data's noise rate
    assert all(0.0 <= share <= 1.0 for share in shares.values())
    assert json.loads((out / "results.json").read_text())["noise_rate"] == summary["noise_rate"]
    assert (out / "noisy_share.png").stat().st_size > 0


def test_the_script_refuses_a_method_without_row_selection(tmp_path):
    config = tiny_run_config(tmp_path / "recorded", method="sam", method_options={})
    write_json(tmp_path / "recorded" / "config.json", {"config": config.to_dict()})
    out = tmp_path / "measured"
    out.mkdir()
    with pytest.raises(ValueError, match="draws no rows"):
        _measure_module().measure(tmp_path / "recorded", out)
