"""Neurons against hand computations, the golden contract traces, and norse's own LIF step."""

import json
import math
from pathlib import Path

import pytest
import torch

from revsnn.neurons import (IF, LIF, ATan, Rectangular, Sigmoid, Threshold, get_states,
                            reset_states, spike)

CONTRACT = json.loads((Path(__file__).parent / "contract" / "float_neurons.json").read_text())


def test_lif_by_hand():
    # tau = 2, theta = 1: h = v + (x - v) / 2.
    x = torch.tensor([[1.0], [1.0], [1.0], [2.0], [4.0], [-2.0]], dtype=torch.float64)
    x = x[:, None, :]  # [T, B=1, N=1]
    lif = LIF(tau=2.0, v_threshold=1.0)
    s = lif(x)
    # step 0: h = 0.5;  1: h = 0.75;  2: h = 0.875;  3: h = 1.4375 -> spike, v = 0
    # step 4: h = 2.0 -> spike, v = 0;  5: h = -1.0
    assert s.flatten().tolist() == [0, 0, 0, 1, 1, 0]
    assert lif.v.item() == -1.0


def test_exactly_at_threshold_does_not_spike():
    # IF, theta = 1: 0.5 + 0.5 lands exactly on 1.0 (no spike, strict >); one more 0.25 spikes and resets.
    x = torch.tensor([0.5, 0.5, 0.25, 0.75, 0.25], dtype=torch.float64)[:, None, None]
    neuron = IF(v_threshold=1.0)
    s = neuron(x).flatten().tolist()
    assert s == [0, 0, 1, 0, 0]
    assert neuron.v.item() == 1.0  # 0.75 + 0.25 == 1.0 exactly, again no spike
    # LIF, tau = 2: x = 2 from rest gives h = 1.0 exactly.
    assert LIF(tau=2.0)(torch.full((1, 1, 1), 2.0)).item() == 0.0
    assert Threshold(0.5)(torch.tensor([[[0.5, 0.5000001, 0.4]]])).flatten().tolist() == [0, 1, 0]


def test_state_carries_between_calls_and_resets():
    x = torch.full((3, 1, 1), 0.4, dtype=torch.float64)
    n = IF()
    # 0.4, 0.8, 1.2 > 1: the third step spikes and resets to 0.
    assert n(x).flatten().tolist() == [0, 0, 1]
    assert n.v.item() == 0.0
    n.reset()
    whole = n(torch.cat([x, x]))
    n.reset()
    first = n(x)
    second = n(x)
    assert torch.equal(whole, torch.cat([first, second]))
    reset_states(n)
    assert get_states(n) == [None]


@pytest.mark.parametrize("case", CONTRACT["cases"], ids=lambda c: c["name"])
def test_golden_contract_traces(case):
    x = torch.tensor(case["input"], dtype=torch.float64)[:, None, :]  # [T][N] -> [T, 1, N]
    kind = case["neuron"]
    if kind == "LIF":
        neuron = LIF(tau=case["tau"], v_threshold=case["theta"], v_reset=case["v_reset"])
    elif kind == "IF":
        neuron = IF(v_threshold=case["theta"], v_reset=case["v_reset"])
    else:
        neuron = Threshold(case["theta"])
    spikes = neuron(x)[:, 0, :]
    expected = torch.tensor(case["spikes"], dtype=torch.float64)
    assert torch.equal(spikes, expected), case["name"]
    assert expected.sum() > 0
    if kind != "Threshold":
        hs, vs, v = [], [], torch.zeros(x.shape[1:], dtype=torch.float64)
        for t in range(x.shape[0]):
            _, v, h = neuron.step(x[t], v)
            hs.append(h[0])
            vs.append(v[0])
        torch.testing.assert_close(torch.stack(hs), torch.tensor(case["h_before_reset"], dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.stack(vs), torch.tensor(case["v_after_reset"], dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)


def test_golden_traces_cover_the_edge_cases():
    cases = {c["name"]: c for c in CONTRACT["cases"]}
    at_threshold = sum(
        1 for c in cases.values() if c["neuron"] != "Threshold"
        for hrow, srow in zip(c["h_before_reset"], c["spikes"]) for h, s in zip(hrow, srow)
        if h == c["theta"] and s == 0)
    assert at_threshold > 0


def test_lif_equals_norse_box_lif():
    norse_lif = pytest.importorskip("norse.torch.functional.lif_box")
    torch.manual_seed(0)
    x = 1.2 * torch.randn(30, 4, 16, dtype=torch.float64)
    tau = 2.0
    ours = LIF(tau=tau)(x)
    p = norse_lif.LIFBoxParameters(tau_mem_inv=torch.tensor(1.0 / tau, dtype=torch.float64),
                                   v_leak=torch.tensor(0.0, dtype=torch.float64),
                                   v_th=torch.tensor(1.0, dtype=torch.float64),
                                   v_reset=torch.tensor(0.0, dtype=torch.float64), method="super",
                                   alpha=torch.tensor(100.0))
    state = norse_lif.LIFBoxFeedForwardState(v=torch.zeros(4, 16, dtype=torch.float64))
    theirs = []
    for t in range(x.shape[0]):
        z, state = norse_lif.lif_box_feed_forward_step(x[t], state, p, dt=1.0)
        theirs.append(z)
    theirs = torch.stack(theirs)
    assert ours.sum() > 50
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("surrogate, expected", [
    (ATan(2.0), lambda x: 2.0 / (2 * (1 + (math.pi * 2.0 * x / 2) ** 2))),
    (Sigmoid(4.0), lambda x: 4.0 * (1 / (1 + math.exp(-4 * x))) * (1 - 1 / (1 + math.exp(-4 * x)))),
    (Rectangular(1.0), lambda x: 1.0 if abs(x) <= 0.5 else 0.0),
])
def test_surrogate_gradients(surrogate, expected):
    xs = [-1.0, -0.5, -0.2, 0.0, 0.3, 0.5, 0.7]
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    s = spike(x, surrogate)
    assert s.tolist() == [0, 0, 0, 0, 1, 1, 1]
    s.sum().backward()
    for xi, gi in zip(xs, x.grad.tolist()):
        assert gi == pytest.approx(expected(xi), rel=1e-12, abs=1e-15)
    # ATan integrates to 1 over the real line, like a Heaviside's derivative.
    if isinstance(surrogate, ATan):
        grid = torch.linspace(-200, 200, 400001, dtype=torch.float64)
        assert torch.trapezoid(surrogate.grad(grid), grid).item() == pytest.approx(1.0, abs=1e-2)


def test_reset_gradient_detached_by_default():
    x = torch.tensor([[[3.0]], [[0.5]]], dtype=torch.float64, requires_grad=True)
    # with detach_reset the second step's membrane h1 = v0 + x1 with v0 = h0 * (1 - s0): d v0 / d x0 = 1 - s0 = 0
    n = IF(v_threshold=1.0, surrogate=Rectangular(100.0))
    s = n(x)
    s[1].sum().backward()
    assert x.grad[0].item() == 0.0
