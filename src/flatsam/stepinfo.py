"""What one step reports: ``StepInfo``, and the pass counts it is made of."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from flatsam.skipping import Verdict


@dataclass(frozen=True)
class StepInfo:
    """What one ``step`` did. Counts are Python ints; the loss stays a tensor until you read ``loss``, and
    whether the step was skipped (a non-finite loss or gradient), when the engine kept that flag on the
    device (``sync_free``), stays there until you read ``skipped``, ``reason``, ``ascent``,
    ``ascent_rows`` or ``descent_rows``: the first of them reads the step's flag on the host once (a
    synchronisation on an accelerator); a skipped step reports no ascent and no rows.

    ``ran_ascent``, ``ran_ascent_rows`` and ``ran_descent_rows`` say what ran, without reading anything
    (on a step skipped on the device the passes ran, and were undone). ``forward_samples``/
    ``backward_samples`` count rows through forward and backward (of every pass that ran); a no-grad
    scoring forward (K-SAM, ESAM) counts as a forward only. ``cost`` weighs them in SGD passes (see there).
    """

    loss_tensor: torch.Tensor | None
    ran_ascent: bool
    ran_ascent_rows: int
    ran_descent_rows: int
    forward_passes: int
    backward_passes: int
    forward_samples: int
    backward_samples: int
    rho: float
    batch_size: int
    verdict: Verdict = field(default_factory=Verdict)

    @property
    def skipped(self) -> bool:
        """Whether the step left the weights and the optimizer state unchanged."""
        return self.verdict.skipped

    @property
    def reason(self) -> str | None:
        """Why the step was skipped, else None."""
        return self.verdict.reason

    @property
    def ascent(self) -> bool:
        """Whether the step was a sharpness-aware step (ran an ascent and was not skipped)."""
        return self.ran_ascent and not self.skipped

    @property
    def ascent_rows(self) -> int:
        """Rows of the ascent pass (0 without ascent or when skipped)."""
        return self.ran_ascent_rows if self.ascent else 0

    @property
    def descent_rows(self) -> int:
        """Rows of the pass whose gradient stepped the weights (0 when skipped)."""
        return 0 if self.skipped else self.ran_descent_rows

    @property
    def loss(self) -> float:
        """Mean clean loss over the rows of the clean pass; for a zero-argument closure (davda54/sam style)
        the loss its first call returned (the clean loss when it ran the clean pass, else the loss at
        w+ε); ``nan`` when no loss was seen (a step without ascent whose clean pass the caller ran)."""
        return float("nan") if self.loss_tensor is None else float(self.loss_tensor)

    def __float__(self) -> float:
        """``float(opt.step(closure))`` is the step's loss, as for torch's optimizers."""
        return self.loss

    @property
    def cost(self) -> float:
        """Compute of this step in SGD steps on the same batch, counting a backward as twice a forward:
        (forward_samples + 2·backward_samples) / (3·batch_size). SGD = 1, SAM = 2;
        ``nan`` when the batch size is unknown (the caller ran passes the engine did not see)."""
        if not self.batch_size:
            return math.nan
        return (self.forward_samples + 2 * self.backward_samples) / (3 * self.batch_size)


class Counter:
    def __init__(self) -> None:
        self.forward_passes = self.backward_passes = self.forward_samples = self.backward_samples = 0

    def add(self, rows: int, backward: bool) -> None:
        self.forward_passes += 1
        self.forward_samples += rows
        if backward:
            self.backward_passes += 1
            self.backward_samples += rows

    @staticmethod
    def sum(counters: list[Counter]) -> Counter:
        total = Counter()
        for c in counters:
            total.forward_passes += c.forward_passes
            total.backward_passes += c.backward_passes
            total.forward_samples += c.forward_samples
            total.backward_samples += c.backward_samples
        return total
