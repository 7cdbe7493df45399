"""Collapse a trained model into a feedforward spiking graph of NIR nodes (DESIGN §6).

Inference needs no inverse: a reversible block is just its forward. Per family:

- RevSResNet / ParaRevSNN: the stem's output channels split into the two streams; each coupling adds
  F's and G's outputs to the streams by fan-in; downsample and head neurons over the concatenated streams
  become one population per stream, their convolution / linear weights sliced by input channels.

The model's neurons map to NIR's: ``LIF(tau=τ, r=1, v_leak=0, v_threshold=θ, v_reset=0)`` and
``IF(r=1, v_threshold=θ, v_reset=0)``, which under forward Euler with dt = 1 are exactly the contract's
equations (metadata records ``dt = 1`` and the hard reset as a hint).
"""

from __future__ import annotations

import copy

import nir
import numpy as np
import torch
from torch import nn

import revsnn
from revsnn.layers import TimeDistributed
from revsnn.neurons import IF, LIF, SpikingNeuron, Threshold
from revsnn.reversible import ParaRevCoupling, Recompute, RevNetCoupling, ReversibleSequence

from revsnn.models.former import SpikingSelfAttention

from .graph import (AffineOp, Collapsed, CollapseError, Conv1dOp, ConvOp, FlattenOp, GraphBuilder, Group, MaxPoolOp,
                    PoolOp, Value, add, apply_elementwise, apply_mixing, batchnorm, split_channels)
from .nodes import SpikingAttention

__all__ = ["collapse", "CollapseError", "neuron_node"]


def neuron_node(neuron: SpikingNeuron, shape: tuple[int, ...]) -> nir.NIRNode:
    full = lambda v: np.full(shape, float(v))  # noqa: E731  (NIR wants per-neuron arrays of one shape)
    if isinstance(neuron, LIF):
        return nir.LIF(tau=full(neuron.tau), r=full(1.0), v_leak=full(0.0), v_threshold=full(neuron.v_threshold),
                       v_reset=full(neuron.v_reset))
    if isinstance(neuron, IF):
        return nir.IF(r=full(1.0), v_threshold=full(neuron.v_threshold), v_reset=full(neuron.v_reset))
    if isinstance(neuron, Threshold):
        return nir.Threshold(threshold=full(neuron.v_threshold))
    raise CollapseError(f"{type(neuron).__name__} has no NIR neuron equivalent.")


def _labelled(op, label: str):
    op.label = label
    return op


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class _Walker:
    """Walks a model's modules in forward order, turning each into graph nodes or symbolic terms."""

    def __init__(self, builder: GraphBuilder, names: dict[int, str]):
        self.b = builder
        self.names = names

    def module(self, m: nn.Module, value: Value) -> Value:
        name = self.names[id(m)]
        if isinstance(m, Recompute):
            return self.module(m.module, value)
        if isinstance(m, TimeDistributed):
            return self.layer(m.module, value, name)
        if isinstance(m, SpikingNeuron):
            return self.neurons(m, value, name)
        if isinstance(m, SpikingSelfAttention):
            return self.attention(m, value, name)
        if isinstance(m, nn.Sequential):
            for child in m:
                value = self.module(child, value)
            return value
        if isinstance(m, (nn.Dropout, nn.Identity)):
            return value  # inference
        raise CollapseError(f"{name} ({type(m).__name__}) has no collapse rule.")

    def neurons(self, m: SpikingNeuron, value: Value, name: str) -> Value:
        out, start = [], 0
        for i, g in enumerate(value):
            suffix = f".s{i}" if len(value) > 1 else ""
            node = neuron_node(m, g.shape)
            out.append(self.b.neuron(g, node, name + suffix, name, (start, start + g.channels)))
            start += g.channels
        return out

    def layer(self, m: nn.Module, value: Value, name: str) -> Value:
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach()
            stride, padding, dilation = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
            if m.groups != 1 or isinstance(m.padding, str):
                raise CollapseError(f"{name}: grouped or string-padded convolutions are not collapsed yet.")
            bias = None if m.bias is None else m.bias.detach()
            return apply_mixing(value, lambda idx: _labelled(ConvOp(w[:, idx], None, stride, padding, dilation),
                                                             name), bias)
        if isinstance(m, nn.Conv1d):
            if m.groups != 1 or tuple(m.stride) != (1,) or tuple(m.padding) != (0,) or tuple(m.kernel_size) != (1,):
                raise CollapseError(f"{name}: only 1x1 token convolutions are collapsed.")
            w = m.weight.detach()
            bias = None if m.bias is None else m.bias.detach()
            return apply_mixing(value, lambda idx: _labelled(Conv1dOp(w[:, idx], None), name), bias)
        if isinstance(m, nn.MaxPool2d):
            if m.ceil_mode or _pair(m.dilation) != (1, 1):
                raise CollapseError(f"{name}: only max pooling without dilation, in floor mode.")
            return apply_elementwise(value, _labelled(MaxPoolOp(_pair(m.kernel_size), _pair(m.stride or m.kernel_size),
                                                                _pair(m.padding)), name))
        if isinstance(m, nn.Linear):
            w = m.weight.detach()
            bias = None if m.bias is None else m.bias.detach()
            return apply_mixing(value, lambda idx: _labelled(AffineOp(w[:, idx], None), name), bias)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale = m.weight.detach() / torch.sqrt(m.running_var + m.eps)
            shift = m.bias.detach() - m.running_mean * scale
            return batchnorm(value, scale, shift)
        if isinstance(m, nn.AvgPool2d):
            if not m.count_include_pad or m.ceil_mode:
                raise CollapseError(f"{name}: only average pooling with count_include_pad and floor mode.")
            return apply_elementwise(value, _labelled(PoolOp(_pair(m.kernel_size), _pair(m.stride or m.kernel_size),
                                                             _pair(m.padding)), name))
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if _pair(m.output_size) != (1, 1):
                raise CollapseError(f"{name}: only global average pooling (output size 1).")
            h, w = value[0].shape[1:]
            return apply_elementwise(value, _labelled(PoolOp((h, w), (h, w)), name))
        if isinstance(m, nn.Flatten):
            return apply_elementwise(value, _labelled(FlattenOp(), name))
        if isinstance(m, (nn.Dropout, nn.Identity)):
            return value
        raise CollapseError(f"{name} ({type(m).__name__}) has no collapse rule.")

    def attention(self, m: SpikingSelfAttention, value: Value, name: str) -> Value:
        """SN -> our own SpikingAttention node (Q, K, V populations and their products) -> projection."""
        spikes = self.module(m.input_sn, value)
        (group,) = spikes
        C, N = group.shape

        def folded(branch: nn.Sequential) -> tuple[np.ndarray, np.ndarray]:
            conv, bn = branch[0].module, branch[1].module
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            w = conv.weight.detach()[:, :, 0] * scale[:, None]
            b = bn.bias.detach() - bn.running_mean * scale
            return w.numpy().copy(), b.numpy().copy()

        neurons = [m.q[2], m.k[2], m.v[2], m.attn_sn]
        if not all(isinstance(n, LIF) for n in neurons) or len({(n.tau, n.v_reset) for n in neurons}) != 1 \
                or len({n.v_threshold for n in neurons[:3]}) != 1 or neurons[0].v_reset != 0.0:
            raise CollapseError(f"{name}: attention needs LIF neurons of one tau, reset 0, one Q/K/V threshold.")
        (wq, bq), (wk, bk), (wv, bv) = folded(m.q), folded(m.k), folded(m.v)
        node = SpikingAttention(wq=wq, bq=bq, wk=wk, bk=bk, wv=wv, bv=bv, tau=neurons[0].tau,
                                qkv_threshold=neurons[0].v_threshold,
                                v_threshold=np.full((C, N), m.attn_sn.v_threshold), heads=m.heads, scale=m.scale)
        attn = self.b.neuron(group, node, f"{name}.attention", self.names[id(m.attn_sn)], (0, C))
        return self.module(m.proj, [attn])

    def reversible(self, seq: ReversibleSequence, value: Value) -> Value:
        x1, x2 = _halves(value)
        for block in seq.blocks:
            if isinstance(block, RevNetCoupling):
                a, b = x1, x2
            elif isinstance(block, ParaRevCoupling):
                a, b = x2, x1
            else:
                raise CollapseError(f"{self.names[id(block)]}: unknown coupling {type(block).__name__}.")
            f = self.module(block.F, [b])
            y1 = add(a, _single(f))
            g = self.module(block.G, [y1])
            y2 = add(b, _single(g))
            x1, x2 = y1, y2
        return [x1, x2]


def _token_mean(w: torch.Tensor, idx: slice, n_tokens: int) -> torch.Tensor:
    """``Linear(mean over tokens of x)`` as one Affine on ``x`` flattened channel-major: ``W / N`` per token.

    ``idx`` slices the flattened input of this stream, channel-major, so channel c sits at c·N .. c·N + N."""
    channels = slice(idx.start // n_tokens, idx.stop // n_tokens)
    return w[:, channels].repeat_interleave(n_tokens, dim=1) / n_tokens


def _single(value: Value) -> Group:
    if len(value) != 1:
        raise CollapseError("a coupling function must return one block of channels.")
    return value[0]


def _halves(value: Value) -> tuple[Group, Group]:
    if len(value) == 2 and value[0].channels == value[1].channels:
        return value[0], value[1]
    if len(value) == 1 and value[0].channels % 2 == 0:
        half = value[0].channels // 2
        a, b = split_channels(value[0], [half, half])
        return a, b
    raise CollapseError("a reversible sequence needs its input as two equal channel halves.")


def collapse(model: nn.Module, time_steps: int) -> Collapsed:
    """Collapse ``model`` (its ``config`` says which family) into a NIR graph, in float64."""
    config = getattr(model, "config", None) or {}
    family = config.get("family")
    model = copy.deepcopy(model).double().eval()
    names = {id(m): n or "model" for n, m in model.named_modules()}
    builder = GraphBuilder(tuple(config["input_shape"]))
    walker = _Walker(builder, names)
    if family in ("revsresnet", "pararevsnn"):
        value = walker.module(model.stem, builder.input_value())
        for i, stage in enumerate(model.stages):
            if i > 0:
                value = walker.module(model.downsamples[i - 1], value)
            value = walker.reversible(stage, value)
        value = walker.module(model.head, value)
        readout = "mean"
    elif family == "trevsnn":
        from .collapse_trev import collapse_trev
        return collapse_trev(model, builder, walker, time_steps, config)
    elif family == "revnode":
        from .collapse_revnode import collapse_revnode
        return collapse_revnode(model, builder, names, time_steps, config)
    elif family == "revsformer":
        value = walker.module(model.tokenizer, builder.input_value())
        value = apply_elementwise(value, _labelled(FlattenOp(start_dim=1), "tokens"))   # (C, H, W) -> (C, N)
        value = walker.reversible(model.blocks, [value[0], value[0]])                  # cat(tok, tok)
        # mean over tokens, then Linear: one Affine per stream over its flattened (C, N), weights / N.
        n_tokens = value[0].shape[1]
        value = apply_elementwise(value, _labelled(FlattenOp(), "head.tokens"))
        w, b = model.head.weight.detach(), model.head.bias.detach()
        value = apply_mixing(value, lambda idx: _labelled(AffineOp(_token_mean(w, idx, n_tokens), None), "head"), b)
        readout = "mean"
    elif family == "scnn":
        value = walker.module(model.layers, builder.input_value())
        readout = "mean"
    else:
        raise CollapseError(f"collapsing the {family!r} family is not supported yet.")
    metadata = {"revsnn_version": revsnn.__version__, "model": config.get("name", family), "family": family,
                "dt": 1.0, "reset": "hard", "readout": readout, "time_steps": int(time_steps),
                "contract": "LIF: h = v + (x - (v - v_reset)) / tau; spike h > theta; hard reset; dt = 1"}
    return builder.output(value, metadata)
