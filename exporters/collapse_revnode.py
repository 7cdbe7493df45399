"""Collapse a reversible-node network (family ``revnode``, ``revsnn.models.revnode.RevNodeNet``) into NIR.

NIR's LIF resets hard (to ``v_reset``); the RevLIF node resets softly (``v = h - theta s``) and outputs the
real value ``y = s + d``. Each RevLIF layer therefore becomes a small graph of primitives, per element with
``tau``, ``theta`` and the pre-activation ``x_t`` (the Affine chain of the layer before)::

    h_t = (x_t + (tau - 1) h_{t-1} - (tau - 1) theta s_{t-1}) / tau       node  <name>_h      Scale(1/tau)
    s_t = h_t > theta                                                     node  <name>        Threshold(theta)
    h_{t-1}, s_{t-1}                                                      nodes <name>_h_prev, <name>_s_prev: Delay(1)
    (tau - 1) h_{t-1}, -(tau - 1) theta s_{t-1}                           nodes <name>_h_fb, <name>_s_fb: Scale

Derivation: with ``v_{t-1} = h_{t-1} - theta s_{t-1}`` (soft reset),
``h_t = v_{t-1} + (x_t - v_{t-1}) / tau = ((tau - 1) v_{t-1} + x_t) / tau``, which is the line above;
``h_0 = v_0 = 0`` and ``s_0 = 0`` are the Delays' zeros before the first input. The sum is NIR's fan-in
into the Scale node. The cycles ``h -> Delay -> Scale -> h`` and ``h -> Threshold -> Delay -> Scale -> h``
each pass through a ``Delay(1)``: the reference executor and the norse target run them exactly.

The output ``y_t = s_t + d_t`` with ``d_t = h_t - v_{t-1} = h_t - h_{t-1} + theta s_{t-1}`` is a linear
combination of node outputs; the next Linear layer ``W y + b`` reads it by fan-in through four scaled
copies of its weight: ``W s_t + W h_t - W h_{t-1} + theta W s_{t-1} (+ b once)``.

Populations: the Threshold node of each RevLIF is a population mapped to the RevLIF module, channels
``0 .. n``. The graph's Threshold outputs the spike ``s_t``; the module itself returns ``y_t``, so a
comparison with the model must recompute ``s_t`` from the module's input (``revlif_step``).
Readout: ``mean`` over the steps, as the model.
"""

from __future__ import annotations

import nir
import numpy as np

from revsnn.models.revnode import RevLIFNode

from .collapse import register_rule
from .graph import CollapseError, GraphBuilder, Group, ScaleOp, Term

__all__ = ["revlif"]


def _full(shape, v) -> np.ndarray:
    return np.full(shape, float(v))


@register_rule(RevLIFNode)
def revlif(ctx, m: RevLIFNode, value, name: str):
    """The RevLIF layer's subgraph; returns its output ``y`` as four terms, each scaled by its factor (the
    scales fold into the weights of the layer that reads ``y``)."""
    if len(value) != 1:
        raise CollapseError(f"{name}: a RevLIF node over a concatenation is not collapsed; put a Linear before it.")
    ctx.reset = "soft"
    if not any("RevLIF" in c for c in ctx.contract):
        ctx.contract.append("RevLIF: h = v + (x - v) / tau; s = h > theta; v = h - theta s; y = s + (x - v) / tau; "
                            "built from Scale (fan-in sum), Threshold and Delay(1) feedback; dt = 1")
    return [_revlif(ctx.builder, m, value[0], name)]


def _revlif(b: GraphBuilder, m: RevLIFNode, x: Group, name: str) -> Group:
    shape = x.shape
    tau, theta = float(m.tau), float(m.v_threshold)
    h = b._unique(name + "_h")
    sources = [b._materialize(t, h) for t in x.terms]
    b.nodes[h] = nir.Scale(scale=_full(shape, 1.0 / tau))
    for src in sources:
        b.edges.append((src, h))
    s_group = b.neuron(Group([Term(h, shape)]), nir.Threshold(threshold=_full(shape, theta)), name, name,
                       (0, shape[0]))
    s = s_group.terms[0].src
    names = {}
    for key, src, k in (("h", h, tau - 1.0), ("s", s, -(tau - 1.0) * theta)):
        d = b._unique(f"{name}_{key}_prev")
        b.nodes[d] = nir.Delay(delay=_full(shape, 1.0))
        b.edges.append((src, d))
        fb = b._unique(f"{name}_{key}_fb")
        b.nodes[fb] = nir.Scale(scale=_full(shape, k))
        b.edges.append((d, fb))
        b.edges.append((fb, h))
        names[key] = d
    terms = []
    for src, k in ((s, 1.0), (h, 1.0), (names["h"], -1.0), (names["s"], theta)):
        ops = []
        if k != 1.0:
            op = ScaleOp(k)
            op.label = f"{name}.from.{src}"
            ops.append(op)
        terms.append(Term(src, shape, ops))
    return Group(terms)
