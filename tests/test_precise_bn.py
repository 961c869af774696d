"""Evaluation with precise BatchNorm statistics: the statistics against a transcription, everything put
back afterwards, and a run whose training is the same as without it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from flatsam.train import TrainConfig, loop, records, train
from flatsam.train.precise_bn import precise_bn
from helpers import tiny_run_config
from reference import bn_mlp, toy_data


def transcribed_statistics(model: nn.Sequential, x: torch.Tensor, batch_size: int):
    """Mean over the batches of the batch mean and of the unbiased batch variance of the BatchNorm input."""
    means, variances = [], []
    with torch.no_grad():
        for batch in x.split(batch_size):
            h = model[0](batch)
            means.append(h.mean(0))
            variances.append(h.var(0, unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


def test_statistics_inside_are_the_training_set_average_and_everything_is_put_back():
    x, _ = toy_data(n=24)
    model = nn.Sequential(*bn_mlp(), nn.Dropout(0.5))  # dropout: update_bn's forwards draw from the RNG
    model.train()
    norm = model[1]
    for batch in x.split(5):  # some training: running statistics and a batch count of their own
        model(batch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    mean, var = transcribed_statistics(model, x, 8)
    with precise_bn(model, x, 8):
        torch.testing.assert_close(norm.running_mean, mean, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(norm.running_var, var, rtol=1e-12, atol=1e-14)
        assert model.training and norm.momentum == 0.1
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert norm.momentum == 0.1 and model.training
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_model_without_batchnorm_is_left_alone():
    model = nn.Linear(5, 3).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with precise_bn(model, toy_data()[0], 8):
        pass
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_run_trains_the_same_and_reports_the_precise_evaluation(tmp_path):
    config = dict(model="cnn", subset=256, method="sgd", method_options={}, eval_every=1)
    train(tiny_run_config(tmp_path / "running", **config), progress=False)
    train(tiny_run_config(tmp_path / "precise", eval_bn="precise", **config), progress=False)
    rows = {
        name: records.read_jsonl(tmp_path / name / records.METRICS) for name in ("running", "precise")
    }
    trained = [
        {k: v for k, v in row.items() if not k.startswith("test_") and not k.endswith("time")}
        for row in rows["running"]
    ]
    assert trained == [
        {k: v for k, v in row.items() if not k.startswith("test_") and not k.endswith("time")}
        for row in rows["precise"]
    ]
    # the reported figure is the final weights evaluated with the transcribed statistics
    cfg = TrainConfig.from_dict(json.loads((tmp_path / "precise" / records.CONFIG).read_text())["config"])
    setup = loop.build(cfg)
    state = records.load_checkpoint(tmp_path / "precise" / records.CHECKPOINT)
    setup.model.load_state_dict(state["model"])
    for norm in [m for m in setup.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: the mean of the batch statistics
    with torch.no_grad():
        for batch in setup.train_x.split(cfg.batch_size):
            setup.model(batch)
    setup.model.eval()
    expected = setup.task.evaluate(setup.model, setup.test_x, setup.test_y, setup.data)
    assert rows["precise"][-1]["test_acc"] == pytest.approx(expected["test_acc"], abs=1e-12)
    assert rows["precise"][-1]["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-6)
