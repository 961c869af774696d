"""Reading tensor files without running code: ``torch.load(weights_only=True)`` and one-line errors.

A ``.pt`` file is a pickle; the full unpickler executes whatever callables the file names, so a run folder
copied from someone else could run commands on load. ``weights_only=True`` (PyTorch's restricted
unpickler, https://pytorch.org/docs/stable/generated/torch.load.html) admits only tensors, numbers,
strings, lists, tuples and dicts, so every flatsam checkpoint is written in those types only.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from flatsam.safe_open import open_regular, shown


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, is not a flatsam checkpoint or has been altered."""


def load_tensors(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is a ``CheckpointError`` (or
    ``FileNotFoundError``) of one line naming ``what`` and the file. The file is opened without following
    a link and must be a regular file (``flatsam.safe_open``): a symlink or device is refused."""
    path = Path(path)
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no file at {path}") from None
    except PermissionError:
        raise CheckpointError(f"{what} {path} is not readable (permission denied)") from None
    try:
        with os.fdopen(fd, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"unsupported GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found:
            raise CheckpointError(
                f"{what} {path} holds objects other than tensors, numbers, strings, lists and dicts "
                f"({found[1] or found[2]}); refused (loading it could run code)"
            ) from None
        reason = re.search(r"Unsupported operand \d+", str(error))
        detail = reason[0] if reason else shown(str(error).splitlines()[0], 80)
        raise CheckpointError(f"{what} {path} is corrupt or not written by torch.save ({detail})") from None
    except Exception as error:  # torch raises RuntimeError, EOFError, KeyError, ... on damaged files
        kind = "empty" if path.stat().st_size == 0 else "truncated or corrupt"
        detail = shown(str(error).splitlines()[0], 80) if str(error) else type(error).__name__
        raise CheckpointError(f"{what} {path} is {kind} ({detail})") from None


def digest(value: Any, algorithm: str = "blake2b") -> str:
    """A hash of nested dicts/lists/tuples of tensors, numbers, strings and None: dtype, shape and bytes of
    every tensor, keys and values of everything else; flipped bytes change it. ``algorithm``: ``blake2b``
    (16 bytes, checkpoints' integrity) or any name ``hashlib.new`` takes (e.g. ``sha256``)."""
    h = hashlib.blake2b(digest_size=16) if algorithm == "blake2b" else hashlib.new(algorithm)

    def feed(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(v.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(v, dict):
            h.update(f"D{len(v)}".encode())
            for key in v:
                feed(key)
                feed(v[key])
        elif isinstance(v, list | tuple):
            h.update(f"L{len(v)}".encode())
            for item in v:
                feed(item)
        else:
            h.update(f"{type(v).__name__}:{v!r};".encode())

    feed(value)
    return h.hexdigest()
