"""The onnx-reference target: runs the one-step ``.onnx`` model in onnx's own ``ReferenceEvaluator`` (DESIGN §7).

``onnx.reference.ReferenceEvaluator`` is the ONNX project's own implementation of its operators in numpy,
written independently of onnxruntime. Running the very file that ``exporters/onnx_file.py`` writes through
it is a second, independent reading of the ONNX semantics: where onnxruntime and this target agree with
the reference executor, the file means what the ONNX specification says, not what one runtime does.

The interface is the one of ``targets/onnxruntime.py: OnnxRuntimeTarget``: ``load(path_or_model)``,
``reset()``, ``step(x_t)`` returning the output ``[B, ...]``, ``neurons`` (the file's neuron nodes),
``spikes`` (each neuron node's last spikes), and ``run(x, record)`` through ``targets/stepping.run_steps``.
The states start at zeros, as the file's ``metadata_props["initial_state"]`` says, and are carried from
``state_out.*`` into ``state.*`` between steps. The arithmetic is the file's float type: float64 when the
file is float64 (the evaluator has float64 convolution and pooling, unlike onnxruntime's CPU build).

The evaluator is slow (a Python loop over the nodes, numpy per op): use it on small graphs and few samples.
This module imports neither onnxruntime nor torch's ONNX exporter, so that nothing of onnxruntime is in
the loop; it only reads the file's conventions (names, metadata) from the ONNX writer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from revsnn.exporters.onnx_file import INPUT_NAME, OUTPUT_NAME, UNROLLED_FORMAT, ONNXFileError, read_onnx

from .stepping import run_steps

__all__ = ["OnnxReferenceTarget"]

_FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}


class OnnxReferenceTarget:
    """``reset()``, then ``step(x_t)`` per time step; ``spikes`` holds each neuron node's last spikes."""

    def __init__(self, model: onnx.ModelProto):
        props = {p.key: p.value for p in model.metadata_props}
        if props.get("format") == UNROLLED_FORMAT:
            raise ONNXFileError("this is an unrolled ONNX model (the time loop is inside it); the onnx-reference "
                                "target runs the one-step model (`revsnn export onnx --mode step`).")
        self.metadata = props
        self.neurons: list[str] = json.loads(props.get("neurons", "[]"))
        model = onnx.ModelProto.FromString(model.SerializeToString())  # do not alter the caller's model
        graph = model.graph
        elem = graph.input[0].type.tensor_type.elem_type
        if elem not in _FLOATS:
            raise ONNXFileError(f"the model's input {graph.input[0].name!r} has element type "
                                f"{TensorProto.DataType.Name(elem)}; revsnn's ONNX files are float32 or float64, "
                                "export it again.")
        self.float = _FLOATS[elem]
        # Every neuron's spike tensor as an extra output (the writer names them spikes.<node>), so that the
        # spikes of every population can be compared, as the onnxruntime target does.
        have = {o.name for o in graph.output}
        for n in self.neurons:
            if f"spikes.{n}" not in have:
                graph.output.append(helper.make_tensor_value_info(f"spikes.{n}", elem, None))
        self.model = model
        self.state_names = [i.name for i in graph.input if i.name != INPUT_NAME]
        # batch-free state shapes from the declared inputs: ["batch", d1, d2, ...]
        self.state_shapes = {i.name: [int(d.dim_value) for d in i.type.tensor_type.shape.dim[1:]]
                             for i in graph.input if i.name != INPUT_NAME}
        self.output_names = [o.name for o in graph.output]
        self.session = ReferenceEvaluator(model)
        self.state: dict[str, np.ndarray] = {}
        self.spikes: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, path_or_model: Union[str, Path, onnx.ModelProto]) -> "OnnxReferenceTarget":
        model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else read_onnx(path_or_model)
        return cls(model)

    def reset(self) -> None:
        self.state = {}
        self.spikes = {}

    def step(self, x: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
        """One time step: ``x`` is ``[B, *input_shape]``; returns the output ``[B, ...]`` in the model's
        float type."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=self.float)
        if not self.state:
            self.state = {n: np.zeros((x.shape[0], *self.state_shapes[n]), dtype=self.float)
                          for n in self.state_names}
        feed = {INPUT_NAME: x, **self.state}
        res = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        self.state = {n: np.asarray(res["state_out." + n[len("state."):]], dtype=self.float)
                      for n in self.state_names}
        self.spikes = {n: torch.from_numpy(np.ascontiguousarray(res[f"spikes.{n}"])) for n in self.neurons}
        return torch.from_numpy(np.ascontiguousarray(res[OUTPUT_NAME]))

    def run(self, x: Union[torch.Tensor, np.ndarray], record: bool = False):
        """Run ``x`` ``[T, B, ...]`` from reset. Returns the per-step outputs ``[T, B, ...]`` and, with
        ``record``, each neuron node's spikes ``[T, B, ...]``."""
        return run_steps(self, x, record)


# --------------------------------------------------------------------------------------------------------
# Registry entry (targets/registry.py).

TARGET_INFO = {"onnx-reference": "the one-step .onnx file in onnx's own ReferenceEvaluator (an implementation "
                                 "of the ONNX operators independent of onnxruntime), stepped T times"}


def target(name: str):
    """The same one-step file the onnxruntime target runs (``model.onnx``, shared in a verify run), run by
    onnx's ReferenceEvaluator, compared with the float reference executor."""
    from .onnx_step import OnnxStepEntry

    return OnnxStepEntry(name, OnnxReferenceTarget, TARGET_INFO[name])
