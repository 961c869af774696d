"""The step-time benchmark runs, interleaves its contenders and writes its report (no timing is asserted)."""

from __future__ import annotations

import copy
import json
import statistics

import pytest
import torch

from flatsam.cli import main
from flatsam.models import build_model
from flatsam.train import speed
from flatsam.train.speed import SpeedConfig, run_speed

# one thread: on a machine whose cores are busy, two torch threads make these steps 20x slower
TINY = dict(
    models=("cnn",), batch_sizes=(4,), repeats=2, steps=2, warmup_steps=1, batches=2, image_size=8, threads=1
)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_contender_runs_and_the_report_is_written(tmp_path):
    threads = torch.get_num_threads()
    config = SpeedConfig(**TINY)
    paths = run_speed(config, tmp_path, command="flatsam bench --speed (test)", progress=False)
    result = json.loads(paths["json"].read_text())
    assert result["environment"]["torch"] == torch.__version__
    assert result["environment"]["torch_threads"] == 1 and torch.get_num_threads() == threads
    assert result["command"] == "flatsam bench --speed (test)"
    (setting,) = result["settings"]
    assert setting["clock"] == "CPU time"  # one CPU thread: steps are timed on the process's CPU time
    assert "Timed on CPU time." in paths["md"].read_text()
    rows = {row["label"]: row for row in setting["rows"]}
    assert list(rows) == [speed.contender_label(c) for c in speed.default_contenders()]
    for row in rows.values():
        assert len(row["block_means_s"]) == 2 and min(row["block_means_s"]) > 0
    assert rows["torch-sgd"]["ascent_fraction"] == 0 and rows["sgd"]["ascent_fraction"] == 0
    assert rows["sam"]["ascent_fraction"] == 1 and rows["hand-sam"]["ascent_fraction"] == 1
    # held memory: AUSAM adds its float32 history (sum and count per sample), LookSAM one gradient copy
    # and its one-byte ``seen`` flag, SAM and the hand-written loop nothing between steps
    num_samples = TINY["batches"] * TINY["batch_sizes"][0]
    assert rows["ausam"]["held_extra_bytes"] == 2 * 4 * num_samples
    param_bytes = sum(p.numel() * 4 for p in build_model("cnn", 3, 10).parameters())
    assert rows["looksam"]["held_extra_bytes"] == param_bytes + 1
    assert rows["sam"]["held_extra_bytes"] == rows["hand-sam"]["held_extra_bytes"] == 0
    state_bytes = sum(t.numel() * t.element_size() for t in build_model("cnn", 3, 10).state_dict().values())
    assert rows["mesa"]["held_extra_bytes"] == state_bytes  # its EMA copy of the model
    assert {"ausam / sam", "ausam-0.25 / sam", "ausam / torch-sgd", "sam / hand-sam"} <= set(
        setting["ratios"]
    )
    # every contender against flatsam's SGD, as the median of per-repeat ratios of the same rounds
    others = [label for label in rows if label not in ("sgd", "torch-sgd")]
    assert {f"{label} / sgd" for label in others} <= set(setting["ratios"])
    paired = [a / b for a, b in zip(rows["sam"]["block_means_s"], rows["sgd"]["block_means_s"], strict=True)]
    assert setting["ratios"]["sam / sgd"]["median"] == pytest.approx(statistics.median(paired))
    markdown = paths["md"].read_text()
    assert "## cnn, batch 4" in markdown and "| ausam / sam |" in markdown and "| sam / sgd |" in markdown


def test_contenders_take_turns_in_blocks(monkeypatch, one_thread):
    calls = []
    for cls in (speed.TorchSGD, speed.HandSAM, speed.Flatsam):
        inner = cls.step

        def spy(self, *batch, inner=inner):
            calls.append(id(self))
            return inner(self, *batch)

        monkeypatch.setattr(cls, "step", spy)
    config = SpeedConfig(**{**TINY, "repeats": 3}, contenders=("torch-sgd", "hand-sam", "sam"))
    speed.run_setting(config, "cnn", 4, progress=False)
    warmup = 3 * (TINY["batches"] + TINY["warmup_steps"])
    timed = calls[warmup : warmup + 3 * 3 * TINY["steps"]]
    blocks = [timed[i : i + TINY["steps"]] for i in range(0, len(timed), TINY["steps"])]
    assert all(len(set(block)) == 1 for block in blocks)
    owners = [block[0] for block in blocks]
    order = owners[:3]
    assert len(set(order)) == 3
    assert owners[3:6] == order[1:] + order[:1] and owners[6:9] == order[2:] + order[:2]  # rotated starts


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="repeats"):
        SpeedConfig(repeats=0)
    with pytest.raises(ValueError, match="distinct"):
        SpeedConfig(contenders=("sam", "sam"))
    with pytest.raises(ValueError, match="unknown method"):
        run_speed(SpeedConfig(**TINY, contenders=("nosuch",)), "unused", progress=False)


def test_cli_speed_quick_options(tmp_path, capsys):
    code = main(
        [
            "bench",
            "--speed",
            "--methods",
            "torch-sgd",
            "ausam",
            "--models",
            "cnn",
            "--batch-sizes",
            "4",
            "--repeats",
            "1",
            "--steps",
            "1",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--profile",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("profile-*")) == [
        "profile-cnn-b4-ausam.txt",
        "profile-cnn-b4-torch-sgd.txt",
    ]
    assert "aten::" in (tmp_path / "profile-cnn-b4-ausam.txt").read_text()
    result = json.loads((tmp_path / "speed.json").read_text())
    assert result["config"]["contenders"] == ["torch-sgd", "ausam"]
    assert result["command"].startswith("flatsam bench --speed")
    assert "ausam / torch-sgd" in capsys.readouterr().out


def test_the_timed_epoch_is_inside_every_warm_up_and_trajectory_term():
    from flatsam.methods import METHODS

    for name in ("saf", "mesa"):  # the KL term is on at epochs > start_epoch (official condition)
        assert METHODS[name].defaults["start_epoch"].value < speed.TIMED_EPOCH
    for name in ("ausam", "arsam"):
        assert METHODS[name].defaults["warmup_epochs"].value <= speed.TIMED_EPOCH


def test_saf_and_mesa_are_timed_with_their_trajectory_term():
    """The step benchmark's closure adds the term, so MESA's timed steps run its EMA forward and SAF's
    write its logit table (before, both were timed as plain SGD steps)."""
    torch.manual_seed(0)
    model = build_model("cnn", 3, 10)
    x, y, index = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), torch.tensor([3, 0, 6, 1])
    mesa = speed.make_contender("mesa", copy.deepcopy(model), num_samples=8, steps_per_epoch=2)
    ema_calls = []
    mesa.optimizer.trajectory.module.register_forward_hook(lambda *_: ema_calls.append(1))
    saf = speed.make_contender("saf", copy.deepcopy(model), num_samples=8, steps_per_epoch=2)
    for contender in (mesa, saf):
        contender.set_epoch(speed.TIMED_EPOCH)
        contender.step(x, y, index)
    assert ema_calls == [1]
    written = saf.optimizer.trajectory.history[:, speed.TIMED_EPOCH % 4].abs().sum(dim=1) > 0
    assert written.nonzero().flatten().tolist() == [0, 1, 3, 6]


def suite_runs(tmp_path, methods=("sgd", "ausam", "saf")):
    """One tiny synthetic run configuration per method, as a suite gives them (seed 0)."""
    from flatsam.train.bench import method_configs
    from flatsam.train.config import MethodSpec
    from helpers import tiny_run_config

    base = tiny_run_config(tmp_path / "unused", method_options={}, epochs=2)
    specs = [MethodSpec.parse(m) for m in methods]
    return method_configs(base, specs, 0, tmp_path / "runs", rho=0.05)


def test_a_suites_timed_step_is_flatsam_trains_step(tmp_path, one_thread):
    """A warm-up epoch of the suite mode's contender leaves the weights that one epoch of `flatsam train`
    of the same configuration leaves: the timed step is the training loop's, on the suite's data."""
    from flatsam.train.loop import Run, load_data
    from flatsam.train.speed_suite import LoopContender

    (config,) = suite_runs(tmp_path, ("ausam:warmup_epochs=1",))
    config = config.replace(epochs=1, run_dir=str(tmp_path / "trained"))
    trained = Run(config, progress=False)
    trained.run()
    contender = LoopContender(config.replace(run_dir=str(tmp_path / "timed")), load_data(config))
    initial = [t.clone() for t in contender.model.state_dict().values()]
    contender.set_epoch(0)
    for batch in range(contender.run.setup.steps_per_epoch):
        contender.step(batch)
    contender.close()
    timed, reference = list(contender.model.state_dict().values()), trained.setup.model.state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(reference, timed, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(initial, timed, strict=True))


def test_a_suites_own_runs_are_timed_and_reported(tmp_path):
    from flatsam.train.speed_suite import run_suite_speed

    threads = torch.get_num_threads()
    config = SpeedConfig(repeats=2, steps=2, warmup_steps=1)
    paths = run_suite_speed(config, "tiny", suite_runs(tmp_path), tmp_path / "out", progress=False)
    assert torch.get_num_threads() == threads
    result = json.loads(paths["json"].read_text())
    assert result["suite"] == "tiny" and result["config"]["contenders"] == ["sgd", "ausam", "saf"]
    assert result["config"]["models"] == ["mlp"] and result["config"]["threads"] == 1
    (setting,) = result["settings"]
    assert setting["suite"] == "tiny" and setting["batch_size"] == 64 and setting["clock"] == "CPU time"
    rows = {row["label"]: row for row in setting["rows"]}
    assert rows["sgd"]["ascent_fraction"] == 0 and rows["saf"]["ascent_fraction"] == 0
    assert rows["ausam"]["ascent_fraction"] == 1  # past its warm-up epoch, every step ascends
    assert rows["sgd"]["held_extra_bytes"] == 0 and rows["ausam"]["held_extra_bytes"] > 0  # over SGD
    assert {"ausam / sgd", "saf / sgd"} <= set(setting["ratios"])
    markdown = paths["md"].read_text()
    assert "## tiny, batch 64" in markdown and "suite `tiny`" in markdown
    assert "synthetic" in markdown and "channels-last memory format" in markdown
    assert not list((tmp_path / "runs").glob("*"))  # the runs stepped in a temporary folder


def test_cli_speed_of_a_suite(tmp_path, capsys):
    from helpers import small_cli_args

    argv = ["bench", "--speed", "--suite", "quick", *small_cli_args(), "--methods", "sgd", "sam"]
    argv += ["--repeats", "1", "--steps", "1", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    result = json.loads((tmp_path / "speed.json").read_text())
    assert result["suite"] == "quick" and result["config"]["contenders"] == ["sgd", "sam"]
    assert result["config"]["models"] == ["mlp"] and "sam / sgd" in capsys.readouterr().out
    assert main([*argv, "--models", "cnn"]) == 2
    assert "--model, --batch-size" in capsys.readouterr().err


def test_cli_speed_refuses_options_it_would_ignore(tmp_path, capsys):
    """A training run's options do nothing to the random-image benchmark: refused, with the way to use
    them (--suite), rather than silently dropped."""
    argv = ["bench", "--speed", "--quick", "--out", str(tmp_path), "--no-progress"]
    for extra, named in (
        (["--lr", "0.1", "--model", "resnet8"], "--lr, --model"),
        (["--seeds", "1"], "--seeds"),
    ):
        assert main([*argv, *extra]) == 2
        assert f"does not use {named}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_channels_last_random_images(tmp_path, one_thread, monkeypatch):
    formats = []
    make = speed.make_contender

    def spy(text, model, *args):
        weights = [p for p in model.parameters() if p.dim() == 4]
        formats.append(all(w.is_contiguous(memory_format=torch.channels_last) for w in weights))
        return make(text, model, *args)

    monkeypatch.setattr(speed, "make_contender", spy)
    config = SpeedConfig(**{**TINY, "repeats": 1}, contenders=("sgd", "sam"), channels_last=True)
    paths = run_speed(config, tmp_path, progress=False)
    assert formats == [True, True]
    assert "images (channels-last memory format)" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["config"]["channels_last"] is True


def test_on_cuda_every_base_is_fused_as_flatsam_train_builds_it():
    """``flatsam train`` and every step-time contender take torch's fused SGD on CUDA (it obeys the skip
    flag itself) and the plain one elsewhere; the settings are otherwise the same."""
    from flatsam.train.config import TrainConfig
    from flatsam.train.loop import base_optimizer

    config = TrainConfig(method="sam", lr=0.05, momentum=0.9, weight_decay=5e-4)
    base, on_cpu = base_optimizer(config, torch.device("cpu"))
    _, on_cuda = base_optimizer(config, torch.device("cuda"))
    assert base is torch.optim.SGD and "fused" not in on_cpu and on_cuda == {**on_cpu, "fused": True}
    assert base_optimizer(config) == (base, on_cpu)
    _, adam = base_optimizer(config.replace(optimizer="adam"), torch.device("cuda"))
    assert adam["fused"] is True
    model = build_model("cnn", 3, 10)
    assert speed.base_for(model) == speed.BASE and "fused" not in speed.base_for(model)
    assert speed.make_contender("sam", model, 8, 2).optimizer.base.defaults["fused"] in (None, False)
