"""The benchmark suites: every one is offered on the command line and builds checked run settings."""

from __future__ import annotations

import argparse

import pytest

from flatsam.cli import build_parser
from flatsam.train.bench import SUITES, split_overrides, with_common_rho
from flatsam.train.config import MethodSpec
from flatsam.train.loop import check_method


def test_the_command_line_offers_every_suite():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    suite = next(a for a in commands.choices["bench"]._actions if a.dest == "suite")
    assert sorted(suite.choices) == sorted(SUITES)


@pytest.mark.parametrize("name", list(SUITES))
def test_every_method_of_a_suite_builds_a_checked_run(name):
    suite = SUITES[name]
    labels = []
    for text in suite.methods:
        spec, config = split_overrides(with_common_rho(MethodSpec.parse(text), suite.rho), suite.config)
        check_method(config.replace(method=spec.name, method_options=dict(spec.options), label=spec.label))
        labels.append(spec.label)
    assert len(set(labels)) == len(labels)


def test_the_converged_regime_evaluates_with_precise_batchnorm_statistics():
    config = SUITES["long-n40-crop"].config
    settings = (config.eval_bn, config.crop_padding, config.epochs, config.label_noise)
    assert settings == ("precise", 2, 100, 0.4)


def test_a_suites_common_rho_leaves_the_half_rho_preset_alone():
    assert with_common_rho(MethodSpec.parse("ausam"), 0.1).options["rho"] == 0.1
    assert "rho" not in with_common_rho(MethodSpec.parse("ausam-halfrho"), 0.1).options


@pytest.mark.parametrize(
    ("name", "noise", "epochs", "ausam_epochs"),
    [
        ("long-n20-crop", 0.2, 100, 95),
        ("long-n30-crop", 0.3, 100, 95),
        ("long-n30-crop-150ep", 0.3, 150, 143),
        ("long-n40-crop-10k", 0.4, 60, 57),
    ],
)
def test_the_other_converged_regimes_plan_ausam_for_sgds_wall_clock(name, noise, epochs, ausam_epochs):
    suite = SUITES[name]
    assert (suite.config.label_noise, suite.config.eval_bn, suite.config.epochs) == (noise, "precise", epochs)
    planned = next(m for m in suite.methods if m.startswith("ausam-halfrho-"))
    spec = with_common_rho(MethodSpec.parse(planned), suite.rho)
    spec, config = split_overrides(spec, suite.config)
    label = f"ausam-halfrho-{ausam_epochs}ep"
    assert (spec.name, spec.label, "rho" in spec.options) == ("ausam-halfrho", label, False)
    assert (config.epochs, config.lr_warmup_epochs) == (ausam_epochs, ausam_epochs / 10)


@pytest.mark.parametrize(
    ("name", "steps_per_epoch"), [("all", 16), ("long-n40-crop", 40), ("long-n30-crop", 40)]
)
def test_the_converged_suites_compare_saf_mesa_and_gsam(name, steps_per_epoch):
    suite = SUITES[name]
    assert {"saf", "mesa", "gsam"} <= set(suite.methods)
    assert steps_per_epoch == -(-(suite.config.subset or 0) // suite.config.batch_size)
    scaled = next(MethodSpec.parse(m) for m in suite.methods if m.startswith("mesa-ema4ep="))
    assert scaled.options["decay"] == pytest.approx(1 - 1 / (4 * steps_per_epoch))
