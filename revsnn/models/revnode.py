"""A reversible spiking neuron node, and a small network built from it (family ``revnode``).

Lei et al. (arXiv 2308.08649) describe a reversible SNN *node*: the map (X^t, V^{t-1}) -> (Y^t, V^t) is
invertible, so BPTT need not keep the node's per-step internals. Their equations are not available to us;
this is **our own node** ("RevLIF"), built to the same goal. It is not Lei et al.'s node.

Equations (per element, per time step t, dt = 1, ``v_0 = 0``; ``tau`` >= 1, threshold ``theta``)::

    d_t = (x_t - v_{t-1}) / tau          charge increment
    h_t = v_{t-1} + d_t                  membrane before reset: exactly the contract's LIF charge
                                         h = v + (x - (v - v_reset)) / tau with v_reset = 0
    s_t = H(h_t - theta)                 spike, strict ">" (surrogate gradient in backward)
    v_t = h_t - theta * s_t              soft (subtractive) reset
    y_t = s_t + d_t                      output: the spike plus the charge increment (real-valued)

Inverse, exact (given ``y_t``, ``v_t`` and the spike bit ``s_t``)::

    h_t     = v_t + theta * s_t
    d_t     = y_t - s_t
    v_{t-1} = h_t - d_t
    x_t     = v_{t-1} + tau * d_t

Why this shape:

- A leak ``v -> (1 - 1/tau) v`` contracts, so undoing it from ``x_t`` alone divides by ``1 - 1/tau``
  and doubles (for tau = 2) the accumulated float error at every step back: 2^T growth. Here the
  information the leak dissipates leaves the node in the output, as the charge increment
  ``d_t = (x_t - v_{t-1}) / tau``. The linear part (x, v) -> (tau d, h) has determinant 1, and the inverse
  uses only additions, subtractions and ``tau * d_t`` on a freshly recovered (not accumulated) quantity.
  The error in the recovered ``v_{t-1}`` is the error in ``v_t`` plus a few ulp: it grows at most
  linearly in T. Measured (tests): max error 1.3e-15 in float64 and 7.2e-7 in float32 over T = 16,
  5e-15 and 2.1e-6 over T = 256.
- Any positive reset loses information: with ``h`` in (theta, 2 theta] (spike, v_t = h - theta) and
  ``h' = h - theta`` (no spike, v_t = h'), the same ``(y_t, v_t)`` comes from two different
  ``(x_t, v_{t-1})`` (take ``d' = d + 1``). So (x_t, v_{t-1}) <-> (y_t, v_t) is invertible only together
  with the spike bit s_t, which the node therefore keeps: **1 bit per neuron per step**, packed 8 to a
  byte (1/32 of one float32 per step). Keeping the bit also makes the reconstruction continuous in the
  stored data, so float rounding can never flip a reconstructed spike. A hard reset (v_t = 0 where
  s_t) could not be undone even with the bit: it discards h_t.
- No channel split is needed: the node is elementwise, any shape works. (Lei et al. split the states
  in two groups; we did not need that.)

What the reversible Function keeps for the whole T-step sequence (``save_for_backward``, so the
activation meter sees it): the output ``y`` (which the next layer keeps for its own weight gradient
anyway, so it is shared storage in a network), the final state ``v_T`` (O(1) in T) and the packed
spike bits (T * ceil(numel / 8) bytes). Backward walks time in reverse, reconstructs
``(x_t, v_{t-1})`` from ``(y_t, v_t, s_t)`` and recomputes the step under autograd to get the local
gradients; the recompute uses the stored spike in its forward (so it cannot differ from the forward
pass by rounding) and the surrogate at the recomputed ``h_t - theta`` in its backward. With
``reversible=False`` the node is its plain-autograd BPTT twin: the same step function, unrolled.

``node_memory_comparison`` measures the bytes retained for backward by this node, its BPTT twin and a
standard ``revsnn.neurons.LIF`` on the same input. Per neuron and step in float32 the BPTT twin keeps one
float (``h - theta`` for the surrogate) and the LIF two (``h - theta`` and the reset mask); the reversible
node keeps its output (one float, shared with the next layer, which keeps it anyway) and 1 bit, plus one
float per neuron for the final state. Node alone it is therefore about 1.9x smaller than the LIF and
about equal to its twin; beyond the output it is 21x smaller than the LIF at T = 16, 42x at T = 64,
tending to 64x (``node_memory_comparison()``, shape [32, 256], float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
from torch import Tensor, nn

from ..layers import TimeDistributed
from ..memory import ActivationMeter
from ..neurons import LIF, Sigmoid, SpikingNeuron, Surrogate, make_surrogate, reset_states, spike
from ..reversible import ReversibleModule, stream_dtype
from ..spikepack import _Packed, pack_bits, unpack_bits

__all__ = [
    "RevLIFNode",
    "SmoothSigmoidSpike",
    "revlif_step",
    "revlif_inverse",
    "pack_spikes",
    "unpack_spikes",
    "RevNodeNet",
    "CONFIGS",
    "build",
    "node_memory_comparison",
]


# --------------------------------------------------------------------------------------------------------
# A smooth stand-in spike, for gradient checks only.


@dataclass(frozen=True)
class SmoothSigmoidSpike:
    """NOT the contract's spike: forward ``sigmoid(alpha u)``, backward its exact derivative.

    Only for ``torch.autograd.gradcheck`` of the reversible Function, whose backward must then equal
    finite differences. Real spike values cannot be stored as bits, so a node using it keeps its
    (float) spike sequence instead.
    """

    alpha: float = 4.0

    def grad(self, u: Tensor) -> Tensor:
        return Sigmoid(self.alpha).grad(u)


class _ForcedSpike(torch.autograd.Function):
    """Forward: the stored spike value. Backward: ``surrogate.grad(u)`` at the recomputed ``u``."""

    @staticmethod
    def forward(ctx, u: Tensor, stored: Tensor, surrogate) -> Tensor:
        ctx.save_for_backward(u)
        ctx.surrogate = surrogate
        return stored.to(dtype=u.dtype, copy=True)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (u,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(u), None, None


def _fire(u: Tensor, surrogate, stored: Optional[Tensor] = None) -> Tensor:
    if stored is not None:
        return _ForcedSpike.apply(u, stored, surrogate)
    if isinstance(surrogate, SmoothSigmoidSpike):
        return torch.sigmoid(surrogate.alpha * u)
    return spike(u, surrogate)


# --------------------------------------------------------------------------------------------------------
# The per-step map and its inverse.


def revlif_step(
    x: Tensor,
    v: Tensor,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    surrogate: Surrogate = Sigmoid(4.0),
    detach_reset: bool = True,
    stored_spike: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step ``(x_t, v_{t-1}) -> (y_t, v_t)``. Returns ``(y, v_next, s, h)``.

    ``stored_spike`` (used by the reversible backward) replaces the spike's forward value; its gradient
    is still the surrogate at ``h - theta``.
    """
    d = (x - v) / tau
    h = v + d
    s = _fire(h - v_threshold, surrogate, stored_spike)
    r = s.detach() if detach_reset else s
    v_next = h - v_threshold * r
    y = s + d
    return y, v_next, s, h


def revlif_inverse(y: Tensor, v_next: Tensor, s: Tensor, tau: float = 2.0,
                   v_threshold: float = 1.0) -> tuple[Tensor, Tensor]:
    """The exact inverse: ``(y_t, v_t, s_t) -> (x_t, v_{t-1})``."""
    s = s.to(y.dtype)
    h = v_next + v_threshold * s
    d = y - s
    v = h - d
    x = v + tau * d
    return x, v


# --------------------------------------------------------------------------------------------------------
# Spike bits, 8 to a byte.

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_spikes(s: Tensor) -> Tensor:
    """A 0/1 tensor of any shape -> ``uint8[ceil(numel / 8)]``, bit k of byte j is element 8 j + k."""
    flat = (s.reshape(-1) > 0.5).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat((flat, flat.new_zeros(pad)))
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(-1, dtype=torch.uint8)


def unpack_spikes(packed: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of ``pack_spikes``: a bool tensor of ``shape``."""
    n = math.prod(shape)
    bits = (packed.unsqueeze(-1) & _BIT_WEIGHTS.to(packed.device)) != 0
    return bits.reshape(-1)[:n].reshape(shape)


# --------------------------------------------------------------------------------------------------------
# The reversible Function over a whole sequence.


class _RevLIFFn(torch.autograd.Function):
    """All T steps of the node in one autograd node, forward and a one-pass backward (issue 18, Deliver 5).

    Forward, under no_grad: the step equations written as a few in-place ops a step (the same operands and
    rounding as ``revlif_step``, so outputs are bit-identical to the twin's), the spike bits packed as
    each step is done. Backward: one walk back in time with the closed-form local gradients, no autograd
    graph per step (it used to rebuild and differentiate ``revlif_step`` at every step). With
    ``gy = dL/dy_t`` and ``gv = dL/dv_t`` and the surrogate ``sg = surrogate.grad(h_t - theta)``::

        gs      = gy - theta gv          (the reset's path only when detach_reset=False)
        gh      = gv + gs sg             v_t = h_t - theta s_t, y_t = s_t + d_t
        gd      = gy + gh                h_t = v_{t-1} + d_t
        dL/dx_t = gd / tau               d_t = (x_t - v_{t-1}) / tau
        dL/dv_{t-1} = gh - gd / tau

    ``h_t`` and ``v_{t-1}`` come from the exact inverse, ``h_t = v_t + theta s_t`` and ``v_{t-1} = h_t - d_t``
    with ``d_t = y_t - s_t``, as before.
    """

    @staticmethod
    def forward(ctx, x_seq: Tensor, v0: Tensor, node: "RevLIFNode"):
        T, step_shape = x_seq.shape[0], x_seq.shape[1:]
        smooth = isinstance(node.surrogate, SmoothSigmoidSpike)
        tau, theta = node.tau, node.v_threshold
        with torch.no_grad():
            y_seq = torch.empty_like(x_seq)
            if smooth:
                record = torch.empty_like(x_seq)
            else:
                record = torch.empty(T, math.ceil(math.prod(step_shape) / 8), dtype=torch.uint8,
                                     device=x_seq.device)
            v = v0
            for t in range(T):
                if smooth:  # gradient checks only: the real-valued stand-in spike, stored as it is
                    y, v, s, _ = node.step_full(x_seq[t], v)
                    y_seq[t] = y
                    record[t] = s
                    continue
                d = torch.sub(x_seq[t], v).div_(tau)     # d = (x - v) / tau
                h = torch.add(v, d)                      # h = v + d
                s = torch.gt(h, theta, out=torch.empty_like(h))  # strict >, as 0.0 / 1.0
                torch.add(s, d, out=y_seq[t])            # y = s + d
                v = h.sub_(s, alpha=theta)               # v = h - theta s (theta s is exact for s in {0, 1})
                record[t] = _pack_step(s)
                del d, h, s
        ctx.node = node
        ctx.smooth = smooth
        ctx.step_shape = step_shape
        ctx.save_for_backward(y_seq, v, record)
        return y_seq, v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy_seq: Optional[Tensor], dv: Optional[Tensor]):
        node: RevLIFNode = ctx.node
        tau, theta = node.tau, node.v_threshold
        y_seq, v, record = ctx.saved_tensors
        dx_seq = torch.empty_like(y_seq)
        gv = torch.zeros_like(v) if dv is None else dv
        for t in reversed(range(y_seq.shape[0])):
            s = record[t] if ctx.smooth else _unpack_step(record[t], ctx.step_shape, y_seq.dtype)
            h = torch.add(v, s, alpha=theta)                 # h_t = v_t + theta s_t
            d = torch.sub(y_seq[t], s)                       # d_t = y_t - s_t
            v = h - d                                        # v_{t-1}
            sg = node.surrogate.grad(h.sub_(theta))
            gy = None if dy_seq is None else dy_seq[t]
            gs = gy if node.detach_reset else (-theta * gv if gy is None else torch.sub(gy, gv, alpha=theta))
            gh = gv.clone() if gs is None else torch.addcmul(gv, gs, sg)
            gd = gh if gy is None else torch.add(gy, gh)     # a new tensor, or gh itself when gy is 0
            gx = torch.div(gd, tau, out=dx_seq[t])
            gv = gh.sub_(gx)                                 # gd is read (into gx) before gh changes
            del s, h, d, sg, gs, gd
        return dx_seq, gv, None


def _pack_step(s: Tensor) -> Tensor:
    """One step's 0.0 / 1.0 spikes as ``pack_spikes`` lays them out (bit k of byte j is element 8 j + k),
    through revsnn.spikepack's float product (``pack_spikes`` itself goes through a bool cast, slow here)."""
    return pack_bits(s).bits


def _unpack_step(packed: Tensor, shape, dtype: torch.dtype) -> Tensor:
    """``unpack_spikes`` straight to 0.0 / 1.0 of ``dtype`` (revsnn.spikepack's table gather)."""
    return unpack_bits(_Packed(packed, torch.Size(shape), dtype, packed.device, math.prod(shape)))


# --------------------------------------------------------------------------------------------------------
# The node module.


class RevLIFNode(SpikingNeuron, ReversibleModule):
    """The reversible LIF node (equations in the module docstring) over time-first ``[T, B, ...]``.

    Elementwise: any shape after ``[T, B]``. Returns the real-valued outputs ``y = s + d``; the membrane
    is kept between calls like every ``SpikingNeuron`` (``reset()`` clears it). With
    ``reversible=True`` and gradients needed it trains through ``_RevLIFFn`` (memory: output + final
    state + 1 bit per neuron per step); otherwise it is the plain-autograd BPTT twin.
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        surrogate: Surrogate = Sigmoid(4.0),
        detach_reset: bool = True,
        reversible: bool = True,
    ):
        super().__init__(v_threshold, surrogate)
        if not tau >= 1.0:
            raise ValueError(f"RevLIFNode needs tau >= 1 (a decay factor 1/tau in (0, 1]); got tau={tau}.")
        self.tau = float(tau)
        self.detach_reset = detach_reset
        self.reversible = reversible

    def step_full(self, x: Tensor, v: Tensor, stored_spike: Optional[Tensor] = None):
        return revlif_step(x, v, self.tau, self.v_threshold, self.surrogate, self.detach_reset, stored_spike)

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(y, v_next, h)``, the ``SpikingNeuron`` step signature (``y`` in place of the spike)."""
        y, v_next, _, h = self.step_full(x, v)
        return y, v_next, h

    @torch.no_grad()
    def spike_train(self, x_seq: Tensor) -> Tensor:
        """The spikes ``s_t`` this node emits for ``x_seq`` from rest (its output ``y`` carries them plus
        the charge increment): what an exported graph's threshold population must reproduce."""
        v, spikes = torch.zeros_like(x_seq[0]), []
        for x in x_seq:
            _, v, s, _ = self.step_full(x, v)
            spikes.append(s)
        return torch.stack(spikes)

    def inverse_step(self, y: Tensor, v_next: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        return revlif_inverse(y, v_next, s, self.tau, self.v_threshold)

    def forward(self, x_seq: Tensor) -> Tensor:
        if x_seq.dim() < 2 or x_seq.shape[0] == 0:
            raise ValueError(f"RevLIFNode expects a time-first tensor [T, B, ...] with T >= 1, got shape "
                             f"{tuple(x_seq.shape)}.")
        x_seq = stream_dtype(x_seq)  # the membrane is rebuilt by the inverse map: float32 under autocast
        v0 = torch.zeros_like(x_seq[0]) if self.v is None else self.v
        needs_grad = torch.is_grad_enabled() and (x_seq.requires_grad or v0.requires_grad)
        if self.reversible and needs_grad:
            y_seq, v = _RevLIFFn.apply(x_seq, v0, self)
        else:
            v, ys = v0, []
            for x in x_seq:
                y, v, _, _ = self.step_full(x, v)
                ys.append(y)
            y_seq = torch.stack(ys)
        self.v = v.detach()
        return y_seq

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, v_threshold={self.v_threshold}, surrogate={self.surrogate}, "
                f"detach_reset={self.detach_reset}, reversible={self.reversible}")


# --------------------------------------------------------------------------------------------------------
# A small network for the digits: flatten -> [Linear -> RevLIF] x depth -> Linear, mean over time.


class RevNodeNet(nn.Module):
    """``[T, B, C, H, W]`` -> logits ``[B, num_classes]``: an MLP of reversible nodes, readout mean over T."""

    def __init__(self, input_shape: Iterable[int], num_classes: int, hidden: Iterable[int],
                 neuron: dict[str, Any]):
        super().__init__()
        spec = dict(neuron)
        if "surrogate" in spec and isinstance(spec["surrogate"], dict):
            spec["surrogate"] = make_surrogate(spec["surrogate"])
        width = math.prod(input_shape)
        layers: list[nn.Module] = [TimeDistributed(nn.Flatten())]
        for h in hidden:
            layers += [TimeDistributed(nn.Linear(width, h)), RevLIFNode(**spec)]
            width = h
        self.features = nn.Sequential(*layers)
        self.head = TimeDistributed(nn.Linear(width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"RevNodeNet expects [T, B, C, H, W], got shape {tuple(x.shape)}.")
        reset_states(self)
        return self.head(self.features(x)).mean(0)


_NEURON = {"tau": 2.0, "v_threshold": 1.0, "surrogate": {"type": "sigmoid", "alpha": 4.0}, "detach_reset": True}

CONFIGS: dict[str, dict[str, Any]] = {
    "revnode-digits": {
        "family": "revnode",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "hidden": [128, 128],
        "neuron": _NEURON,
        "train": {"epochs": 20, "lr": 0.002, "time_steps": 4, "batch_size": 64, "encoding": "direct"},
    },
}


def build(config: dict[str, Any]) -> RevNodeNet:
    return RevNodeNet(
        input_shape=config["input_shape"],
        num_classes=config["num_classes"],
        hidden=config.get("hidden", [128, 128]),
        neuron=config.get("neuron", _NEURON),
    )


# --------------------------------------------------------------------------------------------------------
# Node-level memory: reversible node vs its BPTT twin vs the standard LIF.


class _Consumer(nn.Module):
    """Stands for the next layer: it keeps the node's output for its own weight gradient."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, y: Tensor) -> Tensor:
        return y * self.w


def _retained(node: nn.Module, x: Tensor, consumer: Optional[nn.Module]) -> tuple[int, int]:
    exclude = [node] if consumer is None else [node, consumer]
    with ActivationMeter(exclude=exclude) as meter:
        out = node(x)
        if consumer is not None:
            out = consumer(out)
    out.float().sum().backward()
    return meter.nbytes, out.numel() * out.element_size()


def _step_by_step(neuron: SpikingNeuron) -> SpikingNeuron:
    neuron.fused = False
    return neuron


def node_memory_comparison(
    shape: tuple[int, ...] = (32, 256),
    time_steps: Iterable[int] = (1, 4, 16, 64),
    tau: float = 2.0,
    v_threshold: float = 1.0,
    surrogate: Surrogate = Sigmoid(4.0),
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[str, Any]:
    """Bytes retained for backward by one node over an input ``[T, *shape]``, for each T.

    Three nodes on the same input: ``reversible`` (RevLIFNode), ``bptt_twin`` (RevLIFNode with
    ``reversible=False``) and ``lif`` (``revsnn.neurons.LIF``, hard reset, plain BPTT), all with the
    same tau, threshold and surrogate. Two views per node:

    - ``*_bytes``: the node alone (the reversible node's count includes its output ``y``);
    - ``*_beyond_output_bytes``: node followed by a layer that keeps the node's output for its weight
      gradient (as every Linear/conv does), minus that output: what the node costs in a network.

    Ratios are ``lif / reversible`` and ``bptt_twin / reversible`` for both views.
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    for T in time_steps:
        x = (v_threshold * (0.5 + 2.0 * torch.rand(T, *shape, generator=g, dtype=torch.float64))).to(dtype)
        row: dict[str, Any] = {"time_steps": int(T)}
        makers = {
            "reversible": lambda: RevLIFNode(tau, v_threshold, surrogate, reversible=True),
            "bptt_twin": lambda: RevLIFNode(tau, v_threshold, surrogate, reversible=False),
            # step-by-step autograd, as BPTT runs in the peer libraries; revsnn's own fused LIF keeps one
            # float per neuron and step instead of two
            "lif": lambda: _step_by_step(LIF(tau, v_threshold, surrogate=surrogate)),
        }
        for name, make in makers.items():
            alone, _ = _retained(make(), x.clone().requires_grad_(True), None)
            with_next, out_bytes = _retained(make(), x.clone().requires_grad_(True), _Consumer())
            row[f"{name}_bytes"] = alone
            row[f"{name}_beyond_output_bytes"] = with_next - out_bytes
        with torch.no_grad():
            s = LIF(tau, v_threshold, surrogate=surrogate)(x)
        row["output_bytes"] = x.numel() * x.element_size()
        row["lif_spike_rate"] = float(s.mean())
        for view in ("bytes", "beyond_output_bytes"):
            rev = row[f"reversible_{view}"]
            suffix = "" if view == "bytes" else "_beyond_output"
            row[f"ratio_lif{suffix}"] = row[f"lif_{view}"] / rev
            row[f"ratio_twin{suffix}"] = row[f"bptt_twin_{view}"] / rev
        rows.append(row)
    return {
        "shape": list(shape),
        "dtype": str(dtype).replace("torch.", ""),
        "tau": tau,
        "v_threshold": v_threshold,
        "surrogate": repr(surrogate),
        "rows": rows,
    }
