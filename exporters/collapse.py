"""Collapse any model built from torch.nn layers and revsnn's blocks into a feedforward spiking graph of NIR
nodes (DESIGN §6), by rules.

**Rules.** ``RULES`` maps a module type to a rule ``rule(ctx, module, value, name) -> value``; a module is
matched by its class or the nearest base class that has a rule. Built in: ``TimeDistributed``, ``Conv2d``
(grouped too), ``Conv1d``, ``Linear``, ``BatchNorm1d/2d`` (folded into the mixing op before it),
``AvgPool2d``, ``AdaptiveAvgPool2d(1)``, ``MaxPool2d``, ``Flatten``, ``Dropout``, ``Identity``, every
spiking neuron, ``ReversibleSequence`` with either coupling, ``Recompute``, spiking self-attention; T-RevSNN
(``collapse_trev``: its columns as Delays) and the RevLIF node (``collapse_revnode``: its soft reset as a
Scale/Threshold/Delay loop) register theirs on their own modules. A new kind of module is one entry::

    from revsnn.exporters.collapse import register_rule

    @register_rule(MyLayer)
    def my_layer(ctx, module, value, name):
        return ctx.module(module.inner, value)   # or graph.py's value operations

**The driver.** ``collapse`` runs the model's own ``forward`` on a *symbolic* tensor: a meta tensor of the
input's shape ``[T, B, C, H, W]`` that carries the symbolic value (graph.py: sums of terms, in channel
groups). Every module that has a rule has its forward replaced, in a copy of the model, by its rule;
containers (``nn.Sequential``, ``nn.ModuleList``, a user's own ``nn.Module``) run their own Python code, so
straight-line code with shape checks and loops over stages works as written. The torch operations that the
code applies to symbolic tensors are rules too (``FUNCTIONS``): ``a + b``, ``a - b``, ``x * k``, ``x / k``,
``torch.cat`` / ``chunk`` / ``split`` / slicing along channels, ``flatten``, ``reshape(T, B, -1)``,
``repeat`` along channels, ``mean`` over spatial axes or tokens, and at the end ``mean(0)`` (readout
``mean``) or ``x[-1]`` (readout ``last``), which give the logits ``[B, classes]``. Shape queries
(``x.shape``, ``x.dim()``) answer from the meta tensor. Anything else fails with one sentence naming the
module path, its class or the operation, and how to register a rule.

The model's neurons map to NIR's: ``LIF(tau=τ, r=1, v_leak=0, v_threshold=θ, v_reset=0)`` and
``IF(r=1, v_threshold=θ, v_reset=0)``, which under forward Euler with dt = 1 are exactly the contract's
equations (metadata records ``dt = 1`` and the reset mode as a hint).
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

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
                    MeanOp, PoolOp, Value, add, add_values, apply_elementwise, apply_mixing, batchnorm, scale_value,
                    slice_value, split_channels)
from .nodes import SpikingAttention

__all__ = ["collapse", "CollapseError", "CollapseContext", "RULES", "register_rule", "neuron_node", "dense_groups"]

Rule = Callable[["CollapseContext", nn.Module, Value, str], Value]
RULES: dict[type, Rule] = {}
# Rules of modules that act on each time step alone and linearly: they may also follow the mean over time
# (``Linear(mean_t x) = mean_t Linear(x)``), as in ``self.head(x.mean(0))``.
TIME_LINEAR: set[type] = set()


def register_rule(*types: type, time_linear: bool = False):
    """Register ``rule(ctx, module, value, name) -> value`` for modules of ``types`` (and their subclasses)."""
    def deco(fn: Rule) -> Rule:
        for t in types:
            RULES[t] = fn
            if time_linear:
                TIME_LINEAR.add(t)
        return fn
    return deco


def rule_for(m: nn.Module) -> Optional[Rule]:
    for cls in type(m).__mro__:
        if cls in RULES:
            return RULES[cls]
    return None


def _time_linear(m: nn.Module) -> bool:
    inner = m.module if isinstance(m, TimeDistributed) else m
    return any(cls in TIME_LINEAR for cls in type(inner).__mro__)


HOW_TO_REGISTER = ("register a rule with revsnn.exporters.collapse.register_rule (see that module's docstring), "
                   "or build the model from torch.nn layers and revsnn's blocks")


# --------------------------------------------------------------------------------------------------------
# The symbolic tensor.


class _Symbolic(torch.Tensor):
    """A meta tensor of the real shape that carries a symbolic value; ``readout`` is None for a per-step
    value ``[T, B, ...]`` and ``"mean"`` / ``"last"`` once time has been reduced (``[B, ...]``)."""

    value: Value
    readout: Optional[str]
    ctx: "CollapseContext"

    @staticmethod
    def make(ctx: "CollapseContext", value: Value, readout: Optional[str] = None) -> "_Symbolic":
        g0 = value[0]
        per_step = (sum(g.channels for g in value), *g0.shape[1:])
        lead = (ctx.batch,) if readout else (ctx.time_steps, ctx.batch)
        t = torch.empty(lead + per_step, device="meta").as_subclass(_Symbolic)
        t.value, t.readout, t.ctx = value, readout, ctx
        return t

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", repr(func))
        rule = FUNCTIONS.get(name)
        if rule is not None:
            return rule(*args, **kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) or (isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor)
                                                                                      for o in out)):
            ctx = next(a.ctx for a in _flat(args, kwargs) if isinstance(a, _Symbolic))
            raise CollapseError(f"{ctx.where()}applies torch operation {name!r} to a spiking value, which has no "
                                f"collapse rule; use additions, channel splits and concatenations, flatten and a "
                                f"mean over time, or {HOW_TO_REGISTER}.")
        return out  # a shape, a dimension count, a dtype: answered by the meta tensor


def _flat(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a


def _sym(x) -> _Symbolic:
    if not isinstance(x, _Symbolic):
        raise CollapseError(f"expected a spiking value, got a {type(x).__name__}.")
    return x


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _per_step(x: _Symbolic, what: str) -> None:
    if x.readout is not None:
        raise CollapseError(f"{x.ctx.where()}{what} after the mean over time (or the last step) is not collapsed; "
                            "reduce time at the very end of forward.")


def _channel_dim(x: _Symbolic, dim: int, what: str) -> None:
    lead = 1 if x.readout else 2
    if _dim(dim, x.dim()) != lead:
        raise CollapseError(f"{x.ctx.where()}{what} along dimension {dim} of a {tuple(x.shape)} value: only the "
                            f"channel dimension ({lead}) of a time-first value is collapsed.")


def _f_add(a, b, *, alpha=1, out=None):
    if not isinstance(a, _Symbolic):
        a, b = b, a
    a = _sym(a)
    if not isinstance(b, _Symbolic):
        if isinstance(b, (int, float)) and b == 0:
            return a
        raise CollapseError(f"{a.ctx.where()}adds a constant to a spiking value; fold it into a bias instead.")
    if a.readout != b.readout:
        raise CollapseError(f"{a.ctx.where()}adds a value reduced over time to one that is not.")
    if alpha != 1:
        b = _f_mul(b, alpha)
    return _Symbolic.make(a.ctx, add_values(a.value, b.value), a.readout)


def _f_sub(a, b, *, alpha=1, out=None):
    if isinstance(a, _Symbolic) and isinstance(b, _Symbolic):
        return _f_add(a, _f_mul(b, -alpha))
    raise CollapseError(f"{_sym(a if isinstance(a, _Symbolic) else b).ctx.where()}subtracts a constant from a "
                        "spiking value; fold it into a bias instead.")


def _f_rsub(a, b, *, alpha=1):
    return _f_sub(b, a, alpha=alpha)


def _number(k) -> Optional[float]:
    if isinstance(k, (int, float)):
        return float(k)
    if isinstance(k, torch.Tensor) and not isinstance(k, _Symbolic) and k.numel() == 1:
        return float(k.detach().reshape(()))
    return None


def _f_mul(a, b, *, out=None):
    if not isinstance(a, _Symbolic):
        a, b = b, a
    a = _sym(a)
    k = _number(b)
    if k is None:
        raise CollapseError(f"{a.ctx.where()}multiplies a spiking value by a tensor; only a number is collapsed "
                            f"(put per-channel scales into a layer's weights, or {HOW_TO_REGISTER}).")
    return _Symbolic.make(a.ctx, scale_value(a.value, k, a.ctx.label("scale")), a.readout)


def _f_div(a, b, *, rounding_mode=None, out=None):
    k = _number(b)
    if not isinstance(a, _Symbolic) or k is None or rounding_mode is not None:
        raise CollapseError(f"{_sym(a if isinstance(a, _Symbolic) else b).ctx.where()}divides by a spiking value "
                            "or rounds; only division by a number is collapsed.")
    return _f_mul(a, 1.0 / k)


def _f_neg(a):
    return _f_mul(a, -1.0)


def _f_identity(a, *args, **kwargs):
    return _sym(a)


def _f_cat(tensors, dim=0, *, out=None):
    tensors = [_sym(t) for t in tensors]
    x = tensors[0]
    _channel_dim(x, dim, "torch.cat")
    if len({t.readout for t in tensors}) != 1:
        raise CollapseError(f"{x.ctx.where()}concatenates values reduced over time with values that are not.")
    value = [g for t in tensors for g in t.value]
    if len({g.shape[1:] for g in value}) != 1:
        raise CollapseError(f"{x.ctx.where()}concatenates values of different spatial shapes.")
    return _Symbolic.make(x.ctx, value, x.readout)


def _split_sizes(total: int, size_or_sizes) -> list[int]:
    if isinstance(size_or_sizes, int):
        return [min(size_or_sizes, total - s) for s in range(0, total, size_or_sizes)]
    return [int(s) for s in size_or_sizes]


def _pieces(x: _Symbolic, sizes: list[int]) -> tuple[_Symbolic, ...]:
    out, start = [], 0
    for size in sizes:
        out.append(_Symbolic.make(x.ctx, slice_value(x.value, start, start + size), x.readout))
        start += size
    return tuple(out)


def _f_split(x, split_size_or_sections, dim=0):
    x = _sym(x)
    _channel_dim(x, dim, "split")
    return _pieces(x, _split_sizes(x.shape[_dim(dim, x.dim())], split_size_or_sections))


def _f_chunk(x, chunks, dim=0):
    x = _sym(x)
    _channel_dim(x, dim, "chunk")
    total = x.shape[_dim(dim, x.dim())]
    size = -(-total // int(chunks))
    return _pieces(x, _split_sizes(total, size))


def _f_getitem(x, index):
    x = _sym(x)
    index = index if isinstance(index, tuple) else (index,)
    if len(index) == 1 and isinstance(index[0], int) and x.readout is None:
        # x[-1]: the last time step is the prediction (readout "last")
        T = x.ctx.time_steps
        if index[0] not in (-1, T - 1):
            raise CollapseError(f"{x.ctx.where()}reads time step {index[0]} of {T}; only the last step (x[-1]) or "
                                "the mean over time (x.mean(0)) is a readout.")
        return _Symbolic.make(x.ctx, x.value, "last")
    lead = 1 if x.readout else 2
    full = slice(None)
    if len(index) == lead + 1 and all(i == full for i in index[:lead]) and isinstance(index[lead], slice) \
            and index[lead].step in (None, 1):
        start, stop, _ = index[lead].indices(x.shape[lead])
        return _Symbolic.make(x.ctx, slice_value(x.value, start, stop), x.readout)
    raise CollapseError(f"{x.ctx.where()}indexes a spiking value with {index!r}; only x[-1] (the last step) and "
                        "channel slices x[:, :, a:b] are collapsed.")


def _f_flatten(x, start_dim=0, end_dim=-1):
    x = _sym(x)
    lead = 1 if x.readout else 2
    start, end = _dim(start_dim, x.dim()), _dim(end_dim, x.dim())
    if start < lead or end != x.dim() - 1:
        raise CollapseError(f"{x.ctx.where()}flattens dimensions {start_dim}..{end_dim} of a {tuple(x.shape)} value; "
                            f"only trailing dimensions after time and batch are flattened.")
    if start == x.dim() - 1:
        return x
    op = FlattenOp(start_dim=start - lead)
    op.label = x.ctx.label("flatten")
    return _Symbolic.make(x.ctx, apply_elementwise(x.value, op), x.readout)


def _f_reshape(x, *shape):
    x = _sym(x)
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
    lead = tuple(x.shape[:1 if x.readout else 2])
    if len(shape) == len(lead) + 1 and tuple(shape[:len(lead)]) == lead \
            and shape[-1] in (-1, int(np.prod(x.shape[len(lead):]))):
        return _f_flatten(x, len(lead))
    if tuple(shape) == tuple(x.shape):
        return x
    raise CollapseError(f"{x.ctx.where()}reshapes a {tuple(x.shape)} value to {shape}; only flattening the trailing "
                        "dimensions (x.reshape(T, B, -1)) is collapsed.")


def _f_repeat(x, *sizes):
    x = _sym(x)
    sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
    lead = 1 if x.readout else 2
    if len(sizes) != x.dim() or any(s != 1 for i, s in enumerate(sizes) if i != lead):
        raise CollapseError(f"{x.ctx.where()}repeats a value {sizes}; only repeating along channels is collapsed.")
    return _Symbolic.make(x.ctx, list(x.value) * int(sizes[lead]), x.readout)


def _f_mean(x, dim=None, keepdim=False, *, dtype=None):
    x = _sym(x)
    dims = sorted(_dim(d, x.dim()) for d in ((dim,) if isinstance(dim, int) else tuple(dim or ())))
    if keepdim or not dims:
        raise CollapseError(f"{x.ctx.where()}takes a mean over {dim!r} (keepdim={keepdim}); give the dimensions.")
    if dims == [0] and x.readout is None:
        return _Symbolic.make(x.ctx, x.value, "mean")   # the readout: the mean of the per-step outputs
    lead = 1 if x.readout else 2
    per_step = tuple(x.shape[lead:])
    if len(per_step) == 3 and dims == [lead + 1, lead + 2]:      # global average pooling over (H, W)
        h, w = per_step[1:]
        pool = PoolOp((h, w), (h, w))
        pool.label = x.ctx.label("mean")
        flat = FlattenOp()
        flat.label = x.ctx.label("mean.flatten")
        return _Symbolic.make(x.ctx, apply_elementwise(apply_elementwise(x.value, pool), flat), x.readout)
    if len(per_step) >= 2 and dims == [x.dim() - 1]:              # the mean over tokens, read by a Linear
        op = MeanOp()
        op.label = x.ctx.label("mean")
        return _Symbolic.make(x.ctx, apply_elementwise(x.value, op), x.readout)
    raise CollapseError(f"{x.ctx.where()}takes a mean over dimensions {dims} of a {tuple(x.shape)} value; only the "
                        "mean over time (0), over (H, W) and over the last axis are collapsed.")


FUNCTIONS: dict[str, Callable] = {
    "add": _f_add, "__add__": _f_add, "__radd__": _f_add, "__iadd__": _f_add,
    "sub": _f_sub, "__sub__": _f_sub, "__rsub__": _f_rsub, "__isub__": _f_sub,
    "mul": _f_mul, "__mul__": _f_mul, "__rmul__": _f_mul, "__imul__": _f_mul,
    "div": _f_div, "true_divide": _f_div, "__truediv__": _f_div, "__itruediv__": _f_div,
    "neg": _f_neg, "__neg__": _f_neg,
    "cat": _f_cat, "concat": _f_cat, "concatenate": _f_cat,
    "split": _f_split, "chunk": _f_chunk, "__getitem__": _f_getitem,
    "flatten": _f_flatten, "reshape": _f_reshape, "view": _f_reshape,
    "repeat": _f_repeat, "mean": _f_mean,
    "clone": _f_identity, "contiguous": _f_identity, "float": _f_identity, "double": _f_identity,
    "to": _f_identity, "detach": _f_identity,
}


# --------------------------------------------------------------------------------------------------------
# The context a rule runs in.


class CollapseContext:
    """What a rule may use: ``builder`` (graph.py's GraphBuilder), ``names`` (module -> path), ``module``
    to collapse a submodule (by its rule, or by running its forward symbolically), ``time_steps``."""

    def __init__(self, builder: GraphBuilder, names: dict[int, str], time_steps: int, batch: int = 2):
        self.builder = self.b = builder
        self.names = names
        self.time_steps = int(time_steps)
        self.batch = batch
        self.stack: list[str] = []          # the module paths whose forward is running (for error messages)
        self.inside_time_distributed = False
        self.population_steps: Optional[dict[str, int]] = None   # set by rules that unroll time (T-RevSNN)
        self.readout: Optional[str] = None  # set by a rule that reduces time itself (T-RevSNN: "last")
        self.reset = "hard"
        self.contract: list[str] = []
        self._labels = 0

    def where(self) -> str:
        return f"{self.stack[-1]}: " if self.stack else ""

    def label(self, what: str) -> str:
        base = self.stack[-1] if self.stack else "model"
        return f"{base}.{what}" if base != "model" else what

    def name(self, m: nn.Module) -> str:
        return self.names.get(id(m), type(m).__name__)

    def module(self, m: nn.Module, value: Value, name: Optional[str] = None) -> Value:
        """Collapse ``m`` applied to ``value`` (per-step, ``[T, B, ...]``)."""
        rule = rule_for(m)
        path = name or self.name(m)
        if rule is not None:
            self.stack.append(path)
            try:
                return rule(self, m, value, path)
            finally:
                self.stack.pop()
        out = m(_Symbolic.make(self, value))
        out = _sym(out)
        if out.readout is not None:
            raise CollapseError(f"{path}: reduces time inside a block; only the model's forward may end with the "
                                "mean over time.")
        return out.value

    def symbolic_forward(self, model: nn.Module) -> None:
        """Replace the forward of every module of ``model`` (a private copy): modules with a rule run it;
        modules without a rule and without children fail with one sentence; containers run their own code."""
        for path, m in model.named_modules():
            path = path or "model"
            if rule_for(m) is not None:
                m.forward = self._leaf(m, path)
            elif not list(m.children()):
                m.forward = self._no_rule(m, path)
            else:
                m.forward = self._container(m, path, m.forward)

    def _leaf(self, m: nn.Module, path: str):
        def forward(*args, **kwargs):
            xs = [a for a in _flat(args, kwargs) if isinstance(a, torch.Tensor)]
            if len(xs) != 1:
                raise CollapseError(f"{path} ({type(m).__name__}): its rule takes one input, got {len(xs)}.")
            x = _sym(xs[0])
            if x.readout is not None:
                if not _time_linear(m):
                    raise CollapseError(f"{path} ({type(m).__name__}) runs after the mean over time; only linear "
                                        "layers may follow it.")
            value = self.module(m, x.value, path)
            readout, self.readout = self.readout or x.readout, None   # a rule that reduces time says how
            return _Symbolic.make(self, value, readout)
        return forward

    def _no_rule(self, m: nn.Module, path: str):
        def forward(*args, **kwargs):
            raise CollapseError(f"{path} ({type(m).__module__}.{type(m).__name__}) has no collapse rule: "
                                f"{HOW_TO_REGISTER}.")
        return forward

    def _container(self, m: nn.Module, path: str, original):
        def forward(*args, **kwargs):
            self.stack.append(path)
            try:
                return original(*args, **kwargs)
            finally:
                self.stack.pop()
        return forward


# --------------------------------------------------------------------------------------------------------
# Rules: torch.nn layers.


def _labelled(op, label: str):
    op.label = label
    return op


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _bias(m: nn.Module) -> Optional[torch.Tensor]:
    return None if getattr(m, "bias", None) is None else m.bias.detach()


def dense_groups(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped convolution's weight as the equivalent ungrouped one (zeros between the groups).

    nir 1.0.8's ``Conv2d`` infers its input type as ``weight.shape[1]`` channels, forgetting ``groups``, so a
    graph with a grouped Conv2d fails NIR's type check when read back; and a dense weight can be sliced by
    input channels like any other (a grouped convolution over a concatenation). The zeros add exactly nothing.
    """
    if groups == 1:
        return weight
    c_out, c_in_g = weight.shape[:2]
    out_g = c_out // groups
    dense = weight.new_zeros(c_out, c_in_g * groups, *weight.shape[2:])
    for g in range(groups):
        dense[g * out_g:(g + 1) * out_g, g * c_in_g:(g + 1) * c_in_g] = weight[g * out_g:(g + 1) * out_g]
    return dense


@register_rule(TimeDistributed)
def _time_distributed(ctx, m, value, name):
    outer, ctx.inside_time_distributed = ctx.inside_time_distributed, True
    try:
        inner = rule_for(m.module)
        if inner is None:
            raise CollapseError(f"{name}.module ({type(m.module).__name__}) has no collapse rule: {HOW_TO_REGISTER}.")
        return inner(ctx, m.module, value, name)   # labelled by the TimeDistributed's path
    finally:
        ctx.inside_time_distributed = outer


@register_rule(nn.Conv2d, time_linear=True)
def _conv2d(ctx, m, value, name):
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        raise CollapseError(f"{name}: only zero, explicitly padded convolutions are collapsed (padding "
                            f"{m.padding!r}, mode {m.padding_mode!r}).")
    w = dense_groups(m.weight.detach(), m.groups)
    stride, padding, dilation = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
    return apply_mixing(value, lambda idx: _labelled(ConvOp(w[:, idx], None, stride, padding, dilation), name),
                        _bias(m))


@register_rule(nn.Conv1d, time_linear=True)
def _conv1d(ctx, m, value, name):
    if tuple(m.stride) != (1,) or tuple(m.padding) != (0,) or tuple(m.kernel_size) != (1,) or m.groups != 1:
        raise CollapseError(f"{name}: only 1x1 ungrouped token convolutions (Conv1d) are collapsed.")
    w = m.weight.detach()
    return apply_mixing(value, lambda idx: _labelled(Conv1dOp(w[:, idx], None), name), _bias(m))


@register_rule(nn.Linear, time_linear=True)
def _linear(ctx, m, value, name):
    if len(value[0].shape) != 1:
        raise CollapseError(f"{name}: a Linear layer needs a flat value, got shape {value[0].shape}; flatten first.")
    w = m.weight.detach()
    return apply_mixing(value, lambda idx: _labelled(AffineOp(w[:, idx], None), name), _bias(m))


@register_rule(nn.BatchNorm1d, nn.BatchNorm2d, time_linear=True)
def _batchnorm(ctx, m, value, name):
    if not ctx.inside_time_distributed:
        raise CollapseError(f"{name}: BatchNorm on a time-first tensor normalises over the wrong axis; wrap it in "
                            "revsnn.layers.TimeDistributed.")
    if not m.track_running_stats or m.running_var is None:
        raise CollapseError(f"{name}: BatchNorm without running statistics cannot be folded.")
    weight = m.weight.detach() if m.affine else torch.ones_like(m.running_var)
    shift0 = m.bias.detach() if m.affine else torch.zeros_like(m.running_var)
    scale = weight / torch.sqrt(m.running_var + m.eps)
    return batchnorm(value, scale, shift0 - m.running_mean * scale)


@register_rule(nn.AvgPool2d, time_linear=True)
def _avgpool(ctx, m, value, name):
    if not m.count_include_pad or m.ceil_mode or m.divisor_override is not None:
        raise CollapseError(f"{name}: only average pooling with count_include_pad, floor mode and no divisor "
                            "override is collapsed.")
    return apply_elementwise(value, _labelled(PoolOp(_pair(m.kernel_size), _pair(m.stride or m.kernel_size),
                                                     _pair(m.padding)), name))


@register_rule(nn.AdaptiveAvgPool2d, time_linear=True)
def _adaptive_avgpool(ctx, m, value, name):
    if _pair(m.output_size) != (1, 1):
        raise CollapseError(f"{name}: only global average pooling (output size 1) is collapsed.")
    h, w = value[0].shape[1:]
    return apply_elementwise(value, _labelled(PoolOp((h, w), (h, w)), name))


@register_rule(nn.MaxPool2d)
def _maxpool(ctx, m, value, name):
    if m.ceil_mode or _pair(m.dilation) != (1, 1) or m.return_indices:
        raise CollapseError(f"{name}: only max pooling without dilation or indices, in floor mode, is collapsed.")
    return apply_elementwise(value, _labelled(MaxPoolOp(_pair(m.kernel_size), _pair(m.stride or m.kernel_size),
                                                        _pair(m.padding)), name))


@register_rule(nn.Flatten, time_linear=True)
def _flatten(ctx, m, value, name):
    lead = 1 if ctx.inside_time_distributed else 2     # [T*B, ...] inside TimeDistributed, else [T, B, ...]
    ndim = lead + len(value[0].shape)
    start, end = _dim(m.start_dim, ndim), _dim(m.end_dim, ndim)
    if start < lead or end != ndim - 1:
        raise CollapseError(f"{name}: Flatten({m.start_dim}, {m.end_dim}) would merge the time or batch axis; "
                            f"flatten only the dimensions after them.")
    if start == ndim - 1:
        return value
    return apply_elementwise(value, _labelled(FlattenOp(start_dim=start - lead), name))


@register_rule(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, time_linear=True)
def _identity(ctx, m, value, name):
    return value  # inference


# --------------------------------------------------------------------------------------------------------
# Rules: revsnn's blocks.


def neuron_node(neuron: SpikingNeuron, shape: tuple[int, ...]) -> nir.NIRNode:
    full = lambda v: np.full(shape, float(v))  # noqa: E731  (NIR wants per-neuron arrays of one shape)
    if isinstance(neuron, LIF):
        return nir.LIF(tau=full(neuron.tau), r=full(1.0), v_leak=full(0.0), v_threshold=full(neuron.v_threshold),
                       v_reset=full(neuron.v_reset))
    if isinstance(neuron, IF):
        return nir.IF(r=full(1.0), v_threshold=full(neuron.v_threshold), v_reset=full(neuron.v_reset))
    if isinstance(neuron, Threshold):
        return nir.Threshold(threshold=full(neuron.v_threshold))
    raise CollapseError(f"{type(neuron).__name__} has no NIR neuron equivalent: {HOW_TO_REGISTER}.")


@register_rule(LIF, IF, Threshold)
def neurons(ctx, m: SpikingNeuron, value: Value, name: str) -> Value:
    """One population per channel group (a neuron over a concatenation is one population per part)."""
    out, start = [], 0
    for i, g in enumerate(value):
        suffix = f".s{i}" if len(value) > 1 else ""
        node = neuron_node(m, g.shape)
        out.append(ctx.builder.neuron(g, node, name + suffix, name, (start, start + g.channels)))
        start += g.channels
    return out


@register_rule(Recompute)
def _recompute(ctx, m, value, name):
    return ctx.module(m.module, value)   # inference needs no recompute


def _single(value: Value) -> Group:
    if len(value) != 1:
        raise CollapseError("a coupling function must return one block of channels.")
    return value[0]


def _halves(value: Value) -> tuple[Group, Group]:
    total = sum(g.channels for g in value)
    if total % 2:
        raise CollapseError(f"a reversible sequence needs an even number of channels to split, got {total}.")
    a, b = slice_value(value, 0, total // 2), slice_value(value, total // 2, total)
    a = a[0] if len(a) == 1 else None
    b = b[0] if len(b) == 1 else None
    if a is None or b is None:
        raise CollapseError("a reversible sequence's input halves must each be one block of channels.")
    return a, b


@register_rule(ReversibleSequence)
def reversible_sequence(ctx, seq: ReversibleSequence, value: Value, name: str) -> Value:
    """Inference needs no inverse: each coupling is its forward, its additions become fan-in."""
    x1, x2 = _halves(value)
    for block in seq.blocks:
        if isinstance(block, RevNetCoupling):      # Y1 = X1 + F(X2), Y2 = X2 + G(Y1)
            a, b = x1, x2
        elif isinstance(block, ParaRevCoupling):   # Y1 = X2 + F(X1), Y2 = X1 + G(Y1)
            a, b = x2, x1
        else:
            raise CollapseError(f"{ctx.name(block)}: unknown coupling {type(block).__name__}.")
        y1 = add(a, _single(ctx.module(block.F, [b])))
        y2 = add(b, _single(ctx.module(block.G, [y1])))
        x1, x2 = y1, y2
    return [x1, x2]


@register_rule(SpikingSelfAttention)
def attention(ctx, m: SpikingSelfAttention, value: Value, name: str) -> Value:
    """SN -> our own SpikingAttention node (Q, K, V populations and their products) -> projection."""
    spikes = ctx.module(m.input_sn, value)
    (group,) = spikes
    C, N = group.shape

    def folded(branch: nn.Sequential) -> tuple[np.ndarray, np.ndarray]:
        conv, bn = branch[0].module, branch[1].module
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        w = conv.weight.detach()[:, :, 0] * scale[:, None]
        b = bn.bias.detach() - bn.running_mean * scale
        return w.numpy().copy(), b.numpy().copy()

    neurons_ = [m.q[2], m.k[2], m.v[2], m.attn_sn]
    if not all(isinstance(n, LIF) for n in neurons_) or len({(n.tau, n.v_reset) for n in neurons_}) != 1 \
            or len({n.v_threshold for n in neurons_[:3]}) != 1 or neurons_[0].v_reset != 0.0:
        raise CollapseError(f"{name}: attention needs LIF neurons of one tau, reset 0, one Q/K/V threshold.")
    (wq, bq), (wk, bk), (wv, bv) = folded(m.q), folded(m.k), folded(m.v)
    node = SpikingAttention(wq=wq, bq=bq, wk=wk, bk=bk, wv=wv, bv=bv, tau=neurons_[0].tau,
                            qkv_threshold=neurons_[0].v_threshold,
                            v_threshold=np.full((C, N), m.attn_sn.v_threshold), heads=m.heads, scale=m.scale)
    attn = ctx.builder.neuron(group, node, f"{name}.attention", ctx.name(m.attn_sn), (0, C))
    return ctx.module(m.proj, [attn])


# --------------------------------------------------------------------------------------------------------
# The driver.

CONTRACT = {
    "hard": "LIF: h = v + (x - (v - v_reset)) / tau; spike h > theta; hard reset; dt = 1",
}


def collapse(model: nn.Module, time_steps: int, input_shape: Optional[tuple[int, ...]] = None) -> Collapsed:
    """Collapse ``model`` (any module made of torch.nn layers and revsnn's blocks, see the module docstring)
    applied to ``[time_steps, B, *input_shape]`` into a NIR graph, in float64. ``input_shape`` defaults to
    ``model.config["input_shape"]``."""
    config = getattr(model, "config", None) or {}
    if input_shape is None:
        if "input_shape" not in config:
            raise CollapseError("collapse needs the model's input shape (C, H, W): pass input_shape, or give the "
                                "model a config with 'input_shape'.")
        input_shape = config["input_shape"]
    input_shape = tuple(int(v) for v in input_shape)
    if int(time_steps) < 1:
        raise CollapseError(f"time_steps must be at least 1, got {time_steps}.")
    model = copy.deepcopy(model).double().eval()
    names = {id(m): n or "model" for n, m in model.named_modules()}
    builder = GraphBuilder(input_shape)
    ctx = CollapseContext(builder, names, int(time_steps))
    ctx.symbolic_forward(model)
    with torch.no_grad():
        out = model(_Symbolic.make(ctx, builder.input_value()))
    if not isinstance(out, _Symbolic) or out.readout is None:
        raise CollapseError("the model's forward must end with a readout of the time-first outputs: their mean "
                            "over time (x.mean(0)) or the last step (x[-1]), giving [B, classes].")
    family = config.get("family", "custom")
    has_lif = any(isinstance(n, (nir.LIF, nir.IF)) for n in builder.nodes.values())
    contract = "; ".join([CONTRACT["hard"]] * (has_lif or not ctx.contract) + ctx.contract)
    metadata = {"revsnn_version": revsnn.__version__, "model": config.get("name", family), "family": family,
                "dt": 1.0, "reset": ctx.reset, "readout": out.readout, "time_steps": int(time_steps),
                "contract": contract}
    collapsed = builder.output(out.value, metadata)
    collapsed.population_steps = ctx.population_steps
    return collapsed


# Rules registered on the modules of two families (imported for their registrations).
from . import collapse_revnode, collapse_trev  # noqa: E402,F401
