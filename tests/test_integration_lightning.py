"""flatsam.integrations.lightning: a Lightning fit equals the hand-run flatsam loop; counters, schedule,
checkpoints and precision plugins (skipped when the lightning extra is not installed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")

import flatsam  # noqa: E402
from flatsam.integrations.lightning import SharpnessAwareMixin  # noqa: E402

N, BATCH, EPOCHS = 48, 12, 4
STEPS = EPOCHS * N // BATCH
OPTIONS = dict(lr=0.1, momentum=0.9, rho=0.1, warmup_epochs=1, ramp_epochs=1, seed=5)


def dataset() -> flatsam.data.IndexedDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 6, generator=g)
    return flatsam.data.IndexedDataset(TensorDataset(x, (x[:, :3].sum(1) > 0).long()))


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))


def ausam(params, model) -> tuple[flatsam.SharpnessAware, torch.optim.lr_scheduler.LRScheduler]:
    opt = flatsam.AUSAM(params, torch.optim.SGD, model=model, num_samples=N, **OPTIONS)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)


class Net(SharpnessAwareMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = network()

    def forward(self, x):
        return self.net(x)

    def sam_losses(self, batch, rows):
        x, y, _ = batch
        return F.cross_entropy(self(x[rows]), y[rows], reduction="none")

    def configure_optimizers(self):
        opt, schedule = ausam(self.parameters(), self)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def fit(epochs: int, tmp_path=None, ckpt_path=None, precision="32-true") -> tuple[Net, L.Trainer]:
    net = Net()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(net, DataLoader(dataset(), batch_size=BATCH), ckpt_path=ckpt_path)
    return net, trainer


def hand_loop(epochs: int) -> tuple[nn.Module, flatsam.SharpnessAware]:
    model = network()
    opt, schedule = ausam(model.parameters(), model)
    for epoch in range(epochs):
        opt.set_epoch(epoch)
        for x, y, index in DataLoader(dataset(), batch_size=BATCH):
            opt.step(lambda rows: F.cross_entropy(model(x[rows]), y[rows], reduction="none"), index=index)
            schedule.step()
    return model, opt


def test_fit_equals_the_hand_loop_with_counts_schedule_and_epochs():
    net, trainer = fit(EPOCHS)
    model, opt = hand_loop(EPOCHS)
    for p, q in zip(net.net.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    engine = trainer.optimizers[0]
    assert trainer.global_step == STEPS == engine.step_count == opt.step_count
    assert engine.epoch == EPOCHS - 1  # set_epoch reached the engine through LightningOptimizer
    assert torch.equal(engine.selection.dlp_count, opt.selection.dlp_count)
    expected_lr = trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0]
    assert engine.base.param_groups[0]["lr"] == pytest.approx(expected_lr)
    assert expected_lr < 1e-3  # the cosine schedule ran to its end on the base optimizer


def test_checkpoint_resume_restores_the_flatsam_state(tmp_path):
    _, first = fit(2, tmp_path)
    path = tmp_path / "two.ckpt"
    first.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["optimizer_states"][0]
    assert saved["engine"]["step_count"] == 2 * N // BATCH and "selection" in saved
    resumed, trainer = fit(EPOCHS, tmp_path, ckpt_path=path)
    model, opt = hand_loop(EPOCHS)
    for p, q in zip(resumed.net.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert trainer.optimizers[0].step_count == STEPS


def test_bf16_mixed_precision_trains():
    net, trainer = fit(2, precision="bf16-mixed")
    before = network()
    assert trainer.optimizers[0].step_count == 2 * N // BATCH
    changed = [not torch.equal(p, q) for p, q in zip(net.net.parameters(), before.parameters(), strict=True)]
    assert all(changed) and all(torch.isfinite(p).all() for p in net.parameters())


def test_a_plain_optimizer_is_refused():
    class Plain(Net):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(TypeError, match="flatsam optimizer"):
        trainer.fit(Plain(), DataLoader(dataset(), batch_size=BATCH))


class PlainBatches(Net):
    def sam_losses(self, batch, rows):
        x, y = batch
        return F.cross_entropy(self(x[rows]), y[rows], reduction="none")


def test_plain_batches_with_a_history_method_fail_at_the_first_step(tmp_path):
    """(x, y) batches carry no dataset index: AUSAM's first step refuses, naming the mixin's ways."""
    net = PlainBatches()
    before = [p.detach().clone() for p in net.parameters()]
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    data = TensorDataset(*dataset().dataset.tensors)
    with pytest.raises(ValueError, match=r"every step needs index=.*sam_index\(batch\)"):
        trainer.fit(net, DataLoader(data, batch_size=BATCH))
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))


class SAFNet(Net):
    """SAF through the mixin; ``with_term`` adds its trajectory loss in ``sam_losses`` as documented."""

    def __init__(self, with_term: bool) -> None:
        super().__init__()
        self.with_term = with_term

    def sam_losses(self, batch, rows):
        x, y, index = batch
        logits = self(x[rows])
        losses = F.cross_entropy(logits, y[rows], reduction="none")
        if not self.with_term:
            return losses
        return self.optimizers().optimizer.add_trajectory_loss(losses, logits, index[rows])

    def configure_optimizers(self):
        options = dict(num_samples=N, lr=0.1, start_epoch=0, lag_epochs=1)  # the term from epoch 1
        return flatsam.SAF(self.parameters(), torch.optim.SGD, **options)


@pytest.mark.parametrize("with_term", [False, True])
def test_saf_needs_its_term_in_sam_losses(tmp_path, with_term):
    """Without the trajectory term in sam_losses the first step is refused (it would be plain SGD under
    SAF's name) and the weights have not moved; with it, SAF trains."""
    net = SAFNet(with_term)
    before = [p.detach().clone() for p in net.parameters()]
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    if with_term:
        trainer.fit(net, DataLoader(dataset(), batch_size=BATCH))
        assert not all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
        assert net.optimizers().optimizer.trajectory.history.abs().sum() > 0
        return
    with pytest.raises(RuntimeError, match=r"SAF: .*in sam_losses\), return opt.add_trajectory_loss"):
        trainer.fit(net, DataLoader(dataset(), batch_size=BATCH))
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
