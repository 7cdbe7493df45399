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
from torch import nn

import revsnn
from revsnn.layers import TimeDistributed
from revsnn.models.revnode import RevLIFNode, RevNodeNet

from .graph import AffineOp, CollapseError, GraphBuilder, Group, Term, Value

__all__ = ["collapse_revnode"]


def _full(shape, v) -> np.ndarray:
    return np.full(shape, float(v))


def _linear_over(lin: nn.Linear, value: Value, name: str) -> Value:
    """``lin`` applied to a value given as (term, weight factor) pairs: one scaled weight copy per term,
    the bias once. ``value`` here is a list of groups whose terms carry ``_factor``."""
    w = lin.weight.detach()
    bias = None if lin.bias is None else lin.bias.detach()
    terms = []
    for g in value:
        for t in g.terms:
            k = getattr(t, "_factor", 1.0)
            op = AffineOp(w * k, bias if not terms else None)
            op.label = name if not terms else f"{name}.from.{t.src}"
            terms.append(Term(t.src, t.src_shape, t.ops + [op]))
    return [Group(terms)]


def _revlif(b: GraphBuilder, m: RevLIFNode, x: Group, name: str) -> Group:
    """The RevLIF layer's subgraph; returns its output ``y`` as terms with weight factors."""
    shape = x.shape
    if len(shape) != 1:
        raise CollapseError(f"{name}: RevLIF nodes are collapsed after Linear layers only (got shape {shape}).")
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
        t = Term(src, shape)
        t._factor = k
        terms.append(t)
    return Group(terms)


def collapse_revnode(model: RevNodeNet, builder: GraphBuilder, names: dict[int, str], time_steps: int,
                     config: dict):
    """Collapse a (float64, eval-mode copy of a) RevNodeNet; returns a ``Collapsed``."""
    value: Value = builder.input_value()
    pending = None  # a value in terms with weight factors (a RevLIF output), waiting for its Linear
    layers = list(model.features) + [model.head]
    for m in layers:
        name = names[id(m)]
        inner = m.module if isinstance(m, TimeDistributed) else m
        if isinstance(inner, nn.Flatten):
            if pending is not None:
                raise CollapseError(f"{name}: Flatten after a RevLIF node is not collapsed.")
            from .graph import FlattenOp, apply_elementwise
            op = FlattenOp()
            op.label = name
            value = apply_elementwise(value, op)
        elif isinstance(inner, nn.Linear):
            src = pending if pending is not None else value
            value, pending = _linear_over(inner, src, name), None
        elif isinstance(inner, RevLIFNode):
            if len(value) != 1 or pending is not None:
                raise CollapseError(f"{name}: a RevLIF node must follow a Linear layer.")
            pending = [_revlif(builder, inner, value[0], name)]
        elif isinstance(inner, (nn.Dropout, nn.Identity)):
            continue
        else:
            raise CollapseError(f"{name} ({type(inner).__name__}) has no collapse rule in the revnode family.")
    if pending is not None:
        raise CollapseError("the network must end with a Linear readout after its last RevLIF node.")
    family = config.get("family")
    metadata = {"revsnn_version": revsnn.__version__, "model": config.get("name", family), "family": family,
                "dt": 1.0, "reset": "soft", "readout": "mean", "time_steps": int(time_steps),
                "contract": "RevLIF: h = v + (x - v) / tau; s = h > theta; v = h - theta s; y = s + (x - v) / tau; "
                            "built from Scale (fan-in sum), Threshold and Delay(1) feedback; dt = 1"}
    return builder.output(value, metadata)
