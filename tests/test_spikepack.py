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


def _grads_under(net, x, ctx):
    """The input and parameter gradients of one step of ``net`` with its forward under ``ctx``."""
    from revsnn.neurons import reset_states

    net.zero_grad(set_to_none=True)
    reset_states(net)
    leaf = x.clone().requires_grad_(True)
    with ctx:
        out = net(leaf)
    out.square().sum().backward()
    return [leaf.grad, *[p.grad for p in net.parameters()]]


def test_spikes_of_kept_membranes_are_kept_as_a_reference_and_recomputed_exactly():
    # conv -> BN -> IF -> conv: the neuron keeps its membranes (its input is a BatchNorm's output), so the
    # second convolution's saved input (the spikes) is kept as nothing but a reference to them and
    # recomputed on use; what backward computes is the same to the bit as without any hooks.
    from revsnn import spikepack

    torch.manual_seed(3)
    net = nn.Sequential(TimeDistributed(nn.Conv2d(4, 4, 3, padding=1)), TimeDistributed(nn.BatchNorm2d(4)),
                        IF(v_threshold=0.5), TimeDistributed(nn.Conv2d(4, 4, 3, padding=1)))
    x = torch.randn(3, 2, 4, 6, 6)

    kinds = []
    original = spikepack._derived

    def counting(t):
        d = original(t)
        kinds.append(type(d).__name__)
        return d

    spikepack._derived = counting
    try:
        derived = _grads_under(net, x, spikes_as_bits())
    finally:
        spikepack._derived = original
    plain = _grads_under(net, x, torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t))
    assert kinds == ["_Derived"]  # the one binary tensor saved: the second convolution's input
    for a, b in zip(derived, plain):
        assert torch.equal(a, b)


def test_recomputed_spikes_refuse_modified_membranes():
    from revsnn.spikepack import _derived, _unpack, mark_binary

    from revsnn.spikepack import FromMembranes

    h = torch.randn(2, 3, 4)
    s = mark_binary((h > 0.1).float(), FromMembranes(h, 0.1))
    view = s.view(6, 4)
    view.requires_grad_(False)
    d = _derived(view)
    assert d is not None and torch.equal(_unpack(d), view)
    h.add_(1.0)
    try:
        _unpack(d)
    except RuntimeError as e:
        assert "modified in place" in str(e)
    else:
        raise AssertionError("a spike tensor was recomputed from membranes changed after it was saved")
    assert _derived(view) is None  # a stale source is packed as bits instead


def test_spikes_of_a_neuron_that_kept_its_input_are_replayed_once_for_both_backwards():
    # IF -> conv: the neuron keeps its input (not a BatchNorm's output), so its spikes, the convolution's
    # saved input, are made again by one run of the recurrence, whose membranes the neuron's backward then
    # takes instead of running it itself: two runs in all, as without hooks, and the same numbers.
    from revsnn import neurons, spikepack

    torch.manual_seed(4)
    net = nn.Sequential(IF(v_threshold=0.5), TimeDistributed(nn.Conv2d(4, 4, 3, padding=1)))
    x = torch.randn(3, 2, 4, 6, 6)
    runs, kinds = [], []
    run_original, derived_original = neurons._FusedLIF._run, spikepack._derived

    def counting_run(*args, **kwargs):
        runs.append(kwargs.get("keep", args[-1] if len(args) > 5 else None))
        return run_original(*args, **kwargs)

    def counting_derived(t):
        d = derived_original(t)
        kinds.append(type(getattr(d, "source", None)).__name__)
        return d

    neurons._FusedLIF._run, spikepack._derived = staticmethod(counting_run), counting_derived
    try:
        replayed = _grads_under(net, x, spikes_as_bits())
        replay_runs = list(runs)
        runs.clear()
        plain = _grads_under(net, x, torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t))
    finally:
        neurons._FusedLIF._run, spikepack._derived = staticmethod(run_original), derived_original
    assert kinds == ["_Replay"]
    assert replay_runs == ["spikes", "both"] and runs == ["spikes", "membranes"]
    for a, b in zip(replayed, plain):
        assert torch.equal(a, b)


def test_packing_is_per_thread():
    # A forward in another thread while this one packs attaches no spike source: hooks are per thread.
    import threading

    from revsnn.spikepack import packing

    seen = []
    with spikes_as_bits():
        assert packing()
        worker = threading.Thread(target=lambda: seen.append(packing()))
        worker.start()
        worker.join()
    assert seen == [False] and not packing()
