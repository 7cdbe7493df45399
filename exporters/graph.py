"""Building a feedforward spiking graph out of NIR's own node classes (DESIGN §3, §6).

The graph's time semantics: every time step, every node is evaluated once in topological order; edges
have no delay and the edges that enter a node are summed (NIR's fan-in). Neuron nodes carry their state
from one step to the next. The graph's ``Output`` is the per-step logits; ``metadata["readout"]`` says how
the per-step outputs become the prediction (``mean`` over time, or the ``last`` step).

While collapsing, a value flowing between neurons is kept symbolic, as a sum of *terms*: a term is a chain
of linear operations (pooling, convolution, flatten, affine) applied to one source node (a spike
population or the input). That is what makes the reversible structure dissolve:

- an addition ``Y1 = X1 + F(X2)`` concatenates the term lists (fan-in into the next neuron);
- a channel split slices the output channels of each term's last mixing operation;
- a channel concatenation is a list of channel groups; a convolution over it becomes one convolution per
  group with its input channels sliced, summed by fan-in;
- BatchNorm scales each term's last mixing operation and shifts one bias.

Terms become graph nodes only when a neuron (or the output) consumes them; chains that share a prefix
share its nodes.
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

import copy
from dataclasses import dataclass, field
from typing import Optional

import nir
import numpy as np
import torch
import torch.nn.functional as tf

__all__ = ["GraphError", "DelayFifo", "node_shape", "Schedule", "schedule", "STATELESS_LINEAR", "linear_fn", "delays_at_least_one", "delay_shape", "Op", "ConvOp", "Conv1dOp", "MaxPoolOp", "AffineOp", "PoolOp", "FlattenOp", "ScaleOp", "MeanOp", "extend", "add_values", "slice_value", "split_at", "scale_value", "scale_channels", "Term", "Group", "Value", "GraphBuilder",
           "Collapsed", "CollapseError"]


class CollapseError(RevsnnError):
    """A model (or a part of it) that cannot be collapsed; the message names the part."""


# --------------------------------------------------------------------------------------------------------
# Linear operations on one time step, batch-free shapes.


class Op:
    mixing = False  # mixes channels (slicing its output channels is meaningful)
    linear = True   # distributes over a sum of terms
    label = "op"    # the model module it came from (plus the part, when sliced); names its graph node

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        with torch.no_grad():
            return tuple(self.apply(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:])

    def to_nir(self, in_shape: tuple[int, ...]) -> nir.NIRNode:
        raise NotImplementedError


@dataclass(eq=False)
class ConvOp(Op):
    weight: torch.Tensor                 # (C_out, C_in / groups, kH, kW)
    bias: Optional[torch.Tensor]         # (C_out,) or None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    mixing = True

    def apply(self, x):
        return tf.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def to_nir(self, in_shape):
        bias = self.bias if self.bias is not None else torch.zeros(self.weight.shape[0], dtype=self.weight.dtype)
        return nir.Conv2d(input_shape=np.array(in_shape[1:]), weight=_np(self.weight), stride=np.array(self.stride),
                          padding=np.array(self.padding), dilation=np.array(self.dilation), groups=self.groups,
                          bias=_np(bias))


@dataclass(eq=False)
class Conv1dOp(Op):
    """A 1x1-or-wider convolution over tokens (C, N), as RevSFormer's projections."""

    weight: torch.Tensor                 # (C_out, C_in, k)
    bias: Optional[torch.Tensor]
    mixing = True

    def apply(self, x):
        return tf.conv1d(x, self.weight, self.bias)

    def to_nir(self, in_shape):
        bias = self.bias if self.bias is not None else torch.zeros(self.weight.shape[0], dtype=self.weight.dtype)
        return nir.Conv1d(input_shape=int(in_shape[1]), weight=_np(self.weight), stride=1, padding=0, dilation=1,
                          groups=1, bias=_np(bias))


@dataclass(eq=False)
class MaxPoolOp(Op):
    """Max pooling: not linear, so it may only act on a single term (a spike population)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    linear = False

    def apply(self, x):
        return tf.max_pool2d(x, self.kernel, self.stride, self.padding)

    def to_nir(self, in_shape):
        from .nodes import MaxPool2d

        return MaxPool2d(kernel_size=np.array(self.kernel), stride=np.array(self.stride),
                         padding=np.array(self.padding), in_shape=np.array(in_shape),
                         out_shape=np.array(self.out_shape(in_shape)))


@dataclass(eq=False)
class AffineOp(Op):
    weight: torch.Tensor                 # (out, in)
    bias: Optional[torch.Tensor]
    mixing = True

    def apply(self, x):
        return tf.linear(x, self.weight, self.bias)

    def to_nir(self, in_shape):
        if self.bias is None:
            return nir.Linear(weight=_np(self.weight))
        return nir.Affine(weight=_np(self.weight), bias=_np(self.bias))


@dataclass(eq=False)
class PoolOp(Op):
    """Average pooling as torch computes it (zero padding counted in the divisor)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)

    def apply(self, x):
        return tf.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)

    def to_nir(self, in_shape):
        return nir.AvgPool2d(kernel_size=np.array(self.kernel), stride=np.array(self.stride),
                             padding=np.array(self.padding))


@dataclass(eq=False)
class FlattenOp(Op):
    start_dim: int = 0   # batch-free, as NIR specifies: 0 flattens (C, H, W) into one axis, 1 into (C, H*W)

    def apply(self, x):
        return x.flatten(self.start_dim + 1)

    def to_nir(self, in_shape):
        return nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=self.start_dim, end_dim=-1)


@dataclass(eq=False)
class ScaleOp(Op):
    """Multiplication by one number (``x * k``, a sign in ``a - b``, a RevLIF output's weight factor). It folds
    into the next mixing op (``W (k x) = (k W) x``); left at the end of a term it becomes ``nir.Scale``."""

    k: float

    def apply(self, x):
        return x * self.k

    def out_shape(self, in_shape):
        return tuple(in_shape)

    def to_nir(self, in_shape):
        return nir.Scale(scale=np.full(tuple(in_shape), float(self.k)))


@dataclass(eq=False)
class MeanOp(Op):
    """The mean over the last axis of a per-step value (RevSFormer's mean over tokens, ``(C, N) -> (C,)``).

    NIR has no such node; it exists only symbolically and folds into the Affine that reads it, as
    ``Flatten`` plus ``W / N`` repeated over the N positions of each channel (channel-major)."""

    def apply(self, x):
        return x.mean(-1)

    def out_shape(self, in_shape):
        return tuple(in_shape[:-1])

    def to_nir(self, in_shape):
        raise CollapseError(f"a mean over the last axis of a {tuple(in_shape)} value must be read by a Linear layer "
                            "(NIR has no mean node); put the Linear right after the mean.")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _slice_out(op: Op, idx: slice) -> Op:
    if isinstance(op, Conv1dOp):
        new = Conv1dOp(op.weight[idx], None if op.bias is None else op.bias[idx])
    elif isinstance(op, ConvOp):
        if op.groups != 1:
            raise CollapseError("slicing the output channels of a grouped convolution is not supported.")
        new = ConvOp(op.weight[idx], None if op.bias is None else op.bias[idx], op.stride, op.padding,
                     op.dilation, op.groups)
    elif isinstance(op, AffineOp):
        new = AffineOp(op.weight[idx], None if op.bias is None else op.bias[idx])
    else:
        raise CollapseError(f"cannot slice the output channels of {type(op).__name__}.")
    new.label = f"{op.label}.out{idx.start}_{idx.stop}"
    return new


def _scale_out(op: Op, scale: torch.Tensor) -> Op:
    view = (-1,) + (1,) * (op.weight.dim() - 1)
    new = copy.copy(op)
    new.weight = op.weight * scale.reshape(view)
    new.bias = None if op.bias is None else op.bias * scale
    return new


def _add_bias(op: Op, shift: torch.Tensor) -> Op:
    new = copy.copy(op)
    new.bias = shift.clone() if op.bias is None else op.bias + shift
    return new


# --------------------------------------------------------------------------------------------------------
# The stateless linear NIR nodes, as per-step functions on batch-first tensors: shared by the reference
# executor and the exporters that fold chains of them into one synapse (the Loihi exporter).

STATELESS_LINEAR = (nir.Affine, nir.Linear, nir.Scale, nir.Conv1d, nir.Conv2d, nir.AvgPool2d, nir.SumPool2d,
                    nir.Flatten)


def _ints(a) -> tuple[int, ...]:
    return tuple(int(v) for v in np.atleast_1d(np.asarray(a)))


def linear_fn(node: nir.NIRNode, device="cpu", dtype=torch.float64):
    """``x -> node(x)`` for one of ``STATELESS_LINEAR`` (batch-first; NIR's batch-free indices for Flatten;
    torch's zero-padding-counted average for AvgPool2d). Raises ValueError for a form it does not run."""
    def t(a):
        return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

    if isinstance(node, nir.Affine):
        w, b = t(node.weight), t(node.bias)
        return lambda x: tf.linear(x, w, b)
    if isinstance(node, nir.Linear):
        w = t(node.weight)
        return lambda x: tf.linear(x, w)
    if isinstance(node, nir.Scale):
        s = t(node.scale)
        return lambda x: x * s
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        if isinstance(node.padding, str):
            raise ValueError(f"string padding {node.padding!r} is not supported.")
        w = t(node.weight)
        b = None if node.bias is None else t(node.bias)
        if isinstance(node, nir.Conv1d):
            return lambda x: tf.conv1d(x, w, b, int(node.stride), int(node.padding), int(node.dilation),
                                       int(node.groups))
        stride, padding, dilation = _ints(node.stride), _ints(node.padding), _ints(node.dilation)
        return lambda x: tf.conv2d(x, w, b, stride, padding, dilation, int(node.groups))
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        k, s, p = _ints(node.kernel_size), _ints(node.stride), _ints(node.padding)
        area = 1.0 if isinstance(node, nir.AvgPool2d) else float(np.prod(k))
        return lambda x: tf.avg_pool2d(x, k, s, p, count_include_pad=True) * area
    if isinstance(node, nir.Flatten):
        start = int(node.start_dim) + 1 if int(node.start_dim) >= 0 else int(node.start_dim)
        end = int(node.end_dim) + 1 if int(node.end_dim) >= 0 else int(node.end_dim)
        return lambda x: x.flatten(start, end)
    raise ValueError(f"a {type(node).__name__} is not a stateless linear node.")


# --------------------------------------------------------------------------------------------------------
# Delays that close feedback cycles (the reversible RevLIF node's soft reset): shared by every writer and
# runner of such graphs.


def delays_at_least_one(graph: nir.NIRGraph) -> list[str]:
    """The Delay nodes whose every delay is a whole number of steps >= 1: their output at a step does not
    depend on that step's input, so a cycle through one of them can be run step by step."""
    out = []
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Delay):
            d = np.asarray(node.delay, dtype=np.float64)
            if d.size and np.all(d >= 1) and np.all(d == np.round(d)):
                out.append(name)
    return out


def delay_shape(node: nir.Delay) -> Optional[tuple[int, ...]]:
    """The shape a Delay's FIFO holds: its per-element delay array's, else its input type's; None if neither
    says (callers refuse such a Delay when it closes a cycle)."""
    d = np.asarray(node.delay)
    if d.size > 1:
        return tuple(d.shape)
    shape = np.asarray((node.input_type or {}).get("input", ()), dtype=np.int64)
    return tuple(int(v) for v in shape) if shape.size else None


class GraphError(RevsnnError):
    """A graph that cannot be scheduled or run as written (a cycle with no state, mismatched shapes, an edge to
    nowhere, no Input or Output); the message names the node."""


class DelayFifo:
    """The delay line of one ``nir.Delay`` (whole steps, per element): the last ``depth`` inputs, oldest first.

    Generic over what a value is (a torch tensor in the executors, an ONNX tensor name in the writer): the
    caller gives ``where(k, a, b)``, "``a`` where an element's delay is ``k``, else ``b``", for Delays whose
    elements have different delays."""

    def __init__(self, name: str, node: nir.Delay):
        d = np.asarray(node.delay, dtype=np.float64)
        if d.size == 0 or np.any(d < 0) or np.any(d != np.round(d)) or not np.all(np.isfinite(d)):
            raise GraphError(f"{name}: a Delay needs non-negative whole numbers of steps (dt = 1), got "
                             f"{np.unique(d)[:5]}.")
        self.name = name
        self.steps = d.astype(np.int64)              # per element
        self.ks = sorted({int(v) for v in np.unique(d)})
        self.depth = int(d.max())

    def read(self, slots: list, current=None, where=None):
        """The output: per element the input ``k`` steps ago (``slots[-k]``; ``current`` when ``k = 0``)."""
        pick = lambda k: slots[len(slots) - k] if k > 0 else current  # noqa: E731
        out = pick(self.ks[0])
        for k in self.ks[1:]:
            out = where(k, pick(k), out)
        return out

    @staticmethod
    def push(slots: list, x) -> list:
        return slots[1:] + [x]


def _conv_len(n: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def node_shape(node: nir.NIRNode, in_shape: Optional[tuple[int, ...]]) -> tuple[int, ...]:
    """The batch-free output shape of ``node`` given its (fan-in) input shape: the one shape inference."""
    from .nodes import MaxPool2d

    if isinstance(node, nir.Input):
        return tuple(_ints(list(node.input_type.values())[0]))
    if isinstance(node, (nir.Affine, nir.Linear)):
        return tuple(in_shape[:-1]) + (int(np.shape(node.weight)[0]),)
    if isinstance(node, nir.Conv2d):
        w = np.shape(node.weight)
        s, p, d = (_ints2(node.stride), _ints2(node.padding), _ints2(node.dilation))
        return (w[0],) + tuple(_conv_len(in_shape[1 + i], w[2 + i], s[i], p[i], d[i]) for i in range(2))
    if isinstance(node, nir.Conv1d):
        w = np.shape(node.weight)
        return (w[0], _conv_len(in_shape[1], w[2], int(np.ravel(node.stride)[0]), int(np.ravel(node.padding)[0]),
                                int(np.ravel(node.dilation)[0])))
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d, MaxPool2d)):
        k, s, p = _ints2(node.kernel_size), _ints2(node.stride), _ints2(node.padding)
        return (in_shape[0],) + tuple(_conv_len(in_shape[1 + i], k[i], s[i], p[i]) for i in range(2))
    if isinstance(node, nir.Flatten):
        r = len(in_shape)
        a = int(node.start_dim) if int(node.start_dim) >= 0 else r + int(node.start_dim)
        b = int(node.end_dim) if int(node.end_dim) >= 0 else r + int(node.end_dim)
        return tuple(in_shape[:a]) + (int(np.prod(in_shape[a:b + 1])),) + tuple(in_shape[b + 1:])
    return tuple(in_shape)  # neurons, Scale, Delay, Threshold, Output: elementwise


def _ints2(a) -> tuple[int, int]:
    v = _ints(a)
    return (v[0], v[0]) if len(v) == 1 else v[:2]


@dataclass
class Schedule:
    """How a graph runs one step, computed once (DESIGN §3): every node's sources in edge order (NIR's fan-in
    sums them in that order), the evaluation order, the Delays whose inputs are cut from that order (they close
    cycles: each step reads them first and pushes their new input last), the Input and Output, the neuron
    populations in order, and every node's batch-free output shape."""

    graph: nir.NIRGraph
    inputs: dict[str, list[str]]
    order: list[str]
    cut_delays: list[str]
    input_name: str
    output_name: str
    neurons: list[str]
    shapes: dict[str, tuple[int, ...]]


def schedule(graph: nir.NIRGraph) -> Schedule:
    from graphlib import CycleError, TopologicalSorter

    from .nodes import NEURON_TYPES

    inputs: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for src, dst in graph.edges:
        if src not in inputs or dst not in inputs:
            raise GraphError(f"edge {src!r} -> {dst!r} names a node the graph does not have.")
        inputs[dst].append(src)
    ins = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    outs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
    if len(ins) != 1 or len(outs) != 1:
        raise GraphError(f"the graph needs exactly one Input and one Output node (it has {len(ins)} and "
                         f"{len(outs)}).")
    cut: list[str] = []
    try:
        order = list(TopologicalSorter(inputs).static_order())
    except CycleError:
        cut = delays_at_least_one(graph)
        try:
            order = list(TopologicalSorter({n: ([] if n in cut else inputs[n]) for n in graph.nodes}).static_order())
        except CycleError as exc:
            raise GraphError("the graph has a cycle that passes through no Delay of at least one step; recurrence "
                             "must go through neuron state or a Delay of at least one step.") from exc
    shapes: dict[str, tuple[int, ...]] = {}
    for name in cut:
        shape = delay_shape(graph.nodes[name])
        if shape is None:
            raise GraphError(f"{name}: a Delay that closes a cycle needs its input shape (a per-element delay "
                             "array or an input_type).")
        shapes[name] = shape
    for name in order:
        node = graph.nodes[name]
        if name == ins[0]:
            shapes[name] = node_shape(node, None)
            continue
        if name in cut:
            continue
        srcs = inputs[name]
        if not srcs:
            raise GraphError(f"node {name!r} has no input.")
        shape = shapes[srcs[0]]
        for s in srcs[1:]:
            if shapes[s] != shape:
                raise GraphError(f"node {name!r}: its inputs have different shapes ({shape} from {srcs[0]!r}, "
                                 f"{shapes[s]} from {s!r}).")
        try:
            shapes[name] = node_shape(node, shape)
        except (IndexError, TypeError, ValueError) as exc:
            raise GraphError(f"node {name!r} ({type(node).__name__}) does not fit its input of shape {shape}.") \
                from exc
    for name in cut:
        got = shapes[inputs[name][0]] if inputs[name] else None
        if got != shapes[name]:
            raise GraphError(f"{name}: the Delay's input shape {got} differs from its declared shape {shapes[name]}.")
    neurons = [n for n in order if isinstance(graph.nodes[n], NEURON_TYPES)]
    return Schedule(graph, inputs, order, cut, ins[0], outs[0], neurons, shapes)


# --------------------------------------------------------------------------------------------------------
# Symbolic values: sums of terms, in channel groups.


@dataclass(eq=False)
class Term:
    src: str                       # a node of the graph: "input" or a neuron population
    src_shape: tuple[int, ...]
    ops: list[Op] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        shape = self.src_shape
        for op in self.ops:
            shape = op.out_shape(shape)
        return shape

    def last_mixing(self) -> int:
        for i in range(len(self.ops) - 1, -1, -1):
            if self.ops[i].mixing:
                return i
        raise CollapseError(f"a value read straight from {self.src!r} cannot be split by channels here.")


@dataclass
class Group:
    """A block of channels whose value is the sum of ``terms`` (all of the same shape)."""

    terms: list[Term]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.terms[0].shape

    @property
    def channels(self) -> int:
        return self.shape[0]


Value = list[Group]  # channel groups, concatenated along channels


def add(a: Group, b: Group) -> Group:
    if a.shape != b.shape:
        raise CollapseError(f"cannot add values of shapes {a.shape} and {b.shape}.")
    return Group(a.terms + b.terms)


def apply_elementwise(value: Value, op: Op) -> Value:
    """A per-channel op (pooling, flatten): the same op on every term."""
    if not op.linear and any(len(g.terms) != 1 for g in value):
        raise CollapseError(f"{type(op).__name__} is not linear: it can only follow a neuron population.")
    return [Group([Term(t.src, t.src_shape, t.ops + [op]) for t in g.terms]) for g in value]


def extend(term: Term, op: Op) -> Term:
    """``term`` followed by the mixing ``op``, folding what NIR has no node for or needs none for: trailing
    ``ScaleOp``s scale ``op``'s weight; a trailing ``MeanOp`` under an ``AffineOp`` becomes ``Flatten`` and the
    Affine's weight divided over the averaged positions."""
    ops, k = list(term.ops), 1.0
    while ops and isinstance(ops[-1], ScaleOp):
        k *= ops.pop().k
    if k != 1.0:
        label = op.label
        op = copy.copy(op)
        op.weight = op.weight * k
        op.label = label
    if ops and isinstance(ops[-1], MeanOp):
        if not isinstance(op, AffineOp):
            raise CollapseError(f"{op.label}: a mean over the last axis can only be read by a Linear layer.")
        shape = Term(term.src, term.src_shape, ops[:-1]).shape     # (C, N) before the mean
        n = int(np.prod(shape[1:]))
        flat = FlattenOp()
        flat.label = f"{op.label}.flatten"
        ops[-1] = flat
        label = op.label
        op = AffineOp(op.weight.repeat_interleave(n, dim=1) / n, op.bias)
        op.label = label
    return Term(term.src, term.src_shape, ops + [op])


def apply_mixing(value: Value, make: "callable[[slice], Op]", bias: Optional[torch.Tensor]) -> Value:
    """A channel-mixing op over a concatenation: one op per input group with its input channels
    sliced (``make(in_slice)``), the bias once; the result is one group."""
    terms = []
    start = 0
    for g in value:
        op = make(slice(start, start + g.channels))
        if len(value) > 1:
            op.label = f"{op.label}.in{start}_{start + g.channels}"
        start += g.channels
        terms += [extend(t, op) for t in g.terms]
    if bias is not None:
        t = terms[0]
        t.ops[-1] = _add_bias(t.ops[-1], bias)
    return [Group(terms)]


def split_channels(group: Group, sizes: list[int]) -> list[Group]:
    """Split a group along channels by slicing each term's last mixing op (ops after it are per channel)."""
    out, start = [], 0
    for size in sizes:
        idx = slice(start, start + size)
        start += size
        terms = []
        for t in group.terms:
            if not any(op.mixing for op in t.ops):
                terms.append(_select(t, idx))
                continue
            i = t.last_mixing()
            ops = list(t.ops)
            ops[i] = _slice_out(ops[i], idx)
            terms.append(Term(t.src, t.src_shape, ops))
        out.append(Group(terms))
    return out


def _select(term: Term, idx: slice) -> Term:
    """Channels ``idx`` of a term with no mixing op (spikes read straight from a population): NIR has no slice
    node, so the selection is an exact 0/1 mixing op (1x1 convolution, or a matrix for a flat value)."""
    shape = term.shape
    c = shape[0]
    eye = torch.eye(c, dtype=torch.float64)[idx]
    if len(shape) == 3:
        op = ConvOp(eye.reshape(eye.shape[0], c, 1, 1), None)
    elif len(shape) == 2:
        op = Conv1dOp(eye.reshape(eye.shape[0], c, 1), None)
    elif len(shape) == 1:
        op = AffineOp(eye, None)
    else:
        raise CollapseError(f"cannot select channels of a value of shape {shape}.")
    op.label = f"{term.src}.channels{idx.start}_{idx.stop}"
    return Term(term.src, term.src_shape, term.ops + [op])


def boundaries(value: Value) -> list[int]:
    out, start = [], 0
    for g in value:
        start += g.channels
        out.append(start)
    return out


def split_at(value: Value, cuts: list[int]) -> Value:
    """``value`` with its groups split so that every offset in ``cuts`` is a group boundary."""
    out, start = [], 0
    for g in value:
        inner = sorted({c - start for c in cuts if start < c < start + g.channels})
        if inner:
            edges = [0] + inner + [g.channels]
            out += split_channels(g, [b - a for a, b in zip(edges, edges[1:])])
        else:
            out.append(g)
        start += g.channels
    return out


def add_values(a: Value, b: Value) -> Value:
    """``a + b`` channel by channel: both split to common group boundaries, then added group by group (fan-in)."""
    if boundaries(a)[-1:] != boundaries(b)[-1:]:
        raise CollapseError(f"cannot add values of {boundaries(a)[-1]} and {boundaries(b)[-1]} channels.")
    cuts = sorted(set(boundaries(a)) | set(boundaries(b)))
    return [add(x, y) for x, y in zip(split_at(a, cuts), split_at(b, cuts))]


def slice_value(value: Value, start: int, stop: int) -> Value:
    """Channels ``start:stop`` of a value."""
    parts, offset, out = split_at(value, [start, stop]), 0, []
    for g in parts:
        if start <= offset and offset + g.channels <= stop:
            out.append(g)
        offset += g.channels
    if not out:
        raise CollapseError(f"channels {start}:{stop} select nothing.")
    return out


def scale_value(value: Value, k: float, label: str) -> Value:
    op = ScaleOp(float(k))
    op.label = label
    return apply_elementwise(value, op)


def scale_channels(group: Group, scale: torch.Tensor, label: str) -> Group:
    """``scale * group`` per channel, no shift: each term's last mixing op scaled, or a diagonal mixing op
    holding ``scale`` appended to a term that has none."""
    terms = []
    for t in group.terms:
        ops = list(t.ops)
        if any(op.mixing for op in ops):
            i = t.last_mixing()
            ops[i] = _scale_out(ops[i], scale)
            terms.append(Term(t.src, t.src_shape, ops))
            continue
        sel = _select(t, slice(0, t.shape[0]))
        sel.ops[-1] = _scale_out(sel.ops[-1], scale)
        sel.ops[-1].label = label
        terms.append(sel)
    return Group(terms)


def batchnorm(value: Value, scale: torch.Tensor, shift: torch.Tensor) -> Value:
    """Fold ``y = scale * x + shift`` (per channel) into the terms' last mixing ops."""
    out, start = [], 0
    for g in value:
        idx = slice(start, start + g.channels)
        start += g.channels
        terms = []
        for t in g.terms:
            i = t.last_mixing()
            ops = list(t.ops)
            ops[i] = _scale_out(ops[i], scale[idx])
            terms.append(Term(t.src, t.src_shape, ops))
        terms[0].ops[terms[0].last_mixing()] = _add_bias(terms[0].ops[terms[0].last_mixing()], shift[idx])
        out.append(Group(terms))
    return out


# --------------------------------------------------------------------------------------------------------
# The graph under construction.


@dataclass
class Collapsed:
    """A collapsed model: the NIR graph and, for each neuron node, the model module and the channel
    range of that module's output it reproduces (what the equivalence tests and ``verify`` compare)."""


    graph: nir.NIRGraph
    populations: dict[str, tuple[str, int, int]]
    output_node: str = "output"
    # For unrolled graphs (T-RevSNN: one column per step), the step at which each population equals its
    # module's single output; absent for graphs whose populations run at every step.
    population_steps: Optional[dict[str, int]] = None


class GraphBuilder:
    def __init__(self, input_shape: tuple[int, ...]):
        self.nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type=np.array(input_shape))}
        self.edges: list[tuple[str, str]] = []
        self.populations: dict[str, tuple[str, int, int]] = {}
        self.input_shape = tuple(input_shape)
        self._materialized: dict[tuple, str] = {}

    def input_value(self) -> Value:
        return [Group([Term("input", self.input_shape)])]

    def _unique(self, name: str) -> str:
        name = name.replace(".", "_")
        if name not in self.nodes:
            return name
        k = 1
        while f"{name}_{k}" in self.nodes:
            k += 1
        return f"{name}_{k}"

    def _materialize(self, term: Term, hint: str) -> str:
        """The node whose output is ``term``; shared prefixes become shared nodes."""
        node, shape = term.src, term.src_shape
        for i, op in enumerate(term.ops):
            key = (term.src, tuple(id(o) for o in term.ops[: i + 1]))
            if key not in self._materialized:
                name = self._unique(op.label)
                self.nodes[name] = op.to_nir(shape)
                self.edges.append((node, name))
                self._materialized[key] = name
            node = self._materialized[key]
            shape = op.out_shape(shape)
        return node

    def neuron(self, group: Group, node: nir.NIRNode, name: str, module: str, channels: tuple[int, int]) -> Group:
        """Add a neuron population fed by ``group``; returns its spikes as a new group."""
        name = self._unique(name)
        sources = [self._materialize(t, name + ".in") for t in group.terms]
        self.nodes[name] = node
        for s in dict.fromkeys(sources):
            if sources.count(s) > 1:
                raise CollapseError(f"{name}: the same source reached it twice; merge the terms first.")
            self.edges.append((s, name))
        self.populations[name] = (module, channels[0], channels[1])
        return Group([Term(name, group.shape)])

    def output(self, value: Value, metadata: dict) -> Collapsed:
        if len(value) != 1:
            raise CollapseError("the output must be a single group of channels.")
        shape = value[0].shape
        self.nodes["output"] = nir.Output(output_type=np.array(shape))
        for t in value[0].terms:
            self.edges.append((self._materialize(t, "head"), "output"))
        from .nodes import CUSTOM_NODES

        # NIR's type inference knows only its own node classes.
        custom = any(isinstance(n, CUSTOM_NODES) for n in self.nodes.values())
        graph = nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=metadata, type_check=not custom)
        return Collapsed(graph, self.populations)
