"""Two gloo processes on CPU: AUSAM's history and the skip decisions are the same on every rank."""

from __future__ import annotations

import gc
import warnings

import torch
import torch.nn.functional as F

import flatsam
from reference import tiny_mlp, toy_data

KW = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)


def _worker(rank: int, world: int, init_file: str, out: str, train: str = "ausam") -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        TRAIN[train](rank, out)
    finally:
        gc.collect()  # the DDP model goes before its process group (pytorch/pytorch#56297)
        torch.distributed.destroy_process_group()


def _train(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    x, y = toy_data(n=48, seed=rank + 1)  # each rank its own rows, indices disjoint across ranks
    offset = 24 * rank
    model = torch.nn.parallel.DistributedDataParallel(tiny_mlp())
    ausam = flatsam.AUSAM(
        model.parameters(), torch.optim.SGD, model=model, num_samples=48, seed=3, ramp_epochs=2, **KW
    )
    infobatch = flatsam.InfoBatchSAM(
        tiny_mlp().parameters(), torch.optim.SGD, num_samples=48, epochs=4, seed=3, **KW
    )
    skipped = []
    for epoch in range(3):
        ausam.set_epoch(epoch)
        for step, local in enumerate(torch.arange(24).split(6)):
            index = local + offset

            def closure(rows, local=local, poison=(epoch, step, rank) == (2, 1, 1)):
                losses = F.cross_entropy(model(x[local[rows]]), y[local[rows]], reduction="none")
                return losses * float("nan") if poison else losses  # NaN on rank 1 only, once

            skipped.append(ausam.step(closure, index=index).skipped)
            infobatch.selection.record(
                flatsam.StepContext(step=step, epoch=epoch, batch_size=6, index=index),
                flatsam.Outcome(
                    True, torch.arange(6), torch.arange(6), torch.rand(6) + rank, None, torch.tensor(1.0)
                ),
            )
    torch.save(
        {
            "sum": ausam.selection.dlp_sum,
            "count": ausam.selection.dlp_count,
            "skipped": skipped,
            "scores": infobatch.selection.scores,
            "weights": [p.detach() for p in model.parameters()],
        },
        f"{out}.{rank}",
    )


def _train_saf_gsam(rank: int, out: str) -> None:
    """SAF's logits table (written with every rank's rows), GSAM's corrected descent and MESA's EMA model
    (built from the DDP-wrapped model), under DDP."""
    torch.set_num_threads(1)
    x, y = toy_data(n=48, seed=rank + 1)
    offset = 24 * rank
    models = [torch.nn.parallel.DistributedDataParallel(tiny_mlp()) for _ in range(3)]
    saf = flatsam.SAF(
        models[0].parameters(), model=models[0], num_samples=48, lag_epochs=1, start_epoch=0, **KW
    )
    gsam = flatsam.GSAM(models[1].parameters(), model=models[1], rho=0.1, **KW)
    mesa = flatsam.MESA(models[2].parameters(), model=models[2], start_epoch=0, decay=0.5, **KW)
    for epoch in range(3):
        saf.set_epoch(epoch)
        mesa.set_epoch(epoch)
        for local in torch.arange(24).split(6):
            index = local + offset

            def closure(rows, local=local, index=index):
                logits = models[0](x[local[rows]])
                losses = F.cross_entropy(logits, y[local[rows]], reduction="none")
                return saf.add_trajectory_loss(losses, logits, index[rows])

            saf.step(closure, index=index)
            gsam.step(
                lambda rows, local=local: F.cross_entropy(
                    models[1](x[local[rows]]), y[local[rows]], reduction="none"
                )
            )

            def mesa_closure(rows, local=local):
                inputs = x[local[rows]]
                logits = models[2](inputs)
                losses = F.cross_entropy(logits, y[local[rows]], reduction="none")
                return mesa.add_trajectory_loss(losses, logits, inputs=inputs)

            assert mesa.step(mesa_closure).forward_samples == (12 if epoch else 6)
    torch.save(
        {
            "history": saf.trajectory.history,
            "weights": [p.detach() for m in models for p in m.parameters()],
            "ema": [p.detach() for p in mesa.trajectory.module.parameters()],
        },
        f"{out}.{rank}",
    )


TRAIN = {"ausam": _train, "saf+gsam": _train_saf_gsam}


def spawn_two(tmp_path, attempts: int = 2, train: str = "ausam") -> str:
    """Run ``_worker`` on two ranks; returns the results' path prefix. About one launch in 16 aborts in
    gloo's teardown ("terminate called without an active exception", SIGABRT, measured both before and
    after the engine change of 2026-12-02), so an abort is retried once, with a warning that says so."""
    for attempt in range(attempts):
        out = str(tmp_path / f"result{attempt}")
        try:
            init = str(tmp_path / f"init{attempt}")
            torch.multiprocessing.spawn(_worker, args=(2, init, out, train), nprocs=2)
            return out
        except torch.multiprocessing.ProcessExitedException as error:
            if error.signal_name != "SIGABRT" or attempt == attempts - 1:
                raise
            warnings.warn(f"a gloo worker aborted ({error}); retrying", stacklevel=2)
    raise AssertionError("unreachable")


def test_ranks_share_history_and_skip_together(tmp_path):
    out = spawn_two(tmp_path)
    a, b = (torch.load(f"{out}.{rank}", weights_only=False) for rank in range(2))
    assert torch.equal(a["sum"], b["sum"]) and torch.equal(a["count"], b["count"])
    # every index of both ranks was observed after the warm-up (counts beyond the initial 1)
    assert (a["count"][:24] > 1).any() and (a["count"][24:] > 1).any()
    assert a["skipped"] == b["skipped"] and sum(a["skipped"]) == 1
    assert torch.equal(a["scores"], b["scores"]) and (a["scores"] != 3.0).all()
    for p, q in zip(a["weights"], b["weights"], strict=True):
        assert torch.equal(p, q)


def test_ranks_share_safs_table_and_gsams_steps(tmp_path):
    out = spawn_two(tmp_path, train="saf+gsam")
    a, b = (torch.load(f"{out}.{rank}", weights_only=False) for rank in range(2))
    assert torch.equal(a["history"], b["history"]) and a["history"].shape == (48, 2, 3)
    assert (a["history"].abs().sum(dim=2) > 0).all()  # every row of both ranks, both slots, written
    for p, q in zip(a["weights"] + a["ema"], b["weights"] + b["ema"], strict=True):
        assert torch.equal(p, q)
