"""Loihi 2 resources, activity counts and energy (issue 16), against hand computations and Lava's own spikes.

1. a tiny skip network, counted by hand: neurons, relays, synapses, fan-in, fan-out, cores (and packing under
   smaller per-core limits), spikes and synaptic operations for a known input, MACs for real-valued input,
   the energy that follows from the published per-operation figures;
2. a neuron over one core's synaptic memory is refused with one sentence naming the layer and the limit,
   and ``revsnn export lava`` says it and writes nothing;
3. the conv form of a chain has exactly the synapses, fan-in and fan-out of its dense form;
4. the synaptic operations counted from Lava's recorded spikes of every chain layer (a relayed reversible
   network) equal a plain numpy count over the .net file's weights and revsnn's count on the chain reference.
"""

import nir
import numpy as np
import pytest
import torch

import revsnn.targets.lava  # noqa: F401  (the lava compatibility hook first)
from revsnn.data import encode, load_digits
from revsnn.exporters import loihi_resources
from revsnn.exporters.activity import E_AC_PJ, E_MAC_PJ, count_activity
from revsnn.exporters.collapse import collapse
from revsnn.exporters.loihi import quantize
from revsnn.exporters.loihi_chain import ChainLayer, LoihiChain, Member, build_chain
from revsnn.exporters.loihi_resources import LoihiResourceError, require_fits, resources
from revsnn.exporters.netx_file import read_netx, write_netx
from revsnn.targets.reference import ReferenceExecutor
from revsnn.testing import trained_like

W1 = np.array([[1.0, 0, 0.5, 0], [0, 1.0, 0, 0], [0.5, 0.5, 0.5, 0.5]])   # input -> a
W2 = np.array([[1.0, 0, 1.0], [0, 1.0, 0]])                               # a -> b
W3 = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0]])                           # input -> b (the skip)
W4 = np.array([[1.0, -1.0], [0.5, 1.0]])                                  # b -> readout


def _tiny() -> nir.NIRGraph:
    def if_(n):
        return nir.IF(r=np.ones(n), v_threshold=np.full(n, 0.8), v_reset=np.zeros(n))

    def affine(w):
        return nir.Affine(weight=w, bias=np.zeros(w.shape[0]))

    nodes = {"input": nir.Input(input_type={"input": np.array([4])}), "w1": affine(W1), "a": if_(3),
             "w2": affine(W2), "w3": affine(W3), "b": if_(2), "w4": affine(W4),
             "output": nir.Output(output_type={"output": np.array([2])})}
    edges = [("input", "w1"), ("w1", "a"), ("a", "w2"), ("w2", "b"), ("input", "w3"), ("w3", "b"), ("b", "w4"),
             ("w4", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


X = torch.tensor([[[1.0, 1, 0, 0]], [[0, 0, 1, 1]]], dtype=torch.float64)   # [T=2, B=1, 4]


def test_tiny_network_resources_by_hand():
    chain = build_chain(quantize(_tiny()), "dense")
    assert [[(m.name, m.relay) for m in layer.members] for layer in chain.layers] == \
        [[("a", False), ("input", True)], [("b", False)], [("readout", False)]]
    r = resources(chain)
    # layer 1: a (3 neurons, 2 + 1 + 4 synapses) and a relay of the 4 inputs (one synapse each)
    # layer 2: b (2 neurons: W2 gives 2 + 1, the skip W3 through the relays 1 + 1); layer 3: the readout (4)
    assert [(l.neurons, l.relay_neurons, l.synapses, l.relay_synapses) for l in r.layers] == \
        [(3, 4, 7, 4), (2, 0, 5, 0), (2, 0, 4, 0)]
    assert [l.fan_in_max for l in r.layers] == [4, 3, 2]
    # fan-out: input i reaches (a, relay) 3, 3, 3, 2; layer 1 neurons reach at most one b; each b both outputs
    assert r.input_fan_out_max == 3
    assert [l.fan_out_max for l in r.layers] == [1, 2, 0]
    assert r.total("relay_neurons") == 4 and r.total("synapses") == 16 and r.total("relay_synapses") == 4
    for layer, res in zip(chain.layers, r.layers):
        w = layer.weight[layer.weight != 0]
        bits = int(np.abs(w).max()).bit_length() + (1 if (w < 0).any() and (w > 0).any() else 0)
        assert res.weight_bits == bits
        assert res.synaptic_bytes == -(-res.total_synapses * bits // 8)
    assert (r.cores, r.chips) == (3, 1) and r.violations() == []
    # Packing: 2 neurons a core -> layer 1's 7 neurons need 4 cores; layers 2 and 3 one each.
    assert [l.cores for l in resources(chain, neurons_per_core=2).layers] == [4, 1, 1]
    # Memory: a core that holds only the largest neuron's synapses -> one neuron per core where it must be.
    biggest = max(l.max_neuron_bytes for l in r.layers)
    assert resources(chain, bytes_per_core=biggest).violations() == []
    assert resources(chain, bytes_per_core=biggest - 1).violations()


def test_tiny_network_activity_by_hand():
    graph = _tiny()
    _, spikes = ReferenceExecutor(graph).run(X, record=True)
    # By hand (IF, threshold 0.8, strict): step 0 a gets [1, 1, 1] -> all fire; b gets W2 [1,1,1] + W3 x0 =
    # [2, 2] -> both fire. Step 1 a gets [0.5, 0, 1] -> a2 fires; b gets [1, 0] + [1, 0] -> b0 fires.
    assert spikes["a"][:, 0].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert spikes["b"][:, 0].tolist() == [[1, 1], [1, 0]]
    act = count_activity(graph, spikes, X, "rate")
    by = {p.name: p for p in act.populations}
    # fan-out: input 0..3 -> 3, 2, 3, 1 (W1 and W3 columns); a -> 1 each (W2 columns); b -> 2 each (W4)
    assert by["input"].synapses == 9 and by["a"].synapses == 3 and by["b"].synapses == 4
    assert by["input"].synops.tolist() == [5, 4]        # x0 = inputs 0, 1: 3 + 2; x1 = inputs 2, 3: 3 + 1
    assert by["a"].synops.tolist() == [3, 1]
    assert by["b"].synops.tolist() == [4, 2]
    assert act.spikes == 7 and act.synops == 19 and act.total_macs == 0
    assert act.energy_pj == pytest.approx(19 * 0.9)
    # Real-valued input: no input spikes; the input's nodes multiply every value every step: nnz(W1) + nnz(W3).
    direct = count_activity(graph, spikes, X * 0.5 + 0.25, "direct")
    assert direct.macs.tolist() == [9, 9] and "input" not in {p.name for p in direct.populations}
    assert direct.energy_pj == pytest.approx(18 * E_MAC_PJ + 10 * E_AC_PJ)   # a: 3 + 1, b: 4 + 2 SOPs
    assert (E_MAC_PJ, E_AC_PJ) == (4.6, 0.9)             # Horowitz 2014, 45 nm, as the papers use


def _chain_over_memory(n_in: int) -> LoihiChain:
    layer = ChainLayer("dense", (1,), np.ones((1, n_in), dtype=np.int64), np.zeros(1, dtype=np.int64), 4096, 4096,
                       131071, members=[Member("output", False, 0, 1, 1, (1,))], readout=True)
    return LoihiChain((n_in,), [layer])


def test_a_neuron_beyond_one_core_is_refused_by_name():
    fits = _chain_over_memory(1000)
    assert require_fits(fits).cores == 1
    # 1-bit weights: 8 synapses a byte; one core holds SYNAPTIC_MEMORY_PER_CORE * 8 synapses into one neuron.
    over = _chain_over_memory(loihi_resources.SYNAPTIC_MEMORY_PER_CORE * 8 + 8)
    with pytest.raises(LoihiResourceError) as exc:
        require_fits(over)
    msg = str(exc.value)
    assert "chain layer 1" in msg and "SYNAPTIC_MEMORY_PER_CORE" in msg and msg.count(". ") == 0


def test_export_lava_says_which_layer_breaks_the_limit(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from revsnn.checkpoint import save_checkpoint
    from revsnn.cli.main import app

    model = trained_like("scnn-digits", 0, channels=[4, 4]).float()
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, model, train={"time_steps": 4, "encoding": "rate"})
    out = tmp_path / "model.net"
    result = CliRunner().invoke(app, ["export", "lava", str(ckpt), "--out", str(out)])
    assert result.exit_code == 0, result.output
    # The same model against a core of 32 bytes: its second conv layer's neurons (36 synapses, 9-bit) break it.
    monkeypatch.setattr(loihi_resources, "SYNAPTIC_MEMORY_PER_CORE", 32)
    out.unlink()
    result = CliRunner().invoke(app, ["export", "lava", str(ckpt), "--out", str(out)])
    assert result.exit_code == 2
    assert "chain layer" in result.output and "synaptic memory" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_conv_chain_counts_equal_its_dense_form():
    q = quantize(collapse(trained_like("scnn-digits", 0, channels=[4, 4]), 4).graph)
    conv, dense = resources(build_chain(q, "conv")), resources(build_chain(q, "dense"))
    assert [l.kind for l in conv.layers][:2] == ["conv", "conv"]
    for a, b in zip(conv.layers, dense.layers):
        assert (a.synapses, a.fan_in_max, a.fan_out_max, a.fan_in_mean) == \
            (b.synapses, b.fan_in_max, b.fan_out_max, b.fan_in_mean)
        assert a.fan_out_mean == pytest.approx(b.fan_out_mean)


def test_lava_synaptic_operations_equal_revsnn_count(tmp_path):
    from revsnn.targets.lava import LavaTarget

    T, B = 4, 2
    x = encode(load_digits().x_test[:B], T, "rate", torch.Generator().manual_seed(5)).double()
    q = quantize(collapse(trained_like("revsresnet-digits", 0, planes=[2, 4]), T).graph)
    chain = build_chain(q, "dense")
    path = write_netx(chain, tmp_path / "model.net")
    target = LavaTarget.load(path)
    target.run(x, record=True)
    lava = {f"layer{k}": s for k, s in enumerate(target.layer_spikes)}
    # Independent count: numpy over the file's own weights, column nonzeros = fan-out of each neuron.
    file_chain = read_netx(path)
    xs = x.reshape(T, B, -1).numpy()
    want = (xs @ np.count_nonzero(file_chain.layers[0].weight, axis=0)).sum(1)
    for k in range(len(file_chain.layers) - 1):
        s = lava[f"layer{k}"].reshape(T, B, -1).numpy()
        want = want + (s @ np.count_nonzero(file_chain.layers[k + 1].weight, axis=0)).sum(1)
    want = want / B
    graph = chain.to_graph()
    got = count_activity(graph, lava, x, "rate")
    assert np.array_equal(got.per_step()["synops"], want)
    assert got.synops > 1000 and any(m.relay for layer in chain.layers for m in layer.members)
    # ... and the chain reference's own spikes give the same count (Lava is bit-exact to it).
    _, ref = ReferenceExecutor(graph).run(x.reshape(T, B, *chain.input_shape), record=True)
    assert np.array_equal(count_activity(graph, ref, x, "rate").per_step()["synops"], want)


@pytest.mark.parametrize("name, changes", [("revsresnet-digits", {"planes": [2, 4]}),
                                           ("trevsnn-digits", {"channels": [4, 4, 4, 4], "time_steps": 2, "blocks_per_level": 1})])
def test_fast_fan_out_equals_the_unit_basis_count(name, changes, monkeypatch):
    """The one-backward-pass count (used where a path joins each pair of neurons once) against pushing every
    unit vector through the paths and counting the nonzero results."""
    from revsnn.exporters import activity

    T = changes.get("time_steps", 4)
    g = collapse(trained_like(name, 0, **changes), T).graph
    x = encode(load_digits().x_test[:1], T, "rate", torch.Generator().manual_seed(2)).double()
    _, spikes = ReferenceExecutor(g).run(x, record=True)
    out = activity._outgoing(g)
    fast_ones = [n for n in spikes if activity._single_route(g, n, *activity._reach(g, n, out))]
    fast = {n: activity.fan_out(g, n, tuple(spikes[n].shape[2:])) for n in fast_ones}
    monkeypatch.setattr(activity, "_single_route", lambda *a: False)
    for n in fast_ones:
        assert np.array_equal(fast[n], activity.fan_out(g, n, tuple(spikes[n].shape[2:]))), n
    assert len(fast_ones) >= 3 and all(f.sum() > 0 for f in fast.values())
