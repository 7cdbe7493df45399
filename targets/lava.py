"""The Lava target: runs a netx ``.net`` chain in lava-nc's bit-accurate Loihi 2 simulation (DESIGN §7).

``LavaTarget.load(path)`` reads and checks the file (``exporters/netx_file.py``); ``run(x)`` takes rate-coded
spikes ``[T, B, *input]`` and returns what ``ReferenceExecutor.run`` returns for the quantised reference:
the readout's per-step potential in float units ``[T, B, K]`` and, with ``record=True``, every original
population's spikes ``[T, B, *shape]``.

How a batch runs (one Lava run for all samples, because every ``run`` call costs a round trip through
Lava's process runtime and netx builds its processes once):

- lava-dl's own ``netx.hdf5.Network`` loads the file; a ``RingBuffer`` source feeds ``net.inp`` with the
  samples back to back, in Lava's (x, y, f) = (W, H, C) order, each sample ``T`` steps long;
- every synapse adds one step, so chain layer ``k`` (1-based) holds at step ``s T + k + t`` what the
  zero-delay quantised reference holds at step ``t`` of sample ``s``; the run lasts ``B T + depth`` steps;
- state is cleared between samples by netx's own reset: ``reset_interval = T`` and ``reset_offset = 1``
  make layer ``k`` zero its current and voltage exactly at step ``s T + k``, when sample ``s`` first reaches
  it (lava counts time from 1 and netx offsets each layer by one more). Whatever a layer computed from the
  previous sample's tail before its reset never reaches a layer after that layer's own reset. This also
  keeps a bias from acting before the layer's first input arrives;
- spikes are read with a small sink process of our own per layer (``SpikeFile``, ``targets/lava_sink``: it writes its buffer to a
  file on the last step), the readout's voltage with a ``Monitor``. Lava's own ``RingBuffer`` sink is read
  back with ``Var.get()``, which moves an array through the runtime's channels element by element: ~15 µs
  per value, 20 s for a 20,000-neuron chain over 75 steps, more than the simulation itself.

Only ``Loihi2SimCfg(select_tag="fixed_pt")`` runs netx blocks (they have no floating-point models).
Importing this module installs ``lava_compat`` first, which lava-nc 0.10 and lava-dl 0.6 need on Python 3.11.
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

import contextlib
import io as _io
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from revsnn.targets import lava_compat

lava_compat.install()

from revsnn.targets.lava_sink.spike_file import SpikeFile  # noqa: E402
from revsnn.exporters.netx_file import read_netx  # noqa: E402

__all__ = ["LavaTarget", "LavaRunError", "loihi2_fixed_pt_config"]


class LavaRunError(RevsnnError):
    """Input the Lava target cannot run; one sentence."""


def loihi2_fixed_pt_config():
    """Run config that selects lava's bit-accurate fixed-point process models (what Loihi 2 computes)."""
    from lava.magma.core.run_configs import Loihi2SimCfg

    return Loihi2SimCfg(select_tag="fixed_pt")


def _netx():
    # lava-dl's object-detection package prints a warning about an optional dataset toolbox on import.
    with contextlib.redirect_stdout(_io.StringIO()):
        from lava.lib.dl import netx
    return netx


class LavaTarget:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.chain = read_netx(self.path)
        self.neurons: list[str] = [m.name for layer in self.chain.layers if not layer.readout
                                   for m in layer.members if not m.relay]
        self.timing: dict[str, float] = {}
        self.layer_spikes: list[np.ndarray] = []   # last run, aligned: [T, B, *layer shape] per layer

    @classmethod
    def load(cls, path: str | Path) -> "LavaTarget":
        return cls(path)

    def _stream(self, x: np.ndarray, total: int) -> np.ndarray:
        """``x [T, B, *input]`` as Lava source data ``(*inp shape, total)``: samples back to back."""
        T, B = x.shape[:2]
        steps = x.transpose(1, 0, *range(2, x.ndim)).reshape(T * B, *x.shape[2:])   # sample-major
        if len(self.chain.input_shape) == 3:
            lava = steps.transpose(3, 2, 1, 0)                                         # (W, H, C, steps)
        else:
            lava = steps.reshape(T * B, -1).T                                          # (N, steps)
        data = np.zeros((*lava.shape[:-1], total))
        data[..., : T * B] = lava
        return data

    def run(self, x: torch.Tensor, record: bool = False):
        from lava.magma.core.run_conditions import RunSteps
        from lava.proc import io
        from lava.proc.monitor.process import Monitor

        x = torch.as_tensor(x)
        if x.dim() < 3:
            raise LavaRunError(f"input must be [T, B, ...], got shape {tuple(x.shape)}.")
        expect = int(np.prod(self.chain.input_shape))
        if int(np.prod(x.shape[2:])) != expect:
            raise LavaRunError(f"each step of the input has {int(np.prod(x.shape[2:]))} values, but {self.path.name} "
                               f"takes {expect}.")
        xs = x.detach().cpu().numpy()
        if not np.isin(xs, (0.0, 1.0)).all():
            raise LavaRunError("Loihi receives spikes: the input must be 0/1 (rate-coded); real-valued input cannot "
                               "stream into it.")
        T, B = xs.shape[:2]
        if len(self.chain.input_shape) == 3:
            xs = xs.reshape(T, B, *self.chain.input_shape)
        depth = self.chain.depth
        total = B * T + depth
        t0 = time.perf_counter()
        netx = _netx()
        net = netx.hdf5.Network(net_config=str(self.path), reset_interval=T, reset_offset=1)
        source = io.source.RingBuffer(data=self._stream(xs, total))
        source.s_out.connect(net.inp)
        folder = tempfile.TemporaryDirectory(prefix="revsnn-lava-")
        sinks = []
        for k, layer in enumerate(net.layers[:-1]):
            if record:
                path = str(Path(folder.name) / f"layer{k}.npy")
                sink = SpikeFile(shape=layer.neuron.s_out.shape, steps=total, path=path)
                layer.neuron.s_out.connect(sink.a_in)
                sinks.append(path)
        readout = net.layers[-1].neuron
        monitor = Monitor()
        monitor.probe(readout.v, total)
        t1 = time.perf_counter()
        try:
            # One step first, so that Lava's compile and process start-up are timed apart from the steps.
            net.run(condition=RunSteps(num_steps=1), run_cfg=loihi2_fixed_pt_config())
            t15 = time.perf_counter()
            net.run(condition=RunSteps(num_steps=total - 1), run_cfg=loihi2_fixed_pt_config())
            t2 = time.perf_counter()
            v = np.asarray(monitor.get_data()[readout.name]["v"])        # (total, *readout shape)
        finally:
            t3 = time.perf_counter()
            net.stop()
            t4 = time.perf_counter()
        raw = [np.load(p) for p in sinks]                                # (*layer shape in Lava order, total)
        folder.cleanup()
        self.timing = {"build": t1 - t0, "compile": t15 - t1, "run": t2 - t15, "stop": t4 - t3, "steps": total,
                       "seconds_per_step": (t2 - t15) / (total - 1)}

        def aligned(series: np.ndarray, k: int) -> np.ndarray:
            """``series [total, ...]`` of chain layer ``k`` (1-based) -> ``[T, B, ...]`` on the reference's clock."""
            idx = (np.arange(B)[None, :] * T + np.arange(T)[:, None] + k)       # [T, B]
            return series[idx]

        readout_layer = self.chain.layers[-1]
        scale = next(m.scale for m in readout_layer.members if not m.relay)
        outputs = torch.as_tensor(aligned(v.reshape(total, -1), depth) / 64.0 / scale, dtype=torch.float64)
        if not record:
            return outputs
        self.layer_spikes = []
        spikes: dict[str, torch.Tensor] = {}
        for k, (layer, data) in enumerate(zip(self.chain.layers[:-1], raw)):
            series = np.moveaxis(data, -1, 0)                                  # (total, *Lava shape)
            if layer.kind == "conv":
                series = series.transpose(0, 3, 2, 1)                          # (total, C, H, W)
            steps = torch.as_tensor(aligned(series.astype(np.float64), k + 1))
            self.layer_spikes.append(steps)
            for m in layer.members:
                if not m.relay:
                    spikes[m.name] = self.chain.unpack(k, m, steps)
        return outputs, spikes


# --------------------------------------------------------------------------------------------------------
# Registry entry (targets/registry.py).

TARGET_INFO = {"lava": "the .net file (lava-dl netx) in Lava's bit-accurate Loihi 2 simulation (fixed point), "
                       "against the quantised reference"}


class _LavaEntry:
    name = "lava"
    compare_with = "loihi"
    tolerance = 0.0
    suffix = ".net"
    description = TARGET_INFO["lava"]

    def unavailable(self):
        return None

    def accepts(self, path) -> bool:
        return Path(path).suffix == self.suffix

    def export(self, graph, folder: Path, **options) -> Path:
        """``graph`` is the float graph: quantised, relayed into a chain (``synapses`` conv or dense), written."""
        from revsnn.exporters.loihi import quantize
        from revsnn.exporters.loihi_chain import build_chain
        from revsnn.exporters.netx_file import write_netx

        chain = build_chain(quantize(graph), options.get("synapses", "conv"))
        return write_netx(chain, Path(folder) / "model.net", **options.get("writer", {}))

    def run(self, source, x: torch.Tensor, **options):
        from .registry import Trace

        lava = LavaTarget.load(source)
        steps, spikes = lava.run(x, record=True)
        overhead = lava.chain.overhead()
        info = {"synapses": "conv" if any(layer.kind == "conv" for layer in lava.chain.layers) else "dense",
                "chain_layers": lava.chain.depth, "latency_steps": lava.chain.depth,
                "relay_neuron_overhead": overhead["neuron_overhead"],
                "relay_synapse_overhead": overhead["synapse_overhead"],
                "lava_steps": lava.timing.get("steps"), "lava_seconds_per_step": lava.timing.get("seconds_per_step")}
        return Trace(steps, spikes, info=info, layer_spikes=list(lava.layer_spikes))


def target(name: str):
    return _LavaEntry()
