"""AUSAM through Hugging Face Accelerate: the prepared optimizer's step takes flatsam's closure(rows) and
index=, inside Accelerate's gradient accumulation (one flatsam step per accumulation cycle). Runs in
seconds on a CPU.

    pip install 'flatsam[accelerate]'
    python examples/accelerate_sam.py [--mixed-precision bf16] [--accumulate 2]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import flatsam
from flatsam.integrations.accelerate import prepare


def data(n: int = 512, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    y = (x[:, :5].sum(1) > 0).long() + 2 * (x[:, 5:10].sum(1) > 0).long()  # 4 classes
    return TensorDataset(x, y)


def main(mixed_precision: str = "no", accumulate: int = 2, epochs: int = 4) -> None:
    accelerator = Accelerator(
        cpu=True, mixed_precision=mixed_precision, gradient_accumulation_steps=accumulate
    )
    torch.manual_seed(0)
    train = flatsam.data.IndexedDataset(data())
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = flatsam.AUSAM(
        model.parameters(), torch.optim.SGD, model=model, num_samples=len(train),
        lr=0.1, momentum=0.9, rho=0.1, ramp_epochs=2,
    )  # fmt: skip
    loader = DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    model, loader = accelerator.prepare(model, loader)
    opt = prepare(accelerator, opt)  # an AcceleratedOptimizer whose step takes closure(rows), index=
    schedule = accelerator.prepare(
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader) // accumulate)
    )
    for epoch in range(epochs):
        opt.optimizer.set_epoch(epoch)
        for x, y, index in loader:
            with accelerator.accumulate(model):
                info = opt.step(
                    lambda rows: F.cross_entropy(model(x[rows]), y[rows], reduction="none"), index=index
                )
                schedule.step()
            if info is not None:
                last = info
        print(
            f"accelerate epoch {epoch}: steps {opt.optimizer.step_count}, loss {last.loss:.3f}, "
            f"rows per pass {last.ascent_rows}/{last.batch_size}, lr {opt.param_groups[0]['lr']:.4f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mixed-precision", default="no", help="no, bf16 or fp16 (fp16 where supported)")
    parser.add_argument("--accumulate", type=int, default=2, help="micro-batches per step")
    args = parser.parse_args()
    main(args.mixed_precision, args.accumulate)
