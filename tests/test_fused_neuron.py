"""The fused multi-step LIF / IF (one autograd Function over all T steps) against the step-by-step
autograd version of the same equations, in float64 (issue 18, Deliver 5)."""

import copy

import pytest
import torch

from revsnn.memory import activation_bytes
from revsnn.neurons import IF, LIF, ATan, Rectangular, Sigmoid, _from_batch_norm


def _pair(neuron):
    fused, steps = copy.deepcopy(neuron), copy.deepcopy(neuron)
    steps.fused = False
    return fused, steps


def _run(neuron, x, w, v0=None, chunks=1):
    neuron.reset()
    x = x.clone().requires_grad_(True)
    if v0 is not None:
        v0 = v0.clone().requires_grad_(True)
        neuron.v = v0
    out = torch.cat([neuron(part) for part in x.chunk(chunks)])
    # the final membrane joins the loss too, so its gradient path through the reset is exercised
    loss = (out * w).sum() + (neuron.v * w[0]).sum() if v0 is None else (out * w).sum()
    loss.backward()
    return out.detach(), neuron.v.clone(), x.grad, None if v0 is None else v0.grad


NEURONS = {
    "lif-sigmoid": lambda: LIF(2.0, 1.0, 0.0, Sigmoid(4.0)),
    "lif-atan-reset-grad": lambda: LIF(3.0, 0.7, -0.2, ATan(2.0), detach_reset=False),
    "if-atan": lambda: IF(1.0, 0.0, ATan(2.0)),
    "if-rect-reset-grad": lambda: IF(0.8, 0.1, Rectangular(1.0), detach_reset=False),
}


@pytest.mark.parametrize("name", list(NEURONS))
@pytest.mark.parametrize("T,chunks,with_v0", [(1, 1, False), (7, 1, False), (8, 2, False), (6, 1, True)])
def test_fused_equals_step_by_step(name, T, chunks, with_v0):
    g = torch.Generator().manual_seed(0)
    x = 1.5 * torch.randn(T, 3, 4, 5, generator=g, dtype=torch.float64)
    w = torch.randn(T, 3, 4, 5, generator=g, dtype=torch.float64)
    v0 = 0.5 * torch.randn(3, 4, 5, generator=g, dtype=torch.float64) if with_v0 else None
    fused, steps = _pair(NEURONS[name]())
    out_f, v_f, dx_f, dv0_f = _run(fused, x, w, v0, chunks)
    out_s, v_s, dx_s, dv0_s = _run(steps, x, w, v0, chunks)
    assert 0 < out_s.sum() < out_s.numel(), "vacuous: no spikes, or only spikes"
    assert torch.equal(out_f, out_s) and torch.equal(v_f, v_s)
    torch.testing.assert_close(dx_f, dx_s, rtol=1e-12, atol=1e-14)
    if with_v0:
        torch.testing.assert_close(dv0_f, dv0_s, rtol=1e-12, atol=1e-14)


def test_fused_keeps_one_float_per_neuron_and_step():
    x = torch.randn(8, 4, 16, dtype=torch.float32, requires_grad=True)
    fused, steps = _pair(LIF(2.0))
    b_fused = activation_bytes(fused, x)
    b_steps = activation_bytes(steps, x)
    assert b_fused == x.numel() * 4          # its input (the caller's x itself), nothing else
    # step by step: h - theta for the surrogate and 1 - s for the reset, every step but the last's reset
    assert b_steps == (2 * 8 - 1) * x[0].numel() * 4


def _bn_then(bn, x):
    """x [T, B, F] through a BatchNorm over F, as TimeDistributed runs one: the neuron's input is then a
    view of a BatchNorm's output."""
    T, B, F = x.shape
    return bn(x.reshape(T * B, F)).reshape(T, B, F)


@pytest.mark.parametrize("name", list(NEURONS))
@pytest.mark.parametrize("with_v0", [False, True])
def test_fused_after_batch_norm_keeps_membranes_and_equals_step_by_step(name, with_v0):
    # A BatchNorm's output as input makes the fused neuron keep its membranes instead of its input (no
    # second pass over time in backward); the result must not change. retain_graph: a second backward
    # through the same graph must give the same gradients again (the kept membranes are not overwritten).
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    w = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    v0 = 0.5 * torch.randn(3, 4, generator=g, dtype=torch.float64) if with_v0 else None
    bn = torch.nn.BatchNorm1d(4).double()
    with torch.no_grad():
        bn.weight.copy_(1.0 + torch.rand(4, generator=g, dtype=torch.float64))
    assert _from_batch_norm(_bn_then(bn, x0.clone().requires_grad_(True)))
    got = []
    for fused in (True, False):
        neuron = NEURONS[name]().double()
        neuron.fused = fused
        x = x0.clone().requires_grad_(True)
        v = None if v0 is None else v0.clone().requires_grad_(True)
        neuron.v = v
        out = neuron(_bn_then(bn, x))
        loss = (out * w).sum() + (neuron.v * w[0]).sum()
        loss.backward(retain_graph=True)
        first = (x.grad.clone(), None if v is None else v.grad.clone())
        loss.backward()
        got.append((out.detach(), first, x.grad, None if v is None else v.grad))
    (out_f, first_f, dx_f, dv_f), (out_s, first_s, dx_s, dv_s) = got
    assert out_f.sum() > 0 and torch.equal(out_f, out_s)
    torch.testing.assert_close(first_f[0], first_s[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(dx_f, 2 * first_f[0], rtol=1e-12, atol=1e-14)
    if with_v0:
        torch.testing.assert_close(first_f[1], first_s[1], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(dv_f, 2 * first_f[1], rtol=1e-12, atol=1e-14)
