"""What a training run shows on the terminal: the progress bar's live figures and one line per epoch."""

from __future__ import annotations

from typing import Any


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """One epoch of ``metrics.jsonl`` as a terminal line: epoch, train loss and accuracy, validation
    accuracy (with a validation split), test accuracy ("-" between evaluations), the epoch's training
    time and the effective cost so far (×SGD); skipped steps when there were any."""
    width = len(str(epochs))
    parts = [
        f"epoch {row['epoch'] + 1:>{width}}/{epochs}",
        f"train loss {row['train_loss']:.4f} acc {_percent(row['train_acc'])}",
    ]
    if row.get("val_acc") is not None:
        parts.append(f"val acc {_percent(row['val_acc'])}")
    parts += [
        f"test acc {_percent(row.get('test_acc'))}",
        f"{row['epoch_time']:.1f} s",
        f"cost {row['cost']:.2f}× SGD",
    ]
    if row.get("skipped"):
        parts.append(f"{row['skipped']} skipped")
    return "  ".join(parts)


def bar_figures(
    epoch: int, loss_sum: float, correct: int, seen: int, samples: int, elapsed: float, test: float | None
) -> dict[str, str]:
    """The progress bar's postfix during an epoch: its running train loss and accuracy (means over the
    rows of the steps so far, so shown from the first step), images per second, the last test accuracy."""
    return {
        "epoch": str(epoch + 1),
        "loss": f"{loss_sum / max(1, seen):.3f}",
        "acc": f"{correct / max(1, seen):.3f}",
        "img_s": f"{samples / max(elapsed, 1e-9):.0f}",
        "test": "-" if test is None else f"{test:.3f}",
    }
