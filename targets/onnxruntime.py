"""The onnxruntime target: runs the one-step ``.onnx`` model (``exporters/onnx_file.py``) with the time loop in
the host (DESIGN §7).

``OnnxRuntimeTarget.load(path_or_model)`` reads the file (or takes a ``ModelProto``), adds every neuron
node's spike tensor ``spikes.<node>`` as an extra graph output (unless the model already has it), and opens an
``InferenceSession`` on the CPU execution provider, with ``CUDAExecutionProvider`` first when onnxruntime has
it. The states start at zeros (as the file's ``metadata_props["initial_state"]`` says) and are carried from
``state_out.*`` into ``state.*`` between steps. Float32, as the file.

``run(x)`` returns what ``ReferenceExecutor.run`` returns: per-step outputs ``[T, B, ...]`` and, with
``record=True``, each neuron node's spikes ``[T, B, ...]``.

``OnnxRuntimeUnrolledTarget.load(path_or_model)`` runs the unrolled model (``graph_to_onnx_unrolled``: the
whole time loop inside the graph, T fixed) in one ``session.run``: ``run(x)`` gives the per-step outputs
``[T, B, ...]`` (output ``y``; no spikes: ``record=True`` gives an empty dict) and ``logits(x)`` the readout.
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

from revsnn.exporters.onnx_file import (INPUT_NAME, OUTPUT_NAME, UNROLLED_FORMAT, UNROLLED_INPUT, UNROLLED_LOGITS,
                                        UNROLLED_STEPS, ONNXFileError, read_onnx)

from .stepping import run_steps

__all__ = ["OnnxRuntimeTarget", "OnnxRuntimeUnrolledTarget", "default_providers"]


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


class OnnxRuntimeTarget:
    """``reset()``, then ``step(x_t)`` per time step; ``spikes`` holds each neuron node's last spikes."""

    def __init__(self, model: onnx.ModelProto, providers: Optional[Sequence[str]] = None):
        props = {p.key: p.value for p in model.metadata_props}
        if props.get("format") == UNROLLED_FORMAT:
            raise ONNXFileError("this is an unrolled ONNX model (the time loop is inside it); run it with "
                                "OnnxRuntimeUnrolledTarget, not the one-step OnnxRuntimeTarget.")
        self.metadata = props
        self.neurons: list[str] = json.loads(props.get("neurons", "[]"))
        model = onnx.ModelProto.FromString(model.SerializeToString())  # do not alter the caller's model
        elem = model.graph.input[0].type.tensor_type.elem_type   # float32, or float64 for conv-free graphs
        self.float = np.float64 if elem == TensorProto.DOUBLE else np.float32
        have = {o.name for o in model.graph.output}
        for n in self.neurons:
            if f"spikes.{n}" not in have:
                model.graph.output.append(helper.make_tensor_value_info(f"spikes.{n}", elem, None))
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
        """One time step: ``x`` is ``[B, *input_shape]``; returns the output ``[B, ...]`` in the model's
        float type."""
        x = _numpy(x, self.float)
        if not self.state:
            self.state = {n: np.zeros((x.shape[0], *self.state_shapes[n]), dtype=self.float)
                          for n in self.state_names}
        feed = {INPUT_NAME: x, **self.state}
        res = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        self.state = {n: res["state_out." + n[len("state."):]] for n in self.state_names}
        self.spikes = {n: torch.from_numpy(res[f"spikes.{n}"]) for n in self.neurons}
        return torch.from_numpy(res[OUTPUT_NAME])

    def run(self, x: Union[torch.Tensor, np.ndarray], record: bool = False):
        """Run ``x`` ``[T, B, ...]`` from reset. Returns the per-step outputs ``[T, B, ...]`` and, with
        ``record``, each neuron node's spikes ``[T, B, ...]``."""
        return run_steps(self, x, record)


def _numpy(x: Union[torch.Tensor, np.ndarray], dtype=np.float32) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


class OnnxRuntimeUnrolledTarget:
    """The unrolled model: ``run(x)`` the per-step outputs ``[T, B, ...]``, ``logits(x)`` the readout; T is
    the model's (``time_steps``), fixed at export."""

    def __init__(self, model: onnx.ModelProto, providers: Optional[Sequence[str]] = None):
        props = {p.key: p.value for p in model.metadata_props}
        if props.get("format") != UNROLLED_FORMAT:
            raise ONNXFileError("this is not an unrolled ONNX model (no format 'revsnn-onnx-unrolled' in its "
                                "metadata); run a one-step model with OnnxRuntimeTarget.")
        self.metadata = props
        self.model = model
        self.time_steps = int(model.graph.input[0].type.tensor_type.shape.dim[0].dim_value)
        self.readout = props.get("readout", "mean")
        self.neurons = [o.name[len("spikes."):] for o in model.graph.output if o.name.startswith("spikes.")]
        self.spikes: dict[str, torch.Tensor] = {}
        self.providers = list(providers) if providers is not None else default_providers()
        self.session = ort.InferenceSession(model.SerializeToString(), providers=self.providers)
        elem = model.graph.input[0].type.tensor_type.elem_type
        self.float = np.float64 if elem == TensorProto.DOUBLE else np.float32

    @classmethod
    def load(cls, path_or_model: Union[str, Path, onnx.ModelProto],
             providers: Optional[Sequence[str]] = None) -> "OnnxRuntimeUnrolledTarget":
        model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else read_onnx(path_or_model)
        return cls(model, providers)

    def reset(self) -> None:  # no state between calls: every run starts from zeros inside the model
        self.spikes = {}

    def _run(self, x, names: list[str]) -> list[np.ndarray]:
        x = _numpy(x, self.float)
        if x.ndim < 2 or x.shape[0] != self.time_steps:
            got = x.shape[0] if x.ndim else "no"
            raise ValueError(f"this unrolled ONNX model runs exactly T={self.time_steps} time steps (input x "
                             f"[{self.time_steps}, batch, ...]) but got {got} steps; pass {self.time_steps} "
                             f"steps or export again with time_steps={got}.")
        return self.session.run(names, {UNROLLED_INPUT: x})

    def run(self, x: Union[torch.Tensor, np.ndarray], record: bool = False):
        """Per-step outputs ``[T, B, ...]`` (float32); with ``record``, also every neuron node's spikes
        ``[T, B, ...]`` when the model has ``spikes.<node>`` outputs (else ``{}``)."""
        names = [o.name for o in self.session.get_outputs() if o.name.startswith("spikes.")] if record else []
        got = self._run(x, [UNROLLED_STEPS] + names)
        out = torch.from_numpy(got[0])
        if not record:
            return out
        return out, {n[len("spikes."):]: torch.from_numpy(v) for n, v in zip(names, got[1:])}

    def logits(self, x: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
        """The readout ``[B, ...]`` of the T per-step outputs (``metadata['readout']``: mean or last)."""
        return torch.from_numpy(self._run(x, [UNROLLED_LOGITS])[0])


# --------------------------------------------------------------------------------------------------------
# Registry entries (targets/registry.py); the shared one-step entry is in targets/onnx_step.py.

TARGET_INFO = {"onnxruntime": "the one-step .onnx file in onnxruntime (CPU; the CUDA provider when present), "
                              "stepped T times carrying the states",
               "onnxruntime-unrolled": "the unrolled .onnx file (fixed T, one call) in onnxruntime"}


from .onnx_step import OnnxStepEntry, onnx_float, onnx_format  # noqa: E402


class _UnrolledEntry(OnnxStepEntry):
    def accepts(self, path) -> bool:
        return Path(path).suffix == self.suffix and onnx_format(path) == UNROLLED_FORMAT

    def export(self, graph, folder: Path, **options) -> Path:
        from revsnn.exporters.onnx_file import graph_to_onnx_unrolled, write_onnx

        path = Path(folder) / "model-unrolled.onnx"
        # with every population's spikes as extra outputs, so that they can be compared too
        write_onnx(graph_to_onnx_unrolled(graph, int(options["time_steps"]), spikes=True, dtype=onnx_float(graph)),
                   path, **options.get("writer", {}))
        return path


def target(name: str):
    from .onnx_step import OnnxStepEntry

    if name == "onnxruntime":
        return OnnxStepEntry(name, OnnxRuntimeTarget, TARGET_INFO[name])
    return _UnrolledEntry(name, OnnxRuntimeUnrolledTarget, TARGET_INFO[name])
