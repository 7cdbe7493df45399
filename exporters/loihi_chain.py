"""From a quantised graph with fan-in to a latency-aligned chain of netx layers (relay chains).

lava-dl's netx loads only sequential chains, and in Lava every synapse (Dense or Conv) adds one step, so
the terms of a neuron's fan-in would arrive at different steps. The pass below makes every term cross the
same number of synapses (``research/relay.md`` proved the construction exact on toys):

- a population's *depth* is 1 + the deepest of its sources (the input is 0). Chain layer ``k`` holds the
  populations of depth ``k`` and a *relay* of every earlier population (or the input) that a population
  deeper than ``k`` still reads. Layer ``k``'s synapse reads only layer ``k - 1``, so the chain's output at
  step ``t + k`` is the zero-delay reference at step ``t``;
- a relay is an identity synapse of weight ``vThMant + 1`` (<= 254: the quantiser keeps ``vThMant <= 253``)
  into a neuron with bias 0, in a layer whose current forgets at once (``iDecay = 4096``). Its voltage is 0
  before every input, so it fires exactly when its source fired, whatever the layer's ``vDecay``, and
  resets to 0;
- a layer stays a convolution while it can: all its members then share one spatial grid. A member whose
  grid is finer by an integer factor ``f`` (a population relayed past a stride-2 layer) is carried
  *space-to-depth*: its ``(C, H, W)`` spikes as ``(C f², H/f, W/f)``, a permutation, so relays stay single
  taps. The layer's whole synapse (every term and relay, as one integer matrix over the previous layer) is
  then recognised as one convolution (stride, padding and kernel read off its nonzero pattern, checked
  entry by entry against the matrix); when it is not one, the layer and every later one are dense
  (netx cannot go from dense back to conv);
- the readout is the last layer, alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import nir
import numpy as np
import torch
import torch.nn.functional as tf

from .loihi import LoihiExportError, Quantized, relays
from .nodes import LoihiNeuron

__all__ = ["Member", "ChainLayer", "LoihiChain", "build_chain", "as_conv"]


@dataclass
class Member:
    """A block of a chain layer: a population computed there, or a relay of one computed earlier."""

    name: str                   # the population ("input" for the input's relays)
    relay: bool
    start: int                  # channel range (conv layer) or neuron range (dense layer) inside the layer
    stop: int
    fold: int = 1               # space-to-depth factor of its layout (1: the population's own)
    shape: tuple[int, ...] = () # the population's own shape
    scale: float = 64.0         # float potential = v / 64 / scale (computing members)


@dataclass
class ChainLayer:
    kind: str                   # "conv" | "dense"
    shape: tuple[int, ...]      # (C, H, W) or (N,)
    weight: np.ndarray          # int64: (C_out, C_in, kH, kW) or (N_out, N_in)
    bias: np.ndarray            # int64, one per neuron, flattened (C, H, W) order
    i_decay: int
    v_decay: int
    v_th_mant: int
    members: list[Member] = field(default_factory=list)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    readout: bool = False

    @property
    def neurons(self) -> int:
        return int(np.prod(self.shape))

    def flat_range(self, m: Member) -> tuple[int, int]:
        per = int(np.prod(self.shape[1:])) if self.kind == "conv" else 1
        return m.start * per, m.stop * per


@dataclass
class LoihiChain:
    input_shape: tuple[int, ...]        # the netx input layer: (C, H, W), or (N,) when the first layer is dense
    layers: list[ChainLayer]
    metadata: dict = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def overhead(self) -> dict:
        """Neurons and synapses (nonzero pre/post pairs) of the computing populations and of the relays."""
        out = {"neurons": 0, "relay_neurons": 0, "synapses": 0, "relay_synapses": 0}
        prev = self.input_shape
        for layer in self.layers:
            per_row = _row_synapses(layer, prev)
            for m in layer.members:
                lo, hi = layer.flat_range(m)
                key = "relay_" if m.relay else ""
                out[key + "neurons"] += hi - lo
                out[key + "synapses"] += int(per_row[lo:hi].sum())
            prev = layer.shape
        out["neuron_overhead"] = out["relay_neurons"] / max(out["neurons"], 1)
        out["synapse_overhead"] = out["relay_synapses"] / max(out["synapses"], 1)
        return out

    def to_graph(self) -> nir.NIRGraph:
        """The chain as a graph of LoihiNeuron layers (zero delay between layers), for the reference executor:
        layer ``k`` is node ``layer{k}``; the readout's potential is the output."""
        nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type=np.array(self.input_shape))}
        edges, prev, prev_shape = [], "input", self.input_shape
        for k, layer in enumerate(self.layers):
            syn = f"synapse{k}"
            if layer.kind == "conv":
                nodes[syn] = nir.Conv2d(input_shape=np.array(prev_shape[1:]), weight=layer.weight.astype(np.float64),
                                        stride=np.array(layer.stride), padding=np.array(layer.padding),
                                        dilation=np.array(layer.dilation), groups=1,
                                        bias=np.zeros(layer.shape[0]))
            else:
                if len(prev_shape) > 1:
                    nodes[f"flatten{k}"] = nir.Flatten(input_type={"input": np.array(prev_shape)}, start_dim=0,
                                                       end_dim=-1)
                    edges.append((prev, f"flatten{k}"))
                    prev = f"flatten{k}"
                nodes[syn] = nir.Linear(weight=layer.weight.astype(np.float64))
            scale = next((m.scale for m in layer.members if not m.relay), 64.0)
            nodes[f"layer{k}"] = LoihiNeuron(shape=np.array(layer.shape), i_decay=layer.i_decay,
                                             v_decay=layer.v_decay, v_th_mant=layer.v_th_mant,
                                             bias=layer.bias.reshape(layer.shape), scale=scale,
                                             emit="potential" if layer.readout else "spikes")
            edges += [(prev, syn), (syn, f"layer{k}")]
            prev, prev_shape = f"layer{k}", layer.shape
        nodes["output"] = nir.Output(output_type=np.array(prev_shape))
        edges.append((prev, "output"))
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(self.metadata), type_check=False)

    def unpack(self, layer: int, member: Member, values: torch.Tensor) -> torch.Tensor:
        """A member's values in its population's own shape, from the layer's ``[..., *layer.shape]``."""
        lay = self.layers[layer]
        flat = values.reshape(*values.shape[: values.dim() - len(lay.shape)], -1)
        lo, hi = lay.flat_range(member)
        inv = np.argsort(_packing(member.shape, member.fold))
        return flat[..., lo:hi][..., torch.as_tensor(inv)].reshape(*flat.shape[:-1], *member.shape)


def _row_synapses(layer: ChainLayer, prev_shape: tuple[int, ...]) -> np.ndarray:
    """Per post-synaptic neuron (flattened), its number of nonzero incoming weights."""
    if layer.kind == "dense":
        return np.count_nonzero(layer.weight, axis=1)
    ones = torch.ones(1, *prev_shape, dtype=torch.float64)
    k = torch.as_tensor((layer.weight != 0).astype(np.float64))
    return tf.conv2d(ones, k, None, layer.stride, layer.padding, layer.dilation).reshape(-1).round().numpy().astype(np.int64)


# --------------------------------------------------------------------------------------------------------
# Layouts: space-to-depth permutations.


def _packing(shape: tuple[int, ...], fold: int) -> np.ndarray:
    """``P`` with ``packed = own[P]`` (flattened): channel ``c f² + a f + b`` at ``(i, j)`` holds
    ``own[c, i f + a, j f + b]``."""
    n = int(np.prod(shape))
    if fold == 1 or len(shape) != 3:
        return np.arange(n)
    C, H, W = shape
    idx = np.arange(n).reshape(C, H // fold, fold, W // fold, fold)
    return idx.transpose(0, 2, 4, 1, 3).reshape(-1)


def _layout_shape(shape: tuple[int, ...], fold: int) -> tuple[int, ...]:
    if len(shape) != 3:
        return shape
    C, H, W = shape
    return (C * fold * fold, H // fold, W // fold)


# --------------------------------------------------------------------------------------------------------
# Recognising a matrix as a convolution.


def _axis_geometry(offsets: np.ndarray, n_in: int, n_out: int, stride: int) -> Optional[tuple[int, int]]:
    """(kernel, padding) along one axis for input offsets ``y - stride * i`` of the nonzero entries, such that
    torch's output size formula gives ``n_out``; None if none does."""
    lo, hi = int(offsets.min()), int(offsets.max())
    for pad in range(max(0, -lo), max(0, -lo) + 4):
        for kernel in range(hi + pad + 1, hi + pad + 2 + 2 * stride + 4):
            if (n_in + 2 * pad - kernel) // stride + 1 == n_out and n_in + 2 * pad - kernel >= 0:
                return kernel, pad
    return None


def as_conv(matrix: np.ndarray, in_shape: tuple[int, int, int], out_shape: tuple[int, int, int]):
    """``(kernel, stride, padding)`` of the convolution (torch's cross-correlation, symmetric zero padding)
    whose dense matrix is exactly ``matrix`` (out x in, flattened CHW), or None."""
    Ci, Hi, Wi = in_shape
    Co, Ho, Wo = out_shape
    m = matrix.reshape(Co, Ho, Wo, Ci, Hi, Wi)
    o, i, j, c, y, x = np.nonzero(m)
    if o.size == 0:
        return None
    for sh in _stride_candidates(Hi, Ho):
        gh = _axis_geometry(y - sh * i, Hi, Ho, sh)
        if gh is None:
            continue
        for sw in _stride_candidates(Wi, Wo):
            gw = _axis_geometry(x - sw * j, Wi, Wo, sw)
            if gw is None:
                continue
            (kh, ph), (kw, pw) = gh, gw
            kernel = np.zeros((Co, Ci, kh, kw))
            rh, rw = y - sh * i + ph, x - sw * j + pw
            kernel[o, c, rh, rw] = m[o, i, j, c, y, x]
            dense = _conv_matrix(kernel, in_shape, (sh, sw), (ph, pw))
            if dense.shape == matrix.shape and np.array_equal(dense, matrix):
                return kernel, (sh, sw), (ph, pw)
    return None


def _stride_candidates(n_in: int, n_out: int) -> list[int]:
    cands = [max(1, n_in // max(n_out, 1))] + [1, 2, 3, 4]
    return list(dict.fromkeys(s for s in cands if s <= max(n_in, 1)))


def _conv_matrix(kernel: np.ndarray, in_shape, stride, padding) -> np.ndarray:
    n = int(np.prod(in_shape))
    with torch.no_grad():
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
        out = tf.conv2d(basis, torch.as_tensor(kernel), None, stride, padding)
    return out.reshape(n, -1).T.numpy()


# --------------------------------------------------------------------------------------------------------


SYNAPSES = ("conv", "dense")


def build_chain(q: Quantized, synapses: str = "conv") -> LoihiChain:
    """The latency-aligned netx chain of a quantised graph (see the module docstring). ``synapses="dense"``
    makes every layer dense (``"conv"``: convolutions while the layers allow them)."""
    if synapses not in SYNAPSES:
        raise LoihiExportError(f"unknown synapse form {synapses!r}; choose one of {', '.join(SYNAPSES)}.")
    graph = q.graph
    pops = q.populations
    depth = {"input": 0, **{n: p.depth for n, p in pops.items()}}
    shapes = {"input": tuple(q.input_shape), **{n: p.shape for n, p in pops.items()}}
    weights: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name in pops:
        weights[name] = [(src, np.asarray(graph.nodes[f"{src}.to.{name}"].weight)) for src in q.sources[name]]
    biases = {n: np.asarray(graph.nodes[n].bias, dtype=np.int64).reshape(-1) for n in pops}
    relayed_at = relays(depth, q.sources)
    D = q.depth

    layers: list[ChainLayer] = []
    prev_members: list[Member] = [Member("input", False, 0, int(np.prod(shapes["input"])) if len(shapes["input"]) != 3
                                         else shapes["input"][0], 1, shapes["input"])]
    prev_shape = tuple(shapes["input"])
    conv_ok = len(prev_shape) == 3 and synapses == "conv"
    input_dense = not conv_ok
    for k in range(1, D + 1):
        computing = [n for n, p in pops.items() if p.depth == k]
        relayed = relayed_at.get(k, [])
        layer = None
        if conv_ok and k < D:
            layer = _layer(k, computing, relayed, pops, shapes, weights, biases, prev_members, prev_shape, conv=True)
        if layer is None:
            if conv_ok and k == 1:
                input_dense = True   # netx reads a dense first layer from a flat input
                prev_shape = (int(np.prod(prev_shape)),)
                prev_members = [Member("input", False, 0, prev_shape[0], 1, shapes["input"])]
            conv_ok = False
            layer = _layer(k, computing, relayed, pops, shapes, weights, biases, prev_members, prev_shape, conv=False)
        layers.append(layer)
        prev_members, prev_shape = layer.members, layer.shape
    layers[-1].readout = True
    metadata = {**q.metadata, "synapses": synapses}
    input_shape = (int(np.prod(shapes["input"])),) if input_dense else tuple(shapes["input"])
    return LoihiChain(input_shape, layers, metadata)


def _layer(k, computing, relayed, pops, shapes, weights, biases, prev_members, prev_shape,
           conv: bool) -> Optional[ChainLayer]:
    names = computing + relayed
    if conv:
        if any(len(shapes[n]) != 3 for n in names):
            return None
        H = min(shapes[n][1] for n in computing)
        W = min(shapes[n][2] for n in computing)
        folds = {}
        for n in names:
            _, h, w = shapes[n]
            if h % H or w % W or h // H != w // W:
                return None
            folds[n] = h // H
    else:
        folds = {n: 1 for n in names}
    # Members and their place in the layer.
    members, start = [], 0
    for n in names:
        size = _layout_shape(shapes[n], folds[n])[0] if conv else int(np.prod(shapes[n]))
        p = pops.get(n)
        members.append(Member(n, n not in computing, start, start + size, folds[n], tuple(shapes[n]),
                              p.scale if p is not None and n in computing else 64.0))
        start += size
    shape = (start, H, W) if conv else (start,)
    per = H * W if conv else 1
    first = pops[computing[0]]
    v_th = first.v_th_mant
    relay_weight = v_th + 1
    if relayed and relay_weight > 254:   # the quantiser keeps vThMant <= 253 wherever relays go
        raise LoihiExportError(f"chain layer {k} needs relays but its vThMant is {v_th} > 253.")

    prev_per = int(np.prod(prev_shape[1:])) if len(prev_shape) == 3 else 1
    prev_index = {m.name: m for m in prev_members}
    n_in = int(np.prod(prev_shape))
    matrix = np.zeros((start * per, n_in))
    bias = np.zeros(start * per, dtype=np.int64)

    def columns(src: str) -> tuple[slice, np.ndarray]:
        pm = prev_index[src]
        return slice(pm.start * prev_per, pm.stop * prev_per), _packing(shapes[src], pm.fold)

    for m in members:
        rows = slice(m.start * per, m.stop * per)
        pack = _packing(m.shape, m.fold)
        if m.relay:
            cols, src_pack = columns(m.name)
            inv = np.argsort(src_pack)
            block = np.zeros((rows.stop - rows.start, cols.stop - cols.start))
            block[np.arange(block.shape[0]), inv[pack]] = relay_weight
            matrix[rows, cols] = block
            continue
        for src, w in weights[m.name]:
            cols, src_pack = columns(src)
            matrix[rows, cols] += w[:, src_pack][pack, :]
        bias[rows] = biases[m.name][pack]
    if not matrix.any():
        raise LoihiExportError(f"chain layer {k} has only zero weights, which netx cannot load.")
    common = dict(bias=bias, i_decay=first.i_decay, v_decay=first.v_decay, v_th_mant=v_th, members=members)
    if conv:
        found = as_conv(matrix, prev_shape, shape)
        if found is None:
            return None
        kernel, stride, padding = found
        return ChainLayer("conv", shape, kernel.astype(np.int64), stride=stride, padding=padding, **common)
    return ChainLayer("dense", shape, matrix.astype(np.int64), **common)

