"""Will it fit: the Loihi 2 resources of a netx chain (``exporters/loihi_chain.py``, or a ``.net`` file read back).

Per chain layer (one netx layer: one neuron group and the synapse that feeds it) and in total:

- neurons, split into the model's populations and the relays the chain adds (``Member.relay``);
- synapses: nonzero integer weights into the layer (a convolution counted per post-synaptic neuron, as the
  chip stores them), split the same way by post-synaptic row;
- synaptic memory: every synapse at the layer's weight precision (the bits of its largest magnitude, plus a
  sign bit when weights of both signs occur). This is an ESTIMATE and a lower bound of what Lava's compiler
  allocates: it leaves out synapse index/format overhead, and gives no credit for convolutional weight
  sharing, which Intel's compiler may apply; neither figure is public;
- fan-in (synapses into one neuron) and fan-out (synapses one neuron of the layer drives in the next layer);
- neuro-cores: the layer's neurons in order, packed greedily into cores that each hold at most
  ``NEURONS_PER_CORE`` neurons and ``SYNAPTIC_MEMORY_PER_CORE`` bytes of the synapses into them (netx places
  each layer on cores of its own, so layers do not share a core); chips: the cores, neurons and synapses
  against the per-chip figures.

Hard limits (``require_fits``): one neuron whose incoming synapses do not fit in one core's synaptic memory
cannot be mapped at all (a neuron's synapses live on its own core). Needing more than one chip is not an
error: Loihi 2 systems connect chips; the report says how many.

The limits are Intel's published figures as far as public sources give them; each cites its source below,
and what could not be confirmed is marked UNCONFIRMED.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as tf

from .loihi import LoihiExportError
from .loihi_chain import LoihiChain, _row_synapses

__all__ = ["NEURO_CORES_PER_CHIP", "NEURONS_PER_CHIP", "SYNAPSES_PER_CHIP", "NEURONS_PER_CORE",
           "SYNAPTIC_MEMORY_PER_CORE", "LIMIT_SOURCES", "LayerResources", "ChainResources", "resources",
           "require_fits", "LoihiResourceError"]

# 128 neuro-cores per Loihi 2 chip (plus 6 embedded x86 cores, which run no neurons). Sources:
# open-neuromorphic.org, "Loihi 2 - Intel" (https://open-neuromorphic.org/neuromorphic-computing/hardware/loihi-2-intel/);
# WikiChip, "Loihi 2" (https://en.wikichip.org/wiki/intel/loihi_2): "a 128-neuromorphic cores many-core IC". Confirmed.
NEURO_CORES_PER_CHIP = 128
# Up to 1 million neurons per chip. Same two sources ("A single Loihi 2 chip supports up to 1 million neurons
# and 120 million synapses"; WikiChip: 1,000,000 neurons). Confirmed.
NEURONS_PER_CHIP = 1_000_000
# Up to 120 million synapses per chip. Same two sources. Confirmed.
SYNAPSES_PER_CHIP = 120_000_000
# Up to 8192 neurons per neuro-core. PARTLY CONFIRMED: a survey summary of Shrestha et al. 2023 / Davies et al.
# (https://www.emergentmind.com/topics/intel-loihi-2) says "up to ~8,000 per core"; 1M neurons / 128 cores =
# 7,812.5 agrees in size. The exact 8192 (2^13) is from Intel's Loihi 2 brief as commonly quoted, which we
# could not read ourselves.
NEURONS_PER_CORE = 8192
# Synaptic memory per neuro-core, in bytes. UNCONFIRMED: the one public figure found
# (https://fbhtechinfo.com/intels-new-loihi-2-chip-uses-1-million-neurons, a news report of Intel's
# announcement) is "128 Kbyte of local SRAM ... per core, flexibly partitioned" between synapses, neuron state
# and routing; a figure of 192 KB quoted elsewhere appears in no source we could find. We take the smaller,
# 128 KiB, all of it for synapses: a model that fails this check certainly does not fit, one that passes may
# still need more cores once neuron state takes its share.
SYNAPTIC_MEMORY_PER_CORE = 128 * 1024

LIMIT_SOURCES = {
    "NEURO_CORES_PER_CHIP": "open-neuromorphic.org Loihi 2 page; WikiChip Loihi 2 (confirmed)",
    "NEURONS_PER_CHIP": "open-neuromorphic.org Loihi 2 page; WikiChip Loihi 2 (confirmed)",
    "SYNAPSES_PER_CHIP": "open-neuromorphic.org Loihi 2 page; WikiChip Loihi 2 (confirmed)",
    "NEURONS_PER_CORE": "~8,000 per core in a survey of Shrestha et al. 2023; 8192 exact not confirmed",
    "SYNAPTIC_MEMORY_PER_CORE": "128 KB SRAM per core (news report of Intel's announcement); UNCONFIRMED",
}


class LoihiResourceError(LoihiExportError):
    """A chain that breaks one of Loihi 2's hard limits; the message names the layer and the limit."""


@dataclass
class LayerResources:
    index: int                  # 1-based chain layer
    kind: str                   # conv | dense (readout: the last dense layer)
    readout: bool
    shape: tuple[int, ...]
    neurons: int                # model populations
    relay_neurons: int
    synapses: int               # into the model populations
    relay_synapses: int         # into the relays
    weight_bits: int
    synaptic_bytes: int         # estimate: (synapses + relay synapses) x weight_bits / 8
    fan_in_max: int
    fan_in_mean: float
    fan_out_max: int            # synapses one neuron of this layer drives in the next layer (0 for the readout)
    fan_out_mean: float
    cores: int
    max_neuron_bytes: int       # the largest single neuron's incoming synapses, in bytes

    @property
    def total_neurons(self) -> int:
        return self.neurons + self.relay_neurons

    @property
    def total_synapses(self) -> int:
        return self.synapses + self.relay_synapses


@dataclass
class ChainResources:
    layers: list[LayerResources]
    input_neurons: int
    input_fan_out_max: int
    limits: dict = field(default_factory=lambda: {
        "neurons_per_core": NEURONS_PER_CORE, "synaptic_memory_per_core": SYNAPTIC_MEMORY_PER_CORE,
        "neuro_cores_per_chip": NEURO_CORES_PER_CHIP, "neurons_per_chip": NEURONS_PER_CHIP,
        "synapses_per_chip": SYNAPSES_PER_CHIP})

    def total(self, key: str):
        return sum(getattr(layer, key) for layer in self.layers)

    @property
    def cores(self) -> int:
        return self.total("cores")

    @property
    def chips(self) -> int:
        """Chips needed: by cores, by neurons and by synapses, whichever needs most."""
        return max(math.ceil(self.cores / self.limits["neuro_cores_per_chip"]),
                   math.ceil(self.total("total_neurons") / self.limits["neurons_per_chip"]),
                   math.ceil(self.total("total_synapses") / self.limits["synapses_per_chip"]), 1)

    def violations(self) -> list[str]:
        """One sentence per hard limit broken (empty: the chain maps)."""
        out = []
        cap = self.limits["synaptic_memory_per_core"]
        for layer in self.layers:
            if layer.max_neuron_bytes > cap:
                out.append(f"chain layer {layer.index} ({layer.kind}, {'×'.join(map(str, layer.shape))}) has a neuron "
                           f"whose {layer.fan_in_max:,} incoming synapses need {layer.max_neuron_bytes:,} bytes at "
                           f"{layer.weight_bits}-bit weights, more than one Loihi 2 neuro-core's synaptic memory "
                           f"({cap:,} bytes, SYNAPTIC_MEMORY_PER_CORE); shrink that layer's input or fan-in.")
        return out

    def as_json(self) -> dict:
        return {"layers": [{**asdict(layer), "shape": list(layer.shape)} for layer in self.layers],
                "input_neurons": self.input_neurons, "input_fan_out_max": self.input_fan_out_max,
                "totals": {k: self.total(k) for k in ("neurons", "relay_neurons", "synapses", "relay_synapses",
                                                      "synaptic_bytes", "cores")},
                "chips": self.chips, "limits": dict(self.limits), "violations": self.violations()}


def _weight_bits(w: np.ndarray) -> int:
    nz = w[w != 0]
    if nz.size == 0:
        return 1
    bits = int(np.abs(nz).max()).bit_length()
    return bits + (1 if (nz < 0).any() and (nz > 0).any() else 0)


def _column_synapses(layer, prev_shape: tuple[int, ...]) -> np.ndarray:
    """Per pre-synaptic neuron of ``prev_shape`` (flattened), its nonzero outgoing weights in ``layer``."""
    if layer.kind == "dense":
        return np.count_nonzero(layer.weight, axis=0)
    # A convolution connects one input and one output position through at most one kernel tap, so the
    # transpose of the 0/1 kernel applied to ones counts each input's outgoing synapses exactly.
    x = torch.zeros(1, *prev_shape, dtype=torch.float64, requires_grad=True)
    k = torch.as_tensor((layer.weight != 0).astype(np.float64))
    tf.conv2d(x, k, None, layer.stride, layer.padding, layer.dilation).sum().backward()
    return x.grad.reshape(-1).round().numpy().astype(np.int64)


def _pack_cores(row_bytes: np.ndarray, neurons_per_core: int, bytes_per_core: int) -> int:
    """Greedy, in neuron order: open a new core when the next neuron would overflow neurons or memory.
    (A neuron alone over the memory gets a core of its own here; ``violations`` reports it.)"""
    cores, count, used = 0, 0, 0
    for b in row_bytes.tolist():
        if cores == 0 or count + 1 > neurons_per_core or used + b > bytes_per_core:
            cores, count, used = cores + 1, 0, 0
        count, used = count + 1, used + b
    return cores


def resources(chain: LoihiChain, neurons_per_core: Optional[int] = None,
              bytes_per_core: Optional[int] = None) -> ChainResources:
    """The resources of every chain layer and in total (see the module docstring); the per-core limits
    default to ``NEURONS_PER_CORE`` and ``SYNAPTIC_MEMORY_PER_CORE``."""
    neurons_per_core = NEURONS_PER_CORE if neurons_per_core is None else int(neurons_per_core)
    bytes_per_core = SYNAPTIC_MEMORY_PER_CORE if bytes_per_core is None else int(bytes_per_core)
    layers: list[LayerResources] = []
    prev = tuple(chain.input_shape)
    fan_outs: list[np.ndarray] = []
    for k, layer in enumerate(chain.layers, 1):
        fan_outs.append(_column_synapses(layer, prev))
        prev = tuple(layer.shape)
    prev = tuple(chain.input_shape)
    for k, layer in enumerate(chain.layers, 1):
        rows = _row_synapses(layer, prev)
        bits = _weight_bits(layer.weight)
        relay_mask = np.zeros(rows.size, dtype=bool)
        for m in layer.members:
            if m.relay:
                lo, hi = layer.flat_range(m)
                relay_mask[lo:hi] = True
        row_bytes = np.ceil(rows * bits / 8).astype(np.int64)
        out = fan_outs[k] if k < len(chain.layers) else np.zeros(rows.size, dtype=np.int64)
        layers.append(LayerResources(
            index=k, kind=layer.kind, readout=bool(layer.readout), shape=tuple(int(v) for v in layer.shape),
            neurons=int((~relay_mask).sum()), relay_neurons=int(relay_mask.sum()),
            synapses=int(rows[~relay_mask].sum()), relay_synapses=int(rows[relay_mask].sum()),
            weight_bits=bits, synaptic_bytes=int(math.ceil(int(rows.sum()) * bits / 8)),
            fan_in_max=int(rows.max()), fan_in_mean=float(rows.mean()),
            fan_out_max=int(out.max()) if out.size else 0, fan_out_mean=float(out.mean()) if out.size else 0.0,
            cores=_pack_cores(row_bytes, neurons_per_core, bytes_per_core), max_neuron_bytes=int(row_bytes.max())))
        prev = tuple(layer.shape)
    limits = {"neurons_per_core": neurons_per_core, "synaptic_memory_per_core": bytes_per_core,
              "neuro_cores_per_chip": NEURO_CORES_PER_CHIP, "neurons_per_chip": NEURONS_PER_CHIP,
              "synapses_per_chip": SYNAPSES_PER_CHIP}
    return ChainResources(layers, int(np.prod(chain.input_shape)), int(fan_outs[0].max()), limits)


def require_fits(chain: LoihiChain) -> ChainResources:
    """The chain's resources; raises ``LoihiResourceError`` (one sentence) if it breaks a hard limit."""
    res = resources(chain)
    problems = res.violations()
    if problems:
        raise LoihiResourceError(problems[0])
    return res
