"""Hardened edges (issue 25), as a table: each case prepares a folder or file as a careless or hostile
user would, runs the command line, and states the exit status and what the one-line message names.
Nothing outside the run folder is touched; nothing trains before the input is checked."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from flatsam.cli import main
from flatsam.train import Interrupted, Run, records
from helpers import small_cli_args, tiny_run_config

SMALL = small_cli_args()
TRAIN = ["train", "--epochs", "1", "--no-progress", *SMALL]
PRECIOUS = b"precious content\n"


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """An AUSAM run stopped in epoch 1 (a checkpoint at epoch 1, batch 1), to copy and damage."""
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.raises(Interrupted):
        Run(tiny_run_config(run_dir, epochs=2), progress=False).run(interrupt_at=(1, 1))
    return run_dir


def resume_argv(run_dir: Path) -> list[str]:
    return ["train", "--no-progress", "--run-dir", str(run_dir), "--resume"]


# -- preparations: each takes tmp_path (and the interrupted run) and returns the command line ---------


def lock_link(tmp: Path, _: Path) -> list[str]:
    (tmp / "r").mkdir()
    (tmp / "precious").write_bytes(PRECIOUS)
    (tmp / "r" / ".lock").symlink_to(tmp / "precious")
    return [*TRAIN, "--run-dir", str(tmp / "r")]


def lock_dangling(tmp: Path, _: Path) -> list[str]:
    (tmp / "r").mkdir()
    (tmp / "r" / ".lock").symlink_to(tmp / "created-outside")
    return [*TRAIN, "--run-dir", str(tmp / "r")]


def lock_fifo(tmp: Path, _: Path) -> list[str]:
    (tmp / "r").mkdir()
    os.mkfifo(tmp / "r" / ".lock")
    return [*TRAIN, "--run-dir", str(tmp / "r")]


def folder_link(tmp: Path, _: Path) -> list[str]:
    (tmp / "elsewhere").mkdir()
    (tmp / "r").symlink_to(tmp / "elsewhere")
    return [*TRAIN, "--run-dir", str(tmp / "r")]


def copied(tmp: Path, run: Path) -> Path:
    shutil.copytree(run, tmp / "r", symlinks=True)
    return tmp / "r"


def checkpoint_link(tmp: Path, run: Path) -> list[str]:
    r = copied(tmp, run)
    (r / records.CHECKPOINT).rename(tmp / "real.pt")
    (r / records.CHECKPOINT).symlink_to(tmp / "real.pt")
    return resume_argv(r)


def config_fifo(tmp: Path, run: Path) -> list[str]:
    r = copied(tmp, run)
    (r / records.CONFIG).unlink()
    os.mkfifo(r / records.CONFIG)
    return resume_argv(r)


def metrics_device(tmp: Path, run: Path) -> list[str]:
    r = copied(tmp, run)
    (r / records.METRICS).unlink()
    (r / records.METRICS).symlink_to("/dev/zero")
    return resume_argv(r)


def edited_config(**changes) -> Callable[[Path, Path], list[str]]:
    def prepare(tmp: Path, run: Path) -> list[str]:
        r = copied(tmp, run)
        saved = records.read_json(r / records.CONFIG)
        saved["config"].update(changes)
        (r / records.CONFIG).write_text(json.dumps(saved))
        return resume_argv(r)

    return prepare


def damaged_checkpoint(change: Callable[[dict], None]) -> Callable[[Path, Path], list[str]]:
    """A checkpoint edited and saved again with a recomputed digest (the digest alone cannot catch it)."""

    def prepare(tmp: Path, run: Path) -> list[str]:
        r = copied(tmp, run)
        state = records.load_checkpoint(r / records.CHECKPOINT)
        change(state)
        records.save_checkpoint(r / records.CHECKPOINT, state)
        return resume_argv(r)

    return prepare


def empty_fashion_mnist(tmp: Path, _: Path) -> list[str]:
    """A Fashion-MNIST folder whose training files hold 0 images (the test files 20)."""
    for name, count, image in (
        ("train-images-idx3-ubyte.gz", 0, True),
        ("train-labels-idx1-ubyte.gz", 0, False),
        ("t10k-images-idx3-ubyte.gz", 20, True),
        ("t10k-labels-idx1-ubyte.gz", 20, False),
    ):
        header = struct.pack(">IIII", 0x803, count, 28, 28) if image else struct.pack(">II", 0x801, count)
        body = bytes(count * 28 * 28) if image else bytes(count)
        (tmp / name).write_bytes(gzip.compress(header + body))
    args = ["train", "--epochs", "1", "--no-progress", "--model", "mlp", "--threads", "1"]
    return [*args, "--data-dir", str(tmp), "--no-download", "--run-dir", str(tmp / "r")]


def fixed(argv: list[str]) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: [*argv, "--run-dir", str(tmp / "r")] if argv[0] == "train" else argv


def colliding_labels(tmp: Path, _: Path) -> list[str]:
    return ["bench", "--methods", "a/b=sgd", "a_b=sam", "--out", str(tmp / "b"), "--no-progress", *SMALL]


#: (case, preparation → command line, exit status, what the message names)
CASES = [
    # files that are not what they claim
    ("lock is a symlink to a file", lock_link, 2, ".lock is a symbolic link"),
    ("lock is a dangling symlink", lock_dangling, 2, ".lock is a symbolic link"),
    ("lock is a FIFO", lock_fifo, 2, ".lock is a FIFO"),
    ("run folder is a symlink", folder_link, 2, "is a symbolic link"),
    ("checkpoint is a symlink", checkpoint_link, 2, "checkpoint.pt is a symbolic link"),
    ("config.json is a FIFO", config_fifo, 2, "config.json is a FIFO"),
    ("metrics.jsonl links to /dev/zero", metrics_device, 2, "metrics.jsonl is a symbolic link"),
    # one run, one folder
    ("bench labels map to one folder", colliding_labels, 2, "map to the same run folder"),
    # runs that did not train
    ("no training images", empty_fashion_mnist, 2, "has no training images"),
    ("empty method name", fixed([*TRAIN, "--method", ""]), 2, "names no method"),
    # values checked where they enter
    ("seed beyond 64 bits", fixed([*TRAIN, "--seed", "99999999999999999999"]), 2, "seed must be in"),
    ("negative seed", fixed([*TRAIN, "--seed", "-1"]), 2, "seed must be in"),
    ("method seed a float", fixed([*TRAIN, "--opt", "seed=1e10"]), 2, "option seed must be an integer"),
    ("method seed a bool", fixed([*TRAIN, "--opt", "seed=true"]), 2, "option seed must be an integer"),
    ("method seed empty", fixed([*TRAIN, "--opt", "seed="]), 2, "option seed must be an integer"),
    ("unknown device name", fixed([*TRAIN, "--opt", "history_device=nosuch"]), 2, "history_device"),
    ("absent device", fixed([*TRAIN, "--opt", "history_device=cuda:7"]), 2, "not available"),
    ("sync_free=maybe", fixed([*TRAIN, "--opt", "sync_free=maybe"]), 2, "option sync_free must be bool"),
    ("max_grad_norm=abc", fixed([*TRAIN, "--opt", "max_grad_norm=abc"]), 2, "option max_grad_norm"),
    ("data dir is a file", fixed([*TRAIN, "--data-dir", "/etc/passwd"]), 2, "is a file, not a folder"),
    ("pose size beyond memory", fixed([*TRAIN, "--task", "pose", "--pose-size", "100000"]), 2, "GiB"),
    ("SimCC split beyond memory", fixed([*TRAIN, "--task", "pose", "--simcc-split", "1e9"]), 2, "GiB"),
    ("SimCC split below one bin", fixed([*TRAIN, "--task", "pose", "--simcc-split", "1e-9"]), 2, "one bin"),
    ("edited data_dir on resume", edited_config(data_dir="/"), 2, "different ['data_dir']"),
    ("method_options a list", edited_config(method_options=[1, 2]), 2, "method_options must be a JSON"),
    (
        "epoch without metrics",
        damaged_checkpoint(lambda s: s.update(epoch=2, batch=0, metrics=[])),
        2,
        "per-epoch metric rows",
    ),
    ("negative epoch", damaged_checkpoint(lambda s: s.update(epoch=-3)), 2, "must be >= 0"),
    (
        "3-byte RNG state",
        damaged_checkpoint(lambda s: s.update(torch_rng=torch.zeros(3, dtype=torch.uint8))),
        2,
        "torch_rng",
    ),
    (
        "counter not a number",
        damaged_checkpoint(lambda s: s["totals"].update(steps="many")),
        2,
        "totals.steps must be a finite number",
    ),
    (
        "component state edited",
        damaged_checkpoint(lambda s: s["optimizer"]["selection"].update(dlp_sum=5.0)),
        2,
        "selection state: dlp_sum is a float, not a tensor",
    ),
]


@pytest.mark.parametrize(("prepare", "code", "said"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_naming_it(prepare, code, said, interrupted, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLATSAM_DEBUG", raising=False)
    argv = prepare(tmp_path, interrupted)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()}
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("flatsam: error: ") and said in err, err
    assert "\x1b" not in err
    assert not (tmp_path / "created-outside").exists()
    for path, content in before.items():  # nothing there was changed
        if path.name not in (records.METRICS,):
            assert path.read_bytes() == content, path
    assert not list((tmp_path / "elsewhere").iterdir()) if (tmp_path / "elsewhere").exists() else True
    assert not (tmp_path / "b" / "runs").exists()  # no bench run started


def test_a_lock_held_by_a_live_writer_never_echoes_its_content(tmp_path):
    import fcntl

    from flatsam.train.rundir import FolderLock, RunFolderError

    (tmp_path / "r").mkdir()
    path = tmp_path / "r" / ".lock"
    path.write_bytes(b"\x1b[2J\x1b[31mowned\n")
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description holds it
    try:
        with pytest.raises(RunFolderError, match=r"another process \(pid \?\)") as error:
            FolderLock(tmp_path / "r").acquire()
        assert "\x1b" not in str(error.value)
    finally:
        os.close(fd)


def test_failed_validation_leaves_no_empty_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from flatsam.data import ImageData

    empty = ImageData(
        "empty",
        torch.zeros(0, 1, 4, 4, dtype=torch.uint8),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(2, 1, 4, 4, dtype=torch.uint8),
        torch.zeros(2, dtype=torch.long),
        2,
        (0.5,),
        (0.5,),
    )
    with pytest.raises(ValueError, match="has no training images"):
        Run(tiny_run_config(tmp_path / "runs" / "x", method="sgd", method_options={}), data=empty)
    assert not (tmp_path / "runs" / "x").exists()


# -- runs that did not train -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "flags"),
    [("sgd", ["--lr", "1e30"]), ("sam", ["--opt", "rho=1e308"])],
    ids=["lr 1e30", "rho 1e308"],
)
def test_a_run_that_did_not_train_fails_with_valid_json(method, flags, tmp_path, capsys):
    run_dir = tmp_path / "r"
    argv = ["train", "--method", method, "--epochs", "2", "--no-progress", *SMALL, *flags]
    assert main([*argv, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "failed" in err and "result.json records it" in err, err
    text = (run_dir / records.RESULT).read_text()
    result = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in result.json"))
    assert result["skipped_steps"] > result["steps"] / 2 or result["final_test_loss"] is None


def test_strict_json_writes_null_for_non_finite_numbers(tmp_path):
    records.write_json(
        tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}}
    )
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    records.write_jsonl(tmp_path / "x.jsonl", [{"a": float("nan")}])
    assert records.read_jsonl(tmp_path / "x.jsonl") == [{"a": None}]


def test_ctrl_c_in_the_last_evaluation_stops_with_130_and_resume_finishes(tmp_path):
    config = tiny_run_config(tmp_path / "r", epochs=1)
    run = Run(config, progress=False)
    original = run.setup.task.evaluate

    def evaluate(*args, **kwargs):
        os.kill(os.getpid(), 2)  # SIGINT during the last (only) evaluation
        return original(*args, **kwargs)

    run.setup.task.evaluate = evaluate
    with pytest.raises(Interrupted, match="after the last epoch") as stop:
        run.run()
    assert 128 + stop.value.signum == 130 and stop.value.saved
    assert not (tmp_path / "r" / records.RESULT).exists()
    assert main(["train", "--no-progress", "--run-dir", str(tmp_path / "r"), "--resume"]) == 0
    straight = Run(config.replace(run_dir=str(tmp_path / "s")), progress=False).run()
    resumed = records.read_json(tmp_path / "r" / records.RESULT)
    for key in ("final_test_acc", "samples", "forward_samples", "backward_samples", "cost", "steps"):
        assert resumed[key] == straight[key], key


# -- flatsam report on hostile folders ---------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    Run(tiny_run_config(run_dir, method="sgd", method_options={}, epochs=1), progress=False).run()
    return run_dir


def hostile_copy(runs: Path, finished: Path, name: str, damage: Callable[[Path], None]) -> None:
    shutil.copytree(finished, runs / name)
    damage(runs / name)


def edit_json(name: str, **changes) -> Callable[[Path], None]:
    """A damage: the JSON object in the run file ``name`` updated with ``changes``."""

    def damage(folder: Path) -> None:
        value = json.loads((folder / name).read_text())
        value.update(changes)
        (folder / name).write_text(json.dumps(value))

    return damage


def set_result(**changes) -> Callable[[Path], None]:
    return edit_json(records.RESULT, **changes)


def replace_with(name: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        make(folder / name)

    return damage


#: (folder, damage, what the skipped-runs line says about it)
REPORT_CASES = [
    ("env-list", edit_json(records.CONFIG, environment=[1, 2]), "'environment' is not a JSON object"),
    ("result-dev-zero", replace_with(records.RESULT, lambda p: p.symlink_to("/dev/zero")), "symbolic link"),
    ("metrics-fifo", replace_with(records.METRICS, os.mkfifo), "metrics.jsonl is a FIFO"),
    ("config-link", replace_with(records.CONFIG, lambda p: p.symlink_to("/etc/passwd")), "symbolic link"),
    ("negative-cost", set_result(cost=-1.0), "cost is -1.0, outside"),
    ("acc-above-one", set_result(final_test_acc=7.0), "final_test_acc is 7.0, outside"),
    ("ascent-fraction", set_result(ascent_fraction=1.5), "ascent_fraction is 1.5, outside"),
    ("inf-acc", set_result(final_test_acc=1e309), "final_test_acc is inf"),
    ("escapes", set_result(method="\x1b[31mred"), None),  # valid: shown escaped in the table
]


def test_report_refuses_hostile_run_folders_naming_each(finished, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(finished, runs / "good")
    for name, damage, _ in REPORT_CASES:
        hostile_copy(runs, finished, name, damage)
    assert main(["report", str(runs), "--out", str(tmp_path / "out")]) == 0  # returns: no FIFO hangs it
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\x1b" not in err
    refused = [c for c in REPORT_CASES if c[2] is not None]
    assert f"skipped {len(refused)} unreadable run(s)" in err, err
    for name, _, said in refused:
        assert str(runs / name) in err and said in err, (name, err)
    assert "\x1b" not in (tmp_path / "out" / "results.md").read_text()


def test_report_never_averages_different_methods_under_one_label(finished, tmp_path):
    from flatsam.train.report import find_runs, summarize

    runs = tmp_path / "runs"
    shutil.copytree(finished, runs / "a")
    hostile_copy(runs, finished, "b", set_result(method="sam", final_test_acc=0.9, best_test_acc=0.9))
    rows = {row.label: row for row in summarize(find_runs([runs]))}
    label = records.read_json(finished / records.RESULT)["label"]
    assert set(rows) == {f"{label} [sgd]", f"{label} [sam]"}
    assert rows[f"{label} [sam]"].acc_mean == 0.9 and rows[f"{label} [sam]"].seeds == 1


# -- library values (flatsam.validate: the checks the engine's step calls) ----------------------------

VALIDATE_CASES = [
    ("rho negative", "check_param_groups", ([{"lr": 0.1, "rho": -1.0}],), ValueError, r"\['rho'\] is -1.0"),
    ("lr infinite", "check_param_groups", ([{"lr": float("inf")}],), ValueError, r"\['lr'\] is inf"),
    ("lr a string", "check_param_groups", ([{"lr": "0.1"}],), ValueError, "finite number"),
    ("index too short", "check_index", (torch.arange(5), 8), ValueError, "5 entries but the batch has 8"),
    ("index too long", "check_index", (torch.arange(9), 8), ValueError, "9 entries"),
    ("index floats", "check_index", (torch.arange(8.0), 8), TypeError, "integers"),
    ("index 2-d", "check_index", (torch.arange(8).view(2, 4), 2), ValueError, "1-d"),
    ("seed too large", "check_seed", ("seed", 2**64), ValueError, "seed must be an integer"),
    ("seed a bool", "check_seed", ("seed", True), ValueError, "seed must be an integer"),
    ("flag maybe", "check_flag", ("sync_free", "maybe"), TypeError, "sync_free must be true, false"),
    ("device nosuch", "check_device", ("history_device", "nosuch"), ValueError, "history_device"),
    (
        "state float for tensor",
        "check_component_state",
        ("selection", {"dlp_sum": torch.ones(4)}, {"dlp_sum": 5.0}),
        ValueError,
        "dlp_sum is a float",
    ),
    (
        "state shape",
        "check_component_state",
        ("selection", {"dlp_sum": torch.ones(4)}, {"dlp_sum": torch.ones(3)}),
        ValueError,
        r"shape \(3,\)",
    ),
    (
        "state NaN",
        "check_component_state",
        ("selection", {"dlp_sum": torch.ones(2)}, {"dlp_sum": torch.tensor([1.0, float("nan")])}),
        ValueError,
        "NaN",
    ),
    ("state missing", "check_component_state", ("schedule", {"count": 1}, {}), ValueError, "lacks"),
    (
        "state count a float",
        "check_component_state",
        ("schedule", {"count": 1}, {"count": 1.5}),
        ValueError,
        "not an integer",
    ),
]


@pytest.mark.parametrize(
    ("function", "args", "kind", "said"), [c[1:] for c in VALIDATE_CASES], ids=[c[0] for c in VALIDATE_CASES]
)
def test_validate_refuses_naming_the_value(function, args, kind, said):
    from flatsam import validate

    with pytest.raises(kind, match=said):
        getattr(validate, function)(*args)


def test_validate_accepts_good_values():
    from flatsam import validate

    validate.check_param_groups([{"lr": 0.0, "rho": 0.05}, {"lr": torch.tensor(0.1)}])
    validate.check_index(torch.arange(8), 8)
    validate.check_seed("seed", 2**63 - 2)
    validate.check_flag("sync_free", None)
    validate.check_device("history_device", "cpu")
    validate.check_component_state(
        "s", {"a": torch.ones(0), "n": 2, "f": 0.5}, {"a": torch.ones(7), "n": 3, "f": 1}
    )


MPII_RECORD = {
    "image": "a.jpg",
    "center": [10, 10],
    "scale": 1.0,
    "joints": [[1, 2]] * 16,
    "joints_vis": [1] * 16,
}


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"scale": float("inf")}, "'scale' must be a number > 0 and finite, got inf"),
        ({"scale": True}, "'scale' must be a number"),
        ({"image": "../../etc/passwd"}, "'image' must be a file name in images/"),
        ({"image": ".."}, "'image' must be a file name in images/"),
        ({"center": [float("inf"), 1]}, "'center': expected finite numbers"),
    ],
    ids=["scale Infinity", "scale true", "image outside images/", "image ..", "center Infinity"],
)
def test_mpii_fields_are_refused_naming_them(change, said, tmp_path):
    from flatsam.pose import mpii

    path = tmp_path / "mpii_val.json"
    path.write_text(json.dumps([{**MPII_RECORD, **change}]))  # json writes Infinity as MPII files may hold
    with pytest.raises(ValueError, match=said) as info:
        mpii.read_annotations(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("world", "rank", "error", "lost"),
    [
        ("2", "1", RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:57235"), True),
        ("2", "0", RuntimeError("Connection closed by peer"), False),  # rank 0 says what went wrong
        ("1", "0", RuntimeError("Connection closed by peer"), False),
        ("2", "1", RuntimeError("some other failure"), False),
        ("2", "1", ValueError("Connection closed by peer"), False),
    ],
    ids=["rank 1, peer gone", "rank 0", "one process", "other error", "not a runtime error"],
)
def test_only_a_lost_peer_on_another_rank_is_reported_as_such(world, rank, error, lost, monkeypatch):
    """Under torchrun, rank 1 whose rank 0 stopped on a bad input says so in one line (the probe saw
    "internal error … Connection closed by peer")."""
    from flatsam.cli import peer_lost

    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", rank)
    assert peer_lost(error) is lost


def test_report_replaces_planted_links_without_writing_their_targets(finished, tmp_path):
    """A shared benchmark folder whose report files are links to a user's file: `flatsam report` writes
    its own files in their place; the link targets stay as they were."""
    bench = tmp_path / "bench"
    shutil.copytree(finished, bench / "runs" / "a")
    (tmp_path / "precious").write_bytes(PRECIOUS)
    names = ("results.md", "results.csv", "accuracy_vs_time.png", "accuracy_vs_cost.png")
    for name in names:
        (bench / name).symlink_to(tmp_path / "precious")
    assert main(["report", str(bench), "--out", str(bench)]) == 0
    assert (tmp_path / "precious").read_bytes() == PRECIOUS
    assert all(not (bench / name).is_symlink() for name in names)


def test_reads_are_bounded_and_messages_inert(tmp_path):
    from flatsam.safe_open import RunFileError, read_bytes, shown

    (tmp_path / "big.json").write_bytes(b"x" * 101)
    with pytest.raises(RunFileError, match="big.json is larger than 100 bytes"):
        read_bytes(tmp_path / "big.json", limit=100)
    assert read_bytes(tmp_path / "big.json", limit=101) == b"x" * 101
    assert shown(b"\x1b[2Jpid\n" + b"9" * 100, 12) == "\\x1b[2Jpid 9999…"
