"""The examples run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_own_loop_example_runs():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "own_loop.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "rows per pass 32/64, cost 1.00× SGD" in out  # AUSAM after its warm-up: half the rows
    assert out.count("two steps  epoch") == 5


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout


def test_lightning_example_runs():
    pytest.importorskip("lightning")
    out = run_example("lightning_ausam.py", "--precision", "bf16-mixed")
    assert "lightning: 32 steps, optimizer steps 32, epoch 3, lr 0.0000" in out


def test_accelerate_example_runs():
    pytest.importorskip("accelerate")
    out = run_example("accelerate_sam.py")
    assert "accelerate epoch 3: steps 32," in out and "rows per pass 32/64" in out  # 2 micro-batches of 32
    assert out.rstrip().endswith("lr 0.0000")


def test_transformers_example_runs():
    pytest.importorskip("transformers")
    out = run_example("transformers_trainer.py")
    assert "transformers: 16 steps, flatsam steps 16, base AdamW" in out
