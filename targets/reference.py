"""The reference executor: runs a spiking graph of NIR nodes one time step at a time in torch.

It is the golden model of every comparison (DESIGN §3), so it implements NIR's documented semantics
directly from the node parameters, with no code shared with the training models:

- every step, every node is evaluated once in topological order; edges have no delay; the inputs of a
  node are summed (fan-in);
- ``LIF``: forward Euler with dt = 1, ``h = v + (v_leak - v + r I) / tau``; ``IF``: ``h = v + r I``; spike
  ``h > v_threshold`` (strict); hard reset to ``v_reset``; membranes start at 0;
- ``Threshold``: ``x > threshold``, no state;
- ``Delay``: ``y[t] = x[t - d]`` with ``d`` in steps (dt = 1; a non-negative integer per element), zeros
  before the first input; ``d = 0`` is the identity. A FIFO of the last ``max d`` inputs per node;
- cycles: allowed only when every cycle passes through a ``Delay`` whose delays are all >= 1. Such a
  graph is run with the edges into those Delay nodes cut: each step first reads every such Delay's
  output from its FIFO (it does not depend on this step's input), then evaluates the rest in
  topological order, then pushes each such Delay's new input. Any other cycle is refused;
- ``Affine``/``Linear``/``Conv2d`` (grouped too)/``AvgPool2d`` (torch's zero-padding-counted average)/``Flatten``
  (batch-free indices)/``Scale`` as written;
- the quantised mode: ``LoihiNeuron`` nodes (``exporters/nodes.py``) compute what Loihi 2 computes, in
  integers: 1/4096 decays rounding toward zero, 24-bit state, strict threshold, hard reset. A graph of
  them with integer synapse weights (what ``exporters/loihi.py`` makes) is the quantised reference.

Runs on CPU or CUDA (TF32 off, so that CUDA matches the CPU's float arithmetic as closely as it can).
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

from typing import Callable, Optional

import nir
import numpy as np
import torch
import torch.nn.functional as tf

from revsnn.exporters.graph import STATELESS_LINEAR, DelayFifo, GraphError, _ints, linear_fn, schedule
from revsnn.exporters.nodes import NEURON_TYPES, LoihiNeuron, MaxPool2d, SpikingAttention, loihi_update

from .stepping import run_steps

__all__ = ["ReferenceExecutor", "UnsupportedNodeError", "NEURON_TYPES"]


class UnsupportedNodeError(RevsnnError):
    """A node this target cannot run; the message names it."""


def _t(a, device, dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)


class ReferenceExecutor:
    """``reset(batch)``, then ``step(x_t)`` per time step; ``spikes`` holds each neuron node's last output."""

    def __init__(self, graph: nir.NIRGraph, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64):
        self.graph = graph
        self.device = torch.device(device)
        self.dtype = dtype
        if self.device.type == "cuda":
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        try:
            sched = schedule(graph)
        except GraphError as exc:
            raise UnsupportedNodeError(str(exc)) from exc
        self.schedule = sched
        self.inputs, self.order, self.cut_delays = sched.inputs, sched.order, sched.cut_delays
        self.input_name, self.output_name, self.neurons = sched.input_name, sched.output_name, sched.neurons
        self.fifos: dict[str, DelayFifo] = {}
        self.fns: dict[str, Callable] = {n: self._compile(n, graph.nodes[n]) for n in self.order}
        self.state: dict[str, Optional[torch.Tensor]] = {}
        self.buffers: dict[str, list[torch.Tensor]] = {}  # Delay FIFOs
        self.spikes: dict[str, torch.Tensor] = {}
        self.potentials: dict[str, torch.Tensor] = {}
        self.loihi_spikes: dict[str, torch.Tensor] = {}

    def _compile(self, name: str, node: nir.NIRNode) -> Callable:
        dev, dt = self.device, self.dtype
        if isinstance(node, (nir.Input, nir.Output)):
            return lambda x: x
        if isinstance(node, STATELESS_LINEAR):
            try:
                return linear_fn(node, dev, dt)
            except ValueError as exc:
                raise UnsupportedNodeError(f"{name}: {exc}") from exc
        if isinstance(node, MaxPool2d):
            k, s_, p = _ints(node.kernel_size), _ints(node.stride), _ints(node.padding)
            return lambda x: tf.max_pool2d(x, k, s_, p)
        if isinstance(node, SpikingAttention):
            return self._attention(name, node)
        if isinstance(node, nir.LIF):
            tau, r = _t(node.tau, dev, dt), _t(node.r, dev, dt)
            leak, th, reset = _t(node.v_leak, dev, dt), _t(node.v_threshold, dev, dt), _t(node.v_reset, dev, dt)

            def lif(i: torch.Tensor) -> torch.Tensor:
                v = self.state.get(name)
                v = torch.zeros_like(i) if v is None else v
                h = v + (leak - v + r * i) / tau
                return self._fire(name, h, th, reset)
            return lif
        if isinstance(node, (nir.LI, nir.CubaLIF, nir.CubaLI)):
            return self._cuba(name, node)
        if isinstance(node, nir.I):
            r = _t(node.r, dev, dt)

            def integrator(i: torch.Tensor) -> torch.Tensor:
                v = self.state.get(name)
                v = (torch.zeros_like(i) if v is None else v) + r * i
                self.state[name] = self.potentials[name] = v
                return v
            return integrator
        if isinstance(node, nir.IF):
            r, th, reset = _t(node.r, dev, dt), _t(node.v_threshold, dev, dt), _t(node.v_reset, dev, dt)

            def if_(i: torch.Tensor) -> torch.Tensor:
                v = self.state.get(name)
                v = torch.zeros_like(i) if v is None else v
                return self._fire(name, v + r * i, th, reset)
            return if_
        if isinstance(node, nir.Threshold):
            th = _t(node.threshold, dev, dt)

            def threshold(i: torch.Tensor) -> torch.Tensor:
                self.potentials[name] = i
                return (i > th).to(i.dtype)
            return threshold
        if isinstance(node, nir.Delay):
            return self._delay(name, node)
        if isinstance(node, LoihiNeuron):
            return self._loihi(name, node)
        raise UnsupportedNodeError(f"node {name!r} is a {type(node).__name__}, which the reference executor "
                                   "does not run.")

    def _fifo(self, name: str, node: nir.Delay) -> DelayFifo:
        if name not in self.fifos:
            try:
                self.fifos[name] = DelayFifo(name, node)
            except GraphError as exc:
                raise UnsupportedNodeError(str(exc)) from exc
        return self.fifos[name]

    def _where(self, fifo: DelayFifo):
        steps = torch.as_tensor(fifo.steps, device=self.device)
        return lambda k, a, b: torch.where(steps == k, a, b)

    def _cuba(self, name: str, node) -> Callable:
        """LI, CubaLI, CubaLIF (nir_import's table): the current first, ``i = i + (w_in x - i) / tau_syn``
        (none for LI), then ``h = v + (v_leak - v + r i) / tau``; CubaLIF spikes and resets as LIF, the others
        output ``h``."""
        dev, dt = self.device, self.dtype
        lif = isinstance(node, nir.CubaLIF)
        tau = _t(node.tau if isinstance(node, nir.LI) else node.tau_mem, dev, dt)
        r, leak = _t(node.r, dev, dt), _t(node.v_leak, dev, dt)
        current = not isinstance(node, nir.LI)
        if current:
            tau_syn, w_in = _t(node.tau_syn, dev, dt), _t(node.w_in, dev, dt)
        if lif:
            th, reset = _t(node.v_threshold, dev, dt), _t(node.v_reset, dev, dt)

        def cuba(x: torch.Tensor) -> torch.Tensor:
            drive = x
            if current:
                i = self.state.get(name + "/i")
                i = torch.zeros_like(x) if i is None else i
                drive = self.state[name + "/i"] = i + (w_in * x - i) / tau_syn
            v = self.state.get(name)
            v = torch.zeros_like(x) if v is None else v
            h = v + (leak - v + r * drive) / tau
            if lif:
                return self._fire(name, h, th, reset)
            self.state[name] = self.potentials[name] = h
            return h
        return cuba

    def _delay(self, name: str, node: nir.Delay) -> Callable:
        fifo = self._fifo(name, node)
        if fifo.depth == 0:
            return lambda x: x
        where = self._where(fifo)

        def delay(x: torch.Tensor) -> torch.Tensor:
            slots = self.buffers.get(name) or [torch.zeros_like(x)] * fifo.depth
            out = fifo.read(slots, x, where)
            self.buffers[name] = fifo.push(slots, x)
            return out
        return delay

    def _read_cut(self, name: str, batch: int) -> torch.Tensor:
        """A cut Delay's output at this step: its FIFO (zeros before the first input), without the new input."""
        fifo = self._fifo(name, self.graph.nodes[name])
        if fifo.ks[0] < 1:
            raise UnsupportedNodeError(f"{name}: a Delay that closes a cycle needs whole numbers of steps >= 1.")
        slots = self.buffers.get(name)
        if slots is None:
            zero = torch.zeros(batch, *self.schedule.shapes[name], device=self.device, dtype=self.dtype)
            slots = self.buffers[name] = [zero] * fifo.depth
        return fifo.read(slots, None, self._where(fifo))

    def _attention(self, name: str, node: SpikingAttention) -> Callable:
        """Our own node (``exporters/nodes.py``): Q, K, V LIF populations, products, the output LIF."""
        dev, dt = self.device, self.dtype
        w = {k: _t(getattr(node, "w" + k), dev, dt) for k in "qkv"}
        b = {k: _t(getattr(node, "b" + k), dev, dt) for k in "qkv"}
        tau, heads, scale = float(node.tau), int(node.heads), float(node.scale)
        th_qkv = torch.tensor(float(node.qkv_threshold), dtype=dt, device=dev)
        th_out = _t(node.v_threshold, dev, dt)
        zero = torch.zeros((), dtype=dt, device=dev)

        def lif(key: str, i: torch.Tensor, th: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            v = self.state.get(key)
            v = torch.zeros_like(i) if v is None else v
            h = v + (i - v) / tau
            s = (h > th).to(h.dtype)
            self.state[key] = torch.where(s > 0, zero, h)
            return s, h

        def split(x: torch.Tensor) -> torch.Tensor:  # [B, C, N] -> [B, heads, N, C / heads]
            B, C, N = x.shape
            return x.reshape(B, heads, C // heads, N).transpose(-1, -2)

        def attention(x: torch.Tensor) -> torch.Tensor:
            q, k, v = (split(lif(f"{name}/{key}", tf.conv1d(x, w[key][:, :, None], b[key]), th_qkv)[0])
                       for key in "qkv")
            a = (q @ k.transpose(-1, -2)) @ v * scale
            B, H, N, d = a.shape
            a = a.transpose(-1, -2).reshape(B, H * d, N)
            s, h = lif(name, a, th_out)
            self.potentials[name] = h
            return s
        return attention

    def _loihi(self, name: str, node: LoihiNeuron) -> Callable:
        """The quantised mode: Loihi 2's fixed-point CUBA neuron (equations in ``LoihiNeuron``), in int64.
        Its input, the synaptic sum, is an integer held in a float tensor (exact: every sum stays far below
        2^53); its state lives in ``state[name + "/u"]`` and ``state[name]`` (v)."""
        dev = self.device
        keep_u, keep_v = 4096 - int(node.i_decay), 4096 - int(node.v_decay)
        bias = torch.as_tensor(np.asarray(node.bias), dtype=torch.int64, device=dev) << 6
        th = int(node.v_th_mant) << 6
        scale = 64.0 * float(node.scale)

        def loihi(a: torch.Tensor) -> torch.Tensor:
            a = torch.round(a).to(torch.int64)
            u, v = self.state.get(name + "/u"), self.state.get(name)
            u = torch.zeros_like(a) if u is None else u
            v = torch.zeros_like(a) if v is None else v
            u, v, s = loihi_update(u, v, a, keep_u, keep_v, bias, th)
            self.loihi_spikes[name] = s.to(self.dtype)
            self.potentials[name] = v.to(self.dtype) / scale
            self.state[name + "/u"] = u
            self.state[name] = torch.where(s, torch.zeros_like(v), v)
            if node.emit == "potential":
                return v.to(self.dtype) / scale
            return s.to(self.dtype)
        return loihi

    def _fire(self, name: str, h: torch.Tensor, th: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
        s = (h > th).to(h.dtype)
        self.potentials[name] = h
        self.state[name] = torch.where(s > 0, reset.expand_as(h), h)
        return s

    def reset(self) -> None:
        self.state = {}
        self.buffers = {}
        self.spikes = {}
        self.potentials = {}
        self.loihi_spikes = {}

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One time step: ``x`` is ``[B, *input_shape]``; returns the output node's value ``[B, ...]``."""
        values: dict[str, torch.Tensor] = {}
        for name in self.cut_delays:  # outputs from the FIFOs, before anything of this step
            values[name] = self._read_cut(name, x.shape[0])
        for name in self.order:
            if name == self.input_name:
                values[name] = x.to(self.device, self.dtype)
                continue
            if name in self.cut_delays:
                continue
            out = self.fns[name](self._fan_in(name, values))
            values[name] = out
            if name in self.loihi_spikes:  # a readout emits its potential; its spikes are kept apart
                self.spikes[name] = self.loihi_spikes[name]
            elif name in self.state or isinstance(self.graph.nodes[name], nir.Threshold):
                self.spikes[name] = out
        for name in self.cut_delays:  # push this step's inputs
            self.buffers[name] = DelayFifo.push(self.buffers[name], self._fan_in(name, values))
        return values[self.output_name]

    def _fan_in(self, name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The sum of the edges entering ``name`` (NIR's fan-in), in edge order."""
        srcs = self.inputs[name]
        if not srcs:
            raise UnsupportedNodeError(f"node {name!r} has no input.")
        total = values[srcs[0]]
        for s in srcs[1:]:
            total = total + values[s]
        return total

    @torch.no_grad()
    def run(self, x: torch.Tensor, record: bool = False):
        """Run ``x`` ``[T, B, ...]`` from reset. Returns the per-step outputs ``[T, B, ...]`` and, with
        ``record``, each neuron node's spikes ``[T, B, ...]``."""
        return run_steps(self, x, record)


# --------------------------------------------------------------------------------------------------------
# Registry entries (targets/registry.py): the reference executor itself, compared with the training model.

TARGET_INFO = {"torch": "the in-memory graph in the reference executor (CPU, float64), against the training model",
               "torch-cuda": "the same executor on CUDA (TF32 off), against the training model"}


def record_run(executor: "ReferenceExecutor", x: torch.Tensor):
    """``(outputs [T, B, ...], spikes, potentials)`` of every neuron node, on the CPU."""
    outputs, spikes, potentials = run_steps(executor, x, record=True, potentials=True)
    return outputs.cpu(), {n: v.cpu() for n, v in spikes.items()}, {n: v.cpu() for n, v in potentials.items()}


class _TorchTarget:
    compare_with = "model"
    suffix = None

    def __init__(self, name: str):
        self.name = name
        self.device = "cuda" if name == "torch-cuda" else "cpu"
        self.tolerance = 1e-5 if self.device == "cuda" else 1e-6
        self.description = TARGET_INFO[name]

    def unavailable(self) -> Optional[str]:
        if self.device == "cuda" and not torch.cuda.is_available():
            return "target torch-cuda needs a CUDA device, and this machine has none."
        return None

    def accepts(self, path) -> bool:
        return False

    def export(self, graph, folder, **options):
        return graph

    def run(self, graph, x: torch.Tensor, **options):
        from .registry import Trace

        outputs, spikes, potentials = record_run(ReferenceExecutor(graph, device=self.device), x)
        return Trace(outputs, spikes, potentials)


def target(name: str):
    return _TorchTarget(name)
