"""The AUSAM paper's benchmarks as ``flatsam bench`` suites: ``paper-cifar10``, ``paper-cifar100``,
``paper-tiny`` and ``paper-pose`` (Deng, Pang, Zhang, Guo, "Asymptotic Unbiased Sample Sampling to Speed
Up Sharpness-Aware Minimization", AAAI 2025, arXiv 2406.08001).

Each suite trains SGD, SAM and AUSAM on every model of the paper's table for that dataset, plus AUSAM
planned for SGD's wall-clock (the AAAI version's second claim: with adjusted settings AUSAM runs at the
base optimizer's speed and still beats it), 3 seeds each. One suite holds all its models: each method
spec names its model with ``train.model=``, so the dataset is read once.

Where the settings come from:

- CIFAR-10/100 — the official code (github.com/ajiaaa/AUSAM, ``AUSAM/train.py``, ``AUSAM/data/cifar.py``):
  ResNet-18, WRN-28-10 (dropout 0), PyramidNet-110 (α 270); 200 epochs; batch 256; SGD lr 0.1, momentum
  0.9, weight decay 1e-3; cosine decay to 0 per iteration, no warm-up; label smoothing 0.1 (the authors'
  form); random crop (padding 4), flip, Cutout 16×16; ρ 0.1 for SAM and AUSAM; AUSAM keep 0.5, s_min
  0.1, s_max 0.5 (1.0 for PyramidNet-110, as the paper states for it). The paper text gives batch 128;
  the code's 256 is the default here, ``--batch-size 128`` the alternative. The code applies Cutout
  with probability 0.5; flatsam's Cutout applies to every image (a known difference).
- Tiny-ImageNet — the paper (ResNet-18, ResNet-50, MobileNetV1; 200 epochs, batch 128, Cutout, cosine
  decay). The released code has no Tiny-ImageNet path (commented out), so the rest follows its CIFAR
  recipe (lr 0.1, weight decay 1e-3, smoothing 0.1, crop padding 4, flip, Cutout 16): unverified.
- MPII pose — the paper (SimCC, Adam, batch 64); the rest follows SimCC's MPII recipe as we read it
  (ResNet-50 backbone, 256×256 input, lr 1e-3, 210 epochs, splitting factor 2, σ 6): unverified. flatsam's
  ResNet-50 keeps the small-image stem (no stride-2 stem or max-pool), so it costs more than SimCC's;
  flatsam decays the rate by a cosine, not SimCC's steps at epochs 170 and 200.

AUSAM at SGD's speed is AUSAM for ``equal_time_epochs(200)`` = 190 epochs (its step measured at 1.05× SGD's
on the CPU; ``flatsam bench --suite ... --dry-run`` measures the ratio on the device at hand).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flatsam.train.config import TrainConfig
from flatsam.train.tasks import TASK_DEFAULTS

if TYPE_CHECKING:
    from flatsam.train.bench import Suite

EPOCHS = 200
#: The CIFAR recipe of the official code (see the module docstring).
CIFAR_CONFIG = TrainConfig(
    dataset="cifar10",
    model="resnet18",
    epochs=EPOCHS,
    batch_size=256,
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-3,
    label_smoothing=0.1,
    smoothing_form="authors",
    crop_padding=4,
    flip=True,
    cutout=16,
    eval_every=5,
    device="auto",
)
TINY_CONFIG = CIFAR_CONFIG.replace(dataset="tiny-imagenet", batch_size=128)
POSE_CONFIG = TrainConfig(task="pose", **TASK_DEFAULTS["pose"]).replace(
    dataset="mpii", model="resnet50", pose_size=256, epochs=210, eval_every=10, device="auto"
)

CIFAR_MODELS = ("resnet18", "wrn28-10", "pyramidnet110")
TINY_MODELS = ("resnet18", "resnet50", "mobilenetv1")
#: AUSAM's upper selection weight per model where it is not the code's 0.5
S_MAX = {"pyramidnet110": 1.0}


def paper_methods(models: tuple[str, ...], epochs: int = EPOCHS) -> tuple[str, ...]:
    """SGD, SAM, AUSAM and AUSAM at SGD's wall-clock for each model, as labelled method specs."""
    from flatsam.train.bench import equal_time_epochs

    fast = equal_time_epochs(epochs)
    specs = []
    for model in models:
        on = f"train.model={model}"
        ausam = f"s_max={S_MAX[model]}," if model in S_MAX else ""
        specs += [
            f"{model}-sgd=sgd:{on}",
            f"{model}-sam=sam:{on}",
            f"{model}-ausam=ausam:{ausam}{on}",
            f"{model}-ausam-{fast}ep=ausam:{ausam}{on},train.epochs={fast}",
        ]
    return tuple(specs)


def paper_suites() -> dict[str, Suite]:
    """The four suites by name (built on call: :mod:`flatsam.train.bench` registers them on import)."""
    from flatsam.train.bench import Suite

    return {
        "paper-cifar10": Suite(
            "the AUSAM paper's CIFAR-10 table: ResNet-18, WRN-28-10, PyramidNet-110 × SGD, SAM, AUSAM and "
            "AUSAM at SGD's wall-clock, 200 epochs, the official code's recipe, 3 seeds",
            CIFAR_CONFIG,
            paper_methods(CIFAR_MODELS),
        ),
        "paper-cifar100": Suite(
            "the AUSAM paper's CIFAR-100 table (as paper-cifar10, on CIFAR-100)",
            CIFAR_CONFIG.replace(dataset="cifar100"),
            paper_methods(CIFAR_MODELS),
        ),
        "paper-tiny": Suite(
            "the AUSAM paper's Tiny-ImageNet table: ResNet-18, ResNet-50, MobileNetV1 × SGD, SAM, AUSAM and "
            "AUSAM at SGD's wall-clock, 200 epochs, batch 128, 3 seeds",
            TINY_CONFIG,
            paper_methods(TINY_MODELS),
        ),
        "paper-pose": Suite(
            "the AUSAM paper's pose setting: SimCC on MPII (ResNet-50, 256 px), Adam, batch 64, 210 epochs: "
            "SGD (the Adam base alone), SAM, AUSAM and AUSAM at the base's wall-clock, 3 seeds",
            POSE_CONFIG,
            paper_methods(("resnet50",), POSE_CONFIG.epochs),
        ),
    }
