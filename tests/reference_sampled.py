"""Slow, literal transcriptions of the row-selecting and perturbation-changing methods (ESAM, K-SAM,
noise-injected micro-batch SAM, uniform sampling, InfoBatch-style pruning), written independently of
flatsam's engine on the float64 weight lists of ``reference.py``.

Each draws its random numbers from its own ``torch.Generator`` seeded like the method under test, in the
same order and with the same calls, so the two take the same random decisions.
"""

from __future__ import annotations

import math

import torch

from reference import MomentumSGD, Problem, asam_epsilon, global_norm, sam_epsilon

Weights = list[torch.Tensor]


def plus(w: list[torch.Tensor], e: list[torch.Tensor]) -> list[torch.Tensor]:
    return [wi + ei for wi, ei in zip(w, e, strict=True)]


# -- perturbations: ε from (w, g), and what happens after the step ------------------------------------------


class SAMEpsilon:
    """ε = ρ g/(‖g‖ + 1e-12)."""

    def __init__(self, rho: float) -> None:
        self.rho = rho

    def __call__(self, w: Weights, g: Weights) -> Weights:
        return sam_epsilon(g, self.rho)

    def after_step(self, tensors: int) -> None:
        pass


class ASAMEpsilon(SAMEpsilon):
    """ASAM's ε = ρ T²g/(‖Tg‖ + 1e-16), T = |w| + η on the tensors marked ``scaled``, identity elsewhere."""

    def __init__(self, rho: float, eta: float, scaled: list[bool]) -> None:
        super().__init__(rho)
        self.eta, self.scaled = eta, scaled

    def __call__(self, w: Weights, g: Weights) -> Weights:
        return asam_epsilon(w, g, self.rho, self.eta, self.scaled)


class NoisyEpsilon(SAMEpsilon):
    """ε = ρ g̃/(‖g̃‖ + 1e-12), g̃ = g + ξ: one draw of d standard normals (own generator, seed ``seed``)
    times σ‖g‖/√d, split over the tensors in order."""

    def __init__(self, rho: float, sigma: float, seed: int) -> None:
        super().__init__(rho)
        self.sigma = sigma
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, w: Weights, g: Weights) -> Weights:
        d = sum(gi.numel() for gi in g)
        xi = torch.randn(d, generator=self.gen, dtype=torch.float64)
        std = self.sigma * global_norm(g) / math.sqrt(d)
        noisy, start = [], 0
        for gi in g:
            noisy.append(gi + std * xi[start : start + gi.numel()].reshape(gi.shape))
            start += gi.numel()
        return sam_epsilon(noisy, self.rho)


class SWPEpsilon(SAMEpsilon):
    """ESAM's stochastic weight perturbation (dydjw9/Efficient_SAM utils/Esam.py): the tensors excluded in
    this step's clean pass get no gradient, so no ε and no part in ‖g‖; ε = ρ/(‖g‖ + 1e-7)/β · g over the
    others; after the step one uniform per tensor (own generator), excluded next step when above β. A draw
    excluding every tensor excludes none (flatsam's guard)."""

    def __init__(self, rho: float, beta: float, seed: int) -> None:
        super().__init__(rho)
        self.beta = beta
        self.gen = torch.Generator().manual_seed(seed)
        self.excluded: list[bool] | None = None
        self.steps_with_frozen = 0
        self.guard_hits = 0

    def __call__(self, w: Weights, g: Weights) -> Weights:
        excluded = self.excluded or [False] * len(g)
        if all(excluded):
            excluded = [False] * len(excluded)
            self.guard_hits += 1
        if any(excluded):
            self.steps_with_frozen += 1
        n = global_norm([gi for gi, out in zip(g, excluded, strict=True) if not out])
        return [
            torch.zeros_like(gi) if out else self.rho / (n + 1e-7) / self.beta * gi
            for gi, out in zip(g, excluded, strict=True)
        ]

    def after_step(self, tensors: int) -> None:
        u = torch.rand(tensors, generator=self.gen)
        self.excluded = [float(u[i]) > self.beta for i in range(tensors)]


def top_positions(values: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k largest values, in increasing position order (no ties in these tests)."""
    order = sorted(range(len(values)), key=lambda i: float(values[i]), reverse=True)
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


class ReferenceESAM:
    """ESAM as in the authors' code (dydjw9/Efficient_SAM utils/Esam.py).

    Clean pass on the batch; ε from ``perturbation`` (by default ESAM's stochastic weight perturbation,
    ``SWPEpsilon``); a no-grad forward at w+ε gives the instance sharpness; descent rows are those strictly
    above the k-th largest sharpness, k = int(B·γ) (exact top-k if asked, or if the strict rule keeps
    nothing; every row if γ ≥ 0.99); base step; then the perturbation's ``after_step``.
    """

    def __init__(
        self,
        problem: Problem,
        opt: MomentumSGD,
        rho: float,
        beta: float,
        gamma: float,
        seed: int,
        exact_topk: bool = False,
        perturbation: SAMEpsilon | None = None,
    ) -> None:
        self.problem, self.opt = problem, opt
        self.gamma, self.exact_topk = gamma, exact_topk
        self.perturbation = perturbation or SWPEpsilon(rho, beta, seed)
        self.descent_sizes: list[int] = []

    def step(self, w: list[torch.Tensor], idx: torch.Tensor) -> list[torch.Tensor]:
        self.problem.new_step()
        loss_before, g = self.problem.losses_and_grads(w, idx)
        e = self.perturbation(w, g)
        loss_after, _ = self.problem.losses_and_grads(plus(w, e), idx)
        sharpness = loss_after - loss_before
        batch = len(idx)
        if self.gamma >= 0.99:
            rows = torch.arange(batch)
        else:
            k = max(1, int(batch * self.gamma))
            cutoff = sorted(sharpness.tolist(), reverse=True)[k - 1]
            rows = torch.tensor([i for i in range(batch) if float(sharpness[i]) > cutoff], dtype=torch.long)
            if self.exact_topk or len(rows) == 0:
                rows = top_positions(sharpness, k)
        self.descent_sizes.append(len(rows))
        _, g_sam = self.problem.losses_and_grads(plus(w, e), idx[rows])
        w = self.opt.step(w, g_sam)
        self.perturbation.after_step(len(w))
        return w


class ReferenceKSAM:
    """K-SAM: losses of every row at w, both SAM passes on the k = max(1, ⌊keep·B⌋) highest (ε from
    ``perturbation``, SAM's by default)."""

    def __init__(
        self,
        problem: Problem,
        opt: MomentumSGD,
        rho: float,
        keep: float,
        perturbation: SAMEpsilon | None = None,
    ) -> None:
        self.problem, self.opt, self.keep = problem, opt, keep
        self.perturbation = perturbation or SAMEpsilon(rho)

    def step(self, w: list[torch.Tensor], idx: torch.Tensor) -> list[torch.Tensor]:
        self.problem.new_step()
        scores, _ = self.problem.losses_and_grads(w, idx)
        rows = top_positions(scores, max(1, math.floor(self.keep * len(idx))))
        sub = idx[rows]
        _, g = self.problem.losses_and_grads(w, sub)
        _, g_sam = self.problem.losses_and_grads(plus(w, self.perturbation(w, g)), sub)
        w = self.opt.step(w, g_sam)
        self.perturbation.after_step(len(w))
        return w


class ReferenceMicroBatchSAM:
    """Ascent gradient g on m rows drawn by randperm (row generator, seed s); ε from ``perturbation``, by
    default ``NoisyEpsilon`` with σ and seed s + 1; descent gradient at w+ε on every row."""

    def __init__(
        self,
        problem: Problem,
        opt: MomentumSGD,
        rho: float,
        m: int,
        sigma: float,
        seed: int,
        perturbation: SAMEpsilon | None = None,
    ) -> None:
        self.problem, self.opt, self.m = problem, opt, m
        self.rows_gen = torch.Generator().manual_seed(seed)
        self.perturbation = perturbation or NoisyEpsilon(rho, sigma, seed + 1)

    def step(self, w: list[torch.Tensor], idx: torch.Tensor) -> list[torch.Tensor]:
        self.problem.new_step()
        rows = torch.randperm(len(idx), generator=self.rows_gen)[: min(self.m, len(idx))]
        _, g = self.problem.losses_and_grads(w, idx[rows])
        _, g_sam = self.problem.losses_and_grads(plus(w, self.perturbation(w, g)), idx)
        w = self.opt.step(w, g_sam)
        self.perturbation.after_step(len(w))
        return w


class ReferenceUniform:
    """Epochs < warmup: SAM on every row (AUSAM's warm-up). Later: both SAM passes on the first ⌊keep·B⌋
    entries of a randperm of the batch positions. ε from ``perturbation``, SAM's by default."""

    def __init__(
        self,
        problem: Problem,
        opt: MomentumSGD,
        rho: float,
        keep: float,
        warmup: int,
        seed: int,
        perturbation: SAMEpsilon | None = None,
    ) -> None:
        self.problem, self.opt, self.keep, self.warmup = problem, opt, keep, warmup
        self.gen = torch.Generator().manual_seed(seed)
        self.perturbation = perturbation or SAMEpsilon(rho)

    def step(self, w: list[torch.Tensor], epoch: int, idx: torch.Tensor) -> list[torch.Tensor]:
        self.problem.new_step()
        if epoch < self.warmup:
            rows = torch.arange(len(idx))
        else:
            rows = torch.randperm(len(idx), generator=self.gen)[: max(1, math.floor(self.keep * len(idx)))]
        sub = idx[rows]
        _, g = self.problem.losses_and_grads(w, sub)
        _, g_sam = self.problem.losses_and_grads(plus(w, self.perturbation(w, g)), sub)
        w = self.opt.step(w, g_sam)
        self.perturbation.after_step(len(w))
        return w


class ReferenceInfoBatch:
    """InfoBatch as the official code (NUS-HPC-AI-Lab/InfoBatch ``infobatch/infobatch.py``:
    ``IBSampler.reset``, ``InfoBatch.prune``, ``InfoBatch.update``) around SAM.

    Scores (float32, all 3 at first) = last clean loss per dataset index. At each epoch start the
    sampler's count is epoch + 1 (its constructor already reset once); while that count ≤ delta·epochs:
    well learned = scores < scores.mean(); of those, int(keep·n) drawn without replacement (a randperm
    of the generator in place of np.random.choice) get weight 1/keep, every other weight is 1; the
    epoch visits the not-well-learned and the drawn samples only (in the order of the test's permutation,
    in place of np.random.shuffle). Other epochs visit every sample with weight 1. Each step: both SAM
    passes on every row of the batch, loss mean(w·ℓ); scores[batch] ← the clean per-sample losses.
    """

    def __init__(
        self,
        problem: Problem,
        opt: MomentumSGD,
        n: int,
        epochs: int,
        rho: float,
        prune_ratio: float,
        delta: float,
        seed: int,
    ) -> None:
        self.problem, self.opt, self.rho = problem, opt, rho
        self.n, self.epochs, self.keep, self.delta = n, epochs, 1.0 - prune_ratio, delta
        self.scores = torch.full((n,), 3.0)
        self.weights = torch.ones(n)
        self.gen = torch.Generator().manual_seed(seed)

    def epoch_order(self, epoch: int, permutation: torch.Tensor) -> torch.Tensor:
        iterations = epoch + 1
        if iterations > self.epochs * self.delta:
            self.weights = torch.ones(self.n)
            return permutation
        well = [i for i in range(self.n) if bool(self.scores[i] < self.scores.mean())]
        draw = torch.randperm(len(well), generator=self.gen)[: int(self.keep * len(well))]
        selected = {well[int(j)] for j in draw}
        self.weights = torch.ones(self.n)
        for i in selected:
            self.weights[i] = 1 / self.keep
        remained = {i for i in range(self.n) if i not in well} | selected
        return torch.tensor([int(i) for i in permutation if int(i) in remained], dtype=torch.long)

    def step(self, w: list[torch.Tensor], idx: torch.Tensor) -> list[torch.Tensor]:
        self.problem.new_step()
        weights = self.weights[idx].double()
        loss_before, g = self.problem.losses_and_grads(w, idx, weights)
        _, g_sam = self.problem.losses_and_grads(plus(w, sam_epsilon(g, self.rho)), idx, weights)
        self.scores[idx] = loss_before.float()
        return self.opt.step(w, g_sam)


class ReferenceInfoBatchInBatch:
    """InfoBatch inside the batch: scores (float32, all 3 at first) = last clean loss per dataset index.
    While epoch + 1 ≤ delta·epochs: the threshold is the mean score at the epoch's first step; the batch's
    rows below it are well learned; of those, the first int(keep·n) of a randperm (generator, seed) are
    kept with weight 1/keep, the rest dropped (one kept if that would leave no row at all). Both passes
    average w·ℓ over the kept rows. Later epochs: every row, weight 1. Scores ← clean losses of the rows
    trained on."""

    def __init__(
        self,
        problem: Problem,
        opt: MomentumSGD,
        n: int,
        epochs: int,
        rho: float,
        prune_ratio: float,
        delta: float,
        seed: int,
    ) -> None:
        self.problem, self.opt, self.rho = problem, opt, rho
        self.epochs, self.keep, self.delta = epochs, 1.0 - prune_ratio, delta
        self.scores = torch.full((n,), 3.0)
        self.threshold: torch.Tensor | None = None
        self.threshold_epoch = -1
        self.gen = torch.Generator().manual_seed(seed)
        self.pruned_rows = 0
        self.rows_per_epoch: dict[int, int] = {}

    def step(self, w: list[torch.Tensor], epoch: int, idx: torch.Tensor) -> list[torch.Tensor]:
        self.problem.new_step()
        batch = len(idx)
        if epoch + 1 <= self.delta * self.epochs:
            if self.threshold_epoch != epoch:
                self.threshold, self.threshold_epoch = self.scores.mean(), epoch
            well = [bool(self.scores[int(i)] < self.threshold) for i in idx]
            learned = torch.tensor([r for r in range(batch) if well[r]], dtype=torch.long)
            draw = torch.randperm(len(learned), generator=self.gen)
            kept = learned[draw[: int(self.keep * len(learned))]].tolist()
            if not kept and len(learned) == batch:
                kept = learned[:1].tolist()
            rows = sorted([r for r in range(batch) if not well[r]] + kept)
            weights = torch.tensor([1.0 / self.keep if well[r] else 1.0 for r in rows], dtype=torch.float64)
        else:
            rows, weights = list(range(batch)), None
        self.pruned_rows += batch - len(rows)
        self.rows_per_epoch[epoch] = self.rows_per_epoch.get(epoch, 0) + len(rows)
        sub = idx[torch.tensor(rows, dtype=torch.long)]
        loss_before, g = self.problem.losses_and_grads(w, sub, weights)
        _, g_sam = self.problem.losses_and_grads(plus(w, sam_epsilon(g, self.rho)), sub, weights)
        self.scores[sub] = loss_before.float()
        return self.opt.step(w, g_sam)
