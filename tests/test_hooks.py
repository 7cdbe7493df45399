"""Parameter hooks fire once per backward in every reversible family (issue 18, Deliver 7).

The reversible Functions recompute their blocks inside backward. If the local gradients were taken with
respect to the parameters themselves, every ``param.register_hook`` would fire there and again when the
Function's returned gradient reaches the parameter, so a hook that scales a gradient would scale it
twice. The truth here is the plain-autograd twin: the same hook on it fires once by construction.
"""

import pytest
import torch
from torch import nn

from revsnn.blocks import conv_branch
from revsnn.models import build_model, get_config
from revsnn.neurons import IF, LIF
from revsnn.reversible import ParaRevCoupling, Recompute, RevNetCoupling, ReversibleSequence, plain_twin


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _sequence(coupling):
    torch.manual_seed(0)
    blocks = [coupling(conv_branch(3, lambda: LIF(2.0)), conv_branch(3, lambda: IF())) for _ in range(3)]
    seq = ReversibleSequence(blocks).double()
    with torch.no_grad():
        for m in seq.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(2.5)
    x = 1.5 * torch.randn(3, 2, 6, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return seq, x


def _recompute():
    torch.manual_seed(0)
    inner = nn.Sequential(conv_branch(3, lambda: LIF(2.0)), conv_branch(3, lambda: IF()))
    mod = Recompute(inner).double()
    x = 1.5 * torch.randn(3, 2, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return mod, x


def _zoo(name, **overrides):
    def make():
        torch.manual_seed(0)
        model = build_model({**get_config(name), **overrides}).double()
        x = torch.rand(3, 2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
        return model, x
    return make


FAMILIES = {
    "revnet-sequence": lambda: _sequence(RevNetCoupling),
    "pararev-sequence": lambda: _sequence(ParaRevCoupling),
    "recompute": _recompute,
    "revsresnet-recompute-boundaries": _zoo("revsresnet-digits", recompute_boundaries=True),
    "pararevsnn-chunked-backward": _zoo("pararevsnn-digits", recompute_boundaries=True, backward_chunk=1),
    "trevsnn-columns": _zoo("trevsnn-digits", time_steps=3, blocks_per_level=2),
    "revlif-node": _zoo("revnode-digits"),
}


def _grads_with_hooks(model, x, scale):
    calls = {}

    def hook(name):
        def fn(g):
            calls[name] = calls.get(name, 0) + 1
            return g * scale
        return fn

    for name, p in model.named_parameters():
        p.register_hook(hook(name))
    out = model(x)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * w).sum().backward()
    return calls, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hook_fires_once_and_scales_once(family):
    model, x = FAMILIES[family]()
    twin = plain_twin(model)
    calls, grads = _grads_with_hooks(model, x, 2.0)
    twin_calls, twin_grads = _grads_with_hooks(twin, x, 1.0)
    reached = [n for n, g in twin_grads.items() if g is not None and g.abs().sum() > 0]
    assert len(reached) >= 4, "the comparison would be vacuous"
    for name in twin_grads:
        assert calls.get(name, 0) == twin_calls.get(name, 0) <= 1, (name, calls.get(name), twin_calls.get(name))
    for name in reached:
        assert calls[name] == 1, name
        torch.testing.assert_close(grads[name], 2.0 * twin_grads[name], rtol=1e-9, atol=1e-12, msg=name)
