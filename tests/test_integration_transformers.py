"""flatsam.integrations.transformers: SharpnessAwareTrainer equals the hand-run flatsam loop (both passes
in training_step, the schedule on the flatsam optimizer, clipping of the descent gradient only,
accumulation as one step) (skipped without the transformers extra)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, SequentialSampler

pytest.importorskip("transformers")

from transformers import TrainingArguments  # noqa: E402

import flatsam  # noqa: E402
from flatsam.integrations.transformers import SharpnessAwareTrainer  # noqa: E402

N, BATCH, ACCUMULATE, EPOCHS, CLIP = 48, 8, 2, 3, 0.05
STEPS = EPOCHS * N // (BATCH * ACCUMULATE)
OPTIONS = dict(lr=0.1, momentum=0.9, rho=0.1, warmup_epochs=1, ramp_epochs=1, seed=5)
G = torch.Generator().manual_seed(0)
X = torch.randn(N, 6, generator=G)
Y = (X[:, :3].sum(1) > 0).long()


class Rows(Dataset):
    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": X[i], "labels": Y[i], "index": torch.tensor(i)}


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, x, labels=None):
        return {"logits": self.net(x)}


class InOrder(SharpnessAwareTrainer):
    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def ausam(model: nn.Module, **over) -> flatsam.SharpnessAware:
    return flatsam.AUSAM(
        model.parameters(), torch.optim.SGD, model=model, num_samples=N, **{**OPTIONS, **over}
    )


def train(tmp_path, model: nn.Module, **kwargs) -> InOrder:
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATE,
        num_train_epochs=EPOCHS,
        lr_scheduler_type="linear",
        max_grad_norm=CLIP,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = InOrder(model=model, args=args, train_dataset=Rows(), **kwargs)
    trainer.train()
    return trainer


def hand_loop() -> tuple[nn.Module, flatsam.SharpnessAware, float]:
    model = Tiny()
    opt = ausam(model, max_grad_norm=CLIP)  # clipping of the descent gradient, after the pass at w+ε
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, (STEPS - step) / STEPS))
    order = torch.arange(N).split(BATCH)
    for epoch in range(EPOCHS):
        opt.set_epoch(epoch)
        for a, b in zip(order[::2], order[1::2], strict=True):
            closures = [
                lambda rows, i=i: F.cross_entropy(model(X[i][rows])["logits"], Y[i][rows], reduction="none")
                for i in (a, b)
            ]
            opt.step(closures, index=[a, b])
            schedule.step()
    return model, opt, schedule.get_last_lr()[0]


def test_trainer_equals_the_hand_loop(tmp_path):
    model = Tiny()
    opt = ausam(model)
    trainer = train(tmp_path, model, optimizers=(opt, None))
    ref_model, ref_opt, ref_lr = hand_loop()
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert trainer.state.global_step == opt.step_count == STEPS
    assert opt.max_grad_norm == CLIP  # the Trainer's max_grad_norm moved into the engine
    assert torch.equal(opt.selection.dlp_count, ref_opt.selection.dlp_count)  # the index column arrived
    assert opt.base.param_groups[0]["lr"] == pytest.approx(trainer.lr_scheduler.get_last_lr()[0])
    assert opt.base.param_groups[0]["lr"] == pytest.approx(ref_lr)


def test_method_by_name_wraps_the_trainers_own_optimizer(tmp_path):
    model = Tiny()
    trainer = train(tmp_path, model, method="sam", method_options={"rho": 0.2})
    engine = trainer.optimizer.optimizer
    assert isinstance(engine, flatsam.SharpnessAware) and isinstance(engine.base, torch.optim.AdamW)
    assert engine.rho == 0.2 and engine.step_count == STEPS
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _Stub:
    """Just enough of a Trainer for per_sample_loss."""

    class accelerator:  # noqa: N801
        @staticmethod
        def unwrap_model(model):
            return model


class TinyForCausalLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(5, 5)

    def forward(self, input_ids):
        return {"logits": self.embed(input_ids)}


def test_per_sample_loss_of_token_logits_is_the_mean_over_counted_tokens():
    model = TinyForCausalLM()
    ids = torch.tensor([[1, 2, 3, 4], [4, 3, 2, 1]])
    labels = torch.tensor([[1, 2, -100, 4], [4, -100, -100, 1]])
    got = SharpnessAwareTrainer.per_sample_loss(_Stub(), model, {"input_ids": ids, "labels": labels})
    logits = model(ids)["logits"]
    expected = []
    for row in range(2):  # a causal LM: the logits at t score the label at t + 1
        terms = [
            F.cross_entropy(logits[row, t][None], labels[row, t + 1][None])
            for t in range(3)
            if labels[row, t + 1] != -100
        ]
        expected.append(torch.stack(terms).mean())
    torch.testing.assert_close(got, torch.stack(expected))


class NoIndex(Rows):
    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": X[i], "labels": Y[i]}


def test_a_history_method_without_an_index_column_fails_before_training(tmp_path):
    model = Tiny()
    before = [p.detach().clone() for p in model.parameters()]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = InOrder(model=model, args=args, train_dataset=NoIndex(), optimizers=(ausam(model), None))
    with pytest.raises(ValueError, match="no 'index' column .*x, labels.*add_column"):
        trainer.train()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("method", ["saf", "mesa"])
def test_saf_and_mesa_are_refused_before_training(tmp_path, method):
    """Their trajectory loss cannot come through per_sample_loss: refused before any step, not at every
    step (nor, as before the engine checked it, trained silently as the base optimizer)."""
    model = Tiny()
    before = [p.detach().clone() for p in model.parameters()]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=BATCH, report_to=[], save_strategy="no",
        disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    trainer = InOrder(model=model, args=args, train_dataset=Rows(), method=method)
    with pytest.raises(ValueError, match="trajectory loss .* `flatsam train --method saf"):
        trainer.train()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
