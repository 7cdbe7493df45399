"""What the targets that run the one-step ONNX file share (onnxruntime, onnx-reference): the file's float type,
its format, and the registry entry around a runtime class with ``load(path)`` and ``run(x, record)``.
No runtime is imported here, so onnx-reference stays independent of onnxruntime."""

from __future__ import annotations

from pathlib import Path

import torch

from revsnn.exporters.onnx_file import UNROLLED_FORMAT, read_onnx

__all__ = ["onnx_float", "onnx_format", "OnnxStepEntry"]


def onnx_float(graph) -> str:
    """float64 where onnxruntime's CPU build can run every op in double (it has no float64 convolution or
    pooling), float32 otherwise: the closest the ONNX targets can come to the float64 reference."""
    import nir

    from revsnn.exporters.nodes import CUSTOM_NODES

    kinds = (nir.Conv1d, nir.Conv2d, nir.AvgPool2d, nir.SumPool2d, *CUSTOM_NODES)
    return "float32" if any(isinstance(n, kinds) for n in graph.nodes.values()) else "float64"


def onnx_format(path) -> str:
    """The ``format`` a revsnn ONNX file records (step or unrolled)."""
    return {p.key: p.value for p in read_onnx(path).metadata_props}.get("format", "")


class OnnxStepEntry:
    """The one-step ONNX file, run by a runtime class with ``load(path)`` and ``run(x, record)``."""

    compare_with = "float"
    tolerance = 1e-5
    suffix = ".onnx"

    def __init__(self, name: str, runtime, description: str = ""):
        self.name, self.runtime, self.description = name, runtime, description

    def unavailable(self):
        return None

    def accepts(self, path) -> bool:
        return Path(path).suffix == self.suffix and onnx_format(path) != UNROLLED_FORMAT

    def export(self, graph, folder: Path, **options) -> Path:
        from revsnn.exporters.onnx_file import graph_to_onnx_step, write_onnx

        path = Path(folder) / "model.onnx"
        if not path.exists():   # the step file is shared by every target that runs it
            write_onnx(graph_to_onnx_step(graph, dtype=onnx_float(graph)), path, **options.get("writer", {}))
        return path

    def run(self, source, x: torch.Tensor, **options):
        from .registry import Trace

        steps, spikes = self.runtime.load(source).run(x, record=True)
        return Trace(steps.cpu().double(), {k: v.cpu().double() for k, v in spikes.items()})
