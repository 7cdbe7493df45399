"""Write and read ``.onnx`` files: the spiking graph as a one-step ONNX model with explicit state (DESIGN §3, §7).

The ONNX graph is built node by node with ``onnx.helper`` straight from the in-memory graph (NIR nodes plus
our own ``MaxPool2d`` and ``SpikingAttention``). ``torch.onnx`` is deliberately not used: the in-memory graph
is the single source of truth for every target, and torch 2.13's default (dynamo) exporter would also need
``onnxscript``, which is not installed.

The model is ONE time step (research/ecosystem.md §5.1, pattern 1), the time loop lives in the host:

- inputs: ``x_t`` (float32, ``['batch', *input_shape]``), then one tensor per piece of state, in this order:
  ``state.<node>`` for each LIF/IF membrane; ``state.<node>.q``, ``.k``, ``.v`` (the Q, K, V LIF membranes)
  and ``state.<node>`` (the output LIF membrane) for each ``SpikingAttention``; ``state.<node>.fifo<i>`` for
  each slot of a Delay's FIFO (``fifo0`` the oldest input, ``fifo<d-1>`` last step's). All states start at 0
  (written in ``metadata_props["initial_state"]``).
- outputs: ``y_t`` (the graph's Output, the per-step logits), then ``state_out.*``: the new states, with the
  same suffixes and in the same order as the state inputs. With ``spikes=True`` (what the onnxruntime target
  asks for) every neuron node's spikes follow as ``spikes.<node>``.

Float32 throughout: onnxruntime's CPU build has no float64 Conv. Op mapping, following the reference
executor's arithmetic op for op:

- fan-in: the edges entering a node summed with ``Add`` in edge order;
- ``Affine``/``Linear``: ``Gemm`` (``transB=1``) on ``[B, in]``, else ``MatMul`` with the transposed weight
  (+ ``Add`` bias); ``Conv2d``/``Conv1d``: ``Conv``; ``AvgPool2d``: ``AveragePool(count_include_pad=1)``
  (torch's divisor); ``SumPool2d``: that times the window area; ``MaxPool2d``: ``MaxPool``; ``Flatten``:
  ``Reshape`` to ``[0, ...]`` (0 keeps the batch dimension); ``Scale``: ``Mul``;
- ``LIF``: ``h = v + (v_leak - v + r*I)/tau`` (``Sub``, ``Mul``, ``Add``, ``Div``, ``Add`` in that order);
  ``IF``: ``h = v + r*I``; spikes ``Cast(Greater(h, θ))`` (strict ``>``, as the contract); hard reset
  ``Where(h > θ, v_reset, h)``; ``Threshold``: ``Cast(Greater(I, θ))``, no state;
- ``SpikingAttention``: Q, K, V = LIF(``Conv`` 1x1 of the input spikes) with ``h = v + (I - v)/tau``; heads
  split by ``Reshape`` + ``Transpose``; ``((q kᵀ) v) * scale`` by ``MatMul``/``MatMul``/``Mul``; the heads
  merged back and the output LIF;
- ``Delay``: the output is a state slot (``Where`` over per-element delays when they differ), the new FIFO
  is the old one shifted with this step's input appended. A Delay that closes a cycle (all delays >= 1)
  reads its output from its state before anything else of the step, and its new state is this step's
  fan-in, exactly as the reference executor runs it.
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

import json
from pathlib import Path
from typing import Union

import nir
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import revsnn
from revsnn.fileio import atomic_write
from revsnn.exporters.graph import DelayFifo, GraphError, node_shape, schedule
from revsnn.exporters.nodes import MaxPool2d, SpikingAttention

__all__ = ["ONNXFileError", "graph_to_onnx_step", "graph_to_onnx_unrolled", "write_onnx", "read_onnx", "summarize_onnx",
           "NEURON_CONTRACT", "INPUT_NAME", "OUTPUT_NAME", "UNROLLED_INPUT", "UNROLLED_LOGITS", "UNROLLED_STEPS",
           "STEP_FORMAT", "UNROLLED_FORMAT"]

INPUT_NAME = "x_t"
OUTPUT_NAME = "y_t"
UNROLLED_INPUT = "x"
UNROLLED_LOGITS = "logits"
UNROLLED_STEPS = "y"
STEP_FORMAT = "revsnn-onnx-step"
UNROLLED_FORMAT = "revsnn-onnx-unrolled"
NEURON_CONTRACT = ("dt = 1 step; LIF h = v + (v_leak - v + r*I)/tau, IF h = v + r*I; spike s = h > v_threshold "
                   "(strict); hard reset v = v_reset where s else h; Threshold s = I > threshold (no state); "
                   "SpikingAttention: Q, K, V, output LIF h = v + (I - v)/tau, hard reset to 0; Delay y[t] = "
                   "x[t - d], zeros before the first input")
_F32 = TensorProto.FLOAT


class ONNXFileError(RevsnnError):
    """An ``.onnx`` file (or graph) that cannot be written or read; the message names the problem and the fix."""


def _ints(a, n: int | None = None) -> list[int]:
    out = [int(v) for v in np.atleast_1d(np.asarray(a))]
    if n is not None and len(out) == 1:
        out = out * n
    return out


def _f32(a) -> np.ndarray:
    """Parameters as float64 arrays; ``_Builder.const`` casts them once to the model's float type."""
    return np.asarray(a, dtype=np.float64)


# The model's float type: float32 by default; float64 for graphs whose ops onnxruntime's CPU build runs in
# double (it has no float64 convolution or pooling).
FLOAT_TYPES = {"float32": (TensorProto.FLOAT, np.float32), "float64": (TensorProto.DOUBLE, np.float64)}


class _Builder:
    def __init__(self, graph: nir.NIRGraph, dtype: str = "float32"):
        if dtype not in FLOAT_TYPES:
            raise ONNXFileError(f"unknown float type {dtype!r}; use float32 or float64.")
        self.elem, self.np_float = FLOAT_TYPES[dtype]
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.states: list[tuple[str, str, tuple[int, ...]]] = []  # (input name, new-state tensor, shape)
        self._k = 0

    # helpers
    def const(self, name: str, value, dtype=None) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype or self.np_float), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        if out is None:
            self._k += 1
            out = f"t{self._k}.{op_type}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{len(self.nodes)}.{out}", **attrs))
        return out

    def state(self, key: str, shape: tuple[int, ...]) -> str:
        """Declare a state input ``state.<key>``; its new value is set with :meth:`set_state`."""
        self.states.append((f"state.{key}", "", tuple(int(s) for s in shape)))
        return f"state.{key}"

    def set_state(self, key: str, tensor: str) -> None:
        for i, (name, _, shape) in enumerate(self.states):
            if name == f"state.{key}":
                self.states[i] = (name, tensor, shape)
                return
        raise KeyError(key)

    def fire(self, name: str, key: str, h: str, th: str, reset: str) -> str:
        above = self.op("Greater", [h, th], f"{key}.above")
        s = self.op("Cast", [above], f"{key}.spikes", to=self.elem)
        self.set_state(key, self.op("Where", [above, reset, h], f"state_out.{key}"))
        return s


def graph_to_onnx_step(graph: nir.NIRGraph, opset: int = 17, spikes: bool = False,
                       dtype: str = "float32") -> onnx.ModelProto:
    """The one-step ONNX model of ``graph`` (see the module docstring for its inputs, outputs and ops)."""
    try:
        sched = schedule(graph)
    except GraphError as exc:
        raise ONNXFileError(str(exc)) from exc
    inputs, order, cut, shapes = sched.inputs, sched.order, sched.cut_delays, sched.shapes
    in_name, out_name = sched.input_name, sched.output_name

    b = _Builder(graph, dtype)
    values: dict[str, str] = {}
    fifos: dict[str, DelayFifo] = {}

    def fifo_of(name: str, node: nir.Delay) -> DelayFifo:
        if name not in fifos:
            try:
                fifos[name] = DelayFifo(name, node)
            except GraphError as exc:
                raise ONNXFileError(str(exc)) from exc
        return fifos[name]

    def delay_out(name: str, node: nir.Delay, slots: list[str], current: str | None) -> str:
        """Output of a Delay (the shared FIFO's read, with ONNX ``Where`` for mixed delays)."""
        fifo = fifo_of(name, node)

        def where(k: int, a: str, other: str) -> str:
            mask = b.const(f"{name}.delay_is{k}", fifo.steps == k, dtype=bool)
            return b.op("Where", [mask, a, other], f"{name}.out_k{k}")
        return fifo.read(slots, current, where)

    def delay_fifo(name: str, node: nir.Delay, shape) -> tuple[list[str], int]:
        depth = fifo_of(name, node).depth
        return [b.state(f"{name}.fifo{i}", shape) for i in range(depth)], depth

    def push(name: str, slots: list[str], x: str) -> None:
        for i, t in enumerate(DelayFifo.push(slots, x)):
            b.set_state(f"{name}.fifo{i}", b.op("Identity", [t], f"state_out.{name}.fifo{i}"))

    for name in cut:  # outputs from the FIFOs, before anything of this step
        node = graph.nodes[name]
        slots, _ = delay_fifo(name, node, shapes[name])
        values[name] = delay_out(name, node, slots, None)

    for name in order:
        node = graph.nodes[name]
        if name == in_name:
            values[name] = INPUT_NAME
            continue
        if name in cut:
            continue
        srcs = inputs[name]
        x = values[srcs[0]]
        for k, s_ in enumerate(srcs[1:]):
            x = b.op("Add", [x, values[s_]], f"{name}.fanin{k + 1}")
        values[name] = _emit(b, name, node, x, shapes[srcs[0]], delay_fifo, delay_out, push)

    for name in cut:  # push this step's fan-in
        srcs = inputs[name]
        x = values[srcs[0]]
        for k, s in enumerate(srcs[1:]):
            x = b.op("Add", [x, values[s]], f"{name}.fanin{k + 1}")
        slots = [f"state.{name}.fifo{i}" for i in range(int(np.asarray(graph.nodes[name].delay).max()))]
        push(name, slots, x)

    b.op("Identity", [values[out_name]], OUTPUT_NAME)
    vi = lambda n, shape: helper.make_tensor_value_info(n, b.elem, ["batch", *shape])  # noqa: E731
    g_inputs = [vi(INPUT_NAME, shapes[in_name])] + [vi(n, s) for n, _, s in b.states]
    g_outputs = [vi(OUTPUT_NAME, shapes[out_name])]
    for n, t, s in b.states:
        assert t == "state_out." + n[len("state."):], (n, t)
        g_outputs.append(vi(t, s))
    neurons = sched.neurons
    if spikes:
        g_outputs += [vi(f"spikes.{n}", shapes[n]) for n in neurons]
    onnx_graph = helper.make_graph(b.nodes, f"revsnn_step_{graph.metadata.get('model', 'graph')}", g_inputs,
                                   g_outputs, initializer=b.inits)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", int(opset))],
                              producer_name="revsnn", producer_version=revsnn.__version__)
    model.ir_version = min(model.ir_version, 8)  # what onnxruntime 1.x reads for opset 17
    meta = {k: v for k, v in graph.metadata.items()}
    props = {
        "format": STEP_FORMAT,
        "mode": "step",
        "revsnn_version": revsnn.__version__,
        "model": str(meta.get("model", "")),
        "family": str(meta.get("family", "")),
        "time_steps": str(meta.get("time_steps", "")),
        "readout": str(meta.get("readout", "")),
        "dt": str(meta.get("dt", 1.0)),
        "reset": str(meta.get("reset", "hard")),
        "neuron_contract": NEURON_CONTRACT,
        "initial_state": "zeros: every state.* input is all zeros at step 0 (shape [batch, ...] as declared)",
        "step": "one time step; feed x_t and the state.* inputs, carry state_out.* into the next step's state.*",
        "state_inputs": json.dumps([n for n, _, _ in b.states]),
        "neurons": json.dumps(neurons),
        "graph_metadata": json.dumps(meta, default=str),
    }
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def _check_time_steps(time_steps) -> int:
    if time_steps is None:
        raise ONNXFileError("an unrolled ONNX model needs time_steps (the fixed number of steps T it runs); "
                            "pass time_steps=T.")
    if isinstance(time_steps, bool) or not isinstance(time_steps, (int, np.integer)):
        raise ONNXFileError(f"time_steps must be a whole number of steps >= 1, got {time_steps!r}.")
    if int(time_steps) < 1:
        raise ONNXFileError(f"time_steps must be at least 1 for an unrolled ONNX model, got {int(time_steps)}.")
    return int(time_steps)


# protobuf cannot serialise a message of 2 GiB or more; ONNX's external-data form would be needed beyond it.
_PROTOBUF_LIMIT = 2**31 - 1


def _check_unrolled_size(step_graph, time_steps: int) -> None:
    """Estimate the unrolled model's size from the one-step graph (its nodes are copied T times, its weights
    shared) and refuse, before building it, a model protobuf cannot hold or this machine cannot build."""
    from revsnn.limits import human_bytes, require_memory

    per_step = sum(n.ByteSize() for n in step_graph.node) + 64 * (len(step_graph.input) + len(step_graph.output))
    weights = sum(t.ByteSize() for t in step_graph.initializer)
    estimate = time_steps * per_step + weights
    fix = "lower --time-steps, or export --mode step (one step, run any number of times)"
    if estimate > _PROTOBUF_LIMIT:
        raise ONNXFileError(f"an unrolled ONNX model of T = {time_steps:,} steps would be about "
                            f"{human_bytes(estimate)} ({time_steps * len(step_graph.node):,} nodes), beyond "
                            f"protobuf's 2 GiB limit; {fix}.")
    # Python's protobuf objects take several times their serialised size while the graph is built.
    require_memory(8 * estimate, f"an unrolled ONNX model of T = {time_steps:,} steps", fix)


def graph_to_onnx_unrolled(graph: nir.NIRGraph, time_steps: int, opset: int = 17,
                           spikes: bool = False, dtype: str = "float32") -> onnx.ModelProto:
    """The ONNX model of ``graph`` unrolled over a fixed ``time_steps`` = T steps in one graph.

    Input ``x`` ``[T, 'batch', *input_shape]``; outputs ``logits`` ``[batch, K]`` (the graph's readout of the
    T per-step outputs: ``"mean"`` = ReduceMean over the steps, ``"last"`` = the last step's output) and ``y``
    ``[T, batch, K]`` (the per-step outputs). It is the one-step model (:func:`graph_to_onnx_step`) composed
    T times: every tensor of step k is renamed ``t{k}/<name>`` (the weights are shared, not copied), step 0's
    states are zeros of shape ``[batch, ...]`` (``ConstantOfShape`` from the batch dimension of ``x``) and
    step k+1's ``state.*`` are step k's ``state_out.*``."""
    T = _check_time_steps(time_steps)
    readout = str(graph.metadata.get("readout", "mean"))
    if readout not in ("mean", "last"):
        raise ONNXFileError(f"the graph's readout {readout!r} is not one the unrolled ONNX model knows (it "
                            "takes 'mean' or 'last').")
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    step = graph_to_onnx_step(graph, opset, spikes=spikes, dtype=dtype)
    elem, np_float = FLOAT_TYPES[dtype]
    sg = step.graph
    _check_unrolled_size(sg, T)
    spike_outputs = [(v.name, dims(v)[1:]) for v in sg.output if v.name.startswith("spikes.")] if spikes else []
    per_step_spikes: dict[str, list[str]] = {name: [] for name, _ in spike_outputs}
    inits = {t.name for t in sg.initializer}
    x_dims = dims(sg.input[0])[1:]
    y_dims = dims(sg.output[0])[1:]
    states = [(v.name, dims(v)[1:]) for v in sg.input[1:]]

    nodes: list[onnx.NodeProto] = []
    extra: list[onnx.TensorProto] = []

    def op(op_type: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op_type, ins, [out], name=f"unrolled/{out}", **attrs))
        return out

    def const(name: str, value, dtype) -> str:
        extra.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    # zero initial states, [batch, ...] with the batch taken from x
    x_shape = op("Shape", [UNROLLED_INPUT], "init/x_shape")
    batch = op("Slice", [x_shape, const("init/one", [1], np.int64), const("init/two", [2], np.int64)],
               "init/batch")
    zeros: dict[tuple, str] = {}
    prev: dict[str, str] = {}
    for name, shape in states:
        key = tuple(shape)
        if key not in zeros:
            i = len(zeros)
            full = op("Concat", [batch, const(f"init/shape{i}", list(key), np.int64)], f"init/state_shape{i}",
                      axis=0)
            zeros[key] = op("ConstantOfShape", [full], f"init/zeros{i}",
                            value=numpy_helper.from_array(np.zeros(1, dtype=np_float)))
        prev[name] = zeros[key]

    ys = []
    for k in range(T):
        pre = f"t{k}/"
        x_t = op("Gather", [UNROLLED_INPUT, const(f"{pre}index", k, np.int64)], f"{pre}{INPUT_NAME}", axis=0)

        def rename(n: str) -> str:
            if not n or n in inits:
                return n
            if n == INPUT_NAME:
                return x_t
            if n in prev:
                return prev[n]
            return pre + n

        for node in sg.node:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.name = pre + node.name
            del new.input[:]
            new.input.extend(rename(n) for n in node.input)
            del new.output[:]
            new.output.extend(pre + n for n in node.output)
            nodes.append(new)
        prev = {name: pre + "state_out." + name[len("state."):] for name, _ in states}
        ys.append(op("Unsqueeze", [pre + OUTPUT_NAME, const(f"{pre}axis0", [0], np.int64)], f"{pre}y_step"))
        for name in per_step_spikes:
            per_step_spikes[name].append(op("Unsqueeze", [pre + name, f"{pre}axis0"], f"{pre}{name}.step"))
    op("Concat", ys, UNROLLED_STEPS, axis=0)
    for name, parts in per_step_spikes.items():
        op("Concat", parts, name, axis=0)
    if readout == "last":
        op("Gather", [UNROLLED_STEPS, const("readout/last", T - 1, np.int64)], UNROLLED_LOGITS, axis=0)
    elif int(opset) >= 18:
        op("ReduceMean", [UNROLLED_STEPS, const("readout/axes", [0], np.int64)], UNROLLED_LOGITS, keepdims=0)
    else:
        op("ReduceMean", [UNROLLED_STEPS], UNROLLED_LOGITS, axes=[0], keepdims=0)

    g = helper.make_graph(
        nodes, f"revsnn_unrolled_{graph.metadata.get('model', 'graph')}",
        [helper.make_tensor_value_info(UNROLLED_INPUT, elem, [T, "batch", *x_dims])],
        [helper.make_tensor_value_info(UNROLLED_LOGITS, elem, ["batch", *y_dims]),
         helper.make_tensor_value_info(UNROLLED_STEPS, elem, [T, "batch", *y_dims])]
        + [helper.make_tensor_value_info(name, elem, [T, "batch", *d]) for name, d in spike_outputs],
        initializer=list(sg.initializer) + extra)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", int(opset))],
                              producer_name="revsnn", producer_version=revsnn.__version__)
    model.ir_version = step.ir_version
    props = {p.key: p.value for p in step.metadata_props}
    for key in ("step", "state_inputs"):
        props.pop(key, None)
    props.update({
        "format": UNROLLED_FORMAT,
        "mode": "unrolled",
        "time_steps": str(T),
        "readout": readout,
        "initial_state": "zeros: every neuron membrane, attention membrane and Delay slot is all zeros at step 0 "
                         "(built inside the model)",
        "unrolled": f"the one-step model composed {T} times: input x [T, batch, ...] with T = {T} fixed; "
                    f"outputs logits [batch, ...] (readout {readout!r} of the per-step outputs) and y "
                    "[T, batch, ...] (the per-step outputs)",
        "step_states": json.dumps([n for n, _ in states]),
    })
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def _emit(b: _Builder, name: str, node, x: str, shape, delay_fifo, delay_out, push) -> str:
    if isinstance(node, nir.Output):
        return x
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = _f32(node.weight)
        bias = _f32(node.bias) if isinstance(node, nir.Affine) else None
        if len(shape) == 1:
            ins = [x, b.const(f"{name}.weight", w)] + ([b.const(f"{name}.bias", bias)] if bias is not None else [])
            return b.op("Gemm", ins, f"{name}.out", transB=1)
        y = b.op("MatMul", [x, b.const(f"{name}.weight_t", w.T.copy())], f"{name}.matmul")
        return b.op("Add", [y, b.const(f"{name}.bias", bias)], f"{name}.out") if bias is not None else y
    if isinstance(node, (nir.Conv2d, nir.Conv1d)):
        dims = 2 if isinstance(node, nir.Conv2d) else 1
        if isinstance(node.padding, str):
            raise ONNXFileError(f"{name}: string padding {node.padding!r} is not supported.")
        p = _ints(node.padding, dims)
        ins = [x, b.const(f"{name}.weight", _f32(node.weight))]
        if node.bias is not None:
            ins.append(b.const(f"{name}.bias", _f32(node.bias)))
        return b.op("Conv", ins, f"{name}.out", strides=_ints(node.stride, dims), pads=p + p,
                    dilations=_ints(node.dilation, dims), group=int(node.groups),
                    kernel_shape=list(np.shape(node.weight)[2:]))
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        k, s, p = _ints(node.kernel_size, 2), _ints(node.stride, 2), _ints(node.padding, 2)
        y = b.op("AveragePool", [x], f"{name}.avg", kernel_shape=k, strides=s, pads=p + p, count_include_pad=1)
        if isinstance(node, nir.SumPool2d):
            y = b.op("Mul", [y, b.const(f"{name}.area", float(np.prod(k)))], f"{name}.out")
        return y
    if isinstance(node, MaxPool2d):
        k, s, p = _ints(node.kernel_size, 2), _ints(node.stride, 2), _ints(node.padding, 2)
        return b.op("MaxPool", [x], f"{name}.out", kernel_shape=k, strides=s, pads=p + p)
    if isinstance(node, nir.Flatten):
        out = node_shape(node, shape)
        return b.op("Reshape", [x, b.const(f"{name}.shape", [0, *out], dtype=np.int64)], f"{name}.out")
    if isinstance(node, nir.Scale):
        return b.op("Mul", [x, b.const(f"{name}.scale", _f32(node.scale))], f"{name}.out")
    if isinstance(node, (nir.LI, nir.CubaLIF, nir.CubaLI)):
        # CubaLIF / CubaLI: the current first, i = i + (w_in x - i) / tau_syn; then the voltage reads it
        tau = node.tau if isinstance(node, nir.LI) else node.tau_mem
        drive = x
        if not isinstance(node, nir.LI):
            i = b.state(f"{name}.current", shape)
            wx = b.op("Mul", [b.const(f"{name}.w_in", _f32(np.broadcast_to(node.w_in, np.shape(tau)))), x],
                      f"{name}.w_in_x")
            di = b.op("Div", [b.op("Sub", [wx, i], f"{name}.wx_minus_i"), b.const(f"{name}.tau_syn",
                                                                                   _f32(node.tau_syn))], f"{name}.di")
            drive = b.op("Add", [i, di], f"{name}.i")
            b.set_state(f"{name}.current", b.op("Identity", [drive], f"state_out.{name}.current"))
        v = b.state(name, shape)
        leak_v = b.op("Sub", [b.const(f"{name}.v_leak", _f32(node.v_leak)), v], f"{name}.leak_minus_v")
        ri = b.op("Mul", [b.const(f"{name}.r", _f32(node.r)), drive], f"{name}.rI")
        num = b.op("Add", [leak_v, ri], f"{name}.drive")
        dv = b.op("Div", [num, b.const(f"{name}.tau", _f32(tau))], f"{name}.dv")
        h = b.op("Add", [v, dv], f"{name}.h")
        if isinstance(node, nir.CubaLIF):
            s = b.fire(name, name, h, b.const(f"{name}.v_threshold", _f32(node.v_threshold)),
                       b.const(f"{name}.v_reset", _f32(node.v_reset)))
            return b.op("Identity", [s], f"spikes.{name}")
        b.set_state(name, b.op("Identity", [h], f"state_out.{name}"))
        return h
    if isinstance(node, nir.I):
        v = b.state(name, shape)
        h = b.op("Add", [v, b.op("Mul", [b.const(f"{name}.r", _f32(node.r)), x], f"{name}.rI")], f"{name}.h")
        b.set_state(name, b.op("Identity", [h], f"state_out.{name}"))
        return h
    if isinstance(node, nir.LIF):
        v = b.state(name, shape)
        leak_v = b.op("Sub", [b.const(f"{name}.v_leak", _f32(node.v_leak)), v], f"{name}.leak_minus_v")
        ri = b.op("Mul", [b.const(f"{name}.r", _f32(node.r)), x], f"{name}.rI")
        num = b.op("Add", [leak_v, ri], f"{name}.drive")
        dv = b.op("Div", [num, b.const(f"{name}.tau", _f32(node.tau))], f"{name}.dv")
        h = b.op("Add", [v, dv], f"{name}.h")
        s = b.fire(name, name, h, b.const(f"{name}.v_threshold", _f32(node.v_threshold)),
                   b.const(f"{name}.v_reset", _f32(node.v_reset)))
        return b.op("Identity", [s], f"spikes.{name}")
    if isinstance(node, nir.IF):
        v = b.state(name, shape)
        ri = b.op("Mul", [b.const(f"{name}.r", _f32(node.r)), x], f"{name}.rI")
        h = b.op("Add", [v, ri], f"{name}.h")
        s = b.fire(name, name, h, b.const(f"{name}.v_threshold", _f32(node.v_threshold)),
                   b.const(f"{name}.v_reset", _f32(node.v_reset)))
        return b.op("Identity", [s], f"spikes.{name}")
    if isinstance(node, nir.Threshold):
        above = b.op("Greater", [x, b.const(f"{name}.threshold", _f32(node.threshold))], f"{name}.above")
        return b.op("Cast", [above], f"spikes.{name}", to=b.elem)
    if isinstance(node, nir.Delay):
        slots, depth = delay_fifo(name, node, shape)
        if depth == 0:
            return b.op("Identity", [x], f"{name}.out")
        out = delay_out(name, node, slots, x)
        push(name, slots, x)
        return b.op("Identity", [out], f"{name}.out")
    if isinstance(node, SpikingAttention):
        return _attention(b, name, node, x, shape)
    raise ONNXFileError(f"node {name!r} is a {type(node).__name__}, which the ONNX writer does not handle.")


def _attention(b: _Builder, name: str, node: SpikingAttention, x: str, shape) -> str:
    C, N = int(shape[0]), int(shape[1])
    heads = int(node.heads)
    tau = b.const(f"{name}.tau", float(node.tau))
    zero = b.const(f"{name}.zero", 0.0)
    th_qkv = b.const(f"{name}.qkv_threshold", float(node.qkv_threshold))

    def lif(key: str, i: str, th: str) -> str:
        v = b.state(key, shape)
        dv = b.op("Div", [b.op("Sub", [i, v], f"{key}.i_minus_v"), tau], f"{key}.dv")
        h = b.op("Add", [v, dv], f"{key}.h")
        return b.fire(name, key, h, th, zero)

    heads_split = []
    for k in "qkv":
        w = _f32(getattr(node, "w" + k))[:, :, None]
        i = b.op("Conv", [x, b.const(f"{name}.w{k}", w), b.const(f"{name}.b{k}", _f32(getattr(node, "b" + k)))],
                 f"{name}.{k}.in", kernel_shape=[1])
        s = lif(f"{name}.{k}", i, th_qkv)
        r = b.op("Reshape", [s, b.const(f"{name}.{k}.split", [0, heads, C // heads, N], dtype=np.int64)],
                 f"{name}.{k}.heads")
        heads_split.append(b.op("Transpose", [r], f"{name}.{k}.tokens", perm=[0, 1, 3, 2]))  # [B, H, N, d]
    q, k_, v = heads_split
    kt = b.op("Transpose", [k_], f"{name}.kT", perm=[0, 1, 3, 2])
    qk = b.op("MatMul", [q, kt], f"{name}.qk")
    a = b.op("MatMul", [qk, v], f"{name}.qkv")
    a = b.op("Mul", [a, b.const(f"{name}.scale", float(node.scale))], f"{name}.scaled")
    a = b.op("Transpose", [a], f"{name}.merge_t", perm=[0, 1, 3, 2])
    a = b.op("Reshape", [a, b.const(f"{name}.merge", [0, C, N], dtype=np.int64)], f"{name}.a")
    # the output membrane is state.<node> (declared last of the four)
    vout = b.state(name, shape)
    dv = b.op("Div", [b.op("Sub", [a, vout], f"{name}.i_minus_v"), tau], f"{name}.dv")
    h = b.op("Add", [vout, dv], f"{name}.h")
    s = b.fire(name, name, h, b.const(f"{name}.v_threshold", _f32(node.v_threshold)), zero)
    return b.op("Identity", [s], f"spikes.{name}")


# --------------------------------------------------------------------------------------------------------
# Files


def write_onnx(graph: Union[nir.NIRGraph, onnx.ModelProto], path: Union[str, Path], opset: int = 17,
               mode: str = "step", time_steps: int | None = None, *, fingerprint: str | None = None) -> Path:
    """Export ``graph`` (or an already built model) to ``path`` atomically: a temporary file beside it,
    checked, then renamed; nothing is left behind on failure. ``mode="step"`` writes the one-step model,
    ``mode="unrolled"`` the model unrolled over ``time_steps`` steps (:func:`graph_to_onnx_unrolled`).
    ``fingerprint`` (``exporters/fingerprint.py``) is recorded in ``metadata_props`` as
    ``source_fingerprint``, beside ``content_digest``, the digest of the graph as written (a model passed in
    is copied, not changed)."""
    path = Path(path)
    if mode not in ("step", "unrolled"):
        raise ONNXFileError(f"unknown ONNX export mode {mode!r}; use mode='step' or mode='unrolled'.")
    # The opsets the writer is tested with (the CLI's --opset range): below 13 Unsqueeze and ReduceMean take
    # their axes as attributes, and onnx.checker rejects the unrolled graph.
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not 13 <= int(opset) <= 21:
        raise ONNXFileError(f"opset must be between 13 and 21, got {opset!r}.")
    if mode == "unrolled":
        time_steps = _check_time_steps(time_steps)
    elif time_steps is not None:
        raise ONNXFileError("time_steps only applies to mode='unrolled' (the one-step model runs any number "
                            "of steps); drop it or pass mode='unrolled'.")
    if not path.parent.is_dir():
        raise ONNXFileError(f"cannot write {path}: the directory {path.parent} does not exist; create it first.")
    if isinstance(graph, onnx.ModelProto):
        model = graph
    elif mode == "unrolled":
        model = graph_to_onnx_unrolled(graph, time_steps, opset)
    else:
        model = graph_to_onnx_step(graph, opset)
    if fingerprint is not None:
        from .fingerprint import DIGEST_KEY, FINGERPRINT_KEY, onnx_digest

        model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's model stays as it was
        props = {p.key: p.value for p in model.metadata_props}
        props.update({FINGERPRINT_KEY: str(fingerprint), DIGEST_KEY: onnx_digest(model)})
        del model.metadata_props[:]
        helper.set_model_props(model, props)

    def check(tmp: Path) -> None:
        onnx.checker.check_model(str(tmp), full_check=True)

    try:
        atomic_write(path, model.SerializeToString(), check=check)  # bytes in memory, then plain I/O
    except onnx.checker.ValidationError as exc:
        raise ONNXFileError(f"cannot write {path}: the model fails onnx.checker ({str(exc).splitlines()[0]}); "
                            "nothing was written.") from exc
    return path


def read_onnx(path: Union[str, Path]) -> onnx.ModelProto:
    """Load and check an ``.onnx`` file; every failure becomes :class:`ONNXFileError` with one sentence."""
    path = Path(path)
    if not path.exists():
        raise ONNXFileError(f"{path} does not exist; write it with `write_onnx` (or `revsnn export --onnx`).")
    if not path.is_file():
        raise ONNXFileError(f"{path} is not a regular file; pass the .onnx file written by `revsnn export onnx`.")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise ONNXFileError(f"{path} is not a readable ONNX file (corrupt or truncated: {exc}); export it "
                            "again.") from exc
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ONNXFileError(f"{path} is not a valid ONNX model (corrupt or truncated: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); export it "
                            "again.") from exc
    if not any(p.key == "format" and p.value in (STEP_FORMAT, UNROLLED_FORMAT) for p in model.metadata_props):
        raise ONNXFileError(f"{path} is a valid ONNX model but not a revsnn export (no format '{STEP_FORMAT}' or "
                            f"'{UNROLLED_FORMAT}' in its metadata); export it with `write_onnx`.")
    if not model.graph.input or not model.graph.output:
        raise ONNXFileError(f"{path} carries revsnn's format tag but has no graph "
                            f"{'inputs' if not model.graph.input else 'outputs'}; export it again with `revsnn export onnx`.")
    from onnx import numpy_helper

    for init in model.graph.initializer:  # values, not only structure: a NaN weight or threshold runs silently
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            raise ONNXFileError(f"{path}: the initializer {init.name!r} holds NaN or infinite values; export it "
                                "again from a sound model.")
    return model


# Metadata entries that are long machine-readable lists; summarize_onnx leaves them out.
_BULKY_PROPS = ("states", "neurons", "state_inputs", "graph_metadata", "step_states")


def summarize_onnx(model: onnx.ModelProto) -> dict:
    """What ``revsnn info`` shows of an ONNX model, as plain data: ``input`` and ``output`` (name and shape,
    symbolic dimensions by name), ``states`` (the number of state inputs), ``ops`` (op type -> count),
    ``opset``, ``metadata`` (every ``metadata_props`` entry but the long machine-readable lists)."""
    graph = model.graph

    def io(v) -> dict:
        return {"name": v.name, "shape": [d.dim_param or int(d.dim_value) for d in v.type.tensor_type.shape.dim]}

    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {
        "input": io(graph.input[0]),
        "output": io(graph.output[0]),
        "states": len(graph.input) - 1,
        "ops": dict(sorted(ops.items())),
        "opset": int(model.opset_import[0].version),
        "metadata": {p.key: p.value for p in model.metadata_props if p.key not in _BULKY_PROPS},
    }
