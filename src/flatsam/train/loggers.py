"""Where ``flatsam train --log …`` sends each epoch's metrics, besides ``metrics.jsonl``: ``csv``
(``metrics.csv`` in the run folder, needs nothing), ``tensorboard`` (``tensorboard/`` in the run folder;
``pip install 'flatsam[tensorboard]'``) and ``wandb`` (``pip install 'flatsam[wandb]'``; offline, into the
run folder, unless ``WANDB_MODE`` says otherwise or an API key and the W&B server are reachable)."""

from __future__ import annotations

import csv
import io
import os
import socket
from pathlib import Path
from typing import Any, Protocol

from flatsam.train import records, rundir

LOGGERS = ("csv", "tensorboard", "wandb")
CSV = "metrics.csv"


class Logger(Protocol):
    def log(self, rows: list[dict[str, Any]]) -> None:
        """All epoch rows so far (the last one is new)."""
        ...

    def close(self) -> None: ...


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row (booleans and strings left out)."""
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch"
    }


class CSVLogger:
    """``metrics.csv``, rewritten whole (atomically) every epoch, so a resumed run's file stays consistent."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / CSV

    def log(self, rows: list[dict[str, Any]]) -> None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        records.atomic_write(self.path, lambda f: f.write(text.getvalue().encode()))

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars per epoch under ``tensorboard/`` in the run folder."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(
                "--log tensorboard needs the package 'tensorboard': pip install 'flatsam[tensorboard]'"
            ) from error
        folder = Path(run_dir) / "tensorboard"
        rundir.check_folder(folder)  # a link there would send the event files outside the run folder
        self.writer = SummaryWriter(str(folder))

    def log(self, rows: list[dict[str, Any]]) -> None:
        row = rows[-1]
        for key, value in numeric(row).items():
            self.writer.add_scalar(key, value, int(row["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_mode() -> str:
    """``WANDB_MODE`` if set; else online only with an API key and the server reachable."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if not os.environ.get("WANDB_API_KEY") and not (Path.home() / ".netrc").exists():
        return "offline"
    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=2).close()
    except OSError:
        return "offline"
    return "online"


class WandbLogger:
    """One W&B run per flatsam run (project ``flatsam``, or ``WANDB_PROJECT``), files in the run folder."""

    def __init__(self, run_dir: Path, config: dict[str, Any], name: str) -> None:
        try:
            import wandb
        except ImportError as error:
            raise ImportError(
                "--log wandb needs the package 'wandb': pip install 'flatsam[wandb]'"
            ) from error
        rundir.check_folder(Path(run_dir) / "wandb")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "flatsam"),
            name=name,
            dir=str(run_dir),
            config=config,
            mode=wandb_mode(),
            resume="allow",
        )

    def log(self, rows: list[dict[str, Any]]) -> None:
        row = rows[-1]
        self.run.log(numeric(row), step=int(row["epoch"]))

    def close(self) -> None:
        self.run.finish()


def parse(text: str | None) -> tuple[str, ...]:
    """``"csv,tensorboard"`` → ``("csv", "tensorboard")``; a clear error for other names."""
    names = tuple(part.strip() for part in (text or "").split(",") if part.strip())
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"--log: unknown logger(s) {unknown}; valid: {', '.join(LOGGERS)} (comma-separated)")
    return names


def open_loggers(names: tuple[str, ...], run_dir: Path, config: dict[str, Any], label: str) -> list[Logger]:
    """The loggers named in ``names`` (only on rank 0; the caller decides)."""
    made: list[Logger] = []
    for name in names:
        if name == "csv":
            made.append(CSVLogger(run_dir))
        elif name == "tensorboard":
            made.append(TensorBoardLogger(run_dir))
        else:
            made.append(WandbLogger(run_dir, config, label))
    return made
