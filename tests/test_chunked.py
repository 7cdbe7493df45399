"""The chunked (micro-batched) backward (revsnn.chunked, issue 18 Deliver 3) against the plain-autograd twin:
the same outputs, input gradients, parameter gradients and BatchNorm statistics in float64, with chunks that
do not divide the batch; what it refuses; and, by the allocator, a backward peak below the unchunked one."""

import pytest
import torch
from torch import nn

from revsnn.blocks import conv_branch
from revsnn.chunked import ChunkedBackwardError
from revsnn.errors import RevsnnError
from revsnn.layers import TimeDistributed
from revsnn.memory import memory_per_sample
from revsnn.models import build_model, get_config
from revsnn.neurons import IF, LIF, get_states
from revsnn.reversible import (ParaRevCoupling, Recompute, RevNetCoupling, ReversibleSequence, plain_twin,
                               set_backward_chunk)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BATCH = 3  # chunks of 2 leave one of 1


def _spread_batchnorms(model):
    # Gains and shifts away from 1 and 0, so that every BatchNorm term of the gradient counts.
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.copy_(0.5 + 2 * torch.rand(m.weight.shape, generator=g, dtype=m.weight.dtype))
                m.bias.copy_(0.6 * torch.rand(m.bias.shape, generator=g, dtype=m.bias.dtype) - 0.3)
    return model


def _step(model, x, w):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * w).sum().backward()
    return (out.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()},
            {n: b.clone() for n, b in model.named_buffers()})


def _assert_twin(model, twin, x, w):
    out, dx, grads, bufs = _step(model, x, w)
    out_p, dx_p, grads_p, bufs_p = _step(twin, x, w)
    torch.testing.assert_close(out, out_p, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx, dx_p, rtol=1e-9, atol=1e-12)
    assert grads.keys() == grads_p.keys()
    for name in grads_p:
        assert grads_p[name] is not None and grads_p[name].abs().sum() > 0, f"{name}: vacuous comparison"
        torch.testing.assert_close(grads[name], grads_p[name], rtol=1e-9, atol=1e-12, msg=name)
    for name in bufs_p:  # running statistics updated exactly once, as by the twin
        assert torch.equal(bufs[name], bufs_p[name]), name


@pytest.mark.parametrize("name", ["revsresnet-digits", "pararevsnn-digits"])
@pytest.mark.parametrize("chunk", [1, 2])
def test_zoo_model_equals_plain_twin(name, chunk):
    torch.manual_seed(0)
    model = build_model({**get_config(name), "recompute_boundaries": True, "backward_chunk": chunk}).double()
    _spread_batchnorms(model)
    twin = plain_twin(model)
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.rand(3, BATCH, 1, 8, 8, generator=g, dtype=torch.float64)
    w = torch.randn(BATCH, 10, generator=g, dtype=torch.float64)
    _assert_twin(model, twin, x, w)


def _sequence(coupling, chunk, keep_state=False):
    torch.manual_seed(0)
    blocks = [coupling(conv_branch(3, lambda: LIF(2.0)), conv_branch(3, IF)) for _ in range(2)]
    seq = ReversibleSequence(blocks, backward_chunk=chunk).double()
    seq.keep_state = keep_state
    return _spread_batchnorms(seq)


@pytest.mark.parametrize("coupling", [RevNetCoupling, ParaRevCoupling])
def test_sequence_from_membranes_left_by_an_earlier_chunk_of_time(coupling):
    """Entry membranes that are not at rest (a long input fed in two pieces, keep_state) are split with the
    samples; the second piece's gradients equal the twin's, membranes included."""
    seq = _sequence(coupling, 2, keep_state=True)
    twin = plain_twin(seq)
    g = torch.Generator().manual_seed(3)
    x = 1.5 * torch.randn(6, BATCH, 6, 5, 5, generator=g, dtype=torch.float64)
    w = torch.randn(3, BATCH, 6, 5, 5, generator=g, dtype=torch.float64)
    for m in (seq, twin):
        with torch.no_grad():
            m(x[:3])
    assert all(v is not None and v.shape[0] == BATCH for v in get_states(seq))
    _assert_twin(seq, twin, x[3:], w)
    for v, v_p in zip(get_states(seq), get_states(twin)):
        torch.testing.assert_close(v, v_p, rtol=0, atol=1e-12)


def test_recompute_with_unaffine_and_eval_batchnorm():
    """A BatchNorm without affine parameters, and one in eval mode (running statistics: per sample already,
    left as it is), inside a chunked Recompute."""
    torch.manual_seed(0)
    frozen = TimeDistributed(nn.BatchNorm2d(3))
    inner = nn.Sequential(TimeDistributed(nn.Conv2d(2, 3, 3, padding=1)), TimeDistributed(nn.BatchNorm2d(3, affine=False)),
                          LIF(2.0), frozen, TimeDistributed(nn.Conv2d(3, 3, 1)), TimeDistributed(nn.BatchNorm2d(3)),
                          TimeDistributed(nn.AvgPool2d(2)), TimeDistributed(nn.Flatten()), TimeDistributed(nn.Linear(12, 4)))
    model = Recompute(inner, chunk=2).double()
    with torch.no_grad():
        frozen.module.running_mean.uniform_(-0.5, 0.5)
        frozen.module.running_var.uniform_(0.5, 2.0)
    frozen.eval()
    twin = plain_twin(model)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, BATCH, 2, 4, 4, generator=g, dtype=torch.float64)
    w = torch.randn(3, BATCH, 4, generator=g, dtype=torch.float64)
    _assert_twin(model, twin, x, w)


def test_refuses_what_it_cannot_split():
    with pytest.raises(ChunkedBackwardError, match="dropout"):
        ReversibleSequence([RevNetCoupling(conv_branch(2, IF, dropout=0.1), conv_branch(2, IF))], backward_chunk=1)
    with pytest.raises(ChunkedBackwardError, match="LayerNorm"):
        Recompute(nn.Sequential(TimeDistributed(nn.Conv2d(2, 2, 1)), nn.LayerNorm(4)), chunk=1)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ChunkedBackwardError, match="backward_chunk"):
            Recompute(nn.Identity(), chunk=bad)
    with pytest.raises(RevsnnError):  # from a model config, too
        build_model({**get_config("revsresnet-digits"), "recompute_boundaries": True, "backward_chunk": 0})
    # A BatchNorm that runs twice in one function has two sets of statistics: refused at the forward.
    bn = TimeDistributed(nn.BatchNorm2d(2))
    twice = Recompute(nn.Sequential(bn, IF(), bn), chunk=1)
    with pytest.raises(ChunkedBackwardError, match="twice"):
        twice(torch.randn(2, 2, 2, 3, 3, requires_grad=True))
    # So does a neuron (its membranes are released as soon as it has run, for the forward's peak).
    sn = IF()
    twice = Recompute(nn.Sequential(sn, TimeDistributed(nn.Conv2d(2, 2, 1)), sn), chunk=1)
    with pytest.raises(ChunkedBackwardError, match="neuron runs twice"):
        twice(torch.randn(2, 2, 2, 3, 3, requires_grad=True))
    # Dropout that is off (p = 0) is fine, and chunking can be turned off again.
    seq = ReversibleSequence([RevNetCoupling(conv_branch(2, IF, dropout=0.0), conv_branch(2, IF))])
    set_backward_chunk(seq, 1)
    assert seq.backward_chunk == 1
    set_backward_chunk(seq, None)
    assert seq.backward_chunk is None
    # Setting the attribute checks too.
    with pytest.raises(ChunkedBackwardError, match="dropout"):
        ReversibleSequence([RevNetCoupling(conv_branch(2, IF, dropout=0.5), conv_branch(2, IF))]).backward_chunk = 2


def test_peak_below_the_unchunked_backward():
    """By the allocator, per sample (batch 2 -> 4, both above one chunk): the chunked backward's peak is below
    the unchunked one's and far below the twin's; retained bytes are unchanged (chunking is a backward
    matter). RevSResNet at 12 x 12, 8 channels a stream."""
    def build(chunk):
        torch.manual_seed(0)
        return build_model({**get_config("revsresnet-digits"), "input_shape": [1, 12, 12], "planes": [8, 8],
                            "recompute_boundaries": True, "backward_chunk": chunk})

    def per(model):
        return memory_per_sample(model.train(), lambda b: torch.rand(2, b, 1, 12, 12), (2, 4))

    chunked, whole, twin = per(build(1)), per(build(None)), per(plain_twin(build(None)))
    assert chunked["retained"] == whole["retained"]
    assert chunked["peak"] < 0.75 * whole["peak"], (chunked, whole)
    assert twin["peak"] > 3 * chunked["peak"]
    assert chunked["peak_at_batch_sizes"][0] > 0
    # The chunked steps' events never line up (twice the chunks at batch 4): the peak is compared op by op,
    # and stays above what is retained, as a peak must.
    for per_sample in (chunked, twin):
        assert per_sample["peak"] >= per_sample["retained"]
