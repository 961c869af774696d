"""The robust ADLP candidates (ausam-mix, ausam-lowloss: ours) against a literal slow transcription, their
neutral options against AUSAM itself, and what they draw."""

from __future__ import annotations

import math

import pytest
import torch

import flatsam
from flatsam.selection import ADLPSampler, RobustADLPSampler
from helpers import LR, MOMENTUM, SETTINGS, WD, assert_matches, batches
from reference import MomentumSGD, ReferenceAUSAM, sam_epsilon, sharpness_aware_step, toy_data


class ReferenceRobustAUSAM(ReferenceAUSAM):
    """AUSAM's transcription with the robust draw written out: p = (1 − λ)·p_ADLP + λ/B; rows whose last
    recorded clean loss L is above the m-th smallest of the batch (m = max(⌊keep·B⌋, ⌈q·B⌉)) get p = 0;
    p renormalised; L of the trained rows set to their clean losses (float32, initially 0). With
    ``keep_end``, epoch e keeps keep + (keep_end − keep)·(e − warm-up)/(last epoch − warm-up)."""

    def __init__(self, *args, mix: float, quantile: float, keep_end=None, epochs=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mix, self.quantile, self.keep_end, self.epochs = mix, quantile, keep_end, epochs
        self.L = torch.zeros(len(self.S))

    def keep_of(self, epoch: int) -> float:
        if self.keep_end is None:
            return self.keep
        progress = min(max(epoch - self.warmup, 0) / (self.epochs - 1 - self.warmup), 1.0)
        return self.keep + (self.keep_end - self.keep) * progress

    def rows(self, epoch: int, idx: torch.Tensor) -> torch.Tensor:
        if epoch < self.warmup:
            return torch.arange(len(idx))
        s = self.weights(epoch, idx)  # AUSAM's, from its transcription
        p = (1 - self.mix) * (s / s.sum()) + self.mix / len(idx)
        k = max(1, math.floor(self.keep_of(epoch) * len(idx)))
        m = max(k, math.ceil(self.quantile * len(idx)))
        if m < len(idx):
            cutoff = sorted(self.L[idx].tolist())[m - 1]
            p = torch.tensor(
                [pi if float(li) <= cutoff else 0.0 for pi, li in zip(p, self.L[idx], strict=True)]
            )
            p = p / p.sum()
        return torch.multinomial(p, k, replacement=False, generator=self.gen)

    def step(self, w, epoch, idx):
        rows = self.rows(epoch, idx)
        w, l0, l1 = sharpness_aware_step(
            self.problem, self.opt, w, idx[rows], lambda _w, g: sam_epsilon(g, self.rho)
        )
        self.record(epoch, idx[rows], (l1 - l0).abs().float())
        self.L[idx[rows]] = l0.float()
        return w


def build(name: str, model, n: int, epochs: int | None = None, **overrides):
    return flatsam.build_method(
        name,
        model.parameters(),
        torch.optim.SGD,
        model=model,
        num_samples=n,
        epochs=epochs,
        overrides=dict(ramp_epochs=2, warmup_epochs=1, seed=11, **overrides),
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WD,
    )


#: (preset, its options under test): each candidate, and all three changes at once
VARIANTS = [
    ("ausam-mix", dict(uniform_mix=0.5)),
    ("ausam-lowloss", dict(loss_quantile=0.7)),
    ("ausam-late", dict(keep=0.3, keep_end=0.7)),
    ("ausam-late", dict(keep=0.3, keep_end=0.7, uniform_mix=0.3, loss_quantile=0.6)),
]
IDS = ["mix", "lowloss", "late", "all-three"]
#: every variant at batch 8 without BatchNorm, all three changes with BatchNorm and label smoothing at a
#: batch of 7 (a short last batch); the other combinations are marked slow
CASES = [pytest.param(*v, 8, SETTINGS[0], id=f"{i}-8-plain") for i, v in zip(IDS, VARIANTS, strict=True)] + [
    pytest.param(*v, b, setting, id=f"{i}-{b}-{setting}", marks=[] if fast else [pytest.mark.slow])
    for i, v in zip(IDS, VARIANTS, strict=True)
    for b, setting in ((7, SETTINGS[0]), (8, SETTINGS[1]), (7, SETTINGS[1]))
    if not ("keep_end" in v[1] and b == 8 and setting.batchnorm)  # BatchNorm needs 2 rows: 28 = 3·8 + 4
    for fast in [i == "all-three" and b == 7 and setting is SETTINGS[1]]
]


@pytest.mark.parametrize(("preset", "options", "batch", "setting"), CASES)
def test_robust_ausam_matches_transcription(preset, options, batch, setting):
    x, y = toy_data(n=28)
    model = setting.model()
    problem = setting.problem(model, x, y)
    ref = ReferenceRobustAUSAM(
        problem,
        MomentumSGD(LR, MOMENTUM, WD),
        len(x),
        rho=0.05,
        keep=options.get("keep", 0.5),
        s_min=0.1,
        s_max=0.5,
        ramp=2,
        warmup=1,
        seed=11,
        mix=options.get("uniform_mix", 0.0),
        quantile=options.get("loss_quantile", 1.0),
        keep_end=options.get("keep_end"),
        epochs=4,
    )
    opt = build(preset, model, len(x), epochs=4, **options)
    assert opt.rho == 0.05 and isinstance(opt.selection, RobustADLPSampler)
    w = problem.weights()
    for epoch, epoch_batches in enumerate(batches(len(x), batch, 4)):
        opt.set_epoch(epoch)
        for idx in epoch_batches:
            w = ref.step(w, epoch, idx)
            info = opt.step(setting.closure(model, x, y, idx), index=idx)
            kept = len(idx) if epoch == 0 else max(1, math.floor(ref.keep_of(epoch) * len(idx)))
            assert info.ascent_rows == kept
    assert_matches(model, opt, w, ref.opt, problem)
    torch.testing.assert_close(opt.selection.dlp_sum, ref.S)
    torch.testing.assert_close(opt.selection.dlp_count, ref.C)
    torch.testing.assert_close(opt.selection.last_loss, ref.L)


def test_the_keep_schedule_spends_what_keep_0_5_spends():
    opt = build("ausam-late", SETTINGS[0].model(), 28, epochs=11)
    keeps = [opt.selection.keep_at(epoch) for epoch in range(1, 11)]  # after the 1-epoch warm-up
    assert keeps[0] == pytest.approx(0.3) and keeps[-1] == pytest.approx(0.7)
    assert sum(keeps) / len(keeps) == pytest.approx(0.5)
    assert keeps == sorted(keeps)
    with pytest.raises(ValueError, match="keep_end needs epochs"):
        build("ausam-mix", SETTINGS[0].model(), 28, keep_end=0.7)


def test_neutral_options_are_ausam_step_for_step():
    x, y = toy_data(n=28)
    models = [SETTINGS[0].model(), SETTINGS[0].model()]
    opts = [
        build("ausam", models[0], len(x), rho=0.05),
        build("ausam-mix", models[1], len(x), uniform_mix=0.0, loss_quantile=1.0),
    ]
    for epoch, epoch_batches in enumerate(batches(len(x), 8, 4)):
        for model, opt in zip(models, opts, strict=True):
            opt.set_epoch(epoch)
            for idx in epoch_batches:
                opt.step(SETTINGS[0].closure(model, x, y, idx), index=idx)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)


def fitted_sampler(**options) -> tuple[RobustADLPSampler, torch.Tensor]:
    """A sampler past its warm-up whose history makes ADLP favour rows 0-3 of an 8-row batch by far, and
    whose recorded losses put exactly those rows (the 'mislabelled' ones) worst."""
    sampler = RobustADLPSampler(8, keep=0.5, ramp_epochs=0, warmup_epochs=0, seed=0, **options)
    index = torch.arange(8)
    loss = torch.tensor([5.0, 5, 5, 5, 0.1, 0.1, 0.1, 0.1])
    sampler.update(index, torch.zeros(8), loss)  # DLP = the loss
    sampler.last_loss[index] = loss
    return sampler, index


def test_the_loss_quantile_leaves_out_the_worst_fitted_rows():
    sampler, index = fitted_sampler(loss_quantile=0.5)
    probs = sampler.probabilities(index)
    assert probs[:4].sum() == 0 and probs.sum() == pytest.approx(1.0)
    for _ in range(20):
        assert sorted(sampler.select(index).tolist()) == [4, 5, 6, 7]


def test_the_uniform_mix_gives_every_row_a_floor():
    plain, index = fitted_sampler()
    mixed, _ = fitted_sampler(uniform_mix=0.5)
    p, q = plain.probabilities(index), mixed.probabilities(index)
    assert torch.allclose(q, 0.5 * p + 0.5 / 8)
    assert q[4:].min() > p[4:].min() and q.min() >= 0.5 / 8 - 1e-7


def test_recorded_losses_are_in_the_state_and_resume():
    sampler, index = fitted_sampler(loss_quantile=0.7)
    state = sampler.state_dict()
    other = RobustADLPSampler(8, keep=0.5, ramp_epochs=0, warmup_epochs=0, seed=5, loss_quantile=0.7)
    other.load_state_dict(state)
    assert torch.equal(other.last_loss, sampler.last_loss)
    assert torch.equal(other.select(index), sampler.select(index))  # the generator came along too


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(uniform_mix=1.5), "uniform_mix must be in"),
        (dict(uniform_mix=-0.1), "uniform_mix must be in"),
        (dict(loss_quantile=0.0), "loss_quantile must be in"),
        (dict(loss_quantile=1.2), "loss_quantile must be in"),
        (dict(keep_end=1.5), "keep_end must be in"),
        (dict(keep_end=0.0), "keep_end must be in"),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        RobustADLPSampler(8, **options)
    with pytest.raises(ValueError, match=message):
        build("ausam-mix", SETTINGS[0].model(), 28, **options)


def test_presets_say_where_their_values_come_from():
    for name, key in (
        ("ausam-mix", "uniform_mix"),
        ("ausam-lowloss", "loss_quantile"),
        ("ausam-late", "keep_end"),
    ):
        info = flatsam.method_info(name)
        assert "ours" in info.paper and "not tuned" in info.defaults[key].source
        assert info.defaults["rho"].value == 0.05 and not info.sam_rho
    assert flatsam.method_info("ausam").defaults["rho"].value == 0.1  # the authors' AUSAM is unchanged
    assert type(build("ausam", SETTINGS[0].model(), 28).selection) is ADLPSampler


def test_the_noisy_share_script_measures_a_candidate_on_a_recorded_setting(tmp_path):
    """bench/noisy-selection/measure.py --method ausam-lowloss --epochs 3: a short run of a candidate on a
    recorded run's setting, every drawn row counted."""
    import importlib.util
    from pathlib import Path

    from flatsam.train.loop import train
    from helpers import tiny_run_config

    script = Path(__file__).resolve().parents[1] / "bench" / "noisy-selection" / "measure.py"
    spec = importlib.util.spec_from_file_location("noisy_selection_measure", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    train(tiny_run_config(tmp_path / "recorded", subset=256, label_noise=0.3, epochs=2), progress=False)
    out = tmp_path / "measured"
    out.mkdir()
    summary = module.measure(tmp_path / "recorded", out, method="ausam-lowloss", epochs=3)
    assert summary["method"] == "ausam-lowloss" and summary["epochs"] == 3
    assert summary["recorded_final_test_acc"] is None  # a new run: nothing recorded to compare with
    assert summary["drawn_rows_by_epoch"] == {0: 256, 1: 128, 2: 128}
    assert summary["noisy_share_by_epoch"][0] == summary["noise_rate"]
