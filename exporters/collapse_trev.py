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

from revsnn.models.trev import TRevSNN

from .collapse import register_rule
from .graph import CollapseError, Group, Term, add, scale_channels

__all__ = ["trevsnn"]


class _TRevCollapser:
    def __init__(self, ctx):
        self.ctx = ctx
        self.b = ctx.builder
        self.names = ctx.names
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

    # -- linear ops: the registry's rules (grouped convolutions are written dense, see collapse.dense_groups)

    def seq(self, m: nn.Module, value):
        return self.ctx.module(m, value)

    def block(self, blk: nn.Module, u: Group) -> Group:
        v = self.seq(nn.Sequential(blk.q1, blk.dw1, blk.pw1, blk.q2, blk.pw2, blk.dw2), [u])[0]
        if blk.gamma is not None:
            v = scale_channels(v, blk.gamma.detach(), self.names[id(blk)] + ".gamma")
        return add(u, v)


@register_rule(TRevSNN)
def trevsnn(ctx, model: TRevSNN, value, name: str):
    """The whole T-RevSNN (stem once, T columns unrolled through Delays, head on the last column): the
    readout is the output at step T-1 (``ctx.readout = "last"``); ``ctx.population_steps`` says at which step
    each population equals its module's output."""
    builder = ctx.builder
    time_steps = ctx.time_steps
    body = model.body
    T, L = body.time_steps, body.num_levels
    if int(time_steps) != T:
        raise CollapseError(f"this T-RevSNN has {T} columns, one per step: collapse it with time_steps={T}, "
                            f"not {time_steps}.")
    names = ctx.names
    for m in model.modules():
        if isinstance(m, nn.Upsample):
            raise CollapseError(f"{names[id(m)]} (nearest x2 upsampling in an Up path) has no NIR node: this "
                                f"T-RevSNN's levels change resolution (level_strides {body.level_strides}). Train a "
                                "single-resolution config (level_strides all 1, as trevsnn-digits) to collapse it "
                                "to NIR, or export it to ONNX instead.")
    body.clamp_alpha_()  # the forward's clamp, so that the graph holds the alphas the model uses
    c = _TRevCollapser(ctx)
    steps: dict[str, int] = {}
    # The stem, levels and head act on one frame [B, ...] (no time axis): BatchNorm and Flatten read them so.
    outer, ctx.inside_time_distributed = ctx.inside_time_distributed, True
    try:
        value = _unrolled(ctx, c, model, value, steps)
    finally:
        ctx.inside_time_distributed = outer
    ctx.readout = "last"
    ctx.population_steps = steps
    ctx.contract.append("Threshold: s = u > theta (stateless); Delay d: y[t] = x[t - d], zeros before; dt = 1; "
                        "column t of the T-RevSNN is computed at step t, the prediction is the output at step T-1")
    return value


def _unrolled(ctx, c: _TRevCollapser, model: TRevSNN, value, steps: dict[str, int]):
    builder, names = ctx.builder, ctx.names
    body = model.body
    T, L = body.time_steps, body.num_levels

    def record(step: int, before: set) -> None:
        for node in builder.populations:
            if node not in before:
                steps[node] = step

    # The stem, once: one node chain from the input (BatchNorm folded into its last convolution).
    stem = c.seq(model.stem, value)
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
                u = add(u, scale_channels(prev[i], column.alpha[i].detach(), f"{names[id(column)]}.alpha.{i}"))
            new.append(u)
        states = new
        record(t, before)

    before = set(builder.populations)
    head = model.head
    value = c.seq(nn.Sequential(head.q, head.pool, head.flatten, head.fc), [states[-1]])
    record(T - 1, before)
    return value
