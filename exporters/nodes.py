"""Primitives NIR lacks, as in-memory graph nodes of our own (DESIGN §3).

Each is a small typed dataclass in NIR's style. They exist only in memory: the NIR writer and the norse
target refuse them with a sentence pointing to ONNX, and the reference executor runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np
from nir import NIRNode

__all__ = ["MaxPool2d", "SpikingAttention", "LoihiNeuron", "loihi_update", "CUSTOM_NODES", "NEURON_TYPES"]


@dataclass(eq=False)
class MaxPool2d(NIRNode):
    """Max pooling over (C, H, W), torch semantics (padding never wins a maximum)."""

    kernel_size: np.ndarray
    stride: np.ndarray
    padding: np.ndarray
    in_shape: np.ndarray   # (C, H, W)
    out_shape: np.ndarray

    def __post_init__(self):
        self.input_type = {"input": np.asarray(self.in_shape)}
        self.output_type = {"output": np.asarray(self.out_shape)}


@dataclass(eq=False)
class SpikingAttention(NIRNode):
    """Spiking self-attention without softmax over tokens (C, N); input spikes ``S``, output spikes.

    Per step: ``q = LIF(Wq S + bq)`` and likewise ``k``, ``v`` (three LIF populations, state kept);
    per head ``A = (q kᵀ) v · scale``; output ``LIF_attn(A)``. The LIFs are the contract's
    (``h = v + (x − v)/τ``, spike ``h > θ``, hard reset to 0). The products of two spike maps are what no
    NIR node expresses.
    """

    wq: np.ndarray   # (C, C)
    bq: np.ndarray   # (C,)
    wk: np.ndarray
    bk: np.ndarray
    wv: np.ndarray
    bv: np.ndarray
    tau: float
    qkv_threshold: float
    v_threshold: np.ndarray  # (C, N): the output population's threshold
    heads: int
    scale: float

    def __post_init__(self):
        shape = np.asarray(np.shape(self.v_threshold))
        self.input_type = {"input": shape}
        self.output_type = {"output": shape}


@dataclass(eq=False)
class LoihiNeuron(NIRNode):
    """A population of Loihi 2 CUBA neurons in fixed point, as lava-nc's bit-accurate LIF model computes them
    with the parameters lava-dl's netx gives it (``du = i_decay - 1`` plus Loihi's offset of 1, ``dv = v_decay``,
    ``bias_exp = 6``). Its input is the synaptic sum ``a`` in weight mantissas (an integer). Per step::

        u = wrap24(dec(u, i_decay) + (a << 6))
        v = clip24(dec(v, v_decay) + u + (bias << 6))
        s = v > (v_th_mant << 6);  v = 0 where s       # strict threshold, hard reset; u is not reset

    with ``dec(x, d) = sign(x (4096 - d)) · (|x (4096 - d)| >> 12)`` (a shift that rounds toward zero).

    ``scale`` maps back to the float contract: a float potential is ``v / 64 / scale``. ``emit`` is
    ``"spikes"`` for a spiking population, ``"potential"`` for a readout whose output is that float
    potential (its threshold is out of reach).
    """

    shape: np.ndarray          # the population's shape
    i_decay: int
    v_decay: int
    v_th_mant: int
    bias: np.ndarray           # integer mantissas, one per neuron (``shape``)
    scale: float = 64.0
    emit: str = "spikes"

    def __post_init__(self):
        self.shape = np.asarray(self.shape, dtype=np.int64)
        self.input_type = {"input": self.shape}
        self.output_type = {"output": self.shape}


STATE_LIMIT = 1 << 23   # 24-bit signed state


def _decay(x, keep: int):
    """``sign(x keep) (|x keep| >> 12)``: Loihi's decay, a shift that rounds toward zero (int64 tensors)."""
    y = x * keep
    return y.sign() * (y.abs() >> 12)


def loihi_update(u, v, a, keep_u: int, keep_v: int, bias, th: int):
    """One step of ``LoihiNeuron`` in int64 tensors, the one copy of that arithmetic: the reference executor
    and the Loihi-aware training forward (``revsnn/finetune.py``) both call it, so they cannot drift apart.

    ``a``: the synaptic sum (integer mantissas); ``bias``: the bias mantissa already shifted (``bias << 6``);
    ``th``: ``v_th_mant << 6``; ``keep_*``: ``4096 - decay``. Returns ``(u, v, s)`` with ``v`` before the
    reset (the caller resets ``v = 0 where s``)."""
    import torch

    u = _decay(u, keep_u) + (a << 6)
    u = torch.where(u > STATE_LIMIT, u - 2 * STATE_LIMIT, u)      # 24-bit wrap-around, as lava models it
    u = torch.where(u <= -STATE_LIMIT, u + 2 * STATE_LIMIT, u)
    v = (_decay(v, keep_v) + u + bias).clamp(-(STATE_LIMIT - 1), STATE_LIMIT - 1)
    return u, v, v > th


CUSTOM_NODES = (MaxPool2d, SpikingAttention, LoihiNeuron)
# The nodes that hold spiking populations (what verify compares, what the ONNX model exposes as spikes).
NEURON_TYPES = (nir.LIF, nir.IF, nir.CubaLIF, nir.Threshold, SpikingAttention, LoihiNeuron)
