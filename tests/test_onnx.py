"""The one-step ONNX export and the onnxruntime target against the float64 reference executor (DESIGN §7)."""

import json
import os
import subprocess
import sys
import textwrap

import nir
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from revsnn.exporters.collapse import collapse
from revsnn.exporters.onnx_file import (ONNXFileError, graph_to_onnx_step, graph_to_onnx_unrolled, read_onnx,
                                        write_onnx)
from revsnn.models import build_model
from revsnn.targets.onnxruntime import OnnxRuntimeTarget, OnnxRuntimeUnrolledTarget
from revsnn.targets.reference import ReferenceExecutor
from revsnn.testing import trained_like

FAMILIES = ["revsresnet-digits", "pararevsnn-digits", "revsformer-digits", "trevsnn-digits", "revnode-digits"]


def _model(name: str):
    """A small model of the family and its T."""
    if name == "revsformer-digits":
        # scale 1 and larger BatchNorm gains and shifts, as tests/test_collapse.py: the attention must spike
        model = trained_like(name, dim=8, heads=2, depth=2, scale=1.0)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.weight.mul_(2.0)
                    m.bias.add_(1.0)
        return model, 4
    if name == "trevsnn-digits":
        return trained_like(name, time_steps=3, channels=[3, 4, 5], blocks_per_level=2, expansion=2,
                            level_strides=[1, 1]), 3
    if name == "revnode-digits":
        torch.manual_seed(0)
        model = build_model(name).double().eval()
        with torch.no_grad():  # trained-like scale, as tests/test_collapse_revnode.py
            for p in model.parameters():
                p.mul_(3.0)
        return model, 8
    return trained_like(name, planes=[4, 6], blocks=[2, 1]), 5


def _reference(graph, x):
    """Reference outputs [T, B, ...], spikes and potentials per neuron node [T, B, ...]."""
    ref = ReferenceExecutor(graph)
    ref.reset()
    outs, spikes, pots = [], {n: [] for n in ref.neurons}, {n: [] for n in ref.neurons}
    for x_t in x:
        outs.append(ref.step(x_t))
        for n in ref.neurons:
            spikes[n].append(ref.spikes[n])
            pots[n].append(ref.potentials[n])
    return (torch.stack(outs), {n: torch.stack(v) for n, v in spikes.items()},
            {n: torch.stack(v) for n, v in pots.items()})


def _threshold(node) -> torch.Tensor:
    th = node.threshold if isinstance(node, nir.Threshold) else node.v_threshold
    return torch.as_tensor(np.asarray(th), dtype=torch.float64)


def _prediction(out: torch.Tensor, readout: str) -> torch.Tensor:
    return (out[-1] if readout == "last" else out.mean(0)).argmax(1)


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, tmp_path_factory):
    model, T = _model(request.param)
    graph = collapse(model, T).graph
    path = write_onnx(graph, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    x = torch.rand(T, 6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    return request.param, graph, path, x


def test_onnx_runtime_equals_reference(exported):
    name, graph, path, x = exported
    model = read_onnx(path)
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["time_steps"] == str(x.shape[0]) and props["model"] == name
    assert props["readout"] == graph.metadata["readout"] and "zeros" in props["initial_state"]
    assert [i.name for i in model.graph.input][0] == "x_t" and model.graph.output[0].name == "y_t"
    states = [i.name for i in model.graph.input][1:]
    assert [o.name for o in model.graph.output][1:] == ["state_out." + s[len("state."):] for s in states]

    ref_out, ref_spikes, ref_pots = _reference(graph, x)
    target = OnnxRuntimeTarget.load(path)
    out, spikes = target.run(x, record=True)
    assert out.dtype == torch.float32 and out.shape == ref_out.shape
    assert set(spikes) == set(ref_spikes) and len(spikes) > 0

    ties = others = 0
    for node, want in ref_spikes.items():
        th = _threshold(graph.nodes[node])
        diff = spikes[node].double() != want
        tie = (ref_pots[node] - th).abs() <= 1e-5 * torch.clamp(th.abs(), min=1.0)
        ties += int((diff & tie).sum())
        others += int((diff & ~tie).sum())
    print(f"{name}: threshold-tie spike differences {ties}, max output diff "
          f"{float((out.double() - ref_out).abs().max()):.2e}")
    assert others == 0
    assert sum(float(s.sum()) for s in ref_spikes.values()) > 0
    assert float((out.double() - ref_out).abs().max()) <= 1e-4
    readout = graph.metadata["readout"]
    assert torch.equal(_prediction(out, readout), _prediction(ref_out, readout))

    # step() takes numpy too; run() resets the state.
    again = target.run(x.numpy())
    assert torch.equal(again, out)


_STANDALONE = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # importing torch (or revsnn) here fails
    sys.modules["revsnn"] = None
    import numpy as np
    import onnxruntime as ort
    path, xpath, outpath = sys.argv[1:]
    x = np.load(xpath)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    B = x.shape[1]
    state = {i.name: np.zeros([B] + list(i.shape[1:]), dtype=np.float32)
             for i in sess.get_inputs() if i.name != "x_t"}
    names = [o.name for o in sess.get_outputs()]
    ys = []
    for x_t in x:
        res = dict(zip(names, sess.run(names, {"x_t": x_t, **state})))
        state = {n: res["state_out." + n[len("state."):]] for n in state}
        ys.append(res["y_t"])
    np.save(outpath, np.stack(ys))
    assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
""")


def test_exported_file_runs_without_torch_or_revsnn(exported, tmp_path):
    name, graph, path, x = exported
    np.save(tmp_path / "x.npy", x.numpy().astype(np.float32))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-I", "-c", _STANDALONE, str(path), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, env=env, cwd=tmp_path, timeout=60)
    y = torch.from_numpy(np.load(tmp_path / "y.npy"))
    assert torch.equal(y, OnnxRuntimeTarget.load(path).run(x))


def test_model_metadata_and_ops():
    graph = collapse(trained_like("revsresnet-digits", planes=[2, 3]), 4).graph
    model = graph_to_onnx_step(graph)
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "Greater", "Cast", "Where", "AveragePool", "Reshape", "Gemm"} <= ops
    props = {p.key: p.value for p in model.metadata_props}
    assert props["revsnn_version"] and props["neuron_contract"] and props["format"] == "revsnn-onnx-step"
    assert json.loads(props["state_inputs"]) == [i.name for i in model.graph.input][1:]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_file_errors(tmp_path):
    graph = collapse(trained_like("revsresnet-digits", planes=[2, 3]), 2).graph
    with pytest.raises(ONNXFileError, match="does not exist"):
        write_onnx(graph, tmp_path / "missing_dir" / "m.onnx")
    assert not (tmp_path / "missing_dir").exists()
    with pytest.raises(ONNXFileError, match="does not exist"):
        read_onnx(tmp_path / "nope.onnx")
    with pytest.raises(ONNXFileError, match="does not exist"):
        OnnxRuntimeTarget.load(tmp_path / "nope.onnx")

    path = write_onnx(graph, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary left behind
    data = path.read_bytes()
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\xffnot an onnx file" * 10)
    with pytest.raises(ONNXFileError, match="corrupt or truncated"):
        read_onnx(tmp_path / "garbage.onnx")
    for cut in (len(data) // 2, len(data) - 7, 100):
        (tmp_path / "cut.onnx").write_bytes(data[:cut])
        with pytest.raises(ONNXFileError, match="corrupt or truncated"):
            read_onnx(tmp_path / "cut.onnx")

    # A failure while writing leaves nothing behind.
    bad = onnx.ModelProto()
    with pytest.raises(ONNXFileError, match="nothing was written"):
        write_onnx(bad, tmp_path / "bad.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.onnx", "garbage.onnx", "m.onnx"]


# --------------------------------------------------------------------------------------------------------
# The unrolled model: the whole time loop inside one graph, T fixed


@pytest.mark.parametrize("name", ["revsresnet-digits", "trevsnn-digits", "revnode-digits"])
def test_unrolled_equals_step_target_and_reference(name, tmp_path):
    model, T = _model(name)
    graph = collapse(model, T).graph
    path = write_onnx(graph, tmp_path / f"{name}.onnx", mode="unrolled", time_steps=T)
    onnx_model = read_onnx(path)
    onnx.checker.check_model(onnx_model, full_check=True)
    props = {p.key: p.value for p in onnx_model.metadata_props}
    readout = graph.metadata["readout"]
    assert props["format"] == "revsnn-onnx-unrolled" and props["mode"] == "unrolled"
    assert props["time_steps"] == str(T) and props["readout"] == readout and props["model"] == name
    assert props["neuron_contract"] and props["revsnn_version"]
    assert [i.name for i in onnx_model.graph.input] == ["x"]
    assert [o.name for o in onnx_model.graph.output] == ["logits", "y"]
    dims = [d.dim_value or d.dim_param for d in onnx_model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[:2] == [T, "batch"]
    assert len(onnx_model.graph.initializer) < 2 * len(graph_to_onnx_step(graph).graph.initializer) + 3 * T + 8

    x = torch.rand(T, 6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    target = OnnxRuntimeUnrolledTarget.load(path)
    out = target.run(x)
    step_out = OnnxRuntimeTarget.load(write_onnx(graph, tmp_path / "step.onnx")).run(x)
    assert out.dtype == torch.float32 and out.shape == step_out.shape
    assert float((out - step_out).abs().max()) <= 1e-5
    out2, spikes = target.run(x.numpy(), record=True)
    assert torch.equal(out2, out) and spikes == {}

    ref_out, _, _ = _reference(graph, x)
    want = ref_out[-1] if readout == "last" else ref_out.mean(0)
    logits = target.logits(x)
    assert logits.shape == want.shape
    assert float((logits.double() - want).abs().max()) <= 1e-4
    assert torch.equal(logits.argmax(1), want.argmax(1))
    assert torch.equal(logits.argmax(1), _prediction(ref_out, readout))
    # another batch size: the zero initial states follow x's batch dimension
    assert target.run(x[:, :2]).shape == (T, 2, *out.shape[2:])

    # a wrong number of steps is refused with one sentence
    with pytest.raises(ValueError, match=f"exactly T={T} time steps"):
        target.run(x[:-1])
    with pytest.raises(ValueError, match=f"exactly T={T} time steps"):
        target.logits(torch.cat([x, x[:1]]))
    # the two targets refuse each other's files
    with pytest.raises(ONNXFileError, match="OnnxRuntimeUnrolledTarget"):
        OnnxRuntimeTarget.load(path)
    with pytest.raises(ONNXFileError, match="OnnxRuntimeTarget"):
        OnnxRuntimeUnrolledTarget.load(tmp_path / "step.onnx")


def test_unrolled_mode_and_time_steps_errors(tmp_path):
    graph = collapse(trained_like("revsresnet-digits", planes=[2, 3]), 2).graph
    with pytest.raises(ONNXFileError, match="unknown ONNX export mode"):
        write_onnx(graph, tmp_path / "m.onnx", mode="loop")
    with pytest.raises(ONNXFileError, match="needs time_steps"):
        write_onnx(graph, tmp_path / "m.onnx", mode="unrolled")
    for bad in (0, -3):
        with pytest.raises(ONNXFileError, match="at least 1"):
            write_onnx(graph, tmp_path / "m.onnx", mode="unrolled", time_steps=bad)
        with pytest.raises(ONNXFileError, match="at least 1"):
            graph_to_onnx_unrolled(graph, bad)
    with pytest.raises(ONNXFileError, match="whole number"):
        write_onnx(graph, tmp_path / "m.onnx", mode="unrolled", time_steps=2.5)
    with pytest.raises(ONNXFileError, match="only applies to mode='unrolled'"):
        write_onnx(graph, tmp_path / "m.onnx", time_steps=2)
    assert list(tmp_path.iterdir()) == []
    # T = 1 and opset 18 (ReduceMean's axes as an input) work
    model = graph_to_onnx_unrolled(graph, 1, opset=18)
    x = torch.rand(1, 3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    target = OnnxRuntimeUnrolledTarget.load(model)
    assert torch.allclose(target.logits(x), target.run(x)[0])
