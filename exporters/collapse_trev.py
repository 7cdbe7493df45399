"""Collapse a T-RevSNN into a time-invariant NIR graph: one step is one column; the stem runs once (DESIGN §6).

The graph holds the nodes of EVERY column t = 0 .. T-1; all of them are evaluated at every step, but
column t's nodes compute column t's real values at step t (at other steps they compute values nobody
reads at the right time). Delays (``nir.Delay``, in steps: the contract has dt = 1) make that so:

- the stem is one node chain (its convolutions, BatchNorm folded), fed by the input. Column t reads it
  through ``Delay(t)`` with static input (the model reads ``x[0]`` only: at step t that is the stem
  output of step 0), through no delay with per-frame input (column t reads frame t);
- the real-valued states ``c_i[t]`` stay symbolic (graph.py's sums of terms, each a chain of linear ops
  from one source node). Column t reads ``c_i[t-1]`` — in its Up path (``c_{i+1}[t-1]``) and in the leak
  ``alpha_i[t] * c_i[t-1]`` — as the terms of ``c_i[t-1]`` delayed by one more step: a term's delay sits
  on its SOURCE side (a ``Delay(d)`` node right after the spike population or the stem node, shared by
  every chain that reads that source with that delay; the linear chain after it is time-invariant, so
  delaying its source delays its output). Every path into column t's nodes therefore has total delay
  ``t - (column of its source)`` (stem: ``t``), which is what makes column t right at step t;
- ``alpha`` is folded by scaling each term's last mixing op by ``alpha_i[t]`` per channel (a term read
  straight from the stem gets a diagonal 1x1 convolution holding ``alpha``). ``c_i[t]`` thus holds the
  terms of every earlier column, so the graph grows as O(T^2) terms per level (fine for small T);
- the head (``Q -> global average pool -> Flatten -> Affine``) reads the last column's top level:
  ``metadata["readout"] = "last"``: the prediction is the output at step T-1, after exactly T steps.

Populations: ``Collapsed.populations[node] = (module name, c0, c1)`` as for the other families; every
``Threshold`` module of column t (its names contain ``body.columns.t.``) becomes one population whose
spikes equal the module's output AT STEP t; the head's neuron at step T-1. ``Collapsed.population_steps``
(an extra attribute set on the returned object) maps each population node to that step.

Levels that change resolution need ``nearest x2`` upsampling in Up, which NIR does not have: such a
model is refused (train a single-resolution config, ``level_strides`` all 1, or export to ONNX).
"""

from __future__ import annotations

import nir
import numpy as np
import torch
from torch import nn

import revsnn
from revsnn.models.trev import TRevSNN
from revsnn.neurons import Threshold

from .graph import (CollapseError, ConvOp, GraphBuilder, Group, Term, Value, _scale_out, add, apply_mixing)

__all__ = ["collapse_trev"]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _dense(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped convolution's weight as the equivalent ungrouped one (zeros between groups).

    nir 1.0.8's ``Conv2d`` infers its input type as ``weight.shape[1]`` channels, forgetting ``groups``, so
    a graph with a grouped Conv2d fails NIR's type check when read back from a file. The depthwise
    convolutions are therefore written dense; the zeros add exactly nothing.
    """
    c_out, c_in_g = weight.shape[:2]
    out_g = c_out // groups
    dense = weight.new_zeros(c_out, c_in_g * groups, *weight.shape[2:])
    for g in range(groups):
        dense[g * out_g:(g + 1) * out_g, g * c_in_g:(g + 1) * c_in_g] = weight[g * out_g:(g + 1) * out_g]
    return dense


class _TRevCollapser:
    def __init__(self, builder: GraphBuilder, walker, names: dict[int, str]):
        self.b = builder
        self.walker = walker
        self.names = names
        self._delay_of: dict[str, tuple[str, int]] = {}     # delay node -> (source node, steps)
        self._delay_node: dict[tuple[str, int], str] = {}   # (source node, steps) -> delay node

    # -- delays -------------------------------------------------------------------------------------

    def delayed_src(self, src: str, shape: tuple[int, ...], k: int) -> str:
        base, d = self._delay_of.get(src, (src, 0))
        d += k
        if d == 0:
            return base
        key = (base, d)
        if key not in self._delay_node:
            name = self.b._unique(f"{base}.delay{d}")
            self.b.nodes[name] = nir.Delay(delay=np.full(shape, float(d)))
            self.b.edges.append((base, name))
            self._delay_node[key] = name
            self._delay_of[name] = key
        return self._delay_node[key]

    def delayed(self, group: Group, k: int) -> Group:
        return Group([Term(self.delayed_src(t.src, t.src_shape, k), t.src_shape, t.ops) for t in group.terms])

    # -- linear ops ---------------------------------------------------------------------------------

    @staticmethod
    def scaled(group: Group, scale: torch.Tensor, label: str) -> Group:
        """``scale * group`` per channel, no shift: each term's last mixing op scaled, or a depthwise
        1x1 convolution holding ``scale`` (written dense, see ``_dense``) appended to a term that has none."""
        terms = []
        for t in group.terms:
            mixing = [i for i, op in enumerate(t.ops) if op.mixing]
            ops = list(t.ops)
            if mixing:
                ops[mixing[-1]] = _scale_out(ops[mixing[-1]], scale)
            else:
                c = t.shape[0]
                op = ConvOp(torch.diag(scale).reshape(c, c, 1, 1).clone(), None)
                op.label = label
                ops.append(op)
            terms.append(Term(t.src, t.src_shape, ops))
        return Group(terms)

    def conv(self, m: nn.Conv2d, value: Value, name: str) -> Value:
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise CollapseError(f"{name}: only zero, explicitly padded convolutions are collapsed.")
        w = m.weight.detach()
        stride, padding, dilation = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
        bias = None if m.bias is None else m.bias.detach()
        if m.groups == 1:
            def make(idx):
                op = ConvOp(w[:, idx], None, stride, padding, dilation)
                op.label = name
                return op
            return apply_mixing(value, make, bias)
        if len(value) != 1:
            raise CollapseError(f"{name}: a grouped convolution over a concatenation is not collapsed.")
        op = ConvOp(_dense(w, m.groups), None, stride, padding, dilation)
        op.label = name
        return apply_mixing(value, lambda idx: op, bias)

    def seq(self, m: nn.Module, value: Value) -> Value:
        name = self.names.get(id(m), "")
        if isinstance(m, nn.Sequential):
            for child in m:
                value = self.seq(child, value)
            return value
        if isinstance(m, Threshold):
            return self.walker.neurons(m, value, name)
        if isinstance(m, nn.Conv2d):
            return self.conv(m, value, name)
        if isinstance(m, nn.Upsample):
            raise CollapseError(f"{name} (nearest x2 upsampling in an Up path) has no NIR node: this T-RevSNN's "
                                "levels change resolution. Train a single-resolution config (level_strides all 1, "
                                "as trevsnn-digits) to collapse it to NIR, or export it to ONNX instead.")
        return self.walker.layer(m, value, name)

    def block(self, blk: nn.Module, u: Group) -> Group:
        v = self.seq(nn.Sequential(blk.q1, blk.dw1, blk.pw1, blk.q2, blk.pw2, blk.dw2), [u])[0]
        if blk.gamma is not None:
            v = self.scaled(v, blk.gamma.detach(), self.names[id(blk)] + ".gamma")
        return add(u, v)


def collapse_trev(model: TRevSNN, builder: GraphBuilder, walker, time_steps: int, config: dict):
    """Collapse a (float64, eval-mode copy of a) T-RevSNN; returns a ``Collapsed`` with ``population_steps``."""
    body = model.body
    T, L = body.time_steps, body.num_levels
    if int(time_steps) != T:
        raise CollapseError(f"this T-RevSNN has {T} columns, one per step: collapse it with time_steps={T}, "
                            f"not {time_steps}.")
    names = walker.names
    for m in model.modules():
        if isinstance(m, nn.Upsample):
            raise CollapseError(f"{names[id(m)]} (nearest x2 upsampling in an Up path) has no NIR node: this "
                                f"T-RevSNN's levels change resolution (level_strides {body.level_strides}). Train a "
                                "single-resolution config (level_strides all 1, as trevsnn-digits) to collapse it "
                                "to NIR, or export it to ONNX instead.")
    body.clamp_alpha_()  # the forward's clamp, so that the graph holds the alphas the model uses
    c = _TRevCollapser(builder, walker, names)
    steps: dict[str, int] = {}

    def record(step: int, before: set) -> None:
        for node in builder.populations:
            if node not in before:
                steps[node] = step

    # The stem, once: one node chain from the input (BatchNorm folded into its last convolution).
    stem = c.seq(model.stem, builder.input_value())
    if len(stem) != 1 or len(stem[0].terms) != 1:
        raise CollapseError("the T-RevSNN stem must be one chain of convolutions.")
    stem_term = stem[0].terms[0]
    stem_node = builder._materialize(stem_term, "stem")
    stem_shape = stem_term.shape

    states: list[Group] = []
    for t, column in enumerate(body.columns):
        before = set(builder.populations)
        src = c.delayed_src(stem_node, stem_shape, t if model.static_input else 0)
        x_t = Group([Term(src, stem_shape)])
        prev = [c.delayed(s, 1) for s in states]  # c_i[t-1], as read at step t
        new: list[Group] = []
        for i, level in enumerate(column.levels):
            lower = x_t if i == 0 else new[i - 1]
            u = c.seq(level.down, [lower])[0]
            if t > 0 and i < L - 1:
                u = add(u, c.seq(level.up, [prev[i + 1]])[0])
            for blk in level.blocks:
                u = c.block(blk, u)
            if t > 0:
                u = add(u, c.scaled(prev[i], column.alpha[i].detach(), f"{names[id(column)]}.alpha.{i}"))
            new.append(u)
        states = new
        record(t, before)

    before = set(builder.populations)
    head = model.head
    value = c.seq(nn.Sequential(head.q, head.pool, head.flatten, head.fc), [states[-1]])
    record(T - 1, before)

    family = config.get("family")
    metadata = {"revsnn_version": revsnn.__version__, "model": config.get("name", family), "family": family,
                "dt": 1.0, "reset": "hard", "readout": "last", "time_steps": T,
                "contract": "Threshold: s = u > theta (stateless); Delay d: y[t] = x[t - d], zeros before; dt = 1; "
                            "column t of the T-RevSNN is computed at step t, the prediction is the output at "
                            "step T-1"}
    collapsed = builder.output(value, metadata)
    collapsed.population_steps = steps
    return collapsed
