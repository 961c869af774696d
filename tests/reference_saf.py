"""SAF and MESA written out from the official training loops (github.com/AngusDujw/SAF ``SAF_train.py``,
``MESA_train.py``, timm's ``ModelEmaV2``), independently of flatsam: float64 weight lists, the logits
table as a float32 tensor (the official numpy array), the loss as there (mean CE + λ·τ²·mean KL), the
gradient from autograd, hand-written momentum SGD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from reference import MomentumSGD

Weights = list[torch.Tensor]


def kl_term(output: torch.Tensor, reference: torch.Tensor, tau: float) -> torch.Tensor:
    """The official line: kl_div(softmax(output/T).log(), softmax(ref/T), 'none').sum(-1).mean()·T²."""
    log_p = F.softmax(output / tau, dim=1).log()
    q = F.softmax(reference / tau, dim=1)
    return F.kl_div(log_p, q, reduction="none").sum(-1).mean() * tau**2


class _Loop:
    def __init__(self, model: nn.Module, x, y, opt: MomentumSGD, lam: float, tau: float, start: int) -> None:
        self.model, self.x, self.y, self.opt = model, x, y, opt
        self.names = [n for n, _ in model.named_parameters()]
        self.lam, self.tau, self.start = lam, tau, start

    def forward(self, w: Weights, idx: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, dict(zip(self.names, w, strict=True)), (self.x[idx],))

    def update(self, w: Weights, idx: torch.Tensor, epoch: int, reference_of) -> Weights:
        leaves = [t.detach().clone().requires_grad_() for t in w]
        output = self.forward(leaves, idx)
        reference = reference_of(output)
        loss = F.cross_entropy(output, self.y[idx])
        if epoch > self.start:
            loss = loss + kl_term(output, reference(), self.tau) * self.lam
        grads = torch.autograd.grad(loss, leaves)
        return self.opt.step(w, list(grads))


class ReferenceSAF(_Loop):
    """``train_logits[indices, epoch % (E+1)] = output``; from epoch > kl_start_epoch the reference is
    ``train_logits[indices, (epoch - E) % (E+1)]``."""

    def __init__(
        self, model, x, y, opt, *, lam: float, tau: float, start: int, lag: int, classes: int
    ) -> None:
        super().__init__(model, x, y, opt, lam, tau, start)
        self.lag = lag
        self.table = torch.zeros(len(x), lag + 1, classes, dtype=torch.float32)

    def step(self, w: Weights, idx: torch.Tensor, epoch: int) -> Weights:
        def reference_of(output: torch.Tensor):
            self.table[idx, epoch % (self.lag + 1)] = output.detach().float()
            return lambda: self.table[idx, (epoch - self.lag) % (self.lag + 1)].to(output.dtype)

        return self.update(w, idx, epoch, reference_of)


class ReferenceMESA(_Loop):
    """The EMA model's output (eval mode) is the reference; after every step e ← d·e + (1 − d)·w."""

    def __init__(self, model, x, y, opt, *, lam: float, tau: float, start: int, decay: float) -> None:
        super().__init__(model, x, y, opt, lam, tau, start)
        self.decay = decay
        self.ema = [p.detach().clone() for p in model.parameters()]

    def step(self, w: Weights, idx: torch.Tensor, epoch: int) -> Weights:
        ema_output = self.forward(self.ema, idx).detach()
        w = self.update(w, idx, epoch, lambda output: lambda: ema_output)
        self.ema = [self.decay * e + (1.0 - self.decay) * m for e, m in zip(self.ema, w, strict=True)]
        return w
