"""Memory flat in depth by the allocator (issue 18, Deliver 2 / Acceptance): bytes alive when backward
starts and the peak over forward + backward, per sample, measured from the allocator's own events
(``revsnn.memory.memory_per_sample``), not by the saved-tensor meter."""

import pytest
import torch
from torch import nn

from revsnn.blocks import conv_branch
from revsnn.layers import TimeDistributed
from revsnn.memory import memory_per_sample, step_memory
from revsnn.models.revnode import RevLIFNode
from revsnn.models.resnet import RevSResNet
from revsnn.models.trev import TRevSNN
from revsnn.neurons import IF, LIF
from revsnn.reversible import ParaRevCoupling, Recompute, RevNetCoupling, ReversibleSequence, plain_twin

T, C, HW = 2, 4, 6


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _sequence(coupling, n):
    torch.manual_seed(0)
    return ReversibleSequence([coupling(conv_branch(C, lambda: LIF(2.0)), conv_branch(C, IF)) for _ in range(n)])


def _trev(n):
    torch.manual_seed(0)
    return TRevSNN([1, HW, HW], 3, channels=(4, 4), time_steps=T, blocks_per_level=n, stem=[[3, 1]],
                   level_strides=[1])


def _resnet(n, chunk=None):
    # Boundaries recomputed: the stage sequences then receive their gradient from a Recompute (owned, and
    # accumulated into in place), a path the bare sequences above do not take.
    torch.manual_seed(0)
    return RevSResNet((1, HW, HW), 3, planes=(2, 3), blocks=(n, n), recompute_boundaries=True, backward_chunk=chunk)


def _per_sample(model, shape):
    return memory_per_sample(model.train(), lambda b: torch.rand(T, b, *shape), (2, 4))


FAMILIES = {  # name: (builder of depth n, input shape of one step, the two depths)
    "revnet": (lambda n: _sequence(RevNetCoupling, n), (2 * C, HW, HW), (1, 4)),
    "pararev": (lambda n: _sequence(ParaRevCoupling, n), (2 * C, HW, HW), (1, 4)),
    "trevsnn-columns": (_trev, (1, HW, HW), (1, 3)),
    "revsresnet-recompute-boundaries": (_resnet, (1, HW, HW), (1, 3)),
    # The chunked backward (one sample a chunk; batch 2 -> 4, so both steps run several chunks).
    # From two blocks a stage: the forward is its peak at this size, and a stage of one block holds one stream
    # less there (its block reads the caller's input in place of a stream of its own; the twin grows anyway).
    "revsresnet-chunked-backward": (lambda n: _resnet(n, chunk=1), (1, HW, HW), (2, 3)),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reversible_flat_twin_growing(family):
    build, shape, (small, large) = FAMILIES[family]
    rev = {n: _per_sample(build(n), shape) for n in (small, large)}
    twin = {n: _per_sample(plain_twin(build(n)), shape) for n in (small, large)}
    # T-RevSNN included: its backward recomputes a level block by block (models/trev.py _LevelBackward),
    # so its peak is one block's graph whatever the blocks per level.
    for key in ("retained", "peak"):
        assert rev[small][key] > 0
        assert abs(rev[large][key] / rev[small][key] - 1) <= 0.05, (key, rev)
        assert twin[large][key] > 1.3 * twin[small][key], (key, twin)
        assert rev[large][key] < twin[large][key]
    assert rev[large]["neuron_state"] == 0  # no membrane is kept once the forward is done


def test_recompute_keeps_only_its_input():
    """Recompute keeps its input and nothing else, however deep the module it wraps."""
    shape = (C, HW, HW)
    retained = {}
    for n in (1, 4):
        torch.manual_seed(0)
        inner = nn.Sequential(*[conv_branch(C, IF) for _ in range(n)])
        per = _per_sample(nn.Sequential(Recompute(inner), TimeDistributed(nn.Flatten())), shape)
        twin = _per_sample(plain_twin(nn.Sequential(Recompute(inner), TimeDistributed(nn.Flatten()))), shape)
        retained[n] = per["retained"]
        assert per["neuron_state"] == 0
        assert twin["retained"] > 2 * per["retained"]
    input_bytes = T * C * HW * HW * 4
    assert retained[1] == retained[4] == pytest.approx(input_bytes, rel=0.01)  # the input alone


def test_revlif_node_keeps_bits_not_floats_per_step():
    """The RevLIF node keeps its output (which the next layer keeps anyway, same storage), the final
    state and one bit per neuron and step; its BPTT twin keeps a float per neuron and step beyond that."""
    def retained(reversible, steps):
        torch.manual_seed(0)
        net = nn.Sequential(RevLIFNode(2.0, 1.0, reversible=reversible), TimeDistributed(nn.Linear(64, 4)))
        x = 3 * torch.rand(steps, 8, 64)
        return step_memory(net, lambda: x.clone().requires_grad_(True))["retained"]

    per_step = 8 * 64 * 4  # one float per neuron and step
    rev = retained(True, 16) - retained(True, 4)
    twin = retained(False, 16) - retained(False, 4)
    # Both keep the input (a leaf that requires grad: autograd holds it) and the output the Linear keeps.
    assert rev <= 12 * (2 * per_step + 8 * 64 / 8) + 64  # ... and the spike bits of 12 more steps
    assert twin >= 12 * 3 * per_step                      # ... and h - theta, a float per neuron and step
