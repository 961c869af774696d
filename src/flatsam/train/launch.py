"""Several processes for one run (``torchrun --nproc_per_node=N -m flatsam train …``) and mixed precision.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`distributed` joins the process group
(gloo on CPU, nccl on CUDA). The run's model is wrapped in ``DistributedDataParallel``; each rank takes
its share of every batch of the epoch's order (``--batch-size`` stays the global batch, so the LR schedule
and the step count do not depend on the number of processes); rank 0 alone writes files and draws the
progress bar. The engine gathers AUSAM's loss history and agrees on skipped steps across ranks
(:mod:`flatsam.distributed`).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from flatsam.distributed import world_size
from flatsam.safe_load import digest
from flatsam.train.totals import SUMMED, Totals

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


@contextlib.contextmanager
def distributed(device: str) -> Iterator[None]:
    """Join the process group that ``torchrun`` describes in the environment (nothing for one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        # A DDP reducer still alive here would, when freed later, destroy gloo's group with the GIL held
        # while a gloo thread needs the GIL to free a finished all-gather's tensors: a deadlock at exit
        # (pytorch/pytorch#56297). Collect what is unreachable (the run's cycles) while the group lives.
        gc.collect()
        dist.destroy_process_group()


def device_for_rank(device: torch.device) -> torch.device:
    """``cuda`` becomes this rank's GPU (``LOCAL_RANK``) under torchrun."""
    if device.type == "cuda" and device.index is None and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when several processes train it, else itself."""
    if world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a batch: every ``world``-th, starting at the rank."""
    return index[rank() :: world_size()]


def check_batch(batch_size: int, accumulate: int) -> None:
    """Each rank's micro-batches must hold at least one row."""
    if batch_size < world_size() * accumulate:
        raise ValueError(
            f"batch_size must be >= processes × accumulate = {world_size()} × {accumulate}, got {batch_size}"
        )


def padded(order: torch.Tensor) -> torch.Tensor:
    """``order`` wrapped around to a multiple of the number of processes (as DistributedSampler pads), so
    every rank gets rows in every batch."""
    extra = -len(order) % world_size()
    return torch.cat([order, order[:extra]]) if extra else order


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over the ranks."""
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (bit-exact)."""
    return state_digest(unwrap(model).state_dict())


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a model ``state_dict``'s names, dtypes, shapes and tensor bytes."""
    return digest(state, "sha256")


def all_digests(model: nn.Module) -> list[str]:
    """Every rank's :func:`weights_digest`, in rank order."""
    mine = weights_digest(model)
    if world_size() == 1:
        return [mine]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


# -- mixed precision ---------------------------------------------------------------------------------


def autocast(amp: str | None, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward passes' autocast for ``--amp bf16|fp16`` (nothing without)."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(amp: str | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for fp16 (bf16 needs none)."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def sum_counters(totals: Totals, device: torch.device) -> None:
    """Sum ``totals``' row counters (``flatsam.train.totals.SUMMED``) over the ranks, in place."""
    if world_size() == 1:
        return
    for name, value in zip(SUMMED, all_sum([getattr(totals, n) for n in SUMMED], device), strict=True):
        setattr(totals, name, type(getattr(totals, name))(value))


def sync_epoch(totals: Totals, model: nn.Module, device: torch.device) -> None:
    """At an epoch's end: sum ``totals``' row counters over the ranks, and give every rank rank 0's
    buffers (BatchNorm running statistics, which each rank updates from its own rows)."""
    if world_size() == 1:
        return
    sum_counters(totals, device)
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer, 0)
