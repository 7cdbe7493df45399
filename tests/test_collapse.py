"""Collapse + reference executor against the training model's own forward (DESIGN §3, §6)."""

import nir
import numpy as np
import pytest
import torch
from torch import nn

from revsnn.testing import trained_like
from revsnn.exporters.collapse import collapse
from revsnn.neurons import SpikingNeuron
from revsnn.targets.reference import ReferenceExecutor


def model_trace(model: nn.Module, x: torch.Tensor):
    """Every neuron module's spikes [T, B, ...], and the head's per-step logits [T, B, K]."""
    spikes, hooks = {}, []
    names = {id(m): n for n, m in model.named_modules()}
    for m in model.modules():
        if isinstance(m, SpikingNeuron):
            hooks.append(m.register_forward_hook(lambda mod, i, o: spikes.__setitem__(names[id(mod)], o)))
    head_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    per_step = []
    hooks.append(head_linear.register_forward_hook(lambda mod, i, o: per_step.append(o)))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    T, B = x.shape[:2]
    return spikes, per_step[0].reshape(T, B, -1), logits


@pytest.mark.parametrize("name", ["revsresnet-digits", "pararevsnn-digits"])
@pytest.mark.parametrize("recompute", [False, True])
def test_reference_executor_equals_training_forward(name, recompute):
    model = trained_like(name, planes=[4, 6], blocks=[2, 1], recompute_boundaries=recompute)
    T = 5
    x = torch.rand(T, 6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    spikes, per_step, logits = model_trace(model, x)

    collapsed = collapse(model, T)
    graph = collapsed.graph
    assert {type(n).__name__ for n in graph.nodes.values()} <= {
        "Input", "Output", "Conv2d", "AvgPool2d", "Flatten", "Affine", "Linear", "IF", "LIF"}
    out, rec = ReferenceExecutor(graph).run(x, record=True)

    # Every neuron population of the graph reproduces its module's spikes, exactly.
    assert set(rec) == set(collapsed.populations)
    covered = {}
    for node, (module, c0, c1) in collapsed.populations.items():
        assert torch.equal(rec[node], spikes[module][:, :, c0:c1]), node
        covered.setdefault(module, 0)
        covered[module] += c1 - c0
    for module, s in spikes.items():
        assert covered[module] == s.shape[2], module  # every channel of every neuron module is in the graph
    assert sum(s.sum().item() for s in spikes.values()) > 0
    torch.testing.assert_close(out, per_step, rtol=0, atol=1e-9)
    torch.testing.assert_close(out.mean(0), logits, rtol=0, atol=1e-9)
    assert torch.equal(out.mean(0).argmax(1), logits.argmax(1))


def test_graph_is_valid_nir_with_contract_metadata():
    collapsed = collapse(trained_like("revsresnet-digits", planes=[2, 3]), 4)
    g = collapsed.graph
    assert g.metadata["dt"] == 1.0 and g.metadata["reset"] == "hard" and g.metadata["readout"] == "mean"
    checked = nir.NIRGraph(nodes=g.nodes, edges=g.edges, metadata=g.metadata, type_check=True)
    assert list(checked.output_type.values())[0].tolist() == [10]
    for node in g.nodes.values():
        if isinstance(node, nir.IF):
            assert np.all(node.r == 1.0) and np.all(node.v_reset == 0.0)


def test_fan_in_replaces_additions():
    collapsed = collapse(trained_like("revsresnet-digits", planes=[2, 3], blocks=[2, 1]), 4)
    fan_in = {}
    for src, dst in collapsed.graph.edges:
        fan_in[dst] = fan_in.get(dst, 0) + 1
    # Block 2's G neuron reads Y1 = stem half + F1 + F2: three edges, no add node.
    g_neuron = "stages_0_blocks_1_G_0"
    assert fan_in[g_neuron] == 3
    assert {src for src, dst in collapsed.graph.edges if dst == g_neuron} == {
        "stem_0_out0_2", "stages_0_blocks_0_F_4", "stages_0_blocks_1_F_4"}  # stem's first half, F1's and F2's conv


def test_revsformer_collapses_with_our_attention_node(tmp_path):
    """RevSFormer's graph: NIR nodes plus our own SpikingAttention and MaxPool2d, equal to the model; the NIR
    writer and the norse target refuse it, pointing to ONNX."""
    from revsnn.exporters.nir_file import NIRFileError, write_nir
    from revsnn.targets.norse import NorseTarget
    from revsnn.targets.reference import UnsupportedNodeError

    # scale 1 and larger BatchNorm gains and shifts: at this toy width the attention neurons must spike
    model = trained_like("revsformer-digits", dim=8, heads=2, depth=2, scale=1.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.mul_(2.0)
                m.bias.add_(1.0)
    T = 4
    x = torch.rand(T, 5, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.5
    spikes, per_step, logits = model_trace(model, x)
    collapsed = collapse(model, T)
    kinds = {type(n).__name__ for n in collapsed.graph.nodes.values()}
    assert {"SpikingAttention", "MaxPool2d", "Conv1d", "LIF"} <= kinds
    out, rec = ReferenceExecutor(collapsed.graph).run(x, record=True)
    attention = [n for n in collapsed.populations if n.endswith("attention")]
    assert len(attention) == 2
    for node, (module, c0, c1) in collapsed.populations.items():
        assert torch.equal(rec[node], spikes[module][:, :, c0:c1]), node
    assert all(rec[n].sum() > 0 for n in attention)
    torch.testing.assert_close(out, per_step, rtol=0, atol=1e-9)
    assert torch.equal(out.mean(0).argmax(1), logits.argmax(1))

    with pytest.raises(NIRFileError, match="ONNX"):
        write_nir(collapsed.graph, tmp_path / "former.nir")
    assert not (tmp_path / "former.nir").exists()
    with pytest.raises(UnsupportedNodeError, match="SpikingAttention|MaxPool2d"):
        NorseTarget.load(collapsed.graph)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reference_executor_on_cuda_equals_cpu():
    model = trained_like("revsresnet-digits", planes=[4, 6], blocks=[2, 1])
    x = torch.rand(4, 6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    graph = collapse(model, 4).graph
    out_cpu, rec_cpu = ReferenceExecutor(graph).run(x, record=True)
    out_gpu, rec_gpu = ReferenceExecutor(graph, device="cuda").run(x, record=True)
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=0, atol=1e-9)
    for node in rec_cpu:
        assert torch.equal(rec_gpu[node].cpu(), rec_cpu[node]), node
