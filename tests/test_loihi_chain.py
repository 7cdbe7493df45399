"""The Loihi relay-chain pass, the netx file and the Lava target (DESIGN §4, §7; research/relay.md).

What is proved here:

1. the relay pass is exact without Lava: the chain run as a zero-delay graph equals the quantised reference,
   population by population and relay by relay, for conv and dense synapses; its structure keeps its promises;
2. ``as_conv`` recognises a convolution's dense matrix exactly and refuses anything else;
3. on a hand-made skip graph, the pass is what makes Lava exact: with it, Lava equals the reference; without
   it (one Lava ``Dense`` per term summed into one ``LIF``), the skip population matches at no shift;
4. the ``.net`` file loads in lava-dl's own netx unmodified and runs there, round-trips, and bad files get
   one clear sentence;
5. ``LavaTarget`` equals the quantised reference bit for bit on the small zoo configurations;
6. what Loihi cannot express is refused by name.

Lava is imported only after ``revsnn.targets.lava`` (its Python 3.11 compatibility hook).
"""

import contextlib
import copy
import io as _io
import json
import shutil

import h5py
import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as tf

import revsnn.targets.lava  # noqa: F401  (installs the lava compatibility hook before any lava import)
from revsnn.data import encode, load_digits
from revsnn.exporters.collapse import collapse
from revsnn.exporters.loihi import RELAY_VTH_MAX, WEIGHT_MAX, LoihiExportError, quantize
from revsnn.exporters.loihi_chain import as_conv, build_chain
from revsnn.exporters.netx_file import NetxFileError, read_netx, write_netx
from revsnn.targets.lava import LavaRunError, LavaTarget, loihi2_fixed_pt_config
from revsnn.targets.reference import ReferenceExecutor
from revsnn.testing import trained_like

T, B = 4, 4
# scnn-digits at its default width (16, 32) and seed 0 leaves its second population silent on these samples;
# 8 + 8 channels keeps both populations active and Lava's conv simulation quick.
CONFIGS = {
    "revsresnet": ("revsresnet-digits", {"planes": [4, 8]}),
    "pararevsnn": ("pararevsnn-digits", {"planes": [4, 8]}),
    "scnn": ("scnn-digits", {"channels": [8, 8]}),
}


def _netx():
    with contextlib.redirect_stdout(_io.StringIO()):  # lava-dl prints a note about an optional toolbox
        from lava.lib.dl import netx
    return netx


# --------------------------------------------------------------------------------------------------------
# Shared, built once per module.


@pytest.fixture(scope="module")
def x():
    d = load_digits()
    return encode(d.x_test[:B], T, "rate", torch.Generator().manual_seed(1)).double()   # [T, B, 1, 8, 8]


@pytest.fixture(scope="module")
def zoo(x):
    """config -> (quantised graph, its reference outputs, its reference spikes per population)."""
    out = {}
    for key, (name, changes) in CONFIGS.items():
        q = quantize(collapse(trained_like(name, 0, **changes), T).graph)
        ref_out, ref_spikes = ReferenceExecutor(q.graph).run(x, record=True)
        out[key] = (q, ref_out, ref_spikes)
    return out


@pytest.fixture(scope="module")
def chains(zoo):
    """(config, synapse form) -> chain, built lazily once."""
    cache = {}

    def get(key, synapses):
        if (key, synapses) not in cache:
            cache[key, synapses] = build_chain(zoo[key][0], synapses)
        return cache[key, synapses]
    return get


@pytest.fixture(scope="module")
def netx_files(chains, tmp_path_factory):
    """(config, synapse form) -> a written .net file, lazily."""
    root = tmp_path_factory.mktemp("netx")
    cache = {}

    def get(key, synapses):
        if (key, synapses) not in cache:
            cache[key, synapses] = write_netx(chains(key, synapses), root / f"{key}-{synapses}.net")
        return cache[key, synapses]
    return get


def _depths(q):
    return {"input": 0, **{n: p.depth for n, p in q.populations.items()}}


# --------------------------------------------------------------------------------------------------------
# 1. The relay pass, without Lava.


@pytest.mark.parametrize("synapses", ["conv", "dense"])
@pytest.mark.parametrize("key", list(CONFIGS))
def test_relay_chain_equals_quantised_reference(key, synapses, zoo, chains, x):
    q, ref_out, ref_spikes = zoo[key]
    chain = chains(key, synapses)
    # the chain's input is netx's input layer: flat when the first synapse is dense
    assert chain.input_shape == ((1, 8, 8) if chain.layers[0].kind == "conv" else (64,))
    out, spikes = ReferenceExecutor(chain.to_graph()).run(x.reshape(T, B, *chain.input_shape), record=True)

    assert torch.equal(out, ref_out)
    assert chain.depth == q.depth
    seen = []
    for k, layer in enumerate(chain.layers):
        layer_spikes = spikes[f"layer{k}"]
        for m in layer.members:
            got = chain.unpack(k, m, layer_spikes)
            assert got.shape == (T, B, *m.shape), (k, m.name)
            if m.name == "input":
                assert m.relay
                want = x.reshape(T, B, *m.shape)
            else:
                want = ref_spikes[m.name].reshape(T, B, *m.shape)
            assert torch.equal(got, want), (k, m.name, m.relay)
            if not m.relay:
                seen.append(m.name)
    assert sorted(seen) == sorted(q.populations)          # every population computed exactly once
    fired = {n: s.sum().item() for n, s in ref_spikes.items() if n != q.readout}
    assert all(v > 0 for v in fired.values()), fired      # no silent population makes this vacuous
    assert ref_out.abs().max() > 0
    if key != "scnn":
        assert any(m.relay for layer in chain.layers for m in layer.members)   # skips really are relayed
    if synapses == "conv":
        assert chain.layers[0].kind == "conv"             # the first layers stay convolutions
    else:
        assert all(layer.kind == "dense" for layer in chain.layers)


@pytest.mark.parametrize("synapses", ["conv", "dense"])
@pytest.mark.parametrize("key", list(CONFIGS))
def test_relay_chain_structure(key, synapses, zoo, chains):
    q = zoo[key][0]
    chain = chains(key, synapses)
    depth = _depths(q)
    readers = {n: [p for p, srcs in q.sources.items() if n in srcs] for n in depth}
    last_read = {n: max((depth[r] for r in readers[n]), default=0) for n in depth}

    for p, srcs in q.sources.items():  # every population reads only shallower ones
        assert srcs and all(depth[s] < depth[p] for s in srcs), p
    assert q.depth == max(depth.values())

    total_neurons = 0
    for k, layer in enumerate(chain.layers, start=1):
        total_neurons += layer.neurons
        assert layer.i_decay == 4096                      # relays need a current without memory
        computing = {m.name for m in layer.members if not m.relay}
        relays = {m.name for m in layer.members if m.relay}
        assert computing == {p for p in q.populations if depth[p] == k}, k
        assert relays == {n for n in depth if depth[n] < k < last_read[n]}, k
        for m in layer.members:
            if not m.relay:
                assert layer.v_th_mant == q.populations[m.name].v_th_mant
                assert layer.v_decay == q.populations[m.name].v_decay
                continue
            assert depth[m.name] < k < last_read[m.name]
            w = layer.v_th_mant + 1
            assert layer.v_th_mant <= RELAY_VTH_MAX and w <= WEIGHT_MAX
            lo, hi = layer.flat_range(m)
            assert not layer.bias[lo:hi].any()
            if layer.kind == "dense":
                block = layer.weight[lo:hi]
                assert (np.count_nonzero(block, axis=1) == 1).all()
                assert set(np.unique(block[block != 0])) == {w}
            else:
                block = layer.weight[m.start:m.stop]       # one tap per relay channel
                assert (np.count_nonzero(block.reshape(block.shape[0], -1), axis=1) == 1).all()
                assert set(np.unique(block[block != 0])) == {w}
        assert np.abs(layer.weight).max() <= WEIGHT_MAX
    assert chain.layers[-1].readout and [m.name for m in chain.layers[-1].members] == [q.readout]

    o = chain.overhead()
    assert o["neurons"] + o["relay_neurons"] == total_neurons
    assert o["neurons"] == sum(p.neurons for p in q.populations.values())
    assert o["synapses"] == sum(p.synapses for p in q.populations.values())
    assert o["relay_synapses"] == o["relay_neurons"]      # one identity synapse per relay neuron
    assert o["neuron_overhead"] == pytest.approx(o["relay_neurons"] / o["neurons"])
    if key == "scnn":
        assert o["relay_neurons"] == 0                    # a chain-shaped model needs no relay


# --------------------------------------------------------------------------------------------------------
# 2. Recognising a convolution.


def _dense_of_conv(kernel: torch.Tensor, in_shape, stride, padding) -> np.ndarray:
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    return tf.conv2d(basis, kernel, None, stride, padding).reshape(n, -1).T.numpy()


def test_as_conv_recognises_a_convolution_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64))
    in_shape, out_shape = (3, 8, 8), (4, 4, 4)
    matrix = _dense_of_conv(conv.weight.detach(), in_shape, 2, 1)
    assert matrix.shape == (64, 192)

    found = as_conv(matrix, in_shape, out_shape)
    assert found is not None
    kernel, stride, padding = found
    assert stride == (2, 2) and padding == (1, 1)
    np.testing.assert_array_equal(kernel, conv.weight.detach().numpy())
    again = _dense_of_conv(torch.as_tensor(kernel), in_shape, stride, padding)
    np.testing.assert_array_equal(again, matrix)
    x = torch.randn(2, *in_shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(tf.conv2d(x, torch.as_tensor(kernel), None, stride, padding), conv(x).detach(),
                               rtol=0, atol=1e-12)

    # A random dense matrix, and a convolution's matrix with one entry changed, are not convolutions.
    rand = torch.randn(64, 192, generator=g, dtype=torch.float64).numpy()
    assert as_conv(rand, in_shape, out_shape) is None
    broken = matrix.copy()
    broken[5, 7] = 0.0 if broken[5, 7] else 1.0
    assert as_conv(broken, in_shape, out_shape) is None
    assert as_conv(np.zeros_like(matrix), in_shape, out_shape) is None


# --------------------------------------------------------------------------------------------------------
# 3. Unequal latencies: a hand-made skip graph, with and without the pass.

NX, NA, NB, NC, NK, T_TOY = 12, 10, 10, 10, 4, 12


@pytest.fixture(scope="module")
def toy():
    """x -> A (IF) -> B (LIF, tau 2) -> C (IF) <- x (skip); C -> readout. No biases, so the only thing that
    differs between Lava and the zero-delay reference is when each term arrives."""
    rng = np.random.default_rng(0)

    def affine(o, i, s):
        return nir.Affine(weight=rng.normal(0.0, s, (o, i)), bias=np.zeros(o))

    def if_(n):
        return nir.IF(r=np.ones(n), v_threshold=np.ones(n), v_reset=np.zeros(n))

    def lif(n):
        return nir.LIF(tau=np.full(n, 2.0), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n),
                       v_reset=np.zeros(n))

    nodes = {"input": nir.Input(input_type={"input": np.array([NX])}),
             "wa": affine(NA, NX, 0.6), "A": if_(NA), "wb": affine(NB, NA, 1.2), "B": lif(NB),
             "wcb": affine(NC, NB, 0.6), "wcx": affine(NC, NX, 0.6), "C": if_(NC),
             "wo": affine(NK, NC, 1.0), "output": nir.Output(output_type={"output": np.array([NK])})}
    edges = [("input", "wa"), ("wa", "A"), ("A", "wb"), ("wb", "B"), ("B", "wcb"), ("wcb", "C"),
             ("input", "wcx"), ("wcx", "C"), ("C", "wo"), ("wo", "output")]
    q = quantize(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))
    xs = torch.bernoulli(torch.full((T_TOY, 3, NX), 0.4, dtype=torch.float64),
                         generator=torch.Generator().manual_seed(3))
    ref_out, ref_spikes = ReferenceExecutor(q.graph).run(xs, record=True)
    return q, xs, ref_out, ref_spikes


def test_toy_skip_graph_has_unequal_latencies(toy):
    q, _, _, ref_spikes = toy
    depth = _depths(q)
    assert q.sources == {"A": ["input"], "B": ["A"], "C": ["B", "input"], "readout": ["C"]}
    # C's two terms: through B the input has crossed 3 synapses, through the skip only 1.
    assert sorted(depth[s] + 1 for s in q.sources["C"]) == [1, 3]
    assert all(ref_spikes[p].sum() > 0 for p in "ABC")
    assert not any(np.asarray(q.graph.nodes[p].bias).any() for p in q.populations)


def test_toy_with_relay_pass_is_exact_in_lava(toy, tmp_path):
    q, xs, ref_out, ref_spikes = toy
    chain = build_chain(q, "dense")
    layout = [[(m.name, m.relay) for m in layer.members] for layer in chain.layers]
    assert layout == [[("A", False), ("input", True)], [("B", False), ("input", True)], [("C", False)],
                      [("readout", False)]]
    # The zero-delay chain is the reference ...
    out, _ = ReferenceExecutor(chain.to_graph()).run(xs, record=True)
    assert torch.equal(out, ref_out)
    # Control: with a relay weight of only vThMant (not above the threshold) a relay no longer copies its source
    # (in this no-leak layer it fires on every second input spike instead), and the comparison sees it.
    weak = copy.deepcopy(chain)
    relay = weak.layers[0].members[1]
    lo, hi = weak.layers[0].flat_range(relay)
    weak.layers[0].weight[lo:hi][weak.layers[0].weight[lo:hi] != 0] = weak.layers[0].v_th_mant
    _, weak_spikes = ReferenceExecutor(weak.to_graph()).run(xs, record=True)
    weak_relay = weak.unpack(0, relay, weak_spikes["layer0"])
    assert weak.layers[0].v_decay == 0 and 0 < weak_relay.sum() < xs.sum()
    assert not torch.equal(weak.unpack(2, weak.layers[2].members[0], weak_spikes["layer2"]), ref_spikes["C"])
    # ... and Lava, which delays every synapse by one step, runs it exactly.
    target = LavaTarget.load(write_netx(chain, tmp_path / "toy.net"))
    lava_out, lava_spikes = target.run(xs, record=True)
    assert set(lava_spikes) == {"A", "B", "C"}
    for p in "ABC":
        assert torch.equal(lava_spikes[p].reshape(ref_spikes[p].shape), ref_spikes[p]), p
    assert torch.equal(lava_out, ref_out)


def _run_fan_in_in_lava(q, x1: np.ndarray, total: int) -> dict[str, np.ndarray]:
    """The quantised fan-in graph as plain lava-nc processes, no relays: one Dense per term, every term of a
    population into the same LIF.a_in (Lava sums them). Returns each population's spikes [total, N]."""
    from lava.lib.dl.netx.utils import optimize_weight_bits
    from lava.magma.core.run_conditions import RunSteps
    from lava.proc import io
    from lava.proc.dense.process import Dense
    from lava.proc.lif.process import LIF

    data = np.zeros((x1.shape[1], total))
    data[:, : x1.shape[0]] = x1.T
    source = io.source.RingBuffer(data=data)
    procs, sinks = {"input": source}, {}
    for name, pop in q.populations.items():
        node = q.graph.nodes[name]
        procs[name] = LIF(shape=(pop.neurons,), du=4095, dv=int(node.v_decay), vth=int(node.v_th_mant),
                          bias_mant=np.asarray(node.bias, dtype=np.int32), bias_exp=6)
    for name in q.populations:
        for src in q.sources[name]:
            w = np.asarray(q.graph.nodes[f"{src}.to.{name}"].weight).astype(np.int64)
            # As netx does: a plain Dense drops the lowest bit of mixed-sign 8-bit weights. (netx's sign
            # mode is its own enum, which lava's Dense does not understand: let Dense find the sign itself.)
            w, bits, exp, _ = optimize_weight_bits(w)
            dense = Dense(weights=w, num_weight_bits=bits, weight_exp=exp)
            procs[src].s_out.connect(dense.s_in)
            dense.a_out.connect(procs[name].a_in)
        if name != q.readout:
            sinks[name] = io.sink.RingBuffer(shape=(q.populations[name].neurons,), buffer=total)
            procs[name].s_out.connect(sinks[name].a_in)
    try:
        source.run(condition=RunSteps(num_steps=total), run_cfg=loihi2_fixed_pt_config())
        return {n: np.asarray(s.data.get()).T for n, s in sinks.items()}
    finally:
        source.stop()


def test_toy_without_relay_pass_misaligns_the_skip(toy):
    q, xs, _, ref_spikes = toy
    total = T_TOY + 6
    lava = _run_fan_in_in_lava(q, xs[:, 0].numpy(), total)

    def matching_shifts(p: str, ref: torch.Tensor) -> list[int]:
        r = ref[:, 0].numpy()
        return [s for s in range(total - T_TOY + 1) if np.array_equal(lava[p][s:s + T_TOY], r)]

    # A and B sit on one path: each is the reference delayed by its number of synapse hops.
    assert matching_shifts("A", ref_spikes["A"]) == [1]
    assert matching_shifts("B", ref_spikes["B"]) == [2]
    # C mixes its B term (3 hops) with its skip term (1 hop): no constant shift makes it the reference.
    assert lava["C"].sum() > 0 and ref_spikes["C"][:, 0].sum() > 0
    assert matching_shifts("C", ref_spikes["C"]) == []

    # Control: it is exactly the latency skew. A reference whose A-path input is delayed by the 2 steps the
    # skip gains reproduces Lava's C at the skip's own latency (1 step).
    g = q.graph
    delayed = nir.NIRGraph(
        nodes={**g.nodes, "skew": nir.Delay(delay=np.full(NX, 2.0))},
        edges=[e for e in g.edges if e != ("input", "input.to.A")] + [("input", "skew"), ("skew", "input.to.A")],
        metadata=g.metadata, type_check=False)
    assert ("input", "input.to.A") in g.edges
    _, skewed = ReferenceExecutor(delayed).run(xs[:, :1], record=True)
    assert 1 in matching_shifts("C", skewed["C"])


# --------------------------------------------------------------------------------------------------------
# 4. The netx file.


@pytest.mark.parametrize("key,synapses", [("revsresnet", "conv"), ("pararevsnn", "dense")])
def test_netx_file_runs_in_lava_dl_unmodified(key, synapses, zoo, chains, netx_files, x):
    """lava-dl's own netx loads and runs our file; no revsnn code on the Lava side."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.proc import io
    from lava.proc.monitor.process import Monitor

    q, ref_out, _ = zoo[key]
    chain = chains(key, synapses)
    path = netx_files(key, synapses)
    before = path.read_bytes()
    netx = _netx()
    plain = netx.hdf5.Network(net_config=str(path))     # default arguments: it loads as it is
    assert len(plain) == chain.depth == len(plain.layers)
    assert plain.out.shape == (10,)
    in_shape = tuple(chain.input_shape[::-1])           # Lava's (x, y, f) order
    assert plain.inp.shape == in_shape

    # One sample. Each layer resets once, when the sample first reaches it (netx's own reset, offset 1), so
    # that no bias acts before its layer's input arrives (research/relay.md, step 4).
    s = 2
    depth = chain.depth
    total = T + depth + 1
    net = netx.hdf5.Network(net_config=str(path), reset_interval=4 * total, reset_offset=1)
    sample = x[:, s].numpy().reshape(T, *chain.input_shape)
    data = np.zeros((*in_shape, total))
    data[..., :T] = np.moveaxis(sample.transpose(0, *range(sample.ndim - 1, 0, -1)), 0, -1)
    source = io.source.RingBuffer(data=data)
    source.s_out.connect(net.inp)
    out_sink = io.sink.RingBuffer(shape=net.out.shape, buffer=total)
    net.out.connect(out_sink.a_in)
    layer_sinks = []
    for layer in net.layers[:-1]:
        sink = io.sink.RingBuffer(shape=layer.out.shape, buffer=total)
        layer.out.connect(sink.a_in)
        layer_sinks.append(sink)
    monitor = Monitor()
    readout = net.layers[-1].neuron
    monitor.probe(readout.v, total)
    try:
        net.run(condition=RunSteps(num_steps=total), run_cfg=loihi2_fixed_pt_config())
        v = np.asarray(monitor.get_data()[readout.name]["v"]).reshape(total, -1)
        fired = np.asarray(out_sink.data.get())
        layer_data = [np.asarray(sk.data.get()) for sk in layer_sinks]
    finally:
        net.stop()
    assert path.read_bytes() == before

    # Chain layer k (1-based) holds at step t + k what the zero-delay reference holds at step t.
    _, chain_spikes = ReferenceExecutor(chain.to_graph()).run(x[:, s:s + 1].reshape(T, 1, *chain.input_shape),
                                                              record=True)
    active = 0
    for k, (layer, data_k) in enumerate(zip(chain.layers[:-1], layer_data)):
        series = np.moveaxis(data_k, -1, 0)                     # (total, *Lava shape)
        if layer.kind == "conv":
            series = series.transpose(0, 3, 2, 1)               # (total, C, H, W)
        got = series[k + 1:k + 1 + T].reshape(T, -1)
        want = chain_spikes[f"layer{k}"][:, 0].reshape(T, -1).numpy()
        np.testing.assert_array_equal(got, want, err_msg=f"layer {k}")
        active += int(want.sum())
    assert active > 0
    scale = next(m.scale for m in chain.layers[-1].members if not m.relay)
    np.testing.assert_array_equal(v[depth:depth + T] / 64.0 / scale, ref_out[:, s].numpy())
    assert not fired.any()                                       # the readout never fires


def test_read_netx_round_trips(chains, netx_files):
    for key, synapses in [("revsresnet", "conv"), ("pararevsnn", "dense"), ("scnn", "conv")]:
        chain = chains(key, synapses)
        back = read_netx(netx_files(key, synapses))
        assert back.input_shape == chain.input_shape
        assert back.depth == chain.depth
        assert back.metadata["synapses"] == synapses
        assert json.loads(json.dumps(back.metadata)) == back.metadata
        for k, (a, b) in enumerate(zip(chain.layers, back.layers)):
            assert (b.kind, b.shape, b.i_decay, b.v_decay, b.v_th_mant, b.readout) == \
                   (a.kind, a.shape, a.i_decay, a.v_decay, a.v_th_mant, a.readout), k
            np.testing.assert_array_equal(b.weight, a.weight, err_msg=f"layer {k}")
            np.testing.assert_array_equal(b.bias, a.bias, err_msg=f"layer {k}")
            if a.kind == "conv":
                assert (tuple(b.stride), tuple(b.padding), tuple(b.dilation)) == \
                       (tuple(a.stride), tuple(a.padding), tuple(a.dilation))
            assert b.members == a.members, k
        if key == "revsresnet":
            # per-neuron conv biases (Lava's (x, y, c) order in the file) really occur and come back
            assert any(layer.kind == "conv" and layer.bias.any() for layer in back.layers)


def _edit(src, dst, fn):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        fn(f)
    return dst


def _replace(group, key, value):
    del group[key]
    group[key] = value


def _one_sentence(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert message.endswith(".")


def test_netx_file_errors(chains, netx_files, tmp_path):
    good = netx_files("revsresnet", "conv")          # conv layers, then a flatten, then the dense readout
    chain = chains("revsresnet", "conv")
    assert chain.layers[1].kind == "conv" and chain.layers[-1].kind == "dense"

    cases = {}
    truncated = tmp_path / "truncated.net"
    raw = good.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = (truncated, r"not a readable netx file|damaged or truncated")

    not_hdf5 = tmp_path / "text.net"
    not_hdf5.write_text("this is not an HDF5 file\n")
    cases["not hdf5"] = (not_hdf5, r"not a readable netx file")

    cases["pool"] = (_edit(good, tmp_path / "pool.net", lambda f: _replace(
        f["layer/1"], "type", np.array([b"pool"], dtype="S10"))), r"/layer/1 has type 'pool'")

    def dense_shape(f):
        last = str(len(f["layer"]) - 1)
        assert f[f"layer/{last}/type"][0] == b"dense"
        _replace(f[f"layer/{last}"], "shape", np.array([11], dtype=np.int64))
    cases["dense shape"] = (_edit(good, tmp_path / "dense_shape.net", dense_shape), r"dense weights of shape")

    def conv_channels(f):
        g = f["layer/2"]
        assert g["type"][0] == b"conv"
        _replace(g, "weight", g["weight"][()][:, :-1])
    cases["conv channels"] = (_edit(good, tmp_path / "conv_channels.net", conv_channels),
                              r"conv weights of shape .* do not map 5 input channels")

    def conv_shape(f):
        g = f["layer/1"]
        _replace(g, "shape", np.array([5, 7, 8], dtype=np.int64))
    cases["conv shape"] = (_edit(good, tmp_path / "conv_shape.net", conv_shape), r"declares shape \(5, 7, 8\)")

    cases["zero weights"] = (_edit(good, tmp_path / "zero.net", lambda f: _replace(
        f["layer/3"], "weight", np.zeros_like(f["layer/3/weight"][()]))), r"/layer/3 has only zero weights")

    cases["missing"] = (tmp_path / "missing.net", r"does not exist")

    for label, (path, pattern) in cases.items():
        with pytest.raises(NetxFileError, match=pattern) as info:
            read_netx(path)
        message = str(info.value)
        assert path.name in message, label
        _one_sentence(message)
        with pytest.raises(NetxFileError):
            LavaTarget.load(path)                     # the target refuses it the same way


@pytest.mark.parametrize("damage", ["heap signature", "stride 0"])
def test_netx_damaged_metadata_gets_a_sentence(damage, netx_files, tmp_path):
    good = netx_files("scnn", "conv")
    bad = tmp_path / "damaged.net"
    if damage == "heap signature":   # an HDF5 file whose first local heap is damaged, not truncated
        raw = good.read_bytes()
        i = raw.find(b"HEAP")
        assert i > 0
        bad.write_bytes(raw[:i] + b"XXXX" + raw[i + 4:])
    else:
        _edit(good, bad, lambda f: _replace(f["layer/1"], "stride", np.array([0, 0], dtype=np.int64)))
    with pytest.raises(NetxFileError) as info:
        read_netx(bad)
    _one_sentence(str(info.value))


def test_failed_write_leaves_nothing_behind(chains, tmp_path):
    chain = chains("scnn", "conv")
    folder = tmp_path / "model.net"
    folder.mkdir()
    with pytest.raises(NetxFileError, match="is a directory") as info:
        write_netx(chain, folder)
    _one_sentence(str(info.value))
    assert list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.net"]

    with pytest.raises(NetxFileError, match="does not exist"):
        write_netx(chain, tmp_path / "no_such_dir" / "model.net")
    assert not (tmp_path / "no_such_dir").exists()

    # A failure in the middle of writing (metadata that JSON cannot hold): no file, no temporary left.
    chain.metadata["unserialisable"] = object()
    try:
        with pytest.raises(Exception):
            write_netx(chain, tmp_path / "half.net")
    finally:
        del chain.metadata["unserialisable"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.net"]

    # and a good write replaces nothing else and reads back
    path = write_netx(chain, tmp_path / "ok.net")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.net", "ok.net"]
    assert read_netx(path).depth == chain.depth


# --------------------------------------------------------------------------------------------------------
# 5. The Lava target against the quantised reference.


@pytest.mark.parametrize("key,synapses", [("scnn", "conv"), ("revsresnet", "dense"), ("pararevsnn", "dense"),
                                          ("revsresnet", "conv")])
def test_lava_target_equals_quantised_reference(key, synapses, zoo, chains, netx_files, x):
    q, ref_out, ref_spikes = zoo[key]
    target = LavaTarget.load(netx_files(key, synapses))
    out, spikes = target.run(x, record=True)

    assert set(spikes) == set(q.populations) - {q.readout}
    total = 0
    for p, s in spikes.items():
        assert s.shape == (T, B, *q.populations[p].shape), p
        assert torch.equal(s.reshape(T, B, -1), ref_spikes[p]), p
        assert 0 < s.sum() < s.numel(), p                # neither silent nor saturated
        total += int(s.sum())
    assert out.shape == (T, B, 10) and out.dtype == torch.float64
    assert torch.equal(out, ref_out)
    assert out.abs().max() > 0
    assert len(target.layer_spikes) == chains(key, synapses).depth - 1
    assert target.timing["steps"] == B * T + q.depth


def test_lava_target_refuses_non_binary_input(netx_files, x):
    target = LavaTarget.load(netx_files("scnn", "conv"))
    with pytest.raises(LavaRunError, match="0/1") as info:
        target.run(x * 0.5)
    _one_sentence(str(info.value))
    with pytest.raises(LavaRunError, match="values"):
        target.run(torch.zeros(T, B, 1, 4, 4))


# --------------------------------------------------------------------------------------------------------
# 6. What Loihi cannot express.


@pytest.mark.parametrize("name,kind,why", [
    ("revsformer-digits", "MaxPool2d", "max pooling is not linear"),
    ("trevsnn-digits", "Threshold", "has no CUBA neuron"),
    ("revnode-digits", "Scale", "soft reset"),
])
def test_quantize_refuses_what_loihi_cannot_express(name, kind, why):
    graph = collapse(trained_like(name, 0), T).graph
    with pytest.raises(LoihiExportError) as info:
        quantize(graph)
    message = str(info.value)
    node = message.split("'")[1]
    assert node in graph.nodes and type(graph.nodes[node]).__name__ == kind, message
    assert f"is a {kind}" in message and why in message
    assert "cannot be deployed to Loihi" in message and "NIR or ONNX" in message
    _one_sentence(message)
    assert message.count(". ") == 0                      # one sentence
