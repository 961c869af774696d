"""What the training loop trains: a task supplies the data, the model, the per-sample loss, the training
hits and the test metrics. ``classify`` (image classification, cross-entropy, top-1 accuracy) and
``pose`` (SimCC keypoints, PCKh@0.5 / PCK@0.2). Quantization-aware training (``--quantize w4a4``) wraps
either task's model."""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from flatsam import quant
from flatsam.data import Augment, ImageData, load_dataset
from flatsam.losses import cross_entropy
from flatsam.models import build_model
from flatsam.train.config import TrainConfig

Data = Any  # ImageData or flatsam.pose.PoseData: tensors train_x/train_y/test_x/test_y, mean, std


class Task(Protocol):
    """The hooks the loop calls; a task is built from the run's config. ``y`` is whatever the task's data
    holds per row (class labels, joints)."""

    def load(self) -> Data: ...

    def model(self, data: Data) -> nn.Module: ...

    def augment(self, data: Data) -> Augment: ...

    def loss(self, out: Any, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``[B]``."""
        ...

    def hits(self, out: Any, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(correct, counted)`` on a training batch: top-1 hits, or PCK@0.2 hits for pose."""
        ...

    def evaluate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: Data
    ) -> dict[str, float | None]:
        """Test metrics of ``model`` (in eval mode); ``test_loss`` and ``test_acc`` (the headline metric)."""
        ...


class Classification:
    """Image classification: cross-entropy (with label smoothing), top-1 accuracy."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def load(self) -> ImageData:
        c = self.config
        return load_dataset(
            c.dataset,
            c.data_dir,
            subset=c.subset,
            label_noise=c.label_noise,
            seed=c.data_seed,
            download=c.download,
        )

    def model(self, data: ImageData) -> nn.Module:
        return build_model(self.config.model, data.in_channels, data.num_classes)

    def augment(self, data: ImageData) -> Augment:
        c = self.config
        return Augment.for_data(data, c.crop_padding, c.flip, c.cutout)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(out, y, self.config.label_smoothing, self.config.smoothing_form)  # type: ignore[arg-type]

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        return (out.detach().argmax(1) == y).sum(), len(y)

    def evaluate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: ImageData
    ) -> dict[str, float | None]:
        loss, accuracy = classification_metrics(model, x, y, self.config.eval_batch_size)
        return {"test_loss": loss, "test_acc": accuracy}


@torch.no_grad()
def classification_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` (in its current mode) on ``x``, ``y``."""
    loss = correct = 0.0
    for start in range(0, len(x), batch_size):
        out, target = model(x[start : start + batch_size]), y[start : start + batch_size]
        loss += float(F.cross_entropy(out, target, reduction="sum"))
        correct += float((out.argmax(1) == target).sum())
    return loss / len(x), correct / len(x)


class Pose:
    """SimCC pose estimation (Li et al., ECCV 2022) on a backbone of :mod:`flatsam.models`: per-sample
    KL loss of the x/y bin classifications; ``test_acc`` is PCKh@0.5 when the test set has head boxes,
    else PCK@0.2 (torso-normalised); both are also reported as ``test_pckh`` / ``test_pck``.

    SimCC's label σ is ``--simcc-sigma`` bins, by default 6 bins at 256 pixels scaled to the input size
    (the official configs use σ 4–6 at 256 px with splitting factor 2; which one for MPII: unverified)."""

    def __init__(self, config: TrainConfig) -> None:
        if config.label_noise:
            raise ValueError("label_noise applies to classification only (--task classify)")
        if config.crop_padding or config.flip or config.cutout:
            raise ValueError(
                "crop_padding, flip and cutout would move the joints: the pose task takes none of them"
            )
        self.config = config
        self.size = (config.pose_size, config.pose_size)
        self.split = config.simcc_split
        self.sigma = config.simcc_sigma if config.simcc_sigma is not None else 6.0 * config.pose_size / 256

    def load(self) -> Any:
        from flatsam.pose import load_pose_dataset

        c = self.config
        return load_pose_dataset(c.dataset, c.data_dir, c.pose_size, c.subset, c.data_seed)

    def model(self, data: Any) -> nn.Module:
        from flatsam.pose import JOINTS, simcc_model

        backbone = build_model(self.config.model, data.in_channels, 1)
        return simcc_model(backbone, data.in_channels, len(JOINTS), data.size, self.split)

    def augment(self, data: Any) -> Augment:
        return Augment(0, False, 0)

    def loss(self, out: Any, y: torch.Tensor) -> torch.Tensor:
        from flatsam.pose import simcc_loss

        return simcc_loss(out[0], out[1], y, self.size, self.split, self.sigma)

    def predict(self, out: Any) -> torch.Tensor:
        """Joint coordinates ``[B, K, 2]`` in input pixels from the logits."""
        from flatsam.pose import decode

        return torch.stack([decode(out[0].detach(), self.split), decode(out[1].detach(), self.split)], -1)

    def hits(self, out: Any, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        from flatsam.pose import pck_hits

        correct, counted = pck_hits(self.predict(out), y, torso(y), 0.2)
        return torch.tensor(correct), counted

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: Any
    ) -> dict[str, float | None]:
        from flatsam.pose import head_size, pck_hits

        loss, preds = 0.0, []
        batch = self.config.eval_batch_size
        for start in range(0, len(x), batch):
            out = model(x[start : start + batch])
            loss += float(self.loss(out, y[start : start + batch]).sum())
            preds.append(self.predict(out).cpu())
        pred, joints = torch.cat(preds), y.cpu()
        pckh = pck_hits(pred, joints, head_size(data.test_head_boxes), 0.5)
        pck = pck_hits(pred, joints, torso(joints), 0.2)
        pckh_value = pckh[0] / pckh[1] if pckh[1] else None
        pck_value = pck[0] / max(1, pck[1])
        return {
            "test_loss": loss / len(x),
            "test_acc": pckh_value if pckh_value is not None else pck_value,
            "test_pckh": pckh_value,
            "test_pck": pck_value,
        }


def torso(joints: torch.Tensor) -> torch.Tensor:
    """Torso size (left shoulder to right hip) per sample, ``nan`` where not visible."""
    from flatsam.pose import torso_size
    from flatsam.pose.data import J

    return torso_size(joints, J["l_shoulder"], J["r_hip"])


TASKS: dict[str, type] = {"classify": Classification, "pose": Pose}

# the paper's pose setting: Adam as base optimizer (lr 1e-3, as SimCC's code) and batch 64 (AUSAM paper)
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classify": {},
    "pose": {
        "dataset": "stickfigures",
        "model": "resnet8",
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "batch_size": 64,
        "eval_batch_size": 250,
        "label_noise": 0.0,
        "lr_warmup_epochs": 0.0,
    },
}


def get_task(config: TrainConfig) -> Task:
    """The task object of ``config.task``."""
    return TASKS[config.task](config)


def build_model_for(config: TrainConfig, task: Task, data: Data) -> tuple[nn.Module, Any]:
    """The task's model, quantized if ``config.quantize`` (after loading ``config.quantize_init``), and
    the parameters (or parameter groups) for the optimizer."""
    model = task.model(data)
    if not config.quantize:
        return model, model.parameters()
    w_bits, a_bits = quant.parse_spec(config.quantize)
    if config.quantize_init:
        quant.load_full_precision(model, config.quantize_init)
    quant.quantize_model(model, w_bits, a_bits)
    return model, quant.param_groups(model, config.perturb_step_sizes)
