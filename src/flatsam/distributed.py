"""What the engine and its components share across ``torch.distributed`` ranks (no-ops otherwise)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of ranks of the default process group (1 when torch.distributed is not in use)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """``flag`` on every rank: ``True`` only if it is true everywhere (so every rank takes the same branch;
    a rank that would skip a step alone would otherwise leave the others waiting in a collective)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def any_rank(flags: torch.Tensor) -> torch.Tensor:
    """Bool ``flags`` OR-ed element-wise over every rank (a MAX all-reduce), left on the device and never
    read on the host: the tensor counterpart of ``all_ranks_agree``, for a step that decides on the
    device whether to skip."""
    if world_size() == 1:
        return flags
    value = flags.to(torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value > 0


def gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate, along dim 0, each tensor's rows from every rank (rank order); rows may differ in number
    between ranks. All tensors must have the same number of rows and live on one device."""
    if world_size() == 1:
        return tensors
    device = tensors[0].device
    size = torch.tensor([len(tensors[0])], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    out = []
    for tensor in tensors:
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
        padded[: len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        out.append(torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]))
    return tuple(out)
