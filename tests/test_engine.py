"""Engine contract: ρ=0, lr=0, BatchNorm, resume, pass counting, non-finite steps, APIs, errors."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flatsam
from flatsam.cli import main
from flatsam.train.config import TrainConfig
from helpers import KW, Counting, bn_model, round_trip, same
from helpers import closure_for as per_sample
from reference import tiny_mlp, toy_data


def make(name: str, model: nn.Module, **over):
    over = {"num_samples": 24, "warmup_epochs": 1, "seed": 5, **over} if name == "ausam" else over
    cls = {"sam": flatsam.SAM, "asam": flatsam.ASAM, "ausam": flatsam.AUSAM}[name]
    return cls(model.parameters(), torch.optim.SGD, model=model, **over, **KW)


def test_rho_zero_is_the_base_optimizer_bit_for_bit():
    x, y = toy_data()
    a, b = tiny_mlp(), tiny_mlp()
    sam = flatsam.SAM(a.parameters(), torch.optim.SGD, rho=0.0, **KW)
    sgd = torch.optim.SGD(b.parameters(), **KW)
    for idx in torch.arange(24).split(8) * 3:
        sam.step(per_sample(a, x, y, idx), index=idx)
        sgd.zero_grad()
        F.cross_entropy(b(x[idx]), y[idx]).backward()
        sgd.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
        assert torch.equal(sam.state[p]["momentum_buffer"], sgd.state[q]["momentum_buffer"])


class Branchy(nn.Module):
    """A head used only on the first call of each step: unused in the descent pass."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(5, 3).double()
        self.extra = nn.Linear(5, 3).double()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.body(x)
        return out + self.extra(x) if self.calls % 2 == 1 else out


@pytest.mark.parametrize("name", ["sam", "asam", "ausam"])
def test_lr_zero_leaves_every_weight_unchanged(name):
    x, y = toy_data()
    model = Branchy()
    before = copy.deepcopy(model.state_dict())
    opt = make(name, model)
    for g in opt.param_groups:
        g["lr"] = 0.0
    for epoch in range(2):
        opt.set_epoch(epoch)
        for idx in torch.arange(24).split(8):
            info = opt.step(per_sample(model, x, y, idx), index=idx)
            assert info.ascent and model.extra.weight.grad is None  # the head got no descent gradient
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("name", ["sam", "ausam"])
def test_batchnorm_updated_once_by_the_clean_pass(name, momentum):
    x, y = toy_data()
    model = bn_model(momentum)
    opt = make(name, model, warmup_epochs=0) if name == "ausam" else make(name, model)
    idx = torch.arange(16)
    for _ in range(3):
        before = copy.deepcopy(model)  # the weights and statistics the clean pass sees
        closure = Counting(model, x, y, idx)
        info = opt.step(closure, index=idx)
        assert info.ascent and len(closure.rows) == 2
        with torch.no_grad():  # expected: exactly one train-mode forward over the clean-pass rows
            before(x[idx[closure.rows[0]]])
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(model[1], buffer), getattr(before[1], buffer)), buffer
    assert int(model[1].num_batches_tracked) == 3


@pytest.mark.parametrize("name", ["sam", "asam", "ausam"])
def test_resume_is_bit_for_bit(name, tmp_path):
    x, y = toy_data(n=24)
    g = torch.Generator().manual_seed(9)
    schedule = [(e, list(torch.randperm(24, generator=g).split(6))) for e in range(4)]

    def run(model, opt, epochs):
        for epoch, idxs in epochs:
            opt.set_epoch(epoch)
            for idx in idxs:
                opt.step(per_sample(model, x, y, idx), index=idx)

    straight = bn_model()
    opt = make(name, straight, ramp_epochs=2) if name == "ausam" else make(name, straight)
    run(straight, opt, schedule)

    first = bn_model()
    opt1 = make(name, first, ramp_epochs=2) if name == "ausam" else make(name, first)
    run(first, opt1, schedule[:2])
    ckpt = round_trip({"model": first.state_dict(), "opt": opt1.state_dict()})

    second = bn_model()
    torch.manual_seed(1234)  # a fresh process would not share the first one's RNG
    opt2 = make(name, second, ramp_epochs=2, seed=77) if name == "ausam" else make(name, second)
    second.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    run(second, opt2, schedule[2:])

    for k, v in straight.state_dict().items():
        assert torch.equal(v, second.state_dict()[k]), k
    assert same(opt.state_dict(), opt2.state_dict())
    for p, q in zip(straight.parameters(), second.parameters(), strict=True):
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])
    assert opt2.param_groups is opt2.base.param_groups and opt2.state is opt2.base.state


def test_sam_pass_counting():
    x, y = toy_data()
    model = tiny_mlp()
    opt = make("sam", model)
    idx = torch.arange(10)
    closure = Counting(model, x, y, idx)
    info = opt.step(closure, index=idx)
    assert closure.calls == [(10, True), (10, True)]
    assert (info.forward_passes, info.backward_passes) == (2, 2)
    assert (info.forward_samples, info.backward_samples) == (20, 20)
    assert (info.ascent_rows, info.descent_rows, info.cost) == (10, 10, 2.0)


@pytest.mark.parametrize("batch", [10, 9, 2])
def test_ausam_pass_counting(batch):
    x, y = toy_data(n=24)
    model = tiny_mlp()
    opt = make("ausam", model, warmup_epochs=1)
    idx = torch.arange(batch)
    opt.set_epoch(0)
    closure = Counting(model, x, y, idx)
    info = opt.step(closure, index=idx)
    assert closure.calls == [(batch, True)] * 2 and info.ascent_rows == batch  # warm-up: plain SAM
    opt.set_epoch(1)
    closure = Counting(model, x, y, idx)
    info = opt.step(closure, index=idx)
    half = batch // 2
    assert closure.calls == [(half, True), (half, True)]
    assert (info.ascent_rows, info.descent_rows) == (half, half)
    assert (info.forward_samples, info.backward_samples) == (2 * half, 2 * half)
    assert info.cost == pytest.approx(2 * half / batch)


def test_whole_batch_passes_get_slice_none_and_drawn_rows_a_tensor():
    """A pass over every row in order reaches the closure as ``slice(None)`` (a view of the batch: no
    gather, and no index tensor to copy to an accelerator); rows a selection drew stay a tensor."""
    x, y = toy_data(n=24)
    model = tiny_mlp()
    got = []

    def closure(rows):
        got.append(rows)
        return F.cross_entropy(model(x[:8][rows]), y[:8][rows], reduction="none")

    idx = torch.arange(8)
    make("sam", model).step(closure, index=idx)
    assert got == [slice(None), slice(None)]
    got.clear()
    model = tiny_mlp()
    ausam = make("ausam", model, warmup_epochs=1)
    ausam.step(closure, index=idx)  # warm-up: plain SAM
    ausam.set_epoch(1)
    ausam.step(closure, index=idx)
    assert got[:2] == [slice(None), slice(None)]
    assert [type(r) for r in got[2:]] == [torch.Tensor, torch.Tensor] and len(got[2]) == 4


def _f(rows, /):
    return rows


def _g(*, rows):
    return rows


@pytest.mark.parametrize(
    "closure",
    [lambda: 0, lambda rows: 0, lambda *a: 0, lambda **k: 0, lambda rows=None: 0, lambda a, *b: 0, _f, _g],
)
def test_closure_kind_from_the_code_object_agrees_with_the_signature(closure):
    from flatsam.closures import takes_rows

    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    expected = any(p.kind in positional for p in inspect.signature(closure).parameters.values())
    assert takes_rows(closure) == expected


def test_every_row_is_the_batch_in_order_on_the_cpu_only():
    from flatsam.selection import every_row

    assert every_row(torch.arange(5), 5)
    assert not every_row(torch.arange(5), 6)
    assert not every_row(torch.tensor([1, 0, 2, 3, 4]), 5)
    assert not every_row(torch.arange(5, device="meta"), 5)  # never read off the CPU


def test_nan_in_clean_pass_skips_with_weights_and_state_unchanged():
    x, y = toy_data()
    model = tiny_mlp()
    opt = make("sam", model)
    idx = torch.arange(8)
    opt.step(per_sample(model, x, y, idx), index=idx)
    weights = copy.deepcopy(model.state_dict())
    base = copy.deepcopy(opt.base.state_dict())
    info = opt.step(lambda rows: per_sample(model, x, y, idx)(rows) * float("nan"), index=idx)
    assert info.skipped and "clean pass" in info.reason and not info.ascent
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert same(opt.base.state_dict(), base)


def test_inf_in_descent_pass_skips_and_restores_the_perturbation():
    x, y = toy_data()
    model = tiny_mlp()
    opt = make("ausam", model)
    idx = torch.arange(8)
    opt.step(per_sample(model, x, y, idx), index=idx)
    weights = copy.deepcopy(model.state_dict())
    base = copy.deepcopy(opt.base.state_dict())
    history = opt.selection.dlp_sum.clone()
    calls = []

    def closure(rows):
        calls.append(1)
        out = per_sample(model, x, y, idx)(rows)
        return out if len(calls) == 1 else out * float("inf")

    info = opt.step(closure, index=idx)
    assert info.skipped and "descent" in info.reason and len(calls) == 2
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert same(opt.base.state_dict(), base)
    assert torch.equal(opt.selection.dlp_sum, history)  # nothing recorded from a skipped step


def test_two_step_api_matches_step():
    x, y = toy_data()
    a, b = tiny_mlp(), tiny_mlp()
    opt_a, opt_b = make("sam", a), make("sam", b)
    for idx in torch.arange(24).split(8):
        opt_a.step(per_sample(a, x, y, idx), index=idx)
        F.cross_entropy(b(x[idx]), y[idx]).backward()
        assert opt_b.first_step(zero_grad=True)
        F.cross_entropy(b(x[idx]), y[idx]).backward()
        assert opt_b.second_step(zero_grad=True)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_base_optimizer_instance_and_lr_scheduler_share_groups():
    model = tiny_mlp()
    base = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    opt = flatsam.SAM(None, base, rho=0.05)
    assert opt.param_groups is base.param_groups and opt.state is base.state
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    x, y = toy_data()
    idx = torch.arange(8)
    opt.step(per_sample(model, x, y, idx), index=idx)
    sched.step()
    assert base.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.param_groups[0]["rho"] == 0.05


def test_grad_scaler_matches_fp32_and_backs_off_on_overflow():
    x, y = toy_data()
    a, b = tiny_mlp(), tiny_mlp()
    opt_a, opt_b = make("sam", a), make("sam", b)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for idx in torch.arange(24).split(8):
        opt_a.step(per_sample(a, x, y, idx), index=idx)
        info = opt_b.step(per_sample(b, x, y, idx), index=idx, scaler=scaler)
        assert not info.skipped
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    weights = copy.deepcopy(b.state_dict())
    idx = torch.arange(8)
    info = opt_b.step(lambda rows: per_sample(b, x, y, idx)(rows) * 1e308 * 1e10, index=idx, scaler=scaler)
    assert info.skipped and scaler.get_scale() == 2.0**9
    assert all(torch.equal(v, weights[k]) for k, v in b.state_dict().items())


def test_state_dict_refused_while_perturbed():
    x, y = toy_data()
    model = tiny_mlp()
    opt = make("sam", model)
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="perturbed"):
        opt.state_dict()
    opt.second_step()
    opt.state_dict()


# -- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rho": -0.1}, r"rho must be >= 0"),
        ({"keep": 0.0}, r"keep must be in \(0, 1\]"),
        ({"keep": 1.5}, r"keep must be in \(0, 1\]"),
        ({"s_min": 0.6, "s_max": 0.5}, r"0 < s_min <= s_max"),
        ({"num_samples": 0}, r"num_samples .* >= 1"),
        ({"ramp_epochs": -1}, r"ramp_epochs must be >= 0"),
        ({"average": "median"}, r"average must be 'mean' or 'ema'"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
    model = tiny_mlp()
    with pytest.raises(ValueError, match=match):
        flatsam.AUSAM(model.parameters(), torch.optim.SGD, lr=0.1, **{"num_samples": 10, **kwargs})


def test_index_out_of_range_raises():
    x, y = toy_data()
    model = tiny_mlp()
    opt = make("ausam", model, num_samples=10, warmup_epochs=0)
    idx = torch.tensor([0, 3, 12])
    with pytest.raises(ValueError, match=r"index values must be in \[0, num_samples\) = \[0, 10\)"):
        opt.step(per_sample(model, x, y, idx), index=idx)


def test_scalar_loss_is_a_type_error_that_says_what_to_return():
    x, y = toy_data()
    model = tiny_mlp()
    opt = make("sam", model)
    with pytest.raises(TypeError, match=r"per-sample losses.*reduction='none'"):
        opt.step(lambda rows: F.cross_entropy(model(x[rows]), y[rows]), batch_size=8)


@pytest.mark.parametrize("name", ["ausam", "infobatch"])
def test_a_history_method_refuses_batch_size_at_its_first_step(name):
    """Refused at once, warm-up or not, with a message naming every way to supply the indices."""
    x, y = toy_data()
    model = tiny_mlp()
    if name == "ausam":
        opt = make(name, model)
    else:
        opt = flatsam.InfoBatchSAM(model.parameters(), torch.optim.SGD, num_samples=24, epochs=3, **KW)
    opt.set_epoch(0)
    before = [p.detach().clone() for p in model.parameters()]
    for how in ("IndexedDataset", "'index' column", "sam_index"):
        with pytest.raises(ValueError, match=f"every step needs index=.*{how}"):
            opt.step(per_sample(model, x, y, torch.arange(8)), batch_size=8)
    unchanged = all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert opt.step_count == 0 and unchanged


def test_missing_closure_and_batch_size_raise():
    model = tiny_mlp()
    opt = make("sam", model)
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    # a selection that draws rows before the first pass cannot read B from it (SAM can: see test_compat)
    uniform = flatsam.UniformSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=r"UniformSampler .*needs index= .* or batch_size="):
        uniform.step(lambda rows: rows.double())


def test_bad_base_optimizer_raises():
    model = tiny_mlp()
    with pytest.raises(TypeError, match="base_optimizer"):
        flatsam.SAM(model.parameters(), "sgd")
    with pytest.raises(TypeError, match="instance"):
        flatsam.SAM(None, torch.optim.SGD(model.parameters(), lr=0.1), lr=0.2)


def test_registry_builds_every_method_and_rejects_unknown_names():
    model = tiny_mlp()
    for name in flatsam.METHODS:
        opt = flatsam.build_method(
            name, model.parameters(), model=model, num_samples=24, total_steps=10, epochs=2, lr=0.1
        )
        assert isinstance(opt, flatsam.SharpnessAware)
    with pytest.raises(ValueError, match="valid methods: .*ausam.*sam"):
        flatsam.method_info("nosuch")


PAPER = re.compile(r"[A-Z][a-z]+(?: et al\.| & [A-Z][a-z]+)?,? (?:[A-Z][A-Za-z]* )?(?:19|20)\d\d")
CODE = re.compile(r"github\.com/[\w.-]+/[\w.-]+")


def test_every_default_is_the_builders_and_names_where_it_comes_from():
    """A default's source cites a paper (Author et al., [venue] year), official code by its URL, or says
    "our choice" or "unverified"; none cites internal notes. Its value is the builder's default (or, for
    a ``train.`` key, the harness's)."""
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for info in flatsam.METHODS.values():
        signature = inspect.signature(info.build).parameters
        for key, default in info.defaults.items():
            where, source = f"{info.name}.{key}: {default.source!r}", default.source
            assert (
                PAPER.search(source) or CODE.search(source) or re.search("our choice|unverified", source)
            ), where
            assert not re.search(r"\bspec\b|§|recalled", source), where
            if key.startswith("train."):
                assert fields[key.removeprefix("train.")] == default.value, where
            else:
                assert signature[key].default == default.value, where


def test_no_module_cites_internal_notes():
    root = Path(flatsam.__file__).parent
    cited = [
        f"{path.relative_to(root)}:{number}"
        for path in sorted(root.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"spec ?§|spec/[\w-]+\.md|the spec\b|recalled", line)
    ]
    assert cited == []


def test_methods_listing_states_the_conventions(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    lines = {line.split("(")[0].strip(): line for line in out.splitlines() if " = " in line}
    # ASAM's η: the class default of the official code, and the η = 0 of its CIFAR example
    assert "eta = 0.01" in lines and "example_cifar.py runs eta = 0" in lines["eta = 0.01"]
    # ESAM's BatchNorm statistics: the clean pass only here, all three forwards in the official code
    assert "all three forwards: 'every'" in lines["bn_updates = 'first'"]
    # label smoothing: torch's ε/K here, the AUSAM authors' ε/(K−1)
    smoothing = lines["train.smoothing_form = 'torch'"]
    assert "ε/K to every class" in smoothing and "ε/(K−1) on each other" in smoothing


def test_post_deciding_schedule_refuses_a_selection_with_different_rows():
    x, y = toy_data()
    model = tiny_mlp()
    opt = flatsam.SharpnessAware(
        model.parameters(),
        torch.optim.SGD,
        schedule=flatsam.AEThreshold(total_steps=10),
        selection=flatsam.MicroBatch(size=2),
        **KW,
    )
    idx = torch.arange(8)
    with pytest.raises(RuntimeError, match="ascent and descent rows coincide"):
        opt.step(per_sample(model, x, y, idx), index=idx)
