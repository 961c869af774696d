"""Gradient accumulation, ``step([closures], index=[indices])``: k micro-batches equal one step on their
concatenation (no BatchNorm), and AUSAM records the history of every micro-batch's rows."""

from __future__ import annotations

import torch

import flatsam
from helpers import KW, closure_for
from reference import tiny_mlp, toy_data


def test_micro_batches_equal_one_step_on_their_concatenation():
    x, y = toy_data(n=24)
    whole, parts = tiny_mlp(), tiny_mlp()
    opt_whole = flatsam.SAM(whole.parameters(), torch.optim.SGD, rho=0.1, **KW)
    opt_parts = flatsam.SAM(parts.parameters(), torch.optim.SGD, rho=0.1, **KW)
    for start in (0, 12):
        idx = torch.arange(start, start + 12)
        a, b = idx[:5], idx[5:]  # unequal micro-batches: the mean is over all rows
        info_whole = opt_whole.step(closure_for(whole, x, y, idx), index=idx)
        info_parts = opt_parts.step([closure_for(parts, x, y, a), closure_for(parts, x, y, b)], index=[a, b])
        assert abs(info_parts.loss - info_whole.loss) < 1e-12
        assert info_parts.batch_size == 12 and info_parts.backward_samples == 24
    for p, q in zip(parts.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_ausam_records_every_micro_batch_after_its_warm_up():
    x, y = toy_data(n=24)
    model = tiny_mlp()
    opt = flatsam.AUSAM(model.parameters(), torch.optim.SGD, num_samples=24, warmup_epochs=1, seed=0, **KW)
    a, b = torch.arange(0, 8), torch.arange(8, 16)
    for epoch in range(2):
        opt.set_epoch(epoch)
        info = opt.step([closure_for(model, x, y, a), closure_for(model, x, y, b)], index=[a, b])
    assert info.ascent and info.ascent_rows == 8  # half of the 16 rows after the warm-up
    counts = opt.selection.dlp_count
    assert (counts[:16] > 1).any() and (counts[16:] == 1).all()
    assert int((counts[:8] - 1).sum()) == int((counts[8:16] - 1).sum()) == 4  # each micro-batch draws half
