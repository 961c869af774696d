"""Checkpoints: plain types only, loaded with weights_only=True; damaged or hostile files are clear errors."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from flatsam import quant
from flatsam.cli import main
from flatsam.safe_load import CheckpointError, load_tensors
from flatsam.train import Run, TrainConfig, records

ARGS = ["--dataset", "synthetic", "--subset", "128", "--model", "mlp", "--batch-size", "64", "--threads", "1"]


def tiny(run_dir: Path, **over) -> TrainConfig:
    base = dict(method="ausam", dataset="synthetic", subset=128, model="mlp", epochs=1, batch_size=64)
    return TrainConfig(**{**base, "threads": 1, "run_dir": str(run_dir), **over})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch AUSAM run folder (its checkpoint kept)."""
    run_dir = tmp_path_factory.mktemp("ckpt") / "run"
    Run(tiny(run_dir), progress=False).run()
    return run_dir


class Hostile:
    """Unpickling this calls os.system, which creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_loads_with_weights_only(finished):
    state = torch.load(finished / records.CHECKPOINT, weights_only=True)
    assert set(records.CHECKPOINT_SCHEMA) <= set(state) and isinstance(state["digest"], str)
    assert records.load_checkpoint(finished / records.CHECKPOINT)["epoch"] == 1


@pytest.mark.parametrize("form", ["torch.save", "raw pickle"])
def test_hostile_checkpoint_never_runs_code(finished, tmp_path, form, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    marker = tmp_path / "marker"
    path = run_dir / records.CHECKPOINT
    if form == "torch.save":
        torch.save({"config": Hostile(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Hostile(marker)))
    message = "could run code" if form == "torch.save" else "not written by torch.save"
    with pytest.raises(CheckpointError, match=message) as caught:
        records.load_checkpoint(path)
    assert str(path) in str(caught.value)
    code = main(["train", "--resume", "--method", "ausam", "--epochs", "1", "--run-dir", str(run_dir), *ARGS])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError):
        quant.load_full_precision(torch.nn.Linear(2, 2), path)
    assert not marker.exists()


def flipped(data: bytes) -> bytes:
    """One byte of the largest tensor storage changed (the archive stays readable)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    header = member.header_offset
    name_length, extra_length = struct.unpack("<HH", data[header + 26 : header + 30])
    at = header + 30 + name_length + extra_length + member.file_size // 2
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


DAMAGE = {
    "empty": (lambda good: b"", "empty"),
    "truncated": (lambda good: good[: len(good) // 2], "truncated or corrupt"),
    "garbage": (lambda good: b"not a checkpoint at all\n" * 10, "corrupt"),
    "not a dict": (lambda good: saved([1, 2, 3]), "not a flatsam checkpoint"),
    "missing keys": (lambda good: saved({"model": {}}), r"missing \["),
    "wrong type": (lambda good: saved({**torch.load(io.BytesIO(good)), "epoch": "1"}), "'epoch' has type"),
}


@pytest.mark.parametrize("name", DAMAGE)
def test_damaged_checkpoint_is_a_one_line_error_naming_the_file(finished, tmp_path, name):
    make, message = DAMAGE[name]
    path = tmp_path / records.CHECKPOINT
    path.write_bytes(make((finished / records.CHECKPOINT).read_bytes()))
    with pytest.raises(CheckpointError, match=message) as caught:
        records.load_checkpoint(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_altered_tensor_bytes_are_detected(finished, tmp_path):
    good = (finished / records.CHECKPOINT).read_bytes()
    path = tmp_path / records.CHECKPOINT
    path.write_bytes(flipped(good))
    torch.load(path, weights_only=True)  # still a readable archive
    with pytest.raises(CheckpointError, match="altered or damaged"):
        records.load_checkpoint(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.pt")):
        load_tensors(tmp_path / "nope.pt")


def test_checkpoint_of_another_method_does_not_fit(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    state = records.load_checkpoint(run_dir / records.CHECKPOINT)
    state["config"]["method"] = "sam"  # a SAM run folder holding an AUSAM optimizer state
    records.save_checkpoint(run_dir / records.CHECKPOINT, state)
    with pytest.raises(CheckpointError, match="does not fit this run"):
        Run(tiny(run_dir, method="sam"), resume=True, progress=False)


def ausam(num_samples: int):
    import flatsam

    model = torch.nn.Linear(3, 2)
    return flatsam.AUSAM(model.parameters(), torch.optim.SGD, model=model, lr=0.1, num_samples=num_samples)


@pytest.mark.parametrize(("saved_for", "loaded_into"), [(64, 200), (200, 64)])
def test_ausam_state_of_another_dataset_size_is_refused(saved_for, loaded_into):
    with pytest.raises(ValueError, match=rf"dlp_sum has shape \({saved_for},\)"):
        ausam(loaded_into).load_state_dict(ausam(saved_for).state_dict())


def test_state_of_another_method_is_refused():
    import flatsam

    model = torch.nn.Linear(3, 2)
    sam = flatsam.SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="state of a"):
        sam.load_state_dict(ausam(8).state_dict())
