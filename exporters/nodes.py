"""Primitives NIR lacks, as in-memory graph nodes of our own (DESIGN §3).

Each is a small typed dataclass in NIR's style. They exist only in memory: the NIR writer and the norse
target refuse them with a sentence pointing to ONNX, and the reference executor runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nir import NIRNode

__all__ = ["MaxPool2d", "SpikingAttention", "CUSTOM_NODES"]


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


CUSTOM_NODES = (MaxPool2d, SpikingAttention)
