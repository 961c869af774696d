"""AUSAM in the Hugging Face Trainer: SharpnessAwareTrainer runs both passes in training_step, puts the
LR schedule on the flatsam optimizer and clips the descent gradient only. A tiny BERT, initialised at
random (nothing downloaded), learns whether token 7 occurs in a sequence; runs in seconds on a CPU.

    pip install 'flatsam[transformers]'
    python examples/transformers_trainer.py
"""

from __future__ import annotations

import tempfile

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from flatsam.integrations.transformers import SharpnessAwareTrainer


class Sequences(Dataset):
    """Random token sequences; label 1 if token 7 occurs. The ``index`` column feeds AUSAM's history."""

    def __init__(self, n: int = 256, length: int = 12, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 30, (n, length), generator=g)
        self.labels = (self.ids == 7).any(1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i], "index": torch.tensor(i)}


def main(epochs: int = 4) -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    model = BertForSequenceClassification(config)
    data = Sequences()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=32, gradient_accumulation_steps=2,
            num_train_epochs=epochs, learning_rate=3e-3, lr_scheduler_type="cosine", max_grad_norm=1.0,
            report_to=[], save_strategy="no", logging_steps=4, disable_tqdm=True, use_cpu=True,
        )  # fmt: skip
        trainer = SharpnessAwareTrainer(
            model=model, args=args, train_dataset=data, method="ausam", method_options={"rho": 0.05}
        )
        trainer.train()
    engine = trainer.optimizer.optimizer
    model.eval()
    with torch.no_grad():
        accuracy = (model(input_ids=data.ids).logits.argmax(1) == data.labels).float().mean()
    print(
        f"transformers: {trainer.state.global_step} steps, flatsam steps {engine.step_count}, "
        f"base {type(engine.base).__name__}, lr {engine.base.param_groups[0]['lr']:.2e}, "
        f"train accuracy {accuracy:.3f}"
    )


if __name__ == "__main__":
    main()
