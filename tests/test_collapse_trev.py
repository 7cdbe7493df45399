"""T-RevSNN collapse: one step is one column, delays carry earlier columns (DESIGN §3, §6)."""

import nir
import pytest
import torch
from torch import nn

from revsnn.testing import trained_like as base_trained_like
from revsnn.exporters.collapse import CollapseError, collapse
from revsnn.exporters.nir_file import write_nir
from revsnn.neurons import Threshold
from revsnn.targets.norse import NorseTarget
from revsnn.targets.reference import ReferenceExecutor

SMALL = dict(channels=[3, 4, 5], blocks_per_level=2, expansion=2, level_strides=[1, 1])  # 3 levels: all wiring kinds


def trained_like(name: str, seed: int = 0, **changes) -> nn.Module:
    """``revsnn.testing.trained_like`` plus leaks moved away from their init, one of them negative."""
    model = base_trained_like(name, seed, **changes)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for a in model.body.alphas():
            a.copy_(0.2 + 0.6 * torch.rand(a.shape, generator=g, dtype=torch.float64))
        if model.body.alphas():
            model.body.alphas()[0][0] = -0.4
    return model


def model_trace(model: nn.Module, x: torch.Tensor):
    """Every Threshold module's output (each module runs once: one column) and the logits."""
    spikes, hooks = {}, []
    names = {id(m): n for n, m in model.named_modules()}
    for m in model.modules():
        if isinstance(m, Threshold):
            hooks.append(m.register_forward_hook(lambda mod, i, o: spikes.__setitem__(names[id(mod)], o.clone())))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return spikes, logits


@pytest.mark.parametrize("T", [1, 3])
def test_collapsed_columns_equal_the_model(T, tmp_path):
    model = trained_like("trevsnn-digits", time_steps=T, **SMALL)
    x = torch.rand(T, 5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    # The frames differ: the model (static input) reads x[0] only, so must the graph (stem through Delay(t)).
    spikes, logits = model_trace(model, x)

    collapsed = collapse(model, T)
    graph = collapsed.graph
    assert graph.metadata["readout"] == "last" and graph.metadata["time_steps"] == T
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert kinds <= {"Input", "Output", "Conv2d", "AvgPool2d", "Flatten", "Affine", "Threshold", "Delay"}
    assert ("Delay" in kinds) == (T > 1)
    out, rec = ReferenceExecutor(graph).run(x, record=True)

    # Population of column t at step t == the module's output; every Threshold module is covered once.
    steps = collapsed.population_steps
    assert set(rec) == set(collapsed.populations) == set(steps)
    covered = {}
    for node, (module, c0, c1) in collapsed.populations.items():
        t = steps[node]
        assert (f"columns.{t}." in module) or (module.startswith("head") and t == T - 1), (node, module, t)
        assert torch.equal(rec[node][t], spikes[module][:, c0:c1]), node
        covered[module] = covered.get(module, 0) + c1 - c0
    assert covered == {m: s.shape[1] for m, s in spikes.items()}
    assert sum(s.sum().item() for s in spikes.values()) > 0
    torch.testing.assert_close(out[T - 1], logits, rtol=0, atol=1e-9)
    assert torch.equal(out[T - 1].argmax(1), logits.argmax(1))

    # The written .nir, run by norse, equals the reference at every step.
    path = write_nir(graph, tmp_path / "trev.nir")
    norse_out, norse_rec = NorseTarget.load(path, dtype=torch.float64).run(x, record=True)
    torch.testing.assert_close(norse_out, out, rtol=0, atol=1e-9)
    for node in rec:
        assert torch.equal(norse_rec[node], rec[node]), node


def test_per_frame_input_reads_frame_t():
    model = trained_like("trevsnn-digits", time_steps=2, static_input=False, **SMALL)
    x = torch.rand(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.5
    spikes, logits = model_trace(model, x)
    collapsed = collapse(model, 2)
    out, rec = ReferenceExecutor(collapsed.graph).run(x, record=True)
    torch.testing.assert_close(out[-1], logits, rtol=0, atol=1e-9)
    for node, (module, c0, c1) in collapsed.populations.items():
        assert torch.equal(rec[node][collapsed.population_steps[node]], spikes[module][:, c0:c1]), node


def test_delay_node_in_both_targets():
    delay = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).numpy()
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type=[2, 2]), "d": nir.Delay(delay=delay),
                                "output": nir.Output(output_type=[2, 2])},
                         edges=[("input", "d"), ("d", "output")])
    x = torch.arange(1.0, 1.0 + 5 * 2 * 2 * 2, dtype=torch.float64).reshape(5, 2, 2, 2)
    want = torch.zeros_like(x)
    for t in range(5):
        for (i, j), d in ((ij, int(delay[ij])) for ij in [(0, 0), (0, 1), (1, 0), (1, 1)]):
            if t - d >= 0:
                want[t, :, i, j] = x[t - d, :, i, j]
    assert torch.equal(ReferenceExecutor(graph).run(x), want)
    assert torch.equal(NorseTarget(graph, dtype=torch.float64).run(x), want)


def test_multi_resolution_is_refused():
    model = trained_like("trevsnn-tiny", channels=[2, 2, 2, 2], time_steps=2, blocks_per_level=1, expansion=1,
                         input_shape=[1, 16, 16], stem=[[3, 1]])
    with pytest.raises(CollapseError, match=r"columns\.1\.levels\.0\.up\.3.*upsampling.*ONNX"):
        collapse(model, 2)


def test_wrong_time_steps_is_refused():
    with pytest.raises(CollapseError, match="time_steps=2"):
        collapse(trained_like("trevsnn-digits", time_steps=2, **SMALL), 3)
