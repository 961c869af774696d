"""Perturbations: the ascent ε computed from the clean gradient held in ``p.grad``."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from flatsam.component import Component, Outcome, StepContext, make_generator

Epsilon = list[tuple[nn.Parameter, torch.Tensor]]


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm over a list of tensors (on the first tensor's device; no host sync)."""
    if not tensors:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(tensors, norm_type=2.0, foreach=None)


def scaled(tensors: list[torch.Tensor], scale: torch.Tensor) -> list[torch.Tensor]:
    """``t · scale`` for every tensor, ``scale`` (a 0-dim tensor) cast to each tensor's dtype and device
    first: one ``torch._foreach_mul`` where the tensors share dtype and device (the same products, bit for
    bit, as one multiplication per tensor), else one multiplication per tensor."""
    if not tensors:
        return []
    first = tensors[0]
    if all(t.dtype == first.dtype and t.device == first.device for t in tensors):
        return list(torch._foreach_mul(tensors, scale.to(first)))
    return [t * scale.to(t) for t in tensors]


class Perturbation(Component):
    """Computes ε for every parameter that has a clean gradient; ``group["rho"]`` is the radius.

    ``shapes_clean_pass``: ``clean_pass`` changes which parameters get a clean gradient, so the engine
    must run that pass itself (the two-step API refuses such a perturbation).
    """

    shapes_clean_pass: ClassVar[bool] = False

    def epsilon(self, ctx: StepContext, groups: list[dict[str, Any]]) -> Epsilon:
        raise NotImplementedError

    @contextlib.contextmanager
    def clean_pass(self, ctx: StepContext, params: list[nn.Parameter]) -> Iterator[None]:
        """Context around the clean pass of a planned ascent (ESAM's stochastic weight perturbation
        narrows the parameters that get a gradient there). Nothing by default."""
        yield


class SAMPerturbation(Perturbation):
    """SAM (Foret et al., ICLR 2021): ε = ρ g / (‖g‖ + eps), one global L2 norm over all groups.

    ``eps`` = 1e-12 as in davda54/sam and the AUSAM authors' ``first_step``.
    """

    skip_on_device = True

    def __init__(self, eps: float = 1e-12) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps

    def radius(self, group: dict[str, Any]) -> float:
        """The length of ε on this parameter group: ρ for SAM."""
        return group["rho"]

    def directions(self, ctx: StepContext, params: list[nn.Parameter]) -> list[torch.Tensor]:
        """The vector that ε normalises, one tensor per parameter with a gradient: g for SAM."""
        return [p.grad for p in params]

    def epsilon(self, ctx: StepContext, groups: list[dict[str, Any]]) -> Epsilon:
        grouped = [(group, [p for p in group["params"] if p.grad is not None]) for group in groups]
        directions = self.directions(ctx, [p for _, params in grouped for p in params])
        norm = total_norm(directions)
        out: Epsilon = []
        position = 0
        for group, params in grouped:
            scale = self.radius(group) / (norm + self.eps)
            eps = scaled(directions[position : position + len(params)], scale)
            out += zip(params, eps, strict=True)
            position += len(params)
        return out

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class ASAMPerturbation(Perturbation):
    """Adaptive SAM (Kwon et al., ICML 2021): ε = ρ T²g / (‖Tg‖ + eps) with the element-wise operator
    T = |w| + η.

    Convention (``scope="weights"``, the default) follows the official code (SamsungLabs/ASAM,
    ``asam.py``): T applies to parameters whose name contains ``"weight"`` (conv, linear and
    normalisation scales) and is the identity on biases; ``eta`` = 0.01 and ``eps`` = 1e-16 as there
    (0.01 is the class default; the official CIFAR example, ``example_cifar.py``, runs η = 0).
    Names come from ``model``; without a model, tensors with more than one dimension count as weights
    (normalisation scales are then treated like biases). In this convention the authors use ρ = 0.5
    (CIFAR-10) and 1.0 (CIFAR-100). ``scope="all"`` with ``eta=0`` is davda54/sam's ``adaptive=True``
    (T = |w| on every parameter), whose good ρ is about 2.0 on CIFAR-10 (davda54/sam#37).
    """

    skip_on_device = True

    def __init__(
        self,
        eta: float = 0.01,
        scope: Literal["weights", "all"] = "weights",
        model: nn.Module | None = None,
        eps: float = 1e-16,
    ) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if scope not in ("weights", "all"):
            raise ValueError(f"scope must be 'weights' or 'all', got {scope!r}")
        self.eta, self.scope, self.eps = eta, scope, eps
        self._named_weights: set[int] | None = None
        if model is not None:
            self._named_weights = {id(p) for name, p in model.named_parameters() if "weight" in name}

    def _scaled(self, p: nn.Parameter) -> bool:
        if self.scope == "all":
            return True
        if self._named_weights is not None:
            return id(p) in self._named_weights
        return p.dim() > 1

    def epsilon(self, ctx: StepContext, groups: list[dict[str, Any]]) -> Epsilon:
        items = []  # (rho, p, T or None, T g)
        for group in groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                t = p.detach().abs().add_(self.eta) if self._scaled(p) else None
                items.append((group["rho"], p, t, p.grad * t if t is not None else p.grad))
        norm = total_norm([tg for *_, tg in items])
        return [
            (p, (tg * t if t is not None else tg) * (rho / (norm + self.eps)).to(tg))
            for rho, p, t, tg in items
        ]

    def extra_repr(self) -> str:
        return f"eta={self.eta}, scope={self.scope!r}"


class StochasticWeightPerturbation(SAMPerturbation):
    """ESAM's stochastic weight perturbation (Du et al., ICLR 2022): each step perturbs only a random
    subset of the parameter tensors, ε = ρ/β · g/(‖g‖ + 1e-7) over the tensors that got a clean gradient.

    As in the official code (github.com/dydjw9/Efficient_SAM, ``utils/Esam.py``): at the end of every
    sharpness-aware step each parameter tensor is excluded, with probability 1 − β, from the gradient
    of the *next* step's clean pass (``requires_grad = False`` there, restored right after, so the
    descent pass and the update still cover every tensor; an excluded tensor gets no ε and no part in
    ‖g‖). No tensor is excluded in the first step. The code draws ``random.random() > beta`` per tensor;
    here one uniform per tensor comes from the perturbation's own generator, so a run is reproducible
    and resumes exactly. Our guard, absent from the code (whose backward would fail): a draw that would
    exclude every tensor that requires a gradient excludes none.

    ``beta`` (the keep probability): 0.6 for ResNet-18 and 0.5 for WRN-28-10 and PyramidNet in the
    authors' ``run.sh``; ``eps`` = 1e-7 as in their ``first_step``.
    """

    state_fields = ("excluded",)
    shapes_clean_pass = True
    skip_on_device = False  # record draws the next step's exclusions

    def __init__(self, beta: float = 0.6, eps: float = 1e-7, seed: int | None = None) -> None:
        super().__init__(eps=eps)
        if not (0.0 < beta <= 1.0):
            raise ValueError(
                f"beta (the probability of keeping a tensor in the ascent) must be in (0, 1], got {beta}"
            )
        self.beta = float(beta)
        self.excluded = torch.zeros(0, dtype=torch.bool)  # per parameter, aligned with the engine's params
        self.generator = make_generator(seed)

    def radius(self, group: dict[str, Any]) -> float:
        return group["rho"] / self.beta

    @contextlib.contextmanager
    def clean_pass(self, ctx: StepContext, params: list[nn.Parameter]) -> Iterator[None]:
        trainable = [p for p in params if p.requires_grad]
        excluded = self.excluded.tolist()
        frozen = [p for p, out in zip(params, excluded, strict=False) if out and p.requires_grad]
        if len(frozen) == len(trainable):
            frozen = []
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def record(self, ctx: StepContext, outcome: Outcome) -> None:
        if outcome.ascent:
            self.excluded = torch.rand(len(outcome.descent_grads), generator=self.generator) > self.beta

    def extra_repr(self) -> str:
        return f"beta={self.beta}, eps={self.eps}"


class NoisySAMPerturbation(SAMPerturbation):
    """SAM's ε from a gradient with injected Gaussian noise: ε = ρ (g + ξ)/‖g + ξ‖ with
    ξ ~ N(0, (σ‖g‖/√d)² I), d the number of gradient entries, so that E‖ξ‖² = σ²‖g‖².

    The noise-injected micro-batch scheduler of Wei, Zhang, Tan (Neural Networks 185, 2025, 107205)
    adds random noise to the ascent gradient of a micro-batch, before normalisation, as an implicit
    random weight perturbation. Only the abstract is public, so the form and scale of the noise are
    **our choice**: isotropic Gaussian relative to ‖g‖, which keeps ε invariant to a loss scale (AMP) and
    to the units of the loss; σ = ``noise``. The default σ = 0.5 keeps ε mostly adversarial (in high
    dimension its cosine with g is about 1/√(1 + σ²) ≈ 0.89) while adding a random part of half that
    size; σ = 0 is SAM. The noise is one draw of d normals per step from the perturbation's own
    generator (on ``device``: give the parameters' device to draw there), split over the parameters with
    a gradient in parameter order.
    """

    skip_on_device = False  # the noise is drawn after the clean pass

    def __init__(
        self,
        noise: float = 0.5,
        eps: float = 1e-12,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(eps=eps)
        if not (noise >= 0.0 and math.isfinite(noise)):
            raise ValueError(
                f"noise (the noise-to-gradient norm ratio sigma) must be a finite value >= 0, got {noise}"
            )
        self.noise = float(noise)
        self.device = torch.device(device)
        self.generator = make_generator(seed, self.device)

    def directions(self, ctx: StepContext, params: list[nn.Parameter]) -> list[torch.Tensor]:
        grads = [p.grad for p in params]
        if not grads or self.noise == 0.0:
            return grads
        sizes = [g.numel() for g in grads]
        std = self.noise * total_norm(grads) / math.sqrt(sum(sizes))
        xi = torch.randn(sum(sizes), generator=self.generator, device=self.device, dtype=grads[0].dtype)
        return [g + part.view_as(g).to(g) * std.to(g) for g, part in zip(grads, xi.split(sizes), strict=True)]

    def extra_repr(self) -> str:
        return f"noise={self.noise}"


# -- GSAM (Zhuang et al., ICLR 2022) ---------------------------------------------------------------


def _check_number(name: str, value: float | None, low: float, *, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < low
    ):
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Σ a·b over every pair of tensors, on the first tensor's device and dtype (no host read)."""
    first = a[0]
    return torch.stack([(x * y).sum().to(first) for x, y in zip(a, b, strict=True)]).sum()


class GSAMPerturbation(Perturbation):
    """GSAM's ascent and descent correction, after the official ``gsam/gsam.py``.

    ρ follows the learning rate (the official ``ProportionScheduler``; Algorithm 1, step 0):
    ρ_t = ρ_min + (ρ_max − ρ_min)(lr − lr_min)/(lr_max − lr_min), with ρ_max the group's ``rho``, lr
    the current learning rate of the first perturbed parameter group (the official code reads
    ``param_groups[0]``), not clamped (a warm-up below lr_min gives ρ_t below ρ_min, as there).
    ``lr_max`` = None takes the first group's ``initial_lr`` (set by a torch LR scheduler), else its lr,
    at the first step, and keeps it in ``state_dict``; ``lr_max == lr_min`` means a constant ρ = ρ_max.

    ε = ρ_t g/(‖g‖ + eps), eps = 1e-12 (``perturb_eps``). ``adaptive``: with ``adaptive_form="pytorch"``
    (default) the PyTorch code's rule ε = ρ_t w²g/(‖|w|g‖ + eps); with ``"jax"`` the rule of the authors'
    JAX implementation (github.com/google-research/big_vision ``trainers/proj/gsam/gsam.py``, which the
    PyTorch README calls the official one) and of the paper's Algorithm 1, ε = ρ_t |w| g/(‖g‖ + eps).

    ``correct_descent`` (the official ``gradient_decompose``), with g the clean gradient and g_p the
    descent gradient at w+ε: cos = ⟨g, g_p⟩/(‖g_p‖‖g‖ + eps), g_⊥ = g − cos·‖g‖·g_p/(‖g_p‖ + eps),
    g_p ← g_p − α g_⊥. α = 0 is SAM with the scheduled ρ. (The JAX code projects onto g_p/‖g_p‖ with no
    eps, the same up to rounding; its ``minimize_fp=False`` variant, which corrects g instead, is not here.)

    Under torch.distributed the official code runs both passes in ``no_sync``, decomposes on each worker
    and then averages; here the clean gradient (kept for the decomposition) and the descent gradient are
    averaged by DDP first and the decomposition runs on the averages, the same on every rank.
    """

    needs_clean_grads = True
    skip_on_device = True
    state_fields = ("lr_max",)

    def __init__(
        self,
        alpha: float = 0.4,
        rho_min: float | None = None,
        lr_max: float | None = None,
        lr_min: float = 0.0,
        adaptive: bool = False,
        adaptive_form: Literal["pytorch", "jax"] = "pytorch",
        eps: float = 1e-12,
    ) -> None:
        if adaptive_form not in ("pytorch", "jax"):
            raise ValueError(f"adaptive_form must be 'pytorch' or 'jax', got {adaptive_form!r}")
        _check_number("alpha", alpha, 0.0)
        _check_number("rho_min", rho_min, 0.0, none_ok=True)
        _check_number("lr_min", lr_min, 0.0)
        _check_number("lr_max", lr_max, 0.0, none_ok=True)
        _check_number("eps", eps, 0.0)
        if lr_max is not None and lr_max < lr_min:
            raise ValueError(f"lr_max must be >= lr_min, got lr_max={lr_max}, lr_min={lr_min}")
        self.alpha, self.rho_min, self.lr_min, self.eps = float(alpha), rho_min, float(lr_min), float(eps)
        self.lr_max = None if lr_max is None else float(lr_max)
        self.adaptive, self.adaptive_form = bool(adaptive), adaptive_form
        self.by_weight = self.adaptive and adaptive_form == "jax"  # ε ⊙ |w| after SAM's ε
        self.inner: Perturbation = (
            ASAMPerturbation(eta=0.0, scope="all", eps=eps)
            if self.adaptive and not self.by_weight
            else SAMPerturbation(eps=eps)
        )

    def minimum(self, rho_max: float) -> float:
        """ρ_min for a group whose ρ_max is ``rho_max``: the given ``rho_min``, else half of ρ_max."""
        return rho_max / 2 if self.rho_min is None else self.rho_min

    def rho_at(self, rho_max: float, lr: float) -> float:
        """ρ_t of a group with radius ``rho_max`` at learning rate ``lr`` (the ProportionScheduler rule)."""
        rho_min = self.minimum(rho_max)
        if self.lr_max is None or self.lr_max <= self.lr_min:
            return rho_max
        return rho_min + (rho_max - rho_min) * (lr - self.lr_min) / (self.lr_max - self.lr_min)

    def epsilon(self, ctx: StepContext, groups: list[dict[str, Any]]) -> Epsilon:
        if not groups:
            return []
        lead = groups[0]
        if self.lr_max is None:
            self.lr_max = float(lead.get("initial_lr", lead["lr"]))
        lr = float(lead["lr"])
        pairs = self.inner.epsilon(ctx, [{**g, "rho": self.rho_at(g["rho"], lr)} for g in groups])
        return [(p, e * p.detach().abs()) for p, e in pairs] if self.by_weight else pairs

    @torch.no_grad()
    def correct_descent(self, ctx: StepContext, outcome: Outcome) -> None:
        clean = outcome.clean_grads or []
        pairs = [
            (g, gp)
            for g, gp in zip(clean, outcome.descent_grads, strict=False)
            if g is not None and gp is not None
        ]
        if not pairs:
            return
        old, new = [g for g, _ in pairs], [gp for _, gp in pairs]
        new_norm, old_norm = total_norm(new).to(new[0]), total_norm(old).to(new[0])
        cosine = _dot(old, new) / (new_norm * old_norm + self.eps)
        coefficient = cosine * old_norm / (new_norm + self.eps)
        for g, gp in pairs:
            vertical = g - coefficient.to(gp) * gp
            gp.add_(vertical, alpha=-self.alpha)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, rho_min={self.rho_min}, lr_max={self.lr_max}, lr_min={self.lr_min}, "
            f"adaptive={self.adaptive}, adaptive_form={self.adaptive_form!r}"
        )


#: Perturbations by name, for composed methods on the command line (``--perturbation NAME``).
PERTURBATIONS: dict[str, type[Perturbation]] = {
    "sam": SAMPerturbation,
    "asam": ASAMPerturbation,
    "swp": StochasticWeightPerturbation,
    "noisy": NoisySAMPerturbation,
    "gsam": GSAMPerturbation,
}
