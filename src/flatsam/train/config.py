"""Run configuration and method specs (``name`` or ``name:key=value,key=value``)."""

from __future__ import annotations

import ast
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from flatsam.losses import SMOOTHING_FORMS
from flatsam.train.precise_bn import EVAL_BN
from flatsam.validate import MAX_SEED


def parse_value(text: str) -> Any:
    """``"0.3"`` → 0.3, ``"true"`` → True, ``"none"`` → None, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if lowered.lstrip("+-") in ("nan", "inf", "infinity"):
        return float(lowered)  # a number, so that the finiteness check names it
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text.strip()


def parse_options(items: list[str], where: str) -> dict[str, Any]:
    """``["keep=0.3", "s-max=1"]`` → ``{"keep": 0.3, "s_max": 1}``; ``where`` names the source in errors."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad method option {item!r} in {where}; expected key=value")
        options[key.strip().replace("-", "_")] = parse_value(value)
    return options


@dataclass(frozen=True)
class MethodSpec:
    """A method of the registry with keyword overrides; ``label`` names it in tables and plots."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        """``"ausam"``, ``"ausam:keep=0.3,s_max=1.0"`` or ``"fast=ausam:keep=0.3"`` (with a label)."""
        label = ""
        head, _, rest = text.partition(":")
        if "=" in head:
            label, _, head = head.partition("=")
        if not head.strip():
            raise ValueError(f"method spec {text!r} names no method; see `flatsam methods` for the names")
        items = [part.strip() for part in rest.split(",") if part.strip()]
        return cls(head.strip(), parse_options(items, repr(text)), label.strip() or text.strip())

    def display(self) -> str:
        return self.label or self.name


_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "dict[str, Any]": (dict,),
}
_ARTICLE = {"int": "an int", "dict[str, Any]": "a JSON object (dict)"}


def check_type(name: str, value: Any, annotation: str) -> None:
    """``value`` of the field's type (``int``, ``float``, ``bool``, ``str``, optionally ``| None``), and
    finite where it is a number; else a ``ValueError`` naming the field."""
    kind, _, optional = annotation.partition(" | ")
    if value is None and optional == "None":
        return
    allowed = _KINDS.get(kind)
    if allowed is None:
        return
    if not isinstance(value, allowed) or (isinstance(value, bool) and kind != "bool"):
        raise ValueError(f"{name} must be {_ARTICLE.get(kind, 'a ' + kind)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


def valid_device(name: str) -> bool:
    """``name`` is ``auto`` or a device string torch parses (whether it is present is checked later)."""
    if name == "auto":
        return True
    try:
        return torch.device(name).type in ("cpu", "cuda")
    except (RuntimeError, TypeError):
        return False


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (``None`` where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def pose_memory_floor(size: int, split: float, subset: int | None) -> int:
    """A lower bound on the bytes a pose run needs: its images at one byte per pixel value (``subset``
    or 4,000 training images and 1,000 test images, 3 channels) and the SimCC head's two linear layers
    with their gradients (``size·split`` bins each, fed by a feature map of at least ``(size/32)²``)."""
    images = ((subset or 4000) + 1000) * 3 * size * size
    features = max(1, (size // 32) ** 2)
    head = 2 * features * int(size * split) * 4 * 2
    return images + head


def check_pose_memory(size: int, split: float, subset: int | None) -> None:
    """Refuse a pose setting whose :func:`pose_memory_floor` exceeds this machine's memory."""
    need, have = pose_memory_floor(size, split, subset), memory_bytes()
    if have is not None and need > have:
        raise ValueError(
            f"pose_size {size} with simcc_split {split:g} needs at least {need / 2**30:,.0f} GiB (images and "
            f"SimCC head), more than this machine's {have / 2**30:,.0f} GiB; use a smaller --pose-size or "
            "--simcc-split"
        )


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved to ``config.json``)."""

    method: str = "ausam"
    method_options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = True
    subset: int | None = None
    label_noise: float = 0.0
    model: str = "cnn"
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    lr_warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    smoothing_form: str = "torch"
    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0
    seed: int = 0
    data_seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    channels_last: bool = True
    eval_batch_size: int = 1000
    eval_every: int = 1
    eval_bn: str = "running"
    val_fraction: float = 0.0
    run_dir: str = "runs/run"
    task: str = "classify"
    quantize: str | None = None
    quantize_init: str | None = None
    perturb_step_sizes: bool = False
    pose_size: int = 64
    simcc_split: float = 2.0
    simcc_sigma: float | None = None
    amp: str | None = None
    accumulate: int = 1
    log: str | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # types first: the range checks below compare numbers
            check_type(f.name, getattr(self, f.name), str(f.type))
        checks = [
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr >= 0, ">= 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("smoothing_form", self.smoothing_form in SMOOTHING_FORMS, f"one of {SMOOTHING_FORMS}"),
            ("lr_warmup_epochs", 0 <= self.lr_warmup_epochs <= self.epochs, "in [0, epochs]"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("eval_every", self.eval_every >= 1, ">= 1"),
            ("eval_bn", self.eval_bn in EVAL_BN, f"one of {EVAL_BN}"),
            ("val_fraction", 0 <= self.val_fraction <= 0.5, "in [0, 0.5] (0: no validation split)"),
            ("val_fraction", not self.val_fraction or self.task == "classify", "0 for the pose task"),
            ("optimizer", self.optimizer in ("sgd", "adam"), "'sgd' or 'adam'"),
            ("task", self.task in ("classify", "pose"), "'classify' or 'pose'"),
            ("quantize_init", self.quantize_init is None or bool(self.quantize), "unset without quantize"),
            ("pose_size", self.pose_size >= 16, ">= 16"),
            ("simcc_split", self.simcc_split > 0, "> 0"),
            ("simcc_sigma", self.simcc_sigma is None or self.simcc_sigma > 0, "> 0"),
            ("threads", self.threads is None or self.threads >= 1, ">= 1 (or unset: torch's default)"),
            ("device", valid_device(self.device), "cpu, cuda, cuda:N or auto"),
            ("amp", self.amp in (None, "bf16", "fp16"), "'bf16', 'fp16' or unset"),
            ("accumulate", self.accumulate >= 1, ">= 1"),
            ("seed", 0 <= self.seed <= MAX_SEED, f"in [0, {MAX_SEED}]"),
            ("data_seed", 0 <= self.data_seed <= MAX_SEED, f"in [0, {MAX_SEED}]"),
            ("simcc_split", self.pose_size * self.simcc_split >= 1, ">= 1 / pose_size (at least one bin)"),
        ]
        for name, ok, valid in checks:
            if not ok:
                raise ValueError(f"{name} must be {valid}, got {getattr(self, name)!r}")
        if self.task == "pose":
            check_pose_memory(self.pose_size, self.simcc_split, self.subset)
        from flatsam.train.loggers import parse

        parse(self.log)
        if self.quantize:
            from flatsam.quant import parse_spec

            parse_spec(self.quantize)

    @property
    def spec(self) -> MethodSpec:
        return MethodSpec(self.method, dict(self.method_options), self.label or self.method)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
