"""Collapsing the reversible-node network (family ``revnode``) into NIR primitives with Delay feedback.

What is compared: the reference executor's per-step output (the head Linear's output per step) and its
mean-over-time prediction against the model, and each Threshold population's spikes against the RevLIF
module's spikes ``s_t``. The module returns ``y_t = s_t + d_t``, not ``s_t``, so a forward hook recomputes
``s_t`` from the module's input with ``revlif_step`` (the very step function the model runs).
"""

import nir
import numpy as np
import pytest
import torch

from revsnn.exporters.collapse import collapse
from revsnn.exporters.nir_file import write_nir
from revsnn.models import build_model
from revsnn.models.revnode import RevLIFNode, revlif_step
from revsnn.targets.norse import NorseTarget
from revsnn.targets.reference import ReferenceExecutor, UnsupportedNodeError


def _model(seed=0):
    torch.manual_seed(seed)
    m = build_model("revnode-digits").double().eval()
    with torch.no_grad():  # trained-like scale: both layers spike at a moderate rate
        for p in m.parameters():
            p.mul_(3.0)
    return m


def _trace(model, x):
    names = {id(m): n for n, m in model.named_modules()}
    spikes, steps, hooks = {}, [], []

    def hook(mod, inp, out):
        v, ss = torch.zeros_like(inp[0][0]), []
        for xt in inp[0]:
            y, v, s, _ = revlif_step(xt, v, mod.tau, mod.v_threshold, mod.surrogate, mod.detach_reset)
            ss.append(s)
        spikes[names[id(mod)]] = torch.stack(ss)

    for m in model.modules():
        if isinstance(m, RevLIFNode):
            hooks.append(m.register_forward_hook(hook))
    hooks.append(model.head.register_forward_hook(lambda mod, i, o: steps.append(o)))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    T, B = x.shape[:2]
    return spikes, steps[0].reshape(T, B, -1), logits


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.mark.parametrize("T", [1, 4, 8])
def test_reference_and_norse_reproduce_the_model(model, tmp_path, T):
    x = 2.0 * torch.rand(T, 6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(T))
    collapsed = collapse(model, T)
    graph = collapsed.graph
    assert graph.metadata["readout"] == "mean" and graph.metadata["family"] == "revnode"
    assert any(isinstance(n, nir.Delay) for n in graph.nodes.values())
    assert not any(isinstance(n, (nir.LIF, nir.IF)) for n in graph.nodes.values())
    want_spikes, want_steps, logits = _trace(model, x)

    ref = ReferenceExecutor(graph)
    outs, spikes = ref.run(x, record=True)
    assert float((outs - want_steps).abs().max()) <= 1e-9
    assert torch.equal(outs.mean(0).argmax(1), logits.argmax(1))
    assert float((outs.mean(0) - logits).abs().max()) <= 1e-9
    assert sorted(m for m, _, _ in collapsed.populations.values()) == ["features.2", "features.4"]
    for node, (mod, c0, c1) in collapsed.populations.items():
        assert torch.equal(spikes[node], want_spikes[mod][..., c0:c1]), node
        if T >= 4:
            assert 0.02 < float(spikes[node].mean()) < 0.9, node  # the neurons do spike

    path = write_nir(graph, tmp_path / "revnode.nir")
    target = NorseTarget.load(path, dtype=torch.float64)
    n_outs, n_spikes = target.run(x, record=True)
    assert float((n_outs - outs).abs().max()) <= 1e-9
    for node in collapsed.populations:
        assert torch.equal(n_spikes[node], spikes[node]), node
    again = target.run(x)  # reset clears the feedback FIFOs
    assert torch.equal(again, n_outs)


def _cyclic(delay):
    n = 3
    nodes = {"input": nir.Input(np.array([n])), "fc": nir.Linear(weight=np.eye(n)),
             "h": nir.Scale(scale=np.full(n, 0.5)), "s": nir.Threshold(threshold=np.full(n, 1.0)),
             "fb": nir.Scale(scale=np.full(n, -1.0)), "output": nir.Output(np.array([n]))}
    edges = [("input", "fc"), ("fc", "h"), ("h", "s"), ("s", "output")]
    if delay is None:
        edges += [("s", "fb"), ("fb", "h")]
    else:
        nodes["d"] = nir.Delay(delay=np.full(n, float(delay)))
        edges += [("s", "d"), ("d", "fb"), ("fb", "h")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


@pytest.mark.parametrize("delay", [None, 0])
def test_cycle_without_a_delay_is_refused(delay):
    graph = _cyclic(delay)
    with pytest.raises(UnsupportedNodeError, match="cycle that passes through no Delay"):
        ReferenceExecutor(graph)
    with pytest.raises(UnsupportedNodeError, match="cycle that passes through no Delay"):
        NorseTarget(graph, dtype=torch.float64)


def test_cycle_through_delay_matches_hand_computation():
    graph = _cyclic(1)
    x = torch.tensor([[[3.0, 1.0, 2.5]]] * 4, dtype=torch.float64)  # [T=4, B=1, 3]
    outs = ReferenceExecutor(graph).run(x)
    # h_t = 0.5 (x - s_{t-1}); s_t = h_t > 1
    s, want = torch.zeros(1, 3, dtype=torch.float64), []
    for xt in x:
        s = ((0.5 * (xt - s)) > 1).double()
        want.append(s)
    assert torch.equal(outs, torch.stack(want))
    assert torch.equal(NorseTarget(graph, dtype=torch.float64).run(x), outs)
