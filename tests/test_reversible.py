"""The reversible core against its plain-autograd twin (DESIGN §5), in float64 on CPU."""

import copy

import pytest
import torch
from torch import nn

from revsnn.blocks import conv_branch
from revsnn.layers import TimeDistributed
from revsnn.memory import activation_bytes
from revsnn.neurons import IF, LIF, get_states, neurons_of, reset_states
from revsnn.reversible import ParaRevCoupling, RevNetCoupling, ReversibleSequence, plain_twin

COUPLINGS = {"revnet": RevNetCoupling, "para": ParaRevCoupling}
NEURONS = {"lif": lambda: LIF(tau=2.0), "if": lambda: IF()}


def make_sequence(n_blocks: int, coupling: str = "revnet", neuron: str = "lif", c: int = 3,
                  dropout: float = 0.0, seed: int = 0) -> ReversibleSequence:
    torch.manual_seed(seed)
    make = NEURONS[neuron]
    blocks = [COUPLINGS[coupling](conv_branch(c, make, dropout), conv_branch(c, make, dropout))
              for _ in range(n_blocks)]
    seq = ReversibleSequence(blocks).double()
    # BatchNorm gains large enough that every neuron population spikes, even a LIF at T = 1.
    with torch.no_grad():
        for m in seq.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(2.5)
    return seq


def run(seq: nn.Module, x: torch.Tensor, w: torch.Tensor, seed: int = 1):
    torch.manual_seed(seed)
    x = x.clone().requires_grad_(True)
    out = seq(x)
    (out * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in seq.named_parameters()}
    return out.detach(), x.grad.clone(), grads


def inputs(T: int, c: int = 3, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(T, 2, 2 * c, 5, 5, generator=g, dtype=torch.float64)
    w = torch.randn(T, 2, 2 * c, 5, 5, generator=g, dtype=torch.float64)
    return x, w


def spike_count(seq: nn.Module, x: torch.Tensor) -> float:
    """(fewest, total) spikes over the neuron populations, in a no-grad forward of a copy."""
    seq = copy.deepcopy(seq)
    counts = []
    for n in neurons_of(seq):
        n.register_forward_hook(lambda m, i, o: counts.append(o.sum().item()))
    with torch.no_grad():
        seq(x)
    return min(counts), sum(counts)


@pytest.mark.parametrize("coupling", ["revnet", "para"])
@pytest.mark.parametrize("neuron", ["lif", "if"])
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("n_blocks", [1, 2, 4])
def test_gradients_equal_plain_twin(coupling, neuron, T, n_blocks):
    rev = make_sequence(n_blocks, coupling, neuron)
    twin = plain_twin(rev)
    x, w = inputs(T)
    least, _ = spike_count(rev, x)
    assert least > 0, "a neuron population never spiked: the comparison would be vacuous"

    out_r, dx_r, grads_r = run(rev, x, w)
    out_p, dx_p, grads_p = run(twin, x, w)

    assert torch.equal(out_r, out_p)
    torch.testing.assert_close(dx_r, dx_p, rtol=1e-9, atol=1e-12)
    assert grads_r.keys() == grads_p.keys()
    for name in grads_r:
        assert grads_p[name].abs().sum() > 0, name
        torch.testing.assert_close(grads_r[name], grads_p[name], rtol=1e-9, atol=1e-12, msg=name)
    # BatchNorm running statistics after one training step: the recompute must not update them again.
    for (name, b_r), (_, b_p) in zip(rev.named_buffers(), twin.named_buffers()):
        assert torch.equal(b_r, b_p), name


def test_batchnorm_updated_once():
    rev = make_sequence(2)
    twin = plain_twin(rev)
    x, w = inputs(4)
    run(rev, x, w)
    run(twin, x, w)
    for m_r, m_p in zip(rev.modules(), twin.modules()):
        if isinstance(m_r, nn.BatchNorm2d):
            assert m_r.num_batches_tracked.item() == 1 == m_p.num_batches_tracked.item()
            torch.testing.assert_close(m_r.running_mean, m_p.running_mean, rtol=0, atol=0)
            torch.testing.assert_close(m_r.running_var, m_p.running_var, rtol=0, atol=0)


def test_input_is_reconstructed():
    rev = make_sequence(4, "para")
    x, _ = inputs(4)
    rev.eval()
    with torch.no_grad():
        y = rev(x)
        reset_states(rev)
        x_hat = rev.inverse(y)
    assert (x_hat - x).abs().max() < 1e-12


def test_neuron_state_restored_and_repeatable():
    rev = make_sequence(2)
    twin = plain_twin(rev)
    x, w = inputs(4)
    first = run(rev, x, w)
    run(twin, x, w)
    # By default the reversible forward keeps no per-block membrane: its neurons end at rest.
    assert all(v is None for v in get_states(rev))
    # With keep_state the recompute leaves every membrane exactly where the forward left it, like the twin's.
    kept = copy.deepcopy(rev)
    kept.keep_state = True
    run(kept, x, w)
    for v_r, v_p in zip(get_states(kept), get_states(twin)):
        assert v_r is not None and torch.equal(v_r, v_p)
    # ... so a long input fed in two chunks continues from the first chunk's membranes, as the twin does.
    for m in (kept, twin):
        reset_states(m)
    outs = [[m(part) for part in x.chunk(2)] for m in (kept, twin)]
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    reset_states(rev)
    assert all(v is None for v in get_states(rev))
    for p in rev.parameters():
        p.grad = None
    second = run(rev, x, w)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])
    for name in first[2]:
        assert torch.equal(first[2][name], second[2][name]), name


@pytest.mark.parametrize("coupling", ["revnet", "para"])
def test_dropout_needs_rng_restore(coupling):
    rev = make_sequence(2, coupling, dropout=0.3)
    twin = plain_twin(rev)
    x, w = inputs(4)
    _, dx_r, grads_r = run(rev, x, w)
    _, dx_p, grads_p = run(twin, x, w)
    torch.testing.assert_close(dx_r, dx_p, rtol=1e-9, atol=1e-12)
    for name in grads_r:
        torch.testing.assert_close(grads_r[name], grads_p[name], rtol=1e-9, atol=1e-12, msg=name)

    # Negative control: without restoring the RNG the recompute draws other masks.
    careless = make_sequence(2, coupling, dropout=0.3)
    careless.preserve_rng = False
    _, dx_c, _ = run(careless, x, w)
    assert not torch.allclose(dx_c, dx_p, rtol=1e-6, atol=1e-9)


class SmoothLIF(LIF):
    """A LIF whose spike is a sigmoid, so finite differences are meaningful (gradcheck only)."""

    def step(self, x, v):
        h = v + (x - v) / self.tau
        s = torch.sigmoid(3.0 * (h - self.v_threshold))
        return s, h * (1.0 - s), h


@pytest.mark.parametrize("coupling", ["revnet", "para"])
def test_gradcheck_with_smooth_spikes(coupling):
    torch.manual_seed(0)
    blocks = []
    for _ in range(2):
        def branch():
            return nn.Sequential(SmoothLIF(tau=2.0), TimeDistributed(nn.Linear(2, 2)),
                                 TimeDistributed(nn.BatchNorm1d(2)), nn.Tanh())
        blocks.append(COUPLINGS[coupling](branch(), branch()))
    seq = ReversibleSequence(blocks).double()
    x = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    params = list(seq.parameters())

    def f(x, *ps):
        reset_states(seq)
        return seq(x)

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_activation_memory_flat_in_depth():
    x, w = inputs(4)
    rev_bytes, plain_bytes = {}, {}
    for n in (1, 2, 4, 8):
        rev = make_sequence(n)
        twin = plain_twin(rev)
        rev_bytes[n] = activation_bytes(rev, x.clone().requires_grad_(True), loss_fn=lambda o: (o * w).sum())
        plain_bytes[n] = activation_bytes(twin, x.clone().requires_grad_(True), loss_fn=lambda o: (o * w).sum())
    assert len(set(rev_bytes.values())) == 1, rev_bytes
    step = plain_bytes[2] - plain_bytes[1]
    assert step > 0
    assert plain_bytes[4] - plain_bytes[2] == 2 * step
    assert plain_bytes[8] - plain_bytes[4] == 4 * step
    assert rev_bytes[1] < plain_bytes[1]


def test_parallel_schedule_equals_serial():
    """ParaRevSNN's parallel schedule (G_k beside F_{k+1}) gives bit-identical results, dropout included."""
    par = make_sequence(4, "para", dropout=0.2)
    ser = copy.deepcopy(par)
    ser.parallel_schedule = False
    assert par.parallel_schedule
    x, w = inputs(3)
    out_p, dx_p, g_p = run(par, x, w)
    out_s, dx_s, g_s = run(ser, x, w)
    assert torch.equal(out_p, out_s) and torch.equal(dx_p, dx_s)
    for name in g_p:
        assert torch.equal(g_p[name], g_s[name]), name
    for (name, b_p), (_, b_s) in zip(par.named_buffers(), ser.named_buffers()):
        assert torch.equal(b_p, b_s), name
    assert not make_sequence(2, "revnet").parallel_schedule  # RevNet couplings are serial by nature


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parallel_schedule_on_cuda_streams():
    par = make_sequence(4, "para").cuda()
    ser = copy.deepcopy(par)
    ser.use_streams = False
    x, w = inputs(3)
    x, w = x.cuda(), w.cuda()
    out_p, dx_p, g_p = run(par, x, w)
    out_s, dx_s, g_s = run(ser, x, w)
    assert torch.equal(out_p, out_s)
    torch.testing.assert_close(dx_p, dx_s, rtol=1e-12, atol=1e-14)
    for name in g_p:
        torch.testing.assert_close(g_p[name], g_s[name], rtol=1e-12, atol=1e-14)


def test_owned_gradient_is_accumulated_into_and_others_are_not_written(monkeypatch):
    """A gradient our Recompute returned is the stream accumulators themselves (no copies, issue 18); a
    gradient from anywhere else (here the user's, kept by a hook) is never written. Both give the twin's
    gradients (independent truth: plain autograd)."""
    import revsnn.reversible as rv
    from revsnn.reversible import Recompute

    seen = []
    real = rv._backward_serial
    monkeypatch.setattr(rv, "_backward_serial", lambda *a: seen.append(a[-1]) or real(*a))

    def build():
        torch.manual_seed(0)
        seq = ReversibleSequence([RevNetCoupling(conv_branch(2, IF), conv_branch(2, IF)) for _ in range(2)])
        return nn.Sequential(seq, Recompute(nn.Sequential(IF(), nn.Flatten(2)))).double()

    x = torch.rand(3, 2, 4, 5, 5, dtype=torch.float64) * 3
    w = torch.randn(3, 2, 4 * 25, dtype=torch.float64)
    results = []
    for model in (build(), plain_twin(build())):
        xi = x.clone().requires_grad_(True)
        ((model(xi) * w).sum()).backward()
        results.append((xi.grad, [p.grad for p in model.parameters()]))
    assert seen == [True]
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    seen.clear()
    model = build()
    kept = []
    xi = x.clone().requires_grad_(True)
    h = model[0](xi)
    h.register_hook(lambda g: kept.append((g, g.clone())) or None)
    ((model[1](h) * w).sum()).backward()
    assert seen == [False] and torch.equal(kept[0][0], kept[0][1])


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_random_stream_after_backward_is_the_twins(dropout):
    # A recompute sets the RNG to what its forward saw and restores it after, only where that forward drew
    # random numbers (dropout); without any, it touches no RNG. Either way the numbers drawn after a
    # training step are the plain twin's: the recompute neither consumes nor replays the stream.
    seq = make_sequence(2, dropout=dropout)
    twin = plain_twin(seq)
    x = torch.randn(2, 2, 6, 5, 5, dtype=torch.float64)
    w = torch.randn(2, 2, 6, 5, 5, dtype=torch.float64)
    after = []
    for model in (seq, twin):
        reset_states(model)
        out, dx, _ = run(model, x, w, seed=7)
        after.append((dx, torch.rand(4)))
    (dx_r, drawn_r), (dx_p, drawn_p) = after
    torch.testing.assert_close(dx_r, dx_p, rtol=1e-9, atol=1e-12)
    assert torch.equal(drawn_r, drawn_p)
