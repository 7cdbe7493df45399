"""`revsnn export nir`, `revsnn verify`, `revsnn info` and `revsnn demo` as a user runs them."""

import json

import nir
import pytest
import torch
from typer.testing import CliRunner

from revsnn.cli.main import app
from revsnn.data import ImageData, load_digits
from revsnn.train import TrainOptions, train
from revsnn.verify import verify

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Briefly trained checkpoints of the families that collapse to NIR."""
    d = load_digits()
    data = ImageData("digits", d.x_train[:128], d.y_train[:128], d.x_test[:32], d.y_test[:32])
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, encoding in [("revsresnet-digits", "direct"), ("pararevsnn-digits", "rate"), ("revnode-digits", "direct")]:
        train(TrainOptions(model=name, out=root / name, epochs=2, time_steps=3, batch_size=32, lr=0.01,
                           encoding=encoding), data=data)
        paths[name] = root / name / "model.pt"
    return paths


@pytest.mark.parametrize("name", ["revsresnet-digits", "pararevsnn-digits", "revnode-digits"])
def test_verify_torch_and_norse_agree_exactly(checkpoints, name):
    report = verify(checkpoints[name], ("torch", "norse"), samples=24)
    assert report.ok, report.as_json()
    for target in report.targets.values():
        assert target.spike_agreement == 1.0 and target.output_spike_agreement == 1.0
        assert target.prediction_agreement == 1.0 and target.max_abs_diff <= 1e-5
        assert target.mismatches == 0 and target.populations >= 2
        assert target.spike_count > 0  # agreement is not vacuous


def test_verify_cli_json_and_plots(checkpoints, tmp_path):
    result = runner.invoke(app, ["verify", str(checkpoints["revsresnet-digits"]), "--samples", "8", "--json",
                                 "--plot", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True
    for name in ("torch", "norse"):
        assert {"ok", "spike_agreement", "prediction_agreement", "max_abs_diff", "seconds"} <= set(data["targets"][name])
        assert (tmp_path / "plots" / f"raster_{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_export_nir_and_info(checkpoints, tmp_path):
    out = tmp_path / "model.nir"
    result = runner.invoke(app, ["export", "nir", str(checkpoints["revsresnet-digits"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    graph = nir.read(str(out))
    assert graph.metadata["dt"] == 1.0 and graph.metadata["reset"] == "hard"
    assert graph.metadata["model"] == "revsresnet-digits"
    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0 and "IF" in result.output and "neurons" in result.output
    result = runner.invoke(app, ["info", str(checkpoints["revsresnet-digits"])])
    assert result.exit_code == 0 and "revsresnet-digits" in result.output


def test_bad_inputs_fail_cleanly(checkpoints, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    cases = [
        (["verify", str(junk)], "not a readable revsnn checkpoint"),
        (["verify", str(checkpoints["revsresnet-digits"]), "--targets", "loihi9"], "unknown target"),
        (["verify", str(checkpoints["revsresnet-digits"]), "--samples", "0"], "at least 1"),
        (["export", "nir", str(junk), "--out", str(tmp_path / "x.nir")], "not a readable revsnn checkpoint"),
        (["export", "nir", str(checkpoints["revsresnet-digits"]), "--out", str(tmp_path / "no" / "x.nir")], "exist"),
        (["info", str(tmp_path / "absent.nir")], "does not exist"),
        (["info", str(junk.with_suffix(".txt"))], "does not exist"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "x.nir").exists()


def test_revsformer_runs_on_the_reference_and_is_refused_by_nir(tmp_path):
    from torch import nn

    from revsnn.checkpoint import save_checkpoint
    from revsnn.testing import trained_like

    # A briefly trained toy RevSFormer is silent; larger BatchNorm gains make every part of it spike.
    model = trained_like("revsformer-digits", dim=8, heads=2, depth=2, scale=1.0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data.mul_(2.0)
            m.bias.data.add_(1.0)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model.float(), train={"time_steps": 4, "encoding": "direct"})
    report = verify(path, ("torch",), samples=16)
    assert report.ok and report.targets["torch"].spike_agreement == 1.0
    assert report.targets["torch"].spike_count > 0
    result = runner.invoke(app, ["verify", str(path), "--targets", "torch,norse"])
    assert result.exit_code == 2 and "ONNX" in result.output and "Traceback" not in result.output


def test_revsformer_export_is_refused(tmp_path):
    from revsnn.checkpoint import save_checkpoint
    from revsnn.models import build_model, get_config

    config = get_config("revsformer-digits")
    config.update(dim=8, heads=2)
    model = build_model(config)
    save_checkpoint(tmp_path / "model.pt", model, train={"time_steps": 2, "encoding": "direct"})
    result = runner.invoke(app, ["export", "nir", str(tmp_path / "model.pt"), "--out", str(tmp_path / "m.nir")])
    assert result.exit_code == 2 and "ONNX" in result.output
    assert not (tmp_path / "m.nir").exists()


def test_export_onnx_info_and_verify(checkpoints, tmp_path):
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", "onnx", str(checkpoints["revsresnet-digits"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0 and "x_t" in result.output and "Conv" in result.output
    report = verify(checkpoints["pararevsnn-digits"], ("torch", "onnxruntime", "onnxruntime-unrolled"), samples=16)
    assert report.ok, report.as_json()
    for name in ("onnxruntime", "onnxruntime-unrolled"):
        ort = report.targets[name]
        assert ort.mismatches == 0 and ort.prediction_agreement == 1.0 and ort.max_abs_diff <= 1e-5
    assert report.targets["onnxruntime"].spike_agreement == 1.0
    assert report.targets["onnxruntime-unrolled"].spike_agreement == 1.0  # spikes of all T steps as outputs
    unrolled = tmp_path / "unrolled.onnx"
    result = runner.invoke(app, ["export", "onnx", str(checkpoints["revsresnet-digits"]), "--out", str(unrolled),
                                 "--mode", "unrolled", "--time-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "x [2×batch×1×8×8]" in runner.invoke(app, ["info", str(unrolled)]).output
    for args, message in [(["export", "onnx", str(checkpoints["revsresnet-digits"]), "--out", str(tmp_path / "m.txt")],
                           ".onnx"),
                          (["export", "onnx", str(checkpoints["revsresnet-digits"]), "--out", str(out), "--opset", "7"],
                           "--opset"),
                          (["export", "onnx", str(checkpoints["revsresnet-digits"]), "--out", str(out), "--mode", "x"],
                           "--mode"),
                          (["export", "onnx", str(checkpoints["revsresnet-digits"]), "--out", str(out),
                            "--time-steps", "0", "--mode", "unrolled"], "--time-steps")]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output


def test_ties_and_their_consequences_are_counted_apart_from_mismatches():
    from revsnn.verify import _compare_spikes, _first_ties

    T, B = 3, 2
    want = {"a": torch.zeros(T, B, 4), "b": torch.zeros(T, B, 4)}
    got = {k: v.clone() for k, v in want.items()}
    theta = {"a": torch.tensor(1.0), "b": torch.tensor(1.0)}
    potentials = {"a": torch.zeros(T, B, 4), "b": torch.zeros(T, B, 4)}
    got["a"][1, 0, 2] = 1.0
    potentials["a"][1, 0, 2] = 1.0 + 1e-9      # within rounding of the threshold: a tie in sample 0 at t = 1
    got["b"][2, 0, 0] = 1.0                    # later in sample 0: a consequence of the tie
    got["b"][0, 0, 1] = 1.0                    # before the tie in sample 0: an error
    got["b"][1, 1, 3] = 1.0                    # sample 1 never tied: an error
    first = _first_ties(got, want, potentials, theta, None, T, B)
    assert first.tolist() == [1.0, float("inf")]
    diff = _compare_spikes(got, want, potentials, theta, None, first)
    assert (diff.total, diff.ties, diff.induced, diff.mismatches) == (48, 1, 1, 2)


def test_conv_free_graphs_run_onnxruntime_in_float64(checkpoints):
    """The RevLIF network has no convolution, so verify exports its ONNX models in float64, which
    onnxruntime's CPU build runs; they then agree with the float64 reference to rounding."""
    report = verify(checkpoints["revnode-digits"], ("onnxruntime", "onnxruntime-unrolled"), samples=16)
    assert report.ok
    for target in report.targets.values():
        assert target.max_abs_diff < 1e-9 and target.spike_agreement == 1.0
