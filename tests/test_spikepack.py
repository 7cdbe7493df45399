"""Spikes saved as bits in the reversible recompute (issue 18, Deliver 3): exact, and fewer bytes at the
backward's peak by the allocator."""

import torch
from torch import nn

from revsnn.blocks import conv_branch
from revsnn.layers import TimeDistributed
from revsnn.memory import memory_per_sample
from revsnn.neurons import IF
from revsnn.reversible import Recompute, RevNetCoupling, ReversibleSequence, plain_twin
from revsnn.spikepack import pack_bits, spikes_as_bits, unpack_bits


def test_pack_roundtrip_exact_and_small():
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(3, 5, 7, 11, generator=g) > 0.6).float()  # 1155 elements: not a multiple of 8
    p = pack_bits(s)
    assert p.bits.dtype == torch.uint8 and p.bits.numel() == (s.numel() + 7) // 8
    back = unpack_bits(p)
    assert back.dtype == s.dtype and back.shape == s.shape and torch.equal(back, s)
    assert torch.equal(unpack_bits(pack_bits(s.double())), s.double())


def test_only_binary_tensors_are_packed_and_gradients_unchanged():
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    spikes = (torch.rand(8, 4, 16, 16, generator=g) > 0.5).float().requires_grad_(True)
    reals = torch.randn(8, 4, 16, 16, generator=g, requires_grad=True)

    def grads(ctx):
        with ctx:
            out = conv(spikes * 1.0) + conv(reals)
        (out * out).sum().backward()
        result = [t.grad.clone() for t in (spikes, reals, conv.weight)]
        for t in (spikes, reals, conv.weight):
            t.grad = None
        return result

    plain = grads(torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t))
    compressed = grads(spikes_as_bits())
    for a, b in zip(plain, compressed):
        assert torch.equal(a, b)


def _branch_seq(n):
    torch.manual_seed(0)
    return ReversibleSequence([RevNetCoupling(conv_branch(4, IF), conv_branch(4, IF)) for _ in range(n)])


def test_bits_lower_the_reversible_peak_and_keep_gradients():
    x = torch.rand(2, 4, 8, 8, 8)

    def run(pack):
        model = _branch_seq(2)
        for m in model.modules():
            if isinstance(m, (ReversibleSequence, Recompute)):
                m.pack_spikes = pack
        model(x.clone().requires_grad_(True)).square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        per = memory_per_sample(model.train(), lambda b: torch.rand(2, b, 8, 8, 8), (2, 4))
        return grads, per

    g_bits, bits = run(True)
    g_float, floats = run(False)
    for a, b in zip(g_bits, g_float):
        assert torch.equal(a, b)
    stream = 2 * 4 * 8 * 8 * 4  # one stream tensor per sample, T = 2, float32
    # the recompute of one branch saves two spike tensors (each convolution's input); at the peak (inside
    # the second convolution's backward) one of them is alive, and it is 32x smaller as bits
    assert floats["peak"] - bits["peak"] >= 0.75 * stream, (floats, bits)
    twin = memory_per_sample(plain_twin(_branch_seq(2)).train(), lambda b: torch.rand(2, b, 8, 8, 8), (2, 4))
    assert bits["peak"] < twin["peak"]
