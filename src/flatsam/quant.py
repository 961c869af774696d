"""Quantization-aware training with learned step sizes (LSQ; Esser et al., ICLR 2020, arXiv 1902.08153).

``quantize_model(model, w_bits, a_bits)`` swaps every ``nn.Conv2d``/``nn.Linear`` for a fake-quantized
copy that quantizes its weight (signed, ``-2^(b-1) … 2^(b-1)-1``) and its input activation (unsigned,
``0 … 2^b-1``, when the layer's first input has no negative value, i.e. after a ReLU; signed otherwise,
e.g. the normalised image at the first layer) with one learned step size each. As is customary (LSQ
§3), the first and the last layer keep 8 bits. The latent full-precision weights stay the parameters
the optimizer (and SAM's ascent) acts on; the quantized weights exist only inside the forward.

LSQ, as in the paper's Eq. 1–5 and its Appendix pseudocode:

- forward ``q(v) = round(clamp(v / s, -Q_N, Q_P)) · s`` (``torch.round``: halves to even);
- straight-through estimator: ∂q/∂v = 1 inside the clamp range, 0 outside;
- ∂q/∂s = ``round(v/s) - v/s`` inside, ``-Q_N`` below, ``Q_P`` above, times the gradient scale
  ``g = 1/sqrt(N·Q_P)``; N is the number of weights of the layer for a weight step size and the number of
  features of one sample's layer input (``N_F``) for an activation step size;
- initial step ``2·mean|v| / sqrt(Q_P)``: from the weights at conversion, from the first batch of
  activations for the activation step (a buffer ``initialized`` records it, so a resumed run does not
  re-initialise).

Why not ``torch.ao.quantization``: its ``FakeQuantize`` learns no scale, and the learnable variant,
``torch.ao.quantization._learnable_fake_quantize._LearnableFakeQuantize`` (private, ``__all__ = []``),
also learns a zero point, initialises the scale from a min/max observer instead of LSQ's rule, scales the
activation gradient by the whole batch's element count instead of N_F, and clamps ``scale.data`` in place
during the forward. The pure-autograd form below is LSQ's own formulation, works in any dtype (the tests
run it in float64) and is checked against torch's fused ``_fake_quantize_learnable_per_tensor_affine``
(equal forward; that op's straight-through mask is taken after rounding, so it also passes gradient in
the half step beyond each clamp edge, where LSQ's Eq. 3–5 do not).

Step sizes and SAM: ``param_groups(model, perturb_step_sizes=False)`` puts the step sizes in their own
parameter group (no weight decay) marked ``perturb=False``, so the engine's ascent leaves them out of ε
and of its norm: the sharpness is taken over the latent weights (and BatchNorm parameters) only, the
quantizer being part of the function. ``perturb_step_sizes=True`` perturbs them like every other
parameter (what a SAM wrapper around ``model.parameters()`` does). How the AUSAM authors treated step
sizes is not published (unverified); no weight decay on step sizes is likewise our choice.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flatsam.safe_load import load_tensors

BITS = (2, 3, 4, 8)
EDGE_BITS = 8  # the first and last layer's bits


def _check_bits(name: str, bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"{name} must be one of {BITS}, got {bits!r}")


def levels(bits: int, signed: bool) -> tuple[int, int]:
    """``(Q_N, Q_P)``: the clamp range is ``[-Q_N, Q_P]`` in units of the step size."""
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def lsq(v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int, grad_scale: float) -> torch.Tensor:
    """LSQ fake quantization of ``v`` with step ``step``: forward ``round(clamp(v/s, -Q_N, Q_P))·s``,
    straight-through rounding and the step's gradient multiplied by ``grad_scale``."""
    s = (step - step * grad_scale).detach() + step * grad_scale  # value s, gradient × grad_scale
    scaled = torch.clamp(v / s, -q_n, q_p)
    return ((scaled.round() - scaled).detach() + scaled) * s


def _after_load(module: LSQQuantizer, incompatible: Any) -> None:
    module._sync_flags()  # noqa: SLF001


class LSQQuantizer(nn.Module):
    """One learned step size for a tensor of ``bits`` bits. ``signed=None`` decides the sign from the
    first tensor seen (signed if it has a negative entry); ``per_sample`` counts N per batch row
    (activations) instead of the whole tensor (weights)."""

    def __init__(self, bits: int, signed: bool | None, per_sample: bool) -> None:
        super().__init__()
        _check_bits("bits", bits)
        self.bits, self.per_sample = bits, per_sample
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("signed", torch.tensor(bool(signed)))
        self._auto_sign = signed is None
        self._ready: tuple[int, int] | None = None  # (Q_N, Q_P) once initialised: no device sync per forward
        self.register_load_state_dict_post_hook(_after_load)

    def _sync_flags(self) -> None:
        self._ready = levels(self.bits, bool(self.signed)) if bool(self.initialized) else None

    @torch.no_grad()
    def initialize(self, v: torch.Tensor) -> None:
        """LSQ's initial step ``2·mean|v|/sqrt(Q_P)`` (and the sign, when it is decided from data)."""
        if self._auto_sign:
            self.signed.fill_(bool((v < 0).any()))
        _, q_p = levels(self.bits, bool(self.signed))
        self.step.copy_((2 * v.abs().mean() / math.sqrt(q_p)).clamp_min(1e-8))
        self.initialized.fill_(True)
        self._sync_flags()

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self._ready is None:
            self.initialize(v.detach())
        q_n, q_p = self._ready  # type: ignore[misc]
        n = v[0].numel() if self.per_sample else v.numel()
        return lsq(v, self.step.to(v.dtype), q_n, q_p, 1.0 / math.sqrt(n * q_p))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={bool(self.signed)}, per_sample={self.per_sample}"


class _Quantized:
    """Mixin for a conv/linear layer whose weight and input are fake-quantized."""

    weight: nn.Parameter

    def _add_quantizers(self, w_bits: int, a_bits: int) -> None:
        device = self.weight.device
        self.weight_quant = LSQQuantizer(w_bits, signed=True, per_sample=False).to(device)
        self.input_quant = LSQQuantizer(a_bits, signed=None, per_sample=True).to(device)
        self.weight_quant.initialize(self.weight.detach())


class QuantConv2d(_Quantized, nn.Conv2d):
    """``nn.Conv2d`` with LSQ fake quantization of its weight and its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), self.weight_quant(self.weight), self.bias)


class QuantLinear(_Quantized, nn.Linear):
    """``nn.Linear`` with LSQ fake quantization of its weight and its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias)


def _convert(layer: nn.Module, w_bits: int, a_bits: int) -> nn.Module:
    """Turn ``layer`` into its quantized class in place (same parameters, hooks and settings)."""
    layer.__class__ = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
    layer._add_quantizers(w_bits, a_bits)  # type: ignore[attr-defined]  # noqa: SLF001
    return layer


def quantize_model(
    model: nn.Module, w_bits: int, a_bits: int, edge_bits: int | None = EDGE_BITS
) -> nn.Module:
    """Replace every ``nn.Conv2d``/``nn.Linear`` of ``model`` (in place, returned for convenience) by its
    fake-quantized version with ``w_bits``/``a_bits``; the first of them (in module order) and the last
    get ``edge_bits`` for both (``None``: no exception). A model with several output layers names them
    in an ``output_layers`` attribute (e.g. SimCC's x and y classifiers). Load a full-precision checkpoint
    *before* converting: the weight step sizes are initialised from the weights at conversion."""
    _check_bits("w_bits", w_bits)
    _check_bits("a_bits", a_bits)
    if edge_bits is not None:
        _check_bits("edge_bits", edge_bits)
    names = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    if not names:
        raise ValueError("quantize_model: the model has no nn.Conv2d or nn.Linear layer")
    last = list(getattr(model, "output_layers", None) or names[-1:])
    unknown = [name for name in last if name not in names]
    if unknown:
        raise ValueError(f"quantize_model: output_layers {unknown} are not Conv2d/Linear layers of the model")
    edges = {names[0], *last} if edge_bits is not None else set()
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        bits = (edge_bits, edge_bits) if name in edges else (w_bits, a_bits)
        setattr(parent, attr, _convert(getattr(parent, attr), *bits))
    return model


def quantizers(model: nn.Module) -> list[LSQQuantizer]:
    return [m for m in model.modules() if isinstance(m, LSQQuantizer)]


def param_groups(model: nn.Module, perturb_step_sizes: bool = False) -> list[dict[str, Any]]:
    """Two parameter groups: the model's parameters, and the step sizes (``weight_decay=0``, and
    ``perturb=False`` unless ``perturb_step_sizes``: SAM's ascent then leaves them alone)."""
    steps = [q.step for q in quantizers(model)]
    ids = {id(p) for p in steps}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest}, {"params": steps, "weight_decay": 0.0, "perturb": perturb_step_sizes}]


def parse_spec(text: str) -> tuple[int, int]:
    """``"w4a4"`` → ``(4, 4)``; ``"w2a4"`` → ``(2, 4)``."""
    match = re.fullmatch(r"w(\d+)a(\d+)", text.strip().lower())
    if not match:
        raise ValueError(
            f"quantize must look like 'w4a4' (weight and activation bits, each in {BITS}), got {text!r}"
        )
    w_bits, a_bits = int(match[1]), int(match[2])
    _check_bits("quantize weight bits", w_bits)
    _check_bits("quantize activation bits", a_bits)
    return w_bits, a_bits


def load_full_precision(model: nn.Module, path: str | Path) -> None:
    """Load a full-precision model's weights: a flatsam run folder or ``checkpoint.pt`` (its ``model``
    entry) or a plain state dict file."""
    from flatsam.train.records import CHECKPOINT

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"quantize_init: no checkpoint at {path}")
    state = load_tensors(path, "quantize_init checkpoint")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"quantize_init: {path} is not a state dict (a {type(state).__name__})")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise ValueError(f"quantize_init: {path} does not fit the model: {detail}") from None
