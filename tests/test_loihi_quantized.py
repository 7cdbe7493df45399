"""The quantised reference: ``ReferenceExecutor`` running ``LoihiNeuron`` populations (Loihi 2's CUBA neuron in
fixed point, ``exporters/nodes.py``) behind integer ``Linear`` / ``Conv2d`` synapses, and ``exporters/loihi.py``,
which makes such graphs from float ones.

Every check is against something independent of the code under test: the golden trace of lava-dl's own netx
in ``contract/loihi_netx.json``; lava-nc's fixed-point ``Dense``/``Conv`` -> ``LIF`` processes run here; integers
worked out by hand from the quantiser's documented rule; the float reference's predictions.

Lava's synapses add one step: a ``Dense``/``Conv`` delivers at step ``t`` what it received at ``t - 1`` (zeros at
step 0). A single Lava layer is therefore *exactly* the zero-delay reference fed the input delayed by one step
(``x_delayed[0] = 0``). That is how the random layers are compared, and it is the only honest way once the
neurons have a bias: Lava's LIF already integrates its bias at step 0, before any input arrives, so "reference
step t == Lava step t + 1" holds only for bias-free layers (as in the golden netx trace, whose layers have none).

Import order: ``revsnn.targets.lava`` installs the compatibility hook that lava-nc 0.10 needs on Python 3.11,
so every lava import below comes after it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import types
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

from revsnn.data import encode, load_digits
from revsnn.exporters.collapse import collapse
from revsnn.exporters.loihi import (BIAS_MAX, READOUT_VTH, RELAY_VTH_MAX, WEIGHT_MAX, LoihiExportError, quantize,
                                    require_spike_input)
from revsnn.exporters.nodes import LoihiNeuron
from revsnn.targets.reference import ReferenceExecutor
from revsnn.testing import trained_like

CONTRACT = Path(__file__).parent / "contract" / "loihi_netx.json"
V_LIMIT = (1 << 23) - 1          # Loihi's voltage saturates at +-(2^23 - 1)


# --------------------------------------------------------------------------------------------------------
# Helpers


def _chain(n_in, layers) -> nir.NIRGraph:
    """Input(n_in) -> [synapse -> LoihiNeuron]* -> Output, neurons named n0, n1, ..."""
    in_shape = np.atleast_1d(np.asarray(n_in))
    nodes = {"input": nir.Input(input_type=in_shape)}
    edges, prev = [], "input"
    for k, (synapse, neuron) in enumerate(layers):
        nodes[f"w{k}"], nodes[f"n{k}"] = synapse, neuron
        edges += [(prev, f"w{k}"), (f"w{k}", f"n{k}")]
        prev = f"n{k}"
    nodes["output"] = nir.Output(output_type=np.asarray(layers[-1][1].shape))
    edges.append((prev, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _loihi(shape, i_decay, v_decay, v_th_mant, bias=None, scale=64.0) -> LoihiNeuron:
    shape = tuple(np.atleast_1d(shape))
    bias = np.zeros(shape, dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64)
    return LoihiNeuron(shape=np.array(shape), i_decay=int(i_decay), v_decay=int(v_decay), v_th_mant=int(v_th_mant),
                       bias=bias, scale=scale)


def _trace(graph: nir.NIRGraph, x: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Step the reference through ``x`` [T, *input] (batch 1); per neuron node, per step: spikes ``s``, the
    integer current ``u``, the integer voltage after the reset ``v`` (``state``) and the float potential before
    the reset ``pot`` (``potentials``)."""
    ex = ReferenceExecutor(graph)
    ex.reset()
    rec = {n: {"s": [], "u": [], "v": [], "pot": []} for n in ex.neurons}
    for x_t in x:
        ex.step(torch.as_tensor(np.asarray(x_t, dtype=np.float64)[None]))
        for n in ex.neurons:
            rec[n]["s"].append(ex.spikes[n][0].numpy().copy())
            rec[n]["u"].append(ex.state[n + "/u"][0].numpy().copy())
            rec[n]["v"].append(ex.state[n][0].numpy().copy())
            rec[n]["pot"].append(ex.potentials[n][0].numpy().copy())
    return {n: {k: np.stack(v) for k, v in r.items()} for n, r in rec.items()}


def _delayed(x: np.ndarray) -> np.ndarray:
    """The input one Lava synapse delivers: ``x`` one step later, zeros at step 0."""
    return np.concatenate([np.zeros_like(x[:1]), x[:-1]])


@functools.lru_cache(maxsize=None)
def _lava() -> types.SimpleNamespace:
    import revsnn.targets.lava  # noqa: F401  (the Python 3.11 hook, before any lava import)
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIF
    from lava.proc.monitor.process import Monitor
    with contextlib.redirect_stdout(io.StringIO()):   # lava-dl prints a note about an optional toolbox
        from lava.lib.dl.netx.utils import optimize_weight_bits
    return types.SimpleNamespace(RunSteps=RunSteps, Loihi2SimCfg=Loihi2SimCfg, Conv=Conv, Dense=Dense, Sink=Sink,
                                 Source=Source, LIF=LIF, Monitor=Monitor, optimize_weight_bits=optimize_weight_bits)


def _probe_lif(L, lif, T: int) -> dict:
    """A Monitor on ``v``, one on ``u`` (a lava Monitor serves one probe only) and a sink for the spikes."""
    mv, mu = L.Monitor(), L.Monitor()
    mv.probe(lif.v, T)
    mu.probe(lif.u, T)
    sink = L.Sink(shape=lif.s_out.shape, buffer=T)
    lif.s_out.connect(sink.a_in)
    return {"lif": lif, "mv": mv, "mu": mu, "sink": sink}


def _run_lava(L, source, probes: list[dict], T: int) -> list[dict[str, np.ndarray]]:
    """Run the process graph reachable from ``source`` for ``T`` steps in fixed point; per probed LIF, ``s``,
    ``u`` and ``v`` as int64 arrays [T, *lava shape] (v after the reset, as Lava's Monitor reports it)."""
    try:
        source.run(condition=L.RunSteps(num_steps=T), run_cfg=L.Loihi2SimCfg(select_tag="fixed_pt"))
        out = []
        for p in probes:
            name = p["lif"].name
            out.append({"v": np.asarray(p["mv"].get_data()[name]["v"]).astype(np.int64),
                        "u": np.asarray(p["mu"].get_data()[name]["u"]).astype(np.int64),
                        "s": np.moveaxis(np.asarray(p["sink"].data.get()), -1, 0).astype(np.int64)})
        return out
    finally:
        source.stop()


def _assert_active(s: np.ndarray, what: str) -> None:
    assert 0 < s.sum() < s.size, f"{what}: {int(s.sum())} spikes of {s.size}; the comparison would be trivial"


# --------------------------------------------------------------------------------------------------------
# 1. The golden trace of lava-dl's netx


def test_golden_netx_trace_bit_for_bit():
    d = json.loads(CONTRACT.read_text())
    x = np.asarray(d["input"], dtype=np.int64).T                      # [n_in][T] -> [T, n_in]
    T, n_in = x.shape
    layers = []
    for L_ in d["layers"]:
        w = np.asarray(L_["weight"], dtype=np.float64)
        assert np.all(w == np.round(w))
        n = w.shape[0]
        layers.append((nir.Linear(weight=w), _loihi(n, L_["iDecay"], L_["vDecay"], L_["vThMant"], np.zeros(n, int))))
    graph = _chain(n_in, layers)

    out, spikes = ReferenceExecutor(graph).run(torch.as_tensor(x[:, None, :], dtype=torch.float64), record=True)
    trace = _trace(graph, x)
    last = f"n{len(layers) - 1}"
    np.testing.assert_array_equal(spikes[last][:, 0].numpy(), trace[last]["s"])   # run() and step() agree
    np.testing.assert_array_equal(out[:, 0].numpy(), trace[last]["s"])            # a spiking node emits spikes

    # Output spikes: Lava's step t + depth is the reference's step t; Lava is silent before its first input.
    depth = len(layers)
    lava_out = np.asarray(d["output_spikes_lava"], dtype=np.int64).T              # [n_out][T] -> [T, n_out]
    _assert_active(lava_out, "netx output")
    assert not lava_out[:depth].any()
    np.testing.assert_array_equal(trace[last]["s"][:T - depth], lava_out[depth:])

    # Voltages of every layer (layer k, 1-based, lags k steps). Lava's Monitor reports v after the reset.
    for k, name in enumerate(f"n{i}" for i in range(depth)):
        lag = k + 1
        v_lava = np.asarray(d["layer_voltages_lava"][k], dtype=np.int64)          # [T][neurons]
        assert not v_lava[:lag].any()
        r = trace[name]
        s, v_after, pot = r["s"][:T - lag], r["v"][:T - lag], r["pot"][:T - lag]
        # the integer state after the reset is exactly Lava's
        np.testing.assert_array_equal(v_after, v_lava[lag:])
        # the float potential before the reset is v / 64 / scale (scale 64): exactly Lava's v where no spike
        v_before = pot * 64 * 64
        assert np.all(v_before == np.round(v_before))
        quiet = s == 0
        np.testing.assert_array_equal(v_before[quiet], v_lava[lag:][quiet])
        # where it spiked, Lava shows the reset (0) and the reference's pre-reset v was above the threshold
        assert np.all(v_lava[lag:][~quiet] == 0)
        assert np.all(v_before[~quiet] > d["layers"][k]["vThMant"] << 6)
        assert quiet.any() and (~quiet).any() and np.any(v_lava[lag:][quiet] != 0), name


# --------------------------------------------------------------------------------------------------------
# 2. Random layers against lava-nc's own fixed-point processes


def _random_neuron(rng, shape):
    return dict(i_decay=int(rng.integers(1, 4097)), v_decay=int(rng.integers(0, 4096)),
                vth=int(rng.integers(40, 800)), bias=rng.integers(-200, 201, shape))


def _lava_lif(L, shape, p, bias_lava, name):
    # lava's fixed-point LIF adds 1 to du (ds_offset), so du = iDecay - 1 gives the current decay iDecay.
    return L.LIF(shape=shape, du=p["i_decay"] - 1, dv=p["v_decay"], vth=p["vth"], bias_mant=bias_lava, bias_exp=6,
                 name=name)


def test_random_dense_layers_match_lava_fixed_pt():
    L = _lava()
    rng = np.random.default_rng(11)
    T, n_in, n = 40, 64, 8
    x = (rng.random((T, n_in)) < 0.3).astype(np.int64)
    cases = []
    for _ in range(3):
        w = rng.integers(-254, 255, (n, n_in))
        w[0, :2] = [254, -254]                           # both ends of the mixed-sign 8-bit range
        cases.append(dict(w=w, **_random_neuron(rng, n)))
    # Extremes, with a current that barely decays (iDecay 1), so u leaves the 24-bit range and wraps around:
    # all-inhibitory weights and a voltage that never decays, so v also saturates at -(2^23 - 1); and
    # all-excitatory weights, a voltage that forgets at once (v = u + bias) and a threshold near the top of
    # the range, so the neurons fire while u climbs past it and fall silent once u has wrapped.
    cases.append(dict(w=np.full((n, n_in), -254) + 2 * rng.integers(0, 3, (n, n_in)), i_decay=1, v_decay=0,
                      vth=1000, bias=rng.integers(-200, 201, n)))
    cases.append(dict(w=np.full((n, n_in), 254) - 2 * rng.integers(0, 3, (n, n_in)), i_decay=1, v_decay=4096,
                      vth=100_000, bias=rng.integers(-200, 201, n)))

    source = L.Source(data=x.T)                          # [n_in, T]
    probes = []
    for i, c in enumerate(cases):
        # A plain fixed-point Dense truncates 8-bit mixed-sign weights to 7 bits; netx pre-scales them.
        weights, bits, exp, _ = L.optimize_weight_bits(c["w"])
        dense = L.Dense(weights=weights, num_weight_bits=bits, weight_exp=exp)
        lif = _lava_lif(L, (n,), c, c["bias"], f"dense_lif_{i}")
        source.s_out.connect(dense.s_in)
        dense.a_out.connect(lif.a_in)
        probes.append(_probe_lif(L, lif, T))
    lava = _run_lava(L, source, probes, T)

    for i, (c, got) in enumerate(zip(cases, lava)):
        graph = _chain(n_in, [(nir.Linear(weight=c["w"].astype(np.float64)),
                               _loihi(n, c["i_decay"], c["v_decay"], c["vth"], c["bias"]))])
        ref = _trace(graph, _delayed(x))["n0"]
        if i < 3:
            _assert_active(got["s"], f"dense case {i}")
        for key in ("s", "u", "v"):
            np.testing.assert_array_equal(ref[key], got[key], err_msg=f"dense case {i} ({c['i_decay']=}, "
                                          f"{c['v_decay']=}, {c['vth']=}): {key}")
    inhibitory, excitatory = lava[-2:]
    assert np.any(inhibitory["v"] == -V_LIMIT), "v never saturated"
    assert np.any(inhibitory["u"] > 0), "u never wrapped (weights <= 0 keep u <= 0 otherwise)"
    assert np.any(excitatory["u"] < 0), "u never wrapped (weights >= 0 keep u >= 0 otherwise)"
    _assert_active(excitatory["s"], "the excitatory extreme")


def test_random_conv_layers_match_lava_fixed_pt():
    L = _lava()
    rng = np.random.default_rng(12)
    T, C, H, W = 30, 2, 5, 6
    x = (rng.random((T, C, H, W)) < 0.3).astype(np.int64)
    # (C_out, kernel (kH, kW), stride (sH, sW), padding (pH, pW)), in torch's / NIR's (H, W) order
    shapes = [(3, (3, 2), (1, 2), (1, 0)), (2, (2, 3), (2, 1), (0, 1)), (4, (3, 3), (1, 2), (1, 1))]

    source = L.Source(data=x.transpose(3, 2, 1, 0))      # lava's (x, y, f) = (W, H, C), time last
    cases, probes = [], []
    for i, (c_out, (kh, kw), stride, padding) in enumerate(shapes):
        w = rng.integers(-254, 255, (c_out, C, kh, kw))
        ho = (H + 2 * padding[0] - kh) // stride[0] + 1
        wo = (W + 2 * padding[1] - kw) // stride[1] + 1
        c = dict(w=w, stride=stride, padding=padding, out=(c_out, ho, wo), **_random_neuron(rng, (c_out, ho, wo)))
        cases.append(c)
        # As netx's create_conv: lava's Conv is a true convolution over (C_out, W, H, C_in), so flip the torch
        # cross-correlation kernel in both spatial axes and move it to (C_out, kW, kH, C_in); stride and
        # padding go (H, W) -> (x, y) = (W, H).
        w_lava = w[:, :, ::-1, ::-1].transpose(0, 3, 2, 1)
        conv = L.Conv(weight=w_lava, input_shape=(W, H, C), stride=stride[::-1], padding=padding[::-1])
        assert tuple(conv.output_shape) == (wo, ho, c_out)
        lif = _lava_lif(L, conv.output_shape, c, c["bias"].transpose(2, 1, 0), f"conv_lif_{i}")
        source.s_out.connect(conv.s_in)
        conv.a_out.connect(lif.a_in)
        probes.append(_probe_lif(L, lif, T))
    lava = _run_lava(L, source, probes, T)

    for i, (c, got) in enumerate(zip(cases, lava)):
        conv = nir.Conv2d(input_shape=(H, W), weight=c["w"].astype(np.float64), stride=c["stride"],
                          padding=c["padding"], dilation=1, groups=1, bias=np.zeros(len(c["w"])))
        graph = _chain((C, H, W), [(conv, _loihi(c["out"], c["i_decay"], c["v_decay"], c["vth"], c["bias"]))])
        ref = _trace(graph, _delayed(x))["n0"]
        _assert_active(got["s"], f"conv case {i}")
        for key in ("s", "u", "v"):
            np.testing.assert_array_equal(ref[key].transpose(0, 3, 2, 1), got[key],   # (C, H, W) -> (W, H, C)
                                          err_msg=f"conv case {i} ({c['stride']=}, {c['padding']=}): {key}")


# --------------------------------------------------------------------------------------------------------
# 3. quantize(): the structural promises, a hand computation, and predictions


def _incoming_weights(graph: nir.NIRGraph, name: str) -> list[np.ndarray]:
    return [graph.nodes[s].weight for s, d in graph.edges if d == name]


@pytest.mark.parametrize("model_name, changes, v_decay", [("scnn-digits", {}, 2048),            # LIF, tau 2
                                                          ("revsresnet-digits", {"planes": [4, 8]}, 0)])  # IF
def test_quantize_structure(model_name, changes, v_decay):
    float_graph = collapse(trained_like(model_name, 0, **changes), 4).graph
    q = quantize(float_graph)
    g = q.graph
    float_neurons = {n: node for n, node in float_graph.nodes.items() if isinstance(node, (nir.LIF, nir.IF))}
    loihi = {n: node for n, node in g.nodes.items() if isinstance(node, LoihiNeuron)}
    assert set(loihi) == set(float_neurons) | {"readout"}
    assert set(q.populations) == set(loihi)

    for name, node in g.nodes.items():
        if isinstance(node, nir.Linear):
            w = np.asarray(node.weight)
            assert np.all(w == np.round(w)), name
            assert np.abs(w).max() <= WEIGHT_MAX, name
        else:
            assert isinstance(node, (nir.Input, nir.Output, nir.Flatten, LoihiNeuron)), (name, type(node))

    readout = loihi["readout"]
    assert readout.emit == "potential" and readout.v_th_mant == READOUT_VTH == 131071
    assert readout.i_decay == 4096 and readout.v_decay == 4096
    depth = {"input": 0, **{n: p.depth for n, p in q.populations.items()}}
    last_read = {n: max((depth[c] for c, srcs in q.sources.items() if n in srcs), default=0) for n in depth}
    relayed = {k for n in depth for k in range(depth[n] + 1, last_read[n])}
    per_depth: dict[int, set] = {}
    for name, node in loihi.items():
        bias = np.asarray(node.bias)
        assert np.issubdtype(bias.dtype, np.integer) and np.abs(bias).max() <= BIAS_MAX, name
        assert node.i_decay == 4096, name
        # the largest possible input never wraps the 24-bit current: sum |w| < 2^17
        rows = sum(np.abs(w).sum(1) for w in _incoming_weights(g, name))
        assert rows.max() < 1 << 17, name
        if name == "readout":
            continue
        src = float_neurons[name]
        # <= 253 where the layer also holds relays (a relay's weight must exceed it and fit 8 bits),
        # else the 17-bit register
        cap = RELAY_VTH_MAX if q.populations[name].depth in relayed else 131071
        assert node.emit == "spikes" and 1 <= node.v_th_mant <= cap, name
        assert isinstance(src, nir.LIF if v_decay else nir.IF)
        assert node.v_decay == v_decay, name
        theta = float(np.asarray(src.v_threshold).flat[0])
        assert node.scale == pytest.approx(node.v_th_mant / theta), name          # sigma = vThMant / theta
        pop = q.populations[name]
        per_depth.setdefault(pop.depth, set()).add((node.v_th_mant, node.v_decay))
    assert all(len(v) == 1 for v in per_depth.values()), per_depth             # one configuration per netx layer
    assert any(np.abs(np.asarray(n.weight)).max() == WEIGHT_MAX for n in g.nodes.values()
               if isinstance(n, nir.Linear))                                     # the 8-bit range is used


W1 = np.array([[0.6, -1.0, 0.25],
               [2.0, 0.1, -0.3]])
B1 = np.array([0.2, -0.05])
W1_SMALL = np.array([[0.6, -1.0, 0.25],
                     [0.3, 0.1, -0.3]])
W2 = np.array([[1.5, -0.7],
               [0.2, 0.9]])

# Worked by hand from the module docstring: sigma_max = min(254 / max|g W|, 4095 / max|g b|,
# INPUT_MAX / max row(|g W| + |g b|)); vThMant = floor(min(cap, theta sigma_max)) with cap 253 in a layer that
# holds relays and 131071 elsewhere (these chains have none); sigma = vThMant / theta;
# w = rint(sigma g W), bias = rint(sigma g b). The readout: sigma = its own sigma_max (not floored), vDecay 4096.
HAND_CASES = {
    # IF, theta 1: 254 / 2.0 = 127 limits (4095 / 0.2 and 130817 / 2.45 are far larger) -> vThMant 127,
    # sigma 127: 127 * W1 = [[76.2, -127, 31.75], [254, 12.7, -38.1]]; 127 * B1 = [25.4, -6.35].
    "IF theta 1": (nir.IF(r=np.ones(2), v_threshold=np.ones(2), v_reset=np.zeros(2)), W1,
                   dict(v_decay=0, v_th_mant=127, scale=127.0,
                        weight=[[76, -127, 32], [254, 13, -38]], bias=[25, -6])),
    # LIF tau 2, theta 2.5: g = 1/2, 254 / 0.5 = 508 -> theta * 508 = 1270 (no relay here, so no 253 cap)
    # -> vThMant 1270, sigma 508, sigma g = 254: 254 * W1_SMALL = [[152.4, -254, 63.5], [76.2, 25.4, -76.2]]
    # (63.5 rounds half to even: 64); 254 * B1 = [50.8, -12.7].
    "LIF tau 2 theta 2.5": (nir.LIF(tau=np.full(2, 2.0), r=np.ones(2), v_leak=np.zeros(2),
                                    v_threshold=np.full(2, 2.5), v_reset=np.zeros(2)), W1_SMALL,
                            dict(v_decay=2048, v_th_mant=1270, scale=508.0,
                                 weight=[[152, -254, 64], [76, 25, -76]], bias=[51, -13])),
}
# Readout: 254 / 1.5 = 169.33 (INPUT_MAX / 2.2 is larger): 169.33 * W2 = [[254, -118.53], [33.87, 152.4]].
HAND_READOUT = dict(scale=254 / 1.5, weight=[[254, -119], [34, 152]])


@pytest.mark.parametrize("case", list(HAND_CASES))
def test_quantize_hand_computation(case):
    neuron, w1, want = HAND_CASES[case]
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([3])), "fc1": nir.Affine(weight=w1, bias=B1), "lif": neuron,
               "fc2": nir.Linear(weight=W2), "output": nir.Output(output_type=np.array([2]))},
        edges=[("input", "fc1"), ("fc1", "lif"), ("lif", "fc2"), ("fc2", "output")], type_check=False)
    q = quantize(graph)
    g = q.graph

    pop = g.nodes["lif"]
    assert isinstance(pop, LoihiNeuron) and pop.emit == "spikes"
    assert (pop.i_decay, pop.v_decay, pop.v_th_mant) == (4096, want["v_decay"], want["v_th_mant"])
    assert pop.scale == pytest.approx(want["scale"], rel=1e-12)
    np.testing.assert_array_equal(pop.bias, want["bias"])
    (w_in,) = _incoming_weights(g, "lif")
    np.testing.assert_array_equal(w_in, want["weight"])

    readout = g.nodes["readout"]
    assert (readout.i_decay, readout.v_decay, readout.v_th_mant, readout.emit) == (4096, 4096, 131071, "potential")
    assert readout.scale == pytest.approx(HAND_READOUT["scale"], rel=1e-12)
    np.testing.assert_array_equal(readout.bias, [0, 0])
    (w_out,) = _incoming_weights(g, "readout")
    np.testing.assert_array_equal(w_out, HAND_READOUT["weight"])
    assert q.populations["lif"].depth == 1 and q.populations["readout"].depth == 2


def _briefly_trained_scnn(T: int, data) -> torch.nn.Module:
    """``trained_like("scnn-digits", 0)`` after one epoch of AdamW on rate-coded digits (float32, a few seconds).

    As it comes, ``trained_like("scnn-digits", 0)`` answers class 3 for every one of the 64 test digits and its
    second LIF population almost never fires on rate-coded input, so any quantisation would "agree" with it.
    One epoch gives a network with both populations active and varied answers (about 70% accuracy)."""
    model = trained_like("scnn-digits", 0).float().train()
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    order = torch.randperm(len(data.y_train), generator=g)
    for i in range(0, len(order), 64):
        idx = order[i:i + 64]
        loss = torch.nn.functional.cross_entropy(model(encode(data.x_train[idx], T, "rate", g)), data.y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval().double()


def test_quantized_predictions_agree_with_float_reference():
    T = 4
    data = load_digits()
    model = _briefly_trained_scnn(T, data)
    float_graph = collapse(model, T).graph
    q = quantize(float_graph)
    x = encode(data.x_test[:64], T, "rate", torch.Generator().manual_seed(1)).double()
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    float_out, float_spikes = ReferenceExecutor(float_graph).run(x, record=True)
    quant_out, quant_spikes = ReferenceExecutor(q.graph).run(x, record=True)
    float_pred, quant_pred = float_out.mean(0).argmax(-1), quant_out.mean(0).argmax(-1)
    agreement = (float_pred == quant_pred).double().mean().item()
    y = data.y_test[:64]
    flips = {n: (float_spikes[n].reshape(quant_spikes[n].shape) != quant_spikes[n]).double().mean().item()
             for n in quant_spikes if n in float_spikes}
    print(f"\nquantised vs float reference, scnn-digits (one epoch), 64 rate-coded digits, T={T}: prediction "
          f"agreement {agreement:.3f}; accuracy float {(float_pred == y).double().mean():.3f}, quantised "
          f"{(quant_pred == y).double().mean():.3f}; spikes that differ per population {flips}")
    assert len(float_pred.unique()) >= 5                       # varied answers, not one class for everything
    for name, s in float_spikes.items():
        assert s.mean() > 0.01, name                           # every population really fires
    assert agreement >= 0.9


# --------------------------------------------------------------------------------------------------------
# 4. Spike input only


def test_require_spike_input():
    with pytest.raises(LoihiExportError, match="--encoding rate"):
        require_spike_input("direct", "x")
    require_spike_input("rate", "x")
