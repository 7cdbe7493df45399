"""The plain spiking CNN baseline (``scnn``): it trains, collapses to a chain of populations, and the
collapsed graph and every target reproduce it."""

import json

import torch
from torch import nn
from typer.testing import CliRunner

from revsnn.cli.main import app
from revsnn.data import ImageData, encode, load_digits
from revsnn.exporters.collapse import collapse
from revsnn.models import build_model
from revsnn.neurons import SpikingNeuron, neurons_of
from revsnn.reversible import ReversibleModule, plain_twin
from revsnn.targets.reference import NEURON_TYPES, ReferenceExecutor
from revsnn.testing import trained_like
from revsnn.train import TrainOptions, train

runner = CliRunner()


def _rate_digits(n: int, T: int, seed: int) -> torch.Tensor:
    """``n`` random test digits, rate-coded over ``T`` steps, float64."""
    d = load_digits()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(d.y_test), generator=g)[:n]
    return encode(d.x_test[idx], T, "rate", g).double()


def test_forward_shape_twin_and_gradient_reaches_the_first_conv():
    torch.manual_seed(0)
    model = build_model("scnn-digits")
    assert not any(isinstance(m, ReversibleModule) for m in model.modules())
    assert len(list(neurons_of(model))) == 2
    d = load_digits()
    g = torch.Generator().manual_seed(0)
    x = encode(d.x_train[:32], 4, "rate", g)
    y = d.y_train[:32]
    assert model(x).shape == (32, 10)

    twin = plain_twin(model)  # no reversible parts: the twin is a plain copy that computes the same
    model.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))

    model.train()
    first_conv = model.layers[0].module
    before = first_conv.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        grad = first_conv.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
        optimizer.step()
    assert not torch.equal(first_conv.weight.detach(), before)


def test_collapsed_graph_is_a_chain_of_populations():
    graph = collapse(trained_like("scnn-digits"), 4).graph
    inputs = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        inputs[dst].append(src)
    input_name = next(n for n, node in graph.nodes.items() if type(node).__name__ == "Input")
    output_name = next(n for n, node in graph.nodes.items() if type(node).__name__ == "Output")

    def feeder(name: str) -> str:
        """The one population (or the input) that feeds ``name``, through a single path of non-neuron nodes."""
        assert len(inputs[name]) == 1, (name, inputs[name])
        src = inputs[name][0]
        while src != input_name and not isinstance(graph.nodes[src], NEURON_TYPES):
            assert len(inputs[src]) == 1, (src, inputs[src])  # no fan-in on the way back
            src = inputs[src][0]
        return src

    populations = [n for n, node in graph.nodes.items() if isinstance(node, NEURON_TYPES)]
    assert len(populations) == 2
    fed_by = {p: feeder(p) for p in populations}
    # Walked back from the output: output <- last population <- ... <- first population <- input.
    chain = [feeder(output_name)]
    while chain[-1] != input_name:
        chain.append(fed_by[chain[-1]])
    assert sorted(chain[:-1]) == sorted(populations)  # every population is on the chain, each once
    assert all(type(graph.nodes[p]).__name__ == "LIF" for p in populations)


def _model_trace(model: nn.Module, x: torch.Tensor):
    """Every neuron module's spikes [T, B, ...] and the Linear's per-step outputs [T, B, K]."""
    spikes, hooks = {}, []
    names = {id(m): n for n, m in model.named_modules()}
    for m in model.modules():
        if isinstance(m, SpikingNeuron):
            hooks.append(m.register_forward_hook(lambda mod, i, o: spikes.__setitem__(names[id(mod)], o)))
    per_step = []
    hooks.append(model.layers[-1].module.register_forward_hook(lambda mod, i, o: per_step.append(o)))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    T, B = x.shape[:2]
    return spikes, per_step[0].reshape(T, B, -1), logits


def test_reference_executor_equals_training_forward():
    model = trained_like("scnn-digits", seed=1)
    T = 6
    x = _rate_digits(24, T, seed=2)
    spikes, per_step, logits = _model_trace(model, x)

    collapsed = collapse(model, T)
    assert collapsed.graph.metadata["readout"] == "mean" and collapsed.graph.metadata["family"] == "scnn"
    out, rec = ReferenceExecutor(collapsed.graph).run(x, record=True)

    assert set(rec) == set(collapsed.populations)
    assert {module for module, _, _ in collapsed.populations.values()} == set(spikes)
    for node, (module, c0, c1) in collapsed.populations.items():
        assert (c0, c1) == (0, spikes[module].shape[2]), node  # one population per neuron module, whole
        assert torch.equal(rec[node], spikes[module]), node
        assert rec[node].sum() > 0, node  # agreement is not vacuous
    torch.testing.assert_close(out, per_step, rtol=0, atol=1e-9)
    torch.testing.assert_close(out.mean(0), logits, rtol=0, atol=1e-9)
    assert torch.equal(out.mean(0).argmax(1), logits.argmax(1))


def test_verify_torch_norse_onnxruntime_after_one_epoch(tmp_path):
    d = load_digits()
    data = ImageData("digits", d.x_train, d.y_train, d.x_test[:64], d.y_test[:64])  # one full epoch
    train(TrainOptions(model="scnn-digits", out=tmp_path / "run", epochs=1), data=data)
    ckpt = tmp_path / "run" / "model.pt"
    result = runner.invoke(app, ["verify", str(ckpt), "--targets", "torch,norse,onnxruntime", "--samples", "32",
                                 "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True and report["encoding"] == "rate"
    for name in ("torch", "norse", "onnxruntime"):
        target = report["targets"][name]
        assert target["ok"] and target["mismatches"] == 0 and target["prediction_agreement"] == 1.0, name
        assert target["populations"] == 2 and target["spike_count"] > 0, name
