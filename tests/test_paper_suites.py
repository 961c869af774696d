"""The AUSAM paper's suites: their settings, the dry-run plan, and the plumbing end to end on fabricated
CIFAR-10 and Tiny-ImageNet files with a tiny model for one epoch."""

import json
import math
from pathlib import Path

import pytest

from data.conftest import cifar_files, write_cifar_tar
from data.test_tiny_imagenet import make_tree
from flatsam import cli
from flatsam.data.cifar import CIFAR10
from flatsam.train import dryrun
from flatsam.train.bench import SUITES
from flatsam.train.config import MethodSpec
from flatsam.train.paper import paper_methods

PAPER = ("paper-cifar10", "paper-cifar100", "paper-tiny", "paper-pose")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user data, cache or mirror is read or written."""
    monkeypatch.delenv("FLATSAM_DATA", raising=False)
    monkeypatch.setenv("FLATSAM_MIRROR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def _models(suite: str) -> list[str]:
    found = []
    for text in SUITES[suite].methods:
        model = MethodSpec.parse(text).options["train.model"]
        if model not in found:
            found.append(model)
    return found


def test_suites_hold_the_papers_settings() -> None:
    assert _models("paper-cifar10") == _models("paper-cifar100") == ["resnet18", "wrn28-10", "pyramidnet110"]
    assert _models("paper-tiny") == ["resnet18", "resnet50", "mobilenetv1"]
    assert _models("paper-pose") == ["resnet50"]
    for name in PAPER:
        suite = SUITES[name]
        assert suite.seeds == (0, 1, 2) and suite.rho == 0.1
        methods = [MethodSpec.parse(text) for text in suite.methods]
        assert [m.name for m in methods[:4]] == ["sgd", "sam", "ausam", "ausam"]
        assert methods[3].options["train.epochs"] == round(suite.config.epochs / 1.05)
        c = suite.config
        assert c.lr_warmup_epochs == 0 and c.device == "auto"
    for name in ("paper-cifar10", "paper-cifar100", "paper-tiny"):
        c = SUITES[name].config
        assert (c.epochs, c.crop_padding, c.flip, c.cutout) == (200, 4, True, 16)
        assert (c.lr, c.weight_decay, c.label_smoothing, c.optimizer) == (0.1, 1e-3, 0.1, "sgd")
    assert SUITES["paper-cifar10"].config.batch_size == 256  # the official code's; the paper text says 128
    assert SUITES["paper-tiny"].config.batch_size == 128
    pose = SUITES["paper-pose"].config
    assert (pose.task, pose.dataset, pose.optimizer, pose.batch_size) == ("pose", "mpii", "adam", 64)
    s_max = {
        MethodSpec.parse(t).label: MethodSpec.parse(t).options.get("s_max")
        for t in SUITES["paper-cifar10"].methods
    }
    assert s_max["pyramidnet110-ausam"] == 1.0 and s_max["resnet18-ausam"] is None  # the code's 0.5


def test_plan_counts_the_steps() -> None:
    suite = SUITES["paper-cifar10"]
    runs = dryrun.plan(suite.config, [MethodSpec.parse(m) for m in suite.methods], [0, 1, 2], suite.rho)
    assert len(runs) == 12 and all(r.seeds == (0, 1, 2) for r in runs)
    per_epoch = math.ceil(50_000 / 256)
    assert runs[0].steps == 200 * per_epoch and runs[3].steps == 190 * per_epoch
    assert runs[1].config.method_options["rho"] == 0.1 and runs[4].config.model == "wrn28-10"
    tiny = SUITES["paper-tiny"]
    assert dryrun.plan(tiny.config, [MethodSpec.parse("sgd")], [0], None)[0].steps == 200 * math.ceil(
        100_000 / 128
    )


def test_dry_run_prints_the_plan(capsys) -> None:
    assert cli.main(["bench", "--suite", "paper-cifar10", "--dry-run", "--probe-steps", "0"]) == 0
    out = capsys.readouterr().out
    assert "50,000 training images" in out and "36 runs" in out
    assert "pyramidnet110-ausam-190ep" in out and "total: 1,393,560 optimizer steps" in out


def test_dry_run_probe_estimates_the_time(capsys) -> None:
    argv = ["bench", "--suite", "paper-cifar10", "--dry-run", "--probe-steps", "1", "--no-progress"]
    argv += ["--methods", "sgd", "ausam", "--model", "resnet8", "--batch-size", "8", "--device", "cpu"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("sgd ", "ausam "))]
    assert len(rows) == 2 and all("ms" in row for row in rows)
    assert "of training on cpu" in out
    assert cli.main([*argv[:5], "-1"]) == 2  # --probe-steps must be >= 0


def _bench(tmp_path: Path, suite: str, data_dir: Path) -> list[dict]:
    out = tmp_path / "out"
    methods = paper_methods(("resnet8",), epochs=1)
    argv = ["bench", "--suite", suite, "--data-dir", str(data_dir), "--epochs", "1", "--seeds", "0"]
    argv += [
        "--methods",
        *methods,
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
        "--batch-size",
        "4",
    ]
    assert cli.main(argv) == 0
    results = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/result.json"))]
    assert (out / "results.md").is_file()
    return results


def test_cifar_suite_end_to_end(tmp_path: Path) -> None:
    files, _ = cifar_files(CIFAR10)
    data = tmp_path / "data"
    data.mkdir()
    write_cifar_tar(data / CIFAR10.archive, CIFAR10, files)
    results = _bench(tmp_path, "paper-cifar10", data)
    assert sorted(r["label"] for r in results) == [
        "resnet8-ausam",
        "resnet8-ausam-1ep",
        "resnet8-sam",
        "resnet8-sgd",
    ]
    ausam = next(r for r in results if r["label"] == "resnet8-ausam")
    config = json.loads((tmp_path / "out" / "runs" / "resnet8-ausam-s0" / "config.json").read_text())[
        "config"
    ]
    assert config["cutout"] == 16 and config["smoothing_form"] == "authors" and config["dataset"] == "cifar10"
    assert ausam["seed"] == 0 and 0.0 <= ausam["final_test_acc"] <= 1.0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiny_suite_end_to_end(tmp_path: Path) -> None:
    make_tree(tmp_path / "data")
    results = _bench(tmp_path, "paper-tiny", tmp_path / "data")
    assert len(results) == 4 and all(r["seed"] == 0 for r in results)
    config = json.loads((tmp_path / "out" / "runs" / "resnet8-sgd-s0" / "config.json").read_text())["config"]
    assert config["dataset"] == "tiny-imagenet" and config["model"] == "resnet8"


def test_the_dry_run_counts_the_rows_left_after_the_validation_split():
    from flatsam.train.bench import SUITES
    from flatsam.train.dryrun import train_size

    config = SUITES["grid-cnn-40ep-n40-crop"].config
    assert config.val_fraction == 0.1 and train_size(config) == 4500
    assert train_size(config.replace(val_fraction=0.0)) == 5000
