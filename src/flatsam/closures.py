"""What ``SharpnessAware.step`` is handed: closures, their losses, the batch's indices and sizes."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

import torch

#: ``closure(rows)``: per-sample losses of the batch rows ``rows`` (``slice(None)`` = every row, in order)
Closure = Callable[[Any], torch.Tensor]


def check_losses(losses: Any, rows: torch.Tensor | None) -> torch.Tensor:
    """``losses`` if it is a 1-d tensor with one loss per row (any number of rows when ``rows`` is None)."""
    expected = "at least one" if rows is None else f"shape [{len(rows)}]"
    if (
        not isinstance(losses, torch.Tensor)
        or losses.dim() != 1
        or (losses.numel() == 0 if rows is None else losses.numel() != len(rows))
    ):
        got = (
            f"a tensor of shape {tuple(losses.shape)}"
            if isinstance(losses, torch.Tensor)
            else repr(type(losses))
        )
        raise TypeError(
            f"closure(rows) must return per-sample losses, a 1-d tensor with one loss per row "
            f"(here {expected}), e.g. F.cross_entropy(model(x[rows]), y[rows], reduction='none'); "
            f"got {got}"
        )
    return losses


def reduce(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean loss, or the mean of the weighted losses."""
    return losses.mean() if weights is None else (losses * weights.to(losses)).mean()


def takes_rows(closure: Callable[..., Any]) -> bool:
    """Whether ``closure`` is flatsam's ``closure(rows)`` (it names a positional parameter) rather than a
    zero-argument closure in the style of davda54/sam and ``torch.optim.LBFGS`` (no parameter, or only
    ``*args``/``**kwargs`` as in framework wrappers). A plain function (a lambda) is answered from its
    code object, since ``inspect.signature`` costs more than a small model's step overhead."""
    plain = not (hasattr(closure, "__wrapped__") or hasattr(closure, "__signature__"))
    if type(closure) is types.FunctionType and plain:
        return closure.__code__.co_argcount > 0  # positional parameters, defaults or not, *args excluded
    try:
        parameters = inspect.signature(closure).parameters.values()
    except (TypeError, ValueError):  # no signature (a builtin): assume the documented protocol
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in positional for p in parameters)


def per_micro_batch(value: Any, count: int, name: str) -> list[Any]:
    """One entry per micro-batch: a list/tuple of ``count`` entries, or one value repeated."""
    if isinstance(value, list | tuple):
        if len(value) != count:
            raise ValueError(
                f"{name} has {len(value)} entries for {count} closures; give one per micro-batch"
            )
        return list(value)
    if count > 1 and value is not None and name == "index":
        raise TypeError(f"index must be a list of {count} index tensors (one per closure), got {type(value)}")
    return [value] * count


def checked_index(index: Any, batch_size: Any) -> torch.Tensor:
    """``index`` as a 1-d integer tensor (one dataset index per batch row; it gives the batch size), of
    length ``batch_size`` when that is given too."""
    index = torch.as_tensor(index)
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"index must hold integers (dataset indices), got dtype {index.dtype}")
    if index.dim() != 1:
        shape = tuple(index.shape)
        raise ValueError(f"index must be 1-d (one dataset index per batch row), got shape {shape}")
    if batch_size is not None and not isinstance(batch_size, bool) and batch_size != len(index):
        raise ValueError(f"index has {len(index)} entries but batch_size is {batch_size}; give one per row")
    return index


def checked_sizes(sizes: list[Any]) -> None:
    """Each given batch size is a positive int."""
    for b in sizes:
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"batch_size must be a positive int (one per micro-batch), got {b!r}")


def detached(value: Any) -> torch.Tensor | None:
    """A loss a closure returned, detached (``None`` when it returned no tensor)."""
    return value.detach() if isinstance(value, torch.Tensor) else None


#: What a method that keeps a per-sample history needs, said wherever a step lacks it
INDEX_HOWTO = (
    "wrap your dataset in flatsam.data.IndexedDataset (batches become (x, y, index)) and call "
    "opt.step(closure, index=index); with flatsam's Hugging Face Trainer give the training dataset an "
    "'index' column (e.g. dataset.add_column('index', range(len(dataset)))); with the Lightning mixin "
    "return (x, y, index) batches or override sam_index(batch)"
)
