"""The harness's quantization-aware and pose tasks end to end: CLI runs, exact resume, errors."""

from __future__ import annotations

import json

import pytest
import torch

from flatsam import quant
from flatsam.cli import main
from flatsam.train import Interrupted, Run, TrainConfig, records

QAT = dict(dataset="synthetic", subset=256, model="cnn", epochs=2, batch_size=64, threads=1, quantize="w4a4")
POSE = dict(
    task="pose",
    dataset="stickfigures",
    subset=96,
    pose_size=32,
    model="resnet8",
    optimizer="adam",
    lr=1e-3,
    weight_decay=0.0,
    batch_size=32,
    epochs=2,
    threads=1,
    eval_batch_size=500,
)


def weights(run: Run) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in run.setup.model.state_dict().items()}


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({**QAT, "method": "ausam", "method_options": {"warmup_epochs": 1}}, id="qat-ausam"),
        pytest.param({**POSE, "method": "ausam", "method_options": {"warmup_epochs": 1}}, id="pose-ausam"),
    ],
)
def test_interrupted_qat_and_pose_runs_resume_bit_for_bit(tmp_path, options):
    straight = Run(TrainConfig(**options, run_dir=str(tmp_path / "straight")), progress=False)
    expected = straight.run()
    config = TrainConfig(**options, run_dir=str(tmp_path / "cut"))
    with pytest.raises(Interrupted):
        Run(config, progress=False).run(interrupt_at=(1, 1))
    resumed = Run(config, resume=True, progress=False)
    result = resumed.run()
    for key, value in weights(straight).items():
        assert torch.equal(value, weights(resumed)[key]), key
    assert result["final_test_acc"] == expected["final_test_acc"]
    assert result["cost"] == expected["cost"]


def test_quantize_cli_trains_a_quantized_model_from_a_full_precision_run(tmp_path, capsys):
    common = ["--dataset", "synthetic", "--subset", "256", "--model", "cnn", "--epochs", "1"]
    common += ["--batch-size", "64", "--threads", "1", "--no-progress", "--method", "sgd"]
    assert main(["train", *common, "--run-dir", str(tmp_path / "fp")]) == 0
    argv = [
        "train",
        *common,
        "--method",
        "sam",
        "--quantize",
        "w2a4",
        "--quantize-init",
        str(tmp_path / "fp"),
    ]
    assert main([*argv, "--run-dir", str(tmp_path / "q")]) == 0
    assert "test accuracy" in capsys.readouterr().out
    state = records.load_checkpoint(tmp_path / "q" / "checkpoint.pt")  # weights_only, checked
    assert state["config"]["quantize"] == "w2a4"
    steps = [k for k in state["model"] if k.endswith("input_quant.step")]
    assert len(steps) == 4  # two convolutions and two linear layers
    # a quantized run starts from the full-precision weights, first and last layer at 8 bits
    fp = records.load_checkpoint(tmp_path / "fp" / "checkpoint.pt")["model"]
    config = TrainConfig(**{**QAT, "epochs": 1, "quantize": "w2a4", "quantize_init": str(tmp_path / "fp")})
    model = Run(config.replace(run_dir=str(tmp_path / "fresh")), progress=False).setup.model
    assert torch.equal(model.state_dict()["features.0.0.weight"], fp["features.0.0.weight"])
    layers = [m for m in model.modules() if isinstance(m, quant.QuantConv2d | quant.QuantLinear)]
    assert [(m.weight_quant.bits, m.input_quant.bits) for m in layers] == [(8, 8), (2, 4), (2, 4), (8, 8)]


def test_step_sizes_group_reaches_the_engine(tmp_path):
    for perturb in (False, True):
        run = Run(
            TrainConfig(
                **QAT, method="sam", perturb_step_sizes=perturb, run_dir=str(tmp_path / str(perturb))
            ),
            progress=False,
        )
        groups = run.setup.optimizer.param_groups
        assert [g.get("perturb", True) for g in groups] == [True, perturb]
        assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == QAT.get("weight_decay", 5e-4)


def test_pose_cli_uses_adam_batch_64_and_reports_pckh(tmp_path, capsys):
    argv = [
        "train",
        "--task",
        "pose",
        "--method",
        "sam",
        "--subset",
        "64",
        "--pose-size",
        "32",
        "--epochs",
        "1",
    ]
    argv += ["--threads", "1", "--no-progress", "--run-dir", str(tmp_path / "p")]
    assert main(argv) == 0
    assert "PCKh@0.5" in capsys.readouterr().out
    saved = json.loads((tmp_path / "p" / "config.json").read_text())["config"]
    assert (saved["optimizer"], saved["batch_size"], saved["lr"], saved["dataset"]) == (
        "adam",
        64,
        1e-3,
        "stickfigures",
    )
    result = json.loads((tmp_path / "p" / "result.json").read_text())
    assert 0 <= result["final_test_pckh"] <= 1 and 0 <= result["final_test_pck"] <= 1
    assert result["final_test_acc"] == result["final_test_pckh"]
    assert result["cost"] == 2.0


def test_pose_with_quantization(tmp_path):
    result = Run(
        TrainConfig(**{**POSE, "epochs": 1}, method="sgd", quantize="w8a8", run_dir=str(tmp_path / "r")),
        progress=False,
    ).run()
    assert 0 <= result["final_test_acc"] <= 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "synthetic", "--quantize", "w5a4"], "quantize weight bits must be one of"),
        (["--dataset", "synthetic", "--quantize", "int4"], "quantize must look like 'w4a4'"),
        (["--dataset", "synthetic", "--quantize-init", "x"], "quantize_init must be unset without quantize"),
        (["--task", "segment"], "unknown task 'segment'"),
        (["--task", "pose", "--dataset", "coco"], "unknown pose dataset 'coco'"),
        (["--task", "pose", "--flip"], "the pose task takes none of them"),
        (["--task", "pose", "--pose-size", "8"], "pose_size must be >= 16"),
        (["--task", "pose", "--dataset", "mpii"], "needs --data-dir"),
        (
            ["--dataset", "synthetic", "--quantize", "w4a4", "--quantize-init", "/no/run"],
            "quantize_init: no checkpoint",
        ),
    ],
)
def test_cli_errors_name_the_option(tmp_path, capsys, argv, message):
    base = ["train", "--subset", "64", "--epochs", "1", "--no-progress", "--run-dir", str(tmp_path / "e")]
    code = main([*base, *argv])
    assert code == 2
    assert message in capsys.readouterr().err
