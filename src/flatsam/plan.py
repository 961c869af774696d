"""A step as data: the list of passes the engine walks.

Every efficient SAM variant runs some of the same passes — a no-grad *score* forward (K-SAM), the
*clean* forward/backward, the late *decision* (AE-SAM), the *perturbation* w ← w + ε, a no-grad *refine*
forward at w+ε (ESAM), the *descent* forward/backward at w+ε and the *restore* of the weights — over
some micro-batches and rows. ``build`` turns a method's components and the schedule's decision into that
list; :class:`flatsam.engine.SharpnessAware` walks it with one loop, which does BatchNorm freezing, DDP's
``no_sync``, gradient accumulation and the finiteness checks from the fields of each :class:`Pass`.
A plan needs no model, so it can be read and tested on its own::

    >>> [p.kind.value for p in build(AllRows(), ascend=True)]
    ['clean', 'perturb', 'descent', 'restore']
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from flatsam.selection import Selection


class Kind(enum.Enum):
    SCORE = "score"  # no-grad forward of every row: per-sample losses for the selection (K-SAM)
    CLEAN = "clean"  # forward/backward at w: the clean gradient
    DECIDE = "decide"  # the schedule decides from the clean gradient whether to ascend (AE-SAM)
    PERTURB = "perturb"  # w ← w + ε from the clean gradient (weights saved)
    REFINE = "refine"  # no-grad forward at w+ε; the selection chooses the descent rows (ESAM)
    DESCENT = "descent"  # forward/backward at w+ε: the gradient the base optimizer uses
    RESTORE = "restore"  # w ← the saved weights


FORWARD = frozenset({Kind.SCORE, Kind.CLEAN, Kind.REFINE, Kind.DESCENT})
BACKWARD = frozenset({Kind.CLEAN, Kind.DESCENT})


@dataclass(frozen=True)
class Pass:
    """One entry of a plan.

    ``micro``: the micro-batch a forward runs on (gradient accumulation), ``part``: the part of an
    m-sharpness step. ``sync``: under DDP its backward all-reduces (else it runs in ``no_sync``).
    ``accumulate``: its gradient is added to the one the previous pass of its kind left (later
    micro-batches, later m-sharpness parts) instead of starting from zero. ``check``: the loss and the
    gradient are checked for finiteness after it, over every pass of its kind since the last check.
    ``external``: the caller runs it (``first_step``/``second_step``); the walk stops before it.
    """

    kind: Kind
    micro: int = 0
    part: int | None = None
    sync: bool = True
    accumulate: bool = False
    check: bool = False
    external: bool = False

    def __repr__(self) -> str:
        flags = [f"micro={self.micro}"] if self.micro else []
        flags += [] if self.part is None else [f"part={self.part}"]
        flags += [name for name in ("accumulate", "check", "external") if getattr(self, name)]
        flags += [] if self.sync or self.kind not in BACKWARD else ["no_sync"]
        return f"{self.kind.value}({', '.join(flags)})" if flags else self.kind.value


def _over(kind: Kind, micros: int, *, sync: bool, check: bool) -> list[Pass]:
    """``kind`` on each micro-batch in turn: later backward passes accumulate, only the last syncs and
    checks (the losses of them all)."""
    last = micros - 1
    accumulates = kind in BACKWARD
    return [
        Pass(kind, i, sync=sync and i == last, accumulate=accumulates and i > 0, check=check and i == last)
        for i in range(micros)
    ]


def _parts(parts: int) -> list[Pass]:
    """m-sharpness (Foret et al. 2021): per part a clean pass, its own ε, a descent accumulated over the
    parts (only the last part's descent syncs under DDP) and a restore."""
    plan: list[Pass] = []
    for j in range(parts):
        plan += [
            Pass(Kind.CLEAN, part=j, sync=False, check=True),
            Pass(Kind.PERTURB, part=j),
            Pass(Kind.DESCENT, part=j, sync=j == parts - 1, accumulate=j > 0, check=True),
            Pass(Kind.RESTORE, part=j),
        ]
    return plan


def build(
    selection: Selection,
    *,
    ascend: bool | None,
    micros: int = 1,
    parts: int = 0,
    keeps_clean_grads: bool = False,
    external: bool = False,
) -> list[Pass]:
    """The plan of one step.

    ``ascend``: the schedule's decision before the clean pass (``None``: decided after it, from the clean
    gradient). ``micros``: micro-batches of a gradient-accumulation step. ``parts``: m-sharpness parts
    (0: none). ``keeps_clean_grads``: a component learns from the clean gradient, so under DDP the clean
    pass of an ascent step is all-reduced (else ε comes from each rank's own gradient, as in SAM's
    reference code). ``external``: the caller runs the clean and descent passes (the two-step API).
    """
    if parts and ascend is not False:
        return _parts(parts)
    plan = _over(Kind.SCORE, micros, sync=False, check=True) if selection.needs_scores else []
    sync_clean = ascend is not True or keeps_clean_grads
    plan += _over(Kind.CLEAN, micros, sync=sync_clean, check=True)
    if ascend is False:
        return _externalised(plan) if external else plan
    if ascend is None:
        plan.append(Pass(Kind.DECIDE))
    plan.append(Pass(Kind.PERTURB))
    if selection.needs_perturbed_scores:
        plan += _over(Kind.REFINE, micros, sync=False, check=True)
    plan += _over(Kind.DESCENT, micros, sync=True, check=True)
    plan.append(Pass(Kind.RESTORE))
    return _externalised(plan) if external else plan


def _externalised(plan: list[Pass]) -> list[Pass]:
    """The two-step API's plan: the caller runs the forward/backward passes."""
    return [replace(p, external=p.kind in BACKWARD) for p in plan]
