"""The onnx-reference target: the exported one-step ONNX file in onnx's own ReferenceEvaluator, against the
float64 reference executor (DESIGN §7). onnx's evaluator runs the ops in Python, so the graphs are tiny."""

import os
import subprocess
import sys

import pytest
import torch

from revsnn.exporters.collapse import collapse
from revsnn.exporters.onnx_file import ONNXFileError, graph_to_onnx_step, write_onnx
from revsnn.targets.onnx_reference import OnnxReferenceTarget
from revsnn.targets.onnxruntime import OnnxRuntimeTarget
from revsnn.targets.reference import ReferenceExecutor
from revsnn.testing import trained_like


@pytest.fixture(scope="module")
def small_graph():
    """A collapsed RevSResNet with two tiny stages: convolutions, BatchNorm folded, fan-in, pooling, IF."""
    T = 3
    graph = collapse(trained_like("revsresnet-digits", planes=[2, 3], blocks=[1, 1]), T).graph
    x = torch.rand(T, 3, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 1.5
    return graph, x


def test_float64_file_gives_the_reference_spikes_and_outputs(small_graph, tmp_path):
    graph, x = small_graph
    path = write_onnx(graph_to_onnx_step(graph, dtype="float64"), tmp_path / "m64.onnx")
    want_out, want_spikes = ReferenceExecutor(graph).run(x, record=True)

    target = OnnxReferenceTarget.load(path)
    assert target.float.__name__ == "float64"
    out, spikes = target.run(x, record=True)
    assert out.dtype == torch.float64 and out.shape == want_out.shape
    assert set(spikes) == set(want_spikes) and len(spikes) >= 4
    for name, want in want_spikes.items():
        assert torch.equal(spikes[name], want), name
    assert sum(float(s.sum()) for s in want_spikes.values()) > 0   # the agreement is not vacuous
    assert float((out - want_out).abs().max()) <= 1e-5
    # run() starts from reset every time; without record it gives the outputs only
    assert torch.equal(target.run(x.numpy()), out)


def test_float32_file_agrees_with_onnxruntime(small_graph, tmp_path):
    graph, x = small_graph
    path = write_onnx(graph, tmp_path / "m32.onnx")
    out, spikes = OnnxReferenceTarget.load(path).run(x[:, :2], record=True)
    ort_out, ort_spikes = OnnxRuntimeTarget.load(path).run(x[:, :2], record=True)
    assert out.dtype == torch.float32
    assert float((out - ort_out).abs().max()) <= 1e-5
    assert all(torch.equal(spikes[n], ort_spikes[n]) for n in ort_spikes)


def test_unrolled_files_are_refused_with_a_sentence(small_graph, tmp_path):
    graph, x = small_graph
    path = write_onnx(graph, tmp_path / "u.onnx", mode="unrolled", time_steps=x.shape[0])
    with pytest.raises(ONNXFileError, match="one-step model"):
        OnnxReferenceTarget.load(path)
    with pytest.raises(ONNXFileError, match="does not exist"):
        OnnxReferenceTarget.load(tmp_path / "absent.onnx")


def test_the_target_does_not_load_onnxruntime():
    code = ("import sys; import revsnn.targets.onnx_reference; "
            "sys.exit(1 if 'onnxruntime' in sys.modules else 0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env={**os.environ})
