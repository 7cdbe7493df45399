"""The RevLIF node's fused Function (one autograd node over all T steps, closed-form one-pass backward)
against the same equations unrolled step by step under plain autograd, in float64 (issue 18, Deliver 5)."""

import pytest
import torch

from revsnn.models.revnode import RevLIFNode, _RevLIFFn, revlif_step
from revsnn.neurons import ATan, Rectangular, Sigmoid

pytestmark = pytest.mark.usefixtures("one_thread")


def _unrolled(node, x, v0):
    """The independent truth: ``revlif_step`` per step, differentiated by autograd."""
    v, ys, spikes = v0, [], []
    for t in range(x.shape[0]):
        y, v, s, _ = revlif_step(x[t], v, node.tau, node.v_threshold, node.surrogate, node.detach_reset)
        ys.append(y)
        spikes.append(s.detach())
    _unrolled.spikes = torch.stack(spikes)
    return torch.stack(ys), v


@pytest.mark.parametrize("surrogate,detach", [(Sigmoid(4.0), True), (ATan(2.0), False), (Rectangular(1.0), True),
                                              (Sigmoid(2.0), False)])
@pytest.mark.parametrize("T", [1, 5, 16])
def test_fused_node_gradients_equal_step_by_step(surrogate, detach, T):
    g = torch.Generator().manual_seed(T)
    node = RevLIFNode(tau=1.7, v_threshold=0.9, surrogate=surrogate, detach_reset=detach)
    x = (1.2 * torch.randn(T, 3, 7, generator=g, dtype=torch.float64) + 0.8)
    v0 = 0.4 * torch.randn(3, 7, generator=g, dtype=torch.float64)
    wy = torch.randn(T, 3, 7, generator=g, dtype=torch.float64)
    wv = torch.randn(3, 7, generator=g, dtype=torch.float64)
    results = []
    for fn in (lambda a, b: _RevLIFFn.apply(a, b, node), lambda a, b: _unrolled(node, a, b)):
        a, b = x.clone().requires_grad_(True), v0.clone().requires_grad_(True)
        y, v = fn(a, b)
        ((y * wy).sum() + (v * wv).sum()).backward()  # both outputs carry gradient
        results.append((y.detach(), v.detach(), a.grad, b.grad))
    (y_f, v_f, gx_f, gv_f), (y_s, v_s, gx_s, gv_s) = results
    assert torch.equal(y_f, y_s) and torch.equal(v_f, v_s)  # the forward is bit-identical
    assert 0 < _unrolled.spikes.sum() < y_s.numel()         # non-vacuous: some spikes, not all
    torch.testing.assert_close(gx_f, gx_s, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gv_f, gv_s, rtol=1e-10, atol=1e-12)


def test_fused_node_without_gradient_on_the_final_state():
    # only y carries gradient (dv = None in backward): the usual case inside a network
    node = RevLIFNode(tau=2.0, v_threshold=1.0)
    g = torch.Generator().manual_seed(3)
    x = 2.0 * torch.rand(6, 4, 5, generator=g, dtype=torch.float64)
    grads = []
    for fn in (lambda a: _RevLIFFn.apply(a, torch.zeros(4, 5, dtype=torch.float64), node)[0],
               lambda a: _unrolled(node, a, torch.zeros(4, 5, dtype=torch.float64))[0]):
        a = x.clone().requires_grad_(True)
        fn(a).sum().backward()
        grads.append(a.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
