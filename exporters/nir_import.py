"""NIR graphs from other tools (snnTorch, norse, sinabs, spikingjelly, rockpool, ...) into revsnn's discrete
contract (DESIGN §3, §4): read, flatten nested subgraphs, convert every time constant to steps at the user's
dt, once; from there every exporter and target treats the graph like our own.

NIR states neurons in continuous time; revsnn runs them with NIR's forward-Euler convention at dt, one step a
call (x is this step's fan-in sum, dt = 1 after conversion):

    node        NIR (continuous)                      converted              per step
    LIF         tau v' = (v_leak - v) + r I           tau -> tau / dt        h = v + (v_leak - v + r x) / tau; s = h > v_th; v = v_reset where s else h
    IF          v' = r I                              r -> r dt              h = v + r x; spike and reset as LIF
    LI          tau v' = (v_leak - v) + r I           tau -> tau / dt        v = v + (v_leak - v + r x) / tau; output v
    I           v' = r I                              r -> r dt              v = v + r x; output v
    CubaLIF     tau_syn I' = -I + w_in S; tau_mem v' = (v_leak - v) + r I
                                                      tau_syn, tau_mem / dt  i = i + (w_in x - i) / tau_syn; h = v + (v_leak - v + r i) / tau_mem; spike and reset as LIF
    CubaLI      the same without spikes               tau_syn, tau_mem / dt  as CubaLIF; output v
    Delay       y(t) = x(t - d)                       d -> d / dt (whole)    y[t] = x[t - d]
    Threshold, Affine, Linear, Scale, Conv1d, Conv2d, SumPool2d, AvgPool2d, Flatten: no time, unchanged.

CubaLIF's current is updated first and the voltage reads the new current (each equation stepped in turn with
this step's input): CubaLIF with tau_syn = 1 is exactly the LIF above, and it is the order Loihi's CUBA neuron
computes. A recurrent edge (a cycle through a neuron) takes one step per loop: NIR edges have no delay, so a
cycle must pass through a Delay of at least one step or a neuron's state; the schedule cuts the cycle at the
neurons' outputs of the previous step (see ``recurrent_cuts``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import nir
import numpy as np

from revsnn.errors import RevsnnError

from .graph import GraphError, schedule

__all__ = ["NIRImportError", "load_foreign", "time_summary", "to_steps", "flatten_subgraphs", "file_dt", "TIME_CONSTANTS"]


class NIRImportError(RevsnnError):
    """A NIR graph from another tool that cannot be converted; one sentence."""


# Fields in seconds (divided by dt) and fields per second (multiplied by dt), per node type.
TIME_CONSTANTS = {nir.LIF: ("tau",), nir.LI: ("tau",), nir.CubaLIF: ("tau_syn", "tau_mem"),
                  nir.CubaLI: ("tau_syn", "tau_mem"), nir.Delay: ("delay",)}
RATES = {nir.IF: ("r",), nir.I: ("r",)}


def _has_time(graph: nir.NIRGraph) -> bool:
    return any(type(n) in TIME_CONSTANTS or type(n) in RATES for n in graph.nodes.values())


def file_dt(graph: nir.NIRGraph) -> Optional[float]:
    """The dt its tool recorded (graph metadata ``dt``, in seconds; revsnn's own files say 1, one step)."""
    for key in ("dt", "delta_t", "timestep"):
        v = (graph.metadata or {}).get(key)
        if v is not None:
            try:
                v = float(np.asarray(v).reshape(-1)[0])
            except (TypeError, ValueError, IndexError):
                raise NIRImportError(f"the graph's metadata {key!r} is {v!r}, not a number of seconds; give --dt.")
            return v
    return None


def flatten_subgraphs(graph: nir.NIRGraph, prefix: str = "") -> tuple[dict, list]:
    """Nodes and edges with every nested ``NIRGraph`` node inlined (names ``outer.inner``): an edge into a
    subgraph goes to whatever its Input feeds; an edge out of it leaves from whatever feeds its Output."""
    nodes: dict[str, nir.NIRNode] = {}
    edges: list[tuple[str, str]] = []
    entries: dict[str, list[str]] = {}   # subgraph name -> the inner nodes its Input feeds
    exits: dict[str, list[str]] = {}     # subgraph name -> the inner nodes that feed its Output
    for name, node in graph.nodes.items():
        full = prefix + name
        if isinstance(node, nir.NIRGraph):
            inner_nodes, inner_edges = flatten_subgraphs(node, prefix=full + ".")
            ins = [prefix + name + "." + n for n, v in node.nodes.items() if isinstance(v, nir.Input)]
            outs = [prefix + name + "." + n for n, v in node.nodes.items() if isinstance(v, nir.Output)]
            if len(ins) != 1 or len(outs) != 1:
                raise NIRImportError(f"subgraph {full!r} has {len(ins)} inputs and {len(outs)} outputs; revsnn "
                                     "inlines subgraphs with one of each.")
            entries[full] = [d for s, d in inner_edges if s == ins[0]]
            exits[full] = [s for s, d in inner_edges if d == outs[0]]
            nodes.update({k: v for k, v in inner_nodes.items() if k not in (ins[0], outs[0])})
            edges += [(s, d) for s, d in inner_edges if s != ins[0] and d != outs[0]]
        else:
            nodes[full] = node

    def ends(n: str, table: dict) -> list[str]:
        for key in (n, n.rsplit(".", 1)[0] if n.rsplit(".", 1)[-1] in ("input", "output") else None):
            if key in table:
                return table[key]
        return [n]
    for s, d in graph.edges:
        s, d = prefix + s, prefix + d
        for a in ends(s, exits):
            for b in ends(d, entries):
                edges.append((a, b))
    return nodes, edges


def _array(name: str, node, field_: str) -> np.ndarray:
    a = np.asarray(getattr(node, field_), dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise NIRImportError(f"node {name!r} ({type(node).__name__}) has non-finite values (NaN or inf) in "
                             f"{field_!r}; repair the file where it was written.")
    return a


def _check_finite(name: str, node: nir.NIRNode) -> None:
    for field_, value in vars(node).items():
        if field_ in ("input_type", "output_type", "metadata") or value is None or isinstance(value, str):
            continue
        try:
            a = np.asarray(value)
        except Exception:  # noqa: BLE001  (a field numpy cannot hold is not a number to check)
            continue
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            raise NIRImportError(f"node {name!r} ({type(node).__name__}) has non-finite values (NaN or inf) in "
                                 f"{field_!r}; repair the file where it was written.")


def _in_steps(name: str, node, field_: str, dt: float, divide: bool) -> np.ndarray:
    """``field / dt`` (or ``* dt``) in float64, computed at the file's own precision when that is narrower.
    snnTorch writes float32 seconds (tau = 1e-4 / (1 - beta) = 3.9999999e-4 for beta = 0.75); divided in
    float64 that is 3.9999998989 steps, off the 1/4096 grid Loihi needs, though the tool meant (and runs)
    exactly 4. The quotient in float32 is 4.0: it carries no more digits than the file holds."""
    a = _array(name, node, field_)
    raw = np.asarray(getattr(node, field_))
    if raw.dtype.kind == "f" and raw.dtype.itemsize < 8:
        step = raw.dtype.type(dt)
        return (raw / step if divide else raw * step).astype(np.float64)
    return a / dt if divide else a * dt


def _converted(name: str, node: nir.NIRNode, dt: float) -> nir.NIRNode:
    kind = type(node)
    if kind in TIME_CONSTANTS:
        for f in TIME_CONSTANTS[kind]:
            a = _in_steps(name, node, f, dt, divide=True)
            if f == "delay":
                whole = np.round(a)
                if np.any(np.abs(a - whole) > 1e-6 * np.maximum(1.0, np.abs(a))) or np.any(a < 0):
                    raise NIRImportError(f"Delay {name!r} of {np.unique(a * dt)[:3]} s is not a whole number of "
                                         f"steps of dt = {dt:g} s; choose a dt that divides it.")
                a = whole
            elif np.any(a <= 0):
                raise NIRImportError(f"node {name!r} has {f} <= 0, which no neuron has.")
            elif np.any(a < 1):
                # The contract's step v += (x - v) / tau is forward Euler: for tau < dt it overshoots the input
                # (and diverges below dt / 2), and Loihi's decay 4096 / tau would exceed 4096. Every tool we
                # import writes tau >= dt (snnTorch tau = dt / (1 - beta)), so a shorter one means another dt.
                short = float(np.min(a)) * dt
                raise NIRImportError(f"node {name!r} has {f} = {short:g} s, shorter than the time step dt = {dt:g} s, "
                                     f"which one step per dt cannot follow; pass --dt {short:g} or smaller (norse, exporting at its "
                                     "default dt, writes tau x dt: export from norse with dt = 1).")
            setattr(node, f, a)
    if kind in RATES:
        for f in RATES[kind]:
            setattr(node, f, _in_steps(name, node, f, dt, divide=False))
    return node


STATEFUL = (nir.LIF, nir.IF, nir.LI, nir.I, nir.CubaLIF, nir.CubaLI)


def _find_cycle(nodes: dict, edges: list) -> Optional[list[str]]:
    """A cycle (a list of nodes, each feeding the next) that passes through no Delay of at least one step."""
    from .graph import delays_at_least_one

    cut = set(delays_at_least_one(nir.NIRGraph(nodes=nodes, edges=[], type_check=False)))
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for s_, d in edges:
        if s_ in succ and s_ not in cut:
            succ[s_].append(d)
    colour, stack = {n: 0 for n in nodes}, []

    def visit(n: str) -> Optional[list[str]]:
        colour[n] = 1
        stack.append(n)
        for m in succ.get(n, ()):
            if m not in colour:
                continue
            if colour[m] == 1:
                return stack[stack.index(m):]
            if colour[m] == 0:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        colour[n] = 2
        return None
    for n in nodes:
        if colour[n] == 0:
            found = visit(n)
            if found:
                return found
    return None


def recurrent_cuts(nodes: dict, edges: list) -> list:
    """NIR edges have no delay, so a recurrent layer's cycle (LIF -> Linear -> LIF) means: the neuron reads its
    own output of the previous step. Each cycle that passes through no Delay gets an explicit ``Delay(1)``
    after the first stateful neuron on it, so every target runs it the same way; a cycle with no neuron and no
    Delay has no meaning in steps and is refused."""
    edges = list(edges)
    for _ in range(len(nodes) + 1):
        cycle = _find_cycle(nodes, edges)
        if cycle is None:
            return edges
        k = next((i for i, n in enumerate(cycle) if isinstance(nodes[n], STATEFUL)), None)
        if k is None:
            raise NIRImportError(f"the graph has a cycle ({' -> '.join(cycle + cycle[:1])}) through no neuron state "
                                 "and no Delay: a loop that must settle within one step, which revsnn does not run.")
        src, dst = cycle[k], cycle[(k + 1) % len(cycle)]
        node = nodes[src]
        shape = np.shape(next(np.asarray(getattr(node, f)) for f in ("v_threshold", "tau", "r", "tau_mem")
                              if getattr(node, f, None) is not None))
        name = f"{src}.recurrent_delay"
        while name in nodes:
            name += "_"
        nodes[name] = nir.Delay(delay=np.ones(shape))
        i = edges.index((src, dst))
        edges[i:i + 1] = [(src, name), (name, dst)]
    raise NIRImportError("the graph's cycles could not be resolved.")


def to_steps(graph: nir.NIRGraph, dt: float) -> nir.NIRGraph:
    """A copy of ``graph`` (subgraphs inlined) in steps of ``dt`` seconds: revsnn's discrete contract."""
    import copy

    if not (isinstance(dt, (int, float)) and np.isfinite(dt) and dt > 0):
        raise NIRImportError(f"--dt must be a positive number of seconds, got {dt!r}.")
    nodes, edges = flatten_subgraphs(copy.deepcopy(graph))
    for name, node in nodes.items():
        _check_finite(name, node)
        _converted(name, node, float(dt))
    edges = recurrent_cuts(nodes, edges)
    metadata = dict(graph.metadata or {})
    metadata.update({"source_dt": float(dt), "dt": 1.0, "time_unit": "steps of source_dt seconds"})
    out = nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=False)
    try:
        schedule(out)
    except GraphError as exc:
        raise NIRImportError(str(exc)) from exc
    return out


def load_foreign(path_or_graph: Union[str, Path, nir.NIRGraph], dt: Optional[float] = None) -> nir.NIRGraph:
    """Read a ``.nir`` file from any tool (or take a graph) and convert it to steps at ``dt`` (seconds; default:
    the file's own metadata ``dt``; revsnn's own files are already in steps)."""
    if isinstance(path_or_graph, nir.NIRGraph):
        graph = path_or_graph
    else:
        from .nir_file import read_nir

        graph = read_nir(path_or_graph)
    meta = graph.metadata or {}
    if dt is None:
        if "revsnn_version" in meta:
            dt = 1.0   # our own files are written in steps (DESIGN §4)
        else:
            dt = file_dt(graph)
    if dt is None:
        if _has_time(graph):
            raise NIRImportError("this NIR graph has time constants but does not say its time step; give it with "
                                 "--dt SECONDS (snnTorch and spikingjelly assume 1e-4, norse 1e-3).")
        dt = 1.0
    return to_steps(graph, float(dt))


def time_summary(graph: nir.NIRGraph, dt: Optional[float] = None) -> list[tuple[str, str]]:
    """For ``revsnn info``: the graph's time step and, per node type with time constants, their range as
    written and in steps at that dt."""
    meta = graph.metadata or {}
    if dt is None:
        dt = 1.0 if "revsnn_version" in meta else file_dt(graph)
    rows = [("time step", "one step (revsnn's own file)" if "revsnn_version" in meta and dt == 1.0 else
             (f"{dt:g} s" if dt is not None else "not stated: give --dt SECONDS to verify and export"))]
    nodes, _ = flatten_subgraphs(graph)
    seen: dict[str, list[float]] = {}
    for node in nodes.values():
        for f in TIME_CONSTANTS.get(type(node), ()):
            seen.setdefault(f"{type(node).__name__}.{f}", []).extend(np.asarray(getattr(node, f), float).ravel())
    for key, values in sorted(seen.items()):
        lo, hi = min(values), max(values)
        written = f"{lo:g}" if lo == hi else f"{lo:g} .. {hi:g}"
        steps = "" if dt is None else (f" = {lo / dt:g} steps" if lo == hi else f" = {lo / dt:g} .. {hi / dt:g} steps")
        rows.append((key, written + steps))
    return rows
