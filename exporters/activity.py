"""What it costs: spikes, synaptic operations, multiply-accumulates and energy per inference, from a graph and
the spikes recorded on it.

Input: a spiking graph (the float graph of ``collapse``, the quantised one of ``exporters/loihi.py``, or a Loihi
chain as ``LoihiChain.to_graph()``) and the spikes its populations emitted, ``{population: [T, B, *shape]}`` —
what ``ReferenceExecutor.run(x, record=True)`` returns, or what a target that exposes spikes recorded (the Lava
target's ``layer_spikes``, keyed ``layer0``, ``layer1``, ... as in the chain graph). Nothing here runs a model.

Definitions (the same for every graph, so that the float model, its quantisation, its relay chain and Lava's
run are comparable):

- a *synapse* of a source (the input or a spike population) is a nonzero entry of the linear map from it to a
  population or to the readout: every path of stateless linear nodes (convolution, pooling, flatten, affine,
  scale; ``Delay`` only shifts time) folded into one matrix, as a neuromorphic chip stores it. Its *fan-out*
  per neuron is the number of such entries in the neuron's column;
- a *synaptic operation* (SOP, an accumulate) happens when a spike crosses one synapse: SOPs = Σ spikes ×
  fan-out of the neuron that fired, per step;
- a model fed real values (``direct`` encoding) does not send spikes from the input: the linear nodes that
  read it before any neuron multiply every value every step: multiply-accumulates (MACs) = the nonzero
  weights each such node applies (a convolution: its nonzero kernel entries × output positions; affine and
  linear: nonzero weights; scale: elements; pooling and flatten: none);
- unrolled graphs (T-RevSNN: every column's nodes exist, column t is live at step t) count a population only
  at its live step (``live_steps``), and, with static input (the stem runs once), each input node's MACs once,
  at the step its ``Delay`` assigns;
- energy per inference = MACs × ``E_MAC`` + SOPs × ``E_AC``.

T-RevSNN's graph expands each leaky level state ``c_i`` into per-column terms (``collapse_trev``), so a spike
feeding ``c_i[t]`` also reaches ``c_i[t+1], ...`` through folded copies of the same path; its SOPs count each
such copy once and are an upper bound of what a chip holding ``c_i`` in a neuron's state would spend.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

import nir
import numpy as np
import torch

from .graph import STATELESS_LINEAR, linear_fn
from .nodes import LoihiNeuron, MaxPool2d, SpikingAttention

__all__ = ["E_MAC_PJ", "E_AC_PJ", "ENERGY_SOURCE", "PopulationActivity", "Activity", "fan_out", "count_activity",
           "mac_counts"]

# Energy per operation, 45 nm CMOS, from M. Horowitz, "Computing's energy problem (and what we can do about it)",
# ISSCC 2014: a 32-bit float multiply costs 3.7 pJ and an add 0.9 pJ, so a multiply-accumulate is 4.6 pJ and an
# accumulate (what a spike crossing a synapse costs) 0.9 pJ. The spiking-network papers (the seeds among them)
# use exactly these two figures; checked in two public tables: PMC8934428 Table 3 (float32 add 0.9 pJ, mult
# 3.7 pJ, "from Horowitz") and PMC10242054 Table 3 ("each operation in ANN (SNN) consumes 4.6 pJ (0.9 pJ)").
E_MAC_PJ = 4.6
E_AC_PJ = 0.9
ENERGY_SOURCE = "Horowitz, ISSCC 2014, 45 nm: E_MAC = 4.6 pJ (3.7 pJ multiply + 0.9 pJ add), E_AC = 0.9 pJ"

POPULATIONS = (nir.LIF, nir.IF, nir.CubaLIF, nir.Threshold, LoihiNeuron, SpikingAttention)


@dataclass
class PopulationActivity:
    name: str
    neurons: int
    synapses: int                     # Σ fan-out: synapses the population drives
    spikes: np.ndarray                # [T] spikes per inference (mean over samples), per step
    synops: np.ndarray                # [T] synaptic operations per inference, per step
    relay: bool = False               # a Loihi relay (chain graphs), not a population of the model

    @property
    def rate(self) -> float:
        """Spikes per neuron per step."""
        return float(self.spikes.sum()) / max(self.neurons * len(self.spikes), 1)


@dataclass
class Activity:
    samples: int
    time_steps: int
    populations: list[PopulationActivity]          # the input first when it sends spikes
    macs: np.ndarray                               # [T] multiply-accumulates per inference, per step
    label: str = ""
    e_mac_pj: float = E_MAC_PJ
    e_ac_pj: float = E_AC_PJ
    details: dict = field(default_factory=dict)

    @property
    def spikes(self) -> float:
        """Spikes per inference, every population (the input's spikes not included)."""
        return float(sum(p.spikes.sum() for p in self.populations if p.name != "input"))

    @property
    def synops(self) -> float:
        return float(sum(p.synops.sum() for p in self.populations))

    @property
    def relay_synops(self) -> float:
        return float(sum(p.synops.sum() for p in self.populations if p.relay))

    @property
    def total_macs(self) -> float:
        return float(self.macs.sum())

    @property
    def energy_pj(self) -> float:
        """Energy per inference in pJ: MACs x E_MAC + SOPs x E_AC."""
        return self.total_macs * self.e_mac_pj + self.synops * self.e_ac_pj

    def per_step(self) -> dict[str, np.ndarray]:
        return {"spikes": sum((p.spikes for p in self.populations if p.name != "input"), np.zeros(self.time_steps)),
                "synops": sum((p.synops for p in self.populations), np.zeros(self.time_steps)),
                "macs": self.macs}

    def as_json(self) -> dict:
        return {"label": self.label, "samples": self.samples, "time_steps": self.time_steps,
                "spikes": self.spikes, "synops": self.synops, "relay_synops": self.relay_synops,
                "macs": self.total_macs, "energy_pj": self.energy_pj, "e_mac_pj": self.e_mac_pj,
                "e_ac_pj": self.e_ac_pj,
                "populations": [{"name": p.name, "neurons": p.neurons, "synapses": p.synapses, "relay": p.relay,
                                 "spikes": p.spikes.tolist(), "synops": p.synops.tolist()} for p in self.populations],
                "macs_per_step": self.macs.tolist(), **self.details}


# --------------------------------------------------------------------------------------------------------
# Connectivity: the nonzero pattern of every folded path, by pushing unit vectors through 0/1 copies of the
# linear nodes (all coefficients >= 0, so no two routes can cancel and "> 0" is "connected").


def _mask(node: nir.NIRNode) -> Optional[nir.NIRNode]:
    """A copy of a linear node with its weights replaced by their nonzero pattern and no bias; None for nodes
    that only move values (flatten, pooling) and are used as they are."""
    if isinstance(node, (nir.Affine, nir.Linear)):
        return nir.Linear(weight=(np.asarray(node.weight) != 0).astype(np.float64))
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        m = copy.copy(node)
        m.weight = (np.asarray(node.weight) != 0).astype(np.float64)
        m.bias = None if node.bias is None else np.zeros_like(np.asarray(node.bias, dtype=np.float64))
        return m
    if isinstance(node, nir.Scale):
        return nir.Scale(scale=(np.asarray(node.scale) != 0).astype(np.float64))
    if isinstance(node, nir.AvgPool2d):   # one route counts 1, not 1/k² (the backward count relies on it)
        return nir.SumPool2d(kernel_size=node.kernel_size, stride=node.stride, padding=node.padding)
    return node


def _pass_fn(node: nir.NIRNode, dtype=torch.float64):
    """x -> connectivity of ``node`` applied to x (nonnegative), for every node a path may cross."""
    if isinstance(node, nir.Delay):
        return lambda x: x
    if isinstance(node, MaxPool2d):
        # A max-pooled spike reaches every window that holds it: as a sum pool for connectivity.
        k, s, p = (tuple(int(v) for v in np.atleast_1d(a)) for a in (node.kernel_size, node.stride, node.padding))
        area = float(np.prod(k)) if len(k) > 1 else float(k[0] ** 2)
        return lambda x: torch.nn.functional.avg_pool2d(x, k, s, p, count_include_pad=True) * area
    return linear_fn(_mask(node), dtype=dtype)


def _passes(node: nir.NIRNode) -> bool:
    return (isinstance(node, STATELESS_LINEAR) or isinstance(node, (nir.Delay, MaxPool2d))) and \
        not isinstance(node, POPULATIONS)


def _outgoing(graph: nir.NIRGraph) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for s, d in graph.edges:
        out[s].append(d)
    return out


def _reach(graph: nir.NIRGraph, source: str, out: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """The linear nodes reachable from ``source`` without crossing a population (in an order where every
    node comes after its reachable predecessors), and the endpoints (populations, Output) they reach."""
    seen, ends, stack = set(), set(), list(out[source])
    while stack:
        n = stack.pop()
        node = graph.nodes[n]
        if _passes(node):
            if n not in seen:
                seen.add(n)
                stack += out[n]
        else:
            ends.add(n)
    preds: dict[str, list[str]] = {n: [] for n in seen}
    for s, d in graph.edges:
        if d in seen and s in seen:
            preds[d].append(s)
    order, done = [], set()

    def visit(n: str, path: set) -> None:
        if n in done:
            return
        if n in path:   # a cycle of linear nodes only (not closed by a neuron): cannot fold
            raise ValueError(f"a cycle of linear nodes through {n!r}")
        path.add(n)
        for p in preds[n]:
            visit(p, path)
        path.discard(n)
        done.add(n)
        order.append(n)

    for n in sorted(seen):
        visit(n, set())
    return order, sorted(ends)


def fan_out(graph: nir.NIRGraph, source: str, shape: tuple[int, ...], chunk_elements: int = 1 << 23) -> np.ndarray:
    """Per neuron of ``source`` (flattened), its synapses: nonzero entries of the folded maps into every
    population and the readout it reaches."""
    out = _outgoing(graph)
    order, ends = _reach(graph, source, out)
    fns = {n: _pass_fn(graph.nodes[n]) for n in order}
    fns32 = {n: _pass_fn(graph.nodes[n], torch.float32) for n in order}
    n = int(np.prod(shape))
    if _single_route(graph, source, order, ends):
        # Every (source neuron, target neuron) pair is joined by at most one route, so the transpose of the
        # 0/1 map applied to ones (one backward pass) counts each neuron's synapses exactly.
        x = torch.zeros(1, *shape, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            at_ends = _propagate(graph, source, x, order, ends, fns, grad=True)["ends"]
            total = sum((v.sum() for v in at_ends.values()), torch.zeros((), dtype=torch.float64))
            if total.requires_grad:
                total.backward()
        return np.zeros(n, dtype=np.int64) if x.grad is None else x.grad.reshape(-1).round().numpy().astype(np.int64)
    counts = np.zeros(n, dtype=np.int64)
    # The widest value along the paths bounds the chunk of unit vectors pushed at once.
    probe = _propagate(graph, source, torch.zeros(1, *shape, dtype=torch.float32), order, ends, fns32)
    width = max([int(np.prod(v.shape[1:])) for v in probe["all"].values()] + [1])
    step = max(1, min(n, chunk_elements // width))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        # float32: 0/1 masks and route counts stay exact (far below 2^24) at half the work of float64
        basis = torch.zeros(hi - lo, n, dtype=torch.float32)
        basis[torch.arange(hi - lo), torch.arange(lo, hi)] = 1.0
        values = _propagate(graph, source, basis.reshape(hi - lo, *shape), order, ends, fns32)
        for e in ends:
            v = values["ends"].get(e)
            if v is not None:
                counts[lo:hi] += (v.reshape(hi - lo, -1) > 0).sum(1).numpy()
    return counts


def _mixing(node: nir.NIRNode) -> tuple[int, int]:
    """(mixes positions, mixes channels) of a linear node, from its nonzero pattern: a node that does
    neither is a permutation or an elementwise scale. Two mixers of the same kind in a row (3x3 then 3x3,
    1x1 then 1x1) can join one pair of neurons by several routes; one of each (depthwise then pointwise) cannot."""
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        w = np.asarray(node.weight) != 0
        taps = w.reshape(w.shape[0], w.shape[1], -1).any((0, 1)).sum()
        stride = np.atleast_1d(np.asarray(node.stride))
        channels = w.reshape(w.shape[0], w.shape[1], -1).any(2)
        partial_permutation = (channels.sum(0) <= 1).all() and (channels.sum(1) <= 1).all()
        return int(taps > 1 or (stride > 1).any()), int(not partial_permutation or int(node.groups) != 1)
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d, MaxPool2d)):
        return 1, 0
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = np.asarray(node.weight) != 0
        return (0, 0) if (w.sum(0) <= 1).all() and (w.sum(1) <= 1).all() else (1, 1)
    return 0, 0


def _single_route(graph, source: str, order: list[str], ends: list[str]) -> bool:
    """True when no two routes can join the same pair of neurons: every node and endpoint is fed once from
    the reachable nodes (a tree), and along each path at most one node mixes positions and one mixes
    channels (a node that mixes both counts as each)."""
    reach = set(order) | {source}
    feeds: dict[str, list[str]] = {}
    for s, d in graph.edges:
        if s in reach and (d in reach or d in ends):
            feeds.setdefault(d, []).append(s)
    if any(len(v) > 1 for v in feeds.values()):
        return False
    along = {source: (0, 0)}
    for n in order:   # a tree: each node's one path is its feeder's plus itself
        a, b = along[feeds[n][0]]
        x, y = _mixing(graph.nodes[n])
        along[n] = (a + x, b + y)
        if max(along[n]) > 1:
            return False
    return True


def _propagate(graph, source: str, x: torch.Tensor, order: list[str], ends: list[str], fns, grad: bool = False) -> dict:
    values: dict[str, torch.Tensor] = {source: x}
    preds: dict[str, list[str]] = {}
    for s, d in graph.edges:
        preds.setdefault(d, []).append(s)
    with (torch.enable_grad() if grad else torch.no_grad()):
        for n in order:
            ins = [values[s] for s in preds.get(n, []) if s in values]
            values[n] = fns[n](sum(ins[1:], ins[0]))
        at_ends = {}
        for e in ends:
            # A population wired straight to the graph's Output is read out, not a synapse.
            ins = [values[s] for s in preds.get(e, []) if s in values
                   and not (s == source and isinstance(graph.nodes[e], nir.Output))]
            if ins:
                at_ends[e] = sum(ins[1:], ins[0])
    return {"all": values, "ends": at_ends}


def mac_counts(graph: nir.NIRGraph, input_shape: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """For every linear node that reads the input before any neuron: (its MACs per evaluation, the step
    offset its Delays put it at)."""
    source = next(n for n, node in graph.nodes.items() if isinstance(node, nir.Input))
    out = _outgoing(graph)
    order, ends = _reach(graph, source, out)
    fns = {n: _pass_fn(graph.nodes[n]) for n in order}
    values = _propagate(graph, source, torch.zeros(1, *input_shape, dtype=torch.float64), order, ends, fns)["all"]
    offset = {source: 0}
    result = {}
    for n in order:
        node = graph.nodes[n]
        preds = [s for s, d in graph.edges if d == n and s in offset]
        d = max(offset[p] for p in preds) if preds else 0
        if isinstance(node, nir.Delay):
            d += int(np.asarray(node.delay).max())
        offset[n] = d
        out_elems = int(np.prod(values[n].shape[1:]))
        if isinstance(node, (nir.Conv1d, nir.Conv2d)):
            w = np.asarray(node.weight)
            positions = out_elems // w.shape[0]
            macs = int(np.count_nonzero(w)) * positions
        elif isinstance(node, (nir.Affine, nir.Linear)):
            macs = int(np.count_nonzero(np.asarray(node.weight)))
        elif isinstance(node, nir.Scale):
            macs = out_elems
        else:
            macs = 0
        result[n] = (macs, d)
    return result


# --------------------------------------------------------------------------------------------------------


def count_activity(graph: nir.NIRGraph, spikes: dict[str, torch.Tensor], x: Optional[torch.Tensor] = None,
                   encoding: str = "rate", live_steps: Optional[dict[str, int]] = None, static_input: bool = False,
                   relays: Optional[set[str]] = None, label: str = "",
                   fan_outs: Optional[dict[str, np.ndarray]] = None) -> Activity:
    """Spikes, SOPs and MACs per inference and per step (see the module docstring).

    ``spikes``: ``{population: [T, B, *shape]}`` (0/1); ``x``: the input ``[T, B, *shape]`` (its spikes count
    as SOPs under ``rate`` encoding; under ``direct`` the input nodes' MACs are counted instead);
    ``live_steps``: for unrolled graphs, the one step at which each population is live; ``relays``: names to
    mark as relays; ``fan_outs``: precomputed ``fan_out`` per source (several runs of one graph)."""
    if not spikes:
        raise ValueError("no spikes were recorded: the target exposes none, so nothing can be counted.")
    first = next(iter(spikes.values()))
    T, B = int(first.shape[0]), int(first.shape[1])
    fan_outs = {} if fan_outs is None else fan_outs
    pops: list[PopulationActivity] = []

    def add(name: str, s: torch.Tensor) -> None:
        s = torch.as_tensor(s).detach().cpu().to(torch.float64)
        shape = tuple(s.shape[2:])
        if name not in fan_outs:
            fan_outs[name] = fan_out(graph, name, shape)
        f = torch.as_tensor(fan_outs[name], dtype=torch.float64)
        flat = s.reshape(T, B, -1)
        per_step_spikes = flat.sum((1, 2)).numpy() / B
        per_step_synops = (flat @ f).sum(1).numpy() / B
        if live_steps is not None and name in live_steps:
            keep = np.zeros(T)
            keep[live_steps[name]] = 1.0
            per_step_spikes, per_step_synops = per_step_spikes * keep, per_step_synops * keep
        pops.append(PopulationActivity(name, int(flat.shape[2]), int(f.sum()), per_step_spikes, per_step_synops,
                                       relay=name in (relays or set())))

    input_name = next(n for n, node in graph.nodes.items() if isinstance(node, nir.Input))
    macs = np.zeros(T)
    if x is not None:
        # The graph's own input layout (a chain whose first synapse is dense reads the input flat).
        in_shape = tuple(int(v) for v in np.asarray(graph.nodes[input_name].input_type["input"]).ravel())
        x = torch.as_tensor(x).reshape(x.shape[0], x.shape[1], *in_shape)
        if encoding == "rate":
            add(input_name, x)
        else:
            for node_macs, offset in mac_counts(graph, in_shape).values():
                if static_input:
                    macs[min(offset, T - 1)] += node_macs
                else:
                    macs += node_macs
    for name, s in spikes.items():
        if name not in graph.nodes:
            raise ValueError(f"spikes were recorded for {name!r}, which the graph does not have.")
        add(name, s)
    return Activity(B, T, pops, macs, label=label)
