"""The onnxruntime target: runs the one-step ``.onnx`` model (``exporters/onnx_file.py``) with the time loop in
the host (DESIGN §7).

``OnnxRuntimeTarget.load(path_or_model)`` reads the file (or takes a ``ModelProto``), adds every neuron
node's spike tensor ``spikes.<node>`` as an extra graph output (unless the model already has it), and opens an
``InferenceSession`` on the CPU execution provider, with ``CUDAExecutionProvider`` first when onnxruntime has
it. The states start at zeros (as the file's ``metadata_props["initial_state"]`` says) and are carried from
``state_out.*`` into ``state.*`` between steps. Float32, as the file.

``run(x)`` returns what ``ReferenceExecutor.run`` returns: per-step outputs ``[T, B, ...]`` and, with
``record=True``, each neuron node's spikes ``[T, B, ...]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from revsnn.exporters.onnx_file import INPUT_NAME, OUTPUT_NAME, read_onnx

__all__ = ["OnnxRuntimeTarget", "default_providers"]


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


class OnnxRuntimeTarget:
    """``reset()``, then ``step(x_t)`` per time step; ``spikes`` holds each neuron node's last spikes."""

    def __init__(self, model: onnx.ModelProto, providers: Optional[Sequence[str]] = None):
        props = {p.key: p.value for p in model.metadata_props}
        self.metadata = props
        self.neurons: list[str] = json.loads(props.get("neurons", "[]"))
        model = onnx.ModelProto.FromString(model.SerializeToString())  # do not alter the caller's model
        have = {o.name for o in model.graph.output}
        for n in self.neurons:
            if f"spikes.{n}" not in have:
                model.graph.output.append(helper.make_tensor_value_info(f"spikes.{n}", TensorProto.FLOAT, None))
        self.model = model
        self.providers = list(providers) if providers is not None else default_providers()
        self.session = ort.InferenceSession(model.SerializeToString(), providers=self.providers)
        self.state_names = [i.name for i in self.session.get_inputs() if i.name != INPUT_NAME]
        self.state_shapes = {i.name: [d for d in i.shape[1:]] for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.state: dict[str, np.ndarray] = {}
        self.spikes: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, path_or_model: Union[str, Path, onnx.ModelProto],
             providers: Optional[Sequence[str]] = None) -> "OnnxRuntimeTarget":
        model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else read_onnx(path_or_model)
        return cls(model, providers)

    def reset(self) -> None:
        self.state = {}
        self.spikes = {}

    def step(self, x: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
        """One time step: ``x`` is ``[B, *input_shape]``; returns the output ``[B, ...]`` (float32)."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self.state:
            self.state = {n: np.zeros((x.shape[0], *self.state_shapes[n]), dtype=np.float32)
                          for n in self.state_names}
        feed = {INPUT_NAME: x, **self.state}
        res = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        self.state = {n: res["state_out." + n[len("state."):]] for n in self.state_names}
        self.spikes = {n: torch.from_numpy(res[f"spikes.{n}"]) for n in self.neurons}
        return torch.from_numpy(res[OUTPUT_NAME])

    def run(self, x: Union[torch.Tensor, np.ndarray], record: bool = False):
        """Run ``x`` ``[T, B, ...]`` from reset. Returns the per-step outputs ``[T, B, ...]`` and, with
        ``record``, each neuron node's spikes ``[T, B, ...]``."""
        self.reset()
        outs, rec = [], {n: [] for n in self.neurons}
        for x_t in x:
            outs.append(self.step(x_t))
            if record:
                for n in self.neurons:
                    rec[n].append(self.spikes[n])
        outputs = torch.stack(outs)
        if not record:
            return outputs
        return outputs, {n: torch.stack(v) for n, v in rec.items()}
