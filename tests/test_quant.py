"""LSQ quantization-aware training: forward and gradients against literal transcriptions of the paper,
conversion, SAM on the latent weights (step sizes perturbed or not), rho=0 and quantized evaluation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flatsam
from flatsam import quant


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def literal_forward(v: list[float], s: float, q_n: int, q_p: int) -> list[float]:
    """round(clamp(v/s, -Q_N, Q_P)) * s, element by element, with round-half-to-even."""
    return [round(min(max(x / s, -q_n), q_p)) * s for x in v]


def literal_grads(v: list[float], s: float, q_n: int, q_p: int, g: float) -> tuple[list[float], list[float]]:
    """LSQ's Eq. 3 (d q / d s, times g) and the STE (d q / d v) per element."""
    dv, ds = [], []
    for x in v:
        r = x / s
        if r <= -q_n:
            ds.append(-q_n * g), dv.append(0.0 if r < -q_n else 1.0)
        elif r >= q_p:
            ds.append(q_p * g), dv.append(0.0 if r > q_p else 1.0)
        else:
            ds.append((round(r) - r) * g), dv.append(1.0)
    return dv, ds


@pytest.mark.parametrize("bits,signed", [(2, True), (3, True), (4, False), (8, False), (2, False)])
def test_lsq_forward_and_gradients_equal_the_literal_formulas(bits, signed):
    q_n, q_p = quant.levels(bits, signed)
    assert (q_n, q_p) == ((2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1))
    s0 = 0.37
    values = [-5.0, -1.3, -0.49 * s0, -0.2, 0.0, 0.1, 0.51 * s0, 1.49 * s0, 0.8, 2.0, 9.0]
    v = torch.tensor(values, requires_grad=True)
    s = torch.tensor(s0, requires_grad=True)
    g = 1 / math.sqrt(len(values) * q_p)
    out = quant.lsq(v, s, q_n, q_p, g)
    assert out.tolist() == pytest.approx(literal_forward(values, s0, q_n, q_p), abs=1e-15)
    weights = torch.linspace(0.5, 1.5, len(values))
    (out * weights).sum().backward()
    dv, ds = literal_grads(values, s0, q_n, q_p, g)
    assert v.grad.tolist() == pytest.approx([a * b for a, b in zip(dv, weights.tolist(), strict=True)])
    assert float(s.grad) == pytest.approx(sum(a * b for a, b in zip(ds, weights.tolist(), strict=True)))


def test_lsq_rounds_halves_to_even_and_clamps():
    s = torch.tensor(0.25)
    v = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 100.0, -100.0]) * s
    assert (quant.lsq(v, s, 4, 3, 1.0) / s).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 3.0, -4.0]


def test_lsq_agrees_with_torch_fused_learnable_fake_quantize_inside_the_clamp_range():
    """torch's fused op decides the STE mask after rounding (x/s within [-Q_N - 1/2, Q_P + 1/2)), LSQ
    before it (within [-Q_N, Q_P]): gradients agree everywhere but in those two half-steps."""
    torch.manual_seed(0)
    x = (torch.randn(4, 50, dtype=torch.float32) * 2).requires_grad_()
    s = torch.tensor([0.3], dtype=torch.float32, requires_grad=True)
    ours = quant.lsq(x, s[0], 8, 7, 0.05)
    x2, s2 = x.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()
    zero = torch.zeros(1, dtype=torch.float32)
    ref = torch._fake_quantize_learnable_per_tensor_affine(x2, s2, zero, -8, 7, 0.05)
    torch.testing.assert_close(ours, ref)
    w = torch.randn_like(ours)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    r = x.detach() / 0.3
    edge = ((r > 7) & (r < 7.5)) | ((r < -8) & (r >= -8.5))
    assert edge.any() and (~edge).sum() > 150
    torch.testing.assert_close(x.grad[~edge], x2.grad[~edge])
    assert (x.grad[edge] == 0).all() and (x2.grad[edge] == w[edge]).all()
    # the step's gradient: the edge elements contribute Q_P or -Q_N (LSQ) instead of round(r) - r (torch)
    shift = (torch.where(r > 0, 7.0, -8.0) - (r.round() - r))[edge] * w[edge] * 0.05
    torch.testing.assert_close(s.grad, s2.grad + shift.sum(), rtol=1e-4, atol=1e-5)


def test_quantizer_initialises_step_by_lsq_rule_and_sign_from_data():
    w = torch.randn(6, 5)
    q = quant.LSQQuantizer(4, signed=True, per_sample=False)
    q.initialize(w)
    assert float(q.step.detach()) == pytest.approx(2 * float(w.abs().mean()) / math.sqrt(7))
    act = quant.LSQQuantizer(3, signed=None, per_sample=True)
    x = torch.rand(8, 10)
    levels = act(x).detach() / act.step.detach()
    assert not bool(act.signed) and bool(act.initialized)
    assert float(act.step.detach()) == pytest.approx(2 * float(x.abs().mean()) / math.sqrt(7))
    assert float((levels.round() - levels).abs().max()) < 1e-9  # integer multiples of the step
    assert float(levels.min()) >= 0 and float(levels.max()) <= 7 + 1e-9
    step = float(act.step.detach())
    act(torch.rand(8, 10) * 5)  # already initialised: the step stays
    assert float(act.step.detach()) == step
    signed = quant.LSQQuantizer(3, signed=None, per_sample=True)
    signed(torch.randn(8, 10))
    assert bool(signed.signed)


def small_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 16, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def test_quantize_model_keeps_first_and_last_layer_at_8_bits_and_the_same_parameters():
    net = small_net()
    before = [p for p in net.parameters()]
    quant.quantize_model(net, 2, 4)
    layers = [m for m in net.modules() if isinstance(m, (quant.QuantConv2d, quant.QuantLinear))]
    assert [type(m) for m in layers] == [quant.QuantConv2d, quant.QuantLinear, quant.QuantLinear]
    assert [(m.weight_quant.bits, m.input_quant.bits) for m in layers] == [(8, 8), (2, 4), (8, 8)]
    assert all(any(p is q for q in net.parameters()) for p in before)
    x = torch.randn(5, 1, 4, 4)
    net(x)
    assert bool(layers[0].input_quant.signed) and not bool(layers[1].input_quant.signed)
    # the layer computes conv/linear of the quantized input with the quantized weight
    first = layers[0]
    qx = quant.lsq(x, first.input_quant.step, 128, 127, 1 / math.sqrt(16 * 127))
    qw = quant.lsq(first.weight, first.weight_quant.step, 128, 127, 1 / math.sqrt(first.weight.numel() * 127))
    torch.testing.assert_close(first(x), F.conv2d(qx, qw, first.bias, padding=1))


def test_quantize_model_rejects_bad_bits_and_models_without_layers():
    with pytest.raises(ValueError, match="w_bits must be one of"):
        quant.quantize_model(small_net(), 5, 4)
    with pytest.raises(ValueError, match="no nn.Conv2d or nn.Linear"):
        quant.quantize_model(nn.ReLU(), 4, 4)
    with pytest.raises(ValueError, match="quantize must look like 'w4a4'"):
        quant.parse_spec("4bit")
    assert quant.parse_spec("W2A4") == (2, 4)


def data():
    g = torch.Generator().manual_seed(2)
    return torch.randn(16, 1, 4, 4, generator=g), torch.randint(0, 3, (16,), generator=g)


def closure(net, x, y):
    return lambda rows: F.cross_entropy(net(x[rows]), y[rows], reduction="none")


def train(net, opt, steps=3):
    x, y = data()
    for _ in range(steps):
        opt.step(closure(net, x, y), batch_size=len(x))


def test_rho_zero_qat_is_the_base_optimizer():
    a, b = quant.quantize_model(small_net(), 4, 4), quant.quantize_model(small_net(), 4, 4)
    sam = flatsam.SAM(
        quant.param_groups(a), torch.optim.SGD, rho=0.0, lr=0.1, momentum=0.9, weight_decay=1e-3
    )
    sgd = torch.optim.SGD(quant.param_groups(b), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = data()
    train(a, sam)
    for _ in range(3):
        sgd.zero_grad()
        F.cross_entropy(b(x), y).backward()
        sgd.step()
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def literal_sam_step(net, perturb_steps: bool, rho: float, lr: float):
    """One SAM step by hand: ε = ρ g/‖g‖ over the perturbed parameters, gradient at w+ε, plain SGD."""
    x, y = data()
    steps = {id(q.step) for q in quant.quantizers(net)}
    params = list(net.parameters())
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    chosen = [p for p in params if perturb_steps or id(p) not in steps]
    norm = torch.sqrt(sum((p.grad**2).sum() for p in chosen))
    eps = {id(p): rho * p.grad / (norm + 1e-12) for p in chosen}
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in chosen:
            p.add_(eps[id(p)])
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    with torch.no_grad():
        for p, w in zip(params, saved, strict=True):
            p.copy_(w - lr * p.grad)


@pytest.mark.parametrize("perturb_steps", [False, True])
def test_sam_on_latent_weights_with_and_without_step_sizes(perturb_steps):
    a, b = quant.quantize_model(small_net(), 3, 3), quant.quantize_model(small_net(), 3, 3)
    b(data()[0])  # initialise the activation steps as a's first clean pass does
    opt = flatsam.SAM(quant.param_groups(a, perturb_steps), torch.optim.SGD, rho=0.5, lr=0.1)
    train(a, opt, steps=1)
    literal_sam_step(b, perturb_steps, 0.5, 0.1)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_step_sizes_are_not_perturbed_by_default_but_are_with_the_option():
    net = quant.quantize_model(small_net(), 3, 3)
    x, y = data()
    net(x)
    opt = flatsam.SAM(quant.param_groups(net), torch.optim.SGD, rho=0.5, lr=0.0)
    seen: list[list[float]] = []

    def spy(rows):
        seen.append([float(q.step.detach()) for q in quant.quantizers(net)])
        return closure(net, x, y)(rows)

    opt.step(spy, batch_size=len(x))
    assert seen[0] == seen[1]  # descent pass ran with the same step sizes
    opt = flatsam.SAM(quant.param_groups(net, perturb_step_sizes=True), torch.optim.SGD, rho=0.5, lr=0.0)
    net.zero_grad()  # the first optimizer's gradients are not the second one's
    seen.clear()
    opt.step(spy, batch_size=len(x))
    assert seen[0] != seen[1]
    assert quant.param_groups(net)[1]["weight_decay"] == 0.0


def test_quantized_evaluation_uses_quantized_weights_and_state_dict_round_trips():
    net = quant.quantize_model(small_net(), 2, 2)
    x, _ = data()
    net.eval()
    out = net(x)
    # 2-bit weights of the middle layer take at most 4 values
    middle = [m for m in net.modules() if isinstance(m, quant.QuantLinear)][0]
    assert len(torch.unique(middle.weight_quant(middle.weight))) <= 4
    copy = quant.quantize_model(small_net(), 2, 2)
    copy.load_state_dict(net.state_dict())
    torch.testing.assert_close(copy.eval()(x), out, rtol=0, atol=0)
    assert all(bool(q.initialized) for q in quant.quantizers(copy))
    step = float(quant.quantizers(copy)[1].step.detach())
    copy.train()(x * 10)  # loaded as initialised: no re-initialisation from this batch
    assert float(quant.quantizers(copy)[1].step.detach()) == step


def test_models_name_several_output_layers_to_keep_at_8_bits():
    from flatsam.models import build_model
    from flatsam.pose import simcc_model

    model = quant.quantize_model(simcc_model(build_model("resnet8", 1, 1), 1, 16, (16, 16)), 2, 2)
    bits = {n: m.weight_quant.bits for n, m in model.named_modules() if isinstance(m, quant.QuantLinear)}
    assert bits == {"head.x": 8, "head.y": 8}
    assert model.backbone.stem[0].weight_quant.bits == 8 and model.head.joints.weight_quant.bits == 2
    net = small_net()
    net.output_layers = ("nope",)
    with pytest.raises(ValueError, match=r"output_layers \['nope'\]"):
        quant.quantize_model(net, 4, 4)


def test_load_full_precision_checkpoint(tmp_path):
    net = small_net()
    torch.save({"model": net.state_dict()}, tmp_path / "checkpoint.pt")
    other = nn.Sequential(*[m for m in small_net()])
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    quant.load_full_precision(other, tmp_path)
    torch.testing.assert_close(other[0].weight, net[0].weight)
    with pytest.raises(FileNotFoundError, match="quantize_init: no checkpoint"):
        quant.load_full_precision(other, tmp_path / "missing")
    torch.save({"model": {"bogus": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit the model"):
        quant.load_full_precision(other, tmp_path / "bad.pt")
