"""Files of a run folder: atomic writes, JSON/JSONL, checkpoints and the environment record.

A run folder may come from someone else (copied, unpacked, edited), so every file in it is read through
:mod:`flatsam.safe_open`: without following links, regular files only, of bounded size.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatsam.safe_load import CheckpointError, digest, load_tensors
from flatsam.safe_open import MAX_TEXT_BYTES, RunFileError, check_regular, open_regular, read_bytes, shown

#: The files of a run folder, the one place that names them.
CONFIG, METRICS, RESULT, CHECKPOINT = "config.json", "metrics.jsonl", "result.json", "checkpoint.pt"
RUN_FILES = (CONFIG, METRICS, RESULT, CHECKPOINT)

__all__ = ["MAX_TEXT_BYTES", "RunFileError", "check_regular", "open_regular", "read_bytes", "shown"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a crash, a full disk or a Ctrl-C
    never leaves half a file, and the previous file stays whole. The file gets the usual mode (0666 less
    the umask; the temporary file's is 0600). A failing write is an ``OSError`` naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:
            raise OSError(error.errno, error.strerror, str(path)) from None
        if isinstance(error, RuntimeError) and "unexpected pos" in str(error):  # torch.save, short write
            raise OSError(errno.EIO, "short write (is the disk full?)", str(path)) from None
        raise


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinity (in nested dicts and lists) replaced by ``None``: what
    JSON can hold (``json.dumps`` would write a bare ``NaN``, which no strict reader accepts)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


def json_text(value: Any, **options: Any) -> str:
    """Strict JSON of ``value`` (non-finite numbers become ``null``)."""
    return json.dumps(finite_or_null(value), sort_keys=True, allow_nan=False, **options)


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, lambda f: f.write((json_text(value, indent=2) + "\n").encode()))


def _text(path: Path) -> str:
    try:
        return read_bytes(path).decode()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_json(path: Path) -> Any:
    """The JSON value in the regular file ``path`` (no link, FIFO or device; at most
    ``MAX_TEXT_BYTES``); a file that is not JSON is a ``ValueError`` naming it."""
    text = _text(Path(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    except RecursionError:
        raise ValueError(f"{path} is not usable JSON (nested too deeply)") from None


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write(path, lambda f: f.write("".join(json_text(r) + "\n" for r in rows).encode()))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of the JSON-lines file ``path`` (none when it does not exist), read as ``read_json``."""
    path = Path(path)
    if not check_regular(path):
        return []
    rows = []
    for number, line in enumerate(_text(path).splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}, is not valid JSON ({error})") from None
            except RecursionError:
                raise ValueError(f"{path}, line {number}, is nested too deeply") from None
    return rows


#: The entries of a training checkpoint and their types: only what ``torch.load(weights_only=True)`` admits.
CHECKPOINT_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "config": dict,
    "epoch": int,
    "batch": int,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "totals": dict,
    "epoch_totals": dict,
    "metrics": list,
    "torch_rng": torch.Tensor,
    "cuda_rng": (list, type(None)),
}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plain types only) with a digest of its contents, atomically."""
    atomic_write(path, lambda f: torch.save({**state, "digest": digest(state)}, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, read without running code and checked against ``CHECKPOINT_SCHEMA`` and its
    digest; anything else is a one-line ``CheckpointError`` naming the file."""
    state = load_tensors(path, "checkpoint")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a flatsam checkpoint (a {type(state).__name__})")
    missing = sorted(set(CHECKPOINT_SCHEMA) - set(state))
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a flatsam checkpoint (missing {missing})")
    for key, kind in CHECKPOINT_SCHEMA.items():
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise CheckpointError(f"checkpoint {path}: {key!r} has type {type(state[key]).__name__}")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CheckpointError(f"checkpoint {path}: 'model' holds entries that are not tensors")
    saved = state.pop("digest", None)  # absent in checkpoints written before digests: not checked
    if saved is not None and saved != digest(state):
        raise CheckpointError(f"checkpoint {path} has been altered or damaged (its digest does not match)")
    problem = checkpoint_problem(state)
    if problem:
        raise CheckpointError(f"checkpoint {path} is not usable: {problem}")
    return state


def checkpoint_problem(state: dict[str, Any]) -> str | None:
    """What is impossible in a checkpoint whose entries have the right types (``None``: nothing): the
    position (epoch, batch) against the metrics and the run's epochs, the RNG state's size and the
    counters (see ``flatsam.train.totals.Totals.from_dict``)."""
    from flatsam.train.totals import Totals

    epoch, batch, metrics = state["epoch"], state["batch"], state["metrics"]
    epochs = state["config"].get("epochs")
    if epoch < 0 or batch < 0:
        return f"epoch {epoch}, batch {batch} (both must be >= 0)"
    if isinstance(epochs, int) and (epoch > epochs or (epoch == epochs and batch)):
        return f"epoch {epoch}, batch {batch} lies past the run's {epochs} epochs"
    if len(metrics) != epoch or not all(isinstance(row, dict) for row in metrics):
        return f"epoch {epoch} with {len(metrics)} per-epoch metric rows (one per finished epoch expected)"
    rng, expected = state["torch_rng"], torch.get_rng_state()
    if rng.dtype != expected.dtype or rng.shape != expected.shape:
        return f"torch_rng is a {rng.dtype} tensor of shape {tuple(rng.shape)}, not {tuple(expected.shape)}"
    processes = state.get("processes", 1)
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        return f"processes is {shown(repr(processes))}"
    try:
        Totals.from_dict(state["totals"], "totals")
        Totals.from_dict(state["epoch_totals"], "epoch_totals")
    except ValueError as error:
        return shown(str(error), 200)
    return None


def plain_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as ``config.json`` stores it (tuples become lists): how configurations are compared."""
    return json.loads(json.dumps(config, sort_keys=True))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, threads and hardware: what a reader needs to compare timings."""
    from flatsam import __version__

    env = {
        "flatsam": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
