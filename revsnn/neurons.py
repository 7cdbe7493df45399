"""Spiking neurons of the time and neuron contract (DESIGN §4).

The equations live in the pure step functions below; the modules are thin multi-step wrappers over
time-first tensors ``[T, B, ...]`` that carry the membrane state between calls.

Per step, with dt = 1 and the membrane ``v`` starting at 0:

- LIF: ``h = v + (x - (v - v_reset)) / tau``; spike ``s = 1 if h > theta else 0`` (strict ``>``);
  hard reset ``v = v_reset where s else h``.
- IF: LIF without leak, ``h = v + x``.
- Threshold (stateless, T-RevSNN's turned-off neurons): ``s = 1 if u > theta else 0``.

The forward spike is always this Heaviside step; only its gradient is replaced by a surrogate (ATan,
Sigmoid or rectangular). The reset is detached from the graph by default, as in the RevSNN code.

Why not norse's functional LIF: norse's ``lif_box_feed_forward_step`` computes the same charge for
``v_leak = 0, dt = 1`` (a test checks this against it), but its surrogate set has neither ATan nor
Sigmoid in the (alpha) parameterisation the seed papers use, its reset always carries gradient, and its
state is a norse-specific named tuple. The equations are three lines; owning them keeps the contract in
one place for training, the reference executor and the exporters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from .graphtask import keeps_graph
from . import spikepack
from .spikepack import FromMembranes, SpikeSource, mark_binary

__all__ = [
    "ATan",
    "Sigmoid",
    "Rectangular",
    "Surrogate",
    "spike",
    "lif_step",
    "if_step",
    "threshold_step",
    "multistep",
    "SpikingNeuron",
    "LIF",
    "IF",
    "Threshold",
    "neurons_of",
    "reset_states",
    "get_states",
    "set_states",
    "make_neuron",
    "make_surrogate",
]


# --------------------------------------------------------------------------------------------------------
# Surrogate gradients: d spike / d x where x = h - theta.


@dataclass(frozen=True)
class ATan:
    """``alpha / (2 (1 + (pi alpha x / 2)^2))``, the derivative of ``atan(pi alpha x / 2) / pi``."""

    alpha: float = 2.0

    def grad(self, x: Tensor) -> Tensor:
        # In place on one temporary: the fused neuron's backward calls this per step, and every extra
        # temporary is a step-sized allocation at the backward's peak.
        g = x * (math.pi * self.alpha / 2.0)
        return g.square_().add_(1.0).reciprocal_().mul_(self.alpha / 2.0)

    def grad_(self, x: Tensor) -> Tensor:
        """``grad(x)`` written into ``x`` (the fused neuron's backward: the whole sequence, no temporary)."""
        return x.mul_(math.pi * self.alpha / 2.0).square_().add_(1.0).reciprocal_().mul_(self.alpha / 2.0)


@dataclass(frozen=True)
class Sigmoid:
    """``alpha * sig(alpha x) * (1 - sig(alpha x))``, the derivative of ``sig(alpha x)``."""

    alpha: float = 4.0

    def grad(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(self.alpha * x)
        return torch.sub(1.0, s).mul_(s).mul_(self.alpha)  # two temporaries, not four (see ATan)

    def grad_(self, x: Tensor) -> Tensor:
        """``grad(x)`` written into ``x``: sig(z) (1 - sig(z)) = 1 / (2 + 2 cosh z), which needs no second
        buffer and, unlike s - s^2, loses no digits where s is near 1."""
        return x.mul_(self.alpha).cosh_().mul_(2.0).add_(2.0).reciprocal_().mul_(self.alpha)


@dataclass(frozen=True)
class Rectangular:
    """Straight-through window: ``1 / width`` where ``|x| <= width / 2``, else 0.

    With width 1 and theta 0.5 this is T-RevSNN's gradient (1 for inputs in [0, 1]).
    """

    width: float = 1.0

    def grad(self, x: Tensor) -> Tensor:
        return (x.abs() <= self.width / 2.0).to(x.dtype) / self.width

    def grad_(self, x: Tensor) -> Tensor:
        """``grad(x)`` written into ``x`` (``le_`` stores 1.0 / 0.0 in x's own dtype)."""
        return x.abs_().le_(self.width / 2.0).div_(self.width)


Surrogate = ATan | Sigmoid | Rectangular


class _Heaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, surrogate: Surrogate) -> Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(x), None


def spike(x: Tensor, surrogate: Surrogate = ATan()) -> Tensor:
    """Strict Heaviside ``x > 0`` in the forward pass, ``surrogate.grad(x)`` in the backward pass."""
    return _Heaviside.apply(x, surrogate)


# --------------------------------------------------------------------------------------------------------
# Pure step functions: one time step, state in and state out.


def _hard_reset(h: Tensor, s: Tensor, v_reset: float, detach_reset: bool) -> Tensor:
    r = s.detach() if detach_reset else s
    # h * (1 - r) + v_reset * r is exactly h where r = 0 and exactly v_reset where r = 1.
    return h * (1.0 - r) + v_reset * r


def lif_step(
    x: Tensor,
    v: Tensor,
    tau: float,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    surrogate: Surrogate = ATan(),
    detach_reset: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """One LIF step. Returns ``(spikes, v_next, h)`` where ``h`` is the membrane before the reset."""
    h = v + (x - (v - v_reset)) / tau
    s = spike(h - v_threshold, surrogate)
    return s, _hard_reset(h, s, v_reset, detach_reset), h


def if_step(
    x: Tensor,
    v: Tensor,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    surrogate: Surrogate = ATan(),
    detach_reset: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """One IF step (LIF without leak). Returns ``(spikes, v_next, h)``."""
    h = v + x
    s = spike(h - v_threshold, surrogate)
    return s, _hard_reset(h, s, v_reset, detach_reset), h


def threshold_step(u: Tensor, v_threshold: float = 0.5, surrogate: Surrogate = Rectangular()) -> Tensor:
    """Stateless spike ``u > theta``; works on any shape, a whole sequence at once."""
    return spike(u - v_threshold, surrogate)


# --------------------------------------------------------------------------------------------------------
# The fused multi-step neuron: one autograd Function over all T steps.


def _from_batch_norm(t: Tensor) -> bool:
    """Whether ``t`` is (a view of) a BatchNorm's output, by its autograd node: the producer that keeps
    its input for backward and never its output."""
    # _FrozenBatchNormBackward: revsnn.chunked's BatchNorm with the batch's statistics, which keeps only
    # its input too (named, not imported: the chunked backward builds on this module, not the reverse).
    return spikepack.producer(t) in ("NativeBatchNormBackward0", "CudnnBatchNormBackward0", "_FrozenBatchNormBackward")


class _FusedLIF(torch.autograd.Function):
    """LIF (``tau``) or IF (``tau=None``) over a whole sequence ``[T, ...]`` in one autograd node.

    Why our own instead of step-by-step autograd: that records ~6 nodes per step and saves two floats per
    neuron and step (``h - theta`` for the surrogate and ``1 - s`` for the reset); this saves one
    sequence: the membranes ``h`` where the input is a BatchNorm's output (which then nobody keeps, so
    ``h`` costs the same bytes), else the input ``x_seq`` (with ``v0`` when one was given), which may be
    held anyway, recomputing ``h`` in backward in one elementwise pass over time.
    Inside a reversible block the first neuron's input is the block's input, which the recompute holds
    regardless, and the same storage is counted once (issue 18: the reversible peak). Under ``no_grad`` nothing is
    saved and no ``h`` sequence is allocated at all. The forward computes the very expressions of
    ``lif_step`` / ``if_step`` (same operands, same rounding), so outputs are bit-identical; gradients
    follow the chain rule of those expressions.

    Speed (issue 18, Deliver 5): the recurrence over time cannot be vectorised, so each step is as few
    tensor operations as the equations allow (IF: add, compare, reset; LIF: three for the charge), written
    in place into tensors of our own, and everything that is elementwise over all T (the surrogate, its
    product with the incoming gradient, the 1 / tau of the input gradient) is one operation over the whole
    sequence. With the detached reset (the default) the backward recurrence is then one ``addcmul`` a
    step, ``dh_t = ds_t sg_t + c (1 - s_t) dh_{t+1}`` with ``c = 1 - 1 / tau`` (IF: 1). The op count
    matters most on small tensors, where every op is mostly dispatch overhead; on large ones each removed
    op is a pass over memory saved.
    """

    @staticmethod
    def _charge(x: Tensor, v: Optional[Tensor], tau: Optional[float], v_reset: float,
                out: Optional[Tensor] = None) -> Tensor:
        """``v + x`` (IF) or ``v + (x - (v - v_reset)) / tau`` (LIF), as a new tensor or into ``out``;
        ``v=None`` is the membrane at rest (0), where ``0 + q == q`` and ``0 - v_reset == -v_reset``."""
        if tau is None:
            if v is None:
                return x.clone() if out is None else out.copy_(x)
            return torch.add(v, x, out=out) if out is not None else v + x
        if v is None:
            q = x if v_reset == 0.0 else x + v_reset  # x - (0 - v_reset): subtracting -a is adding a
            return torch.div(q, tau, out=out) if out is not None else q / tau
        d = v if v_reset == 0.0 else v - v_reset     # v - 0.0 is v itself
        q = torch.sub(x, d, out=out) if out is not None else x - d
        return q.div_(tau).add_(v)                   # addition commutes exactly: q + v == v + q

    @staticmethod
    def _reset(h: Tensor, s: Tensor, v_reset: float, into_new: bool = False) -> Tensor:
        """``h (1 - s) + v_reset s`` in place on ``h`` (ours): exactly h where s = 0 and exactly v_reset
        where s = 1, the step functions' ``_hard_reset``. With v_reset = 0 it is ``h - h s``, one op.
        ``into_new``: the same into a new tensor, ``h`` kept (the same operations, so the same bits)."""
        if v_reset == 0.0:
            return torch.addcmul(h, h, s, value=-1.0) if into_new else h.addcmul_(h, s, value=-1.0)
        quiet = torch.sub(1.0, s)
        return (torch.mul(h, quiet) if into_new else h.mul_(quiet)).add_(s, alpha=v_reset)

    @staticmethod
    def _run(x_seq: Tensor, v0: Optional[Tensor], tau: Optional[float], v_threshold: float, v_reset: float,
             keep: str) -> tuple[Tensor, Optional[Tensor], Tensor]:
        """The charge / fire (strict) / hard-reset steps over all T, once for forward and backward.

        Returns ``(seq, quiet, v_T)``. ``keep="spikes"``: ``seq`` is ``[T, ...]`` of the spikes, ``quiet``
        None. ``keep="membranes"``: ``seq`` holds the membranes before reset and ``quiet`` is ``1 - s``
        (1.0 where no spike), the factor the membrane gradient passes through. ``keep="both"``: ``seq``
        holds the membranes and ``quiet`` the spikes themselves (the forward that keeps its membranes).
        ``v_T`` is the last membrane. Masks are floats written by ``torch.gt`` / ``torch.le`` with a float ``out``: on this
        CPU build a bool result or a bool operand (``masked_fill``, ``where``) costs 5-10 times a float
        op. ``h > theta`` is the contract's spike; for floats it is the same test as ``h - theta > 0``
        (the difference of two floats is 0 only where they are equal, and rounding keeps its sign)."""
        T = x_seq.shape[0]
        seq = torch.empty_like(x_seq)
        quiet = torch.empty_like(x_seq) if keep != "spikes" else None
        v = v0
        for t in range(T):
            if quiet is None:
                h = _FusedLIF._charge(x_seq[t], v, tau, v_reset)
                s = torch.gt(h, v_threshold, out=seq[t])
                v = _FusedLIF._reset(h, s, v_reset)
            elif keep == "both":
                h = _FusedLIF._charge(x_seq[t], v, tau, v_reset, out=seq[t])  # stays for the backward
                s = torch.gt(h, v_threshold, out=quiet[t])
                v = _FusedLIF._reset(h, s, v_reset, into_new=True)
            else:
                h = _FusedLIF._charge(x_seq[t], v, tau, v_reset, out=seq[t])  # stays for the backward
                q = torch.le(h, v_threshold, out=quiet[t])
                v = h * q if v_reset == 0.0 else (h * q).add_(torch.sub(1.0, q), alpha=v_reset)  # as _reset
        if v is None:  # T = 0 never reaches here (the modules refuse it), but stay total
            v = torch.zeros_like(x_seq[0])
        return seq, quiet, v

    @staticmethod
    def forward(ctx, x_seq: Tensor, v0: Optional[Tensor], tau: Optional[float], v_threshold: float,
                v_reset: float, surrogate: Surrogate, detach_reset: bool):
        needs_grad = any(ctx.needs_input_grad[:2])
        # What to keep for backward (nothing under no_grad). Where the input is a BatchNorm's output
        # (conv -> BN -> neuron, the layout of every branch), this neuron is its only keeper (BatchNorm's
        # backward keeps its input, not its output), so the membranes h cost the same bytes and save the
        # backward a second pass of the recurrence over time (issue 18, speed: ~3T small ops, a third of
        # the neuron's backward). Any other input may be kept anyway (a leaf, a reversible sequence's
        # output that its Function holds, a stream), where keeping it costs nothing and h would cost one
        # more membrane sequence.
        keep_h = needs_grad and _from_batch_norm(x_seq)
        source = None
        ctx.replay = None
        if keep_h:
            h_seq, s_seq, v = _FusedLIF._run(x_seq, v0, tau, v_threshold, v_reset, keep="both")
            ctx.save_for_backward(h_seq, None)
            if spikepack.packing():
                source = FromMembranes(h_seq, v_threshold)
        else:
            s_seq, _, v = _FusedLIF._run(x_seq, v0, tau, v_threshold, v_reset, keep="spikes")
            if needs_grad:
                ctx.save_for_backward(x_seq, v0)
                if spikepack.packing():
                    source = ctx.replay = _Replay(x_seq, v0, tau, v_threshold, v_reset)
        ctx.kept_membranes = keep_h
        # 0 / 1 by construction: a recompute (revsnn.spikepack) keeps it without testing it, and as nothing
        # but a way to make it again from what this neuron keeps: its membranes, or its input (_Replay).
        mark_binary(s_seq, source)
        ctx.constants = (tau, v_threshold, v_reset, surrogate, detach_reset)
        return s_seq, v

    @staticmethod
    def _membranes(ctx) -> tuple[Tensor, Tensor]:
        """The membranes before reset and ``quiet = 1 - s``, from what the forward kept: recomputed from
        the input with the forward's expressions (bit-identical), or the kept membranes themselves
        (copied when the graph is kept, because the backward turns them into the gradient in place)."""
        saved, v0 = ctx.saved_tensors
        tau, v_threshold, v_reset, _, _ = ctx.constants
        if not ctx.kept_membranes:
            replayed = ctx.replay.take_membranes() if ctx.replay is not None else None
            if replayed is not None:  # our own: the readers of the spikes replayed the recurrence already
                return replayed, torch.le(replayed, v_threshold, out=torch.empty_like(replayed))
            buf, quiet, _ = _FusedLIF._run(saved, v0, tau, v_threshold, v_reset, keep="membranes")
            return buf, quiet
        buf = saved.clone() if keeps_graph() else saved
        return buf, torch.le(buf, v_threshold, out=torch.empty_like(buf))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, ds_seq: Optional[Tensor], dv_last: Optional[Tensor]):
        tau, v_threshold, v_reset, surrogate, detach_reset = ctx.constants
        has_v0 = ctx.needs_input_grad[1]
        # The membranes before reset, into the buffer that then receives the input gradient.
        buf, quiet = _FusedLIF._membranes(ctx)
        if not detach_reset:
            del quiet
            return _FusedLIF._backward_reset_grad(buf, ds_seq, dv_last, has_v0, tau, v_threshold, v_reset,
                                                  surrogate)
        # dh_t = ds_t sg(h_t - theta) + c (1 - s_t) dh_{t+1} (and dv_last at t = T - 1): v_t = h_t where
        # no spike (else the constant v_reset, the reset detached), and h_{t+1} depends on v_t with slope
        # c = 1 - 1/tau (LIF) or 1 (IF). Everything but the recurrence is one op over the whole sequence.
        buf.sub_(v_threshold)
        if ds_seq is None:
            buf.zero_()
        else:
            grad_ = getattr(surrogate, "grad_", None)
            if grad_ is not None:
                grad_(buf)
            else:  # a surrogate of the user's own with only grad(): one temporary
                buf.copy_(surrogate.grad(buf))
            buf.mul_(ds_seq)
        c = 1.0 if tau is None else 1.0 - 1.0 / tau
        T = buf.shape[0]
        if dv_last is not None:
            buf[T - 1].addcmul_(dv_last, quiet[T - 1])
        for t in range(T - 1, 0, -1):
            buf[t - 1].addcmul_(buf[t], quiet[t - 1], value=c)
        del quiet
        dv0 = buf[0] * c if has_v0 else None  # before buf becomes dx
        if tau is not None:
            buf.div_(tau)  # x enters h as x / tau
        return buf, dv0, None, None, None, None, None

    @staticmethod
    def _backward_reset_grad(buf, ds_seq, dv_last, want_dv0, tau, v_threshold, v_reset, surrogate):
        """The backward when the reset carries gradient (``detach_reset=False``): the membrane path also
        gets ``dv (v_reset - h) sg`` through the spike, which needs h and sg at once; step by step."""
        dv = dv_last
        for t in reversed(range(buf.shape[0])):
            h = buf[t]
            u = h - v_threshold
            fired = u > 0
            sg = surrogate.grad(u)
            # v = h (1 - s) + v_reset s: the membrane path passes where no spike reset it
            dh = torch.zeros_like(h) if dv is None else dv.masked_fill(fired, 0.0)
            if dv is not None:  # ... and the reset's own gradient through s
                dh += dv * (v_reset - h) * sg
            if ds_seq is not None:
                dh += sg.mul_(ds_seq[t])
            del u, fired, sg
            if tau is None:
                buf[t] = dh
                dv = dh
            else:
                dq = dh / tau          # h = v + q, q = (x - (v - v_reset)) / tau
                buf[t] = dq
                dv = dh.sub_(dq)
                del dq
            del dh
        return buf, (dv if want_dv0 else None), None, None, None, None, None


class _Replay(SpikeSource):
    """The spikes of a fused neuron that kept its input (not its membranes): made again by running the
    recurrence over the input once more, the run that the neuron's own backward needs anyway for its
    membranes. The first reader of the spikes to unpack them runs it (``keep="both"``); the membranes are
    kept here and handed to the neuron's backward, which comes right after its readers' and then does not
    run it again. So the spikes cost neither bits nor a pass to pack and unpack them, and the backward no
    extra pass (issue 18, speed). The membranes are alive from the readers' backward to the neuron's."""

    __slots__ = ("x_seq", "v0", "versions", "constants", "kept")

    def __init__(self, x_seq: Tensor, v0: Optional[Tensor], tau: Optional[float], v_threshold: float,
                 v_reset: float):
        self.x_seq, self.v0, self.constants = x_seq, v0, (tau, v_threshold, v_reset)
        self.versions = (x_seq._version, None if v0 is None else v0._version)
        self.kept: Optional[tuple[Tensor, Tensor]] = None

    def valid(self) -> bool:
        return self.versions == (self.x_seq._version, None if self.v0 is None else self.v0._version)

    def spikes(self) -> Tensor:
        if self.kept is None:
            tau, v_threshold, v_reset = self.constants
            h, s, _ = _FusedLIF._run(self.x_seq, self.v0, tau, v_threshold, v_reset, keep="both")
            self.kept = (h, s)
        return self.kept[1]

    def take_membranes(self) -> Optional[Tensor]:
        """The membranes of the replay, handed over (None if no reader replayed); the spikes are dropped."""
        if self.kept is None or not self.valid():
            self.kept = None
            return None
        h, self.kept = self.kept[0], None
        return h


def multistep(x_seq: Tensor, v0: Optional[Tensor], tau: Optional[float], v_threshold: float = 1.0,
              v_reset: float = 0.0, surrogate: Surrogate = ATan(), detach_reset: bool = True) -> tuple[Tensor, Tensor]:
    """All T steps of a LIF (``tau``) or IF (``tau=None``) neuron at once: ``(spikes [T, ...], v_T)``.
    ``v0=None`` starts at rest (0) without allocating or saving a zero membrane."""
    if not torch.is_grad_enabled() or not (x_seq.requires_grad or (v0 is not None and v0.requires_grad)):
        # Nothing to differentiate (a reversible block's forward, inference): the same run without the
        # autograd Function around it, whose apply costs as much as a few of the run's small ops.
        s_seq, _, v = _FusedLIF._run(x_seq, v0, tau, v_threshold, v_reset, keep="spikes")
        return mark_binary(s_seq), v
    return _FusedLIF.apply(x_seq, v0, tau, v_threshold, v_reset, surrogate, detach_reset)


# --------------------------------------------------------------------------------------------------------
# Multi-step modules.


class SpikingNeuron(nn.Module):
    """Base of the neuron modules: multi-step over ``[T, B, ...]``, membrane kept between calls.

    ``forward`` starts from the stored membrane (zeros after ``reset()``) and stores the final one,
    detached, so that a long input can be fed in chunks. Models reset their neurons at the start of each
    forward, so that no state leaks from one batch into the next.
    """

    stateful = True

    def __init__(self, v_threshold: float, surrogate: Surrogate):
        super().__init__()
        self.v_threshold = float(v_threshold)
        self.surrogate = surrogate
        self.v: Optional[Tensor] = None

    def reset(self) -> None:
        self.v = None

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    # LIF and IF run all T steps in one autograd Function (``multistep``) unless this is False; the
    # step-by-step path is the reference it is tested against.
    fused = True

    def _fused_tau(self) -> tuple[bool, Optional[float]]:
        """(whether this neuron has a fused multi-step form, its tau or None for IF)."""
        return False, None

    def forward(self, x_seq: Tensor) -> Tensor:
        if x_seq.dim() < 2:
            raise ValueError(f"{type(self).__name__} expects a time-first tensor [T, B, ...], got shape "
                             f"{tuple(x_seq.shape)}.")
        has_fused, tau = self._fused_tau()
        if self.fused and has_fused and x_seq.shape[0] > 0:
            s_seq, v = multistep(x_seq, self.v, tau, self.v_threshold, self.v_reset, self.surrogate, self.detach_reset)
            self.v = v.detach()
            return s_seq
        v = torch.zeros_like(x_seq[0]) if self.v is None else self.v
        spikes = []
        for x in x_seq:
            s, v, _ = self.step(x, v)
            spikes.append(s)
        self.v = v.detach()
        return torch.stack(spikes)


class LIF(SpikingNeuron):
    """Leaky integrate-and-fire neuron with hard reset (see the module docstring for the equations)."""

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float = 0.0,
        surrogate: Surrogate = Sigmoid(4.0),
        detach_reset: bool = True,
    ):
        super().__init__(v_threshold, surrogate)
        if not tau >= 1.0:
            raise ValueError(f"LIF needs tau >= 1 (a decay factor 1/tau in (0, 1]); got tau={tau}.")
        self.tau = float(tau)
        self.v_reset = float(v_reset)
        self.detach_reset = detach_reset

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return lif_step(x, v, self.tau, self.v_threshold, self.v_reset, self.surrogate, self.detach_reset)

    def _fused_tau(self) -> tuple[bool, Optional[float]]:
        return type(self).step is LIF.step, self.tau  # a subclass with its own step runs step by step

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}, surrogate={self.surrogate}"


class IF(SpikingNeuron):
    """Integrate-and-fire neuron with hard reset: LIF without leak."""

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float = 0.0,
        surrogate: Surrogate = ATan(2.0),
        detach_reset: bool = True,
    ):
        super().__init__(v_threshold, surrogate)
        self.v_reset = float(v_reset)
        self.detach_reset = detach_reset

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return if_step(x, v, self.v_threshold, self.v_reset, self.surrogate, self.detach_reset)

    def _fused_tau(self) -> tuple[bool, Optional[float]]:
        return type(self).step is IF.step, None

    def extra_repr(self) -> str:
        return f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, surrogate={self.surrogate}"


class Threshold(SpikingNeuron):
    """Stateless threshold neuron ``s = u > theta``: no membrane, no reset, nothing carried in time."""

    stateful = False

    def __init__(self, v_threshold: float = 0.5, surrogate: Surrogate = Rectangular(1.0)):
        super().__init__(v_threshold, surrogate)

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return threshold_step(x, self.v_threshold, self.surrogate), v, x

    def forward(self, x_seq: Tensor) -> Tensor:
        return threshold_step(x_seq, self.v_threshold, self.surrogate)

    def extra_repr(self) -> str:
        return f"v_threshold={self.v_threshold}, surrogate={self.surrogate}"


# --------------------------------------------------------------------------------------------------------
# State of every neuron inside a module tree.


def neurons_of(module: nn.Module) -> Iterator[SpikingNeuron]:
    """Every stateful spiking neuron in ``module`` (itself included), in ``modules()`` order."""
    return (m for m in module.modules() if isinstance(m, SpikingNeuron) and m.stateful)


def reset_states(module: nn.Module) -> None:
    for n in neurons_of(module):
        n.reset()


def get_states(module: nn.Module) -> list[Optional[Tensor]]:
    return [n.v for n in neurons_of(module)]


def set_states(module: nn.Module, states: list[Optional[Tensor]]) -> None:
    neurons = list(neurons_of(module))
    if len(neurons) != len(states):
        raise ValueError(f"{len(states)} neuron states given for {len(neurons)} neurons.")
    for n, v in zip(neurons, states):
        n.v = v


# --------------------------------------------------------------------------------------------------------
# Neurons from JSON specs (model configs are stored as plain data in checkpoints).

_SURROGATES = {"atan": ATan, "sigmoid": Sigmoid, "rectangular": Rectangular}


def make_surrogate(spec: dict) -> Surrogate:
    """``{"type": "atan", "alpha": 2.0}`` -> ``ATan(2.0)``; ``{"type": "rectangular", "width": 1.0}``."""
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in _SURROGATES:
        raise ValueError(f"Unknown surrogate {kind!r}; known: {', '.join(_SURROGATES)}.")
    return _SURROGATES[kind](**spec)


def make_neuron(spec: dict, **overrides) -> SpikingNeuron:
    """Build a neuron from a JSON spec such as ``{"type": "LIF", "tau": 2.0, "v_threshold": 1.0,
    "surrogate": {"type": "sigmoid", "alpha": 4.0}}``; ``overrides`` replace fields (e.g. a threshold)."""
    spec = {**spec, **overrides}
    kind = spec.pop("type")
    if "surrogate" in spec:
        spec["surrogate"] = make_surrogate(spec["surrogate"])
    classes = {"LIF": LIF, "IF": IF, "Threshold": Threshold}
    if kind not in classes:
        raise ValueError(f"Unknown neuron type {kind!r}; known: {', '.join(classes)}.")
    return classes[kind](**spec)
