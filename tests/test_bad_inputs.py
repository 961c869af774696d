"""Every bad input is one line on stderr naming it, exit status 2, no traceback (FLATSAM_DEBUG=1 shows
one); nothing is trained or written before the input is checked."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import flatsam
from flatsam.cli import main
from flatsam.train import Run, TrainConfig, records
from helpers import small_cli_args

SMALL = small_cli_args()
TRAIN = ["train", "--epochs", "1", "--no-progress", *SMALL]

#: (case, command line, what the message must name)
CASES = [
    ("lr inf", [*TRAIN, "--lr", "inf"], "lr"),
    ("lr nan", [*TRAIN, "--lr", "nan"], "lr"),
    ("negative epochs", [*TRAIN, "--epochs", "-1"], "epochs"),
    ("label smoothing 1.5", [*TRAIN, "--label-smoothing", "1.5"], "label_smoothing"),
    ("rho nan", [*TRAIN, "--opt", "rho=nan"], "rho"),
    ("rho inf in the spec", [*TRAIN, "--method", "sam:rho=inf"], "rho"),
    ("keep not a number", [*TRAIN, "--opt", "keep=abc"], "keep"),
    ("keep out of range", [*TRAIN, "--method", "ausam:keep=2"], "keep"),
    ("typo of an option", [*TRAIN, "--opt", "kep=0.3"], "did you mean 'keep'"),
    ("unknown option", [*TRAIN, "--opt", "nosuch=1"], "nosuch"),
    ("base-optimizer option", [*TRAIN, "--opt", "lr=0.1"], "--lr"),
    ("option without value", [*TRAIN, "--opt", "keep"], "keep"),
    ("bool option given a number", [*TRAIN, "--opt", "reweight=3"], "reweight"),
    ("unknown device", [*TRAIN, "--device", "tpu"], "device"),
    ("bad cuda index", [*TRAIN, "--device", "cuda:x"], "device"),
    ("negative threads", [*TRAIN, "--threads", "-1"], "threads"),
    ("zero threads", [*TRAIN, "--threads", "0"], "threads"),
    ("missing data dir", [*TRAIN, "--data-dir", "/nonexistent/data"], "/nonexistent/data"),
    ("name outside runs", [*TRAIN, "--name", "../../x"], "--name"),
    ("absolute name", [*TRAIN, "--name", "/tmp/x"], "--name"),
    ("resume of no run", [*TRAIN, "--resume", "--name", "nosuchrun"], "nosuchrun"),
    ("resume and overwrite", [*TRAIN, "--resume", "--overwrite", "--name", "x"], "--overwrite"),
    ("component without custom", [*TRAIN, "--schedule", "ae"], "--method custom"),
    ("unknown component option", [*TRAIN, "--method", "custom", "--opt", "selection.kep=1"], "kep"),
    ("bench bad option value", ["bench", "--methods", "sgd", "ausam:keep=2", *SMALL], "keep"),
    ("bench option typo", ["bench", "--methods", "sgd", "ausam:kep=1", *SMALL], "kep"),
    ("bench bad run setting", ["bench", "--methods", "sgd", "sam:train.lr=nan", *SMALL], "lr"),
    ("bench unknown setting", ["bench", "--methods", "sam:train.nosuch=1", *SMALL], "nosuch"),
    ("report of nothing", ["report", "/nonexistent/runs"], "/nonexistent/runs"),
]


@pytest.mark.parametrize(("argv", "name"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_it(argv, name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLATSAM_DEBUG", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("flatsam: error: ") and name in err, err
    assert not list(tmp_path.rglob(records.CONFIG))  # nothing started


def test_debug_variable_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLATSAM_DEBUG", "1")
    with pytest.raises(ValueError, match="lr must be a finite number"):
        main([*TRAIN, "--lr", "inf"])


def test_library_refuses_non_finite_rho_and_bad_indices():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="rho"):
        flatsam.SAM(model.parameters(), torch.optim.SGD, rho=float("nan"), lr=0.1)
    opt = flatsam.AUSAM(model.parameters(), torch.optim.SGD, model=model, lr=0.1, num_samples=16)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))

    def closure(rows):
        return torch.nn.functional.cross_entropy(model(x[rows]), y[rows], reduction="none")

    with pytest.raises(TypeError, match="index must hold integers"):
        opt.step(closure, index=torch.arange(16.0))
    with pytest.raises(ValueError, match="index must be 1-d"):
        opt.step(closure, index=torch.arange(16).reshape(8, 2))
    with pytest.raises(ValueError, match="index has 8 entries but batch_size is 16"):
        opt.step(closure, index=torch.arange(8), batch_size=16)
    import numpy as np

    flatsam.AUSAM(model.parameters(), torch.optim.SGD, model=model, lr=0.1, num_samples=np.int64(64))


def test_methods_cite_papers_or_say_unverified(capsys):
    assert main(["methods", "--components"]) == 0
    out = capsys.readouterr().out
    for internal in ("spec §", "recalled", "formula sheet", "junaidaliop", "spec/"):
        assert internal not in out


def test_closed_pipe_is_quiet():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flatsam", "methods", "--components"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader goes away before the first line, as `| head -0` would
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


def fail_second_write(monkeypatch, error: OSError) -> None:
    """Make the second checkpoint write fail half-way with ``error`` (a full or read-only disk)."""
    original, calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            f.write(b"half a checkpoint")
            raise error
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize(
    ("error", "said"),
    [(errno.ENOSPC, "no space left on the device"), (errno.EROFS, "the file system is read-only")],
)
def test_full_or_read_only_disk_keeps_the_last_checkpoint(error, said, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "r"
    fail_second_write(monkeypatch, OSError(error, os.strerror(error)))
    assert main([*TRAIN, "--epochs", "3", "--method", "sgd", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and str(run_dir / records.CHECKPOINT) in err and len(err.splitlines()) == 1
    assert records.load_checkpoint(run_dir / records.CHECKPOINT)["epoch"] == 1  # the last good one
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    monkeypatch.undo()
    assert main([*TRAIN, "--epochs", "3", "--method", "sgd", "--run-dir", str(run_dir), "--resume"]) == 0


def test_run_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        Run(
            TrainConfig(
                method="sgd",
                dataset="synthetic",
                subset=128,
                model="mlp",
                epochs=1,
                run_dir=str(tmp_path / "r"),
            ),
            progress=False,
        ).run()
    finally:
        os.umask(old)
    for name in (records.CONFIG, records.RESULT, records.CHECKPOINT, records.METRICS):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o644, name


def test_hostile_report_inputs_are_skipped_or_escaped(tmp_path, capsys):
    runs = tmp_path / "runs"
    good = TrainConfig(
        method="sgd",
        dataset="synthetic",
        subset=128,
        model="mlp",
        epochs=1,
        label="a|b<script>x</script>\nc",
        run_dir=str(runs / "good"),
    )
    Run(good, progress=False).run()
    result = json.loads((runs / "good" / records.RESULT).read_text())
    bad = {
        "garbage": "not json",
        "zero-time": json.dumps({**result, "train_time": 0}),
        "nan-acc": json.dumps({**result, "final_test_acc": float("nan")}),
        "deep": "[" * 100_000 + "]" * 100_000,
        "list": "[1, 2]",
    }
    for name, text in bad.items():
        (runs / name).mkdir()
        (runs / name / records.RESULT).write_text(text)
        (runs / name / records.METRICS).write_text((runs / "good" / records.METRICS).read_text())
    (runs / "bad-metrics").mkdir()
    (runs / "bad-metrics" / records.RESULT).write_text(json.dumps(result))
    (runs / "bad-metrics" / records.METRICS).write_text('{"epoch": 0}\nnot json\n')
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / records.CONFIG).write_text("{}")
    assert main(["report", str(runs), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "skipped 6 unreadable run(s)" in err and "unfinished" in err
    for name in [*bad, "bad-metrics"]:
        assert str(runs / name) in err
    assert f"{runs / 'bad-metrics' / records.METRICS}, line 2" in err
    table = (tmp_path / "out" / "results.md").read_text()
    assert "a\\|b&lt;script&gt;x&lt;/script&gt; c" in table and "<script>" not in table


def test_truncated_tiny_imagenet_cache_is_rebuilt(tmp_path):
    import numpy as np

    from flatsam.data import tiny_imagenet

    path = tmp_path / "cache.npz"
    np.savez(path, pixels=np.zeros((2, tiny_imagenet.SIZE, tiny_imagenet.SIZE, 3), np.uint8))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="rebuilt"):
        assert tiny_imagenet._load_cache(path, 2) is None


def test_bench_epochs_keep_the_suites_warmup_fraction(tmp_path, capsys):
    out = tmp_path / "b"
    argv = [
        "bench",
        "--quick",
        "--epochs",
        "3",
        "--out",
        str(out),
        "--no-progress",
        "--methods",
        "sgd",
        *SMALL,
    ]
    assert main(argv) == 0
    assert "LR warm-up 0.9 epochs" in capsys.readouterr().err  # the quick suite: 9 of 30 epochs
    config = json.loads((out / "runs" / "sgd-s0" / records.CONFIG).read_text())["config"]
    assert config["epochs"] == 3 and config["lr_warmup_epochs"] == pytest.approx(0.9)


def test_report_shows_settings_that_differ_and_finds_references_by_method(tmp_path):
    from flatsam.train.report import RunRecord, describe_setup, summarize

    def record(label: str, method: str, lr: float, time: float) -> RunRecord:
        result = dict(
            method=method,
            label=label,
            seed=0,
            final_test_acc=0.5,
            best_test_acc=0.5,
            train_time=time,
            cost=1.0,
            ascent_fraction=0.0,
        )
        return RunRecord(tmp_path, {"lr": lr, "method_options": {}}, {"cpu": "x"}, result, [])

    runs = [record("plain SGD", "sgd", 0.1, 10.0), record("SAM|0.05", "sam", 0.2, 20.0)]
    assert "lr=0.1 / 0.2 (differs)" in describe_setup(runs)
    rows = {row.label: row for row in summarize(runs)}
    assert rows["plain SGD"].speedup_vs_sam == pytest.approx(2.0)
    assert rows["SAM|0.05"].speedup_vs_sgd == pytest.approx(0.5)


def test_a_base_optimizer_setting_given_as_a_method_option_says_how_to_pass_it():
    params = torch.nn.Linear(2, 2).parameters()
    expected = r"setting of the base optimizer SGD.*build_method\(\.\.\., fused=\.\.\.\)"
    with pytest.raises(ValueError, match=expected):
        flatsam.build_method("sam", params, overrides={"fused": True}, lr=0.1)
    opt = flatsam.build_method("sam", torch.nn.Linear(2, 2).parameters(), fused=True, lr=0.1)
    assert opt.base.defaults["fused"]
