"""Our reversible LIF node (revsnn.models.revnode): inverse, reversible vs BPTT twin, gradcheck, memory."""

import math

import pytest
import torch
from torch import nn

from revsnn.layers import TimeDistributed
from revsnn.memory import ActivationMeter
from revsnn.models import build_model, get_config
from revsnn.models.revnode import (
    RevLIFNode,
    SmoothSigmoidSpike,
    _RevLIFFn,
    node_memory_comparison,
    pack_spikes,
    revlif_inverse,
    revlif_step,
    unpack_spikes,
)
from revsnn.neurons import LIF, lif_step
from revsnn.reversible import plain_twin

TAU, THETA = 2.0, 1.0


def drive(T: int, shape=(3, 7), dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (THETA * (2.0 * torch.randn(T, *shape, generator=g, dtype=torch.float64) + 1.0)).to(dtype)


def roll_forward(x: torch.Tensor, v0: torch.Tensor):
    ys, vs, ss = [], [v0], []
    v = v0
    with torch.no_grad():
        for xt in x:
            y, v, s, _ = revlif_step(xt, v, TAU, THETA)
            ys.append(y), vs.append(v), ss.append(s)
    return torch.stack(ys), vs, torch.stack(ss)


def inverse_error(dtype: torch.dtype, T: int = 16) -> tuple[float, float]:
    """Max abs error of the reconstructed inputs and states, walking T steps back from (y, v_T, s)."""
    x = drive(T, dtype=dtype)
    v0 = drive(1, dtype=dtype, seed=1)[0]
    y, vs, s = roll_forward(x, v0)
    assert 0 < s.sum() < s.numel()
    v = vs[-1]
    err_x = err_v = 0.0
    for t in reversed(range(T)):
        xt, v = revlif_inverse(y[t], v, s[t], TAU, THETA)
        err_x = max(err_x, (xt - x[t]).abs().max().item())
        err_v = max(err_v, (v - vs[t]).abs().max().item())
    return err_x, err_v


# --------------------------------------------------------------------------------------------------------
# 1. The per-step map inverts exactly.


def test_inverse_float64_exact_over_16_steps():
    err_x, err_v = inverse_error(torch.float64)
    assert err_x < 1e-12 and err_v < 1e-12


def test_inverse_float32_error_stays_small():
    err_x, err_v = inverse_error(torch.float32)
    print(f"float32 inverse error over T=16: x {err_x:.2e}, v {err_v:.2e}")
    assert err_x < 1e-5 and err_v < 1e-5


def test_charge_is_the_contract_lif_charge():
    x, v = drive(1)[0], drive(1, seed=3)[0]
    _, v_next, s, h = revlif_step(x, v, TAU, THETA)
    _, _, h_lif = lif_step(x, v, TAU, THETA)
    assert torch.equal(h, h_lif)
    assert torch.equal(s, (h > THETA).double())
    assert torch.equal(v_next, h - THETA * s)


def test_soft_reset_needs_the_spike_bit():
    # Two different (x, v) with the same (y, v_next): one spikes, one does not. Hence the stored bit.
    v = torch.tensor([0.2], dtype=torch.float64)
    x = torch.tensor([2.4], dtype=torch.float64)           # h = 1.3 in (theta, 2 theta]: spikes
    y1, vn1, s1, _ = revlif_step(x, v, TAU, THETA)
    d2 = (y1 - s1) + 1.0                                   # the non-spiking twin: d' = d + 1, h' = h - theta
    h2 = vn1
    v2 = h2 - d2
    x2 = v2 + TAU * d2
    y2, vn2, s2, _ = revlif_step(x2, v2, TAU, THETA)
    assert s1.item() == 1 and s2.item() == 0
    assert torch.allclose(y1, y2) and torch.allclose(vn1, vn2)
    assert not torch.allclose(v, v2)                       # different (x, v): here v2 = v - theta - 1


@pytest.mark.parametrize("n", [1, 7, 8, 13, 64])
def test_spike_packing_roundtrip(n):
    s = (torch.rand(3, n) > 0.5).double()
    packed = pack_spikes(s)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(s.numel() / 8)
    assert torch.equal(unpack_spikes(packed, s.shape).double(), s)


# --------------------------------------------------------------------------------------------------------
# 2. The reversible node equals its plain-autograd BPTT twin.


def make_stack(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(TimeDistributed(nn.Linear(6, 8)), RevLIFNode(TAU, THETA),
                        TimeDistributed(nn.Linear(8, 8)), RevLIFNode(TAU, THETA)).double()
    with torch.no_grad():
        # gains large enough that both nodes spike even at T = 1 (h_1 = x_1 / tau must exceed theta)
        for lin in (net[0].module, net[2].module):
            lin.weight.mul_(4.0)
            lin.bias.fill_(1.0)
    return net


def run(net: nn.Module, x: torch.Tensor, w: torch.Tensor, chunks: int = 1):
    x = x.clone().requires_grad_(True)
    for m in net.modules():
        if isinstance(m, RevLIFNode):
            m.reset()
    outs = [net(part) for part in torch.chunk(x, chunks)]
    out = torch.cat(outs)
    (out * w).sum().backward()
    states = [m.v.clone() for m in net.modules() if isinstance(m, RevLIFNode)]
    return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in net.named_parameters()}, states


@pytest.mark.parametrize("T,chunks", [(1, 1), (4, 1), (4, 2), (16, 1), (16, 2)])
def test_reversible_equals_bptt_twin(T, chunks):
    # chunks = 2: the state is carried from the first half of the sequence into the second
    net = make_stack()
    twin = plain_twin(net)
    assert all(not m.reversible for m in twin.modules() if isinstance(m, RevLIFNode))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(T, 4, 6, generator=g, dtype=torch.float64)
    w = torch.randn(T, 4, 8, generator=g, dtype=torch.float64)
    out_r, gx_r, gp_r, st_r = run(net, x, w, chunks)
    out_t, gx_t, gp_t, st_t = run(twin, x, w, chunks)
    assert torch.equal(out_r, out_t)
    assert all(torch.equal(a, b) for a, b in zip(st_r, st_t))
    torch.testing.assert_close(gx_r, gx_t, rtol=1e-9, atol=1e-12)
    for name in gp_t:
        torch.testing.assert_close(gp_r[name], gp_t[name], rtol=1e-9, atol=1e-12)
    # Non-vacuous: both nodes spike, but not everywhere.
    for total in node_spike_counts(twin, x):
        assert 0 < total < T * 4 * 8


def node_spike_counts(net: nn.Module, x: torch.Tensor) -> list[int]:
    """Spikes emitted by each RevLIFNode of ``net`` on ``x`` (recomputed from the inputs it receives)."""
    inputs = []
    nodes = [m for m in net.modules() if isinstance(m, RevLIFNode)]
    hooks = [n.register_forward_hook(lambda m, i, o: inputs.append(i[0].detach())) for n in nodes]
    for n in nodes:
        n.reset()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return [int(roll_forward(u, torch.zeros_like(u[0]))[2].sum()) for u in inputs]


# --------------------------------------------------------------------------------------------------------
# 3. gradcheck of the Function with a smooth stand-in spike.


def test_gradcheck_with_smooth_spike():
    node = RevLIFNode(TAU, THETA, surrogate=SmoothSigmoidSpike(3.0), detach_reset=False).double()
    g = torch.Generator().manual_seed(7)
    x = (1.5 * torch.randn(4, 2, 3, generator=g, dtype=torch.float64) + 1.0).requires_grad_(True)
    v0 = (0.5 * torch.randn(2, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: _RevLIFFn.apply(a, b, node), (x, v0), eps=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------------------
# 4. Retained bytes: the reversible node keeps output + final state + 1 bit per neuron per step.


def retained(node: nn.Module, x: torch.Tensor) -> int:
    with ActivationMeter(exclude=node) as meter:
        out = node(x.clone().requires_grad_(True))
    out.sum().backward()
    return meter.nbytes


def test_retained_bytes_reversible_vs_twin_vs_lif():
    B, N = 4, 37                                   # 148 neurons: not a multiple of 8, so bits are padded
    per_step = B * N * 8                           # float64 bytes of one step
    bits = math.ceil(B * N / 8)
    lif_bytes, twin_bytes = [], []
    for T in (2, 4, 8, 16):
        x = drive(T, shape=(B, N))
        rev = retained(RevLIFNode(TAU, THETA), x)
        # exactly: the output y (T steps), the final state v_T (one step), the packed spike bits
        assert rev == T * per_step + per_step + T * bits
        twin_bytes.append(retained(RevLIFNode(TAU, THETA, reversible=False), x))
        lif_bytes.append(retained(LIF(TAU, THETA), x))
    Ts = (2, 4, 8, 16)
    for series in (twin_bytes, lif_bytes):
        slopes = {(b - a) / (t2 - t1) for (a, b, t1, t2) in zip(series, series[1:], Ts, Ts[1:])}
        assert len(slopes) == 1 and slopes.pop() >= per_step           # linear in T, >= one float a step


def test_node_memory_comparison_reports_ratios():
    report = node_memory_comparison(shape=(4, 64), time_steps=(1, 8, 32))
    rows = report["rows"]
    assert [r["time_steps"] for r in rows] == [1, 8, 32]
    for r in rows:
        T, n, f = r["time_steps"], 4 * 64, 4
        assert r["reversible_beyond_output_bytes"] == n * f + T * n // 8
        assert r["reversible_bytes"] == r["reversible_beyond_output_bytes"] + r["output_bytes"]
    assert rows[-1]["ratio_lif_beyond_output"] > rows[1]["ratio_lif_beyond_output"] > 1
    assert rows[-1]["ratio_lif"] > 1


# --------------------------------------------------------------------------------------------------------
# 5. The revnode-digits model.


def test_digits_model_reversible_equals_twin():
    cfg = get_config("revnode-digits")
    assert cfg["family"] == "revnode" and cfg["input_shape"] == [1, 8, 8] and cfg["num_classes"] == 10
    assert set(cfg["train"]) >= {"epochs", "lr", "time_steps", "batch_size", "encoding"}
    torch.manual_seed(0)
    model = build_model(cfg).double()
    with torch.no_grad():                                              # gains so that both layers spike
        for m in model.features.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(4.0)
                m.bias.fill_(0.5)
    twin = plain_twin(model)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 1, 8, 8, generator=g, dtype=torch.float64).expand(4, 5, 1, 8, 8) * 2
    x = x + 0.1 * torch.randn(4, 5, 1, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randint(0, 10, (5,), generator=g)
    results = []
    for m in (model, twin):
        out = m(x)
        assert out.shape == (5, 10)
        nn.functional.cross_entropy(out, target).backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    assert torch.equal(results[0][0], results[1][0])
    for name, grad in results[1][1].items():
        torch.testing.assert_close(results[0][1][name], grad, rtol=1e-9, atol=1e-12)
    for total in node_spike_counts(twin, x):                          # non-vacuous: the nodes spike
        assert 0 < total < 4 * 5 * 128
    # the forward starts from fresh state every call
    assert torch.equal(model(x), model(x))
