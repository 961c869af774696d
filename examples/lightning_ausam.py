"""AUSAM in a Lightning module: SharpnessAwareMixin does the manual optimization (per-sample losses,
set_epoch, the LR schedule, checkpoints). Runs in seconds on a CPU.

    pip install 'flatsam[lightning]'
    python examples/lightning_ausam.py [--precision bf16-mixed]
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import flatsam
from flatsam.integrations.lightning import SharpnessAwareMixin


def data(n: int = 512, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    y = (x[:, :5].sum(1) > 0).long() + 2 * (x[:, 5:10].sum(1) > 0).long()  # 4 classes
    return TensorDataset(x, y)


class Net(SharpnessAwareMixin, L.LightningModule):
    def __init__(self, num_samples: int, steps: int) -> None:
        super().__init__()
        self.num_samples, self.steps = num_samples, steps
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def sam_losses(self, batch, rows):  # batch = (x, y, index) from flatsam.data.IndexedDataset
        x, y, _ = batch
        return F.cross_entropy(self(x[rows]), y[rows], reduction="none")

    def configure_optimizers(self):
        opt = flatsam.AUSAM(
            self.parameters(), torch.optim.SGD, model=self, num_samples=self.num_samples,
            lr=0.1, momentum=0.9, rho=0.1, ramp_epochs=2,
        )  # fmt: skip
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def main(precision: str = "32-true", epochs: int = 4) -> None:
    torch.manual_seed(0)
    train = flatsam.data.IndexedDataset(data())
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    net = Net(len(train), epochs * len(loader))
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", precision=precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(net, loader)
    opt = trainer.optimizers[0]
    x, y = data().tensors
    accuracy = (net(x).argmax(1) == y).float().mean()
    print(
        f"lightning: {trainer.global_step} steps, optimizer steps {opt.step_count}, epoch {opt.epoch}, "
        f"lr {opt.param_groups[0]['lr']:.4f}, train accuracy {accuracy:.3f}, "
        f"final loss {float(trainer.callback_metrics['train_loss']):.3f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", default="32-true", help="Lightning precision: 32-true, bf16-mixed, …")
    main(parser.parse_args().precision)
