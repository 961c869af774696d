"""m-sharpness: one ε per part of the batch, descent gradients averaged with weight rows/B."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import flatsam
from reference import MomentumSGD, Problem, sam_epsilon, tiny_mlp, toy_data

KW = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)


def reference_step(problem: Problem, opt: MomentumSGD, w, idx, m: int, rho: float):
    """Literal m-sharpness: for each part of m rows, g_j at w, ε_j = ρ g_j/‖g_j‖, g_SAM_j at w + ε_j;
    the update uses Σ_j (|part_j| / B) g_SAM_j."""
    total = [torch.zeros_like(t) for t in w]
    for part in idx.split(m):
        _, g = problem.losses_and_grads(w, part)
        eps = sam_epsilon(g, rho)
        _, g_sam = problem.losses_and_grads([a + b for a, b in zip(w, eps, strict=True)], part)
        total = [t + len(part) / len(idx) * gs for t, gs in zip(total, g_sam, strict=True)]
    return opt.step(w, total)


@pytest.mark.parametrize(("m", "batch"), [(4, 12), (5, 12), (12, 12)])
def test_msharpness_matches_transcription(m, batch):
    x, y = toy_data(n=24)
    model = tiny_mlp()
    problem = Problem(model, x, y)
    w, ref = (
        problem.weights(),
        MomentumSGD(**{"lr": KW["lr"], "momentum": KW["momentum"], "weight_decay": KW["weight_decay"]}),
    )
    opt = flatsam.MSharpnessSAM(model.parameters(), torch.optim.SGD, rho=0.05, m=m, **KW)
    for idx in list(torch.arange(24).split(batch)) * 2:
        w = reference_step(problem, ref, w, idx, m, 0.05)
        opt.step(
            lambda rows, idx=idx: F.cross_entropy(model(x[idx[rows]]), y[idx[rows]], reduction="none"),
            index=idx,
        )
    for p, wr in zip(model.parameters(), w, strict=True):
        torch.testing.assert_close(p.detach(), wr, rtol=1e-10, atol=1e-12)
    for p, b in zip(model.parameters(), ref.buf, strict=True):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], b, rtol=1e-10, atol=1e-12)


def test_msharpness_counts_passes_and_rows():
    x, y = toy_data(n=24)
    model = tiny_mlp()
    opt = flatsam.MSharpnessSAM(model.parameters(), torch.optim.SGD, m=5, **KW)
    calls = []
    idx = torch.arange(12)

    def closure(rows):
        calls.append(len(rows))
        return F.cross_entropy(model(x[idx[rows]]), y[idx[rows]], reduction="none")

    info = opt.step(closure, index=idx)
    assert calls == [5, 5, 5, 5, 2, 2]
    assert (info.forward_passes, info.backward_passes) == (6, 6)
    assert (info.forward_samples, info.backward_samples, info.cost) == (24, 24, 2.0)
    assert info.ascent and info.ascent_rows == info.descent_rows == 12


def test_msharpness_under_every_k_takes_plain_steps_and_rejects_post_decisions():
    x, y = toy_data(n=24)
    model = tiny_mlp()
    opt = flatsam.SharpnessAware(
        model.parameters(), torch.optim.SGD, selection=flatsam.MSharpness(4), schedule=flatsam.EveryK(2), **KW
    )
    idx = torch.arange(8)
    closure = lambda rows: F.cross_entropy(model(x[idx[rows]]), y[idx[rows]], reduction="none")  # noqa: E731
    infos = [opt.step(closure, index=idx) for _ in range(2)]
    assert [i.backward_passes for i in infos] == [4, 1]
    post = flatsam.SharpnessAware(
        model.parameters(),
        torch.optim.SGD,
        selection=flatsam.MSharpness(4),
        schedule=flatsam.AEThreshold(total_steps=10),
        **KW,
    )
    model.zero_grad()  # the first optimizer's gradients are not the second one's
    with pytest.raises(RuntimeError, match="m-sharpness"):
        post.step(closure, index=idx)


def test_msharpness_size_is_validated():
    with pytest.raises(ValueError, match="size"):
        flatsam.MSharpness(0)
