"""The counters of a run: one dataclass, whose fields say how each counter adds up.

Each field's metadata says whether it carries over from an epoch into the run's totals (``cumulative``)
and whether it is summed over the ranks under ``torchrun`` (``summed``: row counts; steps and times are
each rank's own). A new counter is one new field here; the loop, the per-rank sums and the checkpoint
check all read the metadata.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from flatsam.engine import StepInfo


def _counter(default: int | float, *, cumulative: bool, summed: bool, added: bool = False) -> Any:
    """A counter field; ``added``: one newer than some checkpoints, read from them as NaN (unknown), so a
    run resumed from one reports it as unknown (``null``) rather than a partial count."""
    return field(default=default, metadata={"cumulative": cumulative, "summed": summed, "added": added})


@dataclass
class Totals:
    """Counters of a run (cumulative) or an epoch; plain numbers so they go into checkpoints."""

    steps: int = _counter(0, cumulative=True, summed=False)
    ascents: int = _counter(0, cumulative=True, summed=False)
    skipped: int = _counter(0, cumulative=True, summed=False)
    samples: int = _counter(0, cumulative=True, summed=True)  # rows in the batches (what SGD processes once)
    forward_samples: int = _counter(0, cumulative=True, summed=True)
    backward_samples: int = _counter(0, cumulative=True, summed=True)
    train_time: float = _counter(0.0, cumulative=True, summed=False)
    # CPU seconds of this process over the same span as train_time (time.process_time): on one thread, the
    # wall-clock the run would take on a core of its own, whatever else shares the machine
    cpu_time: float = _counter(0.0, cumulative=True, summed=False, added=True)
    # per-sample losses, accuracy and rows of the steps' first forwards (epoch figures only)
    loss_sum: float = _counter(0.0, cumulative=False, summed=True)
    correct: int = _counter(0, cumulative=False, summed=True)
    seen: int = _counter(0, cumulative=False, summed=True)
    batch_rows: int = _counter(0, cumulative=False, summed=True)  # rows of the batches of those steps

    def add(self, info: StepInfo) -> None:
        self.steps += 1
        self.ascents += int(info.ascent)
        self.skipped += int(info.skipped)
        self.samples += info.batch_size
        self.forward_samples += info.forward_samples
        self.backward_samples += info.backward_samples

    def accumulate(self, epoch: Totals) -> None:
        """Add ``epoch``'s cumulative counters to these (the run's) totals."""
        for name in CUMULATIVE:
            setattr(self, name, getattr(self, name) + getattr(epoch, name))

    @property
    def cost(self) -> float:
        """Samples through forward + 2× backward, relative to SGD (1 forward + 1 backward per row)."""
        return (self.forward_samples + 2 * self.backward_samples) / max(1, 3 * self.samples)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: Any, where: str) -> Totals:
        """Counters read from a checkpoint: exactly this class's fields, each a finite number >= 0 of the
        field's type; else a ``ValueError`` naming ``where`` and the field."""
        if not isinstance(values, dict):
            raise ValueError(f"{where} is not a dict of counters")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields), key=str)
        if unknown:
            raise ValueError(f"{where} has unknown counters {unknown}")
        values = {
            **{name: math.nan for name, f in fields.items() if f.metadata["added"] and name not in values},
            **values,
        }
        for name, value in values.items():
            kind = (int,) if fields[name].type == "int" else (int, float)
            good = isinstance(value, kind) and not isinstance(value, bool)
            if good and fields[name].metadata["added"] and math.isnan(value):
                continue
            if not good or not math.isfinite(value) or value < 0:
                kind_name = fields[name].type
                raise ValueError(f"{where}.{name} must be a finite number >= 0 ({kind_name}), got {value!r}")
        return cls(**values)


#: Counters that carry over into the run's totals, and those summed over the ranks.
CUMULATIVE = tuple(f.name for f in dataclasses.fields(Totals) if f.metadata["cumulative"])
SUMMED = tuple(f.name for f in dataclasses.fields(Totals) if f.metadata["summed"])
