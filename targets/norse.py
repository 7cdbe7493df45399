"""The norse target: runs a ``.nir`` graph with norse's neuron modules, one time step at a time (DESIGN §7).

The graph is built with ``nirtorch.nir_to_torch(graph, node_map)``, which wires the nodes into a
``torch.fx.GraphModule`` and sums the edges entering a node at zero delay — NIR's fan-in, as the contract
wants. (``norse.torch.from_nir`` is *not* used: it goes through nirtorch's deprecated ``GraphExecutor``,
whose DFS execution order feeds a skip branch into its merge node one step late, and which silently skips
node types it does not know, passing the signal through unchanged.)

Node mappings (all ours; nirtorch 2.6's default map is not used, because its Affine map leaves the bias
random and its Flatten passes NIR's batch-free indices to torch unchanged):

- ``LIF`` → ``norse.torch.LIFBoxCell(LIFBoxParameters(tau_mem_inv=1/τ, v_th=θ, v_leak=v_leak), dt=1)``.
  norse integrates ``v ← v + dt·τ_mem_inv·(i + v_leak − v)`` (forward Euler), spikes on
  ``v − v_th > 0`` and resets to ``v_reset`` (0). With **dt = 1** that is exactly the contract's
  ``h = v + (x − (v − v_leak))/τ``, ``s = h > θ``, hard reset: NIR's continuous-time ODE
  ``τ v̇ = (v_leak − v) + r I`` under Euler with the contract's step of one time unit. (norse's default
  dt = 1e-3 would take steps a thousand times shorter.) The membrane starts at 0 as the contract says
  (norse's own cell would start it at ``v_leak``).
- ``IF`` → ``norse.torch.IAFCell`` (``v ← v + i``, no dt), membrane starting at 0.
- Refused before anything is built (:class:`UnsupportedNodeError`): LIF/IF nodes with ``r ≠ 1`` or
  ``v_reset ≠ 0`` (norse ignores both, so they would run wrongly), any node type not mapped here (CubaLIF,
  LI, Conv1d, nested graphs, ...), graph cycles that pass through no ``Delay`` of at least one step (the
  contract's edges have no delay; nirtorch would add one), and graphs without exactly one Input and one
  Output.
- Cycles closed by a ``Delay`` (all delays >= 1) run exactly as in the reference executor, without
  nirtorch's own recurrent handling (which would add a second, implicit step of delay): every such
  Delay node is cut out of the wiring given to nirtorch (it is fed from the Input node, which it
  ignores) and becomes a module that returns its FIFO's output; forward hooks capture the outputs of
  its real source nodes during the step, and after the step their sum is pushed into the FIFO.
- ``Affine``/``Linear`` → ``nn.Linear`` (with the bias), ``Conv2d`` → ``nn.Conv2d``, ``AvgPool2d`` →
  ``nn.AvgPool2d(count_include_pad=True)`` (torch's divisor, as the reference), ``SumPool2d`` → that times
  the window area, ``Scale`` → ``x·s``, ``Flatten`` → ``nn.Flatten`` with NIR's batch-free indices shifted
  by one when ≥ 0, ``Threshold`` → stateless ``x > θ``, ``Input``/``Output`` → identity, ``Delay`` → a
  stateful FIFO module (``y[t] = x[t − d]``, d in steps since dt = 1, zeros before the first input), its
  state carried by nirtorch's state dict like the neurons' (grouped ``Conv2d`` maps with its ``groups``).

Hidden spikes: a forward hook on every neuron module records its output, so ``spikes`` holds every neuron
node's spikes of the last step (keyed by the NIR node name).
"""

from __future__ import annotations

import keyword
from pathlib import Path
from typing import Callable, Optional, Union

import nir
import numpy as np
import torch
from torch import nn

from revsnn.exporters.graph import DelayFifo, GraphError, schedule

from .reference import UnsupportedNodeError
from .stepping import run_steps

__all__ = ["NorseTarget", "UnsupportedNodeError", "MAPPED_TYPES"]

NEURONS = (nir.LIF, nir.IF, nir.Threshold)


def _tensor(a, dtype, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=dtype, device=device).clone()


def _ints(a) -> tuple[int, ...]:
    return tuple(int(v) for v in np.atleast_1d(np.asarray(a)))


def _pair(a) -> tuple[int, int]:
    v = _ints(a)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _flatten_index(i: int) -> int:
    return i + 1 if i >= 0 else i  # NIR's indices skip the batch dimension torch has


# --------------------------------------------------------------------------------------------------------
# Modules nirtorch wires together.


class _Threshold(nn.Module):
    def __init__(self, threshold: torch.Tensor):
        super().__init__()
        self.register_buffer("threshold", threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)


class _Scale(nn.Module):
    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class _Delay(nn.Module):
    """``y[t] = x[t - d]`` (d in steps, per element), zeros before the first input: the schedule's shared
    ``DelayFifo``; its slots are the module's state, which nirtorch passes back in through ``state``."""

    def __init__(self, node: nir.Delay, device):
        super().__init__()
        self.fifo_rule = DelayFifo("delay", node)
        self.register_buffer("steps", torch.as_tensor(self.fifo_rule.steps, device=device))
        self.depth = self.fifo_rule.depth

    def where(self, k, a, b):
        return torch.where(self.steps == k, a, b)

    def forward(self, x: torch.Tensor, state: Optional[tuple] = None):
        if self.depth == 0:
            return x, ()
        slots = list(state) if state else [torch.zeros_like(x)] * self.depth
        return self.fifo_rule.read(slots, x, self.where), tuple(self.fifo_rule.push(slots, x))


class _CutDelay(_Delay):
    """A Delay (all delays >= 1) that closes a cycle: returns the input of ``d`` steps ago from a FIFO the
    target fills after each step (:meth:`NorseTarget.step`); its wired input (the graph's Input) is ignored."""

    def __init__(self, node: nir.Delay, shape: tuple[int, ...], device):
        super().__init__(node, device)
        self.shape = tuple(shape)
        self.fifo: Optional[list] = None  # the last `depth` inputs, oldest first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fifo is None:
            zero = torch.zeros(x.shape[0], *self.shape, dtype=x.dtype, device=x.device)
            self.fifo = [zero] * self.depth
        return self.fifo_rule.read(self.fifo, None, self.where)

    def push(self, x: torch.Tensor) -> None:
        self.fifo = self.fifo_rule.push(self.fifo, x)


class _SumPool2d(nn.AvgPool2d):
    def __init__(self, kernel, stride, padding):
        super().__init__(kernel, stride, padding, count_include_pad=True)
        self.area = float(np.prod(kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.area


def _norse():
    import warnings

    with warnings.catch_warnings():  # norse 1.1 calls the deprecated torch.jit.script at import time
        warnings.simplefilter("ignore", DeprecationWarning)
        import norse.torch as norse_torch  # imported lazily: norse is needed only by this target

    return norse_torch


def _lif_cell(node: nir.LIF, dtype, device) -> nn.Module:
    norse_torch = _norse()

    class ContractLIFBoxCell(norse_torch.LIFBoxCell):
        """norse's LIFBoxCell with the membrane starting at 0 (the contract) instead of at v_leak."""

        def initial_state(self, input_tensor):
            return norse_torch.LIFBoxFeedForwardState(v=torch.zeros_like(input_tensor))

    p = norse_torch.LIFBoxParameters(tau_mem_inv=1.0 / _tensor(node.tau, dtype, device),
                                     v_leak=_tensor(node.v_leak, dtype, device),
                                     v_th=_tensor(node.v_threshold, dtype, device),
                                     v_reset=torch.zeros((), dtype=dtype, device=device))
    return ContractLIFBoxCell(p, dt=1.0)


def _li_cell(node: nir.LI, dtype, device) -> nn.Module:
    """norse's LIBoxCell (``v = v + (v_leak - v + i) / tau``, no current term), membrane from 0."""
    norse_torch = _norse()

    class ContractLIBoxCell(norse_torch.LIBoxCell):
        def initial_state(self, input_tensor):
            return norse_torch.LIBoxState(v=torch.zeros_like(input_tensor))

    p = norse_torch.LIBoxParameters(tau_mem_inv=1.0 / _tensor(node.tau, dtype, device),
                                    v_leak=_tensor(node.v_leak, dtype, device))
    return ContractLIBoxCell(p, dt=1.0)


class _InputScaled(nn.Module):
    """A norse cell fed ``r * x``: norse's LIFBox and IAF cells have no resistance, and ``r`` enters the
    contract's equations only as that product (``h = v + (v_leak - v + r x) / tau``; IF ``h = v + r x``)."""

    def __init__(self, r: torch.Tensor, cell: nn.Module):
        super().__init__()
        self.register_buffer("r", r)
        self.cell = cell

    def forward(self, x, state=None):
        return self.cell(self.r * x, state)


def _with_r(node, cell: nn.Module, dtype, device) -> nn.Module:
    r = np.asarray(node.r, dtype=np.float64)
    return cell if np.all(r == 1.0) else _InputScaled(_tensor(r, dtype, device), cell)


def _if_cell(node: nir.IF, dtype, device) -> nn.Module:
    norse_torch = _norse()
    from norse.torch.functional.iaf import IAFFeedForwardState, IAFParameters

    class ContractIAFCell(norse_torch.IAFCell):
        """norse's IAFCell with a membrane of the input's shape, dtype and device, starting at 0."""

        def initial_state(self, input_tensor):
            return IAFFeedForwardState(v=torch.zeros_like(input_tensor))

    p = IAFParameters(v_th=_tensor(node.v_threshold, dtype, device),
                      v_reset=torch.zeros((), dtype=dtype, device=device))
    return ContractIAFCell(p, dt=1.0)


def _linear(node, bias: bool, dtype, device) -> nn.Module:
    w = _tensor(node.weight, dtype, device)
    m = nn.Linear(w.shape[1], w.shape[0], bias=bias, dtype=dtype, device=device)
    with torch.no_grad():
        m.weight.copy_(w)
        if bias:
            m.bias.copy_(_tensor(node.bias, dtype, device))
    return m


def _conv2d(node: nir.Conv2d, dtype, device) -> nn.Module:
    w = _tensor(node.weight, dtype, device)
    has_bias = node.bias is not None
    m = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]), stride=_pair(node.stride),
                  padding=_pair(node.padding), dilation=_pair(node.dilation), groups=int(node.groups),
                  bias=has_bias, dtype=dtype, device=device)
    with torch.no_grad():
        m.weight.copy_(w)
        if has_bias:
            m.bias.copy_(_tensor(node.bias, dtype, device).reshape(-1))
    return m


def _node_map(dtype: torch.dtype, device: torch.device) -> dict[type, Callable[[nir.NIRNode], nn.Module]]:
    return {
        nir.Input: lambda n: nn.Identity(),
        nir.Output: lambda n: nn.Identity(),
        nir.Affine: lambda n: _linear(n, True, dtype, device),
        nir.Linear: lambda n: _linear(n, False, dtype, device),
        nir.Conv2d: lambda n: _conv2d(n, dtype, device),
        nir.AvgPool2d: lambda n: nn.AvgPool2d(_pair(n.kernel_size), _pair(n.stride), _pair(n.padding),
                                              count_include_pad=True),
        nir.SumPool2d: lambda n: _SumPool2d(_pair(n.kernel_size), _pair(n.stride), _pair(n.padding)),
        nir.Flatten: lambda n: nn.Flatten(_flatten_index(int(n.start_dim)), _flatten_index(int(n.end_dim))),
        nir.Scale: lambda n: _Scale(_tensor(n.scale, dtype, device)),
        nir.Threshold: lambda n: _Threshold(_tensor(n.threshold, dtype, device)),
        nir.LIF: lambda n: _with_r(n, _lif_cell(n, dtype, device), dtype, device),
        nir.IF: lambda n: _with_r(n, _if_cell(n, dtype, device), dtype, device),
        nir.LI: lambda n: _with_r(n, _li_cell(n, dtype, device), dtype, device),
        nir.Delay: lambda n: _Delay(n, device),
    }


MAPPED_TYPES: tuple[type, ...] = tuple(_node_map(torch.float32, torch.device("cpu")))


def _sanitized(name: str) -> str:
    """The module name nirtorch 2.6 gives a node (``nir_interpreter._sanitize_name``)."""
    name = name.replace(".", "_")
    return "nir_node_" + name if keyword.iskeyword(name) else name


def check_graph(graph: nir.NIRGraph) -> list[str]:
    """Raise :class:`UnsupportedNodeError` for anything this target would not run exactly as the contract.

    Returns the graph's schedule (its ``cut_delays`` are cut out of the wiring; none in a feedforward graph)."""
    if not isinstance(graph, nir.NIRGraph):
        raise UnsupportedNodeError(f"the norse target runs a nir.NIRGraph, not a {type(graph).__name__}.")
    for name, node in graph.nodes.items():
        if type(node) not in MAPPED_TYPES:
            raise UnsupportedNodeError(f"node {name!r} is a {type(node).__name__}, which the norse target does not "
                                       "map; use a graph of LIF/IF/Threshold neurons and Affine/Linear/Conv2d/"
                                       "pooling/Flatten layers, or another target.")
        if isinstance(node, (nir.LIF, nir.IF)):
            for field, want in (("v_reset", 0.0),):
                value = np.asarray(getattr(node, field))
                if not np.all(value == want):
                    raise UnsupportedNodeError(f"node {name!r} ({type(node).__name__}) has {field} ≠ {want:g}, which "
                                               f"norse ignores; fold {field} into the graph (weights or "
                                               "thresholds) or use the reference target.")
        if isinstance(node, nir.Conv2d) and isinstance(node.padding, str):
            raise UnsupportedNodeError(f"node {name!r} (Conv2d) has string padding {node.padding!r}; write "
                                       "explicit padding.")
        if isinstance(node, (nir.Affine, nir.Linear)) and np.asarray(node.weight).ndim != 2:
            raise UnsupportedNodeError(f"node {name!r} ({type(node).__name__}) has a weight of "
                                       f"{np.asarray(node.weight).ndim} dimensions; the norse target maps 2-D "
                                       "weights only.")
    sanitized: dict[str, str] = {}
    for name in graph.nodes:
        other = sanitized.setdefault(_sanitized(name), name)
        if other != name:
            raise UnsupportedNodeError(f"nodes {other!r} and {name!r} get the same torch module name; rename one.")
    try:
        sched = schedule(graph)   # the one schedule: fan-in, order, cut Delays, shapes (refuses what it cannot run)
        for name, node in graph.nodes.items():
            if isinstance(node, nir.Delay):
                DelayFifo(name, node)
    except GraphError as exc:
        raise UnsupportedNodeError(str(exc)) from exc
    return sched


# --------------------------------------------------------------------------------------------------------


class NorseTarget:
    """Runs a NIR graph with norse through ``nirtorch.nir_to_torch``.

    ``NorseTarget.load(path_or_graph)``; ``reset()``; ``step(x_t)`` with ``x_t`` ``[B, *input_shape]``
    returns the output ``[B, ...]``; ``spikes`` maps each neuron node to its last step's spikes;
    ``run(x, record)`` as :meth:`revsnn.targets.reference.ReferenceExecutor.run`.
    """

    def __init__(self, graph: nir.NIRGraph, dtype: torch.dtype = torch.float32,
                 device: Union[str, torch.device] = "cpu"):
        import nirtorch

        sched = check_graph(graph)
        cut = sched.cut_delays
        self.graph = graph
        self.dtype = dtype
        self.device = torch.device(device)
        wired = graph
        node_map = _node_map(dtype, self.device)
        self._cut: dict[str, list[str]] = {}  # cut Delay node -> its real source nodes
        if cut:
            input_name = sched.input_name
            edges = [(s, d) for s, d in graph.edges if d not in cut] + [(input_name, d) for d in cut]
            self._cut = {d: sched.inputs[d] for d in cut}
            wired = nir.NIRGraph(nodes=dict(graph.nodes), edges=edges, metadata=dict(graph.metadata),
                                 type_check=False)
            cut_modules = {d: _CutDelay(graph.nodes[d], sched.shapes[d], self.device)
                           for d in cut}
            plain_delay = node_map[nir.Delay]
            node_map[nir.Delay] = lambda n: next((m for d, m in cut_modules.items() if graph.nodes[d] is n),
                                                 None) or plain_delay(n)
        self.module = nirtorch.nir_to_torch(wired, node_map, default_map={}, device=self.device, dtype=dtype)
        self.module.eval()
        self.neurons = [n for n in sched.neurons if isinstance(graph.nodes[n], NEURONS)]
        self.spikes: dict[str, torch.Tensor] = {}
        self._state: Optional[dict] = None
        for name in self.neurons:
            sub = self.module.get_submodule(_sanitized(name))
            sub.register_forward_hook(self._recorder(name))
        self._captured: dict[str, torch.Tensor] = {}
        for src in sorted({s for srcs in self._cut.values() for s in srcs}):
            self.module.get_submodule(_sanitized(src)).register_forward_hook(self._capturer(src))

    def _capturer(self, name: str):
        def hook(module, args, output):
            self._captured[name] = output[0] if isinstance(output, tuple) else output
        return hook

    def _recorder(self, name: str):
        def hook(module, args, output):
            self.spikes[name] = output[0] if isinstance(output, tuple) else output
        return hook

    @classmethod
    def load(cls, path_or_graph: Union[str, Path, nir.NIRGraph], dtype: torch.dtype = torch.float32,
             device: Union[str, torch.device] = "cpu") -> "NorseTarget":
        """From a ``.nir`` file (read with :func:`revsnn.exporters.nir_file.read_nir`) or an in-memory graph."""
        if isinstance(path_or_graph, nir.NIRGraph):
            graph = path_or_graph
        else:
            from revsnn.exporters.nir_file import read_nir

            graph = read_nir(path_or_graph)
        return cls(graph, dtype=dtype, device=device)

    def reset(self) -> None:
        """Forget all membranes; the next step starts from the contract's v = 0."""
        self._state = None  # the GraphModule builds a fresh state dict when it gets None
        self.spikes = {}
        for d in self._cut:
            self.module.get_submodule(_sanitized(d)).fifo = None

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One time step: ``x`` ``[B, *input_shape]``; returns the output node's value ``[B, ...]``."""
        result = self.module(x.to(self.device, self.dtype), self._state)
        # nirtorch returns (*inputs of the Output node, state): it does not sum fan-in into the Output node.
        *outs, self._state = result
        out = outs[0]
        for o in outs[1:]:
            out = out + o
        for d, srcs in self._cut.items():  # push each cut Delay's input of this step
            total = self._captured[srcs[0]]
            for s in srcs[1:]:
                total = total + self._captured[s]
            self.module.get_submodule(_sanitized(d)).push(total)
        self._captured = {}
        return out

    @torch.no_grad()
    def run(self, x: torch.Tensor, record: bool = False):
        """Run ``x`` ``[T, B, ...]`` from reset: the per-step outputs ``[T, B, ...]`` and, with ``record``,
        each neuron node's spikes ``[T, B, ...]``."""
        return run_steps(self, x, record)


# --------------------------------------------------------------------------------------------------------
# Registry entry (targets/registry.py).

TARGET_INFO = {"norse": "the .nir file in norse (LIFBoxCell / IAFCell wired by nirtorch.nir_to_torch), float64"}


class _NorseEntry:
    name = "norse"
    compare_with = "float"
    tolerance = 1e-5
    suffix = ".nir"
    description = TARGET_INFO["norse"]

    def unavailable(self):
        return None

    def accepts(self, path) -> bool:
        return Path(path).suffix == self.suffix

    def export(self, graph, folder: Path, **options) -> Path:
        from revsnn.exporters.nir_file import write_nir

        path = Path(folder) / "model.nir"
        write_nir(graph, path, **options.get("writer", {}))
        return path

    def run(self, source, x: torch.Tensor, **options):
        from .registry import Trace

        steps, spikes = NorseTarget.load(source, dtype=torch.float64).run(x, record=True)
        return Trace(steps.cpu(), {k: v.cpu() for k, v in spikes.items()})


def target(name: str):
    return _NorseEntry()
