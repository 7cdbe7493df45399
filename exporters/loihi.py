"""Quantise a collapsed spiking graph onto Loihi 2's fixed-point grid (DESIGN §4): the quantised reference.

Input: the float graph of ``collapse`` (NIR nodes, fan-in allowed). Output: a graph of the same topology
whose neurons are ``LoihiNeuron`` populations (Loihi's CUBA neuron in integers, ``exporters/nodes.py``) and
whose synapses are integer ``Linear`` weight mantissas; the reference executor runs it bit for bit as
lava-nc's fixed-point models do, and ``exporters/loihi_chain.py`` turns it into the netx chain that Lava runs.

What is folded and how:

- every path of stateless linear nodes from a source (the input or a spike population) to a neuron
  (pooling, convolution, flatten, affine) becomes one synapse matrix ``M`` plus a constant ``b`` (the
  path applied to zero: biases and BatchNorm shifts), found by applying the path to the unit basis. Average
  pooling has no netx layer; folded this way it becomes part of the next synapse;
- the contract's LIF ``h = v + (x - v) / tau`` is CUBA with ``iDecay = 4096`` (the current forgets at once,
  ``du = 1``), ``vDecay = 4096 / tau`` (``dv = 1/tau``) and the input scaled by ``1/tau``; an IF neuron has
  ``vDecay = 0`` and its input unscaled. The bias joins the voltage, as Lava adds it to ``v``, which with
  ``du = 1`` is the same as adding it to the input;
- a population's threshold, weights and bias are scaled together by ``sigma`` (the spikes do not change
  under a common positive scale): ``vThMant = sigma * theta`` exactly, ``w = round(sigma g M)``,
  ``bias = round(sigma g b)`` with ``g = 1/tau`` (LIF) or 1 (IF). Potentials read back as ``v / 64 / sigma``;
- populations at the same depth (1 + the deepest source; they share a netx layer once relayed) share one
  ``vThMant`` and ``vDecay``. ``vThMant`` is the largest integer for which every weight fits 8 bits
  (``|w| <= 254``), every bias 13 bits (``|bias| <= 4095``), every neuron's largest possible input stays
  below ``2^17`` (so the 24-bit current never wraps) and it fits the 17-bit register; where the layer
  will also hold relays, a relay must still out-fire it (``vThMant <= 253``: a relay's weight must exceed
  it and stay <= 254), which costs weight precision only there;
- the readout (the graph's ``Output``, an affine map of spikes) is a population that never fires:
  ``vDecay = 4096`` (it forgets each step), ``vThMant = 131071``; its potential is the logits.
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

from dataclasses import dataclass, field
from typing import Optional

import nir
import numpy as np
import torch

from .graph import STATELESS_LINEAR, GraphError, linear_fn, schedule
from .nodes import LoihiNeuron, MaxPool2d, SpikingAttention

__all__ = ["LoihiExportError", "Quantized", "QuantizedPopulation", "Term", "float_terms", "quantize", "relays",
           "require_spike_input",
           "WEIGHT_MAX", "BIAS_MAX", "RELAY_VTH_MAX", "READOUT_VTH", "INPUT_MAX", "VTH_MAX"]

WEIGHT_MAX = 254          # 8-bit weight mantissas that netx's weight-bit optimisation keeps exactly (mixed sign)
BIAS_MAX = 4095           # 13-bit signed bias mantissa (lava's PyLifModelBitAcc)
RELAY_VTH_MAX = 253       # a relay's weight must exceed the layer's vThMant and fit 8 bits
INPUT_LIMIT = (1 << 17) - 1  # |a_in + bias| bound that keeps u = a_in << 6 (and v) inside 24 bits
INPUT_MAX = INPUT_LIMIT - WEIGHT_MAX   # the same for the float row sums, with room for rounding
VTH_MAX = (1 << 17) - 1      # the 17-bit threshold register
READOUT_VTH = VTH_MAX        # the readout never reaches it in practice
MAX_MATRIX = 50_000_000   # entries of one folded synapse matrix; larger models are beyond this exporter


class LoihiExportError(RevsnnError):
    """A graph (or a part of it) that Loihi's neurons cannot express; the message names the node and why."""


def require_spike_input(encoding: str, model: str = "this model") -> None:
    """Loihi receives spikes; a model trained on real-valued (direct) input cannot stream it in."""
    from revsnn.data import SPIKE_ENCODINGS  # rate-coded images and event frames are spikes

    if encoding not in SPIKE_ENCODINGS:
        raise LoihiExportError(
            f"{model} was trained with {encoding!r} input encoding, which feeds real values to its first layer; "
            "Loihi receives only spikes, so train it with `--encoding rate` (images) or `--encoding events` "
            "(event data) to deploy it to Lava.")


@dataclass
class Term:
    source: str                 # "input" or a population
    matrix: np.ndarray          # (neurons, source neurons), float64, flattened (C, H, W) order on both sides
    bias: np.ndarray            # (neurons,): the path applied to zero


@dataclass
class QuantizedPopulation:
    name: str
    shape: tuple[int, ...]      # the float population's shape (the quantised one is flat)
    depth: int
    v_decay: int
    v_th_mant: int
    scale: float                # sigma: float potential = v / 64 / sigma
    neurons: int
    synapses: int               # nonzero integer weights into it
    i_decay: int = 4096         # the current's decay (4096: it forgets at once; CubaLIF: 4096 / tau_syn)


@dataclass
class Quantized:
    """The quantised reference graph and what it was made of."""

    graph: nir.NIRGraph
    input_shape: tuple[int, ...]
    populations: dict[str, QuantizedPopulation]        # in topological order; the readout is "output"
    sources: dict[str, list[str]]                      # population -> the sources of its terms, in order
    readout: str = "output"
    metadata: dict = field(default_factory=dict)
    # population -> sigma g: its integer weights are rint(factor * matrix) of its float terms (``float_terms``)
    factors: dict[str, float] = field(default_factory=dict)
    terms: dict[str, list[Term]] = field(default_factory=dict)   # population -> its float terms

    @property
    def depth(self) -> int:
        return self.populations[self.readout].depth


# --------------------------------------------------------------------------------------------------------
# Reading the float graph: populations and the linear paths into them.


def _refuse(name: str, node: nir.NIRNode) -> LoihiExportError:
    kind = type(node).__name__
    why = {
        "SpikingAttention": "it multiplies two spike maps (Q K^T V), a product no Loihi synapse or neuron computes",
        "MaxPool2d": "max pooling is not linear, so no synapse can carry it",
        "Threshold": "a stateless threshold unit (T-RevSNN's non-resetting level state) has no CUBA neuron",
        "Delay": "a delay (a recurrent layer's loop, T-RevSNN's columns, the RevLIF node's soft reset) has no "
                 "netx layer, and netx loads only feedforward chains",
        "Scale": "a scaled feedback path (the reversible RevLIF node's soft reset) has no netx layer",
        "Conv1d": "token convolutions belong to RevSFormer, whose attention Loihi cannot compute",
    }.get(kind, "netx has no layer for it")
    return LoihiExportError(f"node {name!r} is a {kind}: {why}; this model cannot be deployed to Loihi "
                            "(export it to NIR or ONNX instead).")


def _paths(name: str, inputs: dict[str, list[str]], graph: nir.NIRGraph, sources: set[str]) -> list[tuple[str, list[str]]]:
    """Every (source, linear nodes in forward order) path that ends in ``name``'s input."""
    out = []
    for src in inputs[name]:
        if src in sources:
            out.append((src, []))
            continue
        node = graph.nodes[src]
        if not isinstance(node, STATELESS_LINEAR) or isinstance(node, nir.Scale):
            raise _refuse(src, node)
        out += [(s, ops + [src]) for s, ops in _paths(src, inputs, graph, sources)]
    return out


def _fold(graph: nir.NIRGraph, source: str, source_shape: tuple[int, ...], ops: list[str], target: str,
          matrix: bool = True) -> Term:
    """The path as ``M x + b`` on flattened vectors, by applying it to the unit basis and to zero (``matrix``
    False: only ``b``, the matrix left empty)."""
    n = int(np.prod(source_shape))
    fns = [linear_fn(graph.nodes[o]) for o in ops]

    def apply(x: torch.Tensor) -> torch.Tensor:
        for f in fns:
            x = f(x)
        return x.reshape(x.shape[0], -1)

    with torch.no_grad():
        zero = apply(torch.zeros(1, *source_shape, dtype=torch.float64))[0]
        if not matrix:
            return Term(source, np.zeros((zero.numel(), 0)), zero.numpy().copy())
        if zero.numel() * n > MAX_MATRIX:
            raise LoihiExportError(f"the synapse into {target!r} would be a {zero.numel()} x {n} matrix, beyond "
                                   "what this exporter folds; Lava deployment is for small configurations.")
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *source_shape)
        m = (apply(basis) - zero).T
    return Term(source, m.numpy().copy(), zero.numpy().copy())


def _neuron_constants(name: str, node: nir.NIRNode) -> tuple[float, float, int, int]:
    """(theta, g, vDecay, iDecay) of a float neuron population: spike when v > theta, input scale g."""
    def uniform(field_: str, value) -> float:
        a = np.asarray(value, dtype=np.float64)
        if a.size and not np.all(a == a.flat[0]):
            raise LoihiExportError(f"population {name!r} has a different {field_} per neuron; a netx layer has one "
                                   "neuron configuration.")
        return float(a.flat[0])

    if isinstance(node, (nir.LI, nir.CubaLI, nir.CubaLIF)):
        # Loihi's CUBA neuron: u = u (1 - iDecay/4096) + a; v = v (1 - vDecay/4096) + u. The contract's
        # i = i + (w_in x - i)/tau_syn, v = v + (r i - v)/tau_mem is that with u = (r / tau_mem) i, so the
        # synapse carries g = w_in r / (tau_syn tau_mem) and iDecay = 4096 / tau_syn (LI: tau_syn = 1).
        if uniform("v_leak", node.v_leak) != 0.0:
            raise LoihiExportError(f"population {name!r} leaks towards {uniform('v_leak', node.v_leak)}; the "
                                   "exporter maps only a leak towards 0.")
        tau_m = uniform("tau", node.tau) if isinstance(node, nir.LI) else uniform("tau_mem", node.tau_mem)
        tau_s = 1.0 if isinstance(node, nir.LI) else uniform("tau_syn", node.tau_syn)
        w_in = 1.0 if isinstance(node, nir.LI) else uniform("w_in", np.broadcast_to(node.w_in, np.shape(node.r)))
        v_decay, i_decay = _decay(name, "tau_mem", tau_m), _decay(name, "tau_syn", tau_s)
        theta = uniform("v_threshold", node.v_threshold) if isinstance(node, nir.CubaLIF) else np.inf
        if isinstance(node, nir.CubaLIF):
            if uniform("v_reset", node.v_reset) != 0.0:
                raise LoihiExportError(f"population {name!r} resets to {uniform('v_reset', node.v_reset)}; Loihi's "
                                       "neurons reset to 0.")
            if theta <= 0:
                raise LoihiExportError(f"population {name!r} has threshold {theta}; Loihi needs a positive "
                                       "threshold.")
        return theta, w_in * uniform("r", node.r) / (tau_s * tau_m), v_decay, i_decay
    if isinstance(node, (nir.LIF, nir.IF)):
        if uniform("v_reset", node.v_reset) != 0.0:
            raise LoihiExportError(f"population {name!r} resets to {uniform('v_reset', node.v_reset)}; Loihi's "
                                   "neurons reset to 0.")
        r = uniform("r", node.r)
        theta = uniform("v_threshold", node.v_threshold)
        if theta <= 0:
            raise LoihiExportError(f"population {name!r} has threshold {theta}; Loihi needs a positive threshold.")
        if isinstance(node, nir.IF):
            return theta, r, 0, 4096
        if uniform("v_leak", node.v_leak) != 0.0:
            raise LoihiExportError(f"population {name!r} leaks towards {uniform('v_leak', node.v_leak)}; the "
                                   "exporter maps only a leak towards 0.")
        tau = uniform("tau", node.tau)
        return theta, r / tau, _decay(name, "tau", tau), 4096
    raise _refuse(name, node)


def _decay(name: str, field_: str, tau: float) -> int:
    """``4096 / tau`` on Loihi's 1/4096 grid, or one sentence."""
    if tau < 1:
        raise LoihiExportError(f"population {name!r} has {field_} = {tau} < 1 step, which no decay in [0, 1] gives.")
    decay = 4096.0 / tau
    if abs(decay - round(decay)) > 1e-9:
        raise LoihiExportError(f"population {name!r} has {field_} = {tau} steps: its decay 4096 / {field_} = "
                               f"{decay:.3f} is not on Loihi's 1/4096 grid, so no fixed-point run can equal the float "
                               "model; use a time constant that divides 4096 steps (1, 2, 4, 8, ...) or 4096 / an "
                               "integer.")
    return int(round(decay))


# --------------------------------------------------------------------------------------------------------


def float_terms(graph: nir.NIRGraph, matrices: bool = True) -> dict[str, list[Term]]:
    """The float synapses the quantiser rounds: population (``"readout"`` for the output) -> one ``Term`` per
    source, ``matrix`` and ``bias`` folded from every linear path (BatchNorm, pooling, the sums of a stream).
    The integer weights of ``quantize(graph)`` are ``rint(factors[P] * matrix)``, its biases
    ``rint(factors[P] * sum of the terms' biases)``. Public for ``revsnn/finetune.py``'s grid projection, so that
    the folding is computed in one place. ``matrices=False``: the biases only (the matrices empty), which is
    fast (no unit basis to push through)."""
    f = _fold_terms(graph, matrices)
    return {("readout" if n == f.output_name else n): ts for n, ts in f.terms.items()}


@dataclass
class _Folded:
    terms: dict[str, list[Term]]
    neurons: list[str]
    order: list[str]
    input_name: str
    output_name: str
    shapes: dict
    out_shape: tuple[int, ...]
    li_readout: Optional[str]


def _fold_terms(graph: nir.NIRGraph, matrices: bool = True) -> _Folded:
    """Everything of ``quantize`` before the grid is chosen: the populations and their float terms."""
    try:
        sched = schedule(graph)   # the one schedule: sources in fan-in order, evaluation order, shapes
    except GraphError as exc:
        raise LoihiExportError(str(exc)) from exc
    inputs, input_name, output_name, shapes = sched.inputs, sched.input_name, sched.output_name, sched.shapes
    # A leaky integrator right before the Output (the usual readout of graphs from other tools) is the readout
    # population itself: a CUBA neuron that never fires, whose voltage is the output.
    feeds_out = inputs[output_name]
    li_readout = feeds_out[0] if len(feeds_out) == 1 and isinstance(graph.nodes[feeds_out[0]],
                                                                     (nir.LI, nir.CubaLI)) else None
    for name, node in graph.nodes.items():  # name what cannot be deployed before anything else
        if name == li_readout:
            continue
        if not isinstance(node, (nir.Input, nir.Output, nir.LIF, nir.IF, nir.CubaLIF, *STATELESS_LINEAR)) or \
                isinstance(node, (nir.Scale, nir.Conv1d)):
            raise _refuse(name, node)
    if input_name != "input" and "input" in graph.nodes:
        raise LoihiExportError(f"a population is named 'input' beside the graph's input {input_name!r}; rename it.")
    neurons = [n for n in sched.order if isinstance(graph.nodes[n], (nir.LIF, nir.IF, nir.CubaLIF))]
    sources = {input_name, *neurons}
    order = neurons + [output_name]

    terms: dict[str, list[Term]] = {}
    for name in order:
        paths = _paths(li_readout if (name == output_name and li_readout) else name, inputs, graph, sources)
        if not paths:
            raise LoihiExportError(f"{name!r} has no input.")
        merged: dict[str, Term] = {}   # one term per source: two paths from one source add up
        for src, ops in paths:
            term = _fold(graph, src, shapes[src], ops, name, matrices)
            if src in merged:
                merged[src].matrix += term.matrix
                merged[src].bias += term.bias
            else:
                merged[src] = term
        terms[name] = list(merged.values())
    if input_name != "input":   # the chain and netx name the input "input" (spikingjelly writes "input_1")
        for ts in terms.values():
            for t in ts:
                if t.source == input_name:
                    t.source = "input"
        shapes = {("input" if k == input_name else k): v for k, v in shapes.items()}
        input_name = "input"
    out_shape = (terms[output_name][0].matrix.shape[0],)
    return _Folded(terms, neurons, order, input_name, output_name, shapes, out_shape, li_readout)


def quantize(graph: nir.NIRGraph) -> Quantized:
    """The quantised reference of a collapsed float graph (see the module docstring)."""
    f = _fold_terms(graph)
    terms, neurons, order, input_name, output_name = f.terms, f.neurons, f.order, f.input_name, f.output_name
    shapes, out_shape, li_readout = f.shapes, f.out_shape, f.li_readout

    depth = {input_name: 0}
    for name in order:
        depth[name] = 1 + max(depth[t.source] for t in terms[name])

    # One vThMant and vDecay per depth: the populations that will share a netx layer. A depth holds relays
    # when something shallower is still read deeper (exporters/loihi_chain.py).
    relayed_depths = set(relays(depth, {n: [t.source for t in terms[n]] for n in order}))
    constants = {n: _neuron_constants(n, graph.nodes[n]) for n in neurons}
    by_depth: dict[int, list[str]] = {}
    for n in neurons:
        by_depth.setdefault(depth[n], []).append(n)
    v_th: dict[int, int] = {}
    for d, members in by_depth.items():
        if d in relayed_depths and any(constants[n][3] != 4096 for n in members):
            n = next(n for n in members if constants[n][3] != 4096)
            raise LoihiExportError(f"population {n!r} keeps a synaptic current (tau_syn > 1 step) in a chain layer "
                                   "that must also relay earlier spikes; a relay needs a current that forgets at "
                                   "once, so this branching graph cannot be deployed (a chain-shaped one can).")
        decays = {constants[n][2:] for n in members}
        if len(decays) > 1:
            a, b = sorted(members, key=lambda n: constants[n][2])[:: len(members) - 1]
            raise LoihiExportError(f"populations {a!r} and {b!r} sit at the same depth {d} but decay differently "
                                   f"(vDecay, iDecay {constants[a][2:]} and {constants[b][2:]}); a netx layer holds one neuron "
                                   "configuration.")
        # A layer that will hold relays needs vThMant <= 253 (a relay's weight must exceed it and fit 8 bits);
        # elsewhere only the 17-bit threshold register bounds it, and the weights keep their full 8 bits.
        limit = float(RELAY_VTH_MAX if d in relayed_depths else VTH_MAX)
        for n in members:
            theta, g = constants[n][:2]
            limit = min(limit, theta * _scale_limit(n, terms[n], g))
        if limit < 1:
            raise LoihiExportError(f"the threshold of the populations at depth {d} is too small against their "
                                   "weights for Loihi's 8-bit weights (it would quantise below 1); retrain with "
                                   "smaller weights or a larger threshold.")
        # Rounding can push a row's integer sum past the bound its float sum kept: step down until it holds.
        # The tolerance: a limit a hair below an integer is that integer computed with rounding error (a
        # network whose weights already lie on this grid, revsnn/finetune.py's snap_to_grid, stored in float32,
        # must give its vThMant back); it cannot break a bound: the weights then reach at most 254.0003 and the
        # biases 4095.004, which round to 254 and 4095, and the input bound is checked on the integers below.
        limit = int(np.floor(limit * (1 + 1e-6)))
        while limit > 1 and any(_max_input(terms[n], limit / constants[n][0] * constants[n][1]) > INPUT_LIMIT
                                for n in members):
            limit = int(limit * 0.99)
        v_th[d] = limit

    nodes: dict[str, nir.NIRNode] = {input_name: nir.Input(input_type=np.array(shapes[input_name]))}
    edges: list[tuple[str, str]] = []
    pops: dict[str, QuantizedPopulation] = {}
    factors: dict[str, float] = {}
    flat: dict[str, str] = {}

    def source_node(src: str) -> str:
        if len(shapes[src]) == 1:
            return src
        if src not in flat:
            flat[src] = f"{src}.flat"
            nodes[flat[src]] = nir.Flatten(input_type={"input": np.array(shapes[src])}, start_dim=0, end_dim=-1)
            edges.append((src, flat[src]))
        return flat[src]

    for name in order:
        i_decay = 4096
        if name == output_name:
            g, v_decay = 1.0, 4096
            if li_readout:
                _, g, v_decay, i_decay = _neuron_constants(li_readout, graph.nodes[li_readout])
            sigma = _scale_limit(name, terms[name], g)
            vth, emit, shape = READOUT_VTH, "potential", out_shape
        else:
            theta, g, v_decay, i_decay = constants[name]
            vth = v_th[depth[name]]
            sigma, emit, shape = vth / theta, "spikes", shapes[name]
        bias = np.zeros(int(np.prod(shape)))
        synapses = 0
        pop_name = "readout" if name == output_name else name
        factors[pop_name] = sigma * g
        for t in terms[name]:
            w = np.rint(sigma * g * t.matrix)
            bias += t.bias
            synapses += int(np.count_nonzero(w))
            syn = f"{t.source}.to.{pop_name}"
            nodes[syn] = nir.Linear(weight=w)
            edges += [(source_node(t.source), syn), (syn, pop_name)]
        nodes[pop_name] = LoihiNeuron(shape=np.array([bias.size]), i_decay=i_decay, v_decay=v_decay, v_th_mant=vth,
                                      bias=np.rint(sigma * g * bias).astype(np.int64), scale=sigma, emit=emit)
        pops[pop_name] = QuantizedPopulation(pop_name, tuple(shape), depth[name], v_decay, vth, sigma,
                                             int(np.prod(shape)), synapses, i_decay)
    nodes["output"] = nir.Output(output_type=np.array(out_shape))
    edges.append(("readout", "output"))
    metadata = {**graph.metadata, "quantized": "loihi2 fixed point (lava fixed_pt)"}
    qgraph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=False)
    srcs = {("readout" if n == output_name else n): [t.source for t in terms[n]] for n in order}
    float_ = {("readout" if n == output_name else n): ts for n, ts in terms.items()}
    return Quantized(qgraph, shapes[input_name], pops, srcs, "readout", metadata, factors, float_)


def relays(depth: dict[str, int], sources: dict[str, list[str]]) -> dict[int, list[str]]:
    """The relay rule of the chain (``exporters/loihi_chain.py``): chain layer ``k`` relays every population (or
    the input) shallower than ``k`` that a population deeper than ``k`` still reads. Layer -> those names, in
    ``depth``'s order."""
    last_read = {n: max((depth[c] for c, srcs in sources.items() if n in srcs), default=0) for n in depth}
    out: dict[int, list[str]] = {}
    for n in depth:
        for k in range(depth[n] + 1, last_read[n]):
            out.setdefault(k, []).append(n)
    return out


def _max_input(terms: list[Term], factor: float) -> float:
    """The largest |sum of integer weights| + |integer bias| of one neuron, for weights ``round(factor M)``."""
    rows = sum(np.abs(np.rint(factor * t.matrix)).sum(1) for t in terms)
    return float((rows + np.abs(np.rint(factor * sum(t.bias for t in terms)))).max())


def _scale_limit(name: str, terms: list[Term], g: float) -> float:
    """The largest sigma for which the population's integer weights, bias and input stay in range."""
    m = max(float(np.abs(t.matrix).max(initial=0.0)) for t in terms) * g
    bias = np.abs(sum(t.bias for t in terms)) * g
    rows = sum(np.abs(t.matrix).sum(1) for t in terms) * g + bias
    limits = [WEIGHT_MAX / m if m > 0 else np.inf,
              BIAS_MAX / float(bias.max()) if bias.max() > 0 else np.inf,
              INPUT_MAX / float(rows.max()) if rows.max() > 0 else np.inf]
    sigma = min(limits)
    if not np.isfinite(sigma):
        raise LoihiExportError(f"{name!r} receives only zero weights and no bias; it would never change.")
    return sigma
